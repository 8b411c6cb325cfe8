//! The embedded broker's network side: the MQTT 3.1.1 connections of devices, each packet
//! checked before it reaches rumqttd's router. rumqttd authenticates connections but has no
//! topic authorisation, so the hub speaks MQTT to the devices itself and hands what a device
//! may send to the router through an in-process link (one per connection, no second socket).
//! Connections are plain TCP, or TLS when the hub has a certificate ([`crate::tls`]). The rules:
//!
//! - CONNECT: client id and user name name a provisioned, unrevoked device and the password is
//!   its secret (else CONNACK 4, or 5 without a login); no will message (5: not supported here,
//!   as the router link cannot carry one). A persistent session is not kept: CONNACK always says
//!   no session is present, and the agent's outbox is what makes delivery durable.
//! - PUBLISH only on the device's own uplink topics ([`wire::device_may_publish`]); anything
//!   else closes the connection, since MQTT 3.1.1 cannot refuse a single publish.
//! - SUBSCRIBE only to the device's own `ack` and `desired` ([`wire::device_may_subscribe`]):
//!   a request with any other filter (another device's topic, a wildcard) subscribes to nothing
//!   and is answered with SUBACK 0x80 for each of its filters.
//! - The hub's publishes to devices (`ack`, `desired`) do not pass through the router: the gate
//!   keeps the subscriptions to those exact topics ([`Downlink`]) and writes the publishes to
//!   each subscriber's connection at QoS 0, the retained desired state on subscribing. rumqttd
//!   matches each topic it has not seen against every subscription, and each new subscription
//!   against every topic: with one subscription per device, a fleet of 10,000 connecting cost
//!   the router's single thread tens of seconds before its first acknowledgement went out.
//! - A device revoked while connected is disconnected as soon as the hub's credentials learn it
//!   (at once for `impeller device revoke` through this hub's API).
//!
//! - A device's publishes go straight to the hub's ingestion, not through the router (which
//!   would only hand them on to the hub's one subscription, at two thread hops and two copies
//!   per packet). While ingestion is behind, the connection stops reading (TCP pushes back on
//!   the device) but still writes its acknowledgements.
//!
//! Without credentials (`allow_anonymous`, for tests and benchmarks) any client may connect and
//! use any topic, as rumqttd alone would allow, through a router link of its own; a wildcard
//! subscription then goes to the router and sees what clients publish, not the hub's downlink.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use impeller_core::wire;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet, PingResp, Protocol, PubAck, PubAckReason,
    PubComp, PubCompReason, PubRec, PubRecReason, Publish, QoS, SubAck, SubscribeReasonCode, UnsubAck,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::bus::Received;
use crate::fleet::Credentials;

/// A device's connection: TCP, or TLS over it. A TLS stream holds what is written until
/// flushed, so every write is followed by a flush (free on TCP).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// How long a new connection may take to send its CONNECT.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long a connection with keep-alive 0 may stay silent.
const IDLE_WITHOUT_KEEPALIVE: Duration = Duration::from_secs(300);
/// Downlink publishes queued for one connection before more are dropped (an acknowledgement is
/// cumulative, so the next one makes up for a dropped one).
const DOWNLINK_QUEUE: usize = 1024;

/// The subscriptions to the hub's downlink topics and the retained desired state, shared by
/// the gate's connections and the hub's side of the bus.
#[derive(Debug, Default)]
pub struct Downlink {
    state: Mutex<Subscriptions>,
    sessions: AtomicU64,
}

#[derive(Debug, Default)]
struct Subscriptions {
    by_topic: HashMap<String, Vec<(u64, mpsc::Sender<Down>)>>,
    retained: HashMap<String, Bytes>,
}

/// One downlink publish on its way to a connection.
#[derive(Debug)]
struct Down {
    topic: Bytes,
    payload: Bytes,
}

