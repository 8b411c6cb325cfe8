//! Publishes each device's desired state and drives staged rollouts. Every pass (when a
//! deployment or device changes, and every few seconds) it moves each staged rollout on
//! (`impeller_core::rollout`: take the next devices, advance a wave, complete, or abort when a
//! gate fails), then resolves which deployment applies to every device
//! (`impeller_core::deploy::resolve`, skipping rollouts that have not reached the device) and,
//! where that changed, publishes the retained `desired` message and records it.
//!
//! What was published is remembered in memory only, so a restarted hub publishes everything
//! once more: the embedded broker keeps retained messages in memory and loses them on restart.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use impeller_core::deploy::{self, Assignment, Condition, DeviceFacts, PackageRef, RollbackRef};
use impeller_core::rollout::{self, AlertRates, Evidence, Step};
use impeller_core::wire;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use crate::bus::Send;
use crate::fleet::Device;
use crate::store::TelemetryQueries;
use crate::store::{
    AlertActivity, ArtifactStore, DeploymentInfo, DeploymentStore, DesiredInfo, FeedbackStore, FleetStore, PackageInfo,
    Store, StoreError, UpdateInfo, now_ms,
};

const PERIOD: Duration = Duration::from_secs(5);
/// How far back (device clock) the alert gate looks for the previous model's alert rate.
const ALERT_BASELINE_MS: i64 = 7 * 86_400_000;

