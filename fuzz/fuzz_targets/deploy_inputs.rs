//! Target conditions (operators' text, through the API) and desired-state messages (MQTT
//! payloads) are untrusted: they must parse or be refused with a column, never panic or
//! recurse without bound; a parsed condition must evaluate. Rollout policies (API JSON) must be
//! refused or, once valid, give wave sizes within the fleet and decisions without panicking.
#![no_main]

use std::collections::BTreeMap;

use impeller_core::deploy::{Condition, DeviceFacts, decode_desired};
use impeller_core::rollout::{Evidence, Rollout, step};
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
    if let Ok(policy) = serde_json::from_slice::<Rollout>(data)
        && policy.validate().is_ok()
    {
        let mut before = 0;
        for wave in 0..policy.waves.len() {
            let n = policy.wave_size(wave, 1000);
            assert!(n >= before && n <= 1000 && n >= 1, "{policy:?}");
            before = n;
        }
        assert_eq!(before, 1000, "the last wave takes everyone");
        let e = Evidence { members: 10, active: 9, failed: 1, ..Evidence::default() };
        let _ = step(&policy, policy.waves.len() - 1, 0, i64::MAX, &e);
    }
});
