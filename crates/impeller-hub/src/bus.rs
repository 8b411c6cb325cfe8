//! The hub's connection to MQTT: an embedded rumqttd broker consumed in-process (the default),
//! or any external MQTT broker through a client. Either way the rest of the hub sees two
//! channels: publishes coming in on the device topics, and publishes to send.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::fleet::Credentials;

/// A publish received on `impeller/v1/devices/+/+`.
#[derive(Debug)]
pub struct Received {
    pub topic: String,
    pub payload: bytes::Bytes,
    /// When the hub had it: ingestion measures its acknowledgement's delay from here.
    pub at: std::time::Instant,
}

impl Received {
    /// A publish received now.
    pub fn new(topic: String, payload: bytes::Bytes) -> Received {
        Received { topic, payload, at: std::time::Instant::now() }
    }
}

/// A publish to send.
#[derive(Debug)]
pub struct Send {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Kept by the broker for later subscribers (desired state); an empty payload clears it.
    pub retain: bool,
}

#[derive(Debug)]
pub struct Bus {
    pub incoming: mpsc::Receiver<Received>,
    pub outgoing: mpsc::Sender<Send>,
}

const FILTER: &str = "impeller/v1/devices/+/+";

/// Starts rumqttd's router with the hub's own link to it, and serves MQTT 3.1.1 clients on
/// `listen` through [`crate::gate`], which enforces each device's topics. With `credentials`, a
/// client must connect as a provisioned device (client id and user name = the device id,
/// password = its secret); without, any client id may connect. Returns the bus and the address
/// it listens on (`listen` with port 0 takes a free port). With `tls`, clients connect over TLS.
pub async fn embedded(
    listen: SocketAddr,
    credentials: Option<Credentials>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<(Bus, SocketAddr)> {
    const MAX_PACKET: usize = 4 << 20;
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 100_000,
            max_outgoing_packet_count: 1000,
            // The broker keeps messages in memory only; the agents' outboxes are what is durable.
            max_segment_size: 16 << 20,
            max_segment_count: 8,
            ..Default::default()
        },
        // No rumqttd listener: the gate is the network side.
        ..Default::default()
    };
    let (listener, addr) = crate::gate::bind(listen).await?;
    let broker = std::sync::Arc::new(rumqttd::Broker::new(config));
    let (mut link_tx, mut link_rx) = broker.link("impeller-hub")?;
    link_tx.subscribe(FILTER)?;
    let downlink = std::sync::Arc::new(crate::gate::Downlink::default());
    let (in_tx, incoming) = mpsc::channel(10_000);
    let gate = crate::gate::Gate::new(broker, downlink.clone(), in_tx.clone(), credentials, MAX_PACKET);
    tokio::spawn(gate.listen(listener, tls));

    std::thread::Builder::new().name("mqtt-link-rx".into()).spawn(move || {
        let _subscribed = link_tx;
        loop {
            match link_rx.recv() {
                Ok(Some(rumqttd::Notification::Forward(f))) => {
                    let topic = String::from_utf8_lossy(&f.publish.topic).into_owned();
                    if in_tx.blocking_send(Received::new(topic, f.publish.payload)).is_err() {
                        return;
                    }
                }
                // Without this the router stops scheduling the link after a few thousand messages.
                Ok(Some(rumqttd::Notification::Unschedule)) => {
                    if link_rx.ready().is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%error, "the embedded broker's link closed");
                    return;
                }
            }
        }
    })?;
    // The hub's publishes to devices go to their connections through the gate, not the router.
    let (outgoing, mut out_rx) = mpsc::channel::<Send>(10_000);
    tokio::spawn(async move {
        while let Some(s) = out_rx.recv().await {
            downlink.publish(s.topic, s.payload, s.retain);
        }
    });
    Ok((Bus { incoming, outgoing }, addr))
}

/// How long the hub waits at start for its subscription on an external broker.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);

/// Publishes from an external broker held for ingestion; beyond them, dropped (QoS 0).
pub const EXTERNAL_BACKLOG: usize = 10_000;

/// An external MQTT broker and how the hub logs in to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalBroker {
    /// `mqtt://host:port`, or `mqtts://host:port` for TLS.
    pub url: String,
    /// Empty: the hub connects without a user name.
    pub username: String,
    /// A file whose first line is the password (kept out of the config file). Empty: none.
    pub password_file: PathBuf,
    /// PEM certificates an `mqtts://` broker's must chain to. Empty: the system's roots.
    pub ca_cert: PathBuf,
}

impl ExternalBroker {
    /// A broker at `url` that needs no login.
    pub fn at(url: impl Into<String>) -> ExternalBroker {
        ExternalBroker { url: url.into(), ..Default::default() }
    }

