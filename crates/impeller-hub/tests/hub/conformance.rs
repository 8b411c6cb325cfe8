//! The store's contracts, aggregate by aggregate, written against the traits and run on every
//! backend on an empty database (`on_every_backend!`). The other `on_every_backend!` tests (rollouts,
//! alert queries, drift, the audit trail, datasets, feedback, the registry, alert rates) belong
//! to the same suite; this file covers what they do not.

use std::collections::BTreeMap;

use impeller_core::audit::AuditEvent;
use impeller_hub::auth::Role;
use impeller_hub::fleet::hash_secret;
use impeller_hub::retention;
use impeller_hub::store::{
    ArtifactStore, AuditFilter, AuditStore, DeploymentInfo, DeploymentStore, DesiredInfo, FleetStore, JobStore,
    MonitorStore, PackageInfo, PolicyRecord, RegistryStore, Store, StoreError, TelemetryQueries, TelemetryRetention,
    TelemetryStore, now_ms,
};

use crate::{alert_body, incoming};

fn tags(site: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("site".to_string(), site.to_string())])
}

/// Devices, their credentials and revocation; operators' tokens.
async fn fleet_store(url: &str) {
    let s = Store::open(url).await.unwrap();
    fleet_contract(&s).await;
}

async fn fleet_contract(s: &(impl FleetStore + AuditStore)) {
    let secret = s.add_device("p-2", &tags("gulf"), "gw", "admin:ci").await.unwrap();
    s.add_device("p-1", &tags("permian"), "plc", "admin:ci").await.unwrap();
    assert!(
        matches!(s.add_device("p-1", &tags("x"), "gw", "a").await, Err(StoreError::DeviceExists(id)) if id == "p-1")
    );
    assert!(matches!(s.add_device("bad id!", &tags("x"), "gw", "a").await, Err(StoreError::BadDeviceId(_))));

    let devices = s.devices().await.unwrap();
    assert_eq!(devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["p-1", "p-2"], "by id");
    assert_eq!((devices[1].tags.clone(), devices[1].profile.as_str()), (tags("gulf"), "gw"));
    assert!(devices.iter().all(|d| d.revoked_ms.is_none()));

    // Only a salted hash of the secret is kept, and it checks the secret.
    let creds = s.credentials().await.unwrap();
    let c = &creds["p-2"];
    assert_ne!(c.hash, secret);
    assert_eq!(hash_secret(&c.salt, &secret), c.hash);
    assert_ne!(hash_secret(&c.salt, "not the secret"), c.hash);
    assert!(!c.revoked);

    s.revoke_device("p-2", "admin:ci").await.unwrap();
    s.revoke_device("p-2", "admin:ci").await.unwrap(); // already revoked: nothing changes
    assert!(matches!(s.revoke_device("p-9", "a").await, Err(StoreError::NoDevice(id)) if id == "p-9"));
    assert!(s.credentials().await.unwrap()["p-2"].revoked);
    assert!(s.devices().await.unwrap()[1].revoked_ms.is_some());

    let (info, token) = s.add_token("ops", Role::Operator, "admin:ci").await.unwrap();
    assert_eq!((info.name.as_str(), info.role), ("ops", Role::Operator));
    let secret = token.strip_prefix(&format!("imp_{}_", info.id)).unwrap();
    let stored = s.token_secret(&info.id).await.unwrap().unwrap();
    assert_eq!((stored.role, stored.revoked), (Role::Operator, false));
    assert_eq!(hash_secret(&stored.salt, secret), stored.hash);
    assert!(s.token_secret("0000000000000000").await.unwrap().is_none());

    // Each change once in the audit trail, in order.
    let actions: Vec<String> = s
        .audit_records(&AuditFilter { limit: 100, ..Default::default() })
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{} {}", r.action, r.subject))
        .collect();
    let token_subject = format!("token.created token:{}", info.id);
    assert_eq!(actions, ["device.added p-2", "device.added p-1", "device.revoked p-2", token_subject.as_str()]);
}

on_every_backend!(fleet_store);

fn aggregate(start_ms: i64, scored: u64) -> serde_json::Value {
    serde_json::json!({
        "start_ms": start_ms, "end_ms": start_ms + 60_000, "scored": scored, "alarms": 0,
        "channels": [{"name": "flow", "unit": "m3/h", "count": 30, "mean": 10.0, "min": 9.0, "max": 11.0,
                      "std": 0.5, "last": 10.0}],
    })
}

