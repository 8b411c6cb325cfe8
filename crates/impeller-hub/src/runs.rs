//! Pipeline runs the hub executes itself (`POST /api/v1/runs`): the spec and its target
//! profiles come with the request, the data is one of the hub's dataset snapshots, the packages
//! are signed with the hub's pipeline key and registered in its own registry. One run at a time
//! (training takes the cores); each run's steps are visible while it goes (`GET /runs/{id}`),
//! and its record is kept in `{work}/runs/` like a run from the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use impeller_core::audit::AuditEvent;
use impeller_core::package::{Limits, Signer25519, TrustStore, open};
use impeller_pipeline::PipelineError;
use impeller_pipeline::run::{
    Champion, NewVersion, Progress, RegisteredVersion, Registry, RunOptions, RunRecord, StepRecord, VersionOutcome, run,
};
use impeller_pipeline::spec::PipelineSpec;
use serde::{Deserialize, Serialize};

use crate::store::{AuditStore, NewModelVersion, RegistryStore, Store, VersionFinish, VersionPackage, now_ms};

/// A run as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub id: String,
    pub model: String,
    /// `queued`, `running` or `finished`.
    pub state: String,
    /// The step running now.
    pub step: Option<String>,
    /// Steps finished so far.
    pub steps: Vec<StepRecord>,
    pub submitted_by: String,
    pub submitted_ms: i64,
    /// The run record, once finished.
    pub record: Option<RunRecord>,
}

/// What `POST /runs` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// The pipeline spec (TOML). Its data must be a dataset on this hub (`dataset = "HASH"`).
    pub spec: String,
    /// Each target profile the spec names, by the path it names it with, as TOML text.
    #[serde(default)]
    pub profiles: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "this hub has no pipeline signing key (`[pipelines] signing_key` or --pipeline-key): it cannot sign packages"
    )]
    NoKey,
    /// The hub could not write the run's inputs.
    #[error("{0}")]
    Io(String),
    #[error("the hub is stopping: it takes no more pipeline runs")]
    Stopping,
}

#[derive(Debug, Clone)]
pub struct Runs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    artifacts: crate::artifacts::Artifacts,
    datasets_dir: PathBuf,
    work: PathBuf,
    signer: Option<Signer25519>,
    trust: Arc<TrustStore>,
    live: Mutex<BTreeMap<String, RunView>>,
    /// One run at a time; closed when the hub stops.
    turn: tokio::sync::Semaphore,
}

impl Runs {
    pub fn new(
        store: Store,
        artifacts: crate::artifacts::Artifacts,
        datasets_dir: PathBuf,
        work: PathBuf,
        signer: Option<Signer25519>,
        trust: Arc<TrustStore>,
    ) -> Runs {
        Runs {
            inner: Arc::new(Inner {
                store,
                artifacts,
                datasets_dir,
                work,
                signer,
                trust,
                live: Mutex::new(BTreeMap::new()),
                turn: tokio::sync::Semaphore::new(1),
            }),
        }
    }

    /// Queues a run; returns its view at once. Must be called inside the tokio runtime.
    pub fn submit(&self, req: &RunRequest, actor: &str) -> Result<RunView, SubmitError> {
        let Some(signer) = self.inner.signer.clone() else { return Err(SubmitError::NoKey) };
        if self.inner.turn.is_closed() {
            return Err(SubmitError::Stopping);
        }
        let spec = PipelineSpec::parse(&req.spec, "spec").map_err(|e| SubmitError::Invalid(e.to_string()))?;
        let Some(dataset) = &spec.data.dataset else {
            return Err(SubmitError::Invalid(
                "data: the hub trains on its own dataset snapshots; name one with `dataset = \"HASH\"`".into(),
            ));
        };
        impeller_pipeline::dataset::read_manifest(&self.inner.datasets_dir, dataset)
            .map_err(|_| SubmitError::Invalid(format!("data.dataset: this hub has no dataset {dataset}")))?;
        for t in &spec.targets {
            let key = t.to_string_lossy();
            let text = req.profiles.get(key.as_ref()).ok_or_else(|| {
                SubmitError::Invalid(format!("targets: the request has no profile `{key}` (send it in `profiles`)"))
            })?;
            impeller_pipeline::profile::TargetProfile::parse(text, &key)
                .map_err(|e| SubmitError::Invalid(e.to_string()))?;
        }
        let submitted_ms = now_ms();
        let id =
            format!("{submitted_ms}-{}", crate::fleet::random_hex(4).map_err(|e| SubmitError::Invalid(e.to_string()))?);
        // The spec and its profiles, written where the run reads them; a profile path may not
        // leave that folder.
        let base = self.inner.work.join("specs").join(&id);
        write_inputs(&base, req)?;
        let view = RunView {
            id: id.clone(),
            model: spec.model.clone(),
            state: "queued".into(),
            step: None,
            steps: Vec::new(),
            submitted_by: actor.to_string(),
            submitted_ms,
            record: None,
        };
        self.set(&view);
        let runs = self.clone();
        let actor = actor.to_string();
        tokio::spawn(async move { runs.execute(id, spec, base, signer, actor).await });
        Ok(view)
    }

