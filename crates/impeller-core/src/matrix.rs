//! A row-major matrix of `f64`, the shape training data takes between the feature pipeline and
//! the detectors. Deliberately minimal: detectors that need decompositions convert to nalgebra.

#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Matrix {
    pub fn new(cols: usize) -> Self {
        Self { rows: 0, cols, data: Vec::new() }
    }

    /// Builds a matrix from rows; every row must have `cols` values.
    pub fn from_rows<R: AsRef<[f64]>>(cols: usize, rows: &[R]) -> Self {
        let mut m = Self::new(cols);
        for r in rows {
            m.push_row(r.as_ref());
        }
        m
    }

    pub fn push_row(&mut self, row: &[f64]) {
        assert_eq!(row.len(), self.cols, "row length must match the matrix width");
        self.data.extend_from_slice(row);
        self.rows += 1;
    }

    /// The first `n` rows.
    pub fn head(&self, n: usize) -> Matrix {
        let n = n.min(self.rows);
        Matrix { rows: n, cols: self.cols, data: self.data[..n * self.cols].to_vec() }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f64] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn iter_rows(&self) -> impl Iterator<Item = &[f64]> {
        self.data.chunks_exact(self.cols.max(1)).take(self.rows)
    }

    /// The values of column `j`, top to bottom.
    pub fn column(&self, j: usize) -> Vec<f64> {
        self.iter_rows().map(|r| r[j]).collect()
    }

    pub fn to_nalgebra(&self) -> nalgebra::DMatrix<f64> {
        nalgebra::DMatrix::from_row_slice(self.rows, self.cols, &self.data)
    }
}

/// Dot product of two equal-length slices.
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Euclidean distance between two equal-length slices.
#[inline]
pub fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}
