//! MQTT payloads are untrusted: an envelope or an array of them, an acknowledgement or a readings
//! message built from arbitrary bytes must decode or be refused, never panic; what decodes must
//! encode again, and an array of what decoded must decode to the same.
#![no_main]

use impeller_core::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = wire::decode_envelope(data) {
        let again = wire::encode_envelope(&env.device, env.seq, env.prev, env.ts_ms, &env.kind, env.body.get().as_bytes());
        if let Ok(bytes) = again {
            let back = wire::decode_envelope(&bytes).expect("a re-encoded envelope decodes");
            assert_eq!((back.seq, back.prev, back.ts_ms), (env.seq, env.prev, env.ts_ms));
        }
    }
    if let Ok(all) = wire::decode_envelopes(data) {
        assert!(all.len() <= wire::MAX_ENVELOPES);
        let good: Vec<Vec<u8>> = all
            .iter()
            .flatten()
            .filter_map(|e| wire::encode_envelope(&e.device, e.seq, e.prev, e.ts_ms, &e.kind, e.body.get().as_bytes()).ok())
            .collect();
        let back = wire::decode_envelopes(&wire::encode_envelopes(&good)).expect("an array of good envelopes decodes");
        assert_eq!(back.len(), good.len());
        assert!(back.iter().all(Result::is_ok));
    }
    let _ = wire::decode_ack(data);
    let _ = wire::decode_readings(data);
});
