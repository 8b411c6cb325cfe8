//! The retraining loop: every check, each model with a policy is looked at as the policy says
//! (`impeller_core::retrain`: drift across its devices, precision from feedback, a schedule);
//! when it triggers, the hub snapshots the recent data of the policy's devices (confirmed
//! faults left out), runs the policy's pipeline on it (gated against the champion), and, as the
//! policy allows or after a person approves, makes the new version champion and rolls it out in
//! waves. Every step is in the audit trail with the evidence that triggered it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use impeller_core::audit::AuditEvent;
use impeller_core::drift::DriftState;
use impeller_core::retrain::{Decision, Facts, Gate, PolicyState, RetrainPolicy, decide};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::datasets::{SnapshotRequest, snapshot};
use crate::runs::{RunRequest, Runs};
use crate::store::{
    AuditStore, DeploymentInfo, DeploymentStore, FeedbackStore, JobStore, ModelVersion, MonitorStore, PolicyRecord,
    RegistryStore, Store, StoreError, now_ms,
};

/// What the loop keeps with each policy between checks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    pub policy: PolicyState,
    pub stage: Stage,
    /// The version a retraining registered, while it awaits approval.
    pub version: Option<u64>,
    pub run: Option<String>,
    /// Why the current or last retraining started, and how it ended.
    pub reason: Option<String>,
    pub note: Option<String>,
    /// The champion's devices as a class at the last check, for a policy with `class_drift`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_drift: Option<impeller_core::drift::ClassDrift>,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    #[default]
    Idle,
    Running,
    AwaitingPromotion,
    AwaitingRollout,
}

#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
}

#[derive(Debug)]
pub struct Retrainer {
    store: Store,
    runs: Runs,
    artifacts: crate::artifacts::Artifacts,
    datasets_dir: PathBuf,
    reconcile: Arc<Notify>,
    latest_sketches: Arc<crate::drift::LatestSketches>,
    /// Models whose retraining task is running in this process.
    busy: Mutex<HashSet<String>>,
    /// Held while a policy's state is read, changed and saved, so that the loop and a
    /// retraining task never write over each other's change.
    state_lock: tokio::sync::Mutex<()>,
}

/// The deployments of one of `version`'s packages.
fn deployments_of<'a>(
    version: &'a ModelVersion,
    deployments: &'a [DeploymentInfo],
) -> impl Iterator<Item = &'a DeploymentInfo> + 'a {
    deployments.iter().filter(|d| version.packages.iter().any(|p| p.sha256 == d.package_sha256))
}

fn state_of(r: &PolicyRecord) -> LoopState {
    serde_json::from_value(r.state.clone()).unwrap_or_default()
}