    pub fn get(&self, id: &str) -> Option<RunView> {
        self.inner.live.lock().ok()?.get(id).cloned()
    }

    /// Takes no more runs (those queued do not start) and waits up to `limit` for the one
    /// running: a run records its version through this runtime from a blocking thread, and one
    /// cut off by the runtime's end panics there and records nothing. Whether none is left.
    pub async fn stop(&self, limit: std::time::Duration) -> bool {
        self.inner.turn.close();
        let until = tokio::time::Instant::now() + limit;
        while self.running() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        true
    }

    /// Whether a run is going (on its blocking thread).
    pub fn running(&self) -> bool {
        self.inner.live.lock().is_ok_and(|l| l.values().any(|v| v.state == "running"))
    }

    /// Runs submitted since the hub started, newest first.
    pub fn list(&self) -> Vec<RunView> {
        let mut all: Vec<RunView> = self.inner.live.lock().map(|l| l.values().cloned().collect()).unwrap_or_default();
        all.sort_by(|a, b| b.id.cmp(&a.id));
        all
    }

    fn set(&self, view: &RunView) {
        if let Ok(mut live) = self.inner.live.lock() {
            live.insert(view.id.clone(), view.clone());
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut RunView)) {
        if let Ok(mut live) = self.inner.live.lock()
            && let Some(v) = live.get_mut(id)
        {
            f(v);
        }
    }

    async fn execute(self, id: String, spec: PipelineSpec, base: PathBuf, signer: Signer25519, actor: String) {
        let Ok(_turn) = self.inner.turn.acquire().await else {
            tracing::warn!(run = %id, "the hub is stopping: the queued run does not start");
            self.update(&id, |v| v.state = "finished".into());
            return;
        };
        self.update(&id, |v| v.state = "running".into());
        let store = self.inner.store.clone();
        let started = AuditEvent::new(now_ms(), &actor, "pipeline.run.started", &spec.model)
            .details(serde_json::json!({ "run": id, "dataset": spec.data.dataset }));
        if let Err(error) = store.audit(started).await {
            tracing::error!(%error, run = %id, "cannot record the run's start");
        }
        let runs = self.clone();
        let (run_id, model) = (id.clone(), spec.model.clone());
        let handle = tokio::runtime::Handle::current();
        let result = tokio::task::spawn_blocking(move || {
            let mut options = RunOptions::new(runs.inner.work.clone(), base, signer, now_ms());
            options.datasets_dir = runs.inner.datasets_dir.clone();
            let mut registry = HubRegistry { runs: runs.clone(), handle, actor: format!("pipeline:{run_id}") };
            let progress_runs = runs.clone();
            let mut progress = |p: Progress<'_>| match p {
                Progress::Started { step } => progress_runs.update(&run_id, |v| v.step = Some(step.to_string())),
                Progress::Finished(s) => progress_runs.update(&run_id, |v| {
                    v.step = None;
                    v.steps.push(s.clone());
                }),
            };
            run(&spec, &options, Some(&mut registry), &mut progress)
        })
        .await;
        let record = match result {
            Ok(Ok(r)) => Some(r),
            Ok(Err(error)) => {
                tracing::error!(%error, run = %id, "pipeline run failed to record itself");
                None
            }
            Err(error) => {
                tracing::error!(%error, run = %id, "pipeline run panicked");
                None
            }
        };
        let mut finished = AuditEvent::new(now_ms(), &actor, "pipeline.run.finished", &model);
        if let Some(r) = &record {
            for h in [&r.dataset_sha256, &r.model_sha256].into_iter().flatten() {
                finished = finished.artifact(h);
            }
            finished = finished.details(serde_json::json!({
                "run": id, "outcome": r.outcome, "version": r.version, "run_key": r.run_key, "error": r.error,
            }));
        }
        if let Err(error) = store.audit(finished).await {
            tracing::error!(%error, run = %id, "cannot record the run's end");
        }
        self.update(&id, |v| {
            v.state = "finished".into();
            v.step = None;
            v.record = record;
        });
    }
}