impl Downlink {
    /// Sends `payload` on `topic` to its subscribers now; `retain` also keeps it for later ones
    /// (an empty payload clears what was kept).
    pub fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        let payload = Bytes::from(payload);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if retain {
            if payload.is_empty() {
                state.retained.remove(&topic);
            } else {
                state.retained.insert(topic.clone(), payload.clone());
            }
        }
        if payload.is_empty() {
            return;
        }
        let Some(subscribers) = state.by_topic.get_mut(&topic) else { return };
        let topic = Bytes::from(topic.into_bytes());
        subscribers.retain(|(_, tx)| match tx.try_send(Down { topic: topic.clone(), payload: payload.clone() }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(topic = %String::from_utf8_lossy(&topic), "a connection is not reading; dropped a downlink publish");
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// Adds session `id` as a subscriber of `topic`; what is retained on it, if anything.
    fn subscribe(&self, topic: &str, id: u64, tx: &mpsc::Sender<Down>) -> Option<Bytes> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let subscribers = state.by_topic.entry(topic.to_string()).or_default();
        if !subscribers.iter().any(|(s, _)| *s == id) {
            subscribers.push((id, tx.clone()));
        }
        state.retained.get(topic).cloned()
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(subscribers) = state.by_topic.get_mut(topic) {
            subscribers.retain(|(s, _)| *s != id);
            if subscribers.is_empty() {
                state.by_topic.remove(topic);
            }
        }
    }
}

/// A connection's side of the downlink: its subscriptions and their queue.
struct Session {
    id: u64,
    tx: mpsc::Sender<Down>,
    rx: mpsc::Receiver<Down>,
    topics: Vec<String>,
}

impl Session {
    fn open(downlink: &Downlink) -> Session {
        let (tx, rx) = mpsc::channel(DOWNLINK_QUEUE);
        Session { id: downlink.sessions.fetch_add(1, Ordering::Relaxed), tx, rx, topics: Vec::new() }
    }

    /// Subscribes to `topic`; what is retained on it, if anything.
    fn subscribe(&mut self, downlink: &Downlink, topic: &str) -> Option<Bytes> {
        if !self.topics.iter().any(|t| t == topic) {
            self.topics.push(topic.to_string());
        }
        downlink.subscribe(topic, self.id, &self.tx)
    }

    fn unsubscribe(&mut self, downlink: &Downlink, topic: &str) {
        downlink.unsubscribe(topic, self.id);
        self.topics.retain(|t| t != topic);
    }

    fn close(self, downlink: &Downlink) {
        for t in &self.topics {
            downlink.unsubscribe(t, self.id);
        }
    }
}

/// Whether `filter` is one exact downlink topic, which the gate serves itself.
fn served_by_gate(filter: &str) -> bool {
    !filter.contains(['+', '#'])
        && wire::parse_topic(filter).is_some_and(|(_, kind)| wire::DOWNLINK_KINDS.contains(&kind))
}

/// The devices' side of the embedded broker (see the module).
pub(crate) struct Gate {
    broker: Arc<rumqttd::Broker>,
    downlink: Arc<Downlink>,
    uplink: mpsc::Sender<Received>,
    credentials: Option<Credentials>,
    max_packet: usize,
}

impl Gate {
    pub fn new(
        broker: Arc<rumqttd::Broker>,
        downlink: Arc<Downlink>,
        uplink: mpsc::Sender<Received>,
        credentials: Option<Credentials>,
        max_packet: usize,
    ) -> Arc<Gate> {
        Arc::new(Gate { broker, downlink, uplink, credentials, max_packet })
    }

