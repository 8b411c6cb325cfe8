//! `impeller hub` as a user starts it: embedded broker and SQLite in a data folder. A device
//! publishes one message and gets it acknowledged; the database file holds it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A bare MQTT 3.1.1 client over a socket: CONNECT, SUBSCRIBE, PUBLISH (QoS 0); enough to talk
/// to the hub without a client library.
fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 128;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

#[test]
fn the_hub_acknowledges_what_a_device_sends() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut hub = Command::new(env!("CARGO_BIN_EXE_impeller"))
        .args(["hub", "--data-dir"])
        .arg(dir.path())
        .args(["--mqtt-listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        assert!(Instant::now() < until, "the hub did not listen");
        std::thread::sleep(Duration::from_millis(50));
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut connect = string("MQTT");
    connect.extend_from_slice(&[4, 2, 0, 30]);
    connect.extend(string("cli-test-device"));
    s.write_all(&packet(0x10, &connect)).unwrap();
    let mut subscribe = vec![0, 1];
    subscribe.extend(string("impeller/v1/devices/cli-test/ack"));
    subscribe.push(0);
    s.write_all(&packet(0x82, &subscribe)).unwrap();
    std::thread::sleep(Duration::from_millis(300)); // CONNACK and SUBACK arrive meanwhile
    let envelope = br#"{"v":1,"device":"cli-test","seq":1,"prev":0,"ts_ms":1700000000000,"kind":"events","body":{"event":"started","detail":null}}"#;
    let mut publish = string("impeller/v1/devices/cli-test/events");
    publish.extend_from_slice(envelope);
    s.write_all(&packet(0x30, &publish)).unwrap();

    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(r#""acked":1"#) && Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let _ = hub.kill();
    let _ = hub.wait();
    assert!(String::from_utf8_lossy(&seen).contains(r#""acked":1"#), "no acknowledgement: {seen:?}");
    assert!(dir.path().join("hub.db").exists());
}