/// Writes the spec and its profiles under `base`; refuses a profile path that leaves it.
fn write_inputs(base: &Path, req: &RunRequest) -> Result<(), SubmitError> {
    for name in req.profiles.keys() {
        let rel = Path::new(name);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(SubmitError::Invalid(format!(
                "profiles: `{name}` must be a relative path inside the spec's folder"
            )));
        }
    }
    let io = |path: &Path, e: std::io::Error| SubmitError::Io(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(base).map_err(|e| io(base, e))?;
    std::fs::write(base.join("pipeline.toml"), &req.spec).map_err(|e| io(base, e))?;
    for (name, text) in &req.profiles {
        let path = base.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    }
    Ok(())
}

/// The hub's own registry, for a run on a blocking thread.
struct HubRegistry {
    runs: Runs,
    handle: tokio::runtime::Handle,
    actor: String,
}

fn registry(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Registry(e.to_string())
}

impl Registry for HubRegistry {
    fn champion(&mut self, model: &str) -> Result<Option<Champion>, PipelineError> {
        let inner = &self.runs.inner;
        let Some(v) = self.handle.block_on(inner.store.alias(model, "champion")).map_err(registry)? else {
            return Ok(None);
        };
        let p = v.packages.first().ok_or_else(|| registry(format!("champion {model}@{} has no package", v.version)))?;
        let bytes = self
            .handle
            .block_on(inner.artifacts.get(&p.sha256))
            .map_err(registry)?
            .ok_or_else(|| registry(format!("champion {model}@{}: package {} missing", v.version, p.sha256)))?;
        let pkg = open(&bytes, &inner.trust, Limits::default()).map_err(registry)?;
        Ok(Some(Champion { version: v.version, model: (*pkg.model).clone() }))
    }

    fn find_run(&mut self, model: &str, run_key: &str) -> Result<Option<RegisteredVersion>, PipelineError> {
        let v = self.handle.block_on(self.runs.inner.store.find_run(model, run_key)).map_err(registry)?;
        Ok(v.map(|v| RegisteredVersion { version: v.version, release: v.release, status: v.status }))
    }

    fn create_version(&mut self, model: &str, new: &NewVersion) -> Result<RegisteredVersion, PipelineError> {
        let body = NewModelVersion {
            run_key: new.run_key.clone(),
            model_sha256: new.model_sha256.clone(),
            dataset_sha256: new.dataset_sha256.clone(),
            code_version: new.code_version.clone(),
            parent_version: new.parent_version,
            metrics: new.metrics.clone(),
            spec: new.spec.clone(),
            tags: Default::default(),
        };
        let v =
            self.handle.block_on(self.runs.inner.store.create_version(model, &body, &self.actor)).map_err(registry)?;
        Ok(RegisteredVersion { version: v.version, release: v.release, status: v.status })
    }

    fn upload_package(&mut self, bytes: &[u8]) -> Result<String, PipelineError> {
        let inner = &self.runs.inner;
        let info = self
            .handle
            .block_on(crate::packages::accept(
                &inner.store,
                &inner.artifacts,
                &inner.trust,
                Limits::default(),
                bytes.to_vec(),
                &self.actor,
            ))
            .map_err(registry)?;
        Ok(info.sha256)
    }

    fn finish_version(&mut self, model: &str, version: u64, o: &VersionOutcome) -> Result<(), PipelineError> {
        let f = VersionFinish {
            status: o.status.clone(),
            gates: serde_json::to_value(&o.gates).map_err(registry)?,
            packages: o
                .packages
                .iter()
                .map(|p| VersionPackage { target: p.target.clone(), sha256: p.sha256.clone() })
                .collect(),
            reason: o.reason.clone(),
        };
        self.handle
            .block_on(self.runs.inner.store.finish_version(model, version, &f, &self.actor))
            .map_err(registry)?;
        Ok(())
    }
}
