//! The ONNX export of every detector kind, passed by the official checker and run by onnxruntime
//! (both from PyPI) on the same feature vectors as the native scorer: the scores agree within
//! the stated tolerance, normal and anomalous vectors alike.

use std::process::Command;

use impeller_core::pipeline::{FramePipeline, Step};
use impeller_core::{Channel, Frame, Model, TrainConfig, train};

/// Largest difference allowed between onnxruntime's float32 score and the native f64 one,
/// relative to the score (absolute below 1).
pub const TOLERANCE: f64 = 1e-4;

fn frames(n: usize, seed: u64, fault_from: Option<usize>) -> Vec<Frame> {
    let mut state = seed;
    let mut noise = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    (0..n)
        .map(|i| {
            let t = i as f64 * 0.05;
            let fault = if fault_from.is_some_and(|f| i >= f) { 2.5 } else { 0.0 };
            let flow = 30.0 + 5.0 * t.sin() + noise();
            Frame {
                ts_ms: i as i64 * 1000,
                values: vec![flow, 2.0 + 0.1 * flow + 0.2 * noise() + fault, 0.5 * t.cos() + noise()],
            }
        })
        .collect()
}

/// Unscaled feature vectors of `frames`, as the scorer computes them.
fn features(model: &Model, frames: &[Frame]) -> Vec<Vec<f64>> {
    let mut p = FramePipeline::new(&model.gaps, &model.features, model.channels.len());
    let mut v = vec![0.0; model.dim()];
    let mut out = Vec::new();
    for f in frames {
        if p.push(f.ts_ms, &f.values, &mut v) == Step::Vector {
            out.push(v.clone());
        }
    }
    out
}

fn native(model: &Model, features: &[Vec<f64>]) -> Vec<f64> {
    let mut scratch = model.detector.scratch();
    features
        .iter()
        .map(|f| {
            let mut z = f.clone();
            model.scaler.transform(&mut z);
            model.detector.score(&z, &mut scratch)
        })
        .collect()
}

/// The official checker (with shape inference), then onnxruntime on the feature vectors.
const RUN: &str = r#"
import json, sys, numpy, onnx, onnxruntime
onnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = numpy.array(json.load(open(sys.argv[2])), dtype=numpy.float32)
print(json.dumps(session.run(["score"], {"features": x})[0].astype(float).tolist()))
"#;

#[test]
fn onnxruntime_scores_every_detector_as_the_native_scorer_does() {
    let probe = Command::new("python3").args(["-c", "import onnx, onnxruntime, numpy"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("IMPELLER_REQUIRE_PEERS").is_none(),
            "IMPELLER_REQUIRE_PEERS is set but python3 cannot import onnx and onnxruntime"
        );
        eprintln!(
            "onnxruntime_scores_every_detector_as_the_native_scorer_does: SKIPPED, needs python3 with onnx and onnxruntime (pip install -r crates/impeller-pipeline/tests/peers/requirements.txt)"
        );
        return;
    }
    let channels = vec![Channel::new("flow", "L/min"), Channel::new("pressure", "bar"), Channel::new("vibration", "g")];
    let training = frames(1500, 7, None);
    let test = frames(600, 99, Some(400));
    let dir = tempfile::tempdir().unwrap();
    let kinds = [
        r#"{"kind": "zscore"}"#,
        r#"{"kind": "pca", "variance": 0.8, "statistic": "both"}"#,
        r#"{"kind": "pca", "variance": 0.8, "statistic": "t2"}"#,
        r#"{"kind": "mset", "memory": 40}"#,
        r#"{"kind": "isolation_forest", "trees": 50, "sample_size": 128}"#,
        r#"{"kind": "autoencoder", "hidden": [4], "epochs": 30}"#,
        r#"{"kind": "ensemble", "combine": "mean", "members": [{"kind": "zscore"}, {"kind": "pca"}, {"kind": "mset", "memory": 30}]}"#,
        r#"{"kind": "ensemble", "combine": "max", "members": [{"kind": "isolation_forest", "trees": 20}, {"kind": "autoencoder", "hidden": [3], "epochs": 10}]}"#,
    ];
    for (i, kind) in kinds.iter().enumerate() {
        let mut config = TrainConfig::new(serde_json::from_str(kind).unwrap());
        config.seed = 3;
        let model = train(&channels, &training, &config).unwrap();
        let x = features(&model, &test);
        let expected = native(&model, &x);
        let onnx = dir.path().join(format!("m{i}.onnx"));
        std::fs::write(&onnx, impeller_pipeline::onnx::export(&model)).unwrap();
        let input = dir.path().join(format!("x{i}.json"));
        std::fs::write(&input, serde_json::to_vec(&x).unwrap()).unwrap();
        let out = Command::new("python3")
            .args(["-c", RUN, onnx.to_str().unwrap(), input.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got.len(), expected.len(), "{kind}");
        let worst = got.iter().zip(&expected).map(|(g, e)| (g - e).abs() / e.abs().max(1.0)).fold(0.0f64, f64::max);
        eprintln!("{:<17} {} vectors, largest relative difference {worst:.2e}", model.detector.kind(), got.len());
        assert!(worst <= TOLERANCE, "{kind}: onnxruntime differs from the native score by {worst:e} (relative)");
        // The anomalous stretch scores higher in both, so the graph is not trivially constant.
        let (normal, fault) = got.split_at(got.len() / 2);
        assert!(
            fault.iter().sum::<f64>() / fault.len() as f64 > normal.iter().sum::<f64>() / normal.len() as f64,
            "{kind}"
        );
    }
}
