//! Frames to feature vectors: the gap policy, then the rolling windows. One code path shared by
//! training and scoring.

use crate::features::{FeatureSpec, FeatureState};
use crate::gaps::{Filled, GapFiller, GapPolicy};

/// What one frame produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A feature vector was written to the output buffer.
    Vector,
    /// The windows are still filling (after start or a restart).
    Warmup,
    /// Channel `channel` has had no usable reading for too long; the frame was skipped.
    Unscorable { channel: usize },
    /// The frame was older than the previous one and was ignored.
    OutOfOrder,
}

#[derive(Debug, Clone)]
pub struct FramePipeline {
    gaps: GapFiller,
    features: FeatureState,
    filled: Vec<f64>,
    padded: Vec<f64>,
}

impl FramePipeline {
    pub fn new(gaps: &GapPolicy, features: &FeatureSpec, channels: usize) -> Self {
        Self {
            gaps: GapFiller::new(gaps.clone(), channels),
            features: FeatureState::new(features, channels),
            filled: vec![0.0; channels],
            padded: vec![f64::NAN; channels],
        }
    }

    /// Processes one frame. `values` should hold one value per channel; missing trailing values
    /// count as missing readings and extra ones are ignored. On [`Step::Vector`], `out` holds
    /// the (unscaled) feature vector.
    pub fn push(&mut self, ts_ms: i64, values: &[f64], out: &mut [f64]) -> Step {
        let n = self.filled.len();
        let filled = if values.len() == n {
            self.gaps.fill(ts_ms, values, &mut self.filled)
        } else {
            for (i, p) in self.padded.iter_mut().enumerate() {
                *p = values.get(i).copied().unwrap_or(f64::NAN);
            }
            self.gaps.fill(ts_ms, &self.padded, &mut self.filled)
        };
        let restart = match filled {
            Filled::OutOfOrder => return Step::OutOfOrder,
            Filled::Complete { restart, .. } | Filled::Unscorable { restart, .. } => restart,
        };
        if restart {
            self.features.reset();
        }
        if let Filled::Unscorable { channel, .. } = filled {
            // Windows spanning a stretch of unusable data would mix two situations.
            self.features.reset();
            return Step::Unscorable { channel };
        }
        if self.features.push(&self.filled) {
            self.features.write(out);
            Step::Vector
        } else {
            Step::Warmup
        }
    }
}
