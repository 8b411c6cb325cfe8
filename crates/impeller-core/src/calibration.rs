//! From raw detector scores to alarms, the same for every detector, carried in the model:
//!
//! 1. **Smoothing**: a causal moving average of the raw score over the last `smoothing` scored
//!    frames (only past and present frames, as on a device).
//! 2. **Normalisation**: `score = (smoothed − center) / spread`, where `center` is the median
//!    and `center + spread` the `quantile` of the smoothed scores of the training frames. So 0
//!    is a typical normal frame and 1.0 the worst (by default) training frame.
//! 3. **Threshold**: a frame is *above* when `score > threshold` (the configured margin).
//! 4. **Debouncing**: an alarm is raised when at least `k` of the last `n` frames were above.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, TrainError};
use crate::stats::quantile;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debounce {
    /// Frames above the threshold needed …
    pub k: usize,
    /// … among this many most recent frames.
    pub n: usize,
}

impl Default for Debounce {
    fn default() -> Self {
        Self { k: 1, n: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationConfig {
    /// Frames in the causal moving average of the raw score (1 = no smoothing).
    #[serde(default = "default_smoothing")]
    pub smoothing: usize,
    /// Quantile of the smoothed training scores that the normalised score 1.0 stands for
    /// (1.0 = the worst training frame).
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// Alarm threshold on the normalised score.
    #[serde(default = "default_margin")]
    pub margin: f64,
    #[serde(default)]
    pub debounce: Debounce,
    /// Fraction of the training frames, taken from the end, that the detector is not fitted on,
    /// so that the calibration also sees scores of frames the detector has not memorised
    /// (0 to 0.5; 0: fit and calibrate on all frames).
    #[serde(default)]
    pub holdout: f64,
}

fn default_smoothing() -> usize {
    10
}
fn default_quantile() -> f64 {
    1.0
}
fn default_margin() -> f64 {
    1.5
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            smoothing: default_smoothing(),
            quantile: default_quantile(),
            margin: default_margin(),
            debounce: Debounce::default(),
            holdout: 0.0,
        }
    }
}

impl CalibrationConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        check(self.smoothing, self.margin, &self.debounce).map_err(TrainError::Config)?;
        if !(0.5..=1.0).contains(&self.quantile) {
            return Err(TrainError::Config(format!("calibration.quantile must be in [0.5, 1], got {}", self.quantile)));
        }
        if !(0.0..=0.5).contains(&self.holdout) {
            return Err(TrainError::Config(format!("calibration.holdout must be in [0, 0.5], got {}", self.holdout)));
        }
        Ok(())
    }

    /// Fits the normalisation on the raw scores of the training frames, in order.
    pub fn fit(&self, training_raw: &[f64]) -> Result<Calibration, TrainError> {
        self.validate()?;
        let mut state = Smoother::new(self.smoothing);
        let smoothed: Vec<f64> = training_raw.iter().map(|&r| state.push(r)).collect();
        // Skip the frames before the moving average is full: they average fewer frames.
        let settled = &smoothed[(self.smoothing - 1).min(smoothed.len().saturating_sub(1))..];
        let center = quantile(settled, 0.5).ok_or(TrainError::NonFinite { what: "training scores".into() })?;
        let high = quantile(settled, self.quantile).ok_or(TrainError::NonFinite { what: "training scores".into() })?;
        let spread = (high - center).max(1e-9 * center.abs().max(1.0));
        let cal = Calibration {
            smoothing: self.smoothing,
            center,
            spread,
            threshold: self.margin,
            debounce: self.debounce.clone(),
        };
        cal.validate().map_err(TrainError::InvalidModel)?;
        Ok(cal)
    }
}

fn check(smoothing: usize, threshold: f64, debounce: &Debounce) -> Result<(), String> {
    if !(1..=crate::features::MAX_WINDOW).contains(&smoothing) {
        return Err(format!("calibration.smoothing must be 1 to {}, got {smoothing}", crate::features::MAX_WINDOW));
    }
    if !(threshold.is_finite() && threshold > 0.0) {
        return Err(format!("calibration threshold (margin) must be a positive number, got {threshold}"));
    }
    if debounce.k == 0 || debounce.k > debounce.n || debounce.n > crate::features::MAX_WINDOW {
        return Err(format!(
            "debounce needs 1 ≤ k ≤ n ≤ {}, got k = {}, n = {}",
            crate::features::MAX_WINDOW,
            debounce.k,
            debounce.n
        ));
    }
    Ok(())
}

