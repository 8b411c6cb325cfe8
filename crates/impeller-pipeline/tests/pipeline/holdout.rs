//! `data.holdout`: the tail of each training part is kept out of training and evaluated as
//! normal operation, so data with no labelled parts (a fleet snapshot) still gives a version its
//! false-alarm rate, and a gate on FAR can hold it.

use impeller_core::package::Signer25519;
use impeller_pipeline::run::{Outcome, RunOptions, run};
use impeller_pipeline::spec::PipelineSpec;

use crate::small_spec;

#[test]
fn a_held_out_tail_is_not_trained_on_and_is_evaluated_as_normal() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = small_spec(dir.path());
    spec.data.validate.clear();
    spec.data.train_head_rows = 0;
    let options =
        RunOptions::new(dir.path().join("work"), dir.path().to_path_buf(), Signer25519::from_secret([3; 32]), 1);
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
}
