//! Model packages: one signed file that carries a model to a device.
//!
//! A package is a gzip-compressed tar archive of plain files (spec: docs/specs/package-format.md):
//! - `manifest.json`: what the package is — model name and version, release counter, target
//!   profile, expiry, detector, channels, features, alarm settings, training data hash,
//!   metrics — and every artifact with its size and SHA-256;
//! - `signature.json`: an Ed25519 signature over the exact bytes of `manifest.json`;
//! - the artifacts: `model.json` (the model file), `selftest.json` (frames and the scores the
//!   model must give them), `reference.json` (drift sketch of the training features).
//!
//! [`open`] checks everything that can be checked from the bytes alone (size, archive structure,
//! signature by a trusted key, hashes, consistency of manifest and model); [`check_install`]
//! adds what depends on the device (target, expiry, release counter, rollback directive).
//! Building is deterministic: the same model, data, settings and key give the same bytes.

pub mod keys;
pub mod rollback;
pub mod selftest;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::calibration::Debounce;
use crate::channel::{Channel, Frame};
use crate::features::FeatureSpec;
use crate::model::{Model, TrainingSummary, training_data_hash_parts};
use crate::pipeline::{FramePipeline, Step};
use crate::sketch::Sketch;

pub use keys::{KeyFile, Signer25519, TrustStore, key_id};
pub use rollback::RollbackDirective;
pub use selftest::{SelfTest, SelfTestFailure};

pub const PACKAGE_FORMAT: &str = "impeller.package";
pub const PACKAGE_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "signature.json";
pub const MODEL: &str = "model.json";
pub const SELFTEST: &str = "selftest.json";
pub const REFERENCE: &str = "reference.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelId {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmSettings {
    pub smoothing: usize,
    pub threshold: f64,
    pub debounce: Debounce,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub model: ModelId,
    /// From one counter for the whole registry; a device refuses a release not newer than the
    /// newest it has installed (unless a signed rollback directive allows it).
    pub release: u64,
    /// Target profile (device class) the package was built for.
    pub target: String,
    pub created_ms: i64,
    /// After this instant a device refuses the package.
    pub expires_ms: i64,
    pub detector: String,
    pub channels: Vec<Channel>,
    pub features: FeatureSpec,
    pub alarm: AlarmSettings,
    pub training: TrainingSummary,
    /// Pipeline run that built the model, when known.
    pub pipeline_run: Option<String>,
    /// Validation metrics (e.g. f1, far, mar), by name.
    pub metrics: BTreeMap<String, f64>,
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub algorithm: String,
    pub key_id: String,
    /// Ed25519 signature of the bytes of `manifest.json`, hex.
    pub signature: String,
}

/// What the builder is told beyond the model itself.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageSpec {
    pub name: String,
    pub version: String,
    pub release: u64,
    pub target: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub pipeline_run: Option<String>,
    pub metrics: BTreeMap<String, f64>,
}

/// Limits on untrusted package bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest package file accepted.
    pub max_bytes: u64,
    /// Largest total size of the files inside (guards against decompression bombs).
    pub max_unpacked_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_bytes: 64 << 20, max_unpacked_bytes: 256 << 20 }
    }
}