/// Each (device, seq) once, the acknowledged prefix, and the reads over what was stored.
async fn telemetry_store(url: &str) {
    let s = Store::open(url).await.unwrap();
    telemetry_contract(&s).await;
}

async fn telemetry_contract(s: &(impl TelemetryStore + TelemetryQueries)) {
    let batch = vec![
        incoming("d", 1, 1_000, "telemetry", aggregate(0, 30)),
        incoming("d", 2, 61_000, "alerts", alert_body(60_500)),
        incoming("d", 3, 121_000, "telemetry", aggregate(60_000, 0)),
        incoming("d", 5, 181_000, "telemetry", aggregate(120_000, 30)),
        incoming("e", 1, 5_000, "samples", serde_json::json!({"channels": ["flow"], "frames": []})),
    ];
    let acked = BTreeMap::from([("d".to_string(), 3), ("e".to_string(), 1)]);
    let c = s.commit(&batch, &acked).await.unwrap();
    assert_eq!((c.stored, c.duplicates), (5, 0));
    let again = s.commit(&batch[..2], &acked).await.unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 2), "a redelivery is stored once");

    // What a restarted hub resumes from: the prefix, and what lies beyond it with its prev.
    let mut states = s.stream_states(&["d", "nobody", "e"]).await.unwrap();
    let d = states.remove("d").unwrap();
    assert_eq!((d.acked, d.acked_ts_ms, d.beyond), (3, Some(121_000), BTreeMap::from([(5, (4, 181_000))])));
    let e = states.remove("e").unwrap();
    assert_eq!((e.acked, e.beyond.len()), (1, 0));
    assert!(states.is_empty(), "a device never heard from has no stream: {states:?}");
    let seqs: Vec<u64> = s.messages("d").await.unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 5]);

    assert_eq!(s.message("d", 2, "alerts").await.unwrap().map(|(ts, _)| ts), Some(61_000));
    assert!(s.message("d", 2, "telemetry").await.unwrap().is_none(), "the kind must match");
    assert_eq!(s.alert("d", 2).await.unwrap().map(|(_, a)| a.started_ms), Some(60_500));
    assert!(s.alert("d", 1).await.unwrap().is_none());

    let mut streams = s.device_streams().await.unwrap();
    streams.sort();
    assert_eq!(
        streams.iter().map(|(d, _, ts)| (d.as_str(), *ts)).collect::<Vec<_>>(),
        [("d", Some(121_000)), ("e", Some(5_000))]
    );
    assert_eq!(s.alert_counts().await.unwrap(), [("d".to_string(), 1, 61_000)]);

    let latest = s.latest_aggregates("d", 2).await.unwrap();
    assert_eq!(
        latest.iter().map(|a| a.start_ms).collect::<Vec<_>>(),
        [60_000, 120_000],
        "the newest two, oldest first"
    );
    // By the time each was sent (its interval's end), not when its interval began.
    let range = s.aggregates("d", 100_000, 130_000).await.unwrap();
    assert_eq!(range.iter().map(|a| a.start_ms).collect::<Vec<_>>(), [60_000]);
    assert_eq!(s.samples("e", 0, 10_000, 10).await.unwrap().len(), 1);
    assert!(s.samples("e", 5_001, 10_000, 10).await.unwrap().is_empty());

    // Alerts and scoring time after a sequence number: an aggregate that scored nothing counts no time.
    let events = s.scoring_events("d", 1, 24 * 3_600_000).await.unwrap();
    assert_eq!(
        events.iter().map(|e| (e.seq, e.alert, e.scored_ms)).collect::<Vec<_>>(),
        [(2, true, 0), (5, false, 60_000)]
    );
    let activity = s.alert_activity("d", 0, 5, 0).await.unwrap();
    assert_eq!((activity.alerts, activity.scored_ms), (1, 60_000), "seqs 1 to 4");

    // The same message twice in one batch is stored once, and so is one stored beyond the
    // prefix and sent again; the prefix's time follows it onto a message an earlier batch stored.
    let f = |seq, ts| incoming("f", seq, ts, "telemetry", aggregate(ts - 1_000, 30));
    let c = s.commit(&[f(1, 1_000), f(1, 1_000), f(3, 3_000)], &BTreeMap::from([("f".to_string(), 1)])).await.unwrap();
    assert_eq!((c.stored, c.duplicates), (2, 1));
    let c = s.commit(&[f(3, 3_000), f(2, 2_000)], &BTreeMap::from([("f".to_string(), 3)])).await.unwrap();
    assert_eq!((c.stored, c.duplicates), (1, 1));
    assert_eq!(s.messages("f").await.unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(s.stream_states(&["f"]).await.unwrap()["f"].beyond.len(), 0);
    let streams = s.device_streams().await.unwrap();
    assert!(streams.iter().any(|(d, _, ts)| d == "f" && *ts == Some(3_000)), "{streams:?}");
}

