//! The hub behind an external broker that asks for TLS and a login, as a production Mosquitto
//! would: the machine's `mosquitto` binary started on a free port with a TLS listener, a
//! password file and the ACL that docs/ARCHITECTURE.md gives. The hub logs in over mqtts, stores
//! a device's messages once and acknowledges them through the broker; the ACL keeps a device off
//! another's topics; a wrong password or an untrusted certificate stops the hub at start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use impeller_core::wire;
use impeller_hub::bus::ExternalBroker;
use impeller_hub::store::TelemetryStore;
use impeller_hub::{Hub, HubConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::{exactly_once, free_port};

/// The ACL that docs/ARCHITECTURE.md documents for Mosquitto, with `{hub}` the hub's user.
const ACL: &str = "user {hub}
topic readwrite impeller/v1/devices/#

pattern write impeller/v1/devices/%u/+
pattern read impeller/v1/devices/%u/ack
pattern read impeller/v1/devices/%u/desired
";

/// A Mosquitto process of the test's own, stopped when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn found(program: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Mosquitto with TLS (`cert`), `users` (name, password) in its password file and the ACL.
fn mosquitto(dir: &Path, cert: &impeller_hub::tls::TlsFiles, users: &[(&str, &str)]) -> Option<Mosquitto> {
    let (Some(broker), Some(passwd)) = (found("mosquitto"), found("mosquitto_passwd")) else {
        let why = "needs Mosquitto's mosquitto and mosquitto_passwd (Debian: apt-get install mosquitto)";
        crate::skip_without_peer("the_hub_logs_in_to_an_external_broker_over_tls", why);
        return None;
    };
    let passwords = dir.join("passwd");
    for (i, (user, password)) in users.iter().enumerate() {
        let mut run = Command::new(&passwd);
        run.arg("-b");
        if i == 0 {
            run.arg("-c");
        }
        let out = run.arg(&passwords).arg(user).arg(password).output().unwrap();
        assert!(out.status.success(), "mosquitto_passwd: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(dir.join("acl"), ACL.replace("{hub}", users[0].0)).unwrap();
    let port = free_port();
    // Run as root, Mosquitto would switch to its own user, which cannot read this folder.
    let me = Command::new("id").arg("-un").output().unwrap();
    let conf = format!(
        "per_listener_settings false\npersistence false\nuser {user}\nallow_anonymous false\n\
         password_file {passwords}\nacl_file {acl}\nlistener {port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n",
        user = String::from_utf8_lossy(&me.stdout).trim(),
        passwords = passwords.display(),
        acl = dir.join("acl").display(),
        cert = cert.cert.display(),
        key = cert.key.display(),
    );
    std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
    let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
    let child = Command::new(broker)
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stderr(log.try_clone().unwrap())
        .stdout(log)
        .spawn();
    let running = Mosquitto { child: child.unwrap(), port };
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let log = std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
        assert!(Instant::now() < until, "Mosquitto did not start listening on {port}:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(running)
}

/// A device logged in as itself over TLS, trusting `ca`.
fn device(id: &str, password: &str, port: u16, ca: &Path) -> MqttOptions {
    let mut opts = MqttOptions::new(id, "localhost", port);
    opts.set_credentials(id, password);
    let tls = impeller_hub::tls::client_config(ca).unwrap();
    opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls)));
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_logs_in_to_an_external_broker_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = crate::tls::certificate(dir.path());
    let users = [("impeller-hub", "hub-pass-1"), ("pump-a", "secret-a"), ("pump-b", "secret-b")];
    let Some(broker) = mosquitto(dir.path(), &cert, &users) else { return };
    std::fs::write(dir.path().join("hub.pass"), "hub-pass-1\n").unwrap();
    std::fs::write(dir.path().join("wrong.pass"), "hub-pass-2\n").unwrap();
    let hub_config = |password: &str, ca_cert: PathBuf| HubConfig {
        database: format!("sqlite:{}", dir.path().join("hub.db").display()),
        mqtt_listen: None,
        external_broker: Some(ExternalBroker {
            url: format!("mqtts://localhost:{}", broker.port),
            username: "impeller-hub".into(),
            password_file: dir.path().join(password),
            ca_cert,
        }),
        packages_dir: dir.path().join("packages"),
        ..Default::default()
    };

    // Mistakes a retry would not mend stop the hub at start, saying what happened.
    let started = Instant::now();
    let e = Hub::start(&hub_config("wrong.pass", cert.cert.clone())).await.unwrap_err();
    assert!(format!("{e:#}").contains("refused"), "{e:#}");
    let e = Hub::start(&hub_config("hub.pass", PathBuf::new())).await.unwrap_err();
    assert!(format!("{e:#}").to_lowercase().contains("certificate"), "the system's roots do not trust it: {e:#}");
    assert!(started.elapsed() < Duration::from_secs(8), "refused at once, not after the subscription wait");

    // Logged in over TLS: a device's messages are stored once and acknowledged through the broker.
    let cfg = hub_config("hub.pass", cert.cert.clone());
    let hub = exactly_once(cfg, device("pump-a", "secret-a", broker.port, &cert.cert), "pump-a").await;
    let n = hub.store.messages("pump-a").await.unwrap().len() as u64;

    // The ACL keeps pump-b off pump-a's topics: its publish as pump-a is dropped by the broker,
    // while its own message, published after it on the same connection, arrives.
    let (client, mut ev) = AsyncClient::new(device("pump-b", "secret-b", broker.port, &cert.cert), 10);
    let forged = wire::encode_envelope("pump-a", n + 1, n, 1_700_000_000_000, "events", b"{}").unwrap();
    client.publish(wire::topic("pump-a", "events"), QoS::AtLeastOnce, false, forged).await.unwrap();
    let own = wire::encode_envelope("pump-b", 1, 0, 1_700_000_000_000, "events", b"{}").unwrap();
    client.publish(wire::topic("pump-b", "events"), QoS::AtLeastOnce, false, own).await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while hub.store.messages("pump-b").await.unwrap().is_empty() {
        assert!(Instant::now() < until, "pump-b's own message never arrived");
        match tokio::time::timeout(Duration::from_millis(100), ev.poll()).await {
            Ok(Err(e)) => panic!("pump-b's connection failed: {e}"),
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success),
            _ => {}
        }
    }
    assert_eq!(hub.store.messages("pump-a").await.unwrap().len() as u64, n, "the forged message was not stored");
}

