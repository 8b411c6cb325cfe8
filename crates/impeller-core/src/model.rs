//! Trained models: training, the versioned file format, validation of untrusted files.
//!
//! The file format is specified in `docs/specs/model-format.md`: a UTF-8 JSON document whose
//! `format` is `impeller.model` and `version` is [`MODEL_VERSION`]. A model holds everything
//! needed to score — channels with units, gap policy, feature spec, scaler, detector,
//! calibration — so the edge agent loads it without the training code. Serialising is
//! deterministic: the same data, configuration and seed give byte-identical files.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::calibration::{Calibration, CalibrationConfig};
use crate::channel::{Channel, Frame};
use crate::detector::{Detector, DetectorConfig, score_rows};
use crate::error::{ModelError, TrainError, check_finite};
use crate::features::{FeatureSpec, Scaler};
use crate::gaps::GapPolicy;
use crate::matrix::Matrix;
use crate::pipeline::{FramePipeline, Step};
use crate::rng::Rng;

pub const MODEL_FORMAT: &str = "impeller.model";
pub const MODEL_VERSION: u32 = 1;
/// More channels than this is not a pump; refuse rather than allocate.
pub const MAX_CHANNELS: usize = 1024;

/// Everything that decides how a model is trained. Serialised as a TOML or JSON table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Seed of the random generator (Isolation Forest sampling, autoencoder initialisation).
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub gaps: GapPolicy,
    #[serde(default)]
    pub features: FeatureSpec,
    pub detector: DetectorConfig,
    #[serde(default)]
    pub calibration: CalibrationConfig,
}

impl TrainConfig {
    pub fn new(detector: DetectorConfig) -> Self {
        Self {
            seed: 0,
            gaps: GapPolicy::default(),
            features: FeatureSpec::default(),
            detector,
            calibration: CalibrationConfig::default(),
        }
    }
}

/// What a model was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSummary {
    /// Frames given for training.
    pub frames: u64,
    /// Feature vectors the detector was fitted on (frames minus warm-up and gaps).
    pub vectors: u64,
    pub seed: u64,
    /// SHA-256 (hex) of the channel list and the training frames; see the format spec.
    pub data_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub format: String,
    pub version: u32,
    pub channels: Vec<Channel>,
    pub gaps: GapPolicy,
    pub features: FeatureSpec,
    pub scaler: Scaler,
    pub detector: Detector,
    pub calibration: Calibration,
    pub training: TrainingSummary,
}

/// Trains a model on frames of normal operation, in time order.
pub fn train(channels: &[Channel], frames: &[Frame], config: &TrainConfig) -> Result<Model, TrainError> {
    train_parts(channels, &[frames], config)
}

/// Trains one model on several recordings of normal operation (devices of one class, files),
/// each in time order. Rolling windows restart at the start of each part, so no feature
/// mixes two recordings.
pub fn train_parts(channels: &[Channel], parts: &[&[Frame]], config: &TrainConfig) -> Result<Model, TrainError> {
    build(channels, parts, config, None)
}

/// Builds a model around a detector fitted elsewhere (bring your own model): the features of
/// `config` go into `detector` unscaled (an identity scaler), and the calibration is fitted on
/// its scores of `parts`, as for a model trained here. `config.detector` is not used.
pub fn adopt_parts(
    channels: &[Channel],
    parts: &[&[Frame]],
    config: &TrainConfig,
    detector: Detector,
) -> Result<Model, TrainError> {
    build(channels, parts, config, Some(detector))
}

fn build(
    channels: &[Channel],
    parts: &[&[Frame]],
    config: &TrainConfig,
    adopted: Option<Detector>,
) -> Result<Model, TrainError> {
    if channels.is_empty() || channels.len() > MAX_CHANNELS {
        return Err(TrainError::Config(format!("a model needs 1 to {MAX_CHANNELS} channels, got {}", channels.len())));
    }
    config.features.validate().map_err(TrainError::Config)?;
    config.calibration.validate()?;
    if let Some(f) = parts.iter().flat_map(|p| p.iter()).find(|f| f.values.len() != channels.len()) {
        return Err(TrainError::ChannelCount { expected: channels.len(), found: f.values.len() });
    }
    let dim = config.features.dim(channels.len());
    let mut x = Matrix::new(dim);
    let mut v = vec![0.0; dim];
    for frames in parts {
        let mut pipeline = FramePipeline::new(&config.gaps, &config.features, channels.len());
        for f in frames.iter() {
            if pipeline.push(f.ts_ms, &f.values, &mut v) == Step::Vector {
                x.push_row(&v);
            }
        }
    }
    let needed = (dim + 2).max(10);
    if x.rows() < needed {
        return Err(TrainError::TooFewRows { usable: x.rows(), needed });
    }
    let (scaler, detector) = match adopted {
        Some(detector) => {
            detector.validate(dim, "detector").map_err(TrainError::InvalidModel)?;
            (Scaler { mean: vec![0.0; dim], scale: vec![1.0; dim] }, detector)
        }
        None => {
            let scaler = Scaler::fit(&x);
            check_finite("scaler", scaler.mean.iter().chain(&scaler.scale)).map_err(TrainError::InvalidModel)?;
            for i in 0..x.rows() {
                scaler.transform(x.row_mut(i));
            }
            let mut rng = Rng::new(config.seed);
            let fit_rows = x.rows() - (config.calibration.holdout * x.rows() as f64) as usize;
            let detector = if fit_rows == x.rows() {
                Detector::fit(&config.detector, &x, &mut rng)?
            } else {
                Detector::fit(&config.detector, &x.head(fit_rows), &mut rng)?
            };
            (scaler, detector)
        }
    };
    let calibration = config.calibration.fit(&score_rows(&detector, &x))?;
    let model = Model {
        format: MODEL_FORMAT.into(),
        version: MODEL_VERSION,
        channels: channels.to_vec(),
        gaps: config.gaps.clone(),
        features: config.features.clone(),
        scaler,
        detector,
        calibration,
        training: TrainingSummary {
            frames: parts.iter().map(|p| p.len() as u64).sum(),
            vectors: x.rows() as u64,
            seed: config.seed,
            data_sha256: training_data_hash_parts(channels, parts),
        },
    };
    model.validate().map_err(TrainError::InvalidModel)?;
    Ok(model)
}

