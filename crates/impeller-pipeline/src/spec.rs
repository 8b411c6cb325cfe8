//! The pipeline spec: a versioned TOML file saying which data, which features and detector,
//! which gates and which targets. `impeller pipeline generate-spec` prints the commented
//! example (`config/pipeline.toml`).

use std::path::{Path, PathBuf};

use impeller_core::TrainConfig;
use serde::{Deserialize, Serialize};

use crate::PipelineError;

pub const SPEC_VERSION: u32 = 1;
/// The commented example spec, built into the binary.
pub const EXAMPLE: &str = include_str!("../config/pipeline.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Format version of this file; 1.
    pub version: u32,
    /// The registered model this pipeline trains: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub model: String,
    pub data: DataSpec,
    /// Features, detector, calibration and seed, as in `impeller train --generate-config`.
    pub train: TrainConfig,
    #[serde(default)]
    pub gates: Gates,
    /// Target profiles (TOML files, relative to this spec) to package the model for.
    #[serde(default)]
    pub targets: Vec<PathBuf>,
    #[serde(default)]
    pub package: PackageOptions,
    /// A model trained elsewhere, used instead of training `[train.detector]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bring_your_own: Option<BringYourOwn>,
}

/// Bring your own model: a scikit-learn `IsolationForest` exported with skl2onnx, fitted on the
/// features `[train]` names (by default the channels' values, unscaled). The pipeline then
/// calibrates, evaluates, gates, packages and signs it as it would a model of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BringYourOwn {
    /// The ONNX file, relative to the spec.
    pub onnx: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A folder of CSV files in the SKAB layout (relative to this spec), imported as a dataset.
    #[serde(default)]
    pub import: Option<PathBuf>,
    /// Or a dataset made before (`impeller dataset create`), by its hash.
    #[serde(default)]
    pub dataset: Option<String>,
    /// Channels to use, in this order; empty: every channel of the dataset.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Parts (files or devices) of normal operation to train on, as patterns over part names
    /// (`*` matches any run of characters).
    pub train: Vec<String>,
    /// Labelled parts to validate on (the candidate and the champion alike).
    #[serde(default)]
    pub validate: Vec<String>,
    /// Rows at the start of each validation part that also train the model and are not scored:
    /// how a new device's first hours of normal running teach the model its operating point.
    #[serde(default)]
    pub train_head_rows: usize,
    /// Share (0 to 0.5) of each training part's rows, at its end, held out of training and
    /// evaluated as normal operation: the false alarms of a model on data it has not seen, for
    /// data with no labelled parts (a fleet snapshot) or beside them.
    #[serde(default)]
    pub holdout: f64,
    /// Once the model trained without the held-out tails has passed the gates, train the model
    /// that ships again on every row, the tails included. The tails are the newest rows: a
    /// retraining set off by drift or by false alarms would otherwise hold out exactly the
    /// period that set it off, and ship a model that has not seen it. Needs `holdout`.
    #[serde(default)]
    pub refit: bool,
}

/// Thresholds a candidate must meet to be registered as ready. Absent: not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// The candidate's F1 may be at most this far below the champion's on the same data.
    pub max_f1_drop: Option<f64>,
    pub min_f1: Option<f64>,
    /// False-alarm rate (share of normal rows alarmed), 0 to 1.
    pub max_far: Option<f64>,
    /// The candidate's false-alarm rate may be at most this much (0 to 1) above the champion's
    /// on the same rows: for data with no labelled parts, the one comparison with the champion
    /// (a retraining that alarms more than the model it replaces on the newest held-out rows
    /// would be refused by the devices' own trial anyway, after its rollout began).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_far_increase: Option<f64>,
    /// Missed-alarm rate (share of anomalous rows not alarmed), 0 to 1.
    pub max_mar: Option<f64>,
    /// Alarms raised (rising edges) per device-day of validation data.
    pub max_alerts_per_day: Option<f64>,
    /// Median seconds from a labelled anomaly's start to its first alarm.
    pub max_median_delay_s: Option<f64>,
    /// For targets with int8 weights: the least share (0 to 1) of validation frames on which the
    /// int8 model's alarm must equal the float model's. Absent: 0.99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_int8_agreement: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageOptions {
    /// Days a package stays installable; devices refuse it after (freeze attacks).
    #[serde(default = "PackageOptions::default_valid_days")]
    pub valid_days: u32,
}

