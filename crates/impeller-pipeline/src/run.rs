//! One pipeline run: dataset → train → evaluate → validate (against the champion) → package
//! per target (fit check, sign) → register. Every step but validation is cached by the hash of
//! its inputs ([`crate::cache`]); the data is only loaded when a step that reads it has to run,
//! so an unchanged rerun reads a few small files.
//!
//! A run is identified by its *run key*: the hash of the model it trained (which covers the
//! training frames, the settings and the code), the dataset (labels and validation parts
//! included), the validation it ran, the gates, the targets and the signing key.
//! Packages carry the run key as `pipeline_run`, so the same spec on the same data builds the
//! same bytes; a rerun whose key the registry already has registers nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use impeller_core::detector::Detector;
use impeller_core::package::{PackageSpec, Signer25519, build_parts_with};
use impeller_core::{Frame, Model, adopt_parts, train_parts};
use serde::{Deserialize, Serialize};

use crate::cache::StepCache;
use crate::dataset::{self, Dataset};
use crate::evaluate::{self, Agreement, Evaluation, ValidationPart};
use crate::gates::{self, GateResult};
use crate::profile::{Fit, Runtime, TargetProfile, Weights};
use crate::spec::{PipelineSpec, glob_match};
use crate::{CODE_VERSION, PipelineError, sha256_hex, write_synced};

const DAY_MS: i64 = 86_400_000;

/// Where a run keeps things and what it signs with.
#[derive(Debug)]
pub struct RunOptions {
    /// `datasets/`, `cache/` and `runs/` go here.
    pub work: PathBuf,
    /// The spec's folder: its relative paths start here.
    pub base: PathBuf,
    /// Replaces the spec's `data.import` folder.
    pub import: Option<PathBuf>,
    pub signer: Signer25519,
    /// Packages' creation time (their expiry follows from it): the caller's clock, or a fixed
    /// time (`SOURCE_DATE_EPOCH`) for a reproducible build.
    pub created_ms: i64,
    /// Release counter for packages when there is no registry to hand one out.
    pub release: u64,
    /// Where datasets are kept; `new` puts it in the work folder, a hub points it at its own.
    pub datasets_dir: PathBuf,
}

impl RunOptions {
    pub fn new(work: PathBuf, base: PathBuf, signer: Signer25519, created_ms: i64) -> RunOptions {
        let datasets_dir = work.join("datasets");
        RunOptions { work, base, import: None, signer, created_ms, release: 1, datasets_dir }
    }

    pub fn datasets(&self) -> PathBuf {
        self.datasets_dir.clone()
    }
}

/// The model registry, as the run needs it. The command line implements it over the hub's API.
pub trait Registry {
    /// The version the `champion` alias points at, with its model.
    fn champion(&mut self, model: &str) -> Result<Option<Champion>, PipelineError>;
    /// The version a run with this key registered before, if any.
    fn find_run(&mut self, model: &str, run_key: &str) -> Result<Option<RegisteredVersion>, PipelineError>;
    /// Registers a new version (status `pending`) and reserves its release number.
    fn create_version(&mut self, model: &str, new: &NewVersion) -> Result<RegisteredVersion, PipelineError>;
    /// Stores a signed package; returns its SHA-256.
    fn upload_package(&mut self, bytes: &[u8]) -> Result<String, PipelineError>;
    /// Marks the version `ready` or `failed`, with what the run found.
    fn finish_version(&mut self, model: &str, version: u64, outcome: &VersionOutcome) -> Result<(), PipelineError>;
}

