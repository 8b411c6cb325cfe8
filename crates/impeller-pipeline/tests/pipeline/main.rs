//! The pipeline on SKAB, end to end without a registry: it builds a model and one package per
//! target; an unchanged rerun runs nothing; a changed training setting reruns training and what
//! follows, not the import; the same spec on the same data in a fresh folder builds the same
//! bytes.

// Helpers in a test binary may unwrap: a panic there fails the test, as it should.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod byo;
mod holdout;
mod onnx;

use std::path::{Path, PathBuf};

use impeller_core::package::{Limits, Signer25519, TrustStore, open};
use impeller_pipeline::run::{Outcome, RunOptions, RunRecord, run};
use impeller_pipeline::spec::PipelineSpec;

/// SKAB's data folder, or `None` (the test says it skipped) unless IMPELLER_REQUIRE_SKAB is set.
fn skab_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("IMPELLER_SKAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/skab"));
    if dir.join("valve1").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("IMPELLER_REQUIRE_SKAB").is_none(),
        "{test}: IMPELLER_REQUIRE_SKAB is set but no SKAB data"
    );
    eprintln!("{test}: SKIPPED, no SKAB data at {} (set IMPELLER_SKAB_DIR)", dir.display());
    None
}

fn example() -> (PipelineSpec, PathBuf) {
    PipelineSpec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pipeline.toml")).unwrap()
}

fn run_in(work: &Path, spec: &PipelineSpec, base: &Path, skab: &Path) -> RunRecord {
    let mut options =
        RunOptions::new(work.to_path_buf(), base.to_path_buf(), Signer25519::from_secret([9; 32]), 1_764_000_000_000);
    options.import = Some(skab.to_path_buf());
    let record = run(spec, &options, None, &mut |_| {}).unwrap();
    assert!(record.error.is_none(), "{:?}", record.error);
    record
}

fn cached(record: &RunRecord) -> Vec<(&str, bool)> {
    record.steps.iter().map(|s| (s.step.as_str(), s.cached)).collect()
}

