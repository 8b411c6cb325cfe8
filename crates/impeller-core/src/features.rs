//! Features: what a detector sees instead of raw readings.
//!
//! A [`FeatureSpec`] is part of every trained model, and the same [`FeatureState`] code computes
//! features during training and during scoring, so the two can never disagree. Features are laid
//! out channel-major: for channel `c` and kind `k`, index `c * kinds.len() + k`.

use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::matrix::Matrix;

/// Longest rolling window accepted; a model asking for more is refused as implausible.
pub const MAX_WINDOW: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// The reading itself.
    Value,
    /// The reading minus the previous one (first difference).
    Diff,
    /// Mean over the rolling window.
    Mean,
    /// Population standard deviation over the rolling window.
    Std,
    /// Least-squares slope over the rolling window, per frame.
    Slope,
}

impl FeatureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Value => "value",
            Self::Diff => "diff",
            Self::Mean => "mean",
            Self::Std => "std",
            Self::Slope => "slope",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Frames in the rolling window used by `mean`, `std` and `slope` (2 to 4096).
    pub window: usize,
    /// Which features to compute for every channel, in this order.
    pub kinds: Vec<FeatureKind>,
}

impl Default for FeatureSpec {
    fn default() -> Self {
        Self { window: 10, kinds: vec![FeatureKind::Mean, FeatureKind::Std] }
    }
}

impl FeatureSpec {
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=MAX_WINDOW).contains(&self.window) {
            return Err(format!("features.window must be between 2 and {MAX_WINDOW}, got {}", self.window));
        }
        if self.kinds.is_empty() {
            return Err("features.kinds must name at least one feature".into());
        }
        for (i, k) in self.kinds.iter().enumerate() {
            if self.kinds[..i].contains(k) {
                return Err(format!("features.kinds lists `{}` twice", k.as_str()));
            }
        }
        Ok(())
    }

    /// Number of features for `channels` input channels.
    pub fn dim(&self, channels: usize) -> usize {
        channels * self.kinds.len()
    }

    /// Frames needed before the first feature vector is complete.
    pub fn warmup(&self) -> usize {
        if self.kinds.iter().any(|k| matches!(k, FeatureKind::Mean | FeatureKind::Std | FeatureKind::Slope)) {
            self.window
        } else if self.kinds.contains(&FeatureKind::Diff) {
            2
        } else {
            1
        }
    }

    /// Feature names such as `Pressure.mean`, in feature order.
    pub fn names(&self, channels: &[Channel]) -> Vec<String> {
        channels.iter().flat_map(|c| self.kinds.iter().map(move |k| format!("{}.{}", c.name, k.as_str()))).collect()
    }
}

/// Rolling windows of one device's channels.
#[derive(Debug, Clone)]
pub struct FeatureState {
    spec: FeatureSpec,
    channels: usize,
    /// `window` frames, each `channels` values; `next` is the slot the next frame goes to.
    ring: Vec<f64>,
    next: usize,
    seen: usize,
}

impl FeatureState {
    pub fn new(spec: &FeatureSpec, channels: usize) -> Self {
        Self { spec: spec.clone(), channels, ring: vec![0.0; spec.window * channels], next: 0, seen: 0 }
    }

    /// Forgets the windows, e.g. after a long pause in the data.
    pub fn reset(&mut self) {
        self.next = 0;
        self.seen = 0;
    }

    /// Adds a frame; returns true when a full feature vector is available.
    pub fn push(&mut self, values: &[f64]) -> bool {
        let w = self.spec.window;
        self.ring[self.next * self.channels..(self.next + 1) * self.channels].copy_from_slice(values);
        self.next = (self.next + 1) % w;
        self.seen = self.seen.saturating_add(1);
        self.seen >= self.spec.warmup()
    }

