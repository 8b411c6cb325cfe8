//! TLS on both of the hub's listeners, with a certificate of the test's own making: a device
//! logs in over mqtts with a third-party client (paho-mqtt over Python's ssl,
//! `tests/peers/mqtt_tls.py`) and its message is stored; the API answers over https a client
//! that trusts the hub's certificate; plain connections and clients that do not trust it get
//! nothing from either port.

use std::time::Duration;

use impeller_core::wire;
use impeller_hub::store::{FleetStore, TelemetryStore};
use impeller_hub::tls::TlsFiles;
use serde_json::json;

use crate::broker_rules::{paho_or_skip, run_peer};
use crate::{api_hub, free_port};

/// A self-signed certificate for localhost and 127.0.0.1 (its own CA) and its key, in `dir`.
pub(crate) fn certificate(dir: &std::path::Path) -> TlsFiles {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let files = TlsFiles { cert: dir.join("hub.pem"), key: dir.join("hub.key") };
    std::fs::write(&files.cert, made.cert.pem()).unwrap();
    std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_speak_tls_and_only_tls() {
    let dir = tempfile::tempdir().unwrap();
    let files = certificate(dir.path());
    let (hub, admin, _) = api_hub(dir.path(), |c| {
        c.device_auth = true;
        c.mqtt_listen = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
        c.mqtt_tls = Some(files.clone());
        c.http_tls = Some(files.clone());
    })
    .await;

    // The API: over https to a client trusting the certificate, by name and by address.
    let port = hub.http_addr.unwrap().port();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&files.cert).unwrap()).unwrap();
    let trusting = reqwest::Client::builder().tls_certs_only([ca]).build().unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let r = trusting.get(format!("https://{host}:{port}/api/v1/devices")).bearer_auth(&admin).send().await;
        assert_eq!(r.unwrap().status().as_u16(), 200, "{host}");
    }
    let r = reqwest::Client::new().get(format!("https://127.0.0.1:{port}/api/v1/devices")).send().await;
    assert!(r.is_err(), "a client with only the system's roots does not trust the hub: {r:?}");
    let r =
        reqwest::Client::new().get(format!("http://127.0.0.1:{port}/api/v1/devices")).bearer_auth(&admin).send().await;
    assert!(r.is_err(), "plain HTTP gets no answer from the TLS port: {r:?}");

    // The broker: a device over TLS, through a third-party client.
    if !paho_or_skip("both_listeners_speak_tls_and_only_tls, its mqtts part") {
        return;
    }
    let secret = hub.store.add_device("pump-t", &Default::default(), "gw", "test").await.unwrap();
    tokio::time::sleep(impeller_hub::fleet::REFRESH + Duration::from_millis(500)).await;
    let message = wire::encode_envelope("pump-t", 1, 0, 1_700_000_000_000, "events", br#"{"over":"tls"}"#).unwrap();
    let mqtt = hub.mqtt_addr.unwrap();
    let cfg = json!({
        "host": "localhost", "port": mqtt.port(), "ca": files.cert, "id": "pump-t", "secret": secret,
        "message": impeller_core::hex::encode(&message),
    });
    let (passed, log) = run_peer("mqtt_tls.py", &cfg).await;
    assert!(passed, "{log}");
    assert_eq!(log.matches("ok: ").count(), 4, "every check ran:\n{log}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = hub.store.messages("pump-t").await.unwrap();
    assert_eq!(stored.iter().map(|m| m.seq).collect::<Vec<_>>(), [1], "{log}");
}

/// Whether a client trusting only `ca` (a PEM file) gets an answer from the hub's API on `port`:
/// a new client each time, so each call makes a new handshake.
async fn trusted_by(ca: &[u8], port: u16) -> bool {
    let ca = reqwest::Certificate::from_pem(ca).unwrap();
    let client = reqwest::Client::builder().tls_certs_only([ca]).build().unwrap();
    client.get(format!("https://127.0.0.1:{port}/api/v1/health")).send().await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let files = certificate(dir.path());
    let (hub, _, _) = api_hub(dir.path(), |c| c.http_tls = Some(files.clone())).await;
    let port = hub.http_addr.unwrap().port();
    let first = std::fs::read(&files.cert).unwrap();
    assert!(trusted_by(&first, port).await);

    // Renewed in place (a new key too), as a certificate manager does.
    let renewed = tempfile::tempdir().unwrap();
    let new = certificate(renewed.path());
    std::fs::copy(&new.key, &files.key).unwrap();
    std::fs::copy(&new.cert, &files.cert).unwrap();
    let second = std::fs::read(&files.cert).unwrap();
    let until = std::time::Instant::now() + impeller_hub::tls::RELOAD_CHECK * 5;
    while !trusted_by(&second, port).await {
        assert!(std::time::Instant::now() < until, "the renewed certificate is not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!trusted_by(&first, port).await, "the old certificate is still served");

    // A certificate whose key is not the one beside it: the hub goes on serving the last good one.
    let other = tempfile::tempdir().unwrap();
    std::fs::copy(certificate(other.path()).cert, &files.cert).unwrap();
    tokio::time::sleep(impeller_hub::tls::RELOAD_CHECK * 2).await;
    for _ in 0..3 {
        assert!(trusted_by(&second, port).await, "a broken pair replaced the certificate in use");
    }
}