/// Every reason a package is refused. The messages are what an operator reads.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PackageError {
    #[error("package is {bytes} bytes, more than the {limit} allowed")]
    TooLarge { bytes: u64, limit: u64 },
    #[error("package is truncated or not a gzip-compressed tar archive: {detail}")]
    Truncated { detail: String },
    #[error("package entry `{path}` escapes the package (absolute path or `..`)")]
    PathEscape { path: String },
    #[error("package is malformed: {detail}")]
    Malformed { detail: String },
    #[error("package is not signed (no signature.json)")]
    Unsigned,
    #[error("package is signed by key {key_id}, which this device does not trust")]
    UnknownKey { key_id: String },
    #[error("signature does not match: the manifest was changed or signed by another key")]
    BadSignature,
    #[error("artifact `{name}` does not match the manifest: {detail}")]
    ArtifactMismatch { name: String, detail: String },
    #[error("package was built for target `{package}`, this device is `{device}`")]
    WrongTarget { package: String, device: String },
    #[error("package expired at {expires_ms} ms (device clock {now_ms} ms)")]
    Expired { expires_ms: i64, now_ms: i64 },
    #[error("release {offered} is not newer than release {installed} installed here (rollback refused)")]
    NotNewer { offered: u64, installed: u64 },
    #[error("rollback directive refused: {detail}")]
    BadRollback { detail: String },
    #[error("self-test failed: {0}")]
    SelfTest(#[from] SelfTestFailure),
    #[error("key file {origin}: {message}")]
    BadKey { origin: String, message: String },
    #[error("cannot build package: {0}")]
    Build(String),
}

impl PackageError {
    /// A short stable code for reports and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Truncated { .. } => "truncated",
            Self::PathEscape { .. } => "path_escape",
            Self::Malformed { .. } => "malformed",
            Self::Unsigned => "unsigned",
            Self::UnknownKey { .. } => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::ArtifactMismatch { .. } => "artifact_mismatch",
            Self::WrongTarget { .. } => "wrong_target",
            Self::Expired { .. } => "expired",
            Self::NotNewer { .. } => "not_newer",
            Self::BadRollback { .. } => "bad_rollback",
            Self::SelfTest(_) => "self_test_failed",
            Self::BadKey { .. } => "bad_key",
            Self::Build(_) => "build",
        }
    }
}

/// A package whose signature, hashes and contents have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedPackage {
    pub manifest: Manifest,
    pub manifest_sha256: String,
    pub signed_by: String,
    pub model: Arc<Model>,
    pub selftest: SelfTest,
    pub reference: Sketch,
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

fn malformed(detail: impl Into<String>) -> PackageError {
    PackageError::Malformed { detail: detail.into() }
}

/// Builds a signed package. `training` must be the frames the model was trained on (checked
/// against the model's data hash): the self-test and the drift reference are computed from them.
pub fn build(
    model: &Model,
    training: &[Frame],
    spec: &PackageSpec,
    signer: &Signer25519,
) -> Result<Vec<u8>, PackageError> {
    build_parts(model, &[training], spec, signer)
}

/// [`build`] for a model trained on several parts ([`crate::train_parts`]): the drift
/// reference covers every part, the self-test is taken from the last one.
pub fn build_parts(
    model: &Model,
    parts: &[&[Frame]],
    spec: &PackageSpec,
    signer: &Signer25519,
) -> Result<Vec<u8>, PackageError> {
    build_parts_with(model, parts, spec, signer, &[])
}