    /// Writes the current feature vector (length `spec.dim(channels)`) into `out`.
    pub fn write(&self, out: &mut [f64]) {
        let w = self.spec.window;
        let n = self.seen.min(w);
        let nk = self.spec.kinds.len();
        let newest = (self.next + w - 1) % w;
        for c in 0..self.channels {
            let at = |age: usize| self.ring[((newest + w - age) % w) * self.channels + c];
            let mean = (0..n).map(at).sum::<f64>() / n as f64;
            for (k, kind) in self.spec.kinds.iter().enumerate() {
                out[c * nk + k] = match kind {
                    FeatureKind::Value => at(0),
                    FeatureKind::Diff => {
                        if n >= 2 {
                            at(0) - at(1)
                        } else {
                            0.0
                        }
                    }
                    FeatureKind::Mean => mean,
                    FeatureKind::Std => {
                        // Two-pass on the window for accuracy; the window is short.
                        let var = (0..n).map(|a| (at(a) - mean) * (at(a) - mean)).sum::<f64>() / n as f64;
                        var.sqrt()
                    }
                    FeatureKind::Slope => {
                        // Frames oldest to newest at t = 0..n-1.
                        let t_mean = (n - 1) as f64 / 2.0;
                        let (mut sxy, mut sxx) = (0.0, 0.0);
                        for age in 0..n {
                            let t = (n - 1 - age) as f64 - t_mean;
                            sxy += t * (at(age) - mean);
                            sxx += t * t;
                        }
                        if sxx > 0.0 { sxy / sxx } else { 0.0 }
                    }
                };
            }
        }
    }
}

/// Standardisation fitted on training features: `(x - mean) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Scaler {
    /// Fits mean and population standard deviation per column. A column that never varied in
    /// training gets a tiny floor instead of zero, so any change in it stands out clearly
    /// without dividing by zero.
    pub fn fit(x: &Matrix) -> Self {
        let mut mean = Vec::with_capacity(x.cols());
        let mut scale = Vec::with_capacity(x.cols());
        for j in 0..x.cols() {
            let col = x.column(j);
            let m = crate::stats::mean(&col);
            let sd = crate::stats::std_dev(&col);
            mean.push(m);
            scale.push(sd.max(1e-9 * m.abs().max(1.0)));
        }
        Self { mean, scale }
    }

    pub fn transform(&self, x: &mut [f64]) {
        for ((v, m), s) in x.iter_mut().zip(&self.mean).zip(&self.scale) {
            *v = (*v - m) / s;
        }
    }

    pub fn inverse(&self, x: &mut [f64]) {
        for ((v, m), s) in x.iter_mut().zip(&self.mean).zip(&self.scale) {
            *v = *v * s + m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(spec: &FeatureSpec, series: &[f64]) -> Vec<Vec<f64>> {
        let mut st = FeatureState::new(spec, 1);
        let mut out = vec![0.0; spec.dim(1)];
        let mut rows = Vec::new();
        for &v in series {
            if st.push(&[v]) {
                st.write(&mut out);
                rows.push(out.clone());
            }
        }
        rows
    }

    #[test]
    fn rolling_features_match_hand_computed_values() {
        use FeatureKind::*;
        let spec = FeatureSpec { window: 3, kinds: vec![Value, Diff, Mean, Std, Slope] };
        let rows = features(&spec, &[1.0, 2.0, 4.0, 8.0]);
        assert_eq!(rows.len(), 2, "window 3 over 4 frames gives 2 vectors");
        // Window [1, 2, 4]: mean 7/3, std sqrt(14/9), slope 1.5.
        let r = &rows[0];
        assert_eq!(r[0], 4.0);
        assert_eq!(r[1], 2.0);
        assert!((r[2] - 7.0 / 3.0).abs() < 1e-12);
        assert!((r[3] - (14.0f64 / 9.0).sqrt()).abs() < 1e-12);
        assert!((r[4] - 1.5).abs() < 1e-12);
        // Window [2, 4, 8]: slope 3.
        assert!((rows[1][4] - 3.0).abs() < 1e-12);
        assert_eq!(rows[1][1], 4.0);
    }

    #[test]
    fn names_and_warmup() {
        let spec = FeatureSpec::default();
        let ch = [Channel::new("Pressure", "bar"), Channel::new("Current", "A")];
        assert_eq!(spec.names(&ch), ["Pressure.mean", "Pressure.std", "Current.mean", "Current.std"]);
        assert_eq!(spec.warmup(), 10);
        let diff_only = FeatureSpec { window: 5, kinds: vec![FeatureKind::Diff] };
        assert_eq!(diff_only.warmup(), 2);
    }

    #[test]
    fn validation_refuses_bad_specs() {
        assert!(FeatureSpec { window: 1, kinds: vec![FeatureKind::Mean] }.validate().is_err());
        assert!(FeatureSpec { window: 5, kinds: vec![] }.validate().is_err());
        assert!(FeatureSpec { window: 5, kinds: vec![FeatureKind::Mean, FeatureKind::Mean] }.validate().is_err());
        assert!(FeatureSpec::default().validate().is_ok());
    }
}
