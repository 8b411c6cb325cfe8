//! Publishes each device's desired state: resolves which deployment applies to every device
//! (`impeller_core::deploy::resolve`) and, where that changed, publishes the retained `desired`
//! message and records it. Runs when a deployment or device changes, and every few seconds.
//!
//! What was published is remembered in memory only, so a restarted hub publishes everything
//! once more: the embedded broker keeps retained messages in memory and loses them on restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use impeller_core::deploy::{self, Assignment, Condition, DeviceFacts, PackageRef};
use impeller_core::wire;
use tokio::sync::{Notify, mpsc};

use crate::bus::Send;
use crate::fleet::Device;
use crate::store::{DesiredInfo, PackageInfo, Store, StoreError, now_ms};

const PERIOD: Duration = Duration::from_secs(5);

/// Runs until `outgoing` closes.
pub async fn run(store: Store, outgoing: mpsc::Sender<Send>, wake: Arc<Notify>) {
    let mut published: HashMap<String, Vec<u8>> = HashMap::new();
    loop {
        match reconcile(&store, &outgoing, &mut published).await {
            Ok(_) => {}
            Err(ReconcileError::Closed) => return,
            Err(ReconcileError::Store(error)) => tracing::error!(%error, "cannot resolve deployments; retrying"),
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(PERIOD) => {}
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

/// The deployments that apply (not stopped), parsed.
pub async fn active_deployments(store: &Store) -> Result<Vec<deploy::Deployment>, StoreError> {
    let mut out = Vec::new();
    for d in store.deployments().await?.into_iter().filter(|d| d.stopped_ms.is_none()) {
        match Condition::parse(&d.target_condition) {
            Ok(condition) => out.push(deploy::Deployment {
                name: d.name,
                condition,
                priority: d.priority,
                created_ms: d.created_ms,
                package_sha256: d.package_sha256,
            }),
            // Checked when created; a row edited by hand is skipped, not fatal.
            Err(error) => tracing::error!(deployment = %d.name, %error, "skipping a deployment"),
        }
    }
    Ok(out)
}

/// The deployment that applies to `device`; none for a revoked one.
pub fn assign(device: &Device, deployments: &[deploy::Deployment]) -> Option<Assignment> {
    if device.revoked_ms.is_some() {
        return None;
    }
    deploy::resolve(&DeviceFacts { id: &device.id, profile: &device.profile, tags: &device.tags }, deployments)
}

/// The `desired` message for an assignment to package `p`.
pub fn desired_message(a: &Assignment, p: &PackageInfo) -> deploy::Desired {
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
    }
}

/// One pass; returns how many desired messages it published.
pub async fn reconcile(
    store: &Store,
    outgoing: &mpsc::Sender<Send>,
    published: &mut HashMap<String, Vec<u8>>,
) -> Result<usize, ReconcileError> {
    let packages: HashMap<String, _> = store.packages().await?.into_iter().map(|p| (p.sha256.clone(), p)).collect();
    let deployments = active_deployments(store).await?;
    let recorded: HashMap<String, DesiredInfo> =
        store.desired().await?.into_iter().map(|d| (d.device.clone(), d)).collect();
    let mut sent = 0;
    for device in store.devices().await? {
        let assignment = assign(&device, &deployments);
        let desired = assignment.as_ref().and_then(|a| Some(desired_message(a, packages.get(&a.package_sha256)?)));
        let payload = desired.as_ref().map(|d| serde_json::to_vec(d).unwrap_or_default()).unwrap_or_default();
        let before = recorded.get(&device.id);
        let unchanged_here = published.get(&device.id) == Some(&payload);
        let nothing_to_clear = payload.is_empty() && before.is_none() && !published.contains_key(&device.id);
        if !unchanged_here && !nothing_to_clear {
            let send = Send { topic: wire::topic(&device.id, "desired"), payload: payload.clone(), retain: true };
            outgoing.send(send).await.map_err(|_| ReconcileError::Closed)?;
            published.insert(device.id.clone(), payload);
            sent += 1;
        }
        match (assignment, desired) {
            (Some(a), Some(_)) => {
                let same = before.is_some_and(|b| {
                    b.deployment == a.deployment && b.package_sha256 == a.package_sha256 && b.reason == a.reason
                });
                if !same {
                    tracing::info!(device = %device.id, deployment = %a.deployment, reason = %a.reason, "desired state");
                    store
                        .set_desired(&DesiredInfo {
                            device: device.id.clone(),
                            deployment: a.deployment,
                            package_sha256: a.package_sha256,
                            reason: a.reason,
                            published_ms: now_ms(),
                        })
                        .await?;
                }
            }
            _ if before.is_some() => store.clear_desired(&device.id).await?,
            _ => {}
        }
    }
    Ok(sent)
}