/// The fitted calibration stored in a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub smoothing: usize,
    pub center: f64,
    pub spread: f64,
    /// Alarm threshold on the normalised score.
    pub threshold: f64,
    pub debounce: Debounce,
}

impl Calibration {
    pub fn validate(&self) -> Result<(), ModelError> {
        check(self.smoothing, self.threshold, &self.debounce).map_err(|m| ModelError::invalid("calibration", m))?;
        if !self.center.is_finite() || !self.spread.is_finite() || self.spread <= 0.0 {
            return Err(ModelError::invalid("calibration", "center must be finite and spread positive"));
        }
        Ok(())
    }

    pub fn normalise(&self, smoothed: f64) -> f64 {
        (smoothed - self.center) / self.spread
    }
}

/// Causal moving average over the last `window` values.
#[derive(Debug, Clone)]
pub struct Smoother {
    values: VecDeque<f64>,
    window: usize,
}

impl Smoother {
    pub fn new(window: usize) -> Self {
        Self { values: VecDeque::with_capacity(window), window: window.max(1) }
    }

    pub fn push(&mut self, v: f64) -> f64 {
        if self.values.len() == self.window {
            self.values.pop_front();
        }
        self.values.push_back(v);
        // Summed afresh each time: no drift from running sums over months of frames.
        self.values.iter().sum::<f64>() / self.values.len() as f64
    }

    pub fn reset(&mut self) {
        self.values.clear();
    }
}

/// k-of-n debouncer.
#[derive(Debug, Clone)]
pub struct Debouncer {
    recent: VecDeque<bool>,
    above: usize,
    k: usize,
    n: usize,
}

impl Debouncer {
    pub fn new(d: &Debounce) -> Self {
        Self { recent: VecDeque::with_capacity(d.n), above: 0, k: d.k.max(1), n: d.n.max(1) }
    }

    pub fn push(&mut self, above: bool) -> bool {
        if self.recent.len() == self.n && self.recent.pop_front() == Some(true) {
            self.above -= 1;
        }
        self.recent.push_back(above);
        self.above += usize::from(above);
        self.above >= self.k
    }

    pub fn reset(&mut self) {
        self.recent.clear();
        self.above = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoother_is_a_causal_moving_average() {
        let mut s = Smoother::new(3);
        let out: Vec<f64> = [3.0, 6.0, 9.0, 0.0].iter().map(|&v| s.push(v)).collect();
        assert_eq!(out, [3.0, 4.5, 6.0, 5.0]);
    }

    #[test]
    fn debouncer_needs_k_of_n() {
        let mut d = Debouncer::new(&Debounce { k: 2, n: 3 });
        let out: Vec<bool> = [true, false, true, false, false, true, true].iter().map(|&a| d.push(a)).collect();
        assert_eq!(out, [false, false, true, false, false, false, true]);
    }

    #[test]
    fn calibration_maps_the_training_median_to_zero_and_the_maximum_to_one() {
        let raw: Vec<f64> = (0..101).map(f64::from).collect();
        let cfg = CalibrationConfig { smoothing: 1, ..CalibrationConfig::default() };
        let cal = cfg.fit(&raw).expect("fit");
        assert_eq!(cal.normalise(50.0), 0.0);
        assert_eq!(cal.normalise(100.0), 1.0);
        assert_eq!(cal.threshold, 1.5);
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = CalibrationConfig { debounce: Debounce { k: 3, n: 2 }, ..CalibrationConfig::default() };
        assert!(bad.validate().is_err());
        let bad = CalibrationConfig { margin: f64::NAN, ..CalibrationConfig::default() };
        assert!(bad.validate().is_err());
        let bad = CalibrationConfig { smoothing: 0, ..CalibrationConfig::default() };
        assert!(bad.validate().is_err());
    }
}
