//! `impeller bench load`: the hub under a fleet's load. A real `impeller hub` runs as a child
//! process (its own file-descriptor budget, as in production) with every device provisioned;
//! this process is the fleet: one MQTT connection per device, each publishing telemetry-sized
//! envelopes at a steady rate and keeping what the hub has not acknowledged, as the agent's
//! outbox does, to send again after a reconnect. The latency of a message is from its publish
//! to the hub's acknowledgement that covers it, which the hub sends only after the message is
//! committed: an upper bound on publish-to-queryable. At the end the store must hold every
//! published sequence number of every device exactly once. `--restart-after` kills the hub
//! (SIGKILL) that many seconds into the run and starts it again on the same data. `--tls` puts
//! the devices' connections to the embedded broker under TLS, with a certificate made for the
//! run.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use impeller_core::wire;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish, Subscribe};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::cli::LoadBenchArgs;
use crate::demo::free_port;
use impeller_hub::store::{AuditFilter, AuditStore, FleetStore, TelemetryStore};

const MAX_PACKET: usize = 1 << 20;

/// A device's connection: plain TCP, or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type Connection = Box<dyn Stream>;

/// The bench's report, line by line on standard output as the run goes.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub fn bench(args: LoadBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0 && args.rate > 0.0 && args.secs > 0, "devices, rate and secs must be positive");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: LoadBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let run_id = format!("load{}", std::process::id());
    let (database, scratch_db) = match &args.database {
        Some(url) if url.starts_with("postgres") => {
            let (fresh, name) = fresh_postgres(url, &run_id).await?;
            (fresh, Some((url.clone(), name)))
        }
        Some(url) => (url.clone(), None),
        None => (format!("sqlite:{}", dir.path().join("hub.db").display()), None),
    };
    let outcome = load(&args, dir.path(), &database, &run_id).await;
    if let Some((admin, name)) = scratch_db {
        drop_postgres(&admin, &name).await;
    }
    outcome
}

