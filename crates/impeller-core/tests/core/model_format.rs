//! The model file format: golden fixtures written by earlier versions must keep loading and
//! scoring the same, and training must be reproducible byte for byte.
//!
//! Fixtures live in tests/fixtures/model-v1/. To add one for a new detector kind, run the tests
//! with IMPELLER_BLESS=1: missing fixtures are then written (existing ones are never rewritten;
//! a format change needs a new version and a new folder).

use std::path::PathBuf;
use std::sync::Arc;

use impeller_core::{Model, ModelError, Scorer, Verdict, train};

use crate::util::{channels, configs, frames};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model-v1")
}

/// Scores of the probe frames (normal, then a leak from frame 120): `None` while not scored.
fn probe_scores(model: Model) -> Vec<Option<(f64, bool)>> {
    let mut scorer = Scorer::new(Arc::new(model));
    frames(200, 99, Some(120))
        .iter()
        .map(|f| match scorer.push(f.ts_ms, &f.values) {
            Verdict::Scored(s) => Some((s.score, s.alarm)),
            _ => None,
        })
        .collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Expected {
    scores: Vec<Option<(f64, bool)>>,
}

#[test]
fn golden_models_still_load_and_score_the_same() {
    let bless = std::env::var_os("IMPELLER_BLESS").is_some();
    let dir = fixture_dir();
    for (name, config) in configs() {
        let model_path = dir.join(format!("{name}.json"));
        let expected_path = dir.join(format!("{name}.scores.json"));
        if !model_path.exists() {
            assert!(bless, "missing fixture {}; run with IMPELLER_BLESS=1 to create it", model_path.display());
            let model = train(&channels(), &frames(400, 1, None), &config).unwrap();
            std::fs::write(&model_path, model.to_json().unwrap()).unwrap();
            let expected = Expected { scores: probe_scores(model) };
            std::fs::write(&expected_path, serde_json::to_vec_pretty(&expected).unwrap()).unwrap();
        }
        let bytes = std::fs::read(&model_path).unwrap();
        let model = Model::from_json(&bytes).unwrap_or_else(|e| panic!("{name}: golden model no longer loads: {e}"));
        assert_eq!(model.detector.kind(), name);
        let expected: Expected = serde_json::from_slice(&std::fs::read(&expected_path).unwrap()).unwrap();
        let got = probe_scores(model);
        assert_eq!(got.len(), expected.scores.len());
        for (i, (g, e)) in got.iter().zip(&expected.scores).enumerate() {
            match (g, e) {
                (Some((gs, ga)), Some((es, ea))) => {
                    assert!((gs - es).abs() <= 1e-9 * es.abs().max(1.0), "{name} frame {i}: score {gs}, golden {es}");
                    assert_eq!(ga, ea, "{name} frame {i}: alarm differs from golden");
                }
                (None, None) => {}
                _ => panic!("{name} frame {i}: scored {g:?}, golden {e:?}"),
            }
        }
        // The probe's leak must be caught by every golden model, or the fixture proves little.
        assert!(got[120..].iter().any(|s| s.is_some_and(|(_, a)| a)), "{name}: golden model misses the leak");
    }
}

#[test]
fn training_twice_gives_byte_identical_models() {
    let data = frames(400, 3, None);
    for (name, config) in configs() {
        let a = train(&channels(), &data, &config).unwrap().to_json().unwrap();
        let b = train(&channels(), &data, &config).unwrap().to_json().unwrap();
        assert!(a == b, "{name}: two trainings with the same seed differ");
    }
}

#[test]
fn the_seed_changes_randomised_detectors_only() {
    let data = frames(400, 3, None);
    for (name, mut config) in configs() {
        let a = train(&channels(), &data, &config).unwrap();
        config.seed += 1;
        let b = train(&channels(), &data, &config).unwrap();
        let randomised = matches!(name, "isolation_forest" | "autoencoder");
        assert_eq!(a.detector != b.detector, randomised, "{name}");
    }
}

#[test]
fn the_data_hash_identifies_the_training_frames() {
    let config = &configs()[1].1;
    let a = train(&channels(), &frames(400, 3, None), config).unwrap();
    let b = train(&channels(), &frames(400, 4, None), config).unwrap();
    assert_eq!(a.training.data_sha256.len(), 64);
    assert_ne!(a.training.data_sha256, b.training.data_sha256);
    assert_eq!(a.training.frames, 400);
    assert_eq!(a.training.vectors, 391, "400 frames minus a 10-frame window's warm-up");
}

#[test]
fn wrong_format_version_and_shapes_are_refused_with_the_field_named() {
    let model = train(&channels(), &frames(400, 3, None), &configs()[1].1).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&model.to_json().unwrap()).unwrap();

    let mut v = json.clone();
    v["version"] = 2.into();
    let e = Model::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert_eq!(e, ModelError::UnsupportedVersion { found: 2, supported: 1 });

    let mut v = json.clone();
    v["format"] = "something.else".into();
    assert!(matches!(Model::from_json(&serde_json::to_vec(&v).unwrap()), Err(ModelError::WrongFormat { .. })));

    let mut v = json.clone();
    v["scaler"]["scale"][2] = (-1.0).into();
    let e = Model::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(e.to_string().contains("scaler.scale"), "{e}");

    let mut v = json.clone();
    v["detector"]["components"][0].as_array_mut().unwrap().pop();
    let e = Model::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(e.to_string().contains("detector.components[0]"), "{e}");

    let mut v = json;
    v["surprise"] = true.into();
    let e = Model::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(e, ModelError::Schema { .. }), "{e}");

    let e = Model::from_json(b"{\"format\": \"impeller.model\", ").unwrap_err();
    assert!(matches!(e, ModelError::Syntax { line: 1, .. }), "{e}");
}

#[test]
fn int8_variants_read_back_and_alarm_with_their_float_models() {
    for (name, config) in configs() {
        let model = train(&channels(), &frames(400, 1, None), &config).unwrap();
        let Some(detector) = model.detector.to_int8() else {
            assert!(matches!(name, "zscore" | "isolation_forest"), "{name} has weights to quantise");
            continue;
        };
        assert!(!model.detector.is_int8() && detector.is_int8(), "{name}");
        let int8 = Model { detector, ..model.clone() };
        let json = int8.to_json().unwrap();
        let back = Model::from_json(&json).unwrap_or_else(|e| panic!("{name}: int8 model does not read back: {e}"));
        assert_eq!(back, int8, "{name}");
        let (f, q) = (probe_scores(model), probe_scores(back));
        let scored: Vec<_> = f.iter().zip(&q).filter_map(|(a, b)| a.zip(*b)).collect();
        assert!(scored.len() > 150, "{name}");
        let same = scored.iter().filter(|((_, a), (_, b))| a == b).count();
        assert!(same * 100 >= scored.len() * 97, "{name}: alarms agree on {same} of {} frames", scored.len());
        assert!(q.iter().flatten().any(|(_, alarm)| *alarm), "{name}: the int8 model misses the leak");
    }
}