#[test]
fn skab_pipeline_builds_caches_and_reproduces() {
    let Some(skab) = skab_dir("skab_pipeline_builds_caches_and_reproduces") else { return };
    let (spec, base) = example();
    let work = tempfile::tempdir().unwrap();
    let first = run_in(work.path(), &spec, &base, &skab);
    assert_eq!(first.outcome, Outcome::Built, "{:#?}", first.gates);
    assert_eq!(first.packages.len(), 3);
    let e = first.evaluation.as_ref().unwrap();
    assert_eq!(e.parts, 34);
    assert!(e.f1.unwrap() > 0.5, "{e:?}");
    // What the hub holds each device to: alarms that rose on normal rows per normal device-day.
    assert!(e.false_alarms > 0 && e.false_alarms < e.alarms, "{} of {}", e.false_alarms, e.alarms);
    assert!(e.normal_device_days > 0.0 && e.normal_device_days < e.device_days);
    let metrics = e.metrics();
    assert_eq!(metrics["false_alarms_per_day"], e.false_alarms as f64 / e.normal_device_days);
    eprintln!(
        "SKAB validation: {} false of {} alarms over {:.3} normal device-days",
        e.false_alarms, e.alarms, e.normal_device_days
    );
    assert!(first.steps.iter().all(|s| !s.cached), "{:?}", cached(&first));

    // The packages verify with the key that signed them and carry the run.
    let signer = Signer25519::from_secret([9; 32]);
    let mut trust = TrustStore::new();
    trust.add(signer.verifying_key());
    for p in &first.packages {
        let pkg = open(&std::fs::read(&p.path).unwrap(), &trust, Limits::default()).unwrap();
        assert_eq!(pkg.manifest.target, p.target);
        assert_eq!(pkg.manifest.pipeline_run.as_deref(), first.run_key.as_deref());
        assert!(pkg.manifest.metrics.contains_key("f1"));
        // The ONNX profile's package carries the scoring graph, listed and hashed.
        let onnx = pkg.manifest.artifacts.iter().find(|a| a.name == "model.onnx");
        assert_eq!(
            onnx.map(|a| a.sha256.as_str()),
            (p.target == "gw-x86").then(|| first.onnx.as_ref().unwrap().sha256.as_str())
        );
        // The PLC profile asks for int8 weights: its package carries them, with the measured
        // agreement; the others carry the float model as trained.
        let int8 = p.target == "plc-armv7";
        assert_eq!(pkg.model.detector.is_int8(), int8, "{}", p.target);
        assert_eq!(pkg.manifest.metrics.contains_key("int8_alarm_agreement"), int8, "{}", p.target);
        if !int8 {
            assert_eq!(
                pkg.model.to_json().unwrap(),
                std::fs::read(
                    work.path().join(format!("cache/train/{}/model.json", first.steps[1].key.as_deref().unwrap()))
                )
                .unwrap()
            );
        }
    }
    let gate = first.gates.iter().find(|g| g.gate == "min_int8_agreement").expect("the int8 gate ran");
    assert!(gate.passed && gate.value.unwrap() >= 0.99, "{gate:?}");
    eprintln!("int8 on SKAB: {}", gate.detail);
    let plc = first.packages.iter().find(|p| p.target == "plc-armv7").unwrap();
    let arm = first.packages.iter().find(|p| p.target == "gw-arm64").unwrap();
    assert!(
        plc.fit.memory_estimate_bytes < arm.fit.memory_estimate_bytes,
        "int8 {} against float {} bytes",
        plc.fit.memory_estimate_bytes,
        arm.fit.memory_estimate_bytes
    );

    // Asked to agree on every frame, the int8 variant is refused where it does not, by name.
    let mut strict = spec.clone();
    strict.gates.min_int8_agreement = Some(1.0);
    let strict_run = run_in(work.path(), &strict, &base, &skab);
    let strict_gate = strict_run.gates.iter().find(|g| g.gate == "min_int8_agreement").unwrap();
    assert_eq!(strict_gate.passed, gate.value == Some(1.0), "{strict_gate:?}");
    assert_eq!(strict_run.outcome == Outcome::Built, gate.value == Some(1.0));

    // Unchanged: every step found in the cache.
    let again = run_in(work.path(), &spec, &base, &skab);
    assert!(again.steps.iter().filter(|s| s.key.is_some()).all(|s| s.cached), "{:?}", cached(&again));
    assert_eq!(again.run_key, first.run_key);

    // A changed margin: the import is reused, training and everything after it rerun.
    let mut changed = spec.clone();
    changed.train.calibration.margin += 0.5;
    let third = run_in(work.path(), &changed, &base, &skab);
    let steps = cached(&third);
    assert_eq!(steps[0], ("dataset", true));
    assert!(steps[1..].iter().all(|(_, hit)| !hit), "{steps:?}");
    assert_ne!(third.model_sha256, first.model_sha256);

    // A fresh folder: the same model and package bytes.
    let fresh = tempfile::tempdir().unwrap();
    let other = run_in(fresh.path(), &spec, &base, &skab);
    assert_eq!(other.model_sha256, first.model_sha256);
    for (a, b) in first.packages.iter().zip(&other.packages) {
        assert_eq!(a.sha256, b.sha256, "package for {}", a.target);
        assert_eq!(std::fs::read(&a.path).unwrap(), std::fs::read(&b.path).unwrap());
    }
    let runs = std::fs::read_dir(work.path().join("runs")).unwrap().count();
    assert_eq!(runs, 4, "a run record per run");
}

#[test]
fn a_spec_naming_parts_that_are_not_there_fails_with_the_names() {
    let Some(skab) = skab_dir("a_spec_naming_parts_that_are_not_there_fails_with_the_names") else { return };
    let (mut spec, base) = example();
    spec.data.validate.push("valve3/*".into());
    let work = tempfile::tempdir().unwrap();
    let mut options = RunOptions::new(work.path().to_path_buf(), base, Signer25519::from_secret([9; 32]), 1);
    options.import = Some(skab);
    let record = run(&spec, &options, None, &mut |_| {}).unwrap();
    assert_eq!(record.outcome, Outcome::Failed);
    let error = record.error.unwrap();
    assert!(error.contains("data.validate: no part matches `valve3/*`"), "{error}");
}