/// [`build_parts`] with more artifacts (e.g. `model.onnx` for a device with an ONNX runtime),
/// listed and hashed in the manifest like the others. Names are 1 to 64 of `a-z 0-9 . _ -`
/// and must not be one of the package's own files.
pub fn build_parts_with(
    model: &Model,
    parts: &[&[Frame]],
    spec: &PackageSpec,
    signer: &Signer25519,
    extra: &[(&str, &[u8])],
) -> Result<Vec<u8>, PackageError> {
    for (i, (name, _)) in extra.iter().enumerate() {
        if extra[..i].iter().any(|(n, _)| n == name) {
            return Err(PackageError::Build(format!("artifact `{name}` is given twice")));
        }
        let safe = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !safe || [MANIFEST, SIGNATURE, MODEL, SELFTEST, REFERENCE].contains(name) {
            return Err(PackageError::Build(format!("artifact name `{name}` is not allowed")));
        }
    }
    if training_data_hash_parts(&model.channels, parts) != model.training.data_sha256 {
        return Err(PackageError::Build(
            "the frames given are not the model's training data (data hash differs)".into(),
        ));
    }
    if spec.name.is_empty() || spec.target.is_empty() {
        return Err(PackageError::Build("model name and target must not be empty".into()));
    }
    if spec.expires_ms <= spec.created_ms {
        return Err(PackageError::Build("expiry must be after creation".into()));
    }
    let model = Arc::new(model.clone());
    let model_bytes = model.to_json().map_err(|e| PackageError::Build(e.to_string()))?;
    let last = parts.iter().rev().find(|p| !p.is_empty()).copied().unwrap_or_default();
    let selftest = SelfTest::generate(&model, last);
    let selftest_bytes = serde_json::to_vec(&selftest).map_err(|e| PackageError::Build(e.to_string()))?;
    let reference = reference_sketch_parts(&model, parts);
    let reference_bytes = serde_json::to_vec(&reference).map_err(|e| PackageError::Build(e.to_string()))?;
    let mut artifacts: Vec<(&str, &[u8])> =
        vec![(MODEL, &model_bytes), (SELFTEST, &selftest_bytes), (REFERENCE, &reference_bytes)];
    artifacts.extend_from_slice(extra);
    let manifest = Manifest {
        format: PACKAGE_FORMAT.into(),
        version: PACKAGE_VERSION,
        model: ModelId { name: spec.name.clone(), version: spec.version.clone() },
        release: spec.release,
        target: spec.target.clone(),
        created_ms: spec.created_ms,
        expires_ms: spec.expires_ms,
        detector: model.detector.kind().into(),
        channels: model.channels.clone(),
        features: model.features.clone(),
        alarm: alarm_settings(&model),
        training: model.training.clone(),
        pipeline_run: spec.pipeline_run.clone(),
        metrics: spec.metrics.clone(),
        artifacts: artifacts
            .iter()
            .map(|(name, data)| Artifact { name: name.to_string(), bytes: data.len() as u64, sha256: sha256_hex(data) })
            .collect(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| PackageError::Build(e.to_string()))?;
    let signature = SignatureFile {
        algorithm: "ed25519".into(),
        key_id: signer.key_id().to_string(),
        signature: signer.sign_hex(&manifest_bytes),
    };
    let signature_bytes = serde_json::to_vec(&signature).map_err(|e| PackageError::Build(e.to_string()))?;
    let mut files: Vec<(&str, &[u8])> = vec![(MANIFEST, &manifest_bytes), (SIGNATURE, &signature_bytes)];
    files.extend(artifacts);
    write_archive(&files).map_err(|e| PackageError::Build(e.to_string()))
}

fn alarm_settings(model: &Model) -> AlarmSettings {
    AlarmSettings {
        smoothing: model.calibration.smoothing,
        threshold: model.calibration.threshold,
        debounce: model.calibration.debounce.clone(),
    }
}

/// Sketch of the standardised training features: the drift reference.
pub fn reference_sketch(model: &Model, training: &[Frame]) -> Sketch {
    reference_sketch_parts(model, &[training])
}

/// [`reference_sketch`] over several parts, the windows restarting with each.
pub fn reference_sketch_parts(model: &Model, parts: &[&[Frame]]) -> Sketch {
    let mut v = vec![0.0; model.dim()];
    let mut sketch = Sketch::new(model.dim());
    for part in parts {
        let mut pipeline = FramePipeline::new(&model.gaps, &model.features, model.channels.len());
        for f in part.iter() {
            if pipeline.push(f.ts_ms, &f.values, &mut v) == Step::Vector {
                model.scaler.transform(&mut v);
                sketch.add(&v);
            }
        }
    }
    sketch
}

/// A deterministic .tar.gz: fixed order, mode 0644, owner 0, time 0.
fn write_archive(files: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)?;
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, *data)?;
    }
    let tar_bytes = tar.into_inner()?;
    let mut gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes)?;
    gz.finish()
}

