//! The wire format's golden fixtures (docs/specs/wire-format.md): messages as version 1 agents,
//! gateways and hubs send them must keep decoding to the same values.

use impeller_core::wire::{AggregateBody, decode_ack, decode_envelopes, decode_readings};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire-v1").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn version_1_messages_keep_decoding() {
    let single = decode_envelopes(&fixture("envelope-telemetry.json")).unwrap();
    let env = single[0].as_ref().unwrap();
    assert_eq!((env.device.as_str(), env.seq, env.prev, env.kind.as_str()), ("pump-001", 42, 41, "telemetry"));
    let body: AggregateBody = serde_json::from_str(env.body.get()).unwrap();
    assert_eq!((body.scored, body.channels[0].mean, body.score.map(|s| s.threshold)), (30, Some(41.2), Some(1.5)));

    // Two records in one message; 44 was evicted by the agent's quota, so 45 names 43.
    let batch = decode_envelopes(&fixture("envelopes-batch.json")).unwrap();
    let seqs: Vec<(u64, u64)> = batch.iter().map(|e| e.as_ref().map(|e| (e.seq, e.prev)).unwrap()).collect();
    assert_eq!(seqs, [(43, 42), (45, 43)]);

    let ack = decode_ack(&fixture("ack.json")).unwrap();
    assert_eq!((ack.acked, ack.held_from), (45, None));
    // Records 46 to 50 were lost on the way: the hub holds 51 on.
    let gap = decode_ack(&fixture("ack-gap.json")).unwrap();
    assert_eq!((gap.acked, gap.held_from), (45, Some(51)));
    let readings = decode_readings(&fixture("readings-batch.json")).unwrap();
    assert_eq!(readings.len(), 2);
    assert_eq!(readings[0].values["BEARING_TEMP_F"], None);
    assert_eq!(readings[1].values["FLOW_GPM"], Some(182.1));
}
