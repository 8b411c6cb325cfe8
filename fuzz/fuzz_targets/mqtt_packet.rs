//! The bytes a client sends to the hub's embedded broker are untrusted: the hub's front end
//! (impeller-hub `gate`) decodes them with rumqttd's MQTT 3.1.1 codec and checks every publish
//! topic and subscription filter against the device's rules. Arbitrary bytes must decode or be
//! refused, never panic; a decoded packet must encode again and decode to the same packet.
#![no_main]

use bytes::BytesMut;
use impeller_core::wire;
use libfuzzer_sys::fuzz_target;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Packet, Protocol};

const MAX_PACKET: usize = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let mut stream = BytesMut::from(data);
    while let Ok(packet) = V4.read_mut(&mut stream, MAX_PACKET) {
        match &packet {
            Packet::Publish(p, _) => {
                let topic = String::from_utf8_lossy(&p.topic);
                let _ = wire::device_may_publish("pump-1", &topic);
            }
            Packet::Subscribe(s, _) => {
                for f in &s.filters {
                    let _ = wire::device_may_subscribe("pump-1", &f.path);
                }
            }
            Packet::Connect(c, ..) => {
                let _ = wire::valid_device_id(&c.client_id);
            }
            _ => {}
        }
        let mut out = BytesMut::new();
        if V4.write(packet.clone(), &mut out).is_ok() {
            let again = V4.read_mut(&mut out, MAX_PACKET).expect("an encoded packet decodes");
            assert_eq!(format!("{again:?}"), format!("{packet:?}"), "round trip");
        }
    }
});