impl PackageOptions {
    fn default_valid_days() -> u32 {
        90
    }
}

impl Default for PackageOptions {
    fn default() -> Self {
        PackageOptions { valid_days: Self::default_valid_days() }
    }
}

impl PipelineSpec {
    /// Parses and checks a spec; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<PipelineSpec, PipelineError> {
        let spec: PipelineSpec = toml::from_str(text).map_err(|e| PipelineError::Spec(format!("{origin}: {e}")))?;
        let bad = |m: String| Err(PipelineError::Spec(format!("{origin}: {m}")));
        if spec.version != SPEC_VERSION {
            return bad(format!("version {} is not supported (this build reads {SPEC_VERSION})", spec.version));
        }
        if !impeller_core::wire::valid_device_id(&spec.model) {
            return bad(format!("model `{}`: 1 to 64 of A-Z a-z 0-9 . _ -", spec.model));
        }
        match (&spec.data.import, &spec.data.dataset) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => return bad("data: give exactly one of `import` (a CSV folder) and `dataset` (a hash)".into()),
        }
        if spec.data.train.is_empty() {
            return bad("data.train: name at least one part to train on".into());
        }
        let g = &spec.gates;
        for (name, v) in [
            ("max_f1_drop", g.max_f1_drop),
            ("min_f1", g.min_f1),
            ("max_far", g.max_far),
            ("max_far_increase", g.max_far_increase),
            ("max_mar", g.max_mar),
            ("max_alerts_per_day", g.max_alerts_per_day),
            ("max_median_delay_s", g.max_median_delay_s),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return bad(format!("gates.{name} must be a number ≥ 0"));
            }
        }
        if g.min_int8_agreement.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
            return bad("gates.min_int8_agreement must be a share from 0 to 1".into());
        }
        if !(0.0..=0.5).contains(&spec.data.holdout) {
            return bad("data.holdout must be a share from 0 to 0.5".into());
        }
        if spec.data.refit && spec.data.holdout == 0.0 {
            return bad("data.refit trains again with the held-out rows: set data.holdout too".into());
        }
        if (g.min_f1.is_some() || g.max_mar.is_some() || g.max_f1_drop.is_some()) && spec.data.validate.is_empty() {
            return bad("gates on F1 or MAR need labelled parts in data.validate".into());
        }
        if (g.max_far.is_some() || g.max_far_increase.is_some())
            && spec.data.validate.is_empty()
            && spec.data.holdout == 0.0
        {
            return bad("a gate on FAR needs labelled parts in data.validate or a data.holdout".into());
        }
        if spec.package.valid_days == 0 {
            return bad("package.valid_days must be at least 1".into());
        }
        Ok(spec)
    }

    /// Reads a spec file; relative paths in it are taken from its folder.
    pub fn load(path: &Path) -> Result<(PipelineSpec, PathBuf), PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError::io(path, e))?;
        let spec = Self::parse(&text, &path.display().to_string())?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok((spec, base))
    }
}

/// `*` matches any run of characters (including `/`); everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_spec_parses() {
        let spec = PipelineSpec::parse(EXAMPLE, "example").unwrap();
        assert_eq!(spec.version, 1);
        assert!(!spec.data.train.is_empty());
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| PipelineSpec::parse(text, "p.toml").unwrap_err().to_string();
        let base = EXAMPLE.replace("version = 1", "version = 2");
        assert!(err(&base).contains("version 2 is not supported"));
        let unknown = EXAMPLE.replacen("[gates]", "[gates]\nmin_f2 = 0.5", 1);
        assert!(err(&unknown).contains("min_f2"), "{}", err(&unknown));
        let both = EXAMPLE.replacen("[data]", "[data]\ndataset = \"abc\"", 1);
        assert!(err(&both).contains("exactly one of"));
        let negative = EXAMPLE.replacen("[gates]", "[gates]\nmax_mar = -1", 1);
        assert!(err(&negative).contains("gates.max_mar"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("valve1/*", "valve1/3"));
        assert!(glob_match("*", "other/14"));
        assert!(glob_match("other/1*", "other/14"));
        assert!(!glob_match("other/1*", "other/21"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("anomaly-free/anomaly-free", "anomaly-free/anomaly-free"));
    }
}
