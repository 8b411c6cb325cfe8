//! `impeller device add` and `impeller hub` as a user runs them: embedded broker and SQLite in a
//! data folder. The provisioned device connects with its secret, publishes one message and gets
//! it acknowledged; a wrong secret is refused; `device list` and `device revoke` work.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{KillOnDrop, impeller};

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

fn connect_packet(device: &str, secret: &str) -> Vec<u8> {
    let mut connect = string("MQTT");
    connect.extend_from_slice(&[4, 0xC2, 0, 30]); // 3.1.1; user name, password, clean session
    connect.extend(string(device));
    connect.extend(string(device));
    connect.extend(string(secret));
    packet(0x10, &connect)
}

#[test]
fn a_provisioned_device_is_acknowledged_and_a_wrong_secret_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // The first admin token comes from the hub's database; devices are then provisioned
    // through the running hub's API.
    let out = impeller(&["token", "create", "root", "--role", "admin", "--data-dir", data]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port, http) = (free(), free());
    let mut hub = Command::new(env!("CARGO_BIN_EXE_impeller"))
        .args(["hub", "--data-dir"])
        .arg(dir.path())
        .args(["--mqtt-listen", &format!("127.0.0.1:{port}"), "--http-listen", &format!("127.0.0.1:{http}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hub_url = format!("http://127.0.0.1:{http}");
    let device = |args: &[&str]| {
        let mut all = vec!["device"];
        all.extend(args);
        all.extend(["--hub", hub_url.as_str(), "--token", token.as_str()]);
        impeller(&all)
    };
    let until = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = device(&["add", "cli-test", "--tags", "site=north", "--json"]);
        if out.status.success() || Instant::now() > until {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = added["secret"].as_str().unwrap().to_string();
    let again = device(&["add", "cli-test"]);
    assert_eq!(again.status.code(), Some(3), "a second device with the same id is an input error");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad_tags = device(&["add", "x", "--tags", "site"]);
    assert_eq!(bad_tags.status.code(), Some(3));

    let until = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        assert!(Instant::now() < until, "the hub did not listen");
        std::thread::sleep(Duration::from_millis(50));
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A wrong secret: CONNACK with return code 5 (not authorised), or the connection closed.
    let mut wrong = TcpStream::connect(("127.0.0.1", port)).unwrap();
    wrong.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    wrong.write_all(&connect_packet("cli-test", "not-the-secret")).unwrap();
    let mut ack = [0u8; 4];
    let refused = match wrong.read(&mut ack) {
        Ok(4) => ack[3] != 0,
        _ => true,
    };
    assert!(refused, "a wrong secret was accepted: {ack:?}");
    s.write_all(&connect_packet("cli-test", &secret)).unwrap();
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
    assert!(String::from_utf8_lossy(&seen).contains(r#""acked":1"#), "no acknowledgement: {seen:?}");
    let list = device(&["list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("cli-test\tactive\tdefault\tsite=north\t-"));
    assert!(device(&["revoke", "cli-test"]).status.success());
    let list = device(&["list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("cli-test\trevoked"));
    assert_eq!(device(&["revoke", "nobody"]).status.code(), Some(3));
    let _ = hub.kill();
    let _ = hub.wait();
}

#[test]
fn the_hub_runs_from_its_generated_configuration_file_and_refuses_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = impeller(&["hub", "generate-config"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let default = String::from_utf8(out.stdout).unwrap();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (mqtt, http, http_flag) = (free(), free(), free());
    let data = dir.path().join("data");
    let text = default
        .replace("127.0.0.1:1884", &format!("127.0.0.1:{mqtt}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{http}"))
        .replace("data_dir = \"impeller-hub-data\"", &format!("data_dir = {:?}", data.display().to_string()));
    let config = dir.path().join("hub.toml");
    std::fs::write(&config, &text).unwrap();

    // A typo is refused with the file and line named, and nothing starts.
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, text.replace("allow_anonymous", "allow_anonymus")).unwrap();
    let out = impeller(&["hub", "--config", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("typo.toml") && err.contains("line") && err.contains("allow_anonymus"), "{err}");

    // The file's broker port and data folder, with the API port overridden by a flag.
    let hub = Command::new(env!("CARGO_BIN_EXE_impeller"))
        .args(["hub", "--config", config.to_str().unwrap(), "--http-listen", &format!("127.0.0.1:{http_flag}")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _hub = KillOnDrop(hub);
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", http_flag)).is_err() || TcpStream::connect(("127.0.0.1", mqtt)).is_err() {
        assert!(Instant::now() < until, "the hub did not listen where its configuration says");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(TcpStream::connect(("127.0.0.1", http)).is_err(), "the flag overrides the file's API address");
    assert!(data.join("hub.db").exists(), "SQLite in the file's data folder");
}
