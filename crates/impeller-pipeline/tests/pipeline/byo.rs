//! Bring your own model: a scikit-learn IsolationForest on SKAB, exported by skl2onnx (from
//! PyPI, as a data scientist would), imported into the native format. Its native scores are
//! onnxruntime's and scikit-learn's, row for row; the pipeline then calibrates, evaluates,
//! packages and signs it like a model of its own, and the package's model scores the same.

use std::path::Path;
use std::process::Command;

use impeller_core::detector::Detector;
use impeller_core::features::FeatureKind;
use impeller_core::package::{Limits, Signer25519, TrustStore, open};
use impeller_pipeline::run::{Outcome, RunOptions, run};
use impeller_pipeline::spec::BringYourOwn;

use crate::{example, skab_dir};

fn peers_or_skip(test: &str) -> bool {
    let probe = Command::new("python3").args(["-c", "import sklearn, skl2onnx, onnxruntime, pandas"]).output();
    if probe.is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var_os("IMPELLER_REQUIRE_PEERS").is_none(),
        "IMPELLER_REQUIRE_PEERS is set but python3 cannot import sklearn, skl2onnx, onnxruntime and pandas"
    );
    eprintln!(
        "{test}: SKIPPED, needs python3 with scikit-learn, skl2onnx, onnxruntime and pandas (pip install -r crates/impeller-pipeline/tests/peers/requirements.txt)"
    );
    false
}

#[derive(serde::Deserialize)]
struct Scores {
    rows: Vec<Vec<f64>>,
    onnxruntime_score_samples: Vec<f64>,
    sklearn_score_samples: Vec<f64>,
}

#[test]
fn a_scikit_learn_isolation_forest_is_imported_scored_alike_and_packaged() {
    let test = "a_scikit_learn_isolation_forest_is_imported_scored_alike_and_packaged";
    let Some(skab) = skab_dir(test) else { return };
    if !peers_or_skip(test) {
        return;
    }
    let (mut spec, base) = example();
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/byo_isolation_forest.py");
    let out =
        Command::new("python3").arg(&script).arg(&skab).arg(dir.path()).args(&spec.data.channels).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let onnx = std::fs::read(dir.path().join("iforest.onnx")).unwrap();
    let scores: Scores = serde_json::from_slice(&std::fs::read(dir.path().join("scores.json")).unwrap()).unwrap();

    // Row for row, the native forest scores as onnxruntime and scikit-learn do (the rows are
    // float32 values, as both of them read the input).
    let dim = spec.data.channels.len();
    let forest = impeller_pipeline::onnx_import::isolation_forest(&onnx, dim).unwrap();
    assert_eq!((forest.trees.len(), forest.sample_size), (100, 256));
    let native: Vec<f64> = scores.rows.iter().map(|r| forest.score(r)).collect();
    let worst = |theirs: &[f64]| native.iter().zip(theirs).map(|(n, t)| (n + t).abs()).fold(0.0f64, f64::max);
    let (ort, sk) = (worst(&scores.onnxruntime_score_samples), worst(&scores.sklearn_score_samples));
    eprintln!("{} rows: largest difference {ort:.1e} from onnxruntime, {sk:.1e} from scikit-learn", native.len());
    assert!(native.len() > 1000 && ort < 1e-6 && sk < 1e-6, "onnxruntime {ort:e}, scikit-learn {sk:e}");

    // A truncated or altered file is refused, naming what is wrong, never a panic.
    for bad in [&onnx[..onnx.len() / 2], &onnx[..100]] {
        let e = impeller_pipeline::onnx_import::isolation_forest(bad, dim).unwrap_err().to_string();
        assert!(e.starts_with("ONNX model:"), "{e}");
    }
    let e = impeller_pipeline::onnx_import::isolation_forest(&onnx, 3).unwrap_err().to_string();
    assert!(e.contains("is not one of the 3 inputs"), "{e}");

    // The pipeline adopts it: the features it was fitted on (the values, unscaled), calibrated,
    // evaluated, packaged for every target and signed.
    std::fs::write(dir.path().join("iforest.onnx"), &onnx).unwrap();
    spec.bring_your_own = Some(BringYourOwn { onnx: dir.path().join("iforest.onnx") });
    spec.train.features.kinds = vec![FeatureKind::Value];
    // The forest's scores crowd below 1 (2^(−E[h]/c(ψ))): the alarm just above the worst
    // training frame, not at twice its distance from the median as for the example's PCA.
    spec.train.calibration.margin = 1.0;
    spec.gates = Default::default();
    let mut options =
        RunOptions::new(dir.path().join("work"), base, Signer25519::from_secret([9; 32]), 1_764_000_000_000);
    options.import = Some(skab.clone());
    let record = run(&spec, &options, None, &mut |_| {}).unwrap();
    assert_eq!(record.outcome, Outcome::Built, "{:?} {:#?}", record.error, record.gates);
    let train = record.steps.iter().find(|s| s.step == "train").unwrap();
    assert!(train.detail.contains("adopted from"), "{}", train.detail);
    let e = record.evaluation.as_ref().unwrap();
    eprintln!(
        "adopted forest on SKAB: F1 {:?} FAR {:?} MAR {:?}, {}/{} anomalies",
        e.f1, e.far, e.mar, e.detected, e.anomalies
    );
    let mut trust = TrustStore::new();
    trust.add(Signer25519::from_secret([9; 32]).verifying_key());
    assert_eq!(record.packages.len(), 3);
    for p in &record.packages {
        let pkg = open(&std::fs::read(&p.path).unwrap(), &trust, Limits::default()).unwrap();
        let Detector::IsolationForest(packaged) = &pkg.model.detector else {
            panic!("{:?}", pkg.model.detector.kind())
        };
        assert_eq!(packaged, &forest, "{}: the package carries the imported forest as it is", p.target);
        assert!(pkg.model.scaler.scale.iter().all(|s| *s == 1.0), "unscaled, as scikit-learn saw the values");
    }
}
