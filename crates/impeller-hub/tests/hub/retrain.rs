//! The retraining loop end to end on one hub: a model running on a device, a policy on it; the
//! device's drift triggers a retraining that snapshots its recent samples, runs the policy's
//! pipeline, waits for a person's approval to promote (the policy says so), then rolls the new
//! champion out by itself; every step audited.

use std::time::{Duration, Instant};

use impeller_core::drift::{DriftMonitor, DriftState};
use impeller_core::package::build;
use impeller_core::sketch::Sketch;
use impeller_core::{Channel, Frame, TrainConfig, detector::DetectorConfig, train};
use impeller_hub::store::{
    AlertRate, AuditFilter, AuditStore, DeploymentStore, DriftReport, FeedbackStore, FleetStore, JobStore,
    MonitorStore, NewModelVersion, RegistryStore, TelemetryStore, Verdict, VersionFinish, VersionPackage,
};

use crate::{api_hub, incoming};

const POLICY: &str = r#"
version = 1
[triggers]
drift_share = 0.5
drift_rounds = 2
[data]
condition = "tags.site = 'gulf'"
hours = 24
[approval]
promote = "manual"
rollout = "auto"
[rollout]
waves = [100]
soak_s = 0
"#;

const SPEC: &str = r#"
version = 1
model = "gulf"
targets = ["gw.toml"]
[data]
dataset = "placeholder"
train = ["*"]
[train]
detector = { kind = "zscore" }
"#;

const PROFILE: &str = r#"
version = 1
name = "gw"
arch = "x86_64"
runtime = "native"
storage_bytes = 10000000
memory_bytes = 10000000
latency_budget_us = 100000
"#;

/// Version 1 of `gulf` and the ten minutes of frames from `t0` it was trained on.
fn gulf_v1(t0: i64) -> (Vec<Frame>, impeller_core::Model) {
    let channels = [Channel::new("flow", "L/min"), Channel::new("pressure", "bar")];
    let frames: Vec<Frame> = (0..600)
        .map(|i| Frame {
            ts_ms: t0 + i * 1000,
            values: vec![30.0 + (i as f64 / 9.0).sin(), 4.0 + (i as f64 / 7.0).cos()],
        })
        .collect();
    let model = train(&channels, &frames, &TrainConfig::new(DetectorConfig::Zscore(Default::default()))).unwrap();
    (frames, model)
}