    /// Host, port and whether it is TLS, from `url`.
    pub fn address(&self) -> anyhow::Result<(String, u16, bool)> {
        let url = &self.url;
        let (rest, tls) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => anyhow::bail!("broker `{url}` must start with mqtt:// or mqtts://"),
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("broker `{url}` needs a port"))?;
        let port = port.parse().map_err(|_| anyhow::anyhow!("broker `{url}`: `{port}` is not a port"))?;
        Ok((host.to_string(), port, tls))
    }

    fn options(&self, client_id: &str) -> anyhow::Result<MqttOptions> {
        let (host, port, tls) = self.address()?;
        let mut opts = MqttOptions::new(client_id, host, port);
        if !self.password_file.as_os_str().is_empty() {
            let file = self.password_file.display();
            let text = std::fs::read_to_string(&self.password_file)
                .with_context(|| format!("reading the broker's password file {file}"))?;
            let password = text.lines().next().unwrap_or_default();
            anyhow::ensure!(!password.is_empty(), "the broker's password file {file} is empty");
            opts.set_credentials(&self.username, password);
        } else if !self.username.is_empty() {
            opts.set_credentials(&self.username, "");
        }
        if tls {
            let config = crate::tls::client_config(&self.ca_cert).context("TLS to the external broker")?;
            opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config)));
        }
        Ok(opts)
    }
}

/// A refused login or an untrusted certificate: what a retry would not mend. (A connection
/// reset during the handshake is an I/O error of another kind, and is retried.)
fn is_misconfigured(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::ConnectionRefused(_) => true,
        ConnectionError::Tls(rumqttc::TlsError::Io(io)) => io.kind() == std::io::ErrorKind::InvalidData,
        ConnectionError::Tls(_) => true,
        _ => false,
    }
}

/// Connects to an external broker. Returns once the hub's subscription to the device topics is
/// acknowledged (what devices publish before that, the broker does not keep for us), or after
/// `SUBSCRIBE_WAIT` with a warning if the broker is unreachable: the connection keeps retrying,
/// and the agents resend what is not acknowledged. A broker that refuses the hub's login, or
/// whose certificate it does not trust, is an error at once: retrying would not mend it.
pub async fn external(broker: &ExternalBroker, client_id: &str) -> anyhow::Result<Bus> {
    let mut opts = broker.options(client_id)?;
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(4 << 20, 4 << 20);
    opts.set_inflight(500);
    let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
    let (in_tx, incoming) = mpsc::channel(EXTERNAL_BACKLOG);
    let sub = client.clone();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        let mut dropped = 0u64;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // QoS 0: the agents resend what the hub has not acknowledged after its commit,
                    // so the broker need not track delivery to the hub; at QoS 1 Mosquitto's
                    // defaults (20 in flight, 1000 queued) capped the hub near 5,000 msg/s and
                    // dropped the rest.
                    if let Err(error) = sub.subscribe(FILTER, QoS::AtMostOnce).await {
                        tracing::error!(%error, "cannot subscribe to the device topics");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // Never wait for ingestion here: this loop also sends the hub's
                    // acknowledgements, which ingestion may be waiting to hand over (a deadlock
                    // at 50,000 msg/s behind Mosquitto). Dropping a QoS 0 publish is what the
                    // broker does to a slow subscriber anyway; the agent sends it again.
                    match in_tx.try_send(Received::new(p.topic, p.payload)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            dropped += 1;
                            if dropped.is_power_of_two() {
                                tracing::warn!(
                                    dropped,
                                    "ingestion is behind: publishes dropped, the agents send them again"
                                );
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                Ok(_) => {}
                Err(error) if subscribed_tx.is_some() && is_misconfigured(&error) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(Err(error.to_string()));
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "broker unreachable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let (outgoing, mut out_rx) = mpsc::channel::<Send>(10_000);
    tokio::spawn(async move {
        while let Some(s) = out_rx.recv().await {
            // Acknowledgements at QoS 0: each one covers every message before it, so a lost one
            // is mended by the next, and at 50,000 msg/s QoS 1 ran the client out of packet ids
            // while the broker's PUBACKs queued behind the flood of device publishes ("collision
            // on packet id", then a timeout that dropped the connection). The retained desired
            // state must arrive: QoS 1.
            let qos = if s.retain { QoS::AtLeastOnce } else { QoS::AtMostOnce };
            if let Err(error) = client.publish(s.topic, qos, s.retain, s.payload).await {
                tracing::error!(%error, "cannot publish to the broker");
            }
        }
    });
    match tokio::time::timeout(SUBSCRIBE_WAIT, subscribed).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => anyhow::bail!("the broker {} refused the hub: {error}", broker.url),
        Ok(Err(_)) => anyhow::bail!("the connection to the broker {} ended", broker.url),
        Err(_) => {
            tracing::warn!(broker = %broker.url, "not subscribed to the device topics yet; starting anyway and retrying")
        }
    }
    Ok(Bus { incoming, outgoing })
}
