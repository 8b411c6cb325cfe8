//! The dashboard and the views it reads: a hub holding a signed package, a registered champion,
//! a deployment, a device's aggregates, alert and drift sketches; the views must put them
//! together right, the page must be served with its security headers, and (with Chromium and
//! Selenium present) every page must load in a real headless browser without a console error,
//! clicks on "Confirm fault" and "Abort" must change the stored verdict and deployment, and a
//! device added through the API must appear on the audit page without a reload (the event stream).

use std::process::Command;
use std::time::{Duration, Instant};

use impeller_core::package::{build, reference_sketch};
use impeller_core::{Channel, Frame, TrainConfig, detector::DetectorConfig, detector::PcaConfig, train};
use impeller_hub::Hub;
use impeller_hub::store::{AuditStore, DeploymentStore, FeedbackStore, FleetStore, TelemetryStore, Verdict};
use serde_json::{Value, json};

use crate::{api_hub, incoming};

const DEVICE: &str = "pump-7";
const ALERT_SEQ: u64 = 200;
/// Start of the device's data (its own clock, in 2024: not the hub's).
const T0: i64 = 1_717_200_000_000;

struct Populated {
    hub: Hub,
    token: String,
    base: String,
    _dir: tempfile::TempDir,
}

async fn call(p: &Populated, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method.parse().unwrap(), format!("{}{path}", p.base))
        .header("authorization", format!("Bearer {}", p.token));
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Two channels that move together; `offset` shifts the second.
fn frames(n: usize, seed: u64, offset: f64) -> Vec<Frame> {
    let mut rng = impeller_core::rng::Rng::new(seed);
    (0..n)
        .map(|i| {
            let load = (i as f64 / 50.0).sin();
            let values = vec![10.0 + load + 0.1 * rng.next_f64(), 5.0 + 0.5 * load + 0.1 * rng.next_f64() + offset];
            Frame { ts_ms: T0 + 1000 * i as i64, values }
        })
        .collect()
}

