//! Sensor CSV files are untrusted: parsing arbitrary bytes must not panic, and a parsed table
//! must be rectangular.
#![no_main]

use impeller_core::table::{CsvFormat, parse_csv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = parse_csv(data, "fuzz.csv", &CsvFormat::SKAB) {
        assert!(t.rows.iter().all(|r| r.len() == t.channels.len()));
        assert_eq!(t.rows.len(), t.timestamps.len());
    }
});
