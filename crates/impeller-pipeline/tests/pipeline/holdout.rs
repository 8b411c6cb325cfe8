//! `data.holdout`: the tail of each training part is kept out of training and evaluated as
//! normal operation, so data with no labelled parts (a fleet snapshot) still gives a version its
//! false-alarm rate, and a gate on FAR can hold it.

use impeller_core::package::{Limits, Signer25519, TrustStore, open};
use impeller_pipeline::run::{Outcome, RunOptions, run};
use impeller_pipeline::spec::PipelineSpec;

use crate::small_spec;

/// The small spec without labelled parts (a fleet snapshot's shape), and options to run it in
/// `dir`, signed with the key `[3; 32]`.
fn unlabelled(dir: &std::path::Path) -> (PipelineSpec, RunOptions) {
    let mut spec = small_spec(dir);
    spec.data.validate.clear();
    spec.data.train_head_rows = 0;
    let options = RunOptions::new(dir.join("work"), dir.to_path_buf(), Signer25519::from_secret([3; 32]), 1);
    (spec, options)
}

#[test]
fn a_held_out_tail_is_not_trained_on_and_is_evaluated_as_normal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spec, options) = unlabelled(dir.path());
    let without = run(&spec, &options, None, &mut |_| {}).unwrap();
    assert!(without.error.is_none(), "{:?}", without.error);
    assert!(without.evaluation.is_none(), "nothing to evaluate on without labelled parts or a holdout");

    spec.data.holdout = 0.25;
    spec.gates.max_far = Some(0.5);
    let with = run(&spec, &options, None, &mut |_| {}).unwrap();
    assert_eq!(with.outcome, Outcome::Built, "{:?} {:#?}", with.error, with.gates);
    assert_ne!(with.model_sha256, without.model_sha256, "the model trained on the same rows");
    let e = with.evaluation.as_ref().unwrap();
    // p1.csv has 400 rows a second apart: the last 100 are scored, as normal rows.
    assert_eq!((e.parts, e.scored_rows, e.anomalous_rows, e.anomalies), (1, 100, 0, 0), "{e:?}");
    assert!((e.normal_device_days - 99.0 / 86_400.0).abs() < 1e-12, "{}", e.normal_device_days);
    assert_eq!(e.metrics().get("false_alarms_per_day"), Some(&(e.false_alarms as f64 / e.normal_device_days)));
    assert!(with.gates.iter().any(|g| g.gate == "max_far" && g.passed), "{:#?}", with.gates);
}

#[test]
fn holdout_and_gates_that_need_labels_are_checked() {
    let base = "version = 1\nmodel = \"m\"\ntargets = []\n[train]\ndetector = { kind = \"zscore\" }\n[data]\nimport = \"d\"\ntrain = [\"*\"]\n";
    let refused = |extra: &str| PipelineSpec::parse(&format!("{base}{extra}"), "spec.toml").unwrap_err().to_string();
    let e = refused("holdout = 0.6\n");
    assert!(e.contains("data.holdout"), "{e}");
    assert!(refused("holdout = -0.1\n").contains("data.holdout"));
    assert!(refused("[gates]\nmax_far = 0.1\n").contains("FAR"));
    assert!(refused("holdout = 0.2\n[gates]\nmin_f1 = 0.5\n").contains("F1"));
    assert!(PipelineSpec::parse(&format!("{base}holdout = 0.2\n[gates]\nmax_far = 0.1\n"), "spec.toml").is_ok());
    assert!(refused("refit = true\n").contains("data.holdout"), "refit trains again with held-out rows");
    assert!(PipelineSpec::parse(&format!("{base}holdout = 0.2\nrefit = true\n"), "spec.toml").is_ok());
}

#[test]
fn refit_ships_the_model_trained_on_every_row_once_the_held_out_one_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spec, options) = unlabelled(dir.path());
    let run_ok = |spec: &PipelineSpec| {
        let r = run(spec, &options, None, &mut |_| {}).unwrap();
        assert!(r.error.is_none(), "{:?}", r.error);
        r
    };
    let on_every_row = run_ok(&spec);
    spec.data.holdout = 0.25;
    spec.gates.max_far = Some(0.5);
    let held_out = run_ok(&spec);
    spec.data.refit = true;
    let refit = run_ok(&spec);

    assert_eq!(refit.outcome, Outcome::Built, "{:#?}", refit.gates);
    // Judged as the model without the tail, shipped as the model with it.
    assert_eq!(refit.validated_model_sha256, held_out.model_sha256);
    assert_eq!(refit.evaluation, held_out.evaluation);
    assert_eq!(refit.model_sha256, on_every_row.model_sha256, "the same training on every row");
    assert!(held_out.validated_model_sha256.is_none());
    let steps: Vec<&str> = refit.steps.iter().map(|s| s.step.as_str()).collect();
    let at = |name: &str| steps.iter().position(|s| *s == name).unwrap_or_else(|| panic!("no {name} in {steps:?}"));
    assert!(at("validate") < at("refit"), "{steps:?}");
    let mut trust = TrustStore::new();
    trust.add(Signer25519::from_secret([3; 32]).verifying_key());
    let p = &refit.packages[0];
    let pkg = open(&std::fs::read(&p.path).unwrap(), &trust, Limits::default()).unwrap();
    let shipped = impeller_pipeline::sha256_hex(&pkg.model.to_json().unwrap());
    assert_eq!(Some(shipped), refit.model_sha256, "the package carries the refit model");

    // A candidate the gates refuse is not trained again.
    spec.gates.max_far = Some(0.0);
    spec.train.calibration.quantile = 0.5;
    spec.train.calibration.margin = 0.1;
    let refused = run(&spec, &options, None, &mut |_| {}).unwrap();
    assert_eq!(refused.outcome, Outcome::Rejected, "{:?} {:#?}", refused.error, refused.gates);
    assert!(refused.steps.iter().all(|s| s.step != "refit"), "{:?}", refused.steps);
    assert!(refused.validated_model_sha256.is_none());
}
