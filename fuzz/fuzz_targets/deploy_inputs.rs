//! Target conditions (operators' text, through the API) and desired-state messages (MQTT
//! payloads) are untrusted: they must parse or be refused with a column, never panic or
//! recurse without bound; a parsed condition must evaluate.
#![no_main]

use std::collections::BTreeMap;

use impeller_core::deploy::{Condition, DeviceFacts, decode_desired};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match Condition::parse(text) {
            Ok(c) => {
                let tags = BTreeMap::from([("site".to_string(), "north".to_string())]);
                let _ = c.matches(&DeviceFacts { id: "p1", profile: "gw", tags: &tags });
            }
            Err(e) => assert!(e.column >= 1 && e.column <= text.chars().count() + 1, "{e}"),
        }
    }
    let _ = decode_desired(data);
});
