//! Anomaly detectors. Each one is fitted on standardised features of normal operation and gives a
//! raw score per feature vector: higher is more anomalous. Turning raw scores into alarms
//! (smoothing, threshold, debouncing) is the job of [`crate::calibration`], the same for every
//! detector.
//!
//! | kind | idea | score |
//! |---|---|---|
//! | `zscore` | per-feature control limits (a Shewhart chart per feature) | largest absolute standardised feature |
//! | `pca` | principal subspace of normal data | Hotelling T² and Q (SPE), each over its control limit |
//! | `mset` | similarity-based state estimation from a memory of normal states | distance to the estimate |
//! | `isolation_forest` | random axis-aligned splits isolate outliers quickly | 2^(−mean path length / c(ψ)) |
//! | `autoencoder` | small dense network reconstructing normal data | mean squared reconstruction error |
//! | `ensemble` | members' scores normalised on training data | their mean or maximum |

pub mod autoencoder;
pub mod ensemble;
pub mod isolation_forest;
pub mod mset;
pub mod pca;
pub mod zscore;

use serde::{Deserialize, Serialize};

pub use autoencoder::{Autoencoder, AutoencoderConfig};
pub use ensemble::{Ensemble, EnsembleConfig};
pub use isolation_forest::{IsolationForest, IsolationForestConfig};
pub use mset::{Mset, MsetConfig};
pub use pca::{Pca, PcaConfig};
pub use zscore::{Zscore, ZscoreConfig};

use crate::error::{ModelError, TrainError};
use crate::matrix::Matrix;
use crate::rng::Rng;

/// How to train a detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DetectorConfig {
    Zscore(ZscoreConfig),
    Pca(PcaConfig),
    Mset(MsetConfig),
    IsolationForest(IsolationForestConfig),
    Autoencoder(AutoencoderConfig),
    Ensemble(EnsembleConfig),
}

impl DetectorConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Zscore(_) => "zscore",
            Self::Pca(_) => "pca",
            Self::Mset(_) => "mset",
            Self::IsolationForest(_) => "isolation_forest",
            Self::Autoencoder(_) => "autoencoder",
            Self::Ensemble(_) => "ensemble",
        }
    }
}

/// A trained detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Detector {
    Zscore(Zscore),
    Pca(Pca),
    Mset(Mset),
    IsolationForest(IsolationForest),
    Autoencoder(Autoencoder),
    Ensemble(Ensemble),
}

/// Reusable buffers so that scoring a frame allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    pub(crate) a: Vec<f64>,
    pub(crate) b: Vec<f64>,
    pub(crate) c: Vec<f64>,
    pub(crate) members: Vec<Scratch>,
}

impl Detector {
    /// Fits a detector on standardised training features `x` (one row per frame).
    pub fn fit(config: &DetectorConfig, x: &Matrix, rng: &mut Rng) -> Result<Self, TrainError> {
        Ok(match config {
            DetectorConfig::Zscore(c) => Self::Zscore(Zscore::fit(c, x)),
            DetectorConfig::Pca(c) => Self::Pca(Pca::fit(c, x)?),
            DetectorConfig::Mset(c) => Self::Mset(Mset::fit(c, x)?),
            DetectorConfig::IsolationForest(c) => Self::IsolationForest(IsolationForest::fit(c, x, rng)?),
            DetectorConfig::Autoencoder(c) => Self::Autoencoder(Autoencoder::fit(c, x, rng)?),
            DetectorConfig::Ensemble(c) => Self::Ensemble(Ensemble::fit(c, x, rng)?),
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Zscore(_) => "zscore",
            Self::Pca(_) => "pca",
            Self::Mset(_) => "mset",
            Self::IsolationForest(_) => "isolation_forest",
            Self::Autoencoder(_) => "autoencoder",
            Self::Ensemble(_) => "ensemble",
        }
    }

    /// Buffers sized for this detector.
    pub fn scratch(&self) -> Scratch {
        match self {
            Self::Zscore(_) | Self::IsolationForest(_) => Scratch::default(),
            Self::Pca(d) => d.scratch(),
            Self::Mset(d) => d.scratch(),
            Self::Autoencoder(d) => d.scratch(),
            Self::Ensemble(d) => d.scratch(),
        }
    }

    /// Raw anomaly score of one standardised feature vector.
    pub fn score(&self, x: &[f64], scratch: &mut Scratch) -> f64 {
        match self {
            Self::Zscore(d) => d.score(x),
            Self::Pca(d) => d.score(x, scratch),
            Self::Mset(d) => d.score(x, scratch),
            Self::IsolationForest(d) => d.score(x),
            Self::Autoencoder(d) => d.score(x, scratch),
            Self::Ensemble(d) => d.score(x, scratch),
        }
    }

    /// The same detector with its weight matrices quantised to int8 (see [`crate::weights`]), or
    /// `None` for a kind without weight matrices (zscore's limits, the forest's split points:
    /// rounding those moves decisions, it saves nothing). An ensemble quantises the members that
    /// have weights.
    pub fn to_int8(&self) -> Option<Detector> {
        match self {
            Self::Zscore(_) | Self::IsolationForest(_) => None,
            Self::Pca(d) => Some(Self::Pca(Pca { components: d.components.to_int8(), ..d.clone() })),
            Self::Mset(d) => Some(Self::Mset(Mset {
                memory: d.memory.to_int8(),
                similarity_inverse: d.similarity_inverse.to_int8(),
            })),
            Self::Autoencoder(d) => Some(Self::Autoencoder(Autoencoder {
                layers: d
                    .layers
                    .iter()
                    .map(|l| autoencoder::Layer { weights: l.weights.to_int8(), ..l.clone() })
                    .collect(),
            })),
            Self::Ensemble(e) => {
                let quantised: Vec<Option<Detector>> = e.members.iter().map(|m| m.detector.to_int8()).collect();
                quantised.iter().any(Option::is_some).then(|| {
                    let members = e
                        .members
                        .iter()
                        .zip(quantised)
                        .map(|(m, q)| ensemble::Member {
                            detector: q.unwrap_or_else(|| m.detector.clone()),
                            ..m.clone()
                        })
                        .collect();
                    Self::Ensemble(Ensemble { members, combine: e.combine })
                })
            }
        }
    }

    /// Whether any of the detector's weights are int8.
    pub fn is_int8(&self) -> bool {
        match self {
            Self::Zscore(_) | Self::IsolationForest(_) => false,
            Self::Pca(d) => d.components.is_int8(),
            Self::Mset(d) => d.memory.is_int8() || d.similarity_inverse.is_int8(),
            Self::Autoencoder(d) => d.layers.iter().any(|l| l.weights.is_int8()),
            Self::Ensemble(e) => e.members.iter().any(|m| m.detector.is_int8()),
        }
    }

    /// Checks shapes and values of a detector read from outside, so that scoring cannot panic.
    pub fn validate(&self, dim: usize, field: &str) -> Result<(), ModelError> {
        match self {
            Self::Zscore(_) => Ok(()),
            Self::Pca(d) => d.validate(dim, field),
            Self::Mset(d) => d.validate(dim, field),
            Self::IsolationForest(d) => d.validate(dim, field),
            Self::Autoencoder(d) => d.validate(dim, field),
            Self::Ensemble(d) => d.validate(dim, field),
        }
    }
}

/// Raw scores of every row of `x`.
pub fn score_rows(detector: &Detector, x: &Matrix) -> Vec<f64> {
    let mut scratch = detector.scratch();
    x.iter_rows().map(|r| detector.score(r, &mut scratch)).collect()
}
