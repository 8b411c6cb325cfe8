//! The agent as a real process: delivery to a receiving hub over a real MQTT broker, offline
//! operation, SIGKILL at random moments, and every package refusal while a model is running.

use std::io::{Read, Write};
use std::time::Duration;

use impeller_core::package::rollback::RollbackDirective;
use impeller_edge::outbox::{Outbox, OutboxConfig};

use crate::support::*;

/// Highest sequence number the agent of `site` ever assigned (agent stopped). Tests end with a
/// kill after draining: a graceful stop writes final aggregates that wait for the next run.
fn highest_seq(site: &Site) -> u64 {
    let o = Outbox::open(&site.dir.path().join("data/outbox"), OutboxConfig::default()).unwrap();
    o.next_seq() - 1
}

/// Waits until this run has replayed all `rows` of its source (each run replays the file from the
/// start, producing new messages) and then until the hub has acknowledged everything.
fn replay_and_drain(site: &Site, agent: &Agent, rows: usize, timeout: Duration) {
    let replayed = agent.wait_metric("readings_total", |v| v >= rows as f64, timeout);
    assert!(replayed.is_some(), "log tail:\n{}", tail(site));
    let drained = agent.wait_metric("outbox_pending_records", |v| v == 0.0, timeout);
    assert_eq!(drained, Some(0.0), "log tail:\n{}", tail(site));
}

/// Waits until the agent has appended nothing new for a second and has no backlog: a message
/// appended just after a drain (the last interval's aggregate under load) must be delivered
/// too before the final kill, or it is counted as missing although it waits in the outbox.
fn settle(agent: &Agent) {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = agent.metric("acked_seq");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = agent.metric("acked_seq");
        if now == last && agent.metric("outbox_pending_records") == Some(0.0) {
            return;
        }
        assert!(std::time::Instant::now() < until, "the agent never settled");
        last = now;
    }
}

fn tail(site: &Site) -> String {
    site.log().lines().rev().take(30).collect::<Vec<_>>().join("\n")
}

