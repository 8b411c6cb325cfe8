//! The drift monitor: every sketch a device sends is compared with the reference sketch in the
//! package of the model that produced it (PSI, Kolmogorov–Smirnov and Wasserstein per feature),
//! and the device's sequential monitor for that model (Page–Hinkley on the worst Wasserstein
//! distance, with hysteresis,
//! `impeller_core::drift`) moves on. Each judgement is stored with the monitor's state after it,
//! so a restarted hub carries on where it stopped and judges what arrived meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use impeller_core::audit::AuditEvent;
use impeller_core::drift::{ClassDrift, DriftMonitor, DriftPolicy, DriftState, class_drift, compare};
use impeller_core::package::{self, Limits, TrustStore};
use impeller_core::sketch::Sketch;
use impeller_core::wire::{ModelRef, SketchBody};

use crate::store::{ArtifactStore, DriftReport, MonitorStore, Store, StoreError, now_ms};

/// Features kept in each report, worst first.
const TOP_FEATURES: usize = 5;

/// Each device's latest judged sketch per model, kept in memory to judge a class of devices as a
/// whole (`impeller_core::drift::class_drift`). Empty after a restart until the devices send
/// their next sketches.
#[derive(Debug, Default)]
pub struct LatestSketches(Mutex<HashMap<(String, String), Latest>>);

#[derive(Debug)]
struct Latest {
    version: String,
    end_ms: i64,
    span_ms: i64,
    features: Vec<String>,
    sketch: Sketch,
    reference: Arc<Sketch>,
}

impl LatestSketches {
    /// `devices` of `model` at `version`, pooled: the latest sketch of each against the
    /// reference most of them share, those older than two intervals before the median one left
    /// out. `None` when too few are left.
    pub fn class_drift(&self, model: &str, version: &str, devices: &[&str]) -> Option<ClassDrift> {
        let map = self.0.lock().ok()?;
        // Packages of one version for several targets carry the same reference, each read once:
        // grouped by content.
        let mut groups: Vec<Vec<&Latest>> = Vec::new();
        for l in devices.iter().filter_map(|d| map.get(&(model.to_string(), d.to_string()))) {
            if l.version != version {
                continue;
            }
            match groups.iter_mut().find(|g| *g[0].reference == *l.reference) {
                Some(group) => group.push(l),
                None => groups.push(vec![l]),
            }
        }
        let mut latest = groups.into_iter().max_by_key(Vec::len)?;
        // Fresh means within two intervals of the median device, not of the newest: agents on a
        // busy machine or a slow link lag unevenly, and one device ahead must not leave the rest
        // of its class out of the pool.
        latest.sort_by_key(|l| l.end_ms);
        let median = latest[latest.len() / 2];
        let since = median.end_ms - 2 * median.span_ms.max(1);
        latest.retain(|l| l.end_ms >= since);
        if latest.len() < impeller_core::drift::MIN_CLASS_DEVICES || latest.len() * 2 < devices.len() {
            return None;
        }
        let sketches: Vec<&Sketch> = latest.iter().map(|l| &l.sketch).collect();
        class_drift(&median.reference, &median.features, &sketches)
    }

    fn put(&self, device: &str, model: &str, latest: Latest) {
        if let Ok(mut map) = self.0.lock() {
            let key = (model.to_string(), device.to_string());
            if map.get(&key).is_none_or(|old| old.end_ms <= latest.end_ms || old.version != latest.version) {
                map.insert(key, latest);
            }
        }
    }
}

/// Judges new sketches every `period` until the process ends.
pub async fn run(
    store: Store,
    artifacts: crate::artifacts::Artifacts,
    trust: Arc<TrustStore>,
    policy: DriftPolicy,
    period: Duration,
    latest: Arc<LatestSketches>,
) {
    let mut monitor =
        Monitor { store, artifacts, trust, policy, references: HashMap::new(), monitors: HashMap::new(), latest };
    match monitor.store.drift_monitors().await {
        Ok(m) => monitor.monitors = m,
        Err(error) => tracing::error!(%error, "cannot load the drift monitors' state; starting afresh"),
    }
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if let Err(error) = monitor.judge_pending().await {
            tracing::error!(%error, "drift monitor pass failed; retrying");
        }
    }
}

struct Monitor {
    store: Store,
    artifacts: crate::artifacts::Artifacts,
    trust: Arc<TrustStore>,
    policy: DriftPolicy,
    /// Reference sketches by (model, version, release).
    references: HashMap<(String, String, u64), Arc<Sketch>>,
    /// Per (device, model name): the version judged, and its monitor.
    monitors: HashMap<(String, String), (String, DriftMonitor)>,
    latest: Arc<LatestSketches>,
}