#[derive(Debug, Clone)]
pub struct Champion {
    pub version: u64,
    pub model: Model,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredVersion {
    pub version: u64,
    pub release: u64,
    pub status: String,
}

/// Lineage and metrics of a version as it is registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewVersion {
    pub run_key: String,
    pub model_sha256: String,
    pub dataset_sha256: String,
    pub code_version: String,
    pub parent_version: Option<u64>,
    pub metrics: BTreeMap<String, f64>,
    /// The spec as the run read it.
    pub spec: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionOutcome {
    /// `ready` or `failed`.
    pub status: String,
    pub gates: Vec<GateResult>,
    pub packages: Vec<PackageRecord>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageRecord {
    pub target: String,
    pub sha256: String,
    pub bytes: u64,
    pub fit: Fit,
    /// Where the package file is (in the step cache).
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Registered as ready.
    Registered,
    /// Built and checked, no registry to register with.
    Built,
    /// The registry already has this run: nothing new.
    Unchanged,
    /// A gate or a fit check failed; registered as failed.
    Rejected,
    /// The run stopped on an error.
    Failed,
}

/// One step as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: String,
    pub key: Option<String>,
    pub cached: bool,
    pub ms: f64,
    pub detail: String,
}

/// What a run did, written to `runs/{id}.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub model: String,
    pub run_key: Option<String>,
    pub code_version: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub outcome: Outcome,
    pub dataset_sha256: Option<String>,
    /// The model that ships (with `data.refit`, the one trained again on every row).
    pub model_sha256: Option<String>,
    /// With `data.refit`: the model trained without the held-out rows, which the gates judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validated_model_sha256: Option<String>,
    pub version: Option<u64>,
    pub release: Option<u64>,
    pub parent_version: Option<u64>,
    pub spec: serde_json::Value,
    pub steps: Vec<StepRecord>,
    pub evaluation: Option<Evaluation>,
    pub champion_evaluation: Option<Evaluation>,
    pub gates: Vec<GateResult>,
    pub packages: Vec<PackageRecord>,
    /// The model's scoring graph as ONNX ([`crate::onnx`]), kept in the step cache.
    pub onnx: Option<Artifact>,
    pub error: Option<String>,
}

/// A file a run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub sha256: String,
    pub bytes: u64,
    pub path: PathBuf,
}

/// What the caller hears as the run goes.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    Started { step: &'a str },
    Finished(&'a StepRecord),
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Runs `spec`; the record is written to `runs/` and returned, whatever the outcome. An error
/// is returned only when the record itself cannot be written.
pub fn run(
    spec: &PipelineSpec,
    options: &RunOptions,
    registry: Option<&mut dyn Registry>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<RunRecord, PipelineError> {
    let started_ms = now_ms();
    let mut record = RunRecord {
        id: String::new(),
        model: spec.model.clone(),
        run_key: None,
        code_version: CODE_VERSION.into(),
        started_ms,
        finished_ms: 0,
        outcome: Outcome::Failed,
        dataset_sha256: None,
        model_sha256: None,
        validated_model_sha256: None,
        version: None,
        release: None,
        parent_version: None,
        spec: serde_json::to_value(spec).unwrap_or_default(),
        steps: Vec::new(),
        evaluation: None,
        champion_evaluation: None,
        gates: Vec::new(),
        packages: Vec::new(),
        onnx: None,
        error: None,
    };
    let mut registry = registry;
    let mut runner = Runner { spec, options, record: &mut record, progress, data: None, pending: None };
    if let Err(e) = runner.steps(registry.as_deref_mut()) {
        runner.record.outcome = Outcome::Failed;
        runner.record.error = Some(e.to_string());
        // A version registered for this run is settled as failed, with the reason, so that it
        // does not stay pending.
        if let (Some(v), Some(reg)) = (runner.pending, registry) {
            let outcome = VersionOutcome {
                status: "failed".into(),
                gates: runner.record.gates.clone(),
                packages: Vec::new(),
                reason: Some(format!("the run failed: {e}")),
            };
            if let Err(settle) = reg.finish_version(&spec.model, v, &outcome) {
                tracing::warn!(error = %settle, version = v, "cannot settle the failed run's version");
            }
        }
    }
    record.finished_ms = now_ms();
    let key = record.run_key.as_deref().unwrap_or("none");
    record.id = format!("{started_ms}-{}", &key[..key.len().min(12)]);
    let runs = options.work.join("runs");
    std::fs::create_dir_all(&runs).map_err(|e| PipelineError::io(&runs, e))?;
    let bytes = serde_json::to_vec_pretty(&record).map_err(|e| PipelineError::Data(e.to_string()))?;
    write_synced(&runs.join(format!("{}.json", record.id)), &bytes)?;
    Ok(record)
}

/// The dataset split as the spec asks, loaded once a step needs it.
struct Split {
    data: Dataset,
    train: Vec<usize>,
    validate: Vec<usize>,
    /// Share of each training part held out at its end.
    holdout: f64,
}

struct Runner<'a> {
    spec: &'a PipelineSpec,
    options: &'a RunOptions,
    record: &'a mut RunRecord,
    progress: &'a mut dyn FnMut(Progress<'_>),
    data: Option<Split>,
    /// The version this run registered and has not settled yet.
    pending: Option<u64>,
}