/// Runs until `outgoing` closes.
pub async fn run(store: Store, outgoing: mpsc::Sender<Send>, wake: Arc<Notify>) {
    let mut published: HashMap<String, Vec<u8>> = HashMap::new();
    loop {
        let mut pause = PERIOD;
        match reconcile(&store, &outgoing, &mut published).await {
            Ok(next_soak_end_ms) => {
                // A wave whose soak ends before the next period moves on then, not up to a
                // period later: once its devices have all reported, nothing else wakes the loop.
                if let Some(ends_ms) = next_soak_end_ms {
                    let wait_ms = u64::try_from(ends_ms.saturating_sub(now_ms())).unwrap_or(0);
                    pause = pause.min(Duration::from_millis(wait_ms));
                }
            }
            Err(ReconcileError::Closed) => return,
            Err(ReconcileError::Store(error)) => tracing::error!(%error, "cannot resolve deployments; retrying"),
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the broker connection closed")]
    Closed,
}

/// Everything resolution needs, read once per pass.
#[derive(Debug)]
pub struct Plan {
    pub deployments: Vec<DeploymentInfo>,
    /// The deployments that apply (neither stopped nor aborted), parsed.
    applying: Vec<deploy::Deployment>,
    /// (deployment, device) pairs a staged rollout has taken, with the wave (0-based).
    pub members: HashMap<(String, String), usize>,
    /// Latest report per (device, deployment).
    updates: HashMap<(String, String), UpdateInfo>,
}

impl Plan {
    pub async fn load(store: &Store) -> Result<Plan, StoreError> {
        let deployments = store.deployments().await?;
        let mut applying = Vec::new();
        for d in deployments.iter().filter(|d| d.applies()) {
            match Condition::parse(&d.target_condition) {
                Ok(condition) => applying.push(deploy::Deployment {
                    name: d.name.clone(),
                    condition,
                    priority: d.priority,
                    created_ms: d.created_ms,
                    package_sha256: d.package_sha256.clone(),
                }),
                // Checked when created; a row edited by hand is skipped, not fatal.
                Err(error) => tracing::error!(deployment = %d.name, %error, "skipping a deployment"),
            }
        }
        let members = store.members().await?.into_iter().map(|m| ((m.deployment, m.device), m.wave)).collect();
        let updates =
            store.updates().await?.into_iter().map(|u| ((u.device.clone(), u.deployment.clone()), u)).collect();
        Ok(Plan { deployments, applying, members, updates })
    }

    pub fn info(&self, name: &str) -> Option<&DeploymentInfo> {
        self.deployments.iter().find(|d| d.name == name)
    }

    fn is_member(&self, deployment: &str, device: &str) -> bool {
        self.members.contains_key(&(deployment.to_string(), device.to_string()))
    }

    /// The report `device` sent on `d`, if it is about `d`'s package.
    pub fn report(&self, d: &DeploymentInfo, device: &str) -> Option<&UpdateInfo> {
        self.updates.get(&(device.to_string(), d.name.clone())).filter(|u| u.package_sha256 == d.package_sha256)
    }

    /// The deployment that would apply to `device` if every rollout had reached it.
    fn resolve_all(&self, device: &Device) -> Option<Assignment> {
        deploy::resolve(&facts(device), &self.applying)
    }

    /// What `device` should run: the deployment that applies (a staged rollout only once it has
    /// taken the device), and the aborted rollout it should leave, if any. None for a revoked one.
    pub fn assign(&self, device: &Device) -> (Option<Assignment>, Option<RollbackRef>) {
        if device.revoked_ms.is_some() {
            return (None, None);
        }
        let reached = self
            .applying
            .iter()
            .filter(|d| self.info(&d.name).is_none_or(|i| !i.rolling_out() || self.is_member(&d.name, &device.id)));
        let mut assignment = deploy::resolve(&facts(device), reached);
        if let Some(all) = self.resolve_all(device)
            && assignment.as_ref().is_none_or(|a| a.deployment != all.deployment)
            && let Some(waiting) = self.info(&all.deployment)
        {
            let note = format!(
                "`{}` is rolling out and has not reached this device yet (wave {} of {})",
                waiting.name,
                waiting.wave + 1,
                waiting.rollout.as_ref().map_or(1, |r| r.waves.len())
            );
            if let Some(a) = assignment.as_mut() {
                a.reason = format!("{note}; {}", a.reason);
            }
        }
        let chosen = assignment.as_ref().map(|a| a.package_sha256.as_str());
        let rollback = self
            .deployments
            .iter()
            .filter(|d| d.aborted_ms.is_some() && self.is_member(&d.name, &device.id))
            .filter(|d| Some(d.package_sha256.as_str()) != chosen)
            .filter(|d| self.report(d, &device.id).is_none_or(|u| u.state != "failed" && u.state != "rolled_back"))
            .max_by_key(|d| d.aborted_ms)
            .map(|d| RollbackRef {
                deployment: d.name.clone(),
                sha256: d.package_sha256.clone(),
                reason: format!("the hub aborted `{}`: {}", d.name, d.abort_reason.as_deref().unwrap_or("by hand")),
            });
        (assignment, rollback)
    }
}

fn facts(device: &Device) -> DeviceFacts<'_> {
    DeviceFacts { id: &device.id, profile: &device.profile, tags: &device.tags }
}

/// The `desired` message for an assignment to package `p`.
pub fn desired_message(a: &Assignment, p: &PackageInfo, rollback: Option<RollbackRef>) -> deploy::Desired {
    deploy::Desired {
        v: wire::SCHEMA_VERSION,
        deployment: a.deployment.clone(),
        package: PackageRef {
            sha256: p.sha256.clone(),
            size: p.size,
            model: p.model.clone(),
            version: p.version.clone(),
            release: p.release,
        },
        rollback,
    }
}

/// Where a staged rollout stands, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    /// `rolling_out`, `complete`, `aborted` or `stopped`.
    pub phase: &'static str,
    /// The wave reached, 1-based.
    pub wave: usize,
    pub waves: Vec<WaveStatus>,
    /// What the rollout waits for, or why it was aborted.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaveStatus {
    pub wave: usize,
    pub percent: f64,
    pub devices: Vec<String>,
}

