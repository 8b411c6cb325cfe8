//! The self-test shipped in every package: frames and the scores this model must give them.
//! A device replays them before it trusts a model, which catches a wrong scoring engine, a
//! platform whose arithmetic differs, or weights damaged after verification.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::channel::Frame;
use crate::model::Model;
use crate::scorer::{Scorer, Verdict};

/// Tail of the training data used as normal frames, then shifted frames to exercise alarms.
const NORMAL_FRAMES: usize = 100;
const SHIFTED_FRAMES: usize = 30;
/// Shift of the alarm frames, in training standard deviations of each channel.
const SHIFT_SD: f64 = 5.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTestFrame {
    pub ts_ms: i64,
    pub values: Vec<f64>,
    /// The normalised score expected, `None` when the frame is not scored (warm-up).
    pub score: Option<f64>,
    pub alarm: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTest {
    /// Largest accepted difference, relative to max(1, |expected|).
    pub tolerance: f64,
    pub frames: Vec<SelfTestFrame>,
}

/// Why a self-test failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("self-test frame {frame}: expected {expected}, got {got}")]
pub struct SelfTestFailure {
    pub frame: usize,
    pub expected: String,
    pub got: String,
}

impl SelfTest {
    /// Builds the self-test of `model` from its training frames.
    pub fn generate(model: &Arc<Model>, training: &[Frame]) -> Self {
        let tail = &training[training.len().saturating_sub(NORMAL_FRAMES)..];
        let channels = model.channels.len();
        let sd: Vec<f64> = (0..channels)
            .map(|c| {
                let col: Vec<f64> = training.iter().map(|f| f.values[c]).filter(|v| v.is_finite()).collect();
                let s = crate::stats::std_dev(&col);
                if s.is_finite() && s > 0.0 { s } else { 1.0 }
            })
            .collect();
        let step = match tail {
            [.., a, b] => (b.ts_ms - a.ts_ms).max(1),
            _ => 1000,
        };
        let last_ts = tail.last().map_or(0, |f| f.ts_ms);
        let shifted = tail.iter().rev().take(SHIFTED_FRAMES).rev().enumerate().map(|(i, f)| Frame {
            ts_ms: last_ts + step * (i as i64 + 1),
            values: f.values.iter().zip(&sd).map(|(v, s)| v + SHIFT_SD * s).collect(),
        });
        let inputs: Vec<Frame> = tail.iter().cloned().chain(shifted).collect();
        let mut scorer = Scorer::new(Arc::clone(model));
        let frames = inputs
            .into_iter()
            .map(|f| {
                let (score, alarm) = match scorer.push(f.ts_ms, &f.values) {
                    Verdict::Scored(s) => (Some(s.score), s.alarm),
                    _ => (None, false),
                };
                SelfTestFrame { ts_ms: f.ts_ms, values: f.values, score, alarm }
            })
            .collect();
        Self { tolerance: 1e-9, frames }
    }

    /// Replays the frames through a fresh scorer and compares.
    pub fn run(&self, model: &Arc<Model>) -> Result<(), SelfTestFailure> {
        let mut scorer = Scorer::new(Arc::clone(model));
        for (i, f) in self.frames.iter().enumerate() {
            let got = scorer.push(f.ts_ms, &f.values);
            let fail = |got: String| SelfTestFailure { frame: i, expected: describe(f.score, f.alarm), got };
            match (got, f.score) {
                (Verdict::Scored(s), Some(e)) => {
                    let close = (s.score - e).abs() <= self.tolerance * e.abs().max(1.0);
                    if !close || s.alarm != f.alarm {
                        return Err(fail(describe(Some(s.score), s.alarm)));
                    }
                }
                (Verdict::Scored(s), None) => return Err(fail(describe(Some(s.score), s.alarm))),
                (other, Some(_)) => return Err(fail(format!("{other:?}"))),
                (_, None) => {}
            }
        }
        Ok(())
    }
}

fn describe(score: Option<f64>, alarm: bool) -> String {
    match score {
        Some(s) => format!("score {s} alarm {alarm}"),
        None => "no score".into(),
    }
}