async fn load(args: &LoadBenchArgs, dir: &Path, database: &str, run_id: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let (devices, scraper) = provision(database, args.devices, run_id).await?;
    say!("provisioned {} devices in {:.1} s", devices.len(), started.elapsed().as_secs_f64());

    let mqtt_port = free_port()?;
    let (host, port) = match &args.broker {
        Some(url) => impeller_edge::config::broker_address(url).map_err(|e| anyhow::anyhow!("--broker: {e}"))?,
        None => ("127.0.0.1".to_string(), mqtt_port),
    };
    let tls = hub_config(args, dir)?;
    let mut hub = HubProcess::start(args, dir, database, mqtt_port)?;
    wait_accepting(&host, port, Duration::from_secs(30)).await?;

    let fleet = Arc::new(Fleet::default());
    anyhow::ensure!(
        (1..=wire::MAX_ENVELOPES as u64).contains(&args.batch),
        "--batch must be 1 to {}",
        wire::MAX_ENVELOPES
    );
    // Each device publishes `batch` messages at a time, one packet every `per_device`.
    let per_device = Duration::from_secs_f64(args.devices as f64 * args.batch as f64 / args.rate);
    let connect_start = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(200));
    let (schedule, schedule_rx) = tokio::sync::watch::channel(None);
    let mut tasks = Vec::with_capacity(devices.len());
    for (i, d) in devices.into_iter().enumerate() {
        let device = SimDevice {
            id: d.0,
            secret: d.1,
            host: host.clone(),
            port,
            every: per_device,
            // Spread the devices' publishes evenly over one period.
            phase: per_device.mul_f64(i as f64 / args.devices as f64),
            batch: args.batch,
            external: args.broker.is_some(),
            tls: tls.clone(),
        };
        tasks.push(tokio::spawn(device.run(fleet.clone(), limit.clone(), schedule_rx.clone())));
    }
    while fleet.connected.load(Relaxed) < args.devices {
        if connect_start.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("only {} of {} devices connected in 300 s", fleet.connected.load(Relaxed), args.devices);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    say!("{} devices connected and subscribed in {connect_secs:.1} s", args.devices);

    let t0 = Instant::now();
    schedule.send_replace(Some(Schedule { start: t0, end: t0 + Duration::from_secs(args.secs) }));
    let mut restarted = None;
    let mut hub_cpu = 0.0;
    let mut hub_written = 0u64;
    // The hub's own histograms, summed over its restarts: its batches' time in the database, and
    // each publish's from its arrival to its acknowledgement.
    let (mut store_times, mut ack_times) = (Timings::default(), Timings::default());
    let mut last_report = t0;
    while t0.elapsed() < Duration::from_secs(args.secs) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(after) = args.restart_after
            && restarted.is_none()
            && t0.elapsed() >= Duration::from_secs(after)
        {
            hub_cpu += hub.cpu_secs().unwrap_or(0.0);
            hub_written += hub.written_bytes().unwrap_or(0);
            hub.add_timings(&scraper, &mut store_times, &mut ack_times).await;
            hub.kill()?;
            hub = HubProcess::start(args, dir, database, mqtt_port)?;
            restarted = Some(t0.elapsed());
            say!("killed the hub (SIGKILL) at {:.1} s and started it again", t0.elapsed().as_secs_f64());
        }
        progress(&fleet, &hub, &scraper, t0, &mut last_report, "").await;
    }
    let publish_secs = t0.elapsed().as_secs_f64();
    // Every device waits for its last acknowledgement, then hands back its latencies.
    let mut latencies = Vec::with_capacity(fleet.published.load(Relaxed) as usize);
    let mut unacked = 0u64;
    for t in tasks {
        while !t.is_finished() && t0.elapsed() < Duration::from_secs(args.secs) + DRAIN + Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            progress(&fleet, &hub, &scraper, t0, &mut last_report, " (draining)").await;
        }
        match tokio::time::timeout(Duration::from_secs(1), t).await {
            Ok(Ok(done)) => {
                latencies.extend(done.latencies_us);
                unacked += done.unacked;
            }
            Ok(Err(e)) => anyhow::bail!("a device task failed: {e}"),
            Err(_) => anyhow::bail!("a device still waits for acknowledgements {DRAIN:?} after the end"),
        }
    }
    let drain_secs = t0.elapsed().as_secs_f64();
    // Counted once every device has finished: a publish due just before the end may go out
    // after it (this was read at the end once, and a run that stored everything was failed).
    let published = fleet.published.load(Relaxed);
    hub_cpu += hub.cpu_secs().unwrap_or(0.0);
    hub_written += hub.written_bytes().unwrap_or(0);
    let fleet_cpu = cpu_secs("self").unwrap_or(0.0);
    hub.add_timings(&scraper, &mut store_times, &mut ack_times).await;
    hub.kill()?;

    // The store must hold each published message exactly once.
    let check = verify(database, run_id, args.devices, args.retain_secs.is_some()).await?;
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let backend = if database.starts_with("postgres") { "PostgreSQL" } else { "SQLite" };
    let broker = args.broker.as_deref().unwrap_or(if args.tls { "embedded, over TLS" } else { "embedded" });
    say!(
        "\n{} devices, broker {broker}, {backend}; offered {:.0} msg/s for {} s, {} message{} per MQTT packet",
        args.devices,
        args.rate,
        args.secs,
        args.batch,
        if args.batch == 1 { "" } else { "s" }
    );
    say!(
        "published {published} ({:.0} msg/s) in {} packets; stored {} ({:.0} msg/s over the publishing time, all acknowledged {:.1} s after it began)",
        published as f64 / publish_secs,
        fleet.packets.load(Relaxed),
        check.stored + check.forgotten,
        (check.stored + check.forgotten) as f64 / publish_secs,
        drain_secs
    );
    say!(
        "publish → acknowledged after commit: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples)",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
        latencies.len()
    );
    say!(
        "store: {} devices checked, {}{} messages missing, {} stored twice, {} unacknowledged at the end, {} reconnects, {} sent again when the hub named them lost, {} sent again when no acknowledgement came in time{}",
        check.devices,
        args.retain_secs
            .map(|s| format!("{} forgotten (kept {s} s; the hub's sweeps say {}), ", check.forgotten, check.swept))
            .unwrap_or_default(),
        check.missing,
        check.duplicates,
        unacked,
        fleet.reconnects.load(Relaxed),
        fleet.resent_lost.load(Relaxed),
        fleet.resent.load(Relaxed),
        restarted.map(|t| format!(", hub killed at {:.1} s", t.as_secs_f64())).unwrap_or_default()
    );
    say!("the hub's batches in the database (its streams' state read and the commit): {}", store_times.line(true));
    say!(
        "publishes in the hub, from their arrival to their acknowledgement handed to the broker: {}",
        ack_times.line(false)
    );
    // The fleet shares the machine with the hub: what each used says how much was left.
    say!(
        "cpu: the hub {hub_cpu:.0} s, this fleet {fleet_cpu:.0} s (its provisioning included), {drain_secs:.0} s of wall time on {} cores{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if args.broker.is_some() { "; the external broker's own not counted" } else { "" }
    );
    // Per message, what the hub cost: steadier from run to run than its latencies, which follow
    // how busy this shared machine is, so variants of the hub compare on these.
    let stored = (check.stored + check.forgotten).max(1) as f64;
    say!(
        "per message stored: the hub's CPU {:.1} µs, its writes to disk {:.0} bytes ({:.2} GB in all{})",
        hub_cpu * 1e6 / stored,
        hub_written as f64 / stored,
        hub_written as f64 / 1e9,
        if database.starts_with("postgres") { "; PostgreSQL's own not counted" } else { "" }
    );
    let complete = check.missing == 0 && check.duplicates == 0 && check.stored + check.forgotten == published;
    if !complete && let Ok(log) = std::fs::read_to_string(dir.join("hub.log")) {
        say!("the hub's log ends:");
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        for line in tail.into_iter().rev() {
            say!("  {line}");
        }
    }
    anyhow::ensure!(
        complete,
        "the store holds {} of the {published} messages published ({} forgotten), {} missing in the middle, {} stored twice",
        check.stored,
        check.forgotten,
        check.missing,
        check.duplicates
    );
    Ok(())
}

