//! The alert-rate monitor on each backend: a device alarming far above its model version's
//! validation false-alarm rate is judged elevated, once in the audit trail; a restarted monitor
//! neither forgets that nor says it again; a calm day brings the device back to normal; a
//! version without validation figures is not judged, and a device moving to one loses its rate.

use impeller_hub::alert_rate::Monitor;
use impeller_hub::store::{
    AlertRate, ArtifactStore, AuditFilter, AuditStore, MonitorStore, NewModelVersion, PackageInfo, RegistryStore,
    Store, TelemetryStore, VersionFinish, VersionPackage,
};

use crate::{incoming, unique};

const HOUR: i64 = 3_600_000;

/// A ready version of `model` with `metrics`, and the SHA-256 of its one package.
async fn ready_version(store: &Store, model: &str, metrics: &[(&str, f64)]) -> String {
    let sha = |s: &str| {
        use sha2::Digest;
        impeller_core::hex::encode(&sha2::Sha256::digest(s.as_bytes()))
    };
    let v = NewModelVersion {
        run_key: sha(&format!("{model}-run")),
        model_sha256: sha(&format!("{model}-model")),
        dataset_sha256: sha(&format!("{model}-data")),
        code_version: "test".into(),
        parent_version: None,
        metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        spec: serde_json::json!({}),
        tags: Default::default(),
    };
    let v = store.create_version(model, &v, "test").await.unwrap();
    let package = sha(&format!("{model}-package"));
    let info = PackageInfo {
        sha256: package.clone(),
        size: 1,
        model: model.into(),
        version: v.version.to_string(),
        release: v.release,
        target: "gw".into(),
        signed_by: "k".into(),
        uploaded_ms: 1,
    };
    store.put_package(&info, &[], "test").await.unwrap();
    let finish = VersionFinish {
        status: "ready".into(),
        gates: serde_json::json!([]),
        packages: vec![VersionPackage { target: "gw".into(), sha256: package.clone() }],
        reason: None,
    };
    store.finish_version(model, v.version, &finish, "test").await.unwrap();
    package
}

/// Hourly aggregates from hour `from` to `to` (device clock) as seq `seq..`, with an alert in
/// each of the hours in `alert_hours`; the next free seq.
async fn send_hours(store: &Store, device: &str, mut seq: u64, from: i64, to: i64, alert_hours: &[i64]) -> u64 {
    let mut batch = Vec::new();
    for h in from..to {
        if alert_hours.contains(&h) {
            batch.push(incoming(device, seq, h * HOUR + 60_000, "alerts", serde_json::json!({"any": "alert"})));
            seq += 1;
        }
        let agg = serde_json::json!({"start_ms": h * HOUR, "end_ms": (h + 1) * HOUR, "scored": 3600, "alarms": 0, "channels": []});
        batch.push(incoming(device, seq, (h + 1) * HOUR, "telemetry", agg));
        seq += 1;
    }
    let acked = [(device.to_string(), seq - 1)].into_iter().collect();
    store.commit(&batch, &acked).await.unwrap();
    seq
}

async fn rate_of(store: &Store, device: &str) -> Option<AlertRate> {
    store.alert_rates().await.unwrap().into_iter().find(|r| r.device == device)
}

async fn events(store: &Store, device: &str, action: &str) -> usize {
    let f =
        AuditFilter { action: Some(action.into()), subject: Some(device.into()), limit: 1000, ..Default::default() };
    store.audit_records(&f).await.unwrap().len()
}

