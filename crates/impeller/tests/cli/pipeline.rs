//! `impeller pipeline run` on SKAB against a running hub, as an ML engineer uses it: the first
//! run registers a ready version with a package per target; an unchanged rerun registers
//! nothing; a candidate worse than the champion is registered as failed with the gate that
//! failed and exit code 4; aliases, versions and lineage read back through the API; the audit
//! trail links the dataset to the packages.

use std::path::Path;

use crate::util::{TestHub, impeller, skab_dir, stderr, stdout, token};

#[test]
fn a_pipeline_registers_gates_and_reruns_for_free() {
    let Some(skab) = skab_dir("a_pipeline_registers_gates_and_reruns_for_free") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).display().to_string();
    assert!(impeller(&["keys", "generate", "--name", "ops", "--out", &d("")]).status.success());
    let data = dir.path().join("hub");
    let admin = token(&data, "admin");
    let hub = TestHub::start(&data, &["--trusted-key", &d("ops.public.json")]);
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
    let out = impeller(&["dataset", "list", "--work", &d("work")]);
    assert!(stdout(&out).contains(dataset), "{}", stdout(&out));
    let out = impeller(&["dataset", "export", dataset, "--work", &d("work"), "--out", &d("export")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(d("export")).unwrap().count(), 36, "35 parts and the manifest");
}
