//! Over-the-air updates end to end: an in-process hub (embedded broker, SQLite, HTTP API) and
//! a real agent process. Packages are uploaded and deployed through the API, the agent finds
//! them in its retained desired state, downloads, verifies and switches, and the hub shows each
//! device's state per deployment.

use std::time::{Duration, Instant};

use impeller_core::deploy::PackageRef;
use impeller_core::package::build;
use impeller_edge::update::{DownloadError, Downloader};
use impeller_hub::auth::Role;
use impeller_hub::tls::TlsFiles;
use impeller_hub::{Hub, HubConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use impeller_core::detector::{DetectorConfig, PcaConfig};
use impeller_core::{TrainConfig, train};

use crate::support::{Site, channels, frames, free_port, model, package, signer, spec};
use impeller_hub::store::FleetStore;

struct TestHub {
    rt: tokio::runtime::Runtime,
    hub: Hub,
    api: String,
    admin: String,
    packages_dir: std::path::PathBuf,
    client: reqwest::Client,
}

impl TestHub {
    /// A hub trusting the site's signing key, with device authentication on.
    fn start(site: &Site, mqtt_port: u16) -> TestHub {
        Self::serving(site, mqtt_port, None)
    }

    /// The same, both listeners over TLS with `tls` when given.
    fn serving(site: &Site, mqtt_port: u16, tls: Option<TlsFiles>) -> TestHub {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let packages_dir = site.dir.path().join("hub-packages");
        let cfg = HubConfig {
            database: format!("sqlite:{}", site.dir.path().join("hub.db").display()),
            mqtt_listen: Some(format!("127.0.0.1:{mqtt_port}").parse().unwrap()),
            device_auth: true,
            http_listen: Some("127.0.0.1:0".parse().unwrap()),
            mqtt_tls: tls.clone(),
            http_tls: tls.clone(),
            packages_dir: packages_dir.clone(),
            trusted_keys: vec![site.dir.path().join("ops.public.json")],
            ..Default::default()
        };
        let hub = rt.block_on(Hub::start(&cfg)).unwrap();
        let port = hub.http_addr.unwrap().port();
        let (_, admin) = rt.block_on(hub.store.add_token("test-admin", Role::Admin, "test")).unwrap();
        let (api, client) = match &tls {
            None => (format!("http://127.0.0.1:{port}"), reqwest::Client::new()),
            Some(files) => {
                let ca = reqwest::Certificate::from_pem(&std::fs::read(&files.cert).unwrap()).unwrap();
                (format!("https://localhost:{port}"), reqwest::Client::builder().tls_certs_only([ca]).build().unwrap())
            }
        };
        TestHub { rt, hub, api, admin, packages_dir, client }
    }

    /// Sends a request with `token` (None: no credentials); returns the status and JSON body.
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut req = self.client.request(method.parse().unwrap(), format!("{}{path}", self.api));
            if let Some(t) = token {
                req = req.header("authorization", t);
            }
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
            let bytes = resp.bytes().await.unwrap();
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status >= 400 {
                assert_eq!(ctype.as_deref(), Some("application/problem+json"), "{path}: {value}");
            }
            (status, value)
        })
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.admin)
    }

    fn upload(&self, pkg: Vec<u8>) -> String {
        let (status, body) = self.call("POST", "/api/v1/packages", Some(&self.bearer()), Some(pkg));
        assert_eq!(status, 201, "{body}");
        body["sha256"].as_str().unwrap().to_string()
    }

    fn deploy(&self, name: &str, sha256: &str, condition: &str, priority: i64) {
        let body = json!({"name": name, "package_sha256": sha256, "target_condition": condition, "priority": priority});
        let (status, body) =
            self.call("POST", "/api/v1/deployments", Some(&self.bearer()), Some(serde_json::to_vec(&body).unwrap()));
        assert_eq!(status, 201, "{body}");
    }

    /// Waits until `device` reports `state` for deployment `name`; returns its status entry.
    fn wait_state(&self, name: &str, device: &str, state: &str, site: &Site) -> Value {
        let until = Instant::now() + Duration::from_secs(40);
        loop {
            let body = self.status(name);
            let entry = body["devices"].as_array().unwrap().iter().find(|d| d["device"] == device).cloned();
            if let Some(e) = entry.filter(|e| e["state"] == state) {
                return e;
            }
            assert!(Instant::now() < until, "{device} never reached {state} in {name}: {body}\nlog:\n{}", site.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Provisions the site's device on the hub and gives the agent its credentials and the API.
fn provision(hub: &TestHub, site: &Site, tags: Value) -> String {
    let body = json!({"id": site.device, "tags": tags, "profile": "gw-test"});
    let (status, creds) =
        hub.call("POST", "/api/v1/devices", Some(&hub.bearer()), Some(serde_json::to_vec(&body).unwrap()));
    assert_eq!(status, 201, "{creds}");
    let secret = creds["secret"].as_str().unwrap().to_string();
    let config = std::fs::read_to_string(&site.config).unwrap().replace(
        "ack_timeout_s = 3",
        &format!("ack_timeout_s = 3\nusername = \"{}\"\npassword = \"{secret}\"\napi = \"{}\"", site.device, hub.api),
    );
    std::fs::write(&site.config, config).unwrap();
    secret
}

/// An agent's site and a hub whose broker it is configured to use. The replay is long enough
/// that the agent keeps running through the whole test.
fn site_and_hub() -> (Site, TestHub) {
    let port = free_port();
    let site = Site::new(&format!("mqtt://127.0.0.1:{port}"), 200_000, 20.0, "");
    let hub = TestHub::start(&site, port);
    (site, hub)
}

/// TLS both ways, trusting only the hub's own certificate (`hub.ca_cert`): the agent logs in
/// at `mqtts://`, delivers what it produces, finds its desired state, downloads the package
/// from `https://` and runs it.
#[test]
fn an_agent_reaches_a_hub_over_tls_for_everything() {
    let port = free_port();
    let site = Site::new(&format!("mqtts://localhost:{port}"), 200_000, 20.0, "");
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let files = TlsFiles { cert: site.dir.path().join("hub.pem"), key: site.dir.path().join("hub.key") };
    std::fs::write(&files.cert, made.cert.pem()).unwrap();
    std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
    let hub = TestHub::serving(&site, port, Some(files.clone()));
    provision(&hub, &site, json!({"site": "north"}));
    let config = std::fs::read_to_string(&site.config).unwrap();
    let trusting = config.replace("ack_timeout_s = 3", &format!("ack_timeout_s = 3\nca_cert = {:?}", files.cert));
    std::fs::write(&site.config, trusting).unwrap();
    let agent = site.start();
    let v1 = hub.upload(package(1));
    hub.deploy("north-v1", &v1, "tags.site = 'north'", 1);
    hub.wait_state("north-v1", &site.device, "active", &site);
    assert_eq!(agent.wait_metric("model_release", |v| v == 1.0, Duration::from_secs(5)), Some(1.0));
    assert!(agent.wait_metric("acked_seq", |v| v > 0.0, Duration::from_secs(20)).is_some(), "{}", site.log());
    agent.stop();
}

#[test]
fn a_deployed_package_is_downloaded_verified_and_run_and_bad_ones_are_refused() {
    let (site, hub) = site_and_hub();
    provision(&hub, &site, json!({"site": "north", "manufacturer": "acme"}));
    let agent = site.start();
    assert!(agent.wait_metric("readings_total", |v| v > 0.0, Duration::from_secs(20)).is_some(), "{}", site.log());
    assert_eq!(agent.metric("model_release"), Some(0.0), "no model before the first deployment");

    // First model, over the air.
    let v1 = hub.upload(package(1));
    hub.deploy("north-v1", &v1, "tags.site = 'north'", 1);
    let e = hub.wait_state("north-v1", &site.device, "active", &site);
    assert_eq!(e["running_release"], 1);
    assert_eq!(agent.wait_metric("model_release", |v| v == 1.0, Duration::from_secs(5)), Some(1.0));
    assert!(agent.wait_metric("scores_total", |v| v > 0.0, Duration::from_secs(10)).is_some(), "scores with it");

    // A newer release at a higher priority replaces it.
    let v2 = hub.upload(package(2));
    hub.deploy("north-v2", &v2, "tags.manufacturer = 'acme' AND tags.site = 'north'", 2);
    hub.wait_state("north-v2", &site.device, "active", &site);
    assert_eq!(agent.wait_metric("model_release", |v| v == 2.0, Duration::from_secs(5)), Some(2.0));
    let (_, desired) = hub.call("GET", &format!("/api/v1/devices/{}/desired", site.device), Some(&hub.bearer()), None);
    assert_eq!(desired["desired"]["deployment"], "north-v2");
    assert_eq!(desired["assignment"]["matched"], json!(["north-v2", "north-v1"]), "{desired}");

    // Signed by a trusted key but built for another device class: refused on the device.
    let (m, training) = model();
    let other_target = build(&m, &training, &spec(3, "other-class"), &signer(1)).unwrap();
    let wrong = hub.upload(other_target);
    hub.deploy("wrong-target", &wrong, "*", 3);
    let e = hub.wait_state("wrong-target", &site.device, "failed", &site);
    assert!(e["reason"].as_str().unwrap().contains("other-class"), "{e}");
    assert_eq!(e["running_release"], 2, "the current model keeps running");

    // An older release (a rollback attack through the hub): refused.
    hub.deploy("back-to-v1", &v1, "*", 4);
    let e = hub.wait_state("back-to-v1", &site.device, "failed", &site);
    assert!(e["reason"].as_str().unwrap().contains("release"), "{e}");
    assert_eq!(agent.metric("model_release"), Some(2.0));
    assert!(agent.metric("model_installs_refused_total").unwrap() >= 2.0);

    // Stopping the newest deployments hands the device back to the one still applying: v2,
    // which it already runs, so it says so without downloading anything.
    for name in ["back-to-v1", "wrong-target"] {
        let (status, body) = hub.call("DELETE", &format!("/api/v1/deployments/{name}"), Some(&hub.bearer()), None);
        assert_eq!(status, 204, "{body}");
    }
    hub.wait_state("north-v2", &site.device, "active", &site);
    agent.stop();
}

#[test]
fn the_api_refuses_whoever_may_not_do_something() {
    let (site, hub) = site_and_hub();
    let secret = provision(&hub, &site, json!({"site": "north"}));
    let (status, body) = hub.call("GET", "/api/v1/devices", None, None);
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, _) = hub.call("GET", "/api/v1/devices", Some("Bearer imp_0000_wrong"), None);
    assert_eq!(status, 401);

    let (_, reader) = hub.rt.block_on(hub.hub.store.add_token("viewer", Role::Read, "test")).unwrap();
    let reader = format!("Bearer {reader}");
    let (status, body) = hub.call("GET", "/api/v1/devices", Some(&reader), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["id"], site.device.as_str());
    let dep = serde_json::to_vec(&json!({"name": "x", "package_sha256": "ab".repeat(32), "target_condition": "*"}));
    let (status, body) = hub.call("POST", "/api/v1/deployments", Some(&reader), Some(dep.unwrap()));
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");

    // A device reads its own desired state, not another's, and cannot use operator endpoints.
    let device = impeller_hub::auth::basic(&site.device, &secret);
    let (status, _) = hub.call("GET", &format!("/api/v1/devices/{}/desired", site.device), Some(&device), None);
    assert_eq!(status, 200);
    let (status, _) = hub.call("GET", "/api/v1/devices/someone-else/desired", Some(&device), None);
    assert_eq!(status, 403);
    let (status, _) = hub.call("GET", "/api/v1/deployments", Some(&device), None);
    assert_eq!(status, 403);
    let wrong = impeller_hub::auth::basic(&site.device, "not-the-secret");
    let (status, _) = hub.call("GET", &format!("/api/v1/devices/{}/desired", site.device), Some(&wrong), None);
    assert_eq!(status, 401);

    // Bad input says what was wrong.
    let bad = serde_json::to_vec(
        &json!({"name": "x", "package_sha256": "ab".repeat(32), "target_condition": "tags.site = north"}),
    );
    let (status, body) = hub.call("POST", "/api/v1/deployments", Some(&hub.bearer()), Some(bad.unwrap()));
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("column 13"), "{body}");
    let (status, body) = hub.call("POST", "/api/v1/packages", Some(&hub.bearer()), Some(b"not a package".to_vec()));
    assert_eq!((status, body["code"].as_str()), (422, Some("package_refused")), "{body}");
    let untrusted = build(&model().0, &model().1, &spec(1, "gw-test"), &signer(9)).unwrap();
    let (status, body) = hub.call("POST", "/api/v1/packages", Some(&hub.bearer()), Some(untrusted));
    assert_eq!(status, 422, "a package signed by an unknown key is refused at upload: {body}");
    let (status, body) = hub.call("GET", "/api/v1/nowhere", Some(&hub.bearer()), None);
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    // Revoked: refused at once by the API.
    let (status, _) = hub.call("POST", &format!("/api/v1/devices/{}/revoke", site.device), Some(&hub.bearer()), None);
    assert_eq!(status, 204);
    let (status, _) = hub.call("GET", &format!("/api/v1/devices/{}/desired", site.device), Some(&device), None);
    assert_eq!(status, 401);
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let (site, hub) = site_and_hub();
    let secret = provision(&hub, &site, json!({}));
    let bytes = package(1);
    let sha = hub.upload(bytes.clone());
    let pkg = PackageRef {
        sha256: sha.clone(),
        size: bytes.len() as u64,
        model: "p101".into(),
        version: "1.1.0".into(),
        release: 1,
    };
    let dir = site.dir.path().join("downloads");
    let d = Downloader::new(&hub.api, &site.device, &secret, &dir, 1 << 30);
    let half = bytes.len() / 2;

    // The first half arrived before the link dropped. Spoil the hub's copy of that half: only a
    // download that asks for the rest, and keeps what it has, still gets the right package.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(d.part_path(&sha), &bytes[..half]).unwrap();
    let stored = hub.packages_dir.join(format!("{sha}.pkg"));
    let mut spoiled = bytes.clone();
    spoiled[..half].fill(0);
    std::fs::write(&stored, &spoiled).unwrap();
    let got = d.fetch(&pkg).unwrap();
    assert_eq!(Sha256::digest(&got).as_slice(), Sha256::digest(&bytes).as_slice());

    // Without a part file the whole (spoiled) file comes, fails its hash and is thrown away.
    std::fs::remove_file(d.part_path(&sha)).unwrap();
    let e = d.fetch(&pkg).unwrap_err();
    assert!(matches!(e, DownloadError::Hash { .. }), "{e}");
    assert!(!d.part_path(&sha).exists(), "a wrong download is not kept");

    // Restored on the hub: the next attempt starts over and succeeds.
    std::fs::write(&stored, &bytes).unwrap();
    assert_eq!(d.fetch(&pkg).unwrap(), bytes);

    // Wrong credentials: an HTTP error, which the agent retries later.
    let bad = Downloader::new(&hub.api, &site.device, "wrong", &dir, 1 << 30);
    std::fs::remove_file(d.part_path(&sha)).unwrap();
    let e = bad.fetch(&pkg).unwrap_err();
    assert!(e.is_transient() && e.to_string().contains("401"), "{e}");
}

/// A correctly signed package whose model alarms on nearly every frame of normal operation.
fn hair_trigger_package(release: u64) -> Vec<u8> {
    let training = frames(400, usize::MAX);
    let mut cfg = TrainConfig::new(DetectorConfig::Pca(PcaConfig::default()));
    cfg.calibration.margin = 0.01;
    let m = train(&channels(), &training, &cfg).unwrap();
    build(&m, &training, &spec(release, "gw-test"), &signer(1)).unwrap()
}

fn set_models(site: &Site, settings: &str) {
    let config =
        std::fs::read_to_string(&site.config).unwrap().replace("[models]\n", &format!("[models]\n{settings}\n"));
    std::fs::write(&site.config, config).unwrap();
}

#[test]
fn a_model_that_alarms_far_more_is_refused_in_shadow() {
    let (site, hub) = site_and_hub();
    provision(&hub, &site, json!({}));
    let agent = site.start();
    let v1 = hub.upload(package(1));
    hub.deploy("v1", &v1, "*", 1);
    hub.wait_state("v1", &site.device, "active", &site);
    // Enough recent frames scored by v1 for a judgement (min_trial_frames = 100 by default).
    assert!(agent.wait_metric("scores_total", |v| v >= 150.0, Duration::from_secs(30)).is_some(), "{}", site.log());

    let hair = hub.upload(hair_trigger_package(2));
    hub.deploy("hair-trigger", &hair, "*", 2);
    let e = hub.wait_state("hair-trigger", &site.device, "failed", &site);
    let reason = e["reason"].as_str().unwrap();
    assert!(reason.contains("shadow scoring") && reason.contains("alarms on"), "{reason}");
    assert_eq!(agent.metric("model_release"), Some(1.0), "v1 keeps running");
    agent.stop();
}

/// An agent with `models` settings that ran v1 and has just switched to a hair-trigger v2;
/// returns it with both packages' hashes.
fn switched_to_hair_trigger(site: &Site, hub: &TestHub, models: &str) -> (crate::support::Agent, String, String) {
    set_models(site, models);
    provision(hub, site, json!({}));
    let agent = site.start();
    let v1 = hub.upload(package(1));
    hub.deploy("v1", &v1, "*", 1);
    hub.wait_state("v1", &site.device, "active", site);
    let hair = hub.upload(hair_trigger_package(2));
    hub.deploy("hair-trigger", &hair, "*", 2);
    hub.wait_state("hair-trigger", &site.device, "active", site);
    (agent, v1, hair)
}

#[test]
fn a_model_that_does_worse_after_the_switch_is_rolled_back_by_the_device() {
    let (site, hub) = site_and_hub();
    // No shadow judgement (one recent reading is too few), so the bad model gets installed and
    // only the health watch can catch it.
    let (agent, v1, _) =
        switched_to_hair_trigger(&site, &hub, "shadow_readings = 1\nmin_trial_frames = 50\nhealth_window_s = 120");
    let e = hub.wait_state("hair-trigger", &site.device, "rolled_back", &site);
    assert!(e["reason"].as_str().unwrap().contains("health watch"), "{e}");
    assert_eq!(e["running_release"], 1);
    assert_eq!(agent.wait_metric("model_release", |v| v == 1.0, Duration::from_secs(5)), Some(1.0));
    agent.stop();

    // The rollback is durable: after a restart the device runs v1, and says so.
    let state: Value =
        serde_json::from_slice(&std::fs::read(site.dir.path().join("data/state.json")).unwrap()).unwrap();
    assert_eq!(state["active_sha256"], v1.as_str());
    let agent = site.start();
    assert_eq!(agent.wait_metric("model_release", |v| v == 1.0, Duration::from_secs(10)), Some(1.0));
    agent.stop();
}

/// A device under a confirmed fault that rolls a new model back does not stop its rollout: it
/// compared alarm rates on a faulty pump, where a better model alarms more.
#[test]
fn a_rollback_on_a_pump_with_a_confirmed_fault_does_not_abort_the_rollout() {
    a_trial_lost_under_a_confirmed_fault_does_not_abort(
        "shadow_readings = 1\nmin_trial_frames = 50\nhealth_window_s = 120",
        "rolled_back",
    );
}

/// Nor does one that refuses it in shadow scoring for alarming more (seen at 1,000 pumps: a pump
/// two hours into cavitation, confirmed, refused a retrained version and aborted its rollout).
#[test]
fn a_refusal_on_a_pump_with_a_confirmed_fault_does_not_abort_the_rollout() {
    a_trial_lost_under_a_confirmed_fault_does_not_abort("min_trial_frames = 50", "failed");
}

/// One device with a confirmed fault loses a hair-trigger model's trial (`lost`: `failed` in
/// shadow, `rolled_back` in the health watch) under a rollout that allows no failure nor
/// rollback: the rollout goes on.
fn a_trial_lost_under_a_confirmed_fault_does_not_abort(models: &str, lost: &str) {
    let (site, hub) = site_and_hub();
    set_models(&site, models);
    provision(&hub, &site, json!({}));
    let agent = site.start();
    let v1 = hub.upload(package(1));
    hub.deploy("v1", &v1, "*", 1);
    hub.wait_state("v1", &site.device, "active", &site);
    // Enough recent frames scored by v1 for a shadow judgement.
    assert!(agent.wait_metric("scores_total", |v| v >= 100.0, Duration::from_secs(30)).is_some(), "{}", site.log());
    let now = impeller_hub::store::now_ms();
    let incident = json!({"device": site.device, "start_ms": now - 3_600_000, "end_ms": now, "kind": "cavitation"});
    let (status, body) =
        hub.call("POST", "/api/v1/incidents", Some(&hub.bearer()), Some(serde_json::to_vec(&incident).unwrap()));
    assert_eq!(status, 201, "{body}");

    let hair = hub.upload(hair_trigger_package(2));
    // A soak long enough that the device's verdict comes while the wave is still judged.
    let rollout = json!({"waves": [100], "soak_s": 600, "min_active": 0.0, "max_failed": 0.0, "max_rolled_back": 0.0});
    hub.deploy_staged("hair-trigger", &hair, 2, rollout);
    let e = hub.wait_state("hair-trigger", &site.device, lost, &site);
    assert!(e["reason"].as_str().unwrap().contains("alarms on"), "{e}");
    // The status judges the wave afresh; the deployment loop has had a round to act on it.
    std::thread::sleep(Duration::from_secs(6));
    let status = hub.status("hair-trigger");
    assert_eq!(status["rollout"]["phase"], "rolling_out", "{status}");
    let note = status["rollout"]["note"].as_str().unwrap_or_default();
    assert!(note.contains("soaks") && !note.contains("abort"), "{status}");
    agent.stop();
}

impl TestHub {
    fn deploy_staged(&self, name: &str, sha256: &str, priority: i64, rollout: Value) {
        let body = json!({"name": name, "package_sha256": sha256, "target_condition": "*", "priority": priority,
                          "rollout": rollout});
        let (status, body) =
            self.call("POST", "/api/v1/deployments", Some(&self.bearer()), Some(serde_json::to_vec(&body).unwrap()));
        assert_eq!(status, 201, "{body}");
    }

    fn status(&self, name: &str) -> Value {
        let (status, body) = self.call("GET", &format!("/api/v1/deployments/{name}"), Some(&self.bearer()), None);
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until deployment `name`'s rollout reaches `phase`; returns its status.
    fn wait_phase(&self, name: &str, phase: &str, sites: &[Site]) -> Value {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let body = self.status(name);
            if body["rollout"]["phase"] == phase {
                return body;
            }
            let logs: Vec<String> = sites.iter().map(Site::log).collect();
            assert!(Instant::now() < until, "{name} never reached {phase}: {body}\nlogs:\n{}", logs.join("\n---\n"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Three agents: a good release rolls out wave by wave; a release that raises far more alerts
/// is stopped by the alert-rate gate after its first wave, and the hub rolls that device back
/// while the others never download it.
#[test]
fn a_staged_rollout_advances_wave_by_wave_and_a_failed_gate_rolls_its_wave_back() {
    let port = free_port();
    let broker = format!("mqtt://127.0.0.1:{port}");
    let sites: Vec<Site> = (0..3).map(|_| Site::new(&broker, 200_000, 20.0, "")).collect();
    let hub = TestHub::start(&sites[0], port);
    let agents: Vec<_> = sites
        .iter()
        .map(|site| {
            // No shadow scoring and no health watch: here only the hub's gates judge.
            set_models(site, "shadow_readings = 1\nhealth_window_s = 0");
            provision(&hub, site, json!({"site": "north"}));
            site.start()
        })
        .collect();
    let v1 = hub.upload(package(1));
    hub.deploy("v1", &v1, "*", 1);
    for site in &sites {
        hub.wait_state("v1", &site.device, "active", site);
    }

    // v2: a third of the fleet first (one device), then everyone once it runs it for 4 s.
    let v2 = hub.upload(package(2));
    hub.deploy_staged("v2", &v2, 2, json!({"waves": [33, 100], "soak_s": 4, "min_active": 1.0}));
    let until = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let devices = hub.status("v2")["rollout"]["waves"][0]["devices"].clone();
        if devices.as_array().is_some_and(|d| !d.is_empty()) || Instant::now() > until {
            break devices;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(first.as_array().map(Vec::len), Some(1), "{first}");
    let waiting = sites.iter().find(|s| first[0] != s.device.as_str()).unwrap();
    let (_, view) = hub.call("GET", &format!("/api/v1/devices/{}/desired", waiting.device), Some(&hub.bearer()), None);
    assert_eq!(view["desired"]["deployment"], "v1", "{view}");
    assert!(view["assignment"]["reason"].as_str().unwrap().contains("has not reached this device yet"), "{view}");

    let done = hub.wait_phase("v2", "complete", &sites);
    assert_eq!(done["counts"], json!({"active": 3}), "{done}");
    let waves = done["rollout"]["waves"].as_array().unwrap();
    assert_eq!((waves[0]["devices"].as_array().unwrap().len(), waves[1]["devices"].as_array().unwrap().len()), (1, 2));
    // The second wave started only after the first device ran v2 for the soak time.
    let deployment = &done["deployment"];
    assert!(deployment["wave_started_ms"].as_i64().unwrap() >= deployment["created_ms"].as_i64().unwrap() + 4000);

    // v3 alarms on nearly everything: its first device installs it (nothing on the device
    // stops it here), the alert-rate gate aborts the rollout, the hub rolls that device back.
    let v3 = hub.upload(hair_trigger_package(3));
    hub.deploy_staged(
        "v3",
        &v3,
        3,
        json!({"waves": [33, 100], "soak_s": 3, "min_active": 1.0, "max_alert_rate_increase": 5.0}),
    );
    let aborted = hub.wait_phase("v3", "aborted", &sites);
    let note = aborted["rollout"]["note"].as_str().unwrap();
    assert!(note.contains("alerts rose from"), "{aborted}");
    let member = aborted["rollout"]["waves"][0]["devices"][0].as_str().unwrap().to_string();
    let site = sites.iter().find(|s| s.device == member).unwrap();
    let e = hub.wait_state("v3", &member, "rolled_back", site);
    assert!(e["reason"].as_str().unwrap().contains("the hub aborted `v3`"), "{e}");
    assert_eq!(e["running_release"], 2);
    hub.wait_state("v2", &member, "active", site);
    assert_eq!(aborted["devices"].as_array().unwrap().len(), 1, "only the first wave took v3: {aborted}");
    for (site, agent) in sites.iter().zip(&agents) {
        assert_eq!(
            agent.wait_metric("model_release", |v| v == 2.0, Duration::from_secs(10)),
            Some(2.0),
            "{}",
            site.log()
        );
    }
    // v3 is refused from now on: aborting again is a conflict.
    let (status, body) = hub.call("POST", "/api/v1/deployments/v3/abort", Some(&hub.bearer()), None);
    assert_eq!(status, 409, "{body}");
    for agent in agents {
        agent.stop();
    }
}

/// An agent stopped during a health watch resumes it when it starts again: the bad model is
/// still caught and rolled back, not left to run unwatched.
#[test]
fn a_health_watch_resumes_after_a_restart() {
    let (site, hub) = site_and_hub();
    // The watch needs 300 frames of the old model (~15 s at this replay speed) to judge, so
    // the agent is stopped long before it can.
    let (agent, _, hair) =
        switched_to_hair_trigger(&site, &hub, "shadow_readings = 1\nmin_trial_frames = 300\nhealth_window_s = 600");
    agent.stop();
    let state: Value =
        serde_json::from_slice(&std::fs::read(site.dir.path().join("data/state.json")).unwrap()).unwrap();
    assert_eq!(state["watch"]["sha256"], hair.as_str(), "the watch is on disk: {state}");

    let agent = site.start();
    let e = hub.wait_state("hair-trigger", &site.device, "rolled_back", &site);
    assert!(e["reason"].as_str().unwrap().contains("health watch"), "{e}");
    assert_eq!(agent.wait_metric("model_release", |v| v == 1.0, Duration::from_secs(5)), Some(1.0));
    assert!(site.log().contains("resuming the new model's health watch"), "{}", site.log());
    agent.stop();
    let state: Value =
        serde_json::from_slice(&std::fs::read(site.dir.path().join("data/state.json")).unwrap()).unwrap();
    assert!(state.get("watch").is_none(), "the watch ended with the rollback: {state}");
}