on_every_backend!(telemetry_store);

/// Retention: a kind's messages go once old by the device's clock and the hub's alike (a device
/// whose clock runs decades behind keeps what it just sent), other kinds stay, a forgotten
/// message redelivered is still a duplicate, and the sweep is in the audit trail.
async fn old_messages_are_forgotten(url: &str) {
    let s = Store::open(url).await.unwrap();
    let (now, day) = (now_ms(), 86_400_000);
    let samples = |device: &str, seq, ts| incoming(device, seq, ts, "samples", serde_json::json!({"frames": []}));
    let batch = vec![
        samples("old", 1, now - 40 * day),
        incoming("old", 2, now - 40 * day, "alerts", alert_body(now - 40 * day)),
        samples("old", 3, now + 2 * day),
        samples("behind", 1, 1_000),
        samples("many", 1, 1_000),
        samples("many", 2, 2_000),
        samples("many", 3, 3_000),
    ];
    let acked = BTreeMap::from([("old".to_string(), 3), ("behind".to_string(), 1), ("many".to_string(), 3)]);
    assert_eq!(s.commit(&batch, &acked).await.unwrap().stored, 7);
    // At most `limit` at a time.
    assert_eq!(s.forget(&["nobody", "many"], "samples", now + day, 2).await.unwrap(), 2);
    assert_eq!(s.forget(&["many"], "samples", now + day, 2).await.unwrap(), 1);

    let keep = vec![("samples".to_string(), std::time::Duration::from_secs(30 * 86_400))];
    let swept = retention::sweep(&s, &keep, now_ms()).await.unwrap();
    assert!(swept.is_empty(), "nothing was stored 30 days ago: {swept:?}");
    let swept = retention::sweep(&s, &keep, now_ms() + 31 * day).await.unwrap();
    assert_eq!(swept, BTreeMap::from([("samples".to_string(), 2)]));
    let old: Vec<u64> = s.messages("old").await.unwrap().iter().map(|m| m.seq).collect();
    assert_eq!(old, [2, 3], "the alert and the newer sample stay");
    assert!(s.messages("behind").await.unwrap().is_empty());
    let again = s.commit(&batch[..1], &acked).await.unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 1), "a forgotten message is not stored again");

    let filter = AuditFilter { limit: 10, action: Some("telemetry.forgotten".into()), ..AuditFilter::default() };
    let records = s.audit_records(&filter).await.unwrap();
    assert_eq!(records.len(), 1, "one record for the sweep that deleted something: {records:?}");
    assert_eq!(records[0].details["deleted"]["samples"], 2, "{:?}", records[0]);
}

on_every_backend!(old_messages_are_forgotten);