/// SHA-256 over a domain tag, each channel as `name\tunit\n`, then each frame's timestamp
/// (i64) and values (f64 bits), little-endian.
pub fn training_data_hash(channels: &[Channel], frames: &[Frame]) -> String {
    training_data_hash_parts(channels, &[frames])
}

/// [`training_data_hash`] of several parts: for one part the same; for more, the frames of
/// every part in order, then `parts`, the number of parts and each part's frame count (u64,
/// little-endian), so that moving a frame from one part to the next changes the hash.
pub fn training_data_hash_parts(channels: &[Channel], parts: &[&[Frame]]) -> String {
    let mut h = Sha256::new();
    h.update(b"impeller.training-data.v1\n");
    for c in channels {
        h.update(c.name.as_bytes());
        h.update(b"\t");
        h.update(c.unit.as_bytes());
        h.update(b"\n");
    }
    for f in parts.iter().flat_map(|p| p.iter()) {
        h.update(f.ts_ms.to_le_bytes());
        for v in &f.values {
            h.update(v.to_bits().to_le_bytes());
        }
    }
    if parts.len() > 1 {
        h.update(b"parts");
        h.update((parts.len() as u64).to_le_bytes());
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
        }
    }
    crate::hex::encode(&h.finalize())
}

impl Model {
    pub fn dim(&self) -> usize {
        self.features.dim(self.channels.len())
    }

    pub fn feature_names(&self) -> Vec<String> {
        self.features.names(&self.channels)
    }

    /// The model file: compact JSON, deterministic for a given model. Validates first: JSON
    /// cannot hold NaN or infinity (serde_json would write `null`), and a file that cannot be
    /// read back must never be written.
    pub fn to_json(&self) -> Result<Vec<u8>, ModelError> {
        self.validate()?;
        serde_json::to_vec(self).map_err(|e| ModelError::invalid("model", e.to_string()))
    }

    /// Reads and validates a model file from untrusted bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u64>,
        }
        let header: Header = serde_json::from_slice(bytes).map_err(json_error)?;
        let format = header.format.unwrap_or_default();
        if format != MODEL_FORMAT {
            return Err(ModelError::WrongFormat { found: format, expected: MODEL_FORMAT });
        }
        match header.version {
            Some(v) if v == u64::from(MODEL_VERSION) => {}
            other => {
                return Err(ModelError::UnsupportedVersion { found: other.unwrap_or(0), supported: MODEL_VERSION });
            }
        }
        let model: Model = serde_json::from_slice(bytes).map_err(json_error)?;
        model.validate()?;
        Ok(model)
    }

    /// Checks every shape and value a scorer relies on.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.format != MODEL_FORMAT {
            return Err(ModelError::WrongFormat { found: self.format.clone(), expected: MODEL_FORMAT });
        }
        if self.version != MODEL_VERSION {
            return Err(ModelError::UnsupportedVersion { found: u64::from(self.version), supported: MODEL_VERSION });
        }
        if self.channels.is_empty() || self.channels.len() > MAX_CHANNELS {
            return Err(ModelError::invalid("channels", format!("needs 1 to {MAX_CHANNELS} channels")));
        }
        for (i, c) in self.channels.iter().enumerate() {
            if c.name.is_empty() {
                return Err(ModelError::invalid(format!("channels[{i}].name"), "is empty"));
            }
            if self.channels[..i].iter().any(|o| o.name == c.name) {
                return Err(ModelError::invalid(format!("channels[{i}].name"), format!("`{}` appears twice", c.name)));
            }
        }
        self.features.validate().map_err(|m| ModelError::invalid("features", m))?;
        let dim = self.dim();
        if self.scaler.mean.len() != dim || self.scaler.scale.len() != dim {
            return Err(ModelError::invalid("scaler", format!("needs {dim} means and scales")));
        }
        check_finite("scaler.mean", &self.scaler.mean)?;
        check_finite("scaler.scale", &self.scaler.scale)?;
        if self.scaler.scale.iter().any(|s| *s <= 0.0) {
            return Err(ModelError::invalid("scaler.scale", "must be positive"));
        }
        let h = &self.training.data_sha256;
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ModelError::invalid("training.data_sha256", "must be 64 lowercase hex digits"));
        }
        self.detector.validate(dim, "detector")?;
        self.calibration.validate()
    }
}

fn json_error(e: serde_json::Error) -> ModelError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => ModelError::Schema { line: e.line(), column: e.column(), message: e.to_string() },
        Category::Io | Category::Syntax | Category::Eof => {
            ModelError::Syntax { line: e.line(), column: e.column(), message: e.to_string() }
        }
    }
}
