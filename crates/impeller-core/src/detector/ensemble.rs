//! Ensemble: members' raw scores are put on one scale, then combined.
//!
//! Each member's raw score s is normalised with its own training scores:
//! n = (s − median) / (q99 − median), so 0 is a typical normal frame and 1 the 99th percentile
//! of training. The ensemble's raw score is the mean (or maximum) of the members' n.

use serde::{Deserialize, Serialize};

use super::{Detector, DetectorConfig, Scratch, score_rows};
use crate::error::{ModelError, TrainError};
use crate::matrix::Matrix;
use crate::rng::Rng;
use crate::stats::quantile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    Mean,
    Max,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleConfig {
    /// Member detectors; ensembles cannot be nested.
    pub members: Vec<DetectorConfig>,
    #[serde(default = "default_combine")]
    pub combine: Combine,
}

fn default_combine() -> Combine {
    Combine::Mean
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub detector: Detector,
    /// Median raw score on the training data.
    pub center: f64,
    /// 99th percentile minus median of the raw training scores (positive).
    pub spread: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ensemble {
    pub members: Vec<Member>,
    pub combine: Combine,
}

impl Ensemble {
    pub fn fit(config: &EnsembleConfig, x: &Matrix, rng: &mut Rng) -> Result<Self, TrainError> {
        if config.members.is_empty() {
            return Err(TrainError::Config("ensemble.members must list at least one detector".into()));
        }
        let members = config
            .members
            .iter()
            .map(|c| {
                if matches!(c, DetectorConfig::Ensemble(_)) {
                    return Err(TrainError::Config("ensembles cannot be nested".into()));
                }
                let detector = Detector::fit(c, x, &mut rng.fork())?;
                let (center, spread) = normalisation(&score_rows(&detector, x));
                Ok(Member { detector, center, spread })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { members, combine: config.combine })
    }

    pub fn scratch(&self) -> Scratch {
        Scratch { members: self.members.iter().map(|m| m.detector.scratch()).collect(), ..Scratch::default() }
    }

    pub fn score(&self, x: &[f64], scratch: &mut Scratch) -> f64 {
        let normalised = self
            .members
            .iter()
            .zip(scratch.members.iter_mut())
            .map(|(m, s)| (m.detector.score(x, s) - m.center) / m.spread);
        match self.combine {
            Combine::Mean => normalised.sum::<f64>() / self.members.len() as f64,
            Combine::Max => normalised.fold(f64::NEG_INFINITY, crate::stats::nan_max),
        }
    }

    pub fn validate(&self, dim: usize, field: &str) -> Result<(), ModelError> {
        if self.members.is_empty() {
            return Err(ModelError::invalid(format!("{field}.members"), "needs at least one member"));
        }
        for (i, m) in self.members.iter().enumerate() {
            let f = format!("{field}.members[{i}]");
            if matches!(m.detector, Detector::Ensemble(_)) {
                return Err(ModelError::invalid(f, "ensembles cannot be nested"));
            }
            m.detector.validate(dim, &format!("{f}.detector"))?;
            if !m.center.is_finite() || !m.spread.is_finite() || m.spread <= 0.0 {
                return Err(ModelError::invalid(f, "center must be finite and spread positive"));
            }
        }
        Ok(())
    }
}

/// (median, q99 − median) of raw training scores, with a floor so a constant score cannot
/// divide by zero.
pub(crate) fn normalisation(scores: &[f64]) -> (f64, f64) {
    let center = quantile(scores, 0.5).unwrap_or(0.0);
    let high = quantile(scores, 0.99).unwrap_or(center);
    let spread = (high - center).max(1e-9 * center.abs().max(1.0));
    (center, spread)
}