impl Monitor {
    async fn judge_pending(&mut self) -> Result<(), StoreError> {
        loop {
            let batch = self.store.unjudged_sketches(500).await?;
            if batch.is_empty() {
                return Ok(());
            }
            // What was judged is written even when a later sketch cannot be: the monitors in
            // memory have moved on with it.
            let (mut judged, mut failed) = (Vec::with_capacity(batch.len()), None);
            for (device, seq, body) in batch {
                let (report, entered) = match self.judge(&device, seq.max(0) as u64, &body).await {
                    Ok(judged) => judged,
                    Err(error) => {
                        failed = Some(error);
                        break;
                    }
                };
                if report.state == "drift" {
                    tracing::warn!(%device, model = %report.model, wasserstein = report.max_wasserstein,
                        feature = report.features.first().map_or("", |f| f.feature.as_str()), "drift");
                }
                let event = entered.map(|action| {
                    AuditEvent::new(now_ms(), "hub", action, &device).details(serde_json::json!({
                        "model": report.model, "model_version": report.model_version, "seq": report.seq,
                        "max_wasserstein": report.max_wasserstein, "page_hinkley": report.page_hinkley,
                        "feature": report.features.first().map(|f| &f.feature),
                    }))
                });
                judged.push((report, event));
            }
            self.store.put_drifts(&judged).await?;
            if let Some(error) = failed {
                return Err(error);
            }
        }
    }

    /// The report on one sketch, and `drift.detected` or `drift.cleared` when the device's
    /// monitor entered or left the drift state with it.
    async fn judge(
        &mut self,
        device: &str,
        seq: u64,
        body: &str,
    ) -> Result<(DriftReport, Option<&'static str>), StoreError> {
        let mut report = DriftReport {
            device: device.to_string(),
            seq,
            start_ms: 0,
            end_ms: 0,
            model: String::new(),
            model_version: String::new(),
            count: 0,
            max_wasserstein: 0.0,
            max_psi: 0.0,
            page_hinkley: 0.0,
            state: "unreadable".into(),
            features: Vec::new(),
            monitor: DriftMonitor::default(),
        };
        // Ingest checked the envelope, not the body; one that does not parse is recorded as such.
        let Ok(sketch) = serde_json::from_str::<SketchBody>(body) else { return Ok((report, None)) };
        report.start_ms = sketch.start_ms;
        report.end_ms = sketch.end_ms;
        report.model = sketch.model.name.clone();
        report.model_version = sketch.model.version.clone();
        report.count = sketch.sketch.count;
        let Some(reference) = self.reference(&sketch.model).await? else {
            report.state = "no_reference".into();
            return Ok((report, None));
        };
        let Some(comparison) = compare(&reference, &sketch.sketch, &sketch.features) else {
            report.state = "unreadable".into();
            return Ok((report, None));
        };
        let (version, monitor) = self.monitors.entry((device.to_string(), sketch.model.name.clone())).or_default();
        // A new version brings a new reference: its monitor starts afresh.
        if *version != sketch.model.version {
            *version = sketch.model.version.clone();
            *monitor = DriftMonitor::default();
        }
        let before = monitor.state;
        let state = monitor.update(&comparison, &self.policy);
        let entered = match (before == DriftState::Drift, state == DriftState::Drift) {
            (false, true) => Some("drift.detected"),
            (true, false) => Some("drift.cleared"),
            _ => None,
        };
        report.state = state.as_str().into();
        report.max_wasserstein = comparison.max_wasserstein();
        self.latest.put(
            device,
            &report.model,
            Latest {
                version: report.model_version.clone(),
                end_ms: sketch.end_ms,
                span_ms: sketch.end_ms - sketch.start_ms,
                features: sketch.features.clone(),
                sketch: sketch.sketch.clone(),
                reference: reference.clone(),
            },
        );
        report.max_psi = comparison.max_psi();
        report.page_hinkley = monitor.page_hinkley();
        report.monitor = monitor.clone();
        report.features = comparison.features.into_iter().take(TOP_FEATURES).collect();
        Ok((report, entered))
    }

    /// The reference sketch of the package built for `model`, read (and verified) once.
    async fn reference(&mut self, model: &ModelRef) -> Result<Option<Arc<Sketch>>, StoreError> {
        let key = (model.name.clone(), model.version.clone(), model.release);
        if let Some(r) = self.references.get(&key) {
            return Ok(Some(r.clone()));
        }
        let found = reference(&self.store, &self.artifacts, &self.trust, model).await?.map(Arc::new);
        if let Some(r) = &found {
            self.references.insert(key, r.clone());
        }
        Ok(found)
    }
}