/// A database an older hub left (before migration 16: a (device, seq) key on the messages, and
/// stream rows without what is stored beyond the prefix) keeps its messages, resumes each
/// device's stream where it was, and still stores a redelivery once.
async fn streams_migrate(url: &str) {
    let old = Store::open_at_version(url, 15).await.unwrap();
    macro_rules! seed {
        ($pool:expr) => {{
            for (device, seq, ts) in [("d", 1, 1_000), ("d", 2, 2_000), ("d", 3, 3_000), ("d", 5, 5_000), ("g", 1, 700)]
            {
                sqlx::query(
                    "INSERT INTO messages (device, seq, prev, ts_ms, kind, body, received_ms) \
                     VALUES ($1, $2, $3, $4, 'telemetry', '{}', $4)",
                )
                .bind(device)
                .bind(seq)
                .bind(seq - 1)
                .bind(ts as i64)
                .execute($pool)
                .await
                .unwrap();
            }
            // "g" was never acknowledged: no stream row.
            sqlx::query("INSERT INTO device_streams (device, acked, last_seen_ms) VALUES ('d', 3, 9000)")
                .execute($pool)
                .await
                .unwrap();
        }};
    }
    match &old {
        Store::Sqlite { pool, .. } => seed!(pool),
        Store::Postgres(p) => seed!(p),
    }
    drop(old);

    let s = Store::open(url).await.unwrap();
    let states = s.stream_states(&["d", "g"]).await.unwrap();
    assert_eq!((states["d"].acked, &states["d"].beyond), (3, &BTreeMap::from([(5, (4, 5_000))])));
    assert_eq!((states["g"].acked, &states["g"].beyond), (0, &BTreeMap::from([(1, (0, 700))])));
    let mut streams = s.device_streams().await.unwrap();
    streams.sort();
    assert_eq!(
        streams.iter().map(|(d, _, ts)| (d.as_str(), *ts)).collect::<Vec<_>>(),
        [("d", Some(3_000)), ("g", None)]
    );
    let again = |device, seq: u64| incoming(device, seq, seq as i64 * 1_000, "telemetry", aggregate(0, 30));
    let c = s
        .commit(
            &[again("d", 5), again("d", 2), again("g", 1), again("d", 4)],
            &BTreeMap::from([("d".to_string(), 5), ("g".to_string(), 1)]),
        )
        .await
        .unwrap();
    assert_eq!((c.stored, c.duplicates), (1, 3), "only d's seq 4 is new");
    assert_eq!(s.messages("d").await.unwrap().iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    let d = &s.stream_states(&["d"]).await.unwrap()["d"];
    assert_eq!((d.acked, d.acked_ts_ms, d.beyond.len()), (5, Some(5_000), 0));
}

on_every_backend!(streams_migrate);

fn deployment(name: &str, package: &str) -> DeploymentInfo {
    DeploymentInfo {
        name: name.into(),
        package_sha256: package.into(),
        target_condition: "tags.site = 'gulf'".into(),
        priority: 1,
        created_ms: 1,
        stopped_ms: None,
        rollout: None,
        wave: 0,
        wave_started_ms: 1,
        completed_ms: None,
        aborted_ms: None,
        abort_reason: None,
    }
}

fn update_event(deployment: &str, sha: &str, state: &str) -> serde_json::Value {
    serde_json::json!({"event": "update", "detail": {"deployment": deployment, "sha256": sha, "state": state}})
}

/// Packages recorded once; deployments stopped, completed and resolved to desired state; the
/// devices' latest update report each.
async fn deployment_store(url: &str) {
    let s = Store::open(url).await.unwrap();
    deployment_contract(&s).await;
}

async fn deployment_contract(s: &(impl ArtifactStore + DeploymentStore + TelemetryStore + AuditStore)) {
    let sha = "a".repeat(64);
    let package = PackageInfo {
        sha256: sha.clone(),
        size: 10,
        model: "m".into(),
        version: "1".into(),
        release: 7,
        target: "gw".into(),
        signed_by: "ops".into(),
        uploaded_ms: 5,
    };
    s.put_package(&package, &[], "ops").await.unwrap();
    s.put_package(&package, &[], "ops").await.unwrap(); // an upload again records nothing new
    assert_eq!(s.packages().await.unwrap(), std::slice::from_ref(&package));
    assert_eq!(s.package(&sha).await.unwrap(), Some(package));
    assert!(s.package(&"b".repeat(64)).await.unwrap().is_none());

    s.add_deployment(&deployment("d1", &sha), "ops").await.unwrap();
    assert!(matches!(s.add_deployment(&deployment("d1", &sha), "ops").await, Err(StoreError::Exists { .. })));
    s.complete_rollout("d1", "hub").await.unwrap();
    s.complete_rollout("d1", "hub").await.unwrap(); // once
    s.stop_deployment("d1", "ops").await.unwrap();
    assert!(matches!(s.stop_deployment("nope", "ops").await, Err(StoreError::NotFound { .. })));
    let d = &s.deployments().await.unwrap()[0];
    assert!(d.completed_ms.is_some() && d.stopped_ms.is_some() && !d.applies(), "{d:?}");

    let desired = |device: &str, reason: &str| DesiredInfo {
        device: device.into(),
        deployment: "d1".into(),
        package_sha256: sha.clone(),
        reason: reason.into(),
        published_ms: 9,
    };
    s.set_desired(&desired("p1", "first")).await.unwrap();
    s.set_desired(&desired("p1", "second")).await.unwrap();
    s.set_desired(&desired("p2", "first")).await.unwrap();
    s.clear_desired("p2").await.unwrap();
    assert_eq!(s.desired().await.unwrap(), [desired("p1", "second")], "one per device, the latest");

    let reports = [
        incoming("p1", 1, 10, "events", update_event("d1", &sha, "downloading")),
        incoming("p1", 2, 20, "events", update_event("d1", &sha, "active")),
        incoming("p2", 1, 15, "events", update_event("d1", &sha, "failed")),
    ];
    s.commit(&reports, &BTreeMap::new()).await.unwrap();
    s.commit(&reports, &BTreeMap::new()).await.unwrap(); // redelivered
    let latest = s.latest_updates().await.unwrap();
    assert_eq!((latest["p1"].state.as_str(), latest["p1"].first_seq, latest["p1"].active_seq), ("active", 1, Some(2)));
    assert_eq!(latest["p2"].state, "failed");
    let actions = |prefix: &str| {
        let filter = AuditFilter { action: Some(prefix.into()), limit: 10, ..Default::default() };
        async move { s.audit_records(&filter).await.unwrap().into_iter().map(|r| r.action).collect::<Vec<_>>() }
    };
    assert_eq!(actions("device.update.").await, ["device.update.active", "device.update.failed"], "each outcome once");
    assert_eq!(actions("deployment.completed").await, ["deployment.completed"]);
}

on_every_backend!(deployment_store);

/// Retraining policies: set, read, their loop's state saved, removed.
async fn job_store(url: &str) {
    let s = Store::open(url).await.unwrap();
    job_contract(&s).await;
}

async fn job_contract(s: &(impl JobStore + AuditStore)) {
    let policy = |model: &str, n: u64| PolicyRecord {
        model: model.into(),
        policy: format!("budget_per_day = {n}"),
        spec: "[data]".into(),
        profiles: BTreeMap::from([("gw.toml".to_string(), "name = \"gw\"".to_string())]),
        state: serde_json::json!({"runs": 0}),
        updated_by: "ops".into(),
        updated_ms: 1,
    };
    s.put_policy(&policy("b", 1)).await.unwrap();
    s.put_policy(&policy("a", 1)).await.unwrap();
    s.put_policy(&policy("a", 2)).await.unwrap(); // replaces
    assert_eq!(s.policies().await.unwrap().iter().map(|p| p.model.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(s.policy("a").await.unwrap(), Some(policy("a", 2)));
    s.save_policy_state("a", &serde_json::json!({"runs": 3})).await.unwrap();
    assert_eq!(s.policy("a").await.unwrap().unwrap().state, serde_json::json!({"runs": 3}));
    s.remove_policy("a", "ops").await.unwrap();
    assert!(s.policy("a").await.unwrap().is_none());
    assert!(matches!(s.remove_policy("a", "ops").await, Err(StoreError::NotFound { .. })));
    let filter = AuditFilter { action: Some("retrain.policy.".into()), limit: 10, ..Default::default() };
    let actions: Vec<String> = s.audit_records(&filter).await.unwrap().into_iter().map(|r| r.action).collect();
    assert_eq!(actions, ["retrain.policy.set", "retrain.policy.set", "retrain.policy.set", "retrain.policy.removed"]);
}

on_every_backend!(job_store);

/// The audit trail's head and its filters: an action, a prefix (which is a prefix, not a
/// pattern), a subject, a time.
async fn audit_store(url: &str) {
    let s = Store::open(url).await.unwrap();
    audit_contract(&s).await;
}

async fn audit_contract(s: &impl AuditStore) {
    assert_eq!(s.audit_head().await.unwrap(), 0);
    for (t, action, subject) in [
        (10, "alert_rate.elevated", "p1"),
        (20, "alertXrate.elevated", "p1"),
        (30, "Alert_rate.normal", "p2"),
        (40, "alert_rate.normal", "p2"),
    ] {
        s.audit(AuditEvent::new(t, "hub", action, subject)).await.unwrap();
    }
    assert_eq!(s.audit_head().await.unwrap(), 4);
    let read = |f: AuditFilter| async move {
        s.audit_records(&AuditFilter { limit: 100, ..f }).await.unwrap().into_iter().map(|r| r.seq).collect::<Vec<_>>()
    };
    assert_eq!(read(AuditFilter { action: Some("alert_rate.".into()), ..Default::default() }).await, [1, 4]);
    assert_eq!(read(AuditFilter { action: Some("alert_rate.normal".into()), ..Default::default() }).await, [4]);
    assert_eq!(read(AuditFilter { subject: Some("p2".into()), ..Default::default() }).await, [3, 4]);
    assert_eq!(read(AuditFilter { since_ms: Some(20), after: 2, ..Default::default() }).await, [3, 4]);
}

on_every_backend!(audit_store);

/// What the registry, artifacts and monitors left without a test on both backends: versions
/// newest first, an alias removed, a device's alert rate removed.
async fn registry_odds(url: &str) {
    let s = Store::open(url).await.unwrap();
    registry_odds_contract(&s).await;
}

async fn registry_odds_contract(s: &(impl RegistryStore + MonitorStore)) {
    let v = |run: &str| impeller_hub::store::NewModelVersion {
        run_key: run.repeat(64),
        model_sha256: "c".repeat(64),
        dataset_sha256: "d".repeat(64),
        code_version: "test".into(),
        parent_version: None,
        spec: serde_json::json!({}),
        metrics: BTreeMap::new(),
        tags: BTreeMap::new(),
    };
    s.create_version("m", &v("1"), "ops").await.unwrap();
    s.create_version("m", &v("2"), "ops").await.unwrap();
    assert_eq!(s.versions("m").await.unwrap().iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
    let ready = impeller_hub::store::VersionFinish {
        status: "ready".into(),
        gates: serde_json::json!([]),
        packages: Vec::new(),
        reason: None,
    };
    s.finish_version("m", 2, &ready, "ops").await.unwrap();
    s.set_alias("m", "challenger", 2, "ops").await.unwrap();
    assert_eq!(s.alias("m", "challenger").await.unwrap().map(|v| v.version), Some(2));
    s.remove_alias("m", "challenger", "ops").await.unwrap();
    assert!(s.alias("m", "challenger").await.unwrap().is_none());
    assert!(matches!(s.remove_alias("m", "challenger", "ops").await, Err(StoreError::NotFound { .. })));

    assert!(s.alert_rates().await.unwrap().is_empty());
    s.remove_alert_rate("nobody").await.unwrap(); // nothing to remove is no error
}

on_every_backend!(registry_odds);

/// While ingestion commits batch after batch, the other writers (the audit trail here; the
/// background passes in a hub) still get their turn: none fails with "database is locked".
async fn writers_take_turns(url: &str) {
    let s = std::sync::Arc::new(Store::open(url).await.unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Several batches queued at once, as ingestion pipelines them: its connection goes from
    // one commit straight to the next.
    let hogs: Vec<_> = (0..4)
        .map(|h| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seq = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seq += 1;
                    let batch: Vec<_> = (0..1000)
                        .map(|i| incoming(&format!("d{h}-{i}"), seq, seq as i64, "alerts", alert_body(seq as i64)))
                        .collect();
                    let acked = batch.iter().map(|m| (m.device.clone(), m.seq)).collect();
                    s.commit(&batch, &acked).await.unwrap();
                }
                seq
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for i in 0..20 {
        let event = AuditEvent::new(i, "admin:ci", "test.turn", &format!("t{i}"));
        s.audit(event).await.unwrap_or_else(|e| panic!("audit write {i} during ingestion: {e}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for hog in hogs {
        assert!(hog.await.unwrap() > 1, "ingestion committed nothing meanwhile: the test proved nothing");
    }
}

on_every_backend!(writers_take_turns);

/// A database a newer hub migrated is refused at open, naming both versions, instead of
/// failing every write later.
async fn a_newer_schema_is_refused(url: &str) {
    let s = Store::open(url).await.unwrap();
    let sql = "INSERT INTO impeller_migrations (version, name, applied_ms) VALUES (9999, 'from the future', 0)";
    match &s {
        Store::Sqlite { pool, .. } => assert_eq!(sqlx::query(sql).execute(pool).await.unwrap().rows_affected(), 1),
        Store::Postgres(p) => assert_eq!(sqlx::query(sql).execute(p).await.unwrap().rows_affected(), 1),
    }
    drop(s);
    let refused = Store::open(url).await.map(|_| ()).unwrap_err();
    assert!(matches!(refused, StoreError::NewerSchema { newest: 9999, .. }), "{refused}");
    assert!(refused.to_string().contains("9999"), "{refused}");
}

on_every_backend!(a_newer_schema_is_refused);