/// pandas (with pyarrow) reads a dataset's Parquet files, with the same timestamps, values,
/// missing readings and labels.
#[test]
fn pandas_reads_a_dataset_as_written() {
    let probe = std::process::Command::new("python3").args(["-c", "import pandas, pyarrow"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("IMPELLER_REQUIRE_PEERS").is_none(),
            "IMPELLER_REQUIRE_PEERS is set but python3 cannot import pandas and pyarrow"
        );
        eprintln!(
            "pandas_reads_a_dataset_as_written: SKIPPED, needs python3 with pandas and pyarrow (pip install -r crates/impeller-pipeline/tests/peers/requirements.txt)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("csv/site-a");
    std::fs::create_dir_all(&csv).unwrap();
    let mut text = String::from("datetime;Current;Pressure;anomaly;changepoint\n");
    for i in 0..50 {
        let pressure = if i % 9 == 4 { String::new() } else { format!("{:.3}", 1.5 + i as f64 * 0.01) };
        text.push_str(&format!(
            "2026-03-01 10:{:02}:{:02};{:.4};{pressure};{};0\n",
            i / 60,
            i % 60,
            2.0 + i as f64 * 0.125,
            u8::from(i >= 40)
        ));
    }
    std::fs::write(csv.join("p1.csv"), text).unwrap();
    let ds = impeller_pipeline::dataset::import_csv_folder(&dir.path().join("csv")).unwrap();
    let hash = ds.write(&dir.path().join("datasets"), "test").unwrap();
    let file = dir.path().join("datasets").join(&hash).join("part-00000.parquet");
    let script = r#"
import json, sys, math, pandas
df = pandas.read_parquet(sys.argv[1])
print(json.dumps({
    "columns": list(df.columns),
    "ts": [int(t.value // 1_000_000) for t in df["ts"]],
    "tz": str(df["ts"].dt.tz),
    "current": df["Current"].tolist(),
    "pressure": [None if math.isnan(v) else v for v in df["Pressure"].tolist()],
    "anomaly": [bool(a) for a in df["anomaly"]],
}))
"#;
    let out = std::process::Command::new("python3").args(["-c", script, file.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let part = &ds.parts[0];
    assert_eq!(read["columns"], serde_json::json!(["ts", "Current", "Pressure", "anomaly"]));
    assert_eq!(read["tz"], "UTC");
    let ts: Vec<i64> = part.frames.iter().map(|f| f.ts_ms).collect();
    assert_eq!(read["ts"], serde_json::json!(ts));
    let current: Vec<f64> = part.frames.iter().map(|f| f.values[0]).collect();
    assert_eq!(read["current"], serde_json::json!(current));
    let pressure: Vec<Option<f64>> = part.frames.iter().map(|f| Some(f.values[1]).filter(|v| !v.is_nan())).collect();
    assert_eq!(read["pressure"], serde_json::json!(pressure));
    assert_eq!(pressure.iter().filter(|p| p.is_none()).count(), 6, "missing readings stay missing");
    assert_eq!(read["anomaly"], serde_json::json!(part.labels.as_ref().unwrap()));
}

/// Regression: a Parquet file whose column chunk starts at a negative offset (found by the
/// `dataset_part` fuzz target) made the Parquet reader panic; it is refused with its name.
#[test]
fn a_parquet_file_with_a_negative_column_offset_is_refused() {
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/negative-column-offset.parquet"))
            .unwrap();
    let channels = [impeller_core::Channel::new("flow", "L/min"), impeller_core::Channel::new("pressure", "bar")];
    for labelled in [false, true] {
        let e =
            impeller_pipeline::dataset::decode_part(bytes.clone(), "pulled.parquet", "p", &channels, labelled, 1_000)
                .unwrap_err();
        assert!(e.to_string().starts_with("pulled.parquet: "), "{e}");
    }
}

/// A registry that records what it is asked and fails an upload on demand: fault injection for
/// the run's registry logic (the real registry is the hub's, tested through its API).
#[derive(Default)]
struct FaultyRegistry {
    found: Option<impeller_pipeline::run::RegisteredVersion>,
    refuse_uploads: bool,
    created: u64,
    finished: Vec<(u64, String, Option<String>)>,
}

impl impeller_pipeline::run::Registry for FaultyRegistry {
    fn champion(
        &mut self,
        _: &str,
    ) -> Result<Option<impeller_pipeline::run::Champion>, impeller_pipeline::PipelineError> {
        Ok(None)
    }
    fn find_run(
        &mut self,
        _: &str,
        _: &str,
    ) -> Result<Option<impeller_pipeline::run::RegisteredVersion>, impeller_pipeline::PipelineError> {
        Ok(self.found.clone())
    }
    fn create_version(
        &mut self,
        _: &str,
        _: &impeller_pipeline::run::NewVersion,
    ) -> Result<impeller_pipeline::run::RegisteredVersion, impeller_pipeline::PipelineError> {
        self.created += 1;
        Ok(impeller_pipeline::run::RegisteredVersion {
            version: 10 + self.created,
            release: 20 + self.created,
            status: "pending".into(),
        })
    }
    fn upload_package(&mut self, bytes: &[u8]) -> Result<String, impeller_pipeline::PipelineError> {
        if self.refuse_uploads {
            return Err(impeller_pipeline::PipelineError::Registry("package_refused: unknown key".into()));
        }
        Ok(impeller_pipeline::sha256_hex(bytes))
    }
    fn finish_version(
        &mut self,
        _: &str,
        version: u64,
        o: &impeller_pipeline::run::VersionOutcome,
    ) -> Result<(), impeller_pipeline::PipelineError> {
        self.finished.push((version, o.status.clone(), o.reason.clone()));
        Ok(())
    }
}

/// A small spec over synthetic CSV files: one normal recording, one with a labelled fault.
fn small_spec(dir: &Path) -> PipelineSpec {
    let csv = |name: &str, fault: bool| {
        let mut text = String::from("datetime;flow;pressure;anomaly\n");
        for i in 0..400 {
            let t = i as f64 / 20.0;
            let drop = if fault && i >= 300 { 3.0 } else { 0.0 };
            let label = u8::from(fault && i >= 300);
            let (h, m, s) = (10 + i / 3600, (i / 60) % 60, i % 60);
            text.push_str(&format!(
                "2026-01-01 {h:02}:{m:02}:{s:02};{:.4};{:.4};{label}\n",
                30.0 + t.sin(),
                4.0 + 0.1 * t.cos() - drop
            ));
        }
        let path = dir.join("data").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    csv("normal/p1.csv", false);
    csv("test/p2.csv", true);
    std::fs::write(dir.join("gw.toml"), impeller_pipeline::profile::EXAMPLES[0].1).unwrap();
    let text = r#"version = 1
model = "small"
targets = ["gw.toml"]
[data]
import = "data"
train = ["normal/*"]
validate = ["test/*"]
train_head_rows = 100
[train]
detector = { kind = "zscore" }
"#;
    std::fs::write(dir.join("spec.toml"), text).unwrap();
    PipelineSpec::load(&dir.join("spec.toml")).unwrap().0
}

#[test]
fn a_run_that_fails_after_registering_settles_its_version_and_only_ready_runs_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let spec = small_spec(dir.path());
    let options =
        RunOptions::new(dir.path().join("work"), dir.path().to_path_buf(), Signer25519::from_secret([3; 32]), 1);
    let run_with = |registry: &mut FaultyRegistry| run(&spec, &options, Some(registry), &mut |_| {}).unwrap();

    // The hub refuses the package: the version it registered is settled as failed, with why.
    let mut refusing = FaultyRegistry { refuse_uploads: true, ..Default::default() };
    let record = run_with(&mut refusing);
    assert_eq!(record.outcome, Outcome::Failed);
    assert_eq!(refusing.finished.len(), 1);
    let (version, status, reason) = &refusing.finished[0];
    assert_eq!((*version, status.as_str()), (11, "failed"));
    assert!(reason.as_deref().unwrap().contains("package_refused"), "{reason:?}");

    // The registry holds the run only as failed or pending: it runs again as a new version.
    for status in ["failed", "pending"] {
        let found = impeller_pipeline::run::RegisteredVersion { version: 11, release: 21, status: status.into() };
        let mut registry = FaultyRegistry { found: Some(found), ..Default::default() };
        let record = run_with(&mut registry);
        assert_eq!((record.outcome, registry.created), (Outcome::Registered, 1), "{status}");
        assert_eq!(registry.finished[0].1, "ready");
    }
    // As ready: nothing to do.
    let found = impeller_pipeline::run::RegisteredVersion { version: 12, release: 22, status: "ready".into() };
    let mut registry = FaultyRegistry { found: Some(found), ..Default::default() };
    let record = run_with(&mut registry);
    assert_eq!((record.outcome, registry.created, record.version), (Outcome::Unchanged, 0, Some(12)));
}
