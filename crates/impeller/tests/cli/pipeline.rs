//! `impeller pipeline run` on SKAB against a running hub, as an ML engineer uses it: the first
//! run registers a ready version with a package per target; an unchanged rerun registers
//! nothing; a candidate worse than the champion is registered as failed with the gate that
//! failed and exit code 4; aliases, versions and lineage read back through the API; the audit
//! trail links the dataset to the packages.

use std::path::Path;

use crate::util::{TestHub, impeller, skab_dir, stderr, stdout, token};
use impeller_hub::store::TelemetryStore;

/// A hub in `dir/hub` that trusts the key `dir/ops.secret.json` signs with (and runs pipelines
/// with it when `runs_pipelines`), and an admin token.
fn hub_trusting_ops(dir: &Path, runs_pipelines: bool) -> (TestHub, String) {
    let out = impeller(&["keys", "generate", "--name", "ops", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let data = dir.join("hub");
    let admin = token(&data, "admin");
    let (public, secret) = (dir.join("ops.public.json"), dir.join("ops.secret.json"));
    let mut args = vec!["--trusted-key", public.to_str().unwrap()];
    if runs_pipelines {
        args.extend(["--pipeline-key", secret.to_str().unwrap()]);
    }
    (TestHub::start(&data, &args), admin)
}

#[test]
fn a_pipeline_registers_gates_and_reruns_for_free() {
    let Some(skab) = skab_dir("a_pipeline_registers_gates_and_reruns_for_free") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).display().to_string();
    let (hub, admin) = hub_trusting_ops(dir.path(), false);
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../impeller-pipeline/config/pipeline.toml");
    let spec = spec.to_str().unwrap();
    let run = |spec: &str| {
        hub.run(
            &[
                "pipeline",
                "run",
                spec,
                "--import",
                skab.to_str().unwrap(),
                "--key",
                &d("ops.secret.json"),
                "--work",
                &d("work"),
                "--json",
            ],
            &admin,
        )
    };

    let first = run(spec);
    assert!(first.status.success(), "{}", stderr(&first));
    let record: serde_json::Value = serde_json::from_str(&stdout(&first)).unwrap();
    assert_eq!(record["outcome"], "registered");
    assert_eq!(record["version"], 1);
    assert_eq!(record["packages"].as_array().unwrap().len(), 3);
    let again = run(spec);
    assert!(again.status.success(), "{}", stderr(&again));
    let rerun: serde_json::Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_eq!((rerun["outcome"].as_str(), rerun["version"].as_u64()), (Some("unchanged"), Some(1)));

    let out = hub.run(&["model", "alias", "skab-pump", "champion", "1"], &admin);
    assert!(out.status.success(), "{}", stderr(&out));

    // A candidate that raises more false alarms and trades F1 for it: the champion's F1 is
    // within reach, but the false-alarm gate is not.
    let worse = std::fs::read_to_string(spec)
        .unwrap()
        .replace("margin = 2.0", "margin = 0.8")
        .replace("\"profiles/", &format!("\"{}/", Path::new(spec).parent().unwrap().join("profiles").display()));
    std::fs::write(d("worse.toml"), worse).unwrap();
    let out = run(&d("worse.toml"));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("max_far: false-alarm rate"), "{}", stderr(&out));
    let failed: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((failed["outcome"].as_str(), failed["version"].as_u64()), (Some("rejected"), Some(2)));
    assert!(failed["champion_evaluation"]["f1"].is_number(), "compared with the champion on the same data");

    let out = hub.run(&["model", "versions", "skab-pump", "--json"], &admin);
    let versions: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let status: Vec<&str> = versions.iter().map(|v| v["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["ready", "failed"]);
    assert_eq!(versions[1]["parent_version"], 1);
    assert!(versions[1]["reason"].as_str().unwrap().contains("max_far"));
    assert_eq!(versions[0]["aliases"], serde_json::json!(["champion"]));
    let out = hub.run(&["model", "alias", "skab-pump", "champion", "2"], &admin);
    assert_eq!(out.status.code(), Some(3), "a failed version takes no alias");

    let dataset = record["dataset_sha256"].as_str().unwrap();
    let out = hub.run(&["model", "lineage", "--dataset", dataset, "--json"], &admin);
    let lineage: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(lineage["versions"].as_array().unwrap().len(), 2);
    // The audit trail: from the dataset to every package of version 1.
    let out = hub.run(&["audit", "trace", dataset, "--json"], &admin);
    let traced: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for p in record["packages"].as_array().unwrap() {
        let sha = p["sha256"].as_str().unwrap();
        assert!(traced.iter().any(|r| r["action"] == "package.uploaded" && r["artifacts"][0] == sha), "{sha} traced");
    }

    // The dataset as files: listed, shown, exported.
    // This hub has no pipeline key: it runs no pipelines, and says why.
    let out = hub.run(&["pipeline", "submit", spec], &admin);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no pipeline signing key"), "{}", stderr(&out));

    let out = impeller(&["dataset", "list", "--work", &d("work")]);
    assert!(stdout(&out).contains(dataset), "{}", stdout(&out));
    let out = impeller(&["dataset", "export", dataset, "--work", &d("work"), "--out", &d("export")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(d("export")).unwrap().count(), 36, "35 parts and the manifest");
}

/// From the fleet's data to a registered model: samples stored at the hub, an incident recorded,
/// a snapshot taken and pulled, a pipeline trained on one pump and validated on the other.
#[test]
fn a_snapshot_of_the_fleet_trains_a_registered_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).display().to_string();
    let (hub, admin) = hub_trusting_ops(dir.path(), true);
    for (id, site) in [("pump-a", "gulf"), ("pump-b", "gulf")] {
        let out = hub.run(&["device", "add", id, "--tags", &format!("site={site}")], &admin);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // The agents' raw samples, written as the hub's ingest would store them: two hours at 1 Hz
    // in batches of 60, pump-b's pressure dropping for 20 minutes in the second hour.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = rt
        .block_on(impeller_hub::store::Store::open(&format!("sqlite:{}", dir.path().join("hub/hub.db").display())))
        .unwrap();
    let t0 = 1_764_000_000_000i64;
    for (id, fault) in [("pump-a", false), ("pump-b", true)] {
        let mut batch = Vec::new();
        for b in 0..120u64 {
            let frames: Vec<serde_json::Value> = (0..60)
                .map(|i| {
                    let n = (b * 60 + i) as i64;
                    let t = n as f64 / 300.0;
                    let drop = if fault && (4800..6000).contains(&n) { 1.5 } else { 0.0 };
                    let wobble = ((n * 7919) % 101) as f64 / 500.0;
                    serde_json::json!({"ts_ms": t0 + n * 1000, "values": [30.0 + 3.0 * t.sin() + wobble, 4.0 + 0.2 * t.sin() - drop + wobble / 4.0]})
                })
                .collect();
            let body = serde_json::json!({"channels": ["flow", "pressure"], "frames": frames});
            // Stamped when the batch fills, at its last frame.
            batch.push(impeller_hub::store::Incoming {
                device: id.into(),
                seq: b + 1,
                prev: b,
                ts_ms: t0 + (b as i64 * 60 + 59) * 1000,
                kind: "samples".into(),
                body: body.to_string(),
                update: None,
            });
        }
        rt.block_on(store.commit(&batch, &[(id.to_string(), 120)].into_iter().collect())).unwrap();
    }
    let (start, end) = ((t0 + 4_800_000).to_string(), (t0 + 6_000_000).to_string());
    let out = hub.run(&["incident", "add", "pump-b", "--start", &start, "--end", &end, "--kind", "cavitation"], &admin);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = hub.run(
        &[
            "dataset",
            "snapshot",
            "--condition",
            "tags.site = 'gulf'",
            "--since-ms",
            &t0.to_string(),
            "--until-ms",
            &(t0 + 7_200_000).to_string(),
            "--label-incidents",
            "--json",
        ],
        &admin,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let hash = manifest["sha256"].as_str().unwrap().to_string();
    assert_eq!(manifest["parts"][1]["anomalous_rows"], 1200);

    let spec = format!(
        r#"version = 1
model = "gulf-pumps"
[data]
dataset = "{hash}"
train = ["pump-a"]
validate = ["pump-b"]
train_head_rows = 600
[train]
seed = 1
detector = {{ kind = "pca" }}
[train.calibration]
margin = 1.5
[gates]
min_f1 = 0.5
"#
    );
    std::fs::write(d("gulf.toml"), spec).unwrap();
    let out = hub.run(
        &["pipeline", "run", &d("gulf.toml"), "--key", &d("ops.secret.json"), "--work", &d("work"), "--json"],
        &admin,
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    let record: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(record["outcome"], "registered", "{record}");
    assert_eq!(record["dataset_sha256"], hash.as_str(), "the pipeline pulled the hub's snapshot");
    assert!(record["evaluation"]["f1"].as_f64().unwrap() > 0.5, "{}", record["evaluation"]);
    let out = hub.run(&["model", "lineage", "--dataset", &hash, "--json"], &admin);
    let lineage: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(lineage["versions"][0]["model"], "gulf-pumps");

    // The hub runs a variant itself, on its own copy of the snapshot, signing with its key.
    let spec = std::fs::read_to_string(d("gulf.toml")).unwrap().replace("margin = 1.5", "margin = 2.0");
    std::fs::write(d("gulf2.toml"), spec).unwrap();
    let out = hub.run(&["pipeline", "submit", &d("gulf2.toml"), "--wait"], &admin);
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    assert!(stdout(&out).contains("registered gulf-pumps version 2"), "{}", stdout(&out));
    assert!(stderr(&out).contains("evaluate"), "the steps are shown as they finish: {}", stderr(&out));
    let out = hub.run(&["pipeline", "runs", "--json"], &admin);
    let runs: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((runs.len(), runs[0]["state"].as_str()), (1, Some("finished")));
    let out = hub.run(&["audit", "export"], &admin);
    let actions: Vec<String> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"].as_str().unwrap().to_string())
        .filter(|a| a.starts_with("pipeline.run."))
        .collect();
    assert_eq!(actions, ["pipeline.run.started", "pipeline.run.finished"]);

    // A technician's verdicts on two of the new model's alerts: its precision, and the
    // confirmed one an incident for the next snapshot.
    let alert = |seq: u64, started: i64| impeller_hub::store::Incoming {
        device: "pump-b".into(),
        seq,
        prev: seq - 1,
        ts_ms: started + 10_000,
        kind: "alerts".into(),
        body: serde_json::json!({
            "model": {"name": "gulf-pumps", "version": "2", "release": 2}, "started_ms": started, "score": 3.0,
            "threshold": 1.0, "top_features": [], "channels": ["flow", "pressure"], "window": [],
        })
        .to_string(),
        update: None,
    };
    let later = t0 + 7_200_000;
    rt.block_on(store.commit(
        &[alert(121, later), alert(122, later + 60_000)],
        &[("pump-b".to_string(), 122)].into_iter().collect(),
    ))
    .unwrap();
    let out = hub.run(&["feedback", "confirm", "pump-b", "121", "--work-order", "WO-7"], &admin);
    assert!(out.status.success() && stdout(&out).contains("incident"), "{}{}", stdout(&out), stderr(&out));
    assert!(hub.run(&["feedback", "reject", "pump-b", "122"], &admin).status.success());
    let out = hub.run(&["feedback", "precision", "--model", "gulf-pumps", "--json"], &admin);
    let precision: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((precision[0]["confirmed"].as_u64(), precision[0]["false_alarms"].as_u64()), (Some(1), Some(1)));
    let out = hub.run(&["incident", "list", "--device", "pump-b", "--json"], &admin);
    let incidents: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(incidents.iter().filter(|i| i["kind"] == "confirmed_fault").count(), 1);
}

#[test]
fn the_example_retraining_policy_is_valid() {
    let out = impeller(&["retrain", "generate-policy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let policy = impeller_core::retrain::RetrainPolicy::parse(&stdout(&out), "example").unwrap();
    assert_eq!(policy.approval.promote, impeller_core::retrain::Gate::Manual, "a person approves by default");
}
