//! Per-feature control limits: the score is the largest absolute standardised feature, so an
//! alarm says which feature left its normal band. The simplest detector, and on rolling
//! features a strong one (a Shewhart chart per feature).

use serde::{Deserialize, Serialize};

use crate::matrix::Matrix;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZscoreConfig {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zscore {}

impl Zscore {
    pub fn fit(_config: &ZscoreConfig, _x: &Matrix) -> Self {
        Self {}
    }

    pub fn score(&self, x: &[f64]) -> f64 {
        x.iter().fold(0.0, |m, v| crate::stats::nan_max(m, v.abs()))
    }
}