/// Counters the devices share.
#[derive(Default)]
struct Fleet {
    connected: AtomicU64,
    published: AtomicU64,
    packets: AtomicU64,
    acked: AtomicU64,
    reconnects: AtomicU64,
    resent: AtomicU64,
    /// Sent again at once because an acknowledgement named them lost (`held_from`).
    resent_lost: AtomicU64,
    errors: AtomicU64,
}

/// A progress line every 5 s: what the fleet published and had acknowledged, and what the hub
/// process running now says it stored and had queued for ingestion (a backlog between published
/// and stored is the hub's: in that queue, or, when it is full, in its connections; one after
/// stored is in the acknowledgements).
async fn progress(fleet: &Fleet, hub: &HubProcess, scraper: &str, t0: Instant, last: &mut Instant, note: &str) {
    if last.elapsed() < Duration::from_secs(5) {
        return;
    }
    *last = Instant::now();
    let text = hub.metrics(scraper).await.unwrap_or_default();
    let read = |name: &str| metric(&text, name).map_or("?".into(), |n| format!("{n:.0}"));
    let (stored, queued) = (read("impeller_ingest_stored_total"), read("impeller_ingest_queued_publishes"));
    say!(
        "  {:>5.1} s: {} published, {stored} stored by the hub ({queued} publishes queued for it), {} acknowledged, {} connected{note}",
        t0.elapsed().as_secs_f64(),
        fleet.published.load(Relaxed),
        fleet.acked.load(Relaxed),
        fleet.connected.load(Relaxed)
    );
}

/// When the devices publish: set once every device is connected.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    end: Instant,
}

/// How long after the end a device waits for its last acknowledgement.
const DRAIN: Duration = Duration::from_secs(110);

/// With no acknowledgement for this long at most, and at least, a device sends everything
/// unacknowledged again, in between as its acknowledgements' latency says (`wire::ResendTimer`),
/// as the agent does (its default `hub.ack_timeout_s` and `hub.min_ack_timeout_s`).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_ACK_TIMEOUT: Duration = Duration::from_secs(2);

struct SimDevice {
    id: String,
    secret: String,
    host: String,
    port: u16,
    every: Duration,
    phase: Duration,
    /// Messages per packet: an array of envelopes, as an agent sends what its outbox has ready.
    batch: u64,
    /// An external broker does its own authentication; connect without a login.
    external: bool,
    /// TLS to the embedded broker, whose certificate is for `localhost`.
    tls: Option<TlsConnector>,
}

/// What a device reports at the end.
struct Done {
    latencies_us: Vec<u32>,
    unacked: u64,
}

/// A message the hub has not acknowledged yet.
struct Pending {
    seq: u64,
    sent: Instant,
    payload: bytes::Bytes,
}