impl Retrainer {
    pub fn new(
        store: Store,
        runs: Runs,
        artifacts: crate::artifacts::Artifacts,
        datasets_dir: PathBuf,
        reconcile: Arc<Notify>,
        latest_sketches: Arc<crate::drift::LatestSketches>,
    ) -> Retrainer {
        Retrainer {
            store,
            runs,
            artifacts,
            datasets_dir,
            reconcile,
            latest_sketches,
            busy: Mutex::new(HashSet::new()),
            state_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn is_busy(&self, model: &str) -> bool {
        self.busy.lock().map(|b| b.contains(model)).unwrap_or(true)
    }

    /// Reads a policy's state, changes it and saves it, under the state lock.
    async fn update(&self, model: &str, change: impl FnOnce(&mut LoopState)) -> Result<(), StoreError> {
        let _held = self.state_lock.lock().await;
        let mut state = self.store.policy(model).await?.map(|r| state_of(&r)).unwrap_or_default();
        change(&mut state);
        state.updated_ms = now_ms();
        self.store.save_policy_state(model, &serde_json::to_value(&state).unwrap_or_default()).await
    }

    async fn audit(&self, action: &str, model: &str, details: serde_json::Value, artifacts: &[&str]) {
        let mut e = AuditEvent::new(now_ms(), "hub", action, model).details(details);
        for a in artifacts {
            e = e.artifact(a);
        }
        if let Err(error) = self.store.audit(e).await {
            tracing::error!(%error, model, action, "cannot record a retraining step");
        }
    }

    /// One check of every policy.
    pub async fn check_all(self: &Arc<Self>) -> Result<(), StoreError> {
        let monitors = self.store.drift_monitors().await?;
        let running = self.store.running_models().await?;
        let policies: Vec<(RetrainPolicy, PolicyRecord)> = self
            .store
            .policies()
            .await?
            .into_iter()
            .filter_map(|rec| Some((RetrainPolicy::parse(&rec.policy, "policy").ok()?, rec)))
            .collect();
        // Every device's alert-rate judgement, read only when a policy triggers on it.
        let rates = if policies.iter().any(|(p, _)| p.triggers.alert_rate_share.is_some()) {
            self.store.alert_rates().await?
        } else {
            Vec::new()
        };
        let deployments = if policies.is_empty() { Vec::new() } else { self.store.deployments().await? };
        for (policy, rec) in policies {
            // Devices with a labelled incident in the window are set aside: their drift has a
            // known cause (a confirmed fault), which a retraining must not learn as normal.
            let now = now_ms();
            let labelled: HashSet<String> = self
                .store
                .incidents(None, now - policy.data_window_ms(), now)
                .await?
                .into_iter()
                .map(|i| i.device)
                .collect();
            // Only devices running the champion are evidence against it: those still on an
            // older version (a rollout under way) are about a model already replaced. With no
            // champion yet, every device running the model counts.
            let champion_version = self.follow_refused_champion(&rec.model, &deployments).await?;
            let champion = champion_version.as_ref().map(|v| v.version);
            // The champion's rollout still under way is part of its retraining: the drift of its
            // first devices is not yet the evidence of a whole class (seen: a 3-pump class
            // retrained again 3 s into the rollout of the version before).
            let rolling_out =
                champion_version.as_ref().is_some_and(|v| deployments_of(v, &deployments).any(|d| d.rolling_out()));
            let (devices, set_aside): (Vec<&str>, Vec<&str>) = running
                .iter()
                .filter(|r| {
                    r.model.as_deref() == Some(rec.model.as_str()) && (champion.is_none() || r.version == champion)
                })
                .map(|r| r.device.as_str())
                .partition(|d| !labelled.contains(*d));
            let drifting = devices
                .iter()
                .filter(|d| {
                    monitors.get(&(d.to_string(), rec.model.clone())).is_some_and(|(_, m)| m.state == DriftState::Drift)
                })
                .count();
            let class = match (policy.triggers.class_drift, champion) {
                (Some(_), Some(v)) => self.latest_sketches.class_drift(&rec.model, &v.to_string(), &devices),
                _ => None,
            };
            // Judged against the version the device runs: only the champion's count.
            let elevated = if policy.triggers.alert_rate_share.is_some() {
                let counted: HashSet<&str> = devices.iter().copied().collect();
                rates
                    .iter()
                    .filter(|r| {
                        r.state == "elevated"
                            && r.model == rec.model
                            && champion.is_none_or(|v| v == r.model_version)
                            && counted.contains(r.device.as_str())
                    })
                    .count()
            } else {
                0
            };
            let verdicts = self.store.precision(Some(&rec.model)).await?;
            let current = verdicts.iter().find(|p| Some(&p.model_version) == champion.map(|v| v.to_string()).as_ref());
            let busy = self.is_busy(&rec.model);
            let mut decision = Decision::Wait;
            self.update(&rec.model, |state| {
                // A retraining cut off by a restart is not running any more.
                if state.stage == Stage::Running && !busy {
                    state.stage = Stage::Idle;
                    state.note = Some("the retraining under way was cut off by a restart".into());
                }
                let facts = Facts {
                    now_ms: now,
                    devices: devices.len() as u64,
                    drifting: drifting as u64,
                    set_aside: set_aside.len() as u64,
                    class: class.clone(),
                    elevated: elevated as u64,
                    confirmed: current.map_or(0, |p| p.confirmed),
                    false_alarms: current.map_or(0, |p| p.false_alarms),
                    busy: state.stage != Stage::Idle || rolling_out,
                    champion,
                };
                decision = decide(&policy, &mut state.policy, &facts);
                state.class_drift = facts.class;
                match &decision {
                    Decision::Wait => {}
                    Decision::OverBudget { reason } | Decision::DriftHeld { reason } => {
                        state.note = Some(reason.clone())
                    }
                    Decision::Retrain { reason, .. } => {
                        state.stage = Stage::Running;
                        state.reason = Some(reason.clone());
                        state.run = None;
                        state.note = None;
                    }
                }
            })
            .await?;
            match decision {
                Decision::Wait => {}
                Decision::OverBudget { reason } => {
                    self.audit("retrain.over_budget", &rec.model, serde_json::json!({ "reason": reason }), &[]).await;
                }
                Decision::DriftHeld { reason } => {
                    tracing::info!(model = %rec.model, %reason, "drift held");
                    self.audit("retrain.drift_held", &rec.model, serde_json::json!({ "reason": reason }), &[]).await;
                }
                Decision::Retrain { reason, evidence } => {
                    self.audit(
                        "retrain.triggered",
                        &rec.model,
                        serde_json::json!({ "reason": reason, "evidence": evidence }),
                        &[],
                    )
                    .await;
                    tracing::info!(model = %rec.model, %reason, "retraining");
                    if let Ok(mut b) = self.busy.lock() {
                        b.insert(rec.model.clone());
                    }
                    let (me, rec, policy) = (Arc::clone(self), rec.clone(), policy.clone());
                    tokio::spawn(async move { me.retrain(rec, policy).await });
                }
            }
        }
        Ok(())
    }

    /// A champion whose every rollout aborted runs nowhere: its devices went back to the version
    /// before it. The alias goes back with them, since only the champion's devices count as
    /// evidence (drift, alert rates, verdicts) and the next retraining builds on the champion's
    /// data; left on the refused version, the model could never retrain again. The champion that
    /// holds after it.
    async fn follow_refused_champion(
        &self,
        model: &str,
        deployments: &[DeploymentInfo],
    ) -> Result<Option<ModelVersion>, StoreError> {
        let Some(champion) = self.store.alias(model, "champion").await? else { return Ok(None) };
        let Some(parent_version) = champion.parent_version else { return Ok(Some(champion)) };
        let ours: Vec<&DeploymentInfo> = deployments_of(&champion, deployments).collect();
        if ours.is_empty() || ours.iter().any(|d| d.aborted_ms.is_none()) {
            return Ok(Some(champion));
        }
        let Some(parent) = self.store.version(model, parent_version).await?.filter(|v| v.status == "ready") else {
            return Ok(Some(champion));
        };
        let reasons: Vec<String> = ours
            .iter()
            .map(|d| format!("{}: {}", d.name, d.abort_reason.as_deref().unwrap_or("aborted by hand")))
            .collect();
        let note = format!(
            "version {} was refused by its fleet ({}); version {parent_version} is champion again",
            champion.version,
            reasons.join("; ")
        );
        tracing::warn!(model, %note, "retraining: champion reverted");
        self.store.set_alias(model, "champion", parent_version, &format!("retrain:{model}")).await?;
        self.audit(
            "retrain.reverted",
            model,
            serde_json::json!({ "from": champion.version, "to": parent_version, "aborted": reasons }),
            &[&champion.model_sha256],
        )
        .await;
        self.update(model, |state| state.note = Some(note)).await?;
        Ok(Some(parent))
    }

    /// Snapshot, pipeline run, then promotion and rollout as the policy allows.
    async fn retrain(self: Arc<Self>, rec: PolicyRecord, policy: RetrainPolicy) {
        let model = rec.model.clone();
        let note = match self.snapshot_and_run(&rec, &policy).await {
            Ok(Some(version)) => {
                self.after_run(&model, version, &policy, "hub").await.unwrap_or_else(|e| e.to_string())
            }
            Ok(None) => "the run registered no ready version".into(),
            Err(e) => format!("the retraining failed: {e}"),
        };
        if let Ok(mut b) = self.busy.lock() {
            b.remove(&model);
        }
        // The stage may have moved on (an approval is awaited); a retraining still marked
        // running is over.
        let saved = self
            .update(&model, |state| {
                if state.stage == Stage::Running {
                    state.stage = Stage::Idle;
                }
                state.note = Some(note.clone());
            })
            .await;
        if let Err(error) = saved {
            tracing::error!(%error, %model, "cannot save the retraining's state");
        }
        self.audit("retrain.finished", &model, serde_json::json!({ "note": note }), &[]).await;
    }

    /// The snapshot and the pipeline run; the version registered ready, if any.
    async fn snapshot_and_run(&self, rec: &PolicyRecord, policy: &RetrainPolicy) -> Result<Option<u64>, RetrainError> {
        let now = now_ms();
        let base_dataset = if policy.data.include_champion_data {
            self.store.alias(&rec.model, "champion").await?.map(|v| v.dataset_sha256)
        } else {
            None
        };
        let req = SnapshotRequest {
            condition: policy.data.condition.clone(),
            channels: Vec::new(),
            since_ms: now - policy.data_window_ms(),
            until_ms: Some(now),
            label_incidents: false,
            exclude_incidents: policy.data.exclude_incidents,
            exclude_after_confirmed_fault: policy.data.exclude_after_confirmed_fault,
            base_dataset,
        };
        let actor = format!("retrain:{}", rec.model);
        let manifest = snapshot(&self.store, &self.artifacts, &self.datasets_dir, &req, &actor)
            .await
            .map_err(|e| RetrainError::Invalid(format!("snapshot: {e}")))?;
        let spec = with_dataset(&rec.spec, &manifest.sha256)?;
        let view = self
            .runs
            .submit(&RunRequest { spec, profiles: rec.profiles.clone() }, &actor)
            .map_err(|e| RetrainError::Invalid(format!("pipeline: {e}")))?;
        self.update(&rec.model, |state| state.run = Some(view.id.clone())).await?;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Some(v) = self.runs.get(&view.id) else { return Err(RetrainError::Invalid("the run vanished".into())) };
            if v.state != "finished" {
                continue;
            }
            let record = v.record.ok_or_else(|| RetrainError::Invalid("the run left no record".into()))?;
            let ready = record.outcome == impeller_pipeline::run::Outcome::Registered;
            return Ok(if ready { record.version } else { None });
        }
    }

    /// After a ready version: promote and roll out as far as the policy allows without a person.
    async fn after_run(
        &self,
        model: &str,
        version: u64,
        policy: &RetrainPolicy,
        actor: &str,
    ) -> Result<String, RetrainError> {
        if policy.approval.promote == Gate::Manual {
            self.set_stage(model, Stage::AwaitingPromotion, Some(version)).await?;
            return Ok(format!("version {version} is ready and awaits approval to become champion"));
        }
        self.promote(model, version, policy, actor).await
    }

    async fn promote(
        &self,
        model: &str,
        version: u64,
        policy: &RetrainPolicy,
        actor: &str,
    ) -> Result<String, RetrainError> {
        self.store.set_alias(model, "champion", version, actor).await?;
        if policy.approval.rollout == Gate::Manual {
            self.set_stage(model, Stage::AwaitingRollout, Some(version)).await?;
            return Ok(format!("version {version} is champion and awaits approval to roll out"));
        }
        self.roll_out(model, version, policy, actor).await
    }

    /// One staged rollout per package of the version, over the policy's devices of its target.
    async fn roll_out(
        &self,
        model: &str,
        version: u64,
        policy: &RetrainPolicy,
        actor: &str,
    ) -> Result<String, RetrainError> {
        let v = self
            .store
            .version(model, version)
            .await?
            .ok_or_else(|| RetrainError::Invalid(format!("{model}@{version} is not registered")))?;
        let mut names = Vec::new();
        for p in &v.packages {
            let name = format!("{model}-v{version}-{}", p.target);
            let condition = format!("({}) AND profile = '{}'", policy.data.condition, p.target.replace('\'', "''"));
            let now = now_ms();
            let d = DeploymentInfo {
                name: name.clone(),
                package_sha256: p.sha256.clone(),
                target_condition: condition,
                priority: policy.priority.saturating_add(version.min(i64::MAX as u64) as i64),
                created_ms: now,
                stopped_ms: None,
                rollout: Some(policy.rollout.clone()),
                wave: 0,
                wave_started_ms: now,
                completed_ms: None,
                aborted_ms: None,
                abort_reason: None,
            };
            self.store.add_deployment(&d, actor).await?;
            names.push(name);
        }
        self.reconcile.notify_one();
        self.set_stage(model, Stage::Idle, None).await?;
        Ok(format!("version {version} is champion and rolling out ({})", names.join(", ")))
    }

    async fn set_stage(&self, model: &str, stage: Stage, version: Option<u64>) -> Result<(), StoreError> {
        self.update(model, |state| {
            state.stage = stage;
            state.version = version;
        })
        .await
    }

    /// A person's approval of the step awaited: promotion (then rollout if the policy lets it
    /// go on by itself), or rollout.
    pub async fn approve(&self, model: &str, actor: &str) -> Result<String, RetrainError> {
        let rec = self
            .store
            .policy(model)
            .await?
            .ok_or_else(|| StoreError::NotFound { kind: "retraining policy", id: model.to_string() })?;
        let policy = RetrainPolicy::parse(&rec.policy, "policy").map_err(RetrainError::Invalid)?;
        let state = state_of(&rec);
        let version =
            state.version.ok_or_else(|| RetrainError::Conflict(format!("nothing of {model} awaits approval")))?;
        let note = match state.stage {
            Stage::AwaitingPromotion => self.promote(model, version, &policy, actor).await?,
            Stage::AwaitingRollout => self.roll_out(model, version, &policy, actor).await?,
            _ => return Err(RetrainError::Conflict(format!("nothing of {model} awaits approval"))),
        };
        self.audit(
            "retrain.approved",
            model,
            serde_json::json!({ "version": version, "by": actor, "note": note }),
            &[],
        )
        .await;
        self.update(model, |state| state.note = Some(note.clone())).await?;
        Ok(note)
    }
}

/// The spec with its data replaced by the dataset `sha256`.
pub fn with_dataset(spec: &str, sha256: &str) -> Result<String, RetrainError> {
    let mut doc: toml::Table = toml::from_str(spec).map_err(|e| RetrainError::Invalid(format!("spec: {e}")))?;
    let data = doc
        .get_mut("data")
        .and_then(toml::Value::as_table_mut)
        .ok_or_else(|| RetrainError::Invalid("spec: no [data]".into()))?;
    data.remove("import");
    data.insert("dataset".into(), toml::Value::String(sha256.to_string()));
    toml::to_string(&doc).map_err(|e| RetrainError::Invalid(format!("spec: {e}")))
}

/// The loop: a check every `every`.
pub async fn run(retrainer: Arc<Retrainer>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(error) = retrainer.check_all().await {
            tracing::error!(%error, "retraining check failed; retrying");
        }
    }
}
