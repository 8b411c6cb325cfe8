//! Retention: each kind of device message is kept as long as the configuration says, then
//! deleted a few thousand rows at a time beside ingestion, so that a site's disk does not fill
//! (raw samples at a few messages a second per pump grow a database by gigabytes a day). Each
//! sweep that deletes something says how much in the audit trail.

use std::collections::BTreeMap;
use std::time::Duration;

use impeller_core::audit::AuditEvent;

use crate::store::{AuditStore, JobStore, Store, StoreError, TelemetryQueries, TelemetryRetention, now_ms};

/// Rows deleted per statement: short enough that ingestion, which waits for SQLite's one
/// writer, hardly notices.
const BATCH: u32 = 2_000;

/// Devices whose old messages one statement looks for: one transaction (and one log flush)
/// per device would not keep up with a fleet's ingestion.
const DEVICES_AT_ONCE: usize = 500;

/// How long each kind of message is kept; kinds not named are kept for ever.
pub type Keep = Vec<(String, Duration)>;

/// Deletes, for every device, the messages older than their kind's time to keep (both by the
/// device's clock and by the hub's, see [`TelemetryRetention::forget`]) as of `now_ms`; returns how
/// many of each kind, and records the sweep in the audit trail when it deleted anything.
pub async fn sweep(store: &Store, keep: &Keep, now_ms: i64) -> Result<BTreeMap<String, u64>, StoreError> {
    let devices = store.device_streams().await?;
    let names: Vec<&str> = devices.iter().map(|(device, ..)| device.as_str()).collect();
    let mut forgotten = BTreeMap::new();
    for (kind, age) in keep {
        let before_ms = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
        let mut deleted = 0;
        for group in names.chunks(DEVICES_AT_ONCE) {
            loop {
                let n = store.forget(group, kind, before_ms, BATCH).await?;
                deleted += n;
                if n < u64::from(BATCH) {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        if deleted > 0 {
            forgotten.insert(kind.clone(), deleted);
        }
    }
    if !forgotten.is_empty() {
        let kept: BTreeMap<&str, f64> =
            keep.iter().map(|(k, age)| (k.as_str(), age.as_secs_f64() / 86_400.0)).collect();
        store
            .audit(AuditEvent::new(now_ms, "hub", "telemetry.forgotten", "messages").details(serde_json::json!({
                "deleted": forgotten,
                "kept_days": kept,
                "devices": devices.len(),
            })))
            .await?;
    }
    Ok(forgotten)
}

/// Sweeps every `every`, the first a minute after the start (not while the hub is starting).
pub async fn run(store: Store, keep: Keep, every: Duration) {
    warn_of_longer_windows(&store, &keep).await;
    tokio::time::sleep(every.min(Duration::from_secs(60))).await;
    let mut tick = tokio::time::interval(every);
    // A sweep longer than the period delays the next rather than running them back to back.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        match sweep(&store, &keep, now_ms()).await {
            Ok(forgotten) if !forgotten.is_empty() => {
                tracing::info!(?forgotten, took = ?started.elapsed(), "old messages deleted")
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "retention sweep failed; trying again at the next"),
        }
    }
}

/// How long raw samples (what a retraining snapshots) are kept; `None`: for ever.
pub fn samples_kept(keep: &Keep) -> Option<Duration> {
    keep.iter().find(|(kind, _)| kind == "samples").map(|(_, age)| *age)
}

/// Whether `policy`'s data window is longer than raw samples are `kept`: it would train on less
/// than it says.
pub fn window_exceeds(policy: &impeller_core::retrain::RetrainPolicy, kept: Duration) -> bool {
    i128::from(policy.data_window_ms()) > kept.as_millis() as i128
}

/// Says which retraining policies ask for more raw samples than are kept: set before the
/// retention was shortened (the API refuses such a policy now), they would train on less.
async fn warn_of_longer_windows(store: &Store, keep: &Keep) {
    let Some(kept) = samples_kept(keep) else { return };
    let policies = match store.policies().await {
        Ok(p) => p,
        Err(error) => return tracing::warn!(%error, "cannot read the retraining policies to check their windows"),
    };
    for p in policies {
        let Ok(policy) = impeller_core::retrain::RetrainPolicy::parse(&p.policy, "policy") else { continue };
        if window_exceeds(&policy, kept) {
            tracing::warn!(
                model = %p.model,
                hours = policy.data.hours,
                samples_kept_hours = kept.as_secs_f64() / 3600.0,
                "the retraining policy's data window is longer than raw samples are kept: it will train on less"
            );
        }
    }
}