async fn populated() -> Populated {
    let dir = tempfile::tempdir().unwrap();
    let audit_key = dir.path().join("audit.secret.json");
    let (hub, token, signer) = api_hub(dir.path(), |c| {
        c.audit_key = Some(audit_key);
        c.alert_rate_every = Duration::from_millis(200);
    })
    .await;
    let base = format!("http://{}", hub.http_addr.unwrap());
    let p = Populated { hub, token, base, _dir: dir };
    let tags = [("site", "north"), ("manufacturer", "acme")].map(|(k, v)| (k.to_string(), v.to_string()));
    p.hub.store.add_device(DEVICE, &tags.into_iter().collect(), "gw", "test").await.unwrap();

    let hex = |c: char| c.to_string().repeat(64);
    let new = json!({"run_key": hex('a'), "model_sha256": hex('b'), "dataset_sha256": hex('c'), "code_version": "test",
                     "metrics": {"f1": 0.8, "far": 0.1, "false_alarms_per_day": 1.0, "normal_device_days": 2.0}});
    let (status, version) = call(&p, "POST", "/api/v1/models/pumps/versions", Some(new)).await;
    assert_eq!(status, 201, "{version}");
    let release = version["release"].as_u64().unwrap();
    let channels = [Channel::new("flow", "m3/h"), Channel::new("pressure", "bar")];
    let training = frames(3000, 1, 0.0);
    let model = train(&channels, &training, &TrainConfig::new(DetectorConfig::Pca(PcaConfig::default()))).unwrap();
    let spec = crate::package_spec("pumps", release);
    let pkg = build(&model, &training, &spec, &signer).unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/packages", p.base))
        .header("authorization", format!("Bearer {}", p.token))
        .body(pkg)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let stored: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let sha: String = stored["sha256"].as_str().unwrap().into();

    // Registered, ready, champion; deployed to every device.
    let finish = json!({"status": "ready", "packages": [{"target": "gw", "sha256": sha}]});
    let (status, body) = call(&p, "POST", "/api/v1/models/pumps/versions/1/finish", Some(finish)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(call(&p, "PUT", "/api/v1/models/pumps/aliases/champion", Some(json!({"version": 1}))).await.0, 204);
    let dep = json!({"name": "north", "package_sha256": sha, "target_condition": "*"});
    assert_eq!(call(&p, "POST", "/api/v1/deployments", Some(dep)).await.0, 201);

    // The device: running the package, two hours of one-minute aggregates (the score rises in
    // the second), an alert with its readings, a stable and a drifted sketch.
    let model_ref = json!({"name": "pumps", "version": "1", "release": release});
    let mut batch = vec![incoming(
        DEVICE,
        1,
        T0,
        "events",
        json!({"event": "update", "detail": {"deployment": "north", "sha256": sha, "state": "active", "running_release": release}}),
    )];
    for i in 0..120i64 {
        let score = if i < 60 { 0.2 } else { 1.0 + i as f64 / 100.0 };
        let ch = |name: &str, unit: &str, mean: f64| {
            json!({"name": name, "unit": unit, "count": 60, "mean": mean, "min": mean - 0.5, "max": mean + 0.5,
                   "std": 0.2, "last": mean})
        };
        let body = json!({"start_ms": T0 + i * 60_000, "end_ms": T0 + (i + 1) * 60_000, "scored": 60, "alarms": 0,
                          "channels": [ch("flow", "m3/h", 10.0 + i as f64 / 60.0), ch("pressure", "bar", 5.0)],
                          "score": {"count": 60, "mean": score, "min": score - 0.1, "max": score + 0.1, "threshold": 1.5}});
        batch.push(incoming(DEVICE, 2 + i as u64, T0 + i * 60_000, "telemetry", body));
    }
    let window: Vec<Value> =
        (0..20).map(|k| json!({"ts_ms": T0 + 7_000_000 + k * 1000, "values": [12.0 + k as f64, null]})).collect();
    let alert = json!({"model": model_ref, "started_ms": T0 + 7_010_000, "score": 2.5, "threshold": 1.5,
                       "top_features": [["flow_mean", 4.2]], "channels": ["flow", "pressure"], "window": window});
    batch.push(incoming(DEVICE, ALERT_SEQ, T0 + 7_010_000, "alerts", alert));
    for (seq, offset) in [(201u64, 0.0), (202, 1.5)] {
        let f = frames(942, seq, offset);
        let sketch = json!({"model": model_ref, "start_ms": f[0].ts_ms, "end_ms": f[f.len() - 1].ts_ms,
                            "features": model.feature_names(), "sketch": reference_sketch(&model, &f)});
        batch.push(incoming(DEVICE, seq, f[f.len() - 1].ts_ms, "sketches", sketch));
    }
    // `prev` runs 121 → 200 across the gap in the numbers above; the acknowledged prefix is 202.
    batch.iter_mut().find(|m| m.seq == ALERT_SEQ).unwrap().prev = 121;
    p.hub.store.commit(&batch, &[(DEVICE.to_string(), 202)].into_iter().collect()).await.unwrap();

    // The drift monitor judges the sketches in the background.
    let until = Instant::now() + Duration::from_secs(20);
    while call(&p, "GET", &format!("/api/v1/drift?device={DEVICE}"), None).await.1["items"].as_array().unwrap().len()
        < 2
    {
        assert!(Instant::now() < until, "the drift monitor did not judge the sketches");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_put_the_stores_together() {
    let p = populated().await;

    let (status, fleet) = call(&p, "GET", "/api/v1/fleet", None).await;
    assert_eq!(status, 200, "{fleet}");
    let row = fleet["items"].as_array().unwrap().iter().find(|d| d["id"] == DEVICE).unwrap();
    assert_eq!(row["model"], "pumps");
    assert_eq!(row["registry_version"], 1);
    assert_eq!(row["update_state"], "active");
    assert_eq!(row["drift_state"], "drift", "{row}");
    assert_eq!(row["alerts"], 1);
    assert_eq!(row["tags"]["site"], "north");
    // The hub's alert-rate task judges the device against its version's validation rate.
    let until = Instant::now() + Duration::from_secs(10);
    let rate = loop {
        let (status, rates) = call(&p, "GET", &format!("/api/v1/alert-rates?device={DEVICE}"), None).await;
        assert_eq!(status, 200, "{rates}");
        if let Some(r) = rates["items"].get(0) {
            break r.clone();
        }
        assert!(Instant::now() < until, "the alert-rate task never judged {DEVICE}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (rate["model"].as_str(), rate["model_version"].as_u64(), rate["alerts"].as_u64()),
        (Some("pumps"), Some(1), Some(1)),
        "{rate}"
    );
    assert_eq!(
        rate["per_day"].as_f64(),
        Some(1.5),
        "one false alarm a day plus one over the two validated days: {rate}"
    );
    let (_, fleet) = call(&p, "GET", "/api/v1/fleet", None).await;
    let row = fleet["items"].as_array().unwrap().iter().find(|d| d["id"] == DEVICE).unwrap();
    assert_eq!(row["alert_rate"], rate["state"], "{row}");
    assert_eq!(row["data_through_ms"].as_i64(), Some(T0 + 941_000), "the time of message 202: {row}");
    assert!(row["last_contact_ms"].as_i64().unwrap() > T0, "hub clock");

    // The range is the aggregates' own (the device's clock), not the hub's.
    let (status, series) = call(&p, "GET", &format!("/api/v1/devices/{DEVICE}/series?points=60"), None).await;
    assert_eq!(status, 200, "{series}");
    assert_eq!((series["since_ms"].as_i64(), series["until_ms"].as_i64()), (Some(T0), Some(T0 + 120 * 60_000)));
    let names: Vec<&str> = series["channels"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["flow", "pressure"]);
    assert_eq!(series["channels"][0]["unit"], "m3/h");
    assert_eq!(series["threshold"], 1.5);
    let score = series["score"].as_array().unwrap();
    assert_eq!(score.len(), 60, "two aggregates per point");
    assert!((score[0]["mean"].as_f64().unwrap() - 0.2).abs() < 1e-9);
    assert!(score[59]["max"].as_f64().unwrap() > 2.0, "the rise: {}", score[59]);
    let flow = series["channels"][0]["points"].as_array().unwrap();
    assert_eq!(flow[0]["count"], 120, "readings behind the first point");
    let (_, newest) = call(&p, "GET", &format!("/api/v1/devices/{DEVICE}/series?last=30&points=30"), None).await;
    assert_eq!(newest["since_ms"].as_i64(), Some(T0 + 90 * 60_000), "the newest 30 aggregates");
    assert_eq!(call(&p, "GET", &format!("/api/v1/devices/{DEVICE}/series?last=0"), None).await.0, 422);
    assert_eq!(call(&p, "GET", "/api/v1/devices/nobody/series", None).await.0, 404);

    let (status, detail) = call(&p, "GET", &format!("/api/v1/alerts/{DEVICE}/{ALERT_SEQ}"), None).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["alert"]["window"].as_array().unwrap().len(), 20);
    assert_eq!(detail["feedback"], Value::Null);
    let verdict = json!({"verdict": "false_alarm", "work_order": "WO-9"});
    assert_eq!(call(&p, "POST", &format!("/api/v1/alerts/{DEVICE}/{ALERT_SEQ}/feedback"), Some(verdict)).await.0, 200);
    let (_, detail) = call(&p, "GET", &format!("/api/v1/alerts/{DEVICE}/{ALERT_SEQ}"), None).await;
    assert_eq!(detail["feedback"]["verdict"], "false_alarm");
    assert_eq!(detail["feedback"]["work_order"], "WO-9");
    let (_, alerts) = call(&p, "GET", &format!("/api/v1/alerts?device={DEVICE}"), None).await;
    assert_eq!(alerts["items"][0]["verdict"], "false_alarm", "the list carries the verdict");
    assert_eq!(call(&p, "GET", &format!("/api/v1/alerts/{DEVICE}/999"), None).await.0, 404);
    assert_eq!(call(&p, "GET", &format!("/api/v1/alerts/{DEVICE}/zero"), None).await.0, 422);

    let (status, sketch) = call(&p, "GET", &format!("/api/v1/drift/{DEVICE}/202"), None).await;
    assert_eq!(status, 200, "{sketch}");
    let features = sketch["features"].as_array().unwrap();
    let pressure = features.iter().find(|f| f["feature"].as_str().unwrap().starts_with("pressure")).unwrap();
    let mass = |key: &str, lo: usize, hi: usize| -> u64 {
        pressure[key].as_array().unwrap()[lo..hi].iter().map(|v| v.as_u64().unwrap()).sum()
    };
    let bins = pressure["reference"].as_array().unwrap().len();
    assert_eq!(bins, impeller_core::sketch::BINS);
    // The shifted channel's current mass sits above the reference's middle; the reference's
    // below it.
    assert!(mass("current", bins / 2, bins) > mass("current", 0, bins / 2), "{pressure}");
    assert!(mass("reference", 0, bins / 2) > 0);
    assert_eq!(call(&p, "GET", &format!("/api/v1/drift/{DEVICE}/{ALERT_SEQ}"), None).await.0, 404, "not a sketch");

    // The fleet's drift over time agrees with the device's reports (both sketches end at the
    // same time: one bucket, one device, in drift after the shifted one).
    let reports = call(&p, "GET", &format!("/api/v1/drift?device={DEVICE}"), None).await.1;
    let distances: Vec<f64> =
        reports["items"].as_array().unwrap().iter().map(|r| r["max_wasserstein"].as_f64().unwrap()).collect();
    let (status, fleet) = call(&p, "GET", "/api/v1/drift/fleet?points=60", None).await;
    assert_eq!(status, 200, "{fleet}");
    assert_eq!(fleet["alarm_sigma"], 3.5);
    let buckets = fleet["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "{fleet}");
    let b = &buckets[0];
    assert_eq!((b["model"].as_str(), b["reports"].as_u64(), b["devices"].as_u64()), (Some("pumps"), Some(2), Some(1)));
    assert_eq!(b["drifting"], 1, "{b}");
    let max = distances.iter().copied().fold(f64::MIN, f64::max);
    let min = distances.iter().copied().fold(f64::MAX, f64::min);
    assert_eq!((b["max_wasserstein"].as_f64(), b["min_wasserstein"].as_f64()), (Some(max), Some(min)));
    assert!((b["mean_wasserstein"].as_f64().unwrap() - (max + min) / 2.0).abs() < 1e-9, "{b}");
    let later =
        call(&p, "GET", &format!("/api/v1/drift/fleet?since_ms={}", b["end_ms"].as_i64().unwrap() + 1), None).await;
    assert_eq!(later.1["buckets"], json!([]), "nothing after the last report");
    assert_eq!(call(&p, "GET", "/api/v1/drift/fleet?points=0", None).await.0, 422);
    assert_eq!(call(&p, "GET", "/api/v1/drift/fleet?since_ms=5&until_ms=5", None).await.0, 422);

    // The audit status: intact with checkpoints, then broken by an edited record.
    let signer = impeller_hub::audit_signer(&p._dir.path().join("audit.secret.json")).unwrap();
    p.hub.store.audit_checkpoint(&signer).await.unwrap();
    let (status, audit) = call(&p, "GET", "/api/v1/audit/status", None).await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["intact"], true, "{audit}");
    assert!(audit["checkpoints_verified"].as_u64().unwrap() >= 1, "{audit}");
    assert_eq!(audit["audit_key"].as_str(), Some(signer.key_id()));
    let db = format!("sqlite:{}", p._dir.path().join("hub.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'someone else' WHERE seq = 3").execute(&pool).await.unwrap();
    let (_, audit) = call(&p, "GET", "/api/v1/audit/status", None).await;
    assert_eq!(audit["intact"], false, "{audit}");
    assert!(audit["problem"].as_str().unwrap().contains('3'), "{audit}");

    // The page itself, with a policy that admits only the hub's own script and style.
    let resp = reqwest::get(format!("{}/", p.base)).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{csp}");
    let html = resp.text().await.unwrap();
    assert!(html.contains("/ui/app.js"));
    let js = reqwest::get(format!("{}/ui/app.js", p.base)).await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(call(&p, "GET", "/api/v1/fleet", None).await.0, 200);
    let anonymous = reqwest::get(format!("{}/api/v1/fleet", p.base)).await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401, "the page is public, the data is not");
}

/// Chromium, its driver and Selenium, or why not.
fn browser() -> Result<(), String> {
    for bin in ["chromium", "chromedriver"] {
        if !Command::new(bin).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Err(format!("`{bin}` is not installed (apt-get install chromium chromium-driver)"));
        }
    }
    let selenium = Command::new("python3").args(["-c", "import selenium"]).output();
    if !selenium.is_ok_and(|o| o.status.success()) {
        return Err(
            "Selenium is not installed (pip install -r crates/impeller-hub/tests/peers/requirements.txt)".into()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_loads_in_headless_chromium_and_a_verdict_click_is_stored() {
    if let Err(why) = browser() {
        crate::skip_without_peer("every_page_loads_in_headless_chromium_and_a_verdict_click_is_stored", &why);
        return;
    }
    let p = populated().await;
    let shots = p._dir.path().join("screenshots");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/dashboard_check.py");
    let mut check = Command::new("python3");
    check
        .args([script, "--url", &p.base, "--token", &p.token, "--device", DEVICE, "--abort-deployment", "north"])
        .args(["--live-device", "pump-added-live"])
        .arg("--confirm-alert")
        .arg(ALERT_SEQ.to_string())
        .arg("--screenshots")
        .arg(&shots);
    let out = tokio::task::spawn_blocking(move || check.output()).await.unwrap().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser check failed:\n{log}");
    assert!(log.contains("live: pump-added-live on the audit page"), "the live check did not run:\n{log}");
    for page in ["fleet", "device", "models", "deployments", "drift", "audit", "alert"] {
        let shot = std::fs::metadata(shots.join(format!("{page}.png")));
        assert!(shot.is_ok_and(|m| m.len() > 10_000), "no screenshot of {page}:\n{log}");
    }
    // The click went through the page to the store.
    let stored = p.hub.store.feedback(DEVICE, ALERT_SEQ).await.unwrap();
    assert_eq!(stored.map(|f| f.verdict), Some(Verdict::Confirmed), "{log}");
    let deployments = p.hub.store.deployments().await.unwrap();
    let north = deployments.iter().find(|d| d.name == "north").unwrap();
    assert!(north.abort_reason.as_deref().is_some_and(|r| r.starts_with("aborted from the dashboard")), "{log}");
}
