//! The alert-rate monitor: every device running a registered version is held to the false-alarm
//! rate that version showed in validation (`impeller_core::alert_rate`), over a sliding window of
//! the device's own clock. Each pass reads only what the device sent since the last one; a
//! device entering or leaving the elevated state is written to the audit trail with the figures
//! that decided it. The last judgement per device is stored, so a restarted hub does not
//! announce again what it already said.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use impeller_core::alert_rate::{AlertRatePolicy, AlertRateState, expected_per_day, judge};
use impeller_core::audit::AuditEvent;

use crate::store::TelemetryQueries;
use crate::store::{AlertRate, MonitorStore, RegistryStore, RunningModel, ScoringEvent, Store, StoreError, now_ms};

/// Judges every running device every `period` until the process ends.
pub async fn run(store: Store, policy: AlertRatePolicy, period: Duration) {
    let mut monitor = Monitor::new(store, policy);
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if let Err(error) = monitor.pass().await {
            tracing::error!(%error, "alert-rate monitor pass failed; retrying");
        }
    }
}

/// What the monitor keeps per device between passes.
#[derive(Debug)]
struct Tracker {
    model: String,
    version: u64,
    since_seq: u64,
    /// The last message read.
    cursor: u64,
    window: VecDeque<ScoringEvent>,
    state: AlertRateState,
    /// The store holds a judgement of this version.
    judged: bool,
}

#[derive(Debug)]
pub struct Monitor {
    store: Store,
    policy: AlertRatePolicy,
    /// Expected alerts per day by (model, version); `None` when validation gave no rate.
    rates: HashMap<(String, u64), Option<f64>>,
    trackers: HashMap<String, Tracker>,
    /// The stored judgements, read at the first pass.
    restored: Option<HashMap<String, AlertRate>>,
    /// Devices with a stored judgement.
    stored: HashSet<String>,
}

impl Monitor {
    pub fn new(store: Store, policy: AlertRatePolicy) -> Monitor {
        Monitor {
            store,
            policy,
            rates: HashMap::new(),
            trackers: HashMap::new(),
            restored: None,
            stored: HashSet::new(),
        }
    }

    /// One pass over every device running a registered version.
    pub async fn pass(&mut self) -> Result<(), StoreError> {
        if self.restored.is_none() {
            let saved = self.store.alert_rates().await?;
            self.stored = saved.iter().map(|r| r.device.clone()).collect();
            self.restored = Some(saved.into_iter().map(|r| (r.device.clone(), r)).collect());
        }
        let running = self.store.running_models().await?;
        let mut judged = HashSet::new();
        for r in &running {
            if self.judge(r).await? {
                judged.insert(r.device.clone());
            }
        }
        self.trackers.retain(|device, _| judged.contains(device));
        // A device that no longer runs a version with a validation rate has no rate to show.
        for device in self.stored.iter().filter(|d| !judged.contains(*d)) {
            self.store.remove_alert_rate(device).await?;
        }
        self.stored.retain(|d| judged.contains(d));
        Ok(())
    }

    /// Judges a device's window if it runs a registered version with a validation rate; whether
    /// it does.
    async fn judge(&mut self, r: &RunningModel) -> Result<bool, StoreError> {
        let (Some(model), Some(version)) = (&r.model, r.version) else { return Ok(false) };
        let Some(per_day) = self.rate(model, version).await? else { return Ok(false) };
        let same = |t: &Tracker| t.model == *model && t.version == version && t.since_seq == r.since_seq;
        if !self.trackers.get(&r.device).is_some_and(same) {
            // A new version (or a first look): start from what the store last said about it.
            let saved = self
                .restored
                .as_ref()
                .and_then(|s| s.get(&r.device))
                .filter(|s| s.model == *model && s.model_version == version && s.since_seq == r.since_seq);
            self.trackers.insert(
                r.device.clone(),
                Tracker {
                    model: model.clone(),
                    version,
                    since_seq: r.since_seq,
                    cursor: r.since_seq,
                    window: VecDeque::new(),
                    state: saved.map_or(AlertRateState::Unjudged, |s| AlertRateState::parse(&s.state)),
                    judged: saved.is_some(),
                },
            );
        }
        let Some(t) = self.trackers.get_mut(&r.device) else { return Ok(false) };
        let fresh = self.store.scoring_events(&r.device, t.cursor, self.policy.window_ms).await?;
        let Some(last) = fresh.last() else { return Ok(t.judged) };
        t.cursor = last.seq;
        t.window.extend(fresh);
        let end = t.window.iter().filter(|e| !e.alert).map(|e| e.ts_ms).max().unwrap_or(i64::MIN);
        let start = end.saturating_sub(self.policy.window_ms);
        // An aggregate is stamped at its end: the one stamped at `start` scored before the window.
        t.window.retain(|e| e.ts_ms > start);
        let alerts = t.window.iter().filter(|e| e.alert).count() as u64;
        let scored_ms = t.window.iter().map(|e| e.scored_ms).sum::<i64>();

        let j = judge(&self.policy, t.state, alerts, scored_ms, per_day);
        t.state = j.state;
        t.judged = true;
        let now = now_ms();
        let rate = AlertRate {
            device: r.device.clone(),
            model: model.clone(),
            model_version: version,
            since_seq: r.since_seq,
            through_seq: t.cursor,
            state: j.state.as_str().into(),
            alerts,
            scored_ms,
            expected: j.expected,
            per_day,
            p_value: j.p_value,
            window_end_ms: end,
            changed_ms: now,
            judged_ms: now,
        };
        // Announced against the stored state, not this monitor's memory: another hub on the
        // same database may have said it already.
        let elevated = j.state == AlertRateState::Elevated;
        self.store
            .put_alert_rate(&rate, |before| {
                let action = match (before == AlertRateState::Elevated.as_str(), elevated) {
                    (false, true) => "alert_rate.elevated",
                    (true, false) => "alert_rate.normal",
                    _ => return None,
                };
                if elevated {
                    tracing::warn!(device = %r.device, %model, version, alerts, expected = j.expected, "alert rate elevated");
                }
                Some(AuditEvent::new(now, "hub", action, &r.device).details(serde_json::json!({
                    "model": model, "model_version": version, "alerts": alerts, "scored_ms": scored_ms,
                    "expected": j.expected, "per_day": per_day, "p_value": j.p_value, "window_end_ms": end,
                })))
            })
            .await?;
        // Written, or a judgement of the same version that read further is there: either way
        // the store holds one.
        self.stored.insert(r.device.clone());
        Ok(true)
    }

    /// The expected alerts per day of a registered version, read once.
    async fn rate(&mut self, model: &str, version: u64) -> Result<Option<f64>, StoreError> {
        let key = (model.to_string(), version);
        if let Some(r) = self.rates.get(&key) {
            return Ok(*r);
        }
        let r = self.store.version(model, version).await?.and_then(|v| expected_per_day(&v.metrics));
        self.rates.insert(key, r);
        Ok(r)
    }
}