fn assert_complete(site: &Site, receiver: &Receiver) {
    let highest = highest_seq(site);
    let stored = receiver.stored.lock().unwrap();
    let missing: Vec<u64> = (1..=highest).filter(|s| !stored.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {highest} messages never arrived, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(receiver.acked(), highest, "the receiver's acknowledged prefix");
    let conflicts = receiver.conflicts.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(conflicts, 0, "a sequence number was reused for different content");
    for (seq, m) in stored.iter() {
        assert_eq!(m.prev, seq - 1, "no message was dropped, so every prev is the one before");
    }
}

#[test]
fn delivers_everything_to_the_hub_and_frees_the_outbox() {
    let Some(broker) = mqtt("delivers_everything_to_the_hub_and_frees_the_outbox") else { return };
    let site = Site::new(&broker, 600, 0.0, "");
    assert!(site.install(&package(3), &[]).status.success());
    let receiver = Receiver::start(&broker, &site.device);
    let agent = site.start();
    agent.wait_metric("readings_total", |v| v >= 600.0, Duration::from_secs(20)).unwrap();
    let pending = agent.wait_metric("outbox_pending_records", |v| v == 0.0, Duration::from_secs(20));
    assert_eq!(pending, Some(0.0), "log:\n{}", site.log());
    assert!(agent.metric("alerts_total").unwrap() >= 1.0, "the pressure drop raises an alert");
    agent.stop();
    // Messages produced at shutdown (last aggregates) are delivered by the next run.
    let agent = site.start();
    replay_and_drain(&site, &agent, 600, Duration::from_secs(20));
    agent.kill();
    assert_complete(&site, &receiver);
    let stored = receiver.stored.lock().unwrap();
    for kind in ["alerts", "telemetry", "samples", "sketches", "events"] {
        assert!(stored.values().any(|m| m.kind == kind), "no {kind} message arrived");
    }
    let segments = std::fs::read_dir(site.dir.path().join("data/outbox"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("seg-"))
        .count();
    assert_eq!(segments, 1, "acknowledged segments are deleted");
}

#[test]
fn keeps_everything_while_the_hub_is_away_then_delivers_it() {
    let Some(broker) = mqtt("keeps_everything_while_the_hub_is_away_then_delivers_it") else { return };
    let site = Site::new(&broker, 400, 0.0, "");
    assert!(site.install(&package(3), &[]).status.success());
    let agent = site.start();
    agent.wait_metric("readings_total", |v| v >= 400.0, Duration::from_secs(20)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // Nobody acknowledges: everything stays.
    let pending = agent.metric("outbox_pending_records").unwrap();
    assert!(pending > 20.0, "pending {pending}");
    assert!(agent.metric("scores_total").unwrap() > 350.0, "scoring goes on without the hub");
    // The hub comes back: after the acknowledgement timeout the agent sends everything again.
    let receiver = Receiver::start(&broker, &site.device);
    let drained = agent.wait_metric("outbox_pending_records", |v| v == 0.0, Duration::from_secs(30));
    assert_eq!(drained, Some(0.0), "log:\n{}", site.log());
    agent.stop();
    let agent = site.start();
    replay_and_drain(&site, &agent, 400, Duration::from_secs(20));
    agent.kill();
    assert_complete(&site, &receiver);
}

#[test]
fn sigkill_at_random_moments_loses_no_message() {
    let Some(broker) = mqtt("sigkill_at_random_moments_loses_no_message") else { return };
    let site = Site::new(&broker, 2000, 400.0, "");
    assert!(site.install(&package(3), &[]).status.success());
    let receiver = Receiver::start(&broker, &site.device);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let kills = std::env::var("IMPELLER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    for _ in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let agent = site.start();
        std::thread::sleep(Duration::from_millis(20 + rng % 400));
        agent.kill();
    }
    let agent = site.start();
    replay_and_drain(&site, &agent, 2000, Duration::from_secs(60));
    agent.stop();
    let agent = site.start();
    replay_and_drain(&site, &agent, 2000, Duration::from_secs(20));
    settle(&agent);
    agent.kill();
    assert_complete(&site, &receiver);
    // Independently of sequence numbers: every alert in the local journal reached the hub.
    let journal = impeller_edge::journal::Journal::new(&site.dir.path().join("data")).recent(usize::MAX).unwrap();
    let stored = receiver.stored.lock().unwrap();
    let received: std::collections::BTreeSet<i64> = stored
        .values()
        .filter(|m| m.kind == "alerts")
        .map(|m| serde_json::from_str::<impeller_core::wire::AlertBody>(&m.body).unwrap().started_ms)
        .collect();
    drop(stored);
    assert!(!journal.is_empty(), "the replay should raise alerts");
    for a in &journal {
        assert!(
            received.contains(&a.started_ms),
            "alert {} is in the local journal but never reached the hub",
            a.started_ms
        );
    }
    eprintln!(
        "{kills} kills: {} messages, {} duplicates on the wire (stored once each)",
        highest_seq(&site),
        receiver.duplicates.load(std::sync::atomic::Ordering::Relaxed)
    );
}

fn unpack(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (e.path().unwrap().to_string_lossy().into_owned(), data)
        })
        .collect()
}

fn pack(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, data.as_slice()).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fn edited(bytes: &[u8], edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> Vec<u8> {
    let mut files = unpack(bytes);
    edit(&mut files);
    pack(&files)
}

/// Installs a package of `model` (self-test included) and replays a pressure drop: the agent
/// scores every frame and raises an alert.
fn installs_scores_and_alarms(model: &impeller_core::Model, training: &[impeller_core::Frame]) {
    // No broker needed: the agent scores offline.
    let site = Site::new("mqtt://127.0.0.1:9", 600, 0.0, "");
    let bytes = impeller_core::package::build(model, training, &spec(3, "gw-test"), &signer(1)).unwrap();
    let out = site.install(&bytes, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let agent = site.start();
    agent.wait_metric("readings_total", |v| v >= 600.0, Duration::from_secs(20)).unwrap();
    assert_eq!(agent.metric("model_release"), Some(3.0), "{}", site.log());
    assert!(agent.metric("scores_total").unwrap() > 500.0, "{}", site.log());
    assert!(agent.metric("alerts_total").unwrap() >= 1.0, "the pressure drop raises an alert: {}", site.log());
    agent.kill();
}

#[test]
fn an_int8_package_installs_passes_its_self_test_and_alarms() {
    let (model, training) = model();
    let int8 = impeller_core::Model { detector: model.detector.to_int8().unwrap(), ..model };
    installs_scores_and_alarms(&int8, &training);
}

#[test]
fn an_adopted_model_package_installs_passes_its_self_test_and_alarms() {
    // A model brought from elsewhere has this shape: a forest fitted on the raw readings, an
    // identity scaler, and the calibration fitted here (`impeller_core::adopt_parts`).
    use impeller_core::detector::{Detector, IsolationForest, IsolationForestConfig};
    use impeller_core::features::FeatureKind;
    let (_, training) = model();
    let x = impeller_core::matrix::Matrix::from_rows(
        channels().len(),
        &training.iter().map(|f| &f.values[..]).collect::<Vec<_>>(),
    );
    let forest =
        IsolationForest::fit(&IsolationForestConfig::default(), &x, &mut impeller_core::rng::Rng::new(5)).unwrap();
    let mut cfg = impeller_core::TrainConfig::new(impeller_core::detector::DetectorConfig::Zscore(Default::default()));
    cfg.features.kinds = vec![FeatureKind::Value];
    cfg.calibration.margin = 1.0;
    let adopted =
        impeller_core::adopt_parts(&channels(), &[&training], &cfg, Detector::IsolationForest(forest)).unwrap();
    installs_scores_and_alarms(&adopted, &training);
}

#[test]
fn refuses_every_bad_package_while_the_current_model_keeps_running() {
    // No broker needed: the agent scores offline.
    let site = Site::new("mqtt://127.0.0.1:9", 3000, 20.0, "");
    std::fs::write(
        &site.config,
        std::fs::read_to_string(&site.config).unwrap().replace("[models]", "[models]\nmax_package_bytes = 200000"),
    )
    .unwrap();
    assert!(site.install(&package(3), &[]).status.success());
    let agent = site.start();
    assert_eq!(agent.wait_metric("model_release", |v| v == 3.0, Duration::from_secs(10)), Some(3.0), "{}", site.log());
    agent.wait_metric("scores_total", |v| v > 0.0, Duration::from_secs(10)).unwrap();

    let good = package(4);
    let (model, training) = model();
    let build = |spec: impeller_core::package::PackageSpec, by: u8| {
        impeller_core::package::build(&model, &training, &spec, &signer(by)).unwrap()
    };
    let mut expired = spec(5, "gw-test");
    expired.created_ms -= 10 * 86_400_000;
    expired.expires_ms = now_ms() - 86_400_000;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unsigned", edited(&good, |f| f.retain(|(n, _)| n != "signature.json"))),
        ("unknown_key", build(spec(5, "gw-test"), 2)),
        ("bad_signature", edited(&good, |f| f[0].1[40] ^= 1)),
        (
            "artifact_mismatch",
            edited(&good, |f| {
                let model = f.iter_mut().find(|(n, _)| n == "model.json").unwrap();
                let i = model.1.len() / 2;
                model.1[i] = if model.1[i] == b'1' { b'2' } else { b'1' };
            }),
        ),
        ("not_newer", package(2)),
        ("not_newer", package(3)),
        ("expired", build(expired, 1)),
        ("wrong_target", build(spec(6, "other-gateway"), 1)),
        ("too_large", [good.clone(), vec![0u8; 250_000]].concat()),
        ("path_escape", edited(&good, |f| f.push(("../../etc/cron.d/x".into(), b"* * * * * root evil".to_vec())))),
        ("truncated", good[..good.len() / 2].to_vec()),
    ];
    for (code, bytes) in &cases {
        let out = site.install(bytes, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{code}: {err}");
        let expected =
            if *code == "too_large" { "more than the 200000 allowed".to_string() } else { format!("refused ({code})") };
        assert!(err.contains(&expected) && err.contains("current model keeps running"), "{code}: {err}");
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(agent.metric("model_release"), Some(3.0), "a refused package must not replace the running model");

    // A valid newer release is taken up by the running agent.
    assert!(site.install(&good, &[]).status.success());
    assert_eq!(agent.wait_metric("model_release", |v| v == 4.0, Duration::from_secs(10)), Some(4.0));
    // Going back needs a signed rollback directive.
    let directive = RollbackDirective::new("p101", 3, "gw-test", now_ms(), now_ms() + 86_400_000).sign(&signer(1));
    let d = site.dir.path().join("rollback.json");
    std::fs::write(&d, directive.to_json()).unwrap();
    let out = site.install(&package(3), &["--rollback", d.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(agent.wait_metric("model_release", |v| v == 3.0, Duration::from_secs(10)), Some(3.0));
    assert!(agent.metric("scores_total").unwrap() > 0.0);
    agent.stop();
}
