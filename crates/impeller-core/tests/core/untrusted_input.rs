//! Parsers of untrusted bytes never panic: arbitrary bytes, and valid inputs with bytes
//! changed. (Coverage-guided fuzz targets for the same parsers live in fuzz/.)

use std::sync::Arc;

use impeller_core::table::{CsvFormat, parse_csv};
use impeller_core::{Model, Scorer, train};
use proptest::prelude::*;

use crate::util::{channels, configs, frames};

fn valid_models() -> Vec<Vec<u8>> {
    configs().iter().map(|(_, c)| train(&channels(), &frames(300, 5, None), c).unwrap().to_json().unwrap()).collect()
}

const CSV: &str = "datetime;Accelerometer1RMS;Current;Pressure;anomaly;changepoint\r\n\
                   2020-03-09 10:14:33;0.0265;1.33;0.054;0.0;0.0\r\n\
                   2020-03-09 10:14:34;0.0261;1.35;0.382;0.0;0.0\r\n\
                   2020-03-09 10:14:35;0.0262;1.54;0.710;1.0;1.0\r\n";

/// If a mutated model is accepted, scoring with it must not panic either.
fn score_if_valid(bytes: &[u8]) {
    if let Ok(model) = Model::from_json(bytes) {
        let mut scorer = Scorer::new(Arc::new(model.clone()));
        for f in frames(40, 1, Some(20)) {
            let mut v = f.values.clone();
            v.resize(model.channels.len(), 1.0);
            scorer.push(f.ts_ms, &v);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn model_decoder_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        score_if_valid(&bytes);
    }

    #[test]
    fn csv_parser_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_csv(&bytes, "fuzz.csv", &CsvFormat::SKAB);
    }

    #[test]
    fn csv_parser_survives_mutated_files(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = CSV.as_bytes().to_vec();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Ok(t) = parse_csv(&bytes, "fuzz.csv", &CsvFormat::SKAB) {
            prop_assert!(t.rows.iter().all(|r| r.len() == t.channels.len()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn model_decoder_survives_mutated_models(
        which in 0usize..6,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let models = MODELS.with(|m| m.clone());
        let mut bytes = models[which].clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        score_if_valid(&bytes);
    }
}

thread_local! {
    static MODELS: Vec<Vec<u8>> = valid_models();
}

#[test]
fn models_with_extreme_numbers_are_refused_or_score_without_panicking() {
    // Replace every number in a valid model by an extreme one, one at a time for a sample.
    for bytes in valid_models() {
        let text = String::from_utf8(bytes).unwrap();
        let positions: Vec<usize> = text.match_indices("0.").map(|(i, _)| i).step_by(37).take(40).collect();
        for p in positions {
            for extreme in ["1e308", "-1e308", "0", "1e-320"] {
                let mutated = format!("{}{}{}", &text[..p], extreme, &text[p + 2..]);
                score_if_valid(mutated.as_bytes());
            }
        }
    }
}