    /// Accepts device connections on `listener` (over TLS with `tls`) until the task is
    /// dropped; devices' publishes go to the uplink.
    pub async fn listen(self: Arc<Gate>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        loop {
            match listener.accept().await {
                Ok((socket, peer)) => {
                    let (gate, tls) = (self.clone(), tls.clone());
                    tokio::spawn(async move {
                        if let Err(why) = gate.accepted(socket, tls).await {
                            tracing::debug!(%peer, %why, "mqtt connection ended");
                        }
                    });
                }
                Err(error) => {
                    // Out of file descriptors, usually: wait rather than spin.
                    tracing::warn!(%error, "cannot accept an mqtt connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn accepted(&self, socket: TcpStream, tls: Option<TlsAcceptor>) -> Result<(), Ended> {
        socket.set_nodelay(true)?;
        match tls {
            None => self.connection(socket).await,
            Some(acceptor) => {
                let stream = tokio::time::timeout(crate::tls::HANDSHAKE_WAIT, acceptor.accept(socket))
                    .await
                    .map_err(|_| Ended::NoHandshake)??;
                self.connection(stream).await
            }
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet: {0}")]
    Malformed(rumqttd::protocol::Error),
    #[error("no CONNECT within {CONNECT_WAIT:?}")]
    NoConnect,
    #[error("no TLS handshake within {:?}", crate::tls::HANDSHAKE_WAIT)]
    NoHandshake,
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("refused at CONNECT: {0}")]
    Refused(&'static str),
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("closed by the device")]
    Closed,
    #[error("{0}")]
    Forbidden(String),
    #[error("revoked while connected")]
    Revoked,
    #[error("the broker dropped the session: {0}")]
    Router(String),
}

/// What to do with one packet from a device.
enum Verdict {
    Forward(Packet),
    /// Forward, then end the connection (the device's DISCONNECT).
    Last(Packet),
    /// Answer the device, forward nothing.
    Answer(Packet),
    /// Forward, then answer with a PUBACK of this packet id.
    ForwardAndAck(Packet, u16),
    /// Forward, then answer with a PUBREC of this packet id (QoS 2 under the rules).
    ForwardAndRec(Packet, u16),
    /// Nothing to do (an acknowledgement of a publish the gate never sent).
    Ignore,
    /// A SUBSCRIBE or UNSUBSCRIBE of downlink topics, which the gate serves itself.
    Serve(Packet),
    Close(String),
}

impl Gate {
    async fn connection<S: Stream>(&self, mut socket: S) -> Result<(), Ended> {
        let mut read = BytesMut::with_capacity(4096);
        let first = tokio::time::timeout(CONNECT_WAIT, self.read_one(&mut socket, &mut read))
            .await
            .map_err(|_| Ended::NoConnect)??;
        let Packet::Connect(connect, _, will, _, login) = first else { return Err(Ended::NotConnect) };
        let device = connect.client_id;
        let refusal = match (&self.credentials, login) {
            _ if will.is_some() => Some((ConnectReturnCode::NotAuthorized, "a will message is not supported")),
            _ if device.is_empty() || (self.credentials.is_some() && !wire::valid_device_id(&device)) => {
                Some((ConnectReturnCode::ClientIdentifierNotValid, "client id is not a valid device id"))
            }
            (None, _) => None,
            (Some(_), None) => Some((ConnectReturnCode::NotAuthorized, "no user name and password")),
            (Some(creds), Some(login)) => (!creds.verify(&device, &login.username, &login.password))
                .then_some((ConnectReturnCode::BadUserNamePassword, "unknown or revoked device, or wrong secret")),
        };
        if let Some((code, why)) = refusal {
            tracing::warn!(client_id = %device, why, "refused an mqtt connection");
            self.write(&mut socket, [Packet::ConnAck(ConnAck { session_present: false, code }, None)]).await?;
            return Err(Ended::Refused(why));
        }
        // Devices under the rules publish to ingestion directly; anonymous clients get a router
        // link, which also serves their other subscriptions.
        let mut upstream = match self.credentials {
            Some(_) => Upstream::Ingest { tx: self.uplink.clone(), waiting: VecDeque::new() },
            None => {
                let broker = self.broker.clone();
                let id = device.clone();
                let (tx, rx) = tokio::task::spawn_blocking(move || broker.link(&id).map_err(|e| e.to_string()))
                    .await
                    .map_err(|e| Ended::Io(std::io::Error::other(e)))?
                    .map_err(Ended::Router)?;
                Upstream::Router(Link { tx, rx })
            }
        };
        let ack = ConnAck { session_present: false, code: ConnectReturnCode::Success };
        self.write(&mut socket, [Packet::ConnAck(ack, None)]).await?;
        let idle = match connect.keep_alive {
            0 => IDLE_WITHOUT_KEEPALIVE,
            secs => Duration::from_millis(u64::from(secs) * 1500),
        };
        let mut session = Session::open(&self.downlink);
        let ended = self.relay(&mut socket, &mut read, &device, &mut upstream, &mut session, idle).await;
        session.close(&self.downlink);
        match &ended {
            Err(Ended::Forbidden(why)) => tracing::warn!(device, why, "closed an mqtt connection"),
            Err(Ended::Revoked) => tracing::warn!(device, "closed the mqtt connection of a revoked device"),
            _ => {}
        }
        // Ends the router's session; after a takeover by a newer connection of the same device
        // this lands in the old link's own buffer, which the router no longer reads.
        if let (Err(_), Upstream::Router(link)) = (&ended, &mut upstream) {
            let bye = Packet::Disconnect(Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection }, None);
            let _ = link.tx.send(bye).await;
        }
        ended
    }

    /// Moves packets both ways until the device leaves, breaks a rule or is revoked.
    async fn relay<S: Stream>(
        &self,
        socket: &mut S,
        read: &mut BytesMut,
        device: &str,
        upstream: &mut Upstream,
        session: &mut Session,
        idle: Duration,
    ) -> Result<(), Ended> {
        let mut withdrawals = self.credentials.as_ref().map(Credentials::withdrawals);
        let mut last_heard = Instant::now();
        let mut out = BytesMut::with_capacity(4096);
        let mut forward = Vec::new();
        loop {
            // Whole packets already read (the first read may have brought more than CONNECT).
            let mut close = None;
            let mut last = false;
            while !last {
                let head = publish_qos_and_id(read);
                match V4.read_mut(read, self.max_packet) {
                    Ok(packet) => match self.check(device, packet, head) {
                        Verdict::Forward(p) => forward.push(p),
                        Verdict::ForwardAndAck(p, pkid) => {
                            forward.push(p);
                            encode(&mut out, Packet::PubAck(PubAck { pkid, reason: PubAckReason::Success }, None))?;
                        }
                        Verdict::ForwardAndRec(p, pkid) => {
                            forward.push(p);
                            encode(&mut out, Packet::PubRec(PubRec { pkid, reason: PubRecReason::Success }, None))?;
                        }
                        Verdict::Ignore => {}
                        Verdict::Last(p) => {
                            forward.push(p);
                            last = true;
                        }
                        Verdict::Answer(p) => encode(&mut out, p)?,
                        Verdict::Serve(p) => self.serve(p, session, &mut out)?,
                        Verdict::Close(why) => {
                            close = Some(why);
                            break;
                        }
                    },
                    Err(rumqttd::protocol::Error::InsufficientBytes(_)) => break,
                    Err(e) => return Err(Ended::Malformed(e)),
                }
            }
            // What came before a forbidden packet still goes through, as it would
            // have had the packets arrived in separate reads.
            upstream.forward(&mut forward).await?;
            if !out.is_empty() {
                socket.write_all(&out).await?;
                socket.flush().await?;
                out.clear();
            }
            if let Some(why) = close {
                return Err(Ended::Forbidden(why));
            }
            if last {
                return Ok(());
            }
            let (mut link, mut ingest) = match upstream {
                Upstream::Router(link) => (Some(link), None),
                Upstream::Ingest { tx, waiting } => (None, Some((tx, waiting))),
            };
            // While ingestion is behind, the connection reads nothing more (TCP pushes back on
            // the device) but goes on writing what the hub sends.
            let behind = ingest.as_ref().is_some_and(|(_, waiting)| !waiting.is_empty());
            let room_in = if behind { ingest.as_ref().map(|(tx, _)| (*tx).clone()) } else { None };
            tokio::select! {
                n = socket.read_buf(read), if !behind => {
                    if n? == 0 {
                        return Err(Ended::Closed);
                    }
                    last_heard = Instant::now();
                }
                room = async move { room_in?.reserve_owned().await.ok() }, if behind => {
                    let (Some(permit), Some((tx, waiting))) = (room, ingest.as_mut()) else {
                        return Err(Ended::Router("the hub's ingestion stopped".into()));
                    };
                    if let Some(r) = waiting.pop_front() {
                        permit.send(r);
                    }
                    hand_over(tx, waiting)?;
                }
                first = async { link.as_mut()?.rx.next().await.ok() }, if link.is_some() => {
                    let (Some(first), Some(link)) = (first, link.as_mut()) else {
                        return Err(Ended::Router("the router closed the link".into()));
                    };
                    let mut unscheduled = false;
                    let mut next = first;
                    while let Some(n) = next {
                        match Option::<Packet>::from(n) {
                            Some(p) => encode(&mut out, p)?,
                            None => unscheduled = true,
                        }
                        // Everything already waiting goes out in one write.
                        next = link.rx.recv_deadline(std::time::Instant::now()).unwrap_or(None);
                    }
                    if !out.is_empty() {
                        socket.write_all(&out).await?;
                        socket.flush().await?;
                        out.clear();
                    }
                    // Without this the router stops scheduling the link.
                    if unscheduled {
                        link.rx.wake().await.map_err(router)?;
                    }
                }
                Some(first) = session.rx.recv() => {
                    let mut next = Some(first);
                    while let Some(d) = next {
                        encode(&mut out, Packet::Publish(Publish::new(d.topic, d.payload, false), None))?;
                        next = session.rx.try_recv().ok();
                    }
                    socket.write_all(&out).await?;
                    socket.flush().await?;
                    out.clear();
                }
                changed = async { withdrawals.as_mut()?.changed().await.ok() }, if withdrawals.is_some() => {
                    if changed.is_none() {
                        withdrawals = None;
                    } else if self.credentials.as_ref().is_some_and(|c| !c.admits(device)) {
                        return Err(Ended::Revoked);
                    }
                }
                () = tokio::time::sleep_until(last_heard + idle) => return Err(Ended::Idle(idle)),
            }
        }
    }

    /// Subscribes or unsubscribes `session` to downlink topics; the answer, and on subscribing
    /// what is retained, go to `out`.
    fn serve(&self, packet: Packet, session: &mut Session, out: &mut BytesMut) -> Result<(), Ended> {
        match packet {
            Packet::Subscribe(s, _) => {
                let mut retained = Vec::new();
                for f in &s.filters {
                    if let Some(payload) = session.subscribe(&self.downlink, &f.path) {
                        retained.push((f.path.clone(), payload));
                    }
                }
                // Delivered at QoS 0: on a live connection TCP delivers it, and after a broken one
                // the device subscribes again and gets the retained state again.
                let return_codes = vec![SubscribeReasonCode::Success(QoS::AtMostOnce); s.filters.len()];
                encode(out, Packet::SubAck(SubAck { pkid: s.pkid, return_codes }, None))?;
                for (topic, payload) in retained {
                    encode(out, Packet::Publish(Publish::new(Bytes::from(topic.into_bytes()), payload, true), None))?;
                }
            }
            Packet::Unsubscribe(u, _) => {
                for f in &u.filters {
                    session.unsubscribe(&self.downlink, f);
                }
                encode(out, Packet::UnsubAck(UnsubAck { pkid: u.pkid, reasons: Vec::new() }, None))?;
            }
            other => encode(out, other)?,
        }
        Ok(())
    }

    /// Reads until one whole packet is in `read`.
    async fn read_one<S: Stream>(&self, socket: &mut S, read: &mut BytesMut) -> Result<Packet, Ended> {
        loop {
            match V4.read_mut(read, self.max_packet) {
                Ok(packet) => return Ok(packet),
                Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {
                    if socket.read_buf(read).await? == 0 {
                        return Err(Ended::Closed);
                    }
                }
                Err(rumqttd::protocol::Error::InvalidProtocolLevel(level)) => {
                    let code = ConnectReturnCode::RefusedProtocolVersion;
                    self.write(socket, [Packet::ConnAck(ConnAck { session_present: false, code }, None)]).await?;
                    tracing::warn!(level, "refused an mqtt connection: only MQTT 3.1.1 (level 4) is served");
                    return Err(Ended::Refused("unsupported protocol level"));
                }
                Err(e) => return Err(Ended::Malformed(e)),
            }
        }
    }

    async fn write<S: Stream, const N: usize>(&self, socket: &mut S, packets: [Packet; N]) -> Result<(), Ended> {
        let mut out = BytesMut::new();
        for p in packets {
            encode(&mut out, p)?;
        }
        socket.write_all(&out).await?;
        socket.flush().await?;
        Ok(())
    }
}

/// Where a connection's publishes go.
enum Upstream {
    /// A device's: to the hub's ingestion, in order; `waiting` holds what did not fit yet.
    Ingest { tx: mpsc::Sender<Received>, waiting: VecDeque<Received> },
    /// An anonymous client's: to the router, like every other packet it may send.
    Router(Link),
}

impl Upstream {
    /// Hands on what the client sent.
    async fn forward(&mut self, packets: &mut Vec<Packet>) -> Result<(), Ended> {
        match self {
            Upstream::Router(link) => link.forward(packets).await,
            Upstream::Ingest { tx, waiting } => {
                for p in packets.drain(..) {
                    // Under the rules only publishes are forwarded (and a DISCONNECT, which ends
                    // the connection here).
                    if let Packet::Publish(p, _) = p {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        waiting.push_back(Received::new(topic, p.payload));
                    }
                }
                hand_over(tx, waiting)
            }
        }
    }
}

/// Moves what waits into ingestion while there is room, in order.
fn hand_over(tx: &mpsc::Sender<Received>, waiting: &mut VecDeque<Received>) -> Result<(), Ended> {
    while let Some(r) = waiting.pop_front() {
        match tx.try_send(r) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(r)) => {
                waiting.push_front(r);
                break;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Ended::Router("the hub's ingestion stopped".into()));
            }
        }
    }
    Ok(())
}

/// One connection's session in the router.
struct Link {
    tx: LinkTx,
    rx: LinkRx,
}

impl Link {
    /// Hands `packets` to the router in one wake-up.
    async fn forward(&mut self, packets: &mut Vec<Packet>) -> Result<(), Ended> {
        let Some(last) = packets.pop() else { return Ok(()) };
        self.tx.buffer().extend(packets.drain(..));
        // Blocks the thread only while the router's queue is full; the router never waits on
        // links, so this is back-pressure, not a deadlock.
        self.tx.send(last).await.map_err(router)?;
        Ok(())
    }
}

fn router(e: rumqttd::local::LinkError) -> Ended {
    Ended::Router(e.to_string())
}

fn encode(out: &mut BytesMut, packet: Packet) -> Result<(), Ended> {
    V4.write(packet, out).map(drop).map_err(Ended::Malformed)
}

impl Gate {
    /// The rules of the module doc, for one packet from `device`.
    /// `head` is the packet's QoS and id when it is a PUBLISH.
    fn check(&self, device: &str, packet: Packet, head: Option<(u8, u16)>) -> Verdict {
        let rules = self.credentials.is_some();
        match packet {
            Packet::Publish(p, props) => {
                let topic = String::from_utf8_lossy(&p.topic);
                if rules && !wire::device_may_publish(device, &topic) {
                    return Verdict::Close(format!("device may not publish on `{topic}`"));
                }
                match head {
                    // The gate acknowledges a QoS 1 publish itself once it has handed it on (in
                    // memory, as a broker's PUBACK means), handing it on at QoS 0: one wake-up
                    // and one write fewer per message. The hub's acknowledgement, after its
                    // commit, is what frees the agent's outbox.
                    Some((1, pkid)) => {
                        Verdict::ForwardAndAck(Packet::Publish(Publish::new(p.topic, p.payload, p.retain), None), pkid)
                    }
                    // Under the rules QoS 2 is served as at least once: PUBREC now, PUBCOMP on
                    // the PUBREL (storage is once per (device, seq) whatever arrives twice).
                    Some((2, pkid)) if rules => {
                        Verdict::ForwardAndRec(Packet::Publish(Publish::new(p.topic, p.payload, p.retain), None), pkid)
                    }
                    _ => Verdict::Forward(Packet::Publish(p, props)),
                }
            }
            Packet::Subscribe(s, props) => {
                match s.filters.iter().find(|f| rules && !wire::device_may_subscribe(device, &f.path)) {
                    Some(bad) => {
                        tracing::warn!(device, filter = %bad.path, "refused an mqtt subscription");
                        let return_codes = vec![SubscribeReasonCode::Failure; s.filters.len()];
                        Verdict::Answer(Packet::SubAck(SubAck { pkid: s.pkid, return_codes }, None))
                    }
                    None if s.filters.iter().all(|f| served_by_gate(&f.path)) => {
                        Verdict::Serve(Packet::Subscribe(s, props))
                    }
                    None => Verdict::Forward(Packet::Subscribe(s, props)),
                }
            }
            Packet::Unsubscribe(u, props) if u.filters.iter().all(|f| served_by_gate(f)) => {
                Verdict::Serve(Packet::Unsubscribe(u, props))
            }
            // Under the rules there is no router behind the connection: the gate answers.
            Packet::PingReq(_) if rules => Verdict::Answer(Packet::PingResp(PingResp)),
            Packet::PubRel(r, _) if rules => {
                Verdict::Answer(Packet::PubComp(PubComp { pkid: r.pkid, reason: PubCompReason::Success }, None))
            }
            Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..) if rules => Verdict::Ignore,
            p @ (Packet::PubAck(..)
            | Packet::PubRec(..)
            | Packet::PubRel(..)
            | Packet::PubComp(..)
            | Packet::PingReq(..)
            | Packet::Unsubscribe(..)) => Verdict::Forward(p),
            p @ Packet::Disconnect(..) => Verdict::Last(p),
            other => Verdict::Close(format!("protocol error: {} from a client", packet_name(&other))),
        }
    }
}

/// The QoS and packet id of the PUBLISH at the start of `buf` (rumqttd decodes them but keeps
/// them private); `None` when `buf` does not start with a PUBLISH's whole variable header.
fn publish_qos_and_id(buf: &[u8]) -> Option<(u8, u16)> {
    let first = *buf.first()?;
    if first >> 4 != 3 {
        return None;
    }
    let qos = (first >> 1) & 0b11;
    // The remaining length: one to four bytes of seven bits each.
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return None;
        }
    }
    let topic_len = usize::from(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]));
    let at = i + 2 + topic_len;
    let pkid = if qos == 0 { 0 } else { u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]) };
    Some((qos, pkid))
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(..) => "a second CONNECT",
        Packet::ConnAck(..) => "CONNACK",
        Packet::SubAck(..) => "SUBACK",
        Packet::UnsubAck(..) => "UNSUBACK",
        Packet::PingResp(..) => "PINGRESP",
        _ => "an unexpected packet",
    }
}