/// The devices of `devices` that `d` applies to when its rollout has reached everyone, best
/// ranked first: the order in which the rollout takes them.
fn targets<'a>(plan: &Plan, d: &DeploymentInfo, devices: &'a [Device]) -> Vec<&'a Device> {
    let mut out: Vec<&Device> = devices
        .iter()
        .filter(|dev| dev.revoked_ms.is_none())
        .filter(|dev| plan.resolve_all(dev).is_some_and(|a| a.deployment == d.name))
        .collect();
    out.sort_by_key(|dev| (rollout::rank(&d.name, &dev.id), dev.id.clone()));
    out
}

/// How long before a deployment a device's incident still makes it "under a known fault".
const INCIDENT_LOOKBACK_MS: i64 = 24 * 3_600_000;

/// What the devices `d` has taken report; alert rates only once `with_alerts`.
async fn evidence(
    store: &Store,
    plan: &Plan,
    d: &DeploymentInfo,
    devices: &[Device],
    with_alerts: bool,
) -> Result<Evidence, StoreError> {
    let live: HashSet<&str> = devices.iter().filter(|x| x.revoked_ms.is_none()).map(|x| x.id.as_str()).collect();
    let mut e = Evidence::default();
    let (mut before, mut after) = (AlertActivity::default(), AlertActivity::default());
    for (_, device) in plan.members.keys().filter(|(dep, dev)| *dep == d.name && live.contains(dev.as_str())) {
        e.members += 1;
        let Some(u) = plan.report(d, device) else { continue };
        match u.state.as_str() {
            state @ ("failed" | "rolled_back") => {
                // Refusing or rolling back a model that alarmed more is no evidence against it on
                // a pump with a confirmed fault: a better model alarms more there (seen: a pump
                // two hours into cavitation, confirmed, refused a retrained version at 37.6 %
                // against 13.9 % and aborted its rollout). A broken model is evidence anywhere.
                let excusable = u.reason.as_deref().is_some_and(deploy::refused_on_alarm_rate);
                let since = d.created_ms - INCIDENT_LOOKBACK_MS;
                if excusable && !store.incidents(Some(device), since, i64::MAX).await?.is_empty() {
                    e.refused_in_fault += 1;
                } else if state == "failed" {
                    e.failed += 1;
                } else {
                    e.rolled_back += 1;
                }
            }
            "active" => {
                e.active += 1;
                if let (true, Some(active_seq)) = (with_alerts, u.active_seq) {
                    after.add(store.alert_activity(device, active_seq, u64::MAX, i64::MIN).await?);
                    before.add(store.alert_activity(device, 0, u.first_seq, u.first_ts_ms - ALERT_BASELINE_MS).await?);
                }
            }
            _ => {}
        }
    }
    if after.scored_ms > 0 {
        e.alerts = Some(AlertRates { before_per_day: before.per_day(), after_per_day: after.per_day() });
    }
    Ok(e)
}

/// The next step of `d`'s rollout as things stand (nothing is changed).
async fn next_step(
    store: &Store,
    plan: &Plan,
    d: &DeploymentInfo,
    devices: &[Device],
) -> Result<Option<Step>, StoreError> {
    let Some(policy) = d.rollout.as_ref().filter(|_| d.rolling_out()) else { return Ok(None) };
    let now = now_ms();
    let soaked = now - d.wave_started_ms >= policy.soak_s as i64 * 1000;
    let e = evidence(store, plan, d, devices, soaked && policy.max_alert_rate_increase.is_some()).await?;
    Ok(Some(rollout::step(policy, d.wave, d.wave_started_ms, now, &e)))
}