/// A reader that fails once more than `left` bytes have been read, and remembers that it did.
struct Capped<R> {
    inner: R,
    left: u64,
    hit: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.hit.set(true);
            return Err(std::io::Error::other("unpacked size limit reached"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads the archive's files into memory, refusing anything but plain, uniquely and simply
/// named regular files.
fn read_archive(bytes: &[u8], limits: Limits) -> Result<BTreeMap<String, Vec<u8>>, PackageError> {
    let hit = std::rc::Rc::new(std::cell::Cell::new(false));
    let capped =
        Capped { inner: flate2::read::GzDecoder::new(bytes), left: limits.max_unpacked_bytes, hit: hit.clone() };
    // Errors after the cap was hit are about size, not about a damaged archive.
    let fail = |detail: String| {
        if hit.get() {
            PackageError::TooLarge { bytes: limits.max_unpacked_bytes + 1, limit: limits.max_unpacked_bytes }
        } else {
            PackageError::Truncated { detail }
        }
    };
    let truncated = |e: std::io::Error| fail(e.to_string());
    let mut archive = tar::Archive::new(capped);
    let mut files = BTreeMap::new();
    for entry in archive.entries().map_err(truncated)? {
        let mut entry = entry.map_err(truncated)?;
        let raw = entry.path_bytes().into_owned();
        let path = String::from_utf8_lossy(&raw).into_owned();
        if path.starts_with('/') || path.split(['/', '\\']).any(|c| c == "..") {
            return Err(PackageError::PathEscape { path });
        }
        let kind = entry.header().entry_type();
        if kind != tar::EntryType::Regular {
            return Err(malformed(format!("entry `{path}` is a {kind:?}; only regular files are allowed")));
        }
        let simple = !path.is_empty()
            && path.len() <= 64
            && !path.starts_with('.')
            && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !simple {
            return Err(malformed(format!("entry name `{path}` is not a plain file name")));
        }
        let size = entry.header().size().map_err(truncated)?;
        if size > limits.max_unpacked_bytes {
            return Err(PackageError::TooLarge { bytes: size, limit: limits.max_unpacked_bytes });
        }
        let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
        entry.read_to_end(&mut data).map_err(truncated)?;
        if data.len() as u64 != size {
            return Err(fail(format!("entry `{path}` is cut short")));
        }
        if files.insert(path.clone(), data).is_some() {
            return Err(malformed(format!("entry `{path}` appears twice")));
        }
    }
    Ok(files)
}

/// Opens and verifies a package from untrusted bytes: everything that does not depend on the
/// device's state. See [`check_install`] for the rest.
pub fn open(bytes: &[u8], trust: &TrustStore, limits: Limits) -> Result<VerifiedPackage, PackageError> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(PackageError::TooLarge { bytes: bytes.len() as u64, limit: limits.max_bytes });
    }
    let mut files = read_archive(bytes, limits)?;
    let manifest_bytes = files.remove(MANIFEST).ok_or_else(|| malformed("no manifest.json"))?;
    let signature_bytes = files.remove(SIGNATURE).ok_or(PackageError::Unsigned)?;
    let signature: SignatureFile =
        serde_json::from_slice(&signature_bytes).map_err(|e| malformed(format!("signature.json: {e}")))?;
    if signature.algorithm != "ed25519" {
        return Err(malformed(format!("signature algorithm `{}` is not supported", signature.algorithm)));
    }
    trust.verify(&signature.key_id, &signature.signature, &manifest_bytes)?;

    // The manifest is now known to come from a trusted key; check it describes these bytes.
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| malformed(format!("manifest.json: {e}")))?;
    if manifest.format != PACKAGE_FORMAT || manifest.version != PACKAGE_VERSION {
        return Err(malformed(format!(
            "manifest is {} version {}; this build reads {PACKAGE_FORMAT} version {PACKAGE_VERSION}",
            manifest.format, manifest.version
        )));
    }
    let listed: BTreeSet<&str> = manifest.artifacts.iter().map(|a| a.name.as_str()).collect();
    if listed.len() != manifest.artifacts.len() {
        return Err(malformed("an artifact is listed twice"));
    }
    if let Some(extra) = files.keys().find(|k| !listed.contains(k.as_str())) {
        return Err(malformed(format!("entry `{extra}` is not listed in the manifest")));
    }
    for a in &manifest.artifacts {
        let mismatch = |detail: String| PackageError::ArtifactMismatch { name: a.name.clone(), detail };
        let data = files.get(&a.name).ok_or_else(|| mismatch("missing from the package".into()))?;
        if data.len() as u64 != a.bytes {
            return Err(mismatch(format!("{} bytes, manifest says {}", data.len(), a.bytes)));
        }
        if sha256_hex(data) != a.sha256 {
            return Err(mismatch("SHA-256 differs".into()));
        }
    }
    let take = |name: &str| files.get(name).ok_or_else(|| malformed(format!("no {name}")));
    let model = Model::from_json(take(MODEL)?).map_err(|e| malformed(format!("model.json: {e}")))?;
    let selftest: SelfTest =
        serde_json::from_slice(take(SELFTEST)?).map_err(|e| malformed(format!("selftest.json: {e}")))?;
    let reference: Sketch =
        serde_json::from_slice(take(REFERENCE)?).map_err(|e| malformed(format!("reference.json: {e}")))?;
    if !reference.is_valid(model.dim()) {
        return Err(malformed("reference.json does not match the model's features"));
    }
    if manifest.channels != model.channels
        || manifest.features != model.features
        || manifest.detector != model.detector.kind()
        || manifest.alarm != alarm_settings(&model)
        || manifest.training != model.training
    {
        return Err(malformed("manifest and model.json disagree"));
    }
    Ok(VerifiedPackage {
        manifest,
        manifest_sha256: sha256_hex(&manifest_bytes),
        signed_by: signature.key_id,
        model: Arc::new(model),
        selftest,
        reference,
    })
}

