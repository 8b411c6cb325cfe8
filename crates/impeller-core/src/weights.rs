//! A detector's weight matrices, stored by rows: at full precision, or quantised to int8 with
//! one scale per row (w[i][j] ≈ q[i][j] · scale[i], q in −127..=127, scale = max|w[i]| / 127),
//! which shrinks them eightfold for small devices. Scoring reads either form through the same
//! methods, so a quantised model runs through the same scorer; how closely its alarms agree with
//! the full-precision model's is measured by the pipeline before such a package is signed.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, check_finite};

/// A matrix by rows. In JSON, full precision is an array of rows of numbers (the format before
/// quantisation existed); int8 is `{"scale": [...], "int8": [[...], ...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rows {
    Float(Vec<Vec<f64>>),
    Int8(Int8Rows),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int8Rows {
    /// One positive scale per row.
    pub scale: Vec<f64>,
    pub int8: Vec<Vec<i8>>,
}

impl From<Vec<Vec<f64>>> for Rows {
    fn from(rows: Vec<Vec<f64>>) -> Self {
        Rows::Float(rows)
    }
}

impl Rows {
    pub fn len(&self) -> usize {
        match self {
            Rows::Float(r) => r.len(),
            Rows::Int8(q) => q.int8.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length of the first row (0 without rows).
    pub fn width(&self) -> usize {
        match self {
            Rows::Float(r) => r.first().map_or(0, Vec::len),
            Rows::Int8(q) => q.int8.first().map_or(0, Vec::len),
        }
    }

    pub fn is_int8(&self) -> bool {
        matches!(self, Rows::Int8(_))
    }

    /// Row `i` times `x`.
    pub fn dot(&self, i: usize, x: &[f64]) -> f64 {
        match self {
            Rows::Float(r) => crate::matrix::dot(&r[i], x),
            Rows::Int8(q) => q.int8[i].iter().zip(x).map(|(w, v)| f64::from(*w) * v).sum::<f64>() * q.scale[i],
        }
    }

    /// Euclidean distance from row `i` to `x`.
    pub fn distance(&self, i: usize, x: &[f64]) -> f64 {
        match self {
            Rows::Float(r) => crate::matrix::distance(&r[i], x),
            Rows::Int8(q) => {
                let s = q.scale[i];
                q.int8[i].iter().zip(x).map(|(w, v)| (f64::from(*w) * s - v).powi(2)).sum::<f64>().sqrt()
            }
        }
    }

    /// Element (i, j).
    pub fn at(&self, i: usize, j: usize) -> f64 {
        match self {
            Rows::Float(r) => r[i][j],
            Rows::Int8(q) => f64::from(q.int8[i][j]) * q.scale[i],
        }
    }

    /// `out += a · row i`.
    pub fn add_scaled_row(&self, i: usize, a: f64, out: &mut [f64]) {
        match self {
            Rows::Float(r) => out.iter_mut().zip(&r[i]).for_each(|(o, w)| *o += a * w),
            Rows::Int8(q) => {
                let a = a * q.scale[i];
                out.iter_mut().zip(&q.int8[i]).for_each(|(o, w)| *o += a * f64::from(*w));
            }
        }
    }

    /// The rows at full precision to change in place (training); int8 rows are dequantised first.
    pub fn float_mut(&mut self) -> &mut Vec<Vec<f64>> {
        if let Rows::Int8(_) = self {
            *self = Rows::Float(self.to_float());
        }
        match self {
            Rows::Float(r) => r,
            Rows::Int8(_) => unreachable!("made full precision just above"),
        }
    }

    /// The rows at full precision (dequantised when int8).
    pub fn to_float(&self) -> Vec<Vec<f64>> {
        match self {
            Rows::Float(r) => r.clone(),
            Rows::Int8(q) => (0..q.int8.len()).map(|i| (0..q.int8[i].len()).map(|j| self.at(i, j)).collect()).collect(),
        }
    }

    /// The rows quantised to int8, symmetric per row; an all-zero row keeps scale 1.
    pub fn to_int8(&self) -> Rows {
        let rows = self.to_float();
        let mut scale = Vec::with_capacity(rows.len());
        let mut int8 = Vec::with_capacity(rows.len());
        for row in &rows {
            let max = row.iter().fold(0.0f64, |m, w| m.max(w.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            scale.push(s);
            int8.push(row.iter().map(|w| (w / s).round().clamp(-127.0, 127.0) as i8).collect());
        }
        Rows::Int8(Int8Rows { scale, int8 })
    }

    /// Bytes the weights take in memory.
    pub fn bytes(&self) -> usize {
        match self {
            Rows::Float(r) => r.iter().map(|r| r.len() * 8).sum(),
            Rows::Int8(q) => q.scale.len() * 8 + q.int8.iter().map(Vec::len).sum::<usize>(),
        }
    }

    /// Checks that there are `rows` rows (any number when `None`) of `width` finite values each,
    /// and positive finite scales, so that scoring cannot panic.
    pub fn validate(&self, rows: Option<usize>, width: usize, field: &str) -> Result<(), ModelError> {
        if let Some(n) = rows
            && self.len() != n
        {
            return Err(ModelError::invalid(field.to_string(), format!("needs {n} rows, has {}", self.len())));
        }
        let bad_width = |i: usize, len: usize| {
            ModelError::invalid(format!("{field}[{i}]"), format!("needs {width} values, has {len}"))
        };
        match self {
            Rows::Float(r) => {
                for (i, row) in r.iter().enumerate() {
                    if row.len() != width {
                        return Err(bad_width(i, row.len()));
                    }
                    check_finite(&format!("{field}[{i}]"), row)?;
                }
            }
            Rows::Int8(q) => {
                if q.scale.len() != q.int8.len() {
                    return Err(ModelError::invalid(
                        format!("{field}.scale"),
                        format!("needs one scale per row ({}), has {}", q.int8.len(), q.scale.len()),
                    ));
                }
                if q.scale.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                    return Err(ModelError::invalid(format!("{field}.scale"), "must be positive numbers"));
                }
                for (i, row) in q.int8.iter().enumerate() {
                    if row.len() != width {
                        return Err(bad_width(i, row.len()));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_rows_stay_within_half_a_step_of_the_float_rows() {
        let rows = Rows::Float(vec![vec![0.5, -0.25, 0.1, 0.0], vec![0.0; 4], vec![-3.0, 2.9, 1e-3, 0.7]]);
        let q = rows.to_int8();
        assert!(q.is_int8());
        let Rows::Int8(ref q8) = q else { unreachable!() };
        assert_eq!(q8.int8[0][0], 127, "the largest weight of a row maps to ±127");
        assert_eq!(q8.int8[2][0], -127);
        assert_eq!(q8.scale[1], 1.0, "an all-zero row keeps scale 1");
        let x = [1.0, -2.0, 0.5, 3.0];
        for (i, row) in rows.to_float().iter().enumerate() {
            let step = q8.scale[i];
            for (j, w) in row.iter().enumerate() {
                assert!((q.at(i, j) - w).abs() <= step / 2.0 + 1e-15, "({i},{j}): {} vs {w}", q.at(i, j));
            }
            let exact = crate::matrix::dot(row, &x);
            let bound = step / 2.0 * x.iter().map(|v| v.abs()).sum::<f64>();
            assert!((q.dot(i, &x) - exact).abs() <= bound + 1e-12, "row {i}");
            let mut out = vec![0.0; 4];
            q.add_scaled_row(i, 2.0, &mut out);
            for (j, o) in out.iter().enumerate() {
                assert!((o - 2.0 * q.at(i, j)).abs() < 1e-12);
            }
        }
        assert_eq!(q.bytes(), 3 * 8 + 12);
        assert_eq!(rows.bytes(), 12 * 8);
        assert_eq!(q.to_int8(), q, "quantising twice changes nothing");
    }

    #[test]
    fn both_forms_read_back_from_json_and_bad_int8_rows_are_named() {
        let rows = Rows::Float(vec![vec![0.5, -0.25], vec![0.125, 1.0]]);
        for r in [rows.clone(), rows.to_int8()] {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Rows>(&json).unwrap(), r, "{json}");
            r.validate(Some(2), 2, "w").unwrap();
        }
        assert!(serde_json::to_string(&rows).unwrap().starts_with("[[0.5"), "float rows keep the old format");
        let bad: Rows = serde_json::from_str(r#"{"scale": [0.1], "int8": [[1, 2], [3, 4]]}"#).unwrap();
        let e = bad.validate(None, 2, "w").unwrap_err();
        assert!(e.to_string().contains("w.scale"), "{e}");
        let bad: Rows = serde_json::from_str(r#"{"scale": [0.1, -1], "int8": [[1, 2], [3, 4]]}"#).unwrap();
        assert!(bad.validate(None, 2, "w").unwrap_err().to_string().contains("positive"));
        let bad: Rows = serde_json::from_str(r#"{"scale": [0.1, 1], "int8": [[1, 2], [3]]}"#).unwrap();
        assert!(bad.validate(None, 2, "w").unwrap_err().to_string().contains("w[1]"));
        assert!(serde_json::from_str::<Rows>(r#"{"scale": [0.1], "int8": [[300]]}"#).is_err(), "300 is no int8");
    }
}
