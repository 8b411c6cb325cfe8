//! Each device reaches only its own topics at the embedded broker, checked with a third-party
//! client (paho-mqtt from PyPI, `tests/peers/mqtt_refusals.py`): wrong or missing secrets,
//! another device's client id, subscriptions to another device's desired state and to
//! wildcards, publishing as another device, the API without a token or with another device's
//! credentials, and a device revoked while connected. Each refusal has a control beside it that
//! shows the same client doing what it may; the store then shows what got through.

use std::process::Command;
use std::time::Duration;

use impeller_core::wire;
use impeller_hub::Hub;
use impeller_hub::store::{ArtifactStore, DeploymentInfo, DeploymentStore, FleetStore, PackageInfo, TelemetryStore};
use serde_json::json;

use crate::{api_hub, free_port};

/// Whether paho-mqtt is there; if not, says that `what` is skipped (or fails the test when
/// IMPELLER_REQUIRE_PEERS is set).
pub(crate) fn paho_or_skip(what: &str) -> bool {
    let found = Command::new("python3").args(["-c", "import paho.mqtt.client"]).output();
    if found.is_ok_and(|o| o.status.success()) {
        return true;
    }
    crate::skip_without_peer(what, "needs paho-mqtt (pip install -r crates/impeller-hub/tests/peers/requirements.txt)");
    false
}

/// Runs the peer script `tests/peers/{script}` with `cfg` as its argument; whether it succeeded,
/// and what it printed.
pub(crate) async fn run_peer(script: &str, cfg: &serde_json::Value) -> (bool, String) {
    let mut run = Command::new("python3");
    run.args([format!("{}/tests/peers/{script}", env!("CARGO_MANIFEST_DIR")), cfg.to_string()]);
    let out = tokio::task::spawn_blocking(move || run.output()).await.unwrap().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A retained desired state for every device: a deployment of a recorded package to all.
async fn deploy_to_all(hub: &Hub) {
    let sha = "d".repeat(64);
    let package = PackageInfo {
        sha256: sha.clone(),
        size: 10,
        model: "m".into(),
        version: "1".into(),
        release: 1,
        target: "gw".into(),
        signed_by: "k".into(),
        uploaded_ms: 1,
    };
    hub.store.put_package(&package, &[], "test").await.unwrap();
    let deployment = DeploymentInfo {
        name: "all".into(),
        package_sha256: sha,
        target_condition: "*".into(),
        priority: 0,
        created_ms: 2,
        stopped_ms: None,
        rollout: None,
        wave: 0,
        wave_started_ms: 2,
        completed_ms: None,
        aborted_ms: None,
        abort_reason: None,
    };
    hub.store.add_deployment(&deployment, "test").await.unwrap();
    hub.reconcile.notify_one();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reaches_only_its_own_topics_and_is_dropped_when_revoked() {
    if !paho_or_skip("a_device_reaches_only_its_own_topics_and_is_dropped_when_revoked") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (hub, admin, _) = api_hub(dir.path(), |c| {
        c.device_auth = true;
        c.mqtt_listen = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    })
    .await;
    let tags = [("site".to_string(), "north".to_string())].into_iter().collect();
    let mut secrets = Vec::new();
    for id in ["pump-a", "pump-b", "pump-c"] {
        secrets.push(hub.store.add_device(id, &tags, "gw", "test").await.unwrap());
    }
    deploy_to_all(&hub).await;
    // Added through the store, not the API: the broker sees them at its next credentials refresh.
    tokio::time::sleep(impeller_hub::fleet::REFRESH + Duration::from_millis(500)).await;
    // Well-formed messages: a's own, and one of b's that a tries to slip in on b's topic.
    let own = wire::encode_envelope("pump-a", 1, 0, 1_700_000_000_000, "events", br#"{"from":"a"}"#).unwrap();
    let others = wire::encode_envelope("pump-b", 1, 0, 1_700_000_000_000, "telemetry", br#"{"from":"a"}"#).unwrap();
    let hex = |b: &[u8]| impeller_core::hex::encode(b);
    let mqtt = hub.mqtt_addr.unwrap();
    let cfg = json!({
        "host": mqtt.ip().to_string(), "port": mqtt.port(),
        "api": format!("http://{}", hub.http_addr.unwrap()), "admin_token": admin,
        "a": {"id": "pump-a", "secret": secrets[0], "own_message": hex(&own), "others_message": hex(&others)},
        "b": {"id": "pump-b", "secret": secrets[1]},
        "c": {"id": "pump-c", "secret": secrets[2]},
    });
    let (passed, log) = run_peer("mqtt_refusals.py", &cfg).await;
    assert!(passed, "the third-party client found a hole:\n{log}");
    assert_eq!(log.matches("ok: ").count(), 27, "every check ran:\n{log}");
    eprintln!("{log}");

    // What reached the store: a's own message, nothing in b's name.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = hub.store.messages("pump-a").await.unwrap();
    assert_eq!(a.iter().map(|m| m.seq).collect::<Vec<_>>(), [1], "{log}");
    assert!(hub.store.messages("pump-b").await.unwrap().is_empty(), "a's message in b's name was stored:\n{log}");
    let devices = hub.store.devices().await.unwrap();
    let c = devices.iter().find(|d| d.id == "pump-c").unwrap();
    assert!(c.revoked_ms.is_some(), "c was revoked through the API");
}

/// Regression: a client that sends CONNECT and SUBSCRIBE in one write (the load bench's lean
/// client does) got no SUBACK, because the gate waited for more bytes before reading what was
/// already buffered behind the CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_behind_the_connect_in_one_write_are_answered() {
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{Connect, Packet, Subscribe};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let (cfg, port) = crate::embedded_sqlite(dir.path(), true);
    let store = impeller_hub::store::Store::open(&cfg.database).await.unwrap();
    let secret = store.add_device("pump-1", &Default::default(), "gw", "test").await.unwrap();
    let _hub = Hub::start(&cfg).await.unwrap();
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut connect = Connect::new("pump-1");
    connect.set_login("pump-1", secret);
    let mut out = bytes::BytesMut::new();
    Packet::Connect(connect).write(&mut out, 1 << 20).unwrap();
    Packet::Subscribe(Subscribe::new(wire::topic("pump-1", "ack"), QoS::AtLeastOnce)).write(&mut out, 1 << 20).unwrap();
    socket.write_all(&out).await.unwrap();
    let mut read = bytes::BytesMut::new();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read_buf(&mut read)).await;
        assert!(n.is_ok_and(|n| n.is_ok_and(|n| n > 0)), "no answer; seen {seen:?}");
        while let Ok(p) = Packet::read(&mut read, 1 << 20) {
            seen.push(format!("{p:?}"));
        }
    }
    assert!(seen[0].starts_with("ConnAck") && seen[0].contains("Success"), "{seen:?}");
    // The gate delivers the downlink at QoS 0, whatever was asked.
    assert!(seen[1].starts_with("SubAck") && seen[1].contains("Success(AtMostOnce)"), "{seen:?}");
}