impl Runner<'_> {
    /// Runs `body` as one step and records it.
    fn step<T>(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut Self) -> Result<(T, Option<String>, bool, String), PipelineError>,
    ) -> Result<T, PipelineError> {
        (self.progress)(Progress::Started { step: name });
        let started = Instant::now();
        let (out, key, cached, detail) = body(self)?;
        let step = StepRecord { step: name.into(), key, cached, ms: started.elapsed().as_secs_f64() * 1e3, detail };
        (self.progress)(Progress::Finished(&step));
        self.record.steps.push(step);
        Ok(out)
    }

    fn steps(&mut self, mut registry: Option<&mut (dyn Registry + '_)>) -> Result<(), PipelineError> {
        let (spec, options) = (self.spec, self.options);
        let cache = StepCache::new(options.work.join("cache"));
        let dataset_sha = self.step("dataset", |r| r.dataset(&cache))?;
        self.record.dataset_sha256 = Some(dataset_sha.clone());
        let selection = serde_json::to_vec(&(
            &spec.data.channels,
            &spec.data.train,
            &spec.data.validate,
            spec.data.train_head_rows,
            spec.data.holdout,
            spec.data.refit,
        ))
        .map_err(|e| PipelineError::Data(e.to_string()))?;

        // Train, or adopt the model brought from elsewhere (its file's hash joins the key).
        let train_cfg = serde_json::to_vec(&spec.train).map_err(|e| PipelineError::Data(e.to_string()))?;
        let byo = match &spec.bring_your_own {
            Some(b) => Some((b.onnx.display().to_string(), read(&options.base.join(&b.onnx))?)),
            None => None,
        };
        let byo_sha = byo.as_ref().map(|(_, bytes)| sha256_hex(bytes));
        let mut inputs: Vec<&[u8]> = vec![dataset_sha.as_bytes(), &selection, &train_cfg];
        inputs.extend(byo_sha.as_deref().map(str::as_bytes));
        let key = StepCache::key("train", &inputs);
        let model_bytes = self.step("train", |r| r.train(&cache, &key, &dataset_sha, byo.as_ref(), false))?;
        let model = Model::from_json(&model_bytes).map_err(|e| PipelineError::Data(format!("cached model: {e}")))?;
        let model_sha = sha256_hex(&model_bytes);
        self.record.model_sha256 = Some(model_sha.clone());
        let mut onnx = self.export_onnx(&cache, &model, &model_sha)?;

        // Evaluate the candidate.
        let evaluation = if spec.data.validate.is_empty() && spec.data.holdout == 0.0 {
            None
        } else {
            Some(self.step("evaluate", |r| r.evaluate(&cache, &model, &model_sha, &dataset_sha, &selection))?)
        };
        self.record.evaluation = evaluation.clone();
        let metrics = evaluation.as_ref().map(Evaluation::metrics).unwrap_or_default();

        let targets: Vec<TargetProfile> =
            spec.targets.iter().map(|t| TargetProfile::load(&options.base.join(t))).collect::<Result<_, _>>()?;
        let gates_json = serde_json::to_vec(&(&spec.gates, &targets, spec.package.valid_days))
            .map_err(|e| PipelineError::Data(e.to_string()))?;
        let run_key = StepCache::key(
            "run",
            &[
                model_sha.as_bytes(),
                dataset_sha.as_bytes(),
                &selection,
                &gates_json,
                options.signer.key_id().as_bytes(),
            ],
        );
        self.record.run_key = Some(run_key.clone());

        // A run the registry holds as ready: nothing to do. One that failed or was cut off
        // (pending) runs again, as a new version: the cause may have been fixed since.
        if let Some(reg) = registry.as_deref_mut()
            && let Some(v) = reg.find_run(&spec.model, &run_key)?.filter(|v| v.status == "ready")
        {
            self.record.version = Some(v.version);
            self.record.release = Some(v.release);
            self.record.outcome = Outcome::Unchanged;
            let detail = format!("version {} was registered ready by this run before", v.version);
            self.step("register", |_| Ok(((), None, true, detail)))?;
            return Ok(());
        }

        // Validate against the gates and the champion.
        let champion = match registry.as_deref_mut() {
            Some(reg) => reg.champion(&spec.model)?,
            None => None,
        };
        let champion_eval = match (&champion, &evaluation) {
            (Some(c), Some(_)) => {
                let bytes = c.model.to_json().map_err(|e| PipelineError::Data(e.to_string()))?;
                let sha = sha256_hex(&bytes);
                let name = format!("evaluate-champion (version {})", c.version);
                Some(self.step(&name, |r| r.evaluate(&cache, &c.model, &sha, &dataset_sha, &selection))?)
            }
            _ => None,
        };
        self.record.parent_version = champion.as_ref().map(|c| c.version);
        self.record.champion_evaluation = champion_eval.clone();
        let mut results = match &evaluation {
            Some(e) => gates::check(&spec.gates, e, champion_eval.as_ref()),
            None => Vec::new(),
        };
        let passed = gates::all_passed(&results);
        let detail = summary_of(&results);
        self.step("validate", |_| Ok(((), None, false, detail)))?;

        // What ships: the validated model, or, with `refit`, the same training on every row.
        let (model, model_bytes, model_sha) = if spec.data.refit && passed {
            let key = StepCache::key("refit", &inputs);
            let bytes = self.step("refit", |r| r.train(&cache, &key, &dataset_sha, byo.as_ref(), true))?;
            let refit = Model::from_json(&bytes).map_err(|e| PipelineError::Data(format!("cached model: {e}")))?;
            let sha = sha256_hex(&bytes);
            onnx = self.export_onnx(&cache, &refit, &sha)?;
            self.record.validated_model_sha256 = Some(model_sha);
            self.record.model_sha256 = Some(sha.clone());
            (refit, bytes, sha)
        } else {
            (model, model_bytes, model_sha)
        };

        // Register the version (pending), so packages carry its number and release.
        let new = NewVersion {
            run_key: run_key.clone(),
            model_sha256: model_sha.clone(),
            dataset_sha256: dataset_sha.clone(),
            code_version: CODE_VERSION.into(),
            parent_version: self.record.parent_version,
            metrics: metrics.clone(),
            spec: self.record.spec.clone(),
        };
        let (version, release) = match registry.as_deref_mut() {
            Some(reg) => {
                let v = reg.create_version(&spec.model, &new)?;
                self.pending = Some(v.version);
                (v.version.to_string(), v.release)
            }
            None => ("local".to_string(), options.release),
        };
        self.record.version = version.parse().ok();
        self.record.release = Some(release);
        if !passed {
            self.record.gates = results.clone();
            return self.finish(registry, "failed", Outcome::Rejected, Vec::new());
        }

        // The int8 variant, for the targets that want one, held to its agreement with the float
        // model (a gate, like the fit checks below).
        let float = Variant { model, json_bytes: model_bytes.len(), sha256: model_sha };
        let int8 = if targets.iter().any(|t| t.weights == Weights::Int8) {
            let q = self.step("quantize-int8", |r| r.quantize_int8(&cache, &float, &dataset_sha, &selection))?;
            if let Some(q) = &q {
                results.push(gates::int8_agreement(&spec.gates, &q.agreement));
            }
            q
        } else {
            None
        };

        // Package per target: build, check the fit, keep what fits.
        let shipped_rows = spec.data.refit;
        let mut latency_us = BTreeMap::new();
        let mut packages = Vec::new();
        for profile in &targets {
            let variant = match (&int8, profile.weights) {
                (Some(q), Weights::Int8) => &q.variant,
                _ => &float,
            };
            let latency_us = match latency_us.get(&variant.sha256) {
                Some(us) => *us,
                None => {
                    let split = self.split(&dataset_sha)?;
                    let frames: Vec<Frame> = split.training_parts(spec.data.train_head_rows, shipped_rows).concat();
                    let us = evaluate::scoring_latency_us(&variant.model, &frames[..frames.len().min(2_000)]);
                    *latency_us.entry(variant.sha256.clone()).or_insert(us)
                }
            };
            let memory = evaluate::memory_estimate_bytes(&variant.model, variant.json_bytes);
            let mut metrics = metrics.clone();
            if variant.model.detector.is_int8()
                && let Some(q) = &int8
            {
                metrics.insert("int8_alarm_agreement".into(), q.agreement.alarm_agreement);
                metrics.insert("int8_max_rel_score_diff".into(), q.agreement.max_rel_score_diff);
            }
            let package_spec = PackageSpec {
                name: spec.model.clone(),
                version: version.clone(),
                release,
                target: profile.name.clone(),
                created_ms: options.created_ms,
                expires_ms: options.created_ms + i64::from(spec.package.valid_days) * DAY_MS,
                pipeline_run: Some(run_key.clone()),
                metrics: metrics.clone(),
            };
            let profile_json = serde_json::to_vec(profile).map_err(|e| PipelineError::Data(e.to_string()))?;
            let signer = &options.signer;
            let key = StepCache::key(
                "package",
                &[
                    variant.sha256.as_bytes(),
                    dataset_sha.as_bytes(),
                    &selection,
                    &profile_json,
                    &serde_json::to_vec(&(&package_spec.name, &package_spec.version, release, package_spec.created_ms))
                        .map_err(|e| PipelineError::Data(e.to_string()))?,
                    &serde_json::to_vec(&(&package_spec.expires_ms, &package_spec.pipeline_run, &metrics))
                        .map_err(|e| PipelineError::Data(e.to_string()))?,
                    signer.key_id().as_bytes(),
                ],
            );
            let step_name = format!("package {}", profile.name);
            let record = self.step(&step_name, |r| {
                let c = cache.get_or_run("package", &key, |dir| {
                    let split = r.split(&dataset_sha)?;
                    // The package's reference distribution: the rows the shipped model trained on.
                    let parts = split.training_parts(spec.data.train_head_rows, shipped_rows);
                    let onnx_bytes;
                    let extra: Vec<(&str, &[u8])> = match profile.runtime {
                        Runtime::Native => Vec::new(),
                        Runtime::Onnx => {
                            onnx_bytes = read(&onnx.path)?;
                            vec![("model.onnx", &onnx_bytes)]
                        }
                    };
                    let bytes = build_parts_with(&variant.model, &parts, &package_spec, signer, &extra)?;
                    write_synced(&dir.join("package.tar.gz"), &bytes)
                })?;
                let path = c.dir.join("package.tar.gz");
                let bytes = read(&path)?;
                let fit = Fit::check(profile, &variant.model.channels, bytes.len() as u64, memory, latency_us);
                let weights = if variant.model.detector.is_int8() { "int8" } else { "float" };
                let detail = if fit.fits() {
                    format!(
                        "{} bytes, {weights} weights, fits (≈{:.0} µs a frame on the device)",
                        bytes.len(),
                        fit.latency_estimate_us
                    )
                } else {
                    format!("does not fit: {}", fit.problems.join("; "))
                };
                let record = PackageRecord {
                    target: profile.name.clone(),
                    sha256: sha256_hex(&bytes),
                    bytes: bytes.len() as u64,
                    fit,
                    path,
                };
                Ok((record, Some(key.clone()), c.hit, detail))
            })?;
            results.push(GateResult {
                gate: format!("fit:{}", profile.name),
                passed: record.fit.fits(),
                value: None,
                limit: None,
                detail: if record.fit.fits() {
                    format!(
                        "fits {}: {} bytes, about {} bytes of memory, {:.1} µs a frame",
                        profile.name, record.bytes, record.fit.memory_estimate_bytes, record.fit.latency_estimate_us
                    )
                } else {
                    record.fit.problems.join("; ")
                },
            });
            packages.push(record);
        }
        self.record.gates = results.clone();
        if !gates::all_passed(&results) {
            return self.finish(registry, "failed", Outcome::Rejected, Vec::new());
        }
        self.finish(registry, "ready", Outcome::Registered, packages)
    }

    /// The model trained (or, brought from elsewhere, calibrated) on the training rows, the
    /// held-out tails too when `with_tails`; its JSON bytes.
    fn train(
        &mut self,
        cache: &StepCache,
        key: &str,
        dataset_sha: &str,
        byo: Option<&(String, Vec<u8>)>,
        with_tails: bool,
    ) -> Result<(Vec<u8>, Option<String>, bool, String), PipelineError> {
        let spec = self.spec;
        let step = if with_tails { "refit" } else { "train" };
        let c = cache.get_or_run(step, key, |dir| {
            let split = self.split(dataset_sha)?;
            let parts = split.training_parts(spec.data.train_head_rows, with_tails);
            let channels = &split.data.channels;
            let model = match byo {
                Some((_, onnx)) => {
                    let dim = spec.train.features.dim(channels.len());
                    let forest = crate::onnx_import::isolation_forest(onnx, dim)?;
                    adopt_parts(channels, &parts, &spec.train, Detector::IsolationForest(forest))?
                }
                None => train_parts(channels, &parts, &spec.train)?,
            };
            write_synced(&dir.join("model.json"), &model.to_json().map_err(|e| PipelineError::Data(e.to_string()))?)
        })?;
        let bytes = read(&c.dir.join("model.json"))?;
        let rows = if with_tails { ", on every row, the held-out ones too" } else { "" };
        let detail = match byo {
            Some((file, _)) => format!("model {} (adopted from {file}){rows}", &sha256_hex(&bytes)[..12]),
            None => format!("model {}{rows}", &sha256_hex(&bytes)[..12]),
        };
        Ok((bytes, Some(key.to_string()), c.hit, detail))
    }

    /// The scoring graph as ONNX, for devices and tools with their own ONNX runtime.
    fn export_onnx(&mut self, cache: &StepCache, model: &Model, model_sha: &str) -> Result<Artifact, PipelineError> {
        let key = StepCache::key("export-onnx", &[model_sha.as_bytes()]);
        let onnx = self.step("export-onnx", |_| {
            let c = cache.get_or_run("export-onnx", &key, |dir| {
                write_synced(&dir.join("model.onnx"), &crate::onnx::export(model))
            })?;
            let path = c.dir.join("model.onnx");
            let bytes = read(&path)?;
            let a = Artifact { sha256: sha256_hex(&bytes), bytes: bytes.len() as u64, path };
            let detail = format!("model.onnx {} ({} bytes)", &a.sha256[..12], a.bytes);
            Ok((a, Some(key.clone()), c.hit, detail))
        })?;
        self.record.onnx = Some(onnx.clone());
        Ok(onnx)
    }

    /// Uploads the packages and settles the version (with a registry), or records the build.
    fn finish(
        &mut self,
        registry: Option<&mut (dyn Registry + '_)>,
        status: &str,
        outcome: Outcome,
        packages: Vec<PackageRecord>,
    ) -> Result<(), PipelineError> {
        let failed: Vec<String> =
            self.record.gates.iter().filter(|g| !g.passed).map(|g| format!("{}: {}", g.gate, g.detail)).collect();
        let reason = (!failed.is_empty()).then(|| failed.join("; "));
        let Some(reg) = registry else {
            self.record.outcome = if outcome == Outcome::Registered { Outcome::Built } else { outcome };
            self.record.packages = packages;
            return Ok(());
        };
        let model = self.spec.model.clone();
        let version = self.record.version.unwrap_or_default();
        let detail = format!("version {version} {status}");
        let gates = self.record.gates.clone();
        self.step("register", |_| {
            for p in &packages {
                let sha = reg.upload_package(&read(&p.path)?)?;
                if sha != p.sha256 {
                    return Err(PipelineError::Registry(format!("the hub stored package {} as {sha}", p.sha256)));
                }
            }
            let outcome = VersionOutcome { status: status.into(), gates, packages: packages.clone(), reason };
            reg.finish_version(&model, version, &outcome)?;
            Ok(((), None, false, detail))
        })?;
        self.pending = None;
        self.record.packages = packages;
        self.record.outcome = outcome;
        Ok(())
    }

    /// The dataset's hash, importing the spec's folder or checking the named dataset.
    fn dataset(&mut self, cache: &StepCache) -> Result<(String, Option<String>, bool, String), PipelineError> {
        let dir = self.options.datasets();
        if let Some(hash) = &self.spec.data.dataset {
            let m = dataset::read_manifest(&dir, hash)?;
            return Ok((hash.clone(), None, true, format!("dataset {} ({} parts)", &hash[..12], m.parts.len())));
        }
        let folder = match (&self.options.import, &self.spec.data.import) {
            (Some(f), _) => f.clone(),
            (None, Some(f)) => self.options.base.join(f),
            (None, None) => return Err(PipelineError::Spec("data: no folder to import".into())),
        };
        // The key is the files' names and content hashes: an unchanged folder is not re-read
        // as CSV (hashing a few MiB is much cheaper than parsing them).
        let mut listing = Vec::new();
        for (path, name) in dataset::csv_files(&folder)? {
            let bytes = read(&path)?;
            listing.extend_from_slice(format!("{name}\t{}\n", sha256_hex(&bytes)).as_bytes());
        }
        let key = StepCache::key("import", &[&listing]);
        let c = cache.get_or_run("import", &key, |out| {
            let ds = dataset::import_csv_folder(&folder)?;
            let hash = ds.write(&dir, &format!("imported from {}", folder.display()))?;
            write_synced(&out.join("dataset"), hash.as_bytes())?;
            Ok(())
        })?;
        let hash = String::from_utf8(read(&c.dir.join("dataset"))?).map_err(|e| PipelineError::Data(e.to_string()))?;
        let m = dataset::read_manifest(&dir, &hash)?;
        Ok((
            hash.clone(),
            Some(key),
            c.hit,
            format!("dataset {} ({} parts from {})", &hash[..12], m.parts.len(), folder.display()),
        ))
    }

    fn evaluate(
        &mut self,
        cache: &StepCache,
        model: &Model,
        model_sha: &str,
        dataset_sha: &str,
        selection: &[u8],
    ) -> Result<(Evaluation, Option<String>, bool, String), PipelineError> {
        let key = StepCache::key("evaluate", &[model_sha.as_bytes(), dataset_sha.as_bytes(), selection]);
        let head = self.spec.data.train_head_rows;
        let c = cache.get_or_run("evaluate", &key, |dir| {
            let split = self.split(dataset_sha)?;
            let mut parts: Vec<ValidationPart<'_>> = split
                .validate
                .iter()
                .map(|&i| {
                    let p = &split.data.parts[i];
                    ValidationPart {
                        name: &p.name,
                        frames: &p.frames,
                        labels: p.labels.as_deref().unwrap_or_default(),
                        skip: head,
                    }
                })
                .collect();
            // The held-out tails, normal unless labelled, each scored after the rows before it
            // have warmed the scorer up.
            let warm = model.features.window + model.calibration.smoothing;
            // (part, first row scored, first row given to the scorer), for parts with a tail.
            let tails: Vec<(&dataset::Part, usize, usize)> = split
                .train
                .iter()
                .map(|&i| &split.data.parts[i])
                .filter_map(|p| {
                    let cut = split.training_rows(p.frames.len());
                    (cut < p.frames.len()).then(|| (p, cut, cut.saturating_sub(warm)))
                })
                .collect();
            let normal: Vec<Vec<bool>> = tails.iter().map(|(p, _, from)| vec![false; p.frames.len() - from]).collect();
            for (&(p, cut, from), normal) in tails.iter().zip(&normal) {
                let labels = p.labels.as_deref().map_or(normal.as_slice(), |l| &l[from..]);
                parts.push(ValidationPart { name: &p.name, frames: &p.frames[from..], labels, skip: cut - from });
            }
            write_json(&dir.join("evaluation.json"), &evaluate::evaluate(model, &parts))
        })?;
        let e: Evaluation = read_json(&c.dir.join("evaluation.json"), "cached evaluation")?;
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        let detail = format!(
            "F1 {} FAR {} MAR {}, {}/{} anomalies caught, {} alarms per device-day",
            fmt(e.f1),
            fmt(e.far),
            fmt(e.mar),
            e.detected,
            e.anomalies,
            fmt(e.alarms_per_day)
        );
        Ok((e, Some(key), c.hit, detail))
    }

    /// The model with int8 weights and its agreement with the float one on the validation parts
    /// (the training parts when there are none), or `None` when the detector has no weights to
    /// quantise.
    fn quantize_int8(
        &mut self,
        cache: &StepCache,
        float: &Variant,
        dataset_sha: &str,
        selection: &[u8],
    ) -> Result<(Option<Int8>, Option<String>, bool, String), PipelineError> {
        let model = &float.model;
        let Some(detector) = model.detector.to_int8() else {
            let detail =
                format!("{} has no weight matrices to quantise: its targets get float weights", model.detector.kind());
            return Ok((None, None, false, detail));
        };
        let key = StepCache::key("quantize-int8", &[float.sha256.as_bytes(), dataset_sha.as_bytes(), selection]);
        let quantised = Model { detector, ..model.clone() };
        let head = self.spec.data.train_head_rows;
        let c = cache.get_or_run("quantize-int8", &key, |dir| {
            let split = self.split(dataset_sha)?;
            let parts: Vec<&[Frame]> = if split.validate.is_empty() {
                split.training_parts(head, false)
            } else {
                split.validate.iter().map(|&i| split.data.parts[i].frames.as_slice()).collect()
            };
            let a = evaluate::agreement(model, &quantised, &parts);
            let json = quantised.to_json().map_err(|e| PipelineError::Data(e.to_string()))?;
            write_synced(&dir.join("model.json"), &json)?;
            write_json(&dir.join("agreement.json"), &a)
        })?;
        let json = read(&c.dir.join("model.json"))?;
        let int8_model = Model::from_json(&json).map_err(|e| PipelineError::Data(format!("cached int8 model: {e}")))?;
        let agreement: Agreement = read_json(&c.dir.join("agreement.json"), "cached agreement")?;
        let detail = format!(
            "int8 model {} ({} bytes against {}): alarms agree on {:.2} % of {} frames",
            &sha256_hex(&json)[..12],
            json.len(),
            float.json_bytes,
            100.0 * agreement.alarm_agreement,
            agreement.frames
        );
        let variant = Variant { sha256: sha256_hex(&json), json_bytes: json.len(), model: int8_model };
        Ok((Some(Int8 { variant, agreement }), Some(key), c.hit, detail))
    }

    /// The dataset, channels selected and parts split, loaded on first use.
    fn split(&mut self, dataset_sha: &str) -> Result<&Split, PipelineError> {
        if self.data.is_none() {
            let (ds, _) = Dataset::read(&self.options.datasets(), dataset_sha)?;
            let ds = ds.select_channels(&self.spec.data.channels)?;
            let pick = |patterns: &[String], what: &str| -> Result<Vec<usize>, PipelineError> {
                let mut out = Vec::new();
                for p in patterns {
                    let hits: Vec<usize> = ds
                        .parts
                        .iter()
                        .enumerate()
                        .filter(|(_, part)| glob_match(p, &part.name))
                        .map(|(i, _)| i)
                        .collect();
                    if hits.is_empty() {
                        let names: Vec<&str> = ds.parts.iter().take(8).map(|p| p.name.as_str()).collect();
                        return Err(PipelineError::Spec(format!(
                            "data.{what}: no part matches `{p}` (parts are named like {})",
                            names.join(", ")
                        )));
                    }
                    out.extend(hits);
                }
                out.sort_unstable();
                out.dedup();
                Ok(out)
            };
            let train = pick(&self.spec.data.train, "train")?;
            let validate = pick(&self.spec.data.validate, "validate")?;
            if let Some(i) = train.iter().find(|i| validate.contains(i)) {
                return Err(PipelineError::Spec(format!(
                    "part `{}` is in both data.train and data.validate; a model is not validated on what it trained on",
                    ds.parts[*i].name
                )));
            }
            if let Some(&i) = validate.iter().find(|&&i| ds.parts[i].labels.is_none()) {
                return Err(PipelineError::Data(format!("part `{}` has no labels to validate on", ds.parts[i].name)));
            }
            self.data = Some(Split { data: ds, train, validate, holdout: self.spec.data.holdout });
        }
        self.data.as_ref().ok_or_else(|| PipelineError::Data("no data".into()))
    }
}

impl Split {
    /// The rows of a training part of `len` that train: all but the held-out tail.
    fn training_rows(&self, len: usize) -> usize {
        len - ((len as f64 * self.holdout).floor() as usize).min(len)
    }

    /// The training parts (without their held-out tails unless `with_tails`), then the first
    /// `head` rows of each validation part.
    fn training_parts(&self, head: usize, with_tails: bool) -> Vec<&[Frame]> {
        let mut parts: Vec<&[Frame]> = self
            .train
            .iter()
            .map(|&i| {
                let f = &self.data.parts[i].frames;
                if with_tails { f.as_slice() } else { &f[..self.training_rows(f.len())] }
            })
            .collect();
        if head > 0 {
            parts.extend(self.validate.iter().map(|&i| {
                let f = &self.data.parts[i].frames;
                &f[..head.min(f.len())]
            }));
        }
        parts
    }
}

/// A model as packaged: the float one as trained, or its int8 variant.
struct Variant {
    model: Model,
    json_bytes: usize,
    sha256: String,
}

struct Int8 {
    variant: Variant,
    agreement: Agreement,
}

fn read(path: &Path) -> Result<Vec<u8>, PipelineError> {
    std::fs::read(path).map_err(|e| PipelineError::io(path, e))
}

/// A step's output written as pretty JSON, fsynced.
fn write_json(path: &Path, value: &impl Serialize) -> Result<(), PipelineError> {
    write_synced(path, &serde_json::to_vec_pretty(value).map_err(|e| PipelineError::Data(e.to_string()))?)
}

/// A step's JSON output read back; `what` names it in errors.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, PipelineError> {
    serde_json::from_slice(&read(path)?).map_err(|e| PipelineError::Data(format!("{what}: {e}")))
}

fn summary_of(results: &[GateResult]) -> String {
    if results.is_empty() {
        return "no gates".into();
    }
    let failed: Vec<&str> = results.iter().filter(|g| !g.passed).map(|g| g.gate.as_str()).collect();
    if failed.is_empty() { format!("{} gates passed", results.len()) } else { format!("failed: {}", failed.join(", ")) }
}