/// The drift reference in the stored package built for `model`, verified; `None` when the hub
/// holds no such package or cannot read it (logged).
pub async fn reference(
    store: &Store,
    artifacts: &crate::artifacts::Artifacts,
    trust: &TrustStore,
    model: &ModelRef,
) -> Result<Option<Sketch>, StoreError> {
    let packages = store.packages().await?;
    let Some(info) =
        packages.iter().find(|p| p.model == model.name && p.version == model.version && p.release == model.release)
    else {
        return Ok(None);
    };
    let read = artifacts.get(&info.sha256).await.map_err(|e| e.to_string());
    let opened = read.and_then(|b| b.ok_or_else(|| "the package file is missing".to_string())).and_then(|bytes| {
        let limits = Limits { max_bytes: u64::MAX, ..Limits::default() };
        package::open(&bytes, trust, limits).map_err(|e| e.to_string())
    });
    match opened {
        Ok(pkg) => Ok(Some(pkg.reference)),
        Err(error) => {
            tracing::error!(%error, package = %info.sha256, "cannot read a stored package's drift reference");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sketch of one feature with all its counts in bin `bin`.
    fn at(bin: usize) -> Sketch {
        let mut s = Sketch::new(1);
        s.bins[0][bin] = 100;
        s.count = 100;
        s
    }

    #[test]
    fn a_class_is_pooled_from_fresh_sketches_of_its_version() {
        let mid = impeller_core::sketch::BINS / 2;
        let reference = Arc::new(at(mid));
        let latest = LatestSketches::default();
        let put = |device: &str, version: &str, end_ms: i64, bin: usize| {
            let latest_one = Latest {
                version: version.into(),
                end_ms,
                span_ms: 600_000,
                features: vec!["motor_c".into()],
                sketch: at(bin),
                reference: reference.clone(),
            };
            latest.put(device, "gulf", latest_one);
        };
        let devices = ["a", "b", "c", "d"];
        put("a", "2", 10_000_000, mid + 4);
        put("b", "2", 10_000_000, mid + 4);
        assert!(latest.class_drift("gulf", "2", &devices).is_none(), "two devices say nothing of a class");
        put("c", "2", 10_000_000, mid + 4);
        let c = latest.class_drift("gulf", "2", &devices).unwrap();
        assert_eq!((c.devices, c.feature.as_str()), (3, "motor_c"));
        assert!((c.distance - 1.0).abs() < 1e-9, "four bins of 0.25 σ: {c:?}");
        assert!(latest.class_drift("gulf", "1", &devices).is_none(), "another version's sketches do not count");
        assert!(latest.class_drift("gulf", "2", &["a", "b", "c", "d", "e", "f", "g"]).is_none(), "fewer than half");
        // An older sketch than the one kept is ignored. Freshness is measured from the median
        // device: one far ahead leaves nobody out, one more than two intervals behind drops out.
        put("a", "2", 9_000_000, mid);
        assert_eq!(latest.class_drift("gulf", "2", &devices).unwrap().devices, 3);
        put("d", "2", 12_000_000, mid + 4);
        assert_eq!(latest.class_drift("gulf", "2", &devices).unwrap().devices, 4, "d is ahead, the rest fresh");
        put("h", "2", 8_700_000, mid);
        let five = ["a", "b", "c", "d", "h"];
        assert_eq!(latest.class_drift("gulf", "2", &five).unwrap().devices, 4, "h is 2.2 intervals behind the median");
        assert!((latest.class_drift("gulf", "2", &five).unwrap().distance - 1.0).abs() < 1e-9, "h not pooled");
        put("h", "2", 8_900_000, mid);
        assert_eq!(latest.class_drift("gulf", "2", &five).unwrap().devices, 5, "h is 1.8 intervals behind");
        put("b", "2", 12_000_000, mid + 4);
        put("c", "2", 12_000_000, mid + 4);
        assert_eq!(latest.class_drift("gulf", "2", &five).unwrap().devices, 3, "a and h left behind the median");
        // Another package's copy of the same reference counts; another reference does not, and
        // the one most devices share is judged against, whichever device is the median.
        let (copy, other) = (Arc::new(at(mid)), Arc::new(at(mid + 1)));
        for (device, reference) in [("e", copy.clone()), ("f", other), ("g", copy)] {
            let features = vec!["motor_c".into()];
            let one = Latest {
                version: "2".into(),
                end_ms: 12_000_000,
                span_ms: 600_000,
                features,
                sketch: at(mid + 4),
                reference,
            };
            latest.put(device, "gulf", one);
        }
        assert_eq!(latest.class_drift("gulf", "2", &["d", "e", "f", "g"]).unwrap().devices, 3, "d, e and g");
    }
}
