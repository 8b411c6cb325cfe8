//! Scoring frames one at a time, as a device does: the frame pipeline, the scaler, the
//! detector, then the calibration's smoothing, threshold and debouncing. No allocation per frame
//! once the scorer is built.

use std::sync::Arc;

use crate::calibration::{Debouncer, Smoother};
use crate::detector::Scratch;
use crate::model::Model;
use crate::pipeline::{FramePipeline, Step};

/// The outcome of scoring one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// The rolling windows are still filling; no score yet.
    Warmup,
    /// Channel `channel` (index into the model's channels) has had no usable reading for
    /// longer than the gap policy allows; the frame was not scored.
    Unscorable {
        channel: usize,
    },
    /// The frame was older than the previous one and was ignored.
    OutOfOrder,
    Scored(Scored),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// The detector's raw score of this frame.
    pub raw: f64,
    /// Smoothed, normalised score: 0 typical of training, 1 the calibration quantile.
    pub score: f64,
    /// `score` exceeded the model's threshold.
    pub above: bool,
    /// The debounced alarm.
    pub alarm: bool,
}

impl Verdict {
    pub fn alarm(&self) -> bool {
        matches!(self, Verdict::Scored(s) if s.alarm)
    }
}

/// Streaming scorer for one device.
#[derive(Debug, Clone)]
pub struct Scorer {
    model: Arc<Model>,
    pipeline: FramePipeline,
    vector: Vec<f64>,
    scratch: Scratch,
    smoother: Smoother,
    debouncer: Debouncer,
}

impl Scorer {
    pub fn new(model: Arc<Model>) -> Self {
        let pipeline = FramePipeline::new(&model.gaps, &model.features, model.channels.len());
        Self {
            pipeline,
            vector: vec![0.0; model.dim()],
            scratch: model.detector.scratch(),
            smoother: Smoother::new(model.calibration.smoothing),
            debouncer: Debouncer::new(&model.calibration.debounce),
            model,
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The standardised feature vector of the last scored frame (for drift sketches and for
    /// saying which features an alarm is about). Meaningful only after `Verdict::Scored`.
    pub fn features(&self) -> &[f64] {
        &self.vector
    }

    /// Scores one frame: `values` in the order of the model's channels, NaN where missing.
    pub fn push(&mut self, ts_ms: i64, values: &[f64]) -> Verdict {
        match self.pipeline.push(ts_ms, values, &mut self.vector) {
            Step::Warmup => return Verdict::Warmup,
            Step::Unscorable { channel } => return Verdict::Unscorable { channel },
            Step::OutOfOrder => return Verdict::OutOfOrder,
            Step::Vector => {}
        }
        self.model.scaler.transform(&mut self.vector);
        // Readings near the limits of f64 can overflow the features, and extreme (yet finite)
        // model weights can overflow a detector: such a frame is as abnormal as it gets, never
        // normal, so its raw score is +∞.
        let raw = if self.vector.iter().all(|v| v.is_finite()) {
            self.model.detector.score(&self.vector, &mut self.scratch)
        } else {
            f64::INFINITY
        };
        let raw = if raw.is_nan() { f64::INFINITY } else { raw };
        let cal = &self.model.calibration;
        let score = cal.normalise(self.smoother.push(raw));
        let above = score.is_nan() || score > cal.threshold;
        let alarm = self.debouncer.push(above);
        Verdict::Scored(Scored { raw, score, above, alarm })
    }
}
