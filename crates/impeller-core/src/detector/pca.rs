//! PCA with Hotelling's T² and the Q statistic (squared prediction error).
//!
//! Fitted on standardised features (mean zero), keeping the leading components that explain
//! `variance` of the total. For a feature vector x with scores t = Pᵀx:
//! - T² = Σ tᵢ²/λᵢ, with the control limit for a new observation
//!   T²_α = a(n−1)(n+1) / (n(n−a)) · F_α(a, n−a);
//! - Q = ‖x − Pt‖², with the Jackson–Mudholkar limit from the residual eigenvalues θₖ = Σ λⱼᵏ:
//!   Q_α = θ₁ [z_α √(2θ₂h₀²)/θ₁ + 1 + θ₂h₀(h₀−1)/θ₁²]^(1/h₀), h₀ = 1 − 2θ₁θ₃/(3θ₂²).
//!
//! The raw score is the larger of T²/T²_α and Q/Q_α (or just one, by `statistic`): 1.0 is on
//! the control limit.

use serde::{Deserialize, Serialize};

use super::Scratch;
use crate::error::{ModelError, TrainError, check_finite};
use crate::matrix::Matrix;
use crate::stats::{f_quantile, normal_quantile};
use crate::weights::Rows;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcaStatistic {
    /// max(T²/T²_α, Q/Q_α)
    Both,
    T2,
    Q,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcaConfig {
    /// Fraction of the total variance the kept components must explain (0 < v ≤ 1).
    #[serde(default = "default_variance")]
    pub variance: f64,
    /// Confidence level of the control limits, e.g. 0.99.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_statistic")]
    pub statistic: PcaStatistic,
}

fn default_variance() -> f64 {
    0.9
}
fn default_alpha() -> f64 {
    0.99
}
fn default_statistic() -> PcaStatistic {
    PcaStatistic::Both
}

impl Default for PcaConfig {
    fn default() -> Self {
        Self { variance: default_variance(), alpha: default_alpha(), statistic: default_statistic() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pca {
    /// Mean of the training features (near zero after scaling; kept so that T² of the training
    /// mean is exactly zero).
    pub mean: Vec<f64>,
    /// Kept principal directions, one row of length `dim` each (orthonormal).
    pub components: Rows,
    /// Variance along each kept direction.
    pub eigenvalues: Vec<f64>,
    /// Fraction of total variance the kept directions explain.
    pub explained: f64,
    pub t2_limit: f64,
    /// Zero when no residual variance is left (then Q is not used).
    pub q_limit: f64,
    pub statistic: PcaStatistic,
}

impl Pca {
    pub fn fit(config: &PcaConfig, x: &Matrix) -> Result<Self, TrainError> {
        if !(config.variance > 0.0 && config.variance <= 1.0) {
            return Err(TrainError::Config(format!("pca.variance must be in (0, 1], got {}", config.variance)));
        }
        if !(config.alpha > 0.5 && config.alpha < 1.0) {
            return Err(TrainError::Config(format!("pca.alpha must be in (0.5, 1), got {}", config.alpha)));
        }
        let (n, d) = (x.rows(), x.cols());
        if n < d + 2 {
            return Err(TrainError::TooFewRows { usable: n, needed: d + 2 });
        }
        // Covariance of centred data (the scaler already centred it; centre again to be exact).
        let m = x.to_nalgebra();
        let means = m.row_mean();
        let centred = nalgebra::DMatrix::from_fn(n, d, |i, j| m[(i, j)] - means[j]);
        let cov = (centred.transpose() * &centred) / (n as f64 - 1.0);
        let eig = cov.symmetric_eigen();
        let mut order: Vec<usize> = (0..d).collect();
        // Descending eigenvalue; ties broken by index so the result is deterministic.
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]).then(a.cmp(&b)));
        let lambdas: Vec<f64> = order.iter().map(|&i| eig.eigenvalues[i].max(0.0)).collect();
        let total: f64 = lambdas.iter().sum();
        if total <= 0.0 {
            return Err(TrainError::Config("pca: training features have no variance".into()));
        }
        let mut kept = 0;
        let mut acc = 0.0;
        while kept < d && acc / total < config.variance - 1e-12 {
            acc += lambdas[kept];
            kept += 1;
        }
        let kept = kept.max(1);
        let explained = lambdas[..kept].iter().sum::<f64>() / total;
        let components: Vec<Vec<f64>> = order[..kept]
            .iter()
            .map(|&i| {
                let v = eig.eigenvectors.column(i);
                // Fix the sign (largest-magnitude entry positive) so the model is reproducible.
                let pivot = v.iter().fold(0.0f64, |p, &c| if c.abs() > p.abs() { c } else { p });
                let sign = if pivot < 0.0 { -1.0 } else { 1.0 };
                v.iter().map(|c| c * sign).collect()
            })
            .collect();
        let eigenvalues: Vec<f64> = lambdas[..kept].iter().map(|l| l.max(1e-12 * total)).collect();

        let a = kept as f64;
        let nf = n as f64;
        let t2_limit = a * (nf - 1.0) * (nf + 1.0) / (nf * (nf - a)) * f_quantile(config.alpha, a, nf - a);
        let q_limit = jackson_mudholkar(&lambdas[kept..], config.alpha);
        if config.statistic == PcaStatistic::Q && q_limit == 0.0 {
            return Err(TrainError::Config(
                "pca.statistic = \"q\" needs residual variance; lower pca.variance below 1".into(),
            ));
        }
        let mean: Vec<f64> = means.iter().copied().collect();
        let pca = Self {
            mean,
            components: components.into(),
            eigenvalues,
            explained,
            t2_limit,
            q_limit,
            statistic: config.statistic,
        };
        Ok(pca)
    }

    pub fn scratch(&self) -> Scratch {
        Scratch { a: vec![0.0; self.components.len()], b: vec![0.0; self.mean.len()], ..Scratch::default() }
    }

    /// (T², Q) of one standardised vector.
    pub fn statistics(&self, x: &[f64], scratch: &mut Scratch) -> (f64, f64) {
        let Scratch { a: t, b: centred, .. } = scratch;
        for ((c, v), m) in centred.iter_mut().zip(x).zip(&self.mean) {
            *c = v - m;
        }
        let mut t2 = 0.0;
        for (i, (l, ti)) in self.eigenvalues.iter().zip(t.iter_mut()).enumerate() {
            *ti = self.components.dot(i, centred);
            t2 += *ti * *ti / l;
        }
        let mut q = 0.0;
        for (j, xj) in centred.iter().enumerate() {
            let recon: f64 = t.iter().enumerate().map(|(i, ti)| self.components.at(i, j) * ti).sum();
            q += (xj - recon) * (xj - recon);
        }
        (t2, q)
    }

    pub fn score(&self, x: &[f64], scratch: &mut Scratch) -> f64 {
        let (t2, q) = self.statistics(x, scratch);
        let t2n = t2 / self.t2_limit;
        let qn = if self.q_limit > 0.0 { q / self.q_limit } else { 0.0 };
        match self.statistic {
            PcaStatistic::Both => crate::stats::nan_max(t2n, qn),
            PcaStatistic::T2 => t2n,
            PcaStatistic::Q => qn,
        }
    }

    pub fn validate(&self, dim: usize, field: &str) -> Result<(), ModelError> {
        let k = self.components.len();
        if self.mean.len() != dim {
            return Err(ModelError::invalid(
                format!("{field}.mean"),
                format!("needs {dim} values, has {}", self.mean.len()),
            ));
        }
        check_finite(&format!("{field}.mean"), &self.mean)?;
        if k == 0 || k > dim {
            return Err(ModelError::invalid(
                format!("{field}.components"),
                format!("needs 1 to {dim} components, has {k}"),
            ));
        }
        if self.eigenvalues.len() != k {
            return Err(ModelError::invalid(
                format!("{field}.eigenvalues"),
                format!("needs {k} values, has {}", self.eigenvalues.len()),
            ));
        }
        self.components.validate(None, dim, &format!("{field}.components"))?;
        check_finite(&format!("{field}.eigenvalues"), &self.eigenvalues)?;
        if self.eigenvalues.iter().any(|l| *l <= 0.0) {
            return Err(ModelError::invalid(format!("{field}.eigenvalues"), "must be positive"));
        }
        if !(self.t2_limit.is_finite() && self.t2_limit > 0.0) {
            return Err(ModelError::invalid(format!("{field}.t2_limit"), "must be a positive number"));
        }
        if !(self.q_limit.is_finite() && self.q_limit >= 0.0) {
            return Err(ModelError::invalid(format!("{field}.q_limit"), "must be a non-negative number"));
        }
        if self.statistic == PcaStatistic::Q && self.q_limit == 0.0 {
            return Err(ModelError::invalid(format!("{field}.q_limit"), "is 0, so statistic `q` could never alarm"));
        }
        Ok(())
    }
}

/// Jackson–Mudholkar upper control limit of Q from the residual eigenvalues; 0 when none is left.
pub fn jackson_mudholkar(residual: &[f64], alpha: f64) -> f64 {
    let theta = |k: i32| residual.iter().map(|l| l.powi(k)).sum::<f64>();
    let (t1, t2, t3) = (theta(1), theta(2), theta(3));
    if t1 <= 1e-12 || t2 <= 0.0 {
        return 0.0;
    }
    let h0 = 1.0 - 2.0 * t1 * t3 / (3.0 * t2 * t2);
    let z = normal_quantile(alpha);
    // Jackson–Mudholkar is accurate for h₀ > 0 (a few comparable residual eigenvalues). With
    // one dominant residual eigenvalue h₀ ≤ 0 and it overshoots (by 19 % in a test case), so
    // Box's approximation is used instead (9 % under in the same case).
    if h0 <= 1e-3 {
        return box_approximation(t1, t2, z);
    }
    let inner = z * h0 * (2.0 * t2).sqrt() / t1 + 1.0 + t2 * h0 * (h0 - 1.0) / (t1 * t1);
    if inner <= 0.0 {
        return box_approximation(t1, t2, z);
    }
    t1 * libm::pow(inner, 1.0 / h0)
}

/// Box's scaled chi-squared approximation of the Q quantile, g·χ²_h (Wilson–Hilferty).
fn box_approximation(t1: f64, t2: f64, z: f64) -> f64 {
    let g = t2 / t1;
    let h = t1 * t1 / t2;
    let zh = z * (2.0 / (9.0 * h)).sqrt() + 1.0 - 2.0 / (9.0 * h);
    g * h * zh.powi(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Gaussian samples with covariance diag(9, 4, 1, 0.01) rotated by a fixed orthonormal basis.
    fn known_covariance(n: usize) -> (Matrix, [[f64; 4]; 4]) {
        let basis = [[0.5, 0.5, 0.5, 0.5], [0.5, -0.5, 0.5, -0.5], [0.5, 0.5, -0.5, -0.5], [0.5, -0.5, -0.5, 0.5]];
        let sd = [3.0, 2.0, 1.0, 0.1];
        let mut rng = Rng::new(11);
        let mut m = Matrix::new(4);
        for _ in 0..n {
            let z: Vec<f64> = sd.iter().map(|s| s * gaussian(&mut rng)).collect();
            let row: Vec<f64> = (0..4).map(|j| (0..4).map(|k| z[k] * basis[k][j]).sum()).collect();
            m.push_row(&row);
        }
        (m, basis)
    }

    fn gaussian(rng: &mut Rng) -> f64 {
        let u1 = rng.next_f64().max(1e-300);
        let u2 = rng.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn recovers_the_known_principal_directions_and_variances() {
        let (x, basis) = known_covariance(20_000);
        let pca = Pca::fit(&PcaConfig { variance: 0.95, ..PcaConfig::default() }, &x).expect("fit");
        // Variances 9, 4, 1, 0.01: 95 % needs the first three components.
        assert_eq!(pca.components.len(), 3);
        for (k, expected) in [9.0, 4.0, 1.0].iter().enumerate() {
            assert!((pca.eigenvalues[k] - expected).abs() / expected < 0.05, "λ{k} = {}", pca.eigenvalues[k]);
            let cos = pca.components.dot(k, &basis[k]).abs();
            assert!(cos > 0.99, "component {k} off its true direction: |cos| = {cos}");
        }
    }

    #[test]
    fn t2_of_the_training_mean_is_zero_and_q_in_the_subspace_is_zero() {
        let (x, basis) = known_covariance(2_000);
        let pca = Pca::fit(&PcaConfig { variance: 0.95, ..PcaConfig::default() }, &x).expect("fit");
        let mean: Vec<f64> = (0..4).map(|j| crate::stats::mean(&x.column(j))).collect();
        let mut s = pca.scratch();
        let (t2, _) = pca.statistics(&mean, &mut s);
        assert!(t2 < 1e-20, "T² of the mean is {t2}");
        // A point along the kept components (from the mean) has no residual.
        let inside: Vec<f64> =
            (0..4).map(|j| pca.mean[j] + 2.0 * pca.components.at(0, j) - 3.0 * pca.components.at(1, j)).collect();
        let (_, q) = pca.statistics(&inside, &mut s);
        assert!(q < 1e-20, "Q inside the subspace is {q}");
        // A point along the discarded direction has Q equal to its squared length.
        let outside: Vec<f64> = (0..4).map(|j| pca.mean[j] + 5.0 * basis[3][j]).collect();
        let (_, q) = pca.statistics(&outside, &mut s);
        assert!((q - 25.0).abs() < 0.5, "Q off the subspace is {q}");
    }

    #[test]
    fn control_limits_hold_about_alpha_of_fresh_normal_data() {
        let (x, _) = known_covariance(3_000);
        let train = Matrix::from_rows(4, &x.iter_rows().take(1_000).collect::<Vec<_>>());
        let pca =
            Pca::fit(&PcaConfig { variance: 0.95, alpha: 0.99, statistic: PcaStatistic::T2 }, &train).expect("fit");
        let mut s = pca.scratch();
        let over = x.iter_rows().skip(1_000).filter(|r| pca.score(r, &mut s) > 1.0).count();
        let rate = over as f64 / 2_000.0;
        assert!(rate < 0.03, "T² exceeded its 99 % limit on {:.1} % of normal rows", rate * 100.0);
    }

    /// The Q limit against the empirical 99th percentile of Q = Σ λⱼ zⱼ² (zⱼ standard normal):
    /// Jackson–Mudholkar where h₀ > 0 (within 3 %), Box's approximation where h₀ < 0 (within 12 %).
    #[test]
    fn q_limit_matches_monte_carlo_for_both_signs_of_h0() {
        let mut rng = Rng::new(21);
        let cases = [(vec![1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], 0.12), (vec![1.0, 0.8, 0.5], 0.03)];
        for (residual, tolerance) in cases {
            let (t1, t2, t3) =
                residual.iter().fold((0.0, 0.0, 0.0), |(a, b, c), l: &f64| (a + l, b + l * l, c + l * l * l));
            let h0: f64 = 1.0 - 2.0 * t1 * t3 / (3.0 * t2 * t2);
            let samples: Vec<f64> =
                (0..200_000).map(|_| residual.iter().map(|l| l * gaussian(&mut rng).powi(2)).sum()).collect();
            let empirical = crate::stats::quantile(&samples, 0.99).unwrap();
            let limit = jackson_mudholkar(&residual, 0.99);
            assert!(
                (limit - empirical).abs() / empirical < tolerance,
                "h0 = {h0:.3}: limit {limit:.3}, empirical 99th percentile {empirical:.3}"
            );
        }
    }

    #[test]
    fn statistic_q_without_residual_variance_is_refused() {
        let (x, _) = known_covariance(500);
        let cfg = PcaConfig { variance: 1.0, statistic: PcaStatistic::Q, ..PcaConfig::default() };
        assert!(matches!(Pca::fit(&cfg, &x), Err(TrainError::Config(_))));
    }

    #[test]
    fn too_few_rows_is_an_error() {
        let x = Matrix::from_rows(3, &[[1.0, 2.0, 3.0], [2.0, 3.0, 1.0]]);
        assert!(matches!(Pca::fit(&PcaConfig::default(), &x), Err(TrainError::TooFewRows { .. })));
    }
}