/// The manifest and signature of a package, read WITHOUT checking the signature or hashes:
/// for showing what a package claims to be. Never install on the strength of this.
pub fn read_unverified(bytes: &[u8], limits: Limits) -> Result<(Manifest, Option<SignatureFile>), PackageError> {
    if bytes.len() as u64 > limits.max_bytes {
        return Err(PackageError::TooLarge { bytes: bytes.len() as u64, limit: limits.max_bytes });
    }
    let files = read_archive(bytes, limits)?;
    let manifest = files.get(MANIFEST).ok_or_else(|| malformed("no manifest.json"))?;
    let manifest: Manifest = serde_json::from_slice(manifest).map_err(|e| malformed(format!("manifest.json: {e}")))?;
    let signature = match files.get(SIGNATURE) {
        Some(s) => Some(serde_json::from_slice(s).map_err(|e| malformed(format!("signature.json: {e}")))?),
        None => None,
    };
    Ok((manifest, signature))
}

/// The device-side facts an installation is checked against.
#[derive(Debug, Clone, Copy)]
pub struct InstallContext<'a> {
    pub now_ms: i64,
    /// This device's target profile.
    pub target: &'a str,
    /// Highest release ever installed on this device.
    pub installed_release: Option<u64>,
    /// A verified rollback directive, if one came with the package.
    pub rollback: Option<&'a RollbackDirective>,
}

/// Checks that a verified package may be installed here, then runs its self-test.
pub fn check_install(pkg: &VerifiedPackage, ctx: &InstallContext<'_>) -> Result<(), PackageError> {
    let m = &pkg.manifest;
    if m.target != ctx.target {
        return Err(PackageError::WrongTarget { package: m.target.clone(), device: ctx.target.to_string() });
    }
    if ctx.now_ms > m.expires_ms {
        return Err(PackageError::Expired { expires_ms: m.expires_ms, now_ms: ctx.now_ms });
    }
    if let Some(installed) = ctx.installed_release
        && m.release <= installed
    {
        match ctx.rollback {
            Some(d) => d.allows(m, ctx.now_ms)?,
            None => return Err(PackageError::NotNewer { offered: m.release, installed }),
        }
    }
    pkg.selftest.run(&pkg.model)?;
    Ok(())
}
