//! MQTT payloads are untrusted: an envelope, an acknowledgement or a readings message built from
//! arbitrary bytes must decode or be refused, never panic; what decodes must encode again.
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
    let _ = wire::decode_ack(data);
    let _ = wire::decode_readings(data);
});