impl SimDevice {
    async fn run(
        self,
        fleet: Arc<Fleet>,
        limit: Arc<tokio::sync::Semaphore>,
        mut schedule: tokio::sync::watch::Receiver<Option<Schedule>>,
    ) -> Done {
        let body = format!(
            r#"{{"from_ms":0,"to_ms":60000,"channels":[{}]}}"#,
            [r#"{"n":600,"mean":31.9,"min":29.8,"max":34.1,"std":1.22}"#; 8].join(",")
        );
        let topic = wire::topic(&self.id, "telemetry");
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut latencies = Vec::new();
        let mut seq = 0u64;
        let mut first = true;
        let mut next: Option<Instant> = None;
        let mut out = BytesMut::new();
        // The last time an acknowledgement freed something (or a send began the wait for one).
        let mut progress;
        // The acknowledgement that last named a gap, and when: the same gap is sent again only
        // after `wire::GAP_RESEND_AFTER`, as the agent does.
        let mut gap_reported: Option<(u64, Instant)> = None;
        let mut timer = wire::ResendTimer::new(MIN_ACK_TIMEOUT, ACK_TIMEOUT);
        loop {
            // (Re)connect; everything not acknowledged is sent again, in order.
            let conn = {
                let _permit = limit.acquire().await;
                self.connect().await
            };
            let (mut socket, mut read) = match conn {
                Ok(c) => c,
                Err(error) => {
                    if fleet.errors.fetch_add(1, Relaxed) == 0 {
                        tracing::warn!(device = %self.id, %error, "cannot connect (first of the run's connection errors)");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if first {
                fleet.connected.fetch_add(1, Relaxed);
                first = false;
            } else {
                fleet.reconnects.fetch_add(1, Relaxed);
            }
            timer.resent(seq);
            if resend(&mut socket, &mut out, &topic, pending.iter(), self.batch).await.is_err() {
                continue;
            }
            progress = Instant::now();
            loop {
                let plan = *schedule.borrow();
                let now = Instant::now();
                if let Some(s) = plan {
                    if now >= s.end {
                        next = None;
                        if pending.is_empty() || now >= s.end + DRAIN {
                            return Done { latencies_us: latencies, unacked: pending.len() as u64 };
                        }
                    } else if next.is_none() && seq == 0 {
                        next = Some(s.start + self.phase);
                    }
                }
                // Nothing left to publish: wake at the end if all is acknowledged, else give up
                // after the drain time.
                let wake = next.or(plan.map(|s| if pending.is_empty() { s.end } else { s.end + DRAIN }));
                tokio::select! {
                    n = socket.read_buf(&mut read) => {
                        if !matches!(n, Ok(n) if n > 0) {
                            break; // the hub went away: reconnect
                        }
                        let mut lost_before = None;
                        loop {
                            match Packet::read(&mut read, MAX_PACKET) {
                                Ok(Packet::Publish(p)) => {
                                    let Ok(ack) = wire::decode_ack(&p.payload) else { continue };
                                    let now = Instant::now();
                                    let mut newest = None;
                                    while let Some(m) = pending.pop_front_if(|m| m.seq <= ack.acked) {
                                        latencies.push(now.duration_since(m.sent).as_micros().min(u128::from(u32::MAX)) as u32);
                                        fleet.acked.fetch_add(1, Relaxed);
                                        progress = now;
                                        newest = Some((m.seq, m.sent));
                                    }
                                    if let Some((seq, sent)) = newest {
                                        timer.acknowledged(seq, now.duration_since(sent));
                                    }
                                    let recent = |(acked, at): (u64, Instant)| {
                                        acked == ack.acked && now.duration_since(at) < wire::GAP_RESEND_AFTER
                                    };
                                    if ack.held_from.is_some() && !gap_reported.is_some_and(recent) {
                                        gap_reported = Some((ack.acked, now));
                                        lost_before = ack.held_from;
                                    }
                                }
                                Ok(_) => {}
                                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                                Err(_) => break,
                            }
                        }
                        if let Some(before) = lost_before {
                            timer.resent(before.saturating_sub(1));
                            let lost = pending.iter().take_while(|m| m.seq < before);
                            fleet.resent_lost.fetch_add(lost.clone().count() as u64, Relaxed);
                            if resend(&mut socket, &mut out, &topic, lost, self.batch).await.is_err() {
                                break;
                            }
                        }
                    }
                    _ = schedule.changed(), if plan.is_none() => {}
                    () = tokio::time::sleep_until(progress + timer.timeout()), if !pending.is_empty() => {
                        fleet.resent.fetch_add(pending.len() as u64, Relaxed);
                        progress = Instant::now();
                        timer.expired(seq);
                        if resend(&mut socket, &mut out, &topic, pending.iter(), self.batch).await.is_err() {
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {
                        let (Some(t), Some(s)) = (next, plan) else { continue };
                        if Instant::now() < t {
                            continue;
                        }
                        let (now, first) = (Instant::now(), pending.len());
                        for _ in 0..self.batch {
                            seq += 1;
                            // The envelope as wire::encode_envelope writes it, without re-parsing
                            // the same body each time: the fleet shares the cores with the hub.
                            let payload = bytes::Bytes::from(format!(
                                r#"{{"v":{},"device":"{}","seq":{seq},"prev":{},"ts_ms":{},"kind":"telemetry","body":{body}}}"#,
                                wire::SCHEMA_VERSION,
                                self.id,
                                seq - 1,
                                impeller_edge::now_ms()
                            ));
                            pending.push_back(Pending { seq, sent: now, payload });
                        }
                        out.clear();
                        encode_publish(&mut out, &topic, pending.range(first..));
                        if first == 0 {
                            progress = now;
                        }
                        fleet.published.fetch_add(self.batch, Relaxed);
                        fleet.packets.fetch_add(1, Relaxed);
                        next = Some(t + self.every).filter(|n| *n < s.end);
                        if send(&mut socket, &out).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// CONNECT and SUBSCRIBE to the device's acknowledgements; returns once both are answered.
    async fn connect(&self) -> anyhow::Result<(Connection, BytesMut)> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let mut socket: Connection = match &self.tls {
            Some(tls) => Box::new(tls.connect("localhost".try_into()?, tcp).await?),
            None => Box::new(tcp),
        };
        let mut connect = Connect::new(self.id.clone());
        connect.keep_alive = 120;
        if !self.external {
            connect.set_login(self.id.clone(), self.secret.clone());
        }
        let mut out = BytesMut::new();
        Packet::Connect(connect).write(&mut out, MAX_PACKET)?;
        let mut subscribe = Subscribe::new(wire::topic(&self.id, "ack"), QoS::AtMostOnce);
        // Packet id 0 is a protocol error (Mosquitto closes the connection for it).
        subscribe.pkid = 1;
        Packet::Subscribe(subscribe).write(&mut out, MAX_PACKET)?;
        send(&mut socket, &out).await?;
        let mut read = BytesMut::with_capacity(4096);
        let (mut connacked, mut subacked) = (false, false);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(connacked && subacked) {
            let n = tokio::time::timeout_at(deadline, socket.read_buf(&mut read)).await??;
            anyhow::ensure!(n > 0, "closed during connect");
            while let Ok(packet) = Packet::read(&mut read, MAX_PACKET) {
                match packet {
                    Packet::ConnAck(a) => {
                        anyhow::ensure!(
                            a.code == rumqttc::mqttbytes::v4::ConnectReturnCode::Success,
                            "refused: {:?}",
                            a.code
                        );
                        connacked = true;
                    }
                    Packet::SubAck(_) => subacked = true,
                    _ => {}
                }
            }
        }
        Ok((socket, read))
    }
}

/// Writes `bytes` out: a TLS stream keeps what is written until flushed.
async fn send(socket: &mut Connection, bytes: &[u8]) -> std::io::Result<()> {
    socket.write_all(bytes).await?;
    socket.flush().await
}

/// Messages not acknowledged, again, in order, `batch` messages a packet.
async fn resend(
    socket: &mut Connection,
    out: &mut BytesMut,
    topic: &str,
    pending: impl Iterator<Item = &Pending>,
    batch: u64,
) -> std::io::Result<()> {
    out.clear();
    let all: Vec<&Pending> = pending.collect();
    for group in all.chunks(batch.max(1) as usize) {
        encode_publish(out, topic, group.iter().copied());
    }
    send(socket, out).await
}

/// One PUBLISH of these messages: the envelope itself for one, an array for more.
fn encode_publish<'a>(out: &mut BytesMut, topic: &str, messages: impl IntoIterator<Item = &'a Pending>) {
    let messages: Vec<&Pending> = messages.into_iter().collect();
    let Some(first) = messages.first() else { return };
    let mut p = Publish::new(topic, QoS::AtLeastOnce, Vec::new());
    p.payload = if messages.len() == 1 {
        first.payload.clone()
    } else {
        let envelopes: Vec<Vec<u8>> = messages.iter().map(|m| m.payload.to_vec()).collect();
        wire::encode_envelopes(&envelopes).into()
    };
    // Packet ids cycle; the hub's acknowledgement, not PUBACK, is what frees a message.
    p.pkid = (first.seq % u64::from(u16::MAX)) as u16 + 1;
    let _ = Packet::Publish(p).write(out, MAX_PACKET);
}

/// The hub's configuration file, for runs that need one (TLS, retention; the flags set the
/// rest).
fn hub_config_file(args: &LoadBenchArgs, dir: &Path) -> Option<PathBuf> {
    (args.tls || args.retain_secs.is_some()).then(|| dir.join("hub.toml"))
}

/// Writes the hub's configuration file when the run needs one (TLS, retention); returns the
/// devices' TLS connector, which trusts the certificate made for `localhost` alone.
fn hub_config(args: &LoadBenchArgs, dir: &Path) -> anyhow::Result<Option<TlsConnector>> {
    let mut config = impeller_hub::config::DEFAULT.to_string();
    if let Some(secs) = args.retain_secs {
        let days = secs as f64 / 86_400.0;
        config = config
            .replace("telemetry_days = 400", &format!("telemetry_days = {days:e}"))
            .replace("sweep_secs = 3600", &format!("sweep_secs = {}", (secs / 10).max(1)));
    }
    let tls = if args.tls {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
        let (cert, key) = (dir.join("hub.pem"), dir.join("hub.key"));
        std::fs::write(&cert, made.cert.pem())?;
        std::fs::write(&key, made.signing_key.serialize_pem())?;
        // The first tls_cert and tls_key of the default file are [mqtt]'s.
        config = config
            .replacen("tls_cert = \"\"", &format!("tls_cert = {:?}", cert.display().to_string()), 1)
            .replacen("tls_key = \"\"", &format!("tls_key = {:?}", key.display().to_string()), 1);
        Some(TlsConnector::from(impeller_hub::tls::client_config(&cert)?))
    } else {
        None
    };
    if let Some(file) = hub_config_file(args, dir) {
        std::fs::write(file, config)?;
    }
    Ok(tls)
}

/// Provisions `n` devices through the store, as `impeller device add` does through the API.
/// The fleet's devices with their secrets, and a read-only token to scrape the hub's metrics.
async fn provision(database: &str, n: u64, run_id: &str) -> anyhow::Result<(Vec<(String, String)>, String)> {
    let store = impeller_hub::store::Store::open(database).await?;
    let (_, scraper) = store.add_token(&format!("{run_id}-metrics"), impeller_hub::auth::Role::Read, "bench").await?;
    let tags = [("site".to_string(), "load".to_string())].into_iter().collect();
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let id = format!("{run_id}-{i:05}");
        let secret = store.add_device(&id, &tags, "gw", "bench").await?;
        out.push((id, secret));
    }
    Ok((out, scraper))
}

/// One of the hub's histograms (`impeller_ingest_store_seconds`, `impeller_ingest_ack_seconds`):
/// cumulative counts per upper bound, summed over its restarts.
#[derive(Default)]
struct Timings {
    buckets: Vec<(f64, u64)>,
    /// Their time in all.
    seconds: f64,
    /// Hub processes whose metrics could not be read (their batches are not counted).
    unread: usize,
}

impl Timings {
    fn add(&mut self, scraped: anyhow::Result<(Vec<(f64, u64)>, f64)>) {
        match scraped {
            Ok((b, secs)) if self.buckets.is_empty() || b.len() == self.buckets.len() => {
                if self.buckets.is_empty() {
                    self.buckets = b.iter().map(|(le, _)| (*le, 0)).collect();
                }
                self.buckets.iter_mut().zip(b).for_each(|(s, (_, n))| s.1 += n);
                self.seconds += secs;
            }
            Ok(_) => self.unread += 1,
            Err(error) => {
                say!("could not read the hub's metrics: {error:#}");
                self.unread += 1;
            }
        }
    }

    /// The bucket bound below which a fraction `p` of what was timed took.
    fn quantile(&self, p: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        let want = (total as f64 * p).ceil() as u64;
        self.buckets.iter().find(|(_, n)| *n >= want).map(|(le, _)| *le)
    }

    /// How many, in how long (`with_sum`), and their quantiles.
    fn line(&self, with_sum: bool) -> String {
        let Some(&(_, total)) = self.buckets.last() else { return "not read".into() };
        let within = |bound: f64| self.buckets.iter().find(|(le, _)| *le == bound).map_or(0, |(_, n)| *n);
        let ms = |q: Option<f64>| match q {
            Some(le) if le.is_finite() => format!("≤ {:.0} ms", le * 1000.0),
            _ => "beyond the largest bucket".into(),
        };
        let slowest = self.buckets.iter().find(|(_, n)| *n == total).map(|(le, _)| *le);
        format!(
            "{total}{}, p50 {}, p99 {}, {} over 1 s, the slowest {}{}",
            if with_sum { format!(" in {:.0} s", self.seconds) } else { String::new() },
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            total - within(1.0),
            ms(slowest),
            if self.unread > 0 { format!(" ({} hub process(es) not read)", self.unread) } else { String::new() }
        )
    }
}

/// The value of a sample without labels in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The buckets of the histogram `name` in a Prometheus text exposition, and its sum.
fn seconds_buckets(text: &str, name: &str) -> anyhow::Result<(Vec<(f64, u64)>, f64)> {
    let mut out = Vec::new();
    let prefix = format!("{name}_bucket{{le=\"");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(prefix.as_str()) else { continue };
        let (le, count) = rest.split_once("\"} ").with_context(|| format!("a bucket line: {line}"))?;
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().with_context(|| format!("a bound: {line}"))? };
        out.push((le, count.trim().parse().with_context(|| format!("a count: {line}"))?));
    }
    anyhow::ensure!(!out.is_empty(), "no {name} buckets in the hub's metrics");
    Ok((out, metric(text, &format!("{name}_sum")).with_context(|| format!("no {name}_sum"))?))
}

#[derive(Default)]
struct Checked {
    devices: u64,
    /// Distinct (device, seq) stored.
    stored: u64,
    /// Deleted by retention (`--retain-secs`): counted from the stored sequences, and as the
    /// hub's audit records of its finished sweeps say (the hub is killed at the end, perhaps
    /// within a sweep, which then left no record).
    forgotten: u64,
    swept: u64,
    missing: u64,
    /// Rows beyond the first of a (device, seq): none is allowed.
    duplicates: u64,
}

/// Every device's stored sequence numbers must be 1..=n, each once; with `forgetting`
/// (retention), the
/// ones before the oldest still held are forgotten, not missing (a sweep deletes by age, so
/// from the start of each device's sequence).
async fn verify(database: &str, run_id: &str, n: u64, forgetting: bool) -> anyhow::Result<Checked> {
    let store = impeller_hub::store::Store::open(database).await?;
    let mut c = Checked::default();
    for i in 0..n {
        let msgs = store.messages(&format!("{run_id}-{i:05}")).await?;
        let mut seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
        seqs.dedup(); // in seq order
        let top = seqs.last().copied().unwrap_or(0);
        let first = if forgetting { seqs.first().copied().unwrap_or(1) } else { 1 };
        c.devices += 1;
        c.stored += seqs.len() as u64;
        c.forgotten += first - 1;
        c.duplicates += (msgs.len() - seqs.len()) as u64;
        c.missing += (top + 1).saturating_sub(first) - seqs.len() as u64;
    }
    // What the hub's sweeps say they deleted, to hold the count above to.
    let mut after = 0;
    loop {
        let filter =
            AuditFilter { after, limit: 1000, action: Some("telemetry.forgotten".into()), ..Default::default() };
        let page = store.audit_records(&filter).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        c.swept += page.iter().filter_map(|r| r.details["deleted"]["telemetry"].as_u64()).sum::<u64>();
    }
    Ok(c)
}

/// The hub as a child process.
struct HubProcess {
    child: Child,
    http_port: u16,
    /// For its metrics, read every 5 s: one client, not one per read.
    http: reqwest::Client,
}

impl HubProcess {
    fn start(args: &LoadBenchArgs, dir: &Path, database: &str, mqtt_port: u16) -> anyhow::Result<HubProcess> {
        let exe = match &args.hub_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("hub.log"))?;
        let http_port = free_port()?;
        let mut cmd = Command::new(exe);
        cmd.arg("hub")
            .arg("--data-dir")
            .arg(dir.join("hub"))
            .args(["--database", database])
            .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")]);
        if let Some(b) = &args.broker {
            cmd.args(["--broker", b]);
        }
        if let Some(file) = hub_config_file(args, dir) {
            cmd.arg("--config").arg(file);
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().context("starting the hub")?;
        Ok(HubProcess { child, http_port, http: reqwest::Client::new() })
    }

    fn cpu_secs(&self) -> Option<f64> {
        cpu_secs(&self.child.id().to_string())
    }

    /// Bytes the hub has caused to be written to storage (its log, database and checkpoints).
    fn written_bytes(&self) -> Option<u64> {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.child.id())).ok()?;
        io.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok())
    }

    /// The hub's metrics (Prometheus' text format).
    async fn metrics(&self, token: &str) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}/api/v1/metrics", self.http_port);
        let resp = self.http.get(&url).bearer_auth(token).timeout(Duration::from_secs(2)).send().await?;
        anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
        Ok(resp.text().await?)
    }

    /// Adds the hub's histograms of its batches' time in the database and its publishes' until
    /// acknowledged.
    async fn add_timings(&self, token: &str, store: &mut Timings, ack: &mut Timings) {
        match self.metrics(token).await {
            Ok(text) => {
                store.add(seconds_buckets(&text, "impeller_ingest_store_seconds"));
                ack.add(seconds_buckets(&text, "impeller_ingest_ack_seconds"));
            }
            Err(error) => {
                store.add(Err(anyhow::anyhow!("{error:#}")));
                ack.add(Err(error));
            }
        }
    }

    fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user and system) process `pid` (or "self") has used, from /proc on Linux.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are the 12th and 13th, in clock ticks of 1/100 s.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

async fn wait_accepting(host: &str, port: u16, within: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    while TcpStream::connect((host, port)).await.is_err() {
        anyhow::ensure!(Instant::now() < until, "nothing accepts MQTT connections on {host}:{port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A database of its own on the server of `url`, so the run starts empty and leaves nothing.
async fn fresh_postgres(url: &str, run_id: &str) -> anyhow::Result<(String, String)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.with_context(|| format!("connecting to {url}"))?;
    let name = format!("impeller_{run_id}");
    // The name is ours (a fixed prefix and the process id), not input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    Ok((format!("{base}/{name}"), name))
}

async fn drop_postgres(url: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(url).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hubs_timings_are_read_and_summed_over_its_restarts() {
        let (first, second) =
            (impeller_hub::ingest::IngestStats::default(), impeller_hub::ingest::IngestStats::default());
        for ms in (1..=98).map(|_| 3).chain([700, 1_800]) {
            first.store_seconds.record(Duration::from_millis(ms));
        }
        first.ack_seconds.record(Duration::from_millis(40));
        second.store_seconds.record(Duration::from_secs(30));
        let (mut store, mut ack) = (Timings::default(), Timings::default());
        store.add(seconds_buckets(&first.prometheus(), "impeller_ingest_store_seconds"));
        ack.add(seconds_buckets(&first.prometheus(), "impeller_ingest_ack_seconds"));
        assert_eq!(store.quantile(0.5), Some(0.005));
        assert_eq!(store.quantile(0.99), Some(0.75));
        store.add(seconds_buckets(&second.prometheus(), "impeller_ingest_store_seconds"));
        store.add(Err(anyhow::anyhow!("a hub that did not answer")));
        assert_eq!(
            store.line(true),
            "101 in 33 s, p50 ≤ 5 ms, p99 ≤ 2500 ms, 2 over 1 s, the slowest beyond the largest bucket (1 hub process(es) not read)"
        );
        assert_eq!(ack.line(false), "1, p50 ≤ 50 ms, p99 ≤ 50 ms, 0 over 1 s, the slowest ≤ 50 ms");
        assert!(seconds_buckets("impeller_ingest_stored_total 3\n", "impeller_ingest_store_seconds").is_err());
        assert_eq!(
            metric(&first.prometheus(), "impeller_ingest_batches_total"),
            Some(0.0),
            "counted by the loop, not here"
        );
        assert_eq!(
            metric(
                "impeller_ingest_stored_total_x 1\nimpeller_ingest_stored_total 7\n",
                "impeller_ingest_stored_total"
            ),
            Some(7.0)
        );
    }
}