/// Where `d`'s rollout stands, from one snapshot (`plan`) so waves and notes agree.
pub async fn rollout_status(
    store: &Store,
    plan: &Plan,
    d: &DeploymentInfo,
) -> Result<Option<RolloutStatus>, StoreError> {
    let Some(policy) = &d.rollout else { return Ok(None) };
    let devices = store.devices().await?;
    let mut waves: Vec<WaveStatus> = policy
        .waves
        .iter()
        .enumerate()
        .map(|(i, &percent)| WaveStatus { wave: i + 1, percent, devices: Vec::new() })
        .collect();
    let mut taken: Vec<(&usize, &String)> =
        plan.members.iter().filter(|((dep, _), _)| *dep == d.name).map(|((_, dev), wave)| (wave, dev)).collect();
    taken.sort();
    for (wave, device) in taken {
        if let Some(w) = waves.get_mut(*wave) {
            w.devices.push(device.clone());
        }
    }
    let (phase, note) = if d.stopped_ms.is_some() {
        ("stopped", None)
    } else if d.aborted_ms.is_some() {
        ("aborted", d.abort_reason.clone())
    } else if d.completed_ms.is_some() {
        ("complete", None)
    } else {
        let note = match next_step(store, plan, d, &devices).await? {
            Some(Step::Wait(why)) => Some(why),
            Some(Step::Abort(why)) => Some(format!("about to abort: {why}")),
            _ => None,
        };
        ("rolling_out", note)
    };
    Ok(Some(RolloutStatus { phase, wave: d.wave + 1, waves, note }))
}

/// Moves every staged rollout on as far as its gates allow.
async fn advance_rollouts(store: &Store, devices: &[Device]) -> Result<(), StoreError> {
    let mut plan = Plan::load(store).await?;
    let rolling: Vec<DeploymentInfo> = plan.deployments.iter().filter(|d| d.rolling_out()).cloned().collect();
    for mut d in rolling {
        let Some(policy) = d.rollout.clone() else { continue };
        let targets = targets(&plan, &d, devices);
        loop {
            let (taken, waiting): (Vec<&Device>, Vec<&Device>) =
                targets.iter().partition(|t| plan.is_member(&d.name, &t.id));
            let want = policy.wave_size(d.wave, targets.len());
            let new: Vec<String> =
                waiting.iter().take(want.saturating_sub(taken.len())).map(|t| t.id.clone()).collect();
            if !new.is_empty() {
                tracing::info!(deployment = %d.name, wave = d.wave + 1, devices = ?new, "rollout takes devices");
                store.add_members(&d.name, &new, d.wave).await?;
                plan = Plan::load(store).await?;
            }
            match next_step(store, &plan, &d, devices).await? {
                None | Some(Step::Wait(_)) => break,
                Some(Step::Advance) => {
                    d.wave += 1;
                    d.wave_started_ms = now_ms();
                    tracing::info!(deployment = %d.name, wave = d.wave + 1, "rollout: next wave");
                    store.start_wave(&d.name, d.wave, "hub").await?;
                }
                Some(Step::Complete) => {
                    tracing::info!(deployment = %d.name, "rollout complete");
                    store.complete_rollout(&d.name, "hub").await?;
                    break;
                }
                Some(Step::Abort(reason)) => {
                    tracing::error!(deployment = %d.name, %reason, "rollout aborted; rolling its devices back");
                    store.abort_deployment(&d.name, &reason, "hub").await?;
                    break;
                }
            }
        }
    }
    Ok(())
}

