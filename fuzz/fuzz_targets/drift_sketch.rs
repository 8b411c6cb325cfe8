//! Drift sketches come from devices: a sketch body built from arbitrary bytes must be refused or
//! judged against a reference to finite distances, and move a monitor to a finite state, never
//! panic (the hub's drift task does exactly this with every sketch it stores).
#![no_main]

use impeller_core::drift::{DriftMonitor, DriftPolicy, compare};
use impeller_core::sketch::{BINS, Sketch};
use impeller_core::wire::SketchBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<SketchBody>(data) else { return };
    let dims = body.sketch.bins.len();
    if dims > 64 {
        return;
    }
    let mut reference = Sketch::new(dims);
    for (i, row) in reference.bins.iter_mut().enumerate() {
        row[(i * 7) % BINS] = 1000;
        row[BINS / 2] += 1;
    }
    reference.count = 1001;
    let Some(c) = compare(&reference, &body.sketch, &body.features) else { return };
    for f in &c.features {
        assert!(f.psi.is_finite() && f.ks.is_finite() && f.wasserstein.is_finite(), "{f:?}");
    }
    let mut monitor = DriftMonitor::default();
    for _ in 0..3 {
        monitor.update(&c, &DriftPolicy::default());
    }
    assert!(monitor.page_hinkley().is_finite());
});
