//! Model files are untrusted: decoding arbitrary bytes must not panic, and a model that decodes
//! must score frames without panicking.
#![no_main]

use std::sync::Arc;

use impeller_core::{Model, Scorer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = Model::from_json(data) {
        let n = model.channels.len();
        let mut scorer = Scorer::new(Arc::new(model));
        for i in 0..64i64 {
            let v: Vec<f64> = (0..n).map(|c| ((i * 7 + c as i64) % 13) as f64 - 6.0).collect();
            scorer.push(i * 1000, &v);
        }
    }
});
