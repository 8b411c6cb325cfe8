//! Outbox segments come back from disk after power cuts: scanning arbitrary bytes must find the
//! valid prefix and report the damage, never panic, and never return a record past the damage.
#![no_main]

use impeller_edge::outbox::record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (records, valid, _damage) = record::scan(data, 1);
    assert!(valid <= data.len());
    let mut end = 0;
    for r in &records {
        end += r.encoded_len();
    }
    assert!(end <= valid, "records cover {end} bytes but only {valid} are valid");
});