/// A hub with device `r1` at gulf running version 1 of `gulf` (the champion), its samples of
/// the last hour and one alert (seq 12) stored, and `policy` set on the model. The hub and an
/// operator's token.
async fn gulf_on_r1(dir: &std::path::Path, policy: &str) -> (impeller_hub::Hub, String) {
    let (hub, token, signer) = api_hub(dir, |cfg| {
        let key = cfg.packages_dir.with_file_name("pipeline.secret.json");
        std::fs::write(&key, impeller_core::package::Signer25519::from_secret([7; 32]).secret_file().to_json())
            .unwrap();
        cfg.pipeline_key = Some(key);
        cfg.retrain_every = Duration::from_millis(200);
    })
    .await;
    let store = hub.store.clone();
    let tags = [("site".to_string(), "gulf".to_string())].into_iter().collect();
    store.add_device("r1", &tags, "gw", "test").await.unwrap();

    // Version 1, trained elsewhere, registered, champion, and running on r1.
    // The last hour: inside the policy's window.
    let t0 = impeller_hub::store::now_ms() - 3_600_000;
    let (frames, model) = gulf_v1(t0);
    let sha = |b: &[u8]| impeller_pipeline::sha256_hex(b);
    let v1 = NewModelVersion {
        run_key: sha(b"v1"),
        model_sha256: sha(&model.to_json().unwrap()),
        dataset_sha256: sha(b"elsewhere"),
        code_version: "test".into(),
        parent_version: None,
        metrics: Default::default(),
        spec: serde_json::Value::Null,
        tags: Default::default(),
    };
    let v1 = store.create_version("gulf", &v1, "test").await.unwrap();
    let spec = crate::package_spec("gulf", v1.release);
    let pkg = build(&model, &frames, &spec, &signer).unwrap();
    let info = impeller_hub::packages::accept(
        &store,
        &impeller_hub::artifacts::Artifacts::folder(&dir.join("packages")).unwrap(),
        &trust(&signer),
        Default::default(),
        pkg,
        "test",
    )
    .await
    .unwrap();
    let finish = VersionFinish {
        status: "ready".into(),
        gates: serde_json::json!([]),
        packages: vec![VersionPackage { target: "gw".into(), sha256: info.sha256.clone() }],
        reason: None,
    };
    store.finish_version("gulf", 1, &finish, "test").await.unwrap();
    store.set_alias("gulf", "champion", 1, "test").await.unwrap();
    // r1's samples (what the retraining trains on), and its report that it runs version 1.
    let mut batch: Vec<_> = (0..10u64)
        .map(|b| {
            let chunk: Vec<serde_json::Value> = frames[b as usize * 60..(b as usize + 1) * 60]
                .iter()
                .map(|f| serde_json::json!({"ts_ms": f.ts_ms, "values": f.values}))
                .collect();
            let body = serde_json::json!({"channels": ["flow", "pressure"], "frames": chunk});
            incoming("r1", b + 1, frames[b as usize * 60 + 59].ts_ms, "samples", body)
        })
        .collect();
    let update = serde_json::json!({"event": "update", "detail": {"deployment": "d1", "sha256": info.sha256, "state": "active"}});
    batch.push(incoming("r1", 11, t0 + 700_000, "events", update));
    let alert = serde_json::json!({
        "model": {"name": "gulf", "version": "1", "release": v1.release}, "started_ms": t0 + 650_000, "score": 3.0,
        "threshold": 1.5, "top_features": [], "channels": ["flow", "pressure"],
        "window": [{"ts_ms": t0 + 660_000, "values": [30.0, 4.0]}],
    });
    batch.push(incoming("r1", 12, t0 + 710_000, "alerts", alert));
    store.commit(&batch, &[("r1".to_string(), 12)].into_iter().collect()).await.unwrap();

    let body = serde_json::json!({"policy": policy, "spec": SPEC, "profiles": {"gw.toml": PROFILE}});
    let r = reqwest::Client::new()
        .put(format!("http://{}/api/v1/models/gulf/policy", hub.http_addr.unwrap()))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204, "{}", r.text().await.unwrap());
    (hub, token)
}

