//! The model lifecycle up to a signed package: datasets, reproducible pipeline runs, validation
//! gates and packages per target profile.
//!
//! - [`dataset`]: named parts of frames and labels, addressed by the hash of their content,
//!   stored as Parquet; a SKAB-layout CSV folder imports as one.
//! - [`spec`]: the pipeline spec (TOML); [`profile`]: target profiles and the fit check.
//! - [`cache`]: each step's output kept under the hash of its inputs and the code version.
//! - [`evaluate`]: a model scored on labelled parts as a device would; [`gates`]: the spec's
//!   thresholds against the candidate and the champion.
//! - [`onnx`]: a model's scoring graph (scaler and detector) as an ONNX file.
//! - [`run`]: the steps in order — dataset, train, evaluate, validate, package per target,
//!   sign, register — with a run record. The registry is a trait the caller implements (the
//!   command line talks to the hub's API); this crate does no networking and has no database.
//!
//! ```no_run
//! use impeller_pipeline::run::{RunOptions, run};
//! use impeller_pipeline::spec::PipelineSpec;
//!
//! let (spec, base) = PipelineSpec::load("pipeline.toml".as_ref()).unwrap();
//! let signer = impeller_core::package::Signer25519::from_secret([7; 32]);
//! let options = RunOptions::new("work".into(), base, signer, 1_764_000_000_000);
//! let record = run(&spec, &options, None, &mut |_| {}).unwrap();
//! println!("model {}", record.model_sha256.unwrap_or_default());
//! ```

pub mod cache;
pub mod dataset;
pub mod evaluate;
pub mod gates;
pub mod onnx;
pub mod onnx_import;
pub mod profile;
pub mod run;
pub mod spec;

use std::path::Path;

/// This build's version (and git commit, when built from a checkout): part of every step's key.
pub const CODE_VERSION: &str = env!("IMPELLER_CODE_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A spec or profile that cannot be used; the message names the file and field.
    #[error("{0}")]
    Spec(String),
    /// Data that cannot be read or does not fit the spec.
    #[error("{0}")]
    Data(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("training failed: {0}")]
    Train(#[from] impeller_core::TrainError),
    #[error("packaging failed: {0}")]
    Package(#[from] impeller_core::package::PackageError),
    /// The registry (the hub) refused or could not be reached.
    #[error("registry: {0}")]
    Registry(String),
}

impl PipelineError {
    pub fn io(path: &Path, source: std::io::Error) -> PipelineError {
        PipelineError::Io { path: path.display().to_string(), source }
    }
}

/// Writes a file and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| PipelineError::io(path, e))?;
    f.write_all(bytes).map_err(|e| PipelineError::io(path, e))?;
    f.sync_all().map_err(|e| PipelineError::io(path, e))
}

/// Fsyncs a folder, so that the names created or renamed in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), PipelineError> {
    #[cfg(unix)]
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| PipelineError::io(dir, e))?;
    Ok(())
}

/// A temporary name for `name` that no other writer uses, in this process or another: two
/// writers of the same content each write their own copy, and the first rename wins.
pub(crate) fn temp_name(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{name}.tmp-{}-{n}", std::process::id())
}

/// SHA-256 of bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    impeller_core::hex::encode(&sha2::Sha256::digest(bytes))
}