/// One pass: rollouts moved on, then every device's desired state published where it changed.
/// Returns when the earliest wave still soaking ends (hub clock, ms).
pub async fn reconcile(
    store: &Store,
    outgoing: &mpsc::Sender<Send>,
    published: &mut HashMap<String, Vec<u8>>,
) -> Result<Option<i64>, ReconcileError> {
    let devices = store.devices().await?;
    advance_rollouts(store, &devices).await?;
    let plan = Plan::load(store).await?;
    let packages: HashMap<String, _> = store.packages().await?.into_iter().map(|p| (p.sha256.clone(), p)).collect();
    let recorded: HashMap<String, DesiredInfo> =
        store.desired().await?.into_iter().map(|d| (d.device.clone(), d)).collect();
    for device in &devices {
        let (assignment, rollback) = plan.assign(device);
        let desired = assignment
            .as_ref()
            .and_then(|a| Some(desired_message(a, packages.get(&a.package_sha256)?, rollback.clone())));
        let payload = desired.as_ref().map(|d| serde_json::to_vec(d).unwrap_or_default()).unwrap_or_default();
        let before = recorded.get(&device.id);
        let unchanged_here = published.get(&device.id) == Some(&payload);
        let nothing_to_clear = payload.is_empty() && before.is_none() && !published.contains_key(&device.id);
        if !unchanged_here && !nothing_to_clear {
            let send = Send { topic: wire::topic(&device.id, "desired"), payload: payload.clone(), retain: true };
            outgoing.send(send).await.map_err(|_| ReconcileError::Closed)?;
            published.insert(device.id.clone(), payload);
        }
        match (assignment, desired) {
            (Some(a), Some(_)) => {
                let reason = match &rollback {
                    Some(r) => format!("{}; rolls back from `{}`", a.reason, r.deployment),
                    None => a.reason,
                };
                let same = before.is_some_and(|b| {
                    b.deployment == a.deployment && b.package_sha256 == a.package_sha256 && b.reason == reason
                });
                if !same {
                    tracing::info!(device = %device.id, deployment = %a.deployment, %reason, "desired state");
                    store
                        .set_desired(&DesiredInfo {
                            device: device.id.clone(),
                            deployment: a.deployment,
                            package_sha256: a.package_sha256,
                            reason,
                            published_ms: now_ms(),
                        })
                        .await?;
                }
            }
            _ => {
                if rollback.is_some() {
                    tracing::warn!(device = %device.id, "an aborted rollout cannot roll this device back: no other deployment applies to it");
                }
                if before.is_some() {
                    store.clear_desired(&device.id).await?;
                }
            }
        }
    }
    Ok(next_soak_end_ms(&plan.deployments, now_ms()))
}

/// When the earliest wave of a rollout under way ends its soak, if after `now`.
fn next_soak_end_ms(deployments: &[DeploymentInfo], now: i64) -> Option<i64> {
    deployments
        .iter()
        .filter(|d| d.rolling_out())
        .filter_map(|d| Some(d.wave_started_ms + d.rollout.as_ref()?.soak_s as i64 * 1000))
        .filter(|&ends| ends > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(name: &str, soak_s: u64, wave_started_ms: i64) -> DeploymentInfo {
        DeploymentInfo {
            name: name.into(),
            package_sha256: "00".into(),
            target_condition: "*".into(),
            priority: 1,
            created_ms: 0,
            stopped_ms: None,
            rollout: Some(rollout::Rollout {
                waves: vec![50.0, 100.0],
                soak_s,
                min_active: 1.0,
                max_failed: 0.0,
                max_rolled_back: 0.0,
                max_alert_rate_increase: None,
            }),
            wave: 0,
            wave_started_ms,
            completed_ms: None,
            aborted_ms: None,
            abort_reason: None,
        }
    }

    #[test]
    fn the_loop_wakes_when_the_first_soak_ends() {
        let now = 100_000;
        let a = staged("a", 4, now - 1_000);
        let b = staged("b", 2, now - 1_000);
        assert_eq!(next_soak_end_ms(&[a.clone(), b.clone()], now), Some(now + 1_000));
        // Soaks already over, and rollouts that are done, stopped or not staged, wait on nothing.
        let over = staged("over", 1, now - 5_000);
        let done = DeploymentInfo { completed_ms: Some(now), ..b.clone() };
        let stopped = DeploymentInfo { stopped_ms: Some(now), ..b.clone() };
        let at_once = DeploymentInfo { rollout: None, ..b };
        assert_eq!(next_soak_end_ms(&[over, done, stopped, at_once], now), None);
        assert_eq!(next_soak_end_ms(&[a], now), Some(now + 3_000));
    }
}