/// Binds `listen` (port 0: any free port) and returns the listener with its address.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("the embedded MQTT broker cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_downlink_reaches_subscribers_and_keeps_the_retained_state() {
        let d = Downlink::default();
        let (ack, desired) = (wire::topic("p1", "ack"), wire::topic("p1", "desired"));
        d.publish(desired.clone(), b"v1".to_vec(), true);
        d.publish(ack.clone(), b"before".to_vec(), false);
        let mut a = Session::open(&d);
        let mut b = Session::open(&d);
        assert_eq!(a.subscribe(&d, &desired).as_deref(), Some(&b"v1"[..]), "retained on subscribing");
        assert_eq!(a.subscribe(&d, &ack), None, "an acknowledgement is not retained");
        assert_eq!(b.subscribe(&d, &ack), None);
        d.publish(ack.clone(), b"7".to_vec(), false);
        for s in [&mut a, &mut b] {
            let got = s.rx.try_recv().unwrap();
            assert_eq!((&got.topic[..], &got.payload[..]), (ack.as_bytes(), &b"7"[..]));
            assert!(s.rx.try_recv().is_err(), "once");
        }
        b.unsubscribe(&d, &ack);
        d.publish(ack.clone(), b"8".to_vec(), false);
        assert!(b.rx.try_recv().is_err(), "unsubscribed");
        assert_eq!(&a.rx.try_recv().unwrap().payload[..], b"8");
        // An empty retained payload clears the state and is not delivered.
        d.publish(desired.clone(), Vec::new(), true);
        assert!(a.rx.try_recv().is_err());
        assert_eq!(b.subscribe(&d, &desired), None, "cleared");
        // A connection that does not read loses publishes, never blocks the hub.
        for i in 0..DOWNLINK_QUEUE + 10 {
            d.publish(ack.clone(), i.to_string().into_bytes(), false);
        }
        let mut n = 0;
        while a.rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, DOWNLINK_QUEUE);
        // A closed connection is subscribed to nothing.
        a.close(&d);
        b.close(&d);
        assert!(d.state.lock().unwrap().by_topic.is_empty());
        assert!(served_by_gate(&ack) && served_by_gate(&desired));
        assert!(!served_by_gate("impeller/v1/devices/+/ack") && !served_by_gate(&wire::topic("p1", "telemetry")));
    }

    #[test]
    fn qos_and_packet_id_are_read_from_a_publish_header() {
        let encoded = |qos: rumqttc::mqttbytes::QoS, pkid: u16, payload: usize| {
            let mut p =
                rumqttc::mqttbytes::v4::Publish::new("impeller/v1/devices/p1/telemetry", qos, vec![7u8; payload]);
            p.pkid = pkid;
            let mut out = BytesMut::new();
            rumqttc::mqttbytes::v4::Packet::Publish(p).write(&mut out, 1 << 20).unwrap();
            out
        };
        use rumqttc::mqttbytes::QoS as Q;
        assert_eq!(publish_qos_and_id(&encoded(Q::AtLeastOnce, 513, 10)), Some((1, 513)));
        // A remaining length of two and of three bytes.
        assert_eq!(publish_qos_and_id(&encoded(Q::ExactlyOnce, 65535, 300)), Some((2, 65535)));
        assert_eq!(publish_qos_and_id(&encoded(Q::AtLeastOnce, 9, 20_000)), Some((1, 9)));
        assert_eq!(publish_qos_and_id(&encoded(Q::AtMostOnce, 0, 10)), Some((0, 0)));
        // Cut anywhere in the header: nothing, never a panic.
        let whole = encoded(Q::AtLeastOnce, 513, 10);
        let header = 2 + 2 + "impeller/v1/devices/p1/telemetry".len() + 2;
        for cut in 0..header {
            assert_eq!(publish_qos_and_id(&whole[..cut]), None, "cut at {cut}");
        }
        assert_eq!(publish_qos_and_id(&[0x32, 0xff, 0xff, 0xff, 0xff, 0x01]), None, "five length bytes");
        assert_eq!(publish_qos_and_id(&[0x40, 0x02, 0x00, 0x01]), None, "a PUBACK");
    }
}
