//! MSET, the multivariate state estimation technique (Gross, Singer et al.).
//!
//! A memory matrix D holds `m` representative normal states. For an observation x, the estimate
//! is x̂ = Dᵀw with w = G⁺(D ⊗ x), where G = D ⊗ Dᵀ and ⊗ is the similarity operator
//! s(a, b) = 1 / (1 + ‖a − b‖); the weights are normalised to sum to one. The raw score is the
//! residual ‖x − x̂‖: small for states like those in memory, large for anything else.
//!
//! Memory selection is deterministic: for each feature the training vectors holding its minimum
//! and maximum, then vectors evenly spaced in order of their norm, until `memory` are chosen.

use serde::{Deserialize, Serialize};

use super::Scratch;
use crate::error::{ModelError, TrainError};
use crate::matrix::{Matrix, distance};
use crate::weights::Rows;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsetConfig {
    /// Number of memory vectors (states) kept, at most the number of training rows.
    #[serde(default = "default_memory")]
    pub memory: usize,
}

fn default_memory() -> usize {
    60
}

impl Default for MsetConfig {
    fn default() -> Self {
        Self { memory: default_memory() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mset {
    /// Memory vectors, `m` rows of length `dim`.
    pub memory: Rows,
    /// Pseudo-inverse of the memory's similarity matrix, `m × m`.
    pub similarity_inverse: Rows,
}

fn similarity(a: &[f64], b: &[f64]) -> f64 {
    1.0 / (1.0 + distance(a, b))
}

impl Mset {
    pub fn fit(config: &MsetConfig, x: &Matrix) -> Result<Self, TrainError> {
        if config.memory < 2 {
            return Err(TrainError::Config(format!("mset.memory must be at least 2, got {}", config.memory)));
        }
        if x.rows() < 2 {
            return Err(TrainError::TooFewRows { usable: x.rows(), needed: 2 });
        }
        let chosen = select_memory(x, config.memory.min(x.rows()));
        let memory: Vec<Vec<f64>> = chosen.iter().map(|&i| x.row(i).to_vec()).collect();
        let m = memory.len();
        let g = nalgebra::DMatrix::from_fn(m, m, |i, j| similarity(&memory[i], &memory[j]));
        let inv = g
            .pseudo_inverse(1e-10)
            .map_err(|e| TrainError::NonFinite { what: format!("mset similarity inverse ({e})") })?;
        let similarity_inverse: Vec<Vec<f64>> = (0..m).map(|i| (0..m).map(|j| inv[(i, j)]).collect()).collect();
        let mset = Self { memory: memory.into(), similarity_inverse: similarity_inverse.into() };
        Ok(mset)
    }

    pub fn scratch(&self) -> Scratch {
        let m = self.memory.len();
        let d = self.memory.width();
        Scratch { a: vec![0.0; m], b: vec![0.0; m], c: vec![0.0; d], ..Scratch::default() }
    }

    pub fn score(&self, x: &[f64], scratch: &mut Scratch) -> f64 {
        let Scratch { a, b: w, c: estimate, .. } = scratch;
        for (i, ai) in a.iter_mut().enumerate() {
            *ai = 1.0 / (1.0 + self.memory.distance(i, x));
        }
        let mut total = 0.0;
        for (i, wi) in w.iter_mut().enumerate() {
            *wi = self.similarity_inverse.dot(i, a);
            total += *wi;
        }
        // Normalised weights make the estimate a weighted average of states; if the weights
        // cancel out the raw ones are used.
        let norm = if total.abs() > 1e-12 { total } else { 1.0 };
        estimate.fill(0.0);
        for (i, wi) in w.iter().enumerate() {
            self.memory.add_scaled_row(i, wi / norm, estimate);
        }
        distance(x, estimate)
    }

    pub fn validate(&self, dim: usize, field: &str) -> Result<(), ModelError> {
        let m = self.memory.len();
        if m < 2 {
            return Err(ModelError::invalid(format!("{field}.memory"), "needs at least 2 vectors"));
        }
        self.memory.validate(None, dim, &format!("{field}.memory"))?;
        self.similarity_inverse.validate(Some(m), m, &format!("{field}.similarity_inverse"))
    }
}

/// Indices of the memory vectors, in selection order, without duplicates.
fn select_memory(x: &Matrix, m: usize) -> Vec<usize> {
    let mut chosen: Vec<usize> = Vec::with_capacity(m);
    let push = |i: usize, chosen: &mut Vec<usize>| {
        if chosen.len() < m && !chosen.contains(&i) {
            chosen.push(i);
        }
    };
    for j in 0..x.cols() {
        let col = x.column(j);
        let (mut lo, mut hi) = (0, 0);
        for (i, v) in col.iter().enumerate() {
            if *v < col[lo] {
                lo = i;
            }
            if *v > col[hi] {
                hi = i;
            }
        }
        push(lo, &mut chosen);
        push(hi, &mut chosen);
    }
    let mut by_norm: Vec<usize> = (0..x.rows()).collect();
    let norm = |i: usize| x.row(i).iter().map(|v| v * v).sum::<f64>();
    by_norm.sort_by(|&a, &b| norm(a).total_cmp(&norm(b)).then(a.cmp(&b)));
    // Evenly spaced in norm order, then the rest in norm order if extremes took some places.
    let n = by_norm.len();
    for k in 0..m {
        push(by_norm[k * n / m], &mut chosen);
    }
    for &i in &by_norm {
        push(i, &mut chosen);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn circle(n: usize, noise: f64, rng: &mut Rng) -> Matrix {
        let mut m = Matrix::new(2);
        for i in 0..n {
            let t = i as f64 / n as f64 * std::f64::consts::TAU;
            m.push_row(&[t.cos() + noise * (rng.next_f64() - 0.5), t.sin() + noise * (rng.next_f64() - 0.5)]);
        }
        m
    }

    #[test]
    fn memory_states_are_reproduced_and_off_manifold_points_are_not() {
        let mut rng = Rng::new(5);
        let x = circle(400, 0.05, &mut rng);
        let mset = Mset::fit(&MsetConfig { memory: 40 }, &x).expect("fit");
        assert_eq!(mset.memory.len(), 40);
        let mut s = mset.scratch();
        let on = mset.score(&mset.memory.to_float()[7], &mut s);
        assert!(on < 1e-6, "a memory vector should be reproduced exactly, residual {on}");
        let near = mset.score(&[0.0, 1.0], &mut s);
        let outside = mset.score(&[0.0, 1.6], &mut s);
        let far = mset.score(&[3.0, 3.0], &mut s);
        assert!(near < 0.1, "a normal state scored {near}");
        assert!(outside > 3.0 * near && far > 3.0 * near, "anomalies scored {outside} and {far} vs normal {near}");
        // Normalised weights make the estimate a convex combination of states, so the circle's
        // centre is estimated well: MSET, like kernel regression, interpolates inside the hull.
    }

    #[test]
    fn memory_selection_includes_extremes_and_has_no_duplicates() {
        let x = Matrix::from_rows(1, &[[5.0], [1.0], [9.0], [3.0], [7.0]]);
        let idx = select_memory(&x, 4);
        assert_eq!(&idx[..2], &[1, 2], "min and max first");
        let mut sorted = idx.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
    }
}
