//! The hub's ingestion against real brokers and databases: the embedded rumqttd and the
//! machine's Mosquitto; SQLite and PostgreSQL (when IMPELLER_TEST_POSTGRES is set).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use impeller_core::wire;
use impeller_hub::{Hub, HubConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), free_port())
}

/// The embedded broker on a free port and SQLite in `dir`.
fn embedded_sqlite(dir: &std::path::Path, device_auth: bool) -> (HubConfig, u16) {
    let port = free_port();
    let cfg = HubConfig {
        database: format!("sqlite:{}", dir.join("hub.db").display()),
        mqtt_listen: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        external_broker: None,
        device_auth,
        ..Default::default()
    };
    (cfg, port)
}

fn postgres(test: &str) -> Option<String> {
    match std::env::var("IMPELLER_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("{test}: SKIPPED, needs PostgreSQL: set IMPELLER_TEST_POSTGRES=postgres://user@host/db");
            None
        }
    }
}

fn mqtt(test: &str) -> Option<String> {
    match std::env::var("IMPELLER_TEST_MQTT") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("{test}: SKIPPED, needs an MQTT broker: set IMPELLER_TEST_MQTT=mqtt://host:port");
            None
        }
    }
}

/// A device that sends 1..=n out of order, some twice, plus a malformed message and one that
/// claims to come from another device; returns the acknowledgements it saw, in order.
async fn device_session(host: &str, port: u16, device: &str, n: u64) -> Vec<u64> {
    let mut opts = MqttOptions::new(unique("dev"), host, port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(opts, 1000);
    client.subscribe(wire::topic(device, "ack"), QoS::AtLeastOnce).await.unwrap();
    // Wait for the subscription before publishing.
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.unwrap() {
            break;
        }
    }
    let mut order: Vec<u64> = (1..=n).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let dupes: Vec<u64> = order.iter().copied().filter(|s| s % 7 == 0).collect();
    let body = |seq: u64| format!(r#"{{"seq_in_body":{seq}}}"#);
    let publisher = client.clone();
    let device_owned = device.to_string();
    tokio::spawn(async move {
        let device = device_owned.as_str();
        for seq in order.into_iter().chain(dupes) {
            let payload = wire::encode_envelope(
                device,
                seq,
                seq - 1,
                1_700_000_000_000 + seq as i64,
                "events",
                body(seq).as_bytes(),
            )
            .unwrap();
            publisher.publish(wire::topic(device, "events"), QoS::AtLeastOnce, false, payload).await.unwrap();
        }
        let bad = b"{\"v\":1,\"device\":".to_vec();
        publisher.publish(wire::topic(device, "events"), QoS::AtLeastOnce, false, bad).await.unwrap();
        let spoof = wire::encode_envelope("someone-else", n + 1, n, 0, "events", b"{}").unwrap();
        publisher.publish(wire::topic(device, "events"), QoS::AtLeastOnce, false, spoof).await.unwrap();
    });
    let mut acks = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while acks.last() != Some(&n) && Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => acks.push(wire::decode_ack(&p.payload).unwrap().acked),
            Ok(Err(e)) => panic!("device connection failed: {e}"),
            _ => {}
        }
    }
    acks
}

async fn exactly_once(cfg: HubConfig, host: &str, port: u16) {
    let hub = Hub::start(&cfg).await.unwrap();
    let device = unique("pump");
    let n = 300;
    let acks = device_session(host, port, &device, n).await;
    assert_eq!(acks.last(), Some(&n), "acknowledgements seen: {acks:?}");
    assert!(acks.windows(2).all(|w| w[0] <= w[1]), "acknowledgements never go back: {acks:?}");
    let stored = hub.store.messages(&device).await.unwrap();
    assert_eq!(stored.len() as u64, n, "each seq stored once");
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1);
        assert_eq!(m.body, format!(r#"{{"seq_in_body":{}}}"#, m.seq));
    }
    // The refusals arrive after the last acknowledgement; give them a moment.
    let until = Instant::now() + Duration::from_secs(5);
    while hub.stats.refused.load(std::sync::atomic::Ordering::Relaxed) < 2 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.stats.refused.load(std::sync::atomic::Ordering::Relaxed), 2, "malformed and spoofed");
    let resent = (1..=n).filter(|s| s % 7 == 0).count() as u64;
    let duplicates = hub.stats.duplicates.load(std::sync::atomic::Ordering::Relaxed);
    assert!(duplicates >= resent, "{duplicates} duplicates counted, {resent} sent");
    // A restarted hub resumes the stream where it was: a redelivery is acknowledged at once.
    let (acked, beyond) = hub.store.stream_state(&device).await.unwrap();
    assert_eq!((acked, beyond.len()), (n, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_and_sqlite_store_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, port) = embedded_sqlite(dir.path(), false);
    exactly_once(cfg, "127.0.0.1", port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_mosquitto_and_postgres_store_each_message_once() {
    let (Some(broker), Some(pg)) = (
        mqtt("external_mosquitto_and_postgres_store_each_message_once"),
        postgres("external_mosquitto_and_postgres_store_each_message_once"),
    ) else {
        return;
    };
    let (host, port) = broker.strip_prefix("mqtt://").unwrap().rsplit_once(':').unwrap();
    let cfg =
        HubConfig { database: pg, mqtt_listen: None, external_broker: Some(broker.clone()), ..Default::default() };
    exactly_once(cfg, host, port.parse().unwrap()).await;
}

/// The outcome of one connection attempt to the embedded broker.
async fn connects(port: u16, client_id: &str, user: &str, pass: &str) -> bool {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_credentials(user, pass);
    let (_client, mut ev) = AsyncClient::new(opts, 10);
    match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => ack.code == rumqttc::ConnectReturnCode::Success,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_admits_only_provisioned_unrevoked_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, port) = embedded_sqlite(dir.path(), true);
    // Provisioned before the hub starts, as `impeller device add` would.
    let store = impeller_hub::store::Store::open(&cfg.database).await.unwrap();
    let tags = impeller_hub::fleet::parse_tags("site=north,manufacturer=acme").unwrap();
    let secret = store.add_device("p-101", &tags, "gw-small").await.unwrap();
    let other = store.add_device("p-102", &tags, "gw-small").await.unwrap();
    assert!(store.add_device("p-101", &tags, "gw-small").await.is_err(), "ids are unique");
    let hub = Hub::start(&cfg).await.unwrap();
    assert!(connects(port, "p-101", "p-101", &secret).await, "the right secret");
    assert!(!connects(port, "p-101", "p-101", &other).await, "another device's secret");
    assert!(!connects(port, "p-101", "p-101", "").await, "no secret");
    assert!(!connects(port, "p-102", "p-101", &secret).await, "client id of another device");
    assert!(!connects(port, "p-999", "p-999", &secret).await, "unknown device");
    // Revoked (by another process, through the database): refused after the next refresh.
    hub.store.revoke_device("p-101").await.unwrap();
    tokio::time::sleep(impeller_hub::fleet::REFRESH + Duration::from_millis(500)).await;
    assert!(!connects(port, "p-101", "p-101", &secret).await, "revoked");
    assert!(connects(port, "p-102", "p-102", &other).await, "the others still connect");
    let listed = hub.store.devices().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0].revoked_ms.is_some() && listed[1].revoked_ms.is_none());
    assert_eq!(listed[1].tags.get("site").map(String::as_str), Some("north"));
    // No secret is stored in the clear.
    let raw = std::fs::read(dir.path().join("hub.db")).unwrap_or_default();
    let wal = std::fs::read(dir.path().join("hub.db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the secret is in the database file");
    }
}