async fn alert_rate_monitor(url: &str) {
    let store = Store::open(url).await.unwrap();
    let model = unique("rate-model");
    // Half a false alarm a day over two normal days: held to 0.5 + 1/2 = 1 alert a day.
    let package = ready_version(&store, &model, &[("false_alarms_per_day", 0.5), ("normal_device_days", 2.0)]).await;
    let (noisy, calm) = (unique("noisy"), unique("calm"));
    let active =
        serde_json::json!({"event": "update", "detail": {"deployment": "d", "sha256": package, "state": "active"}});
    for d in [&noisy, &calm] {
        let acked = [(d.to_string(), 1)].into_iter().collect();
        store.commit(&[incoming(d, 1, 0, "events", active.clone())], &acked).await.unwrap();
    }
    // Six hours: eight alerts on one device (p ≈ 3e-10 at 0.25 expected), one on the other.
    let mut seq = send_hours(&store, &noisy, 2, 0, 6, &[]).await;
    let batch: Vec<_> = (0..8)
        .map(|i| incoming(&noisy, seq + i, 5 * HOUR + i as i64 * 1000, "alerts", serde_json::json!({})))
        .collect();
    store.commit(&batch, &[(noisy.clone(), seq + 7)].into_iter().collect()).await.unwrap();
    seq += 8;
    send_hours(&store, &calm, 2, 0, 6, &[3]).await;

    let mut monitor = Monitor::new(store.clone(), Default::default());
    monitor.pass().await.unwrap();
    let r = rate_of(&store, &noisy).await.expect("the noisy device is judged");
    assert_eq!(
        (r.state.as_str(), r.alerts, r.scored_ms, r.model.as_str(), r.since_seq),
        ("elevated", 8, 6 * HOUR, model.as_str(), 1)
    );
    assert!((r.per_day - 1.0).abs() < 1e-12 && (r.expected - 0.25).abs() < 1e-12 && r.p_value < 1e-6, "{r:?}");
    assert_eq!(r.window_end_ms, 6 * HOUR);
    let c = rate_of(&store, &calm).await.expect("the calm device is judged");
    assert_eq!((c.state.as_str(), c.alerts), ("normal", 1));
    assert_eq!(events(&store, &noisy, "alert_rate.elevated").await, 1);
    assert_eq!(events(&store, &calm, "alert_rate.elevated").await, 0);

    // A pass with nothing new, and a restarted monitor, say nothing again.
    monitor.pass().await.unwrap();
    let mut restarted = Monitor::new(store.clone(), Default::default());
    restarted.pass().await.unwrap();
    assert_eq!(rate_of(&store, &noisy).await.unwrap().state, "elevated");
    assert_eq!(events(&store, &noisy, "alert_rate.elevated").await, 1, "the restarted monitor repeated itself");

    // A calm day later the storm has left the 24 h window.
    send_hours(&store, &noisy, seq, 6, 31, &[20]).await;
    restarted.pass().await.unwrap();
    let r = rate_of(&store, &noisy).await.unwrap();
    assert_eq!(
        (r.state.as_str(), r.alerts, r.scored_ms, r.window_end_ms),
        ("normal", 1, 24 * HOUR, 31 * HOUR),
        "{r:?}"
    );
    assert_eq!(events(&store, &noisy, "alert_rate.normal").await, 1);
    // A judgement that read less (another hub behind this one) does not overwrite it.
    let stale = AlertRate { state: "elevated".into(), through_seq: r.through_seq - 1, ..r.clone() };
    let announced = std::sync::atomic::AtomicBool::new(false);
    assert!(
        !store
            .put_alert_rate(&stale, |_| {
                announced.store(true, std::sync::atomic::Ordering::Relaxed);
                None
            })
            .await
            .unwrap()
    );
    assert!(!announced.load(std::sync::atomic::Ordering::Relaxed));
    let kept = rate_of(&store, &noisy).await.unwrap();
    assert_eq!((kept.state.as_str(), kept.window_end_ms, kept.alerts), ("normal", 31 * HOUR, 1));
    // The other monitor, still running, catches up to the same judgement without a new event.
    monitor.pass().await.unwrap();
    assert_eq!(events(&store, &noisy, "alert_rate.normal").await, 1);
    assert_eq!(rate_of(&store, &calm).await.unwrap().alerts, 1);

    // A version without validation figures is not judged.
    let bare_model = unique("bare-model");
    let bare = ready_version(&store, &bare_model, &[("f1", 0.9)]).await;
    let unjudged = unique("bare");
    let active =
        serde_json::json!({"event": "update", "detail": {"deployment": "d", "sha256": bare, "state": "active"}});
    store
        .commit(&[incoming(&unjudged, 1, 0, "events", active)], &[(unjudged.clone(), 1)].into_iter().collect())
        .await
        .unwrap();
    send_hours(&store, &unjudged, 2, 0, 6, &[0, 1, 2, 3, 4, 5]).await;
    restarted.pass().await.unwrap();
    assert!(rate_of(&store, &unjudged).await.is_none());
    // Nor is a device once it runs such a version: its old judgement goes.
    let active =
        serde_json::json!({"event": "update", "detail": {"deployment": "e", "sha256": bare, "state": "active"}});
    store
        .commit(&[incoming(&noisy, 100, 32 * HOUR, "events", active)], &[(noisy.clone(), 100)].into_iter().collect())
        .await
        .unwrap();
    restarted.pass().await.unwrap();
    assert!(rate_of(&store, &noisy).await.is_none(), "a judgement of a version the device no longer runs");
    assert!(rate_of(&store, &calm).await.is_some());
}

on_every_backend!(alert_rate_monitor);
