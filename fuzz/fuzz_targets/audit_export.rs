//! An audit export comes from wherever an auditor got it: arbitrary bytes, read line by line
//! as records and checked as a chain, must give a verdict (intact or broken at a record),
//! never a panic. A record that verifies must re-hash to itself after a JSON round trip.
#![no_main]

use impeller_core::audit::{AuditRecord, ChainVerifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut verifier = ChainVerifier::partial(None);
    for line in data.split(|&b| b == b'\n') {
        let Ok(record) = serde_json::from_slice::<AuditRecord>(line) else { return };
        if verifier.push(&record).is_err() {
            return;
        }
        let again: AuditRecord = serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(again.compute_hash(), record.hash);
    }
});