/// The policy's loop state once a retraining of `gulf` awaits approval (within 30 s).
async fn awaiting_promotion(store: &impeller_hub::store::Store) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let state = store.policy("gulf").await.unwrap().unwrap().state;
        if state["stage"] == "awaiting_promotion" {
            return state;
        }
        assert!(Instant::now() < until, "no retraining awaits approval: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The audit records of `action`, once there are some (within 30 s) and a second more has added
/// none: said once.
async fn audited_once(store: &impeller_hub::store::Store, action: &str) -> Vec<impeller_core::audit::AuditRecord> {
    let records = || async {
        let filter = AuditFilter { action: Some(action.into()), limit: 10, ..Default::default() };
        store.audit_records(&filter).await.unwrap()
    };
    let until = Instant::now() + Duration::from_secs(30);
    while records().await.is_empty() {
        let state = store.policy("gulf").await.unwrap().unwrap().state;
        assert!(Instant::now() < until, "no {action}: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = records().await;
    assert_eq!(all.len(), 1, "{action} said once: {all:?}");
    all
}

/// An operator approves the retraining that awaits it.
async fn approve(hub: &impeller_hub::Hub, token: &str) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/models/gulf/policy/approve", hub.http_addr.unwrap()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_retrains_awaits_approval_rolls_out_and_follows_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, token) = gulf_on_r1(dir.path(), POLICY).await;
    let store = hub.store.clone();
    let t0 = impeller_hub::store::now_ms() - 3_600_000;

    // No drift: nothing happens. Then r1 drifts, for two checks in a row, but a technician
    // confirmed a fault on it: its drift has a known cause and it is set aside.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(store.versions("gulf").await.unwrap().len(), 1);
    store.put_feedback("r1", 12, Verdict::Confirmed, "WO-1", "", "test").await.unwrap();
    let drift = DriftReport {
        device: "r1".into(),
        seq: 13,
        start_ms: 0,
        end_ms: t0 + 800_000,
        model: "gulf".into(),
        model_version: "1".into(),
        count: 500,
        max_wasserstein: 4.0,
        max_psi: 9.0,
        page_hinkley: 5.0,
        state: "drift".into(),
        features: vec![],
        monitor: DriftMonitor { state: DriftState::Drift, n: 5, ..DriftMonitor::default() },
    };
    store.put_drifts(&[(drift, None)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(store.versions("gulf").await.unwrap().len(), 1, "a device under a confirmed fault is set aside");
    // The verdict turns to false alarm: the incident is withdrawn, and the drift counts.
    store.put_feedback("r1", 12, Verdict::FalseAlarm, "WO-1", "", "test").await.unwrap();
    let state = || {
        let store = store.clone();
        async move { store.policy("gulf").await.unwrap().unwrap().state }
    };
    awaiting_promotion(&store).await;
    let v2 = store.version("gulf", 2).await.unwrap().unwrap();
    assert_eq!((v2.status.as_str(), v2.parent_version), ("ready", Some(1)));
    assert_eq!(store.alias("gulf", "champion").await.unwrap().unwrap().version, 1, "not promoted without approval");
    assert!(state().await["reason"].as_str().unwrap().contains("drift on 1 of 1 devices"));

    approve(&hub, &token).await;
    assert_eq!(store.alias("gulf", "champion").await.unwrap().unwrap().version, 2);
    let deployments = store.deployments().await.unwrap();
    let d = deployments.iter().find(|d| d.name == "gulf-v2-gw").expect("the new champion rolls out");
    assert_eq!(d.package_sha256, v2.packages[0].sha256);
    assert_eq!(d.target_condition, "(tags.site = 'gulf') AND profile = 'gw'");
    assert_eq!(state().await["stage"], "idle");

    let audited: Vec<String> = store
        .audit_records(&AuditFilter { action: Some("retrain.".into()), limit: 100, ..Default::default() })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(audited, ["retrain.policy.set", "retrain.triggered", "retrain.finished", "retrain.approved"]);

    // The fleet refuses version 2 and its rollout aborts: r1 is back on version 1, and so is
    // the champion alias, so that r1's drift and verdicts count again.
    store.abort_deployment("gulf-v2-gw", "1 of 1 devices refused the package", "hub").await.unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while store.alias("gulf", "champion").await.unwrap().unwrap().version != 1 {
        assert!(Instant::now() < until, "the champion stays on the refused version: {}", state().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reverted = store
        .audit_records(&AuditFilter { action: Some("retrain.reverted".into()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(reverted.len(), 1, "recorded once");
    assert_eq!(reverted[0].details["aborted"][0], "gulf-v2-gw: 1 of 1 devices refused the package");
    assert_eq!((reverted[0].details["from"].as_u64(), reverted[0].details["to"].as_u64()), (Some(2), Some(1)));
    assert!(state().await["note"].as_str().unwrap().contains("version 1 is champion again"), "{}", state().await);
}

fn trust(signer: &impeller_core::package::Signer25519) -> impeller_core::package::TrustStore {
    let mut t = impeller_core::package::TrustStore::new();
    t.add(signer.verifying_key());
    t
}

/// An alert rate the hub judged elevated on enough of the champion's devices retrains the model
/// (no drift, no verdicts); one judged on another version does not.
/// r1's alert rate judged elevated on `version` of gulf, now; far ahead of what the hub's own
/// monitor reads, so its judgement does not replace this one.
fn elevated(version: u64) -> AlertRate {
    let now = impeller_hub::store::now_ms();
    AlertRate {
        device: "r1".into(),
        model: "gulf".into(),
        model_version: version,
        since_seq: 11,
        through_seq: 1_000_000,
        state: "elevated".into(),
        alerts: 40,
        scored_ms: 3_600_000,
        expected: 0.1,
        per_day: 2.4,
        p_value: 1e-9,
        window_end_ms: now,
        changed_ms: now,
        judged_ms: now,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elevated_alert_rate_retrains() {
    let dir = tempfile::tempdir().unwrap();
    let policy = POLICY.replace("drift_share = 0.5", "alert_rate_share = 1.0");
    let (hub, _) = gulf_on_r1(dir.path(), &policy).await;
    let store = hub.store.clone();
    store.put_alert_rate(&elevated(7), |_| None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(store.versions("gulf").await.unwrap().len(), 1, "judged on a version r1 does not run");
    store.put_alert_rate(&AlertRate { through_seq: 1_000_001, ..elevated(1) }, |_| None).await.unwrap();
    let state = awaiting_promotion(&store).await;
    assert_eq!(state["reason"], "alert rate elevated on 1 of 1 devices (100 %)");
}

/// A hub that stops lets the pipeline run in progress finish (it records its version through
/// the hub's runtime, which must outlive it) and takes no more runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_lets_the_run_in_progress_finish_and_takes_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let policy = POLICY.replace("drift_share = 0.5", "alert_rate_share = 1.0");
    let (hub, _) = gulf_on_r1(dir.path(), &policy).await;
    hub.store.put_alert_rate(&elevated(1), |_| None).await.unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let state = |s: &str| hub.runs.list().iter().any(|r| r.state == s);
    while !state("running") {
        assert!(!state("finished"), "the run finished before it was seen running");
        assert!(Instant::now() < until, "no retraining run started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(hub.runs.stop(Duration::from_secs(60)).await, "the run did not finish");
    let runs = hub.runs.list();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state, "finished");
    assert!(runs[0].record.as_ref().is_some_and(|r| r.version.is_some()), "no version recorded: {:?}", runs[0]);
    let again =
        hub.runs.submit(&impeller_hub::runs::RunRequest { spec: String::new(), profiles: Default::default() }, "t");
    assert!(matches!(again, Err(impeller_hub::runs::SubmitError::Stopping)), "{again:?}");
}

/// Every device of the class shifted a little, too little for any of them to be in drift on its
/// own, retrains the model as a class; and not before three devices have sent a sketch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_shifted_as_a_whole_retrains() {
    let dir = tempfile::tempdir().unwrap();
    let policy = POLICY.replace("drift_share = 0.5", "class_drift = 1.5");
    let (hub, token) = gulf_on_r1(dir.path(), &policy).await;
    let store = hub.store.clone();
    let t0 = impeller_hub::store::now_ms() - 3_600_000;
    let (frames, model) = gulf_v1(t0);
    let v1 = store.version("gulf", 1).await.unwrap().unwrap();
    let tags = [("site".to_string(), "gulf".to_string())].into_iter().collect();
    // Each feature of the training data moved 1.75 σ (seven bins of 0.25 σ) up: a device's own
    // monitor holds that for a warning at most (it alarms at 3.5 σ, accumulates above 2.2 σ).
    let mut shifted = impeller_core::package::reference_sketch(&model, &frames);
    for row in &mut shifted.bins {
        let inner = row.len() - 1;
        let tail: u64 = row[inner - 7..].iter().sum();
        row.copy_within(0..inner - 7, 7);
        row[..7].fill(0);
        row[inner] = tail;
    }
    let sketch_of = |v: &impeller_hub::store::ModelVersion, device: &str, seq: u64, sketch: &Sketch| {
        let body = serde_json::json!({
            "model": {"name": "gulf", "version": v.version.to_string(), "release": v.release}, "start_ms": t0,
            "end_ms": t0 + 600_000, "features": model.feature_names(), "sketch": sketch,
        });
        incoming(device, seq, t0 + 700_000, "sketches", body)
    };
    let sketch = |device: &str, seq: u64| sketch_of(&v1, device, seq, &shifted);
    let active = serde_json::json!({"event": "update", "detail": {"deployment": "d1", "sha256": v1.packages[0].sha256, "state": "active"}});
    let stage = || {
        let store = store.clone();
        async move { store.policy("gulf").await.unwrap().unwrap().state }
    };
    store.add_device("r2", &tags, "gw", "test").await.unwrap();
    let batch = [sketch("r1", 13), incoming("r2", 1, t0 + 700_000, "events", active.clone()), sketch("r2", 2)];
    let acked = [("r1".to_string(), 13), ("r2".to_string(), 2)].into_iter().collect();
    store.commit(&batch, &acked).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(store.versions("gulf").await.unwrap().len(), 1, "two devices say nothing of a class: {}", stage().await);

    store.add_device("r3", &tags, "gw", "test").await.unwrap();
    let batch = [incoming("r3", 1, t0 + 700_000, "events", active), sketch("r3", 2)];
    store.commit(&batch, &[("r3".to_string(), 2)].into_iter().collect()).await.unwrap();
    let state = awaiting_promotion(&store).await;
    let reason = state["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("class drift: the latest sketches of 3 of 3 devices pooled (3 nearest kept) are 1.7"),
        "{reason}"
    );
    assert!(reason.ends_with("for 2 checks in a row"), "{reason}");
    let reports =
        store.drift_reports(&impeller_hub::store::FleetFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(reports.len(), 3);
    assert!(reports.iter().all(|r| r.state != "drift"), "no device in drift on its own: {reports:?}");

    // Version 2 (trained on the same samples, so on the same reference) is approved and rolls
    // out; the class stands as far from it: the drift is held, said once, not retrained again.
    approve(&hub, &token).await;
    let v2 = store.version("gulf", 2).await.unwrap().unwrap();
    let active = serde_json::json!({"event": "update", "detail": {"deployment": "gulf-v2-gw", "sha256": v2.packages[0].sha256, "state": "active"}});
    let mut batch = Vec::new();
    let mut acked = std::collections::BTreeMap::new();
    for (device, seq) in [("r1", 14), ("r2", 3), ("r3", 3)] {
        batch.push(incoming(device, seq, t0 + 800_000, "events", active.clone()));
        batch.push(sketch_of(&v2, device, seq + 1, &shifted));
        acked.insert(device.to_string(), seq + 1);
    }
    store.commit(&batch, &acked).await.unwrap();
    let records = audited_once(&store, "retrain.drift_held").await;
    assert_eq!(store.versions("gulf").await.unwrap().len(), 2, "retrained again: {}", stage().await);
    let reason = records[0].details["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "drift persists against version 2, retrained on drift from version 1: its devices pooled stand 1.7"
        ),
        "{reason}"
    );
    assert_eq!(stage().await["note"], reason);

    // The first feature moves another 1.75 σ while the rest stay where the drift was held: a
    // new drift, not the held one, and retrained from version 2 (on r1's samples of it too).
    let mut further = shifted.clone();
    let (row, inner) = (&mut further.bins[0], shifted.bins[0].len() - 1);
    row[inner] += row[inner - 7..inner].iter().sum::<u64>();
    row.copy_within(0..inner - 7, 7);
    row[..7].fill(0);
    let samples: Vec<_> = frames[..60]
        .iter()
        .map(|f| serde_json::json!({"ts_ms": f.ts_ms + 900_000, "values": [f.values[0] + 5.0, f.values[1]]}))
        .collect();
    let samples = serde_json::json!({"channels": ["flow", "pressure"], "frames": samples});
    let mut batch = vec![incoming("r1", 16, t0 + 960_000, "samples", samples)];
    batch.extend([("r1", 17), ("r2", 5), ("r3", 5)].map(|(d, seq)| sketch_of(&v2, d, seq, &further)));
    let acked = [("r1".to_string(), 17), ("r2".to_string(), 5), ("r3".to_string(), 5)].into_iter().collect();
    store.commit(&batch, &acked).await.unwrap();
    let state = awaiting_promotion(&store).await;
    let reason = state["reason"].as_str().unwrap();
    let names = model.feature_names();
    let feature = &names[0];
    assert!(reason.starts_with("a further drift while the last is held: the class's pool stands "), "{reason}");
    assert!(reason.contains(&format!("from version 2's reference on {feature}, ")), "{reason}");
    assert!(reason.ends_with("beyond where it stood when held, for 2 checks in a row"), "{reason}");
    let triggered = store
        .audit_records(&AuditFilter { action: Some("retrain.triggered".into()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    let record = triggered.iter().find(|r| r.details["reason"] == reason).expect("audited with its evidence");
    let evidence = &record.details["evidence"];
    assert_eq!(evidence["held_at"]["champion"], 2, "{evidence}");
    for f in &names {
        let (now, held) = (&evidence["class_drift"]["features"][f], &evidence["held_at"]["features"][f]);
        let (now, held) = (now.as_f64().unwrap(), held.as_f64().unwrap());
        assert!((1.7..1.8).contains(&held), "{f} held where the first shift put it: {evidence}");
        assert_eq!(now - held >= 1.5, f == feature, "only {feature} moved a trigger's level further: {evidence}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_may_not_ask_for_more_samples_than_the_hub_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, token, _) = api_hub(dir.path(), |cfg| {
        cfg.retention = vec![("samples".into(), Duration::from_secs(12 * 3600))];
    })
    .await;
    let put = |hours: u32| {
        let body = serde_json::json!({
            "policy": POLICY.replace("hours = 24", &format!("hours = {hours}")), "spec": SPEC, "profiles": {"gw.toml": PROFILE},
        });
        reqwest::Client::new()
            .put(format!("http://{}/api/v1/models/gulf/policy", hub.http_addr.unwrap()))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let refused = put(24).await.unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let problem: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("data.hours = 24") && detail.contains("(12 h, `[retention] samples_days`)"), "{detail}");
    assert_eq!(put(12).await.unwrap().status().as_u16(), 204, "a window as long as what is kept is allowed");
}

/// Technicians calling the champion's alert a false alarm retrain it (the policy judging the
/// verdicts' own share, so that one verdict can); once the day's budget is
/// spent, the next trigger (the new version's alert rate) is reported over budget, once, and
/// retrains nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_precision_retrains_and_the_days_budget_holds_the_next_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let policy = POLICY.replace(
        "drift_share = 0.5",
        "min_precision = 0.5\nmin_verdicts = 1\nprecision_confidence = 0.5\nalert_rate_share = 1.0",
    ) + "[budget]\nper_day = 1\n";
    let (hub, token) = gulf_on_r1(dir.path(), &policy).await;
    let store = hub.store.clone();
    let t0 = impeller_hub::store::now_ms() - 3_600_000;
    store.put_feedback("r1", 12, Verdict::FalseAlarm, "WO-7", "", "test").await.unwrap();
    let state = awaiting_promotion(&store).await;
    assert_eq!(state["reason"], "alert precision 0.00 from 1 verdicts is below 0.50");
    approve(&hub, &token).await;

    // r1 takes version 2, which alarms too often on it: a trigger, but the day's one retraining
    // is spent.
    let v2 = store.version("gulf", 2).await.unwrap().unwrap();
    let active = serde_json::json!({"event": "update", "detail": {"deployment": "gulf-v2-gw", "sha256": v2.packages[0].sha256, "state": "active"}});
    store
        .commit(&[incoming("r1", 13, t0 + 900_000, "events", active)], &[("r1".to_string(), 13)].into_iter().collect())
        .await
        .unwrap();
    store.put_alert_rate(&elevated(2), |_| None).await.unwrap();
    let records = audited_once(&store, "retrain.over_budget").await;
    assert_eq!(
        records[0].details["reason"],
        "alert rate elevated on 1 of 1 devices (100 %); 1 retrainings in the last 24 h already"
    );
    assert_eq!(store.versions("gulf").await.unwrap().len(), 2, "no retraining beyond the budget");
    let state = store.policy("gulf").await.unwrap().unwrap().state;
    assert_eq!(state["note"], records[0].details["reason"]);
}