/// Ingestion stalled (nobody reads what the bus receives) while a device floods the broker: the
/// hub's own publishes (acknowledgements, desired state) must still go out. They did not when
/// the bus waited for ingestion, which could itself be waiting to hand acknowledgements over:
/// the hub stopped for good at 50,000 msg/s behind Mosquitto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_ingestion_does_not_stop_the_hubs_publishes() {
    let Some(url) = crate::mqtt("a_stalled_ingestion_does_not_stop_the_hubs_publishes") else { return };
    let (host, port) = url.strip_prefix("mqtt://").unwrap().rsplit_once(':').unwrap();
    let bus = impeller_hub::bus::external(&ExternalBroker::at(&url), &crate::unique("hub")).await.unwrap();
    let device = crate::unique("flood");
    let mut opts = MqttOptions::new(device.clone(), host, port.parse().unwrap());
    opts.set_inflight(1000);
    let (client, mut ev) = AsyncClient::new(opts, 1000);
    client.subscribe(wire::topic(&device, "ack"), QoS::AtLeastOnce).await.unwrap();
    let flood = impeller_hub::bus::EXTERNAL_BACKLOG + 5_000;
    let publisher = client.clone();
    let topic = wire::topic(&device, "telemetry");
    tokio::spawn(async move {
        for i in 0..flood {
            publisher.publish(&topic, QoS::AtLeastOnce, false, i.to_string()).await.unwrap();
        }
    });
    let (mut acked_by_broker, mut answered) = (0, false);
    let until = Instant::now() + Duration::from_secs(30);
    while !answered {
        assert!(
            Instant::now() < until,
            "the hub's publish never arrived ({acked_by_broker} of {flood} floods through)"
        );
        match tokio::time::timeout(Duration::from_millis(100), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                acked_by_broker += 1;
                // Once the flood is past what the bus holds, the hub publishes to the device.
                if acked_by_broker == flood {
                    let ack = impeller_hub::bus::Send {
                        topic: wire::topic(&device, "ack"),
                        payload: wire::encode_ack(7, None),
                        retain: false,
                    };
                    bus.outgoing.send(ack).await.unwrap();
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                answered = wire::decode_ack(&p.payload).unwrap().acked == 7;
                // Sent at QoS 0 (the device asked for up to 1): at QoS 1 the hub's client ran
                // out of packet ids under load and dropped its connection.
                assert_eq!(p.qos, QoS::AtMostOnce, "an acknowledgement is sent at QoS 0");
            }
            Ok(Err(e)) => panic!("the device's connection failed: {e}"),
            _ => {}
        }
    }
    assert!(bus.incoming.len() <= impeller_hub::bus::EXTERNAL_BACKLOG);
}
