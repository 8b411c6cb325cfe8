//! A bring-your-own ONNX file is untrusted: arbitrary bytes read as a scikit-learn Isolation
//! Forest over 6 features must give a forest or an error, never a panic, and a forest that comes
//! out is valid (every walk ends inside its tree) and scores to a finite number.
#![no_main]

use impeller_pipeline::onnx_import::isolation_forest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(forest) = isolation_forest(data, 6) {
        forest.validate(6, "fuzz").expect("an imported forest is valid");
        assert!(forest.score(&[0.5; 6]).is_finite());
    }
});
