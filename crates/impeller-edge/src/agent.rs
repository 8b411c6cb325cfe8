//! The agent's main loop: readings in, scores and alerts out, everything through the outbox to
//! the hub, models switched when a new one is installed.
//!
//! One single-threaded runtime. Tasks: the source (readings), the uplink event loop (MQTT),
//! the metrics endpoint. The main loop owns the outbox, the model and the producer.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use impeller_core::adapter::Adapter;
use impeller_core::deploy::{Desired, Judgement, Trial, TrialPolicy, UpdateReport, UpdateState, decode_desired, judge};
use impeller_core::package::{TrustStore, VerifiedPackage};
use impeller_core::registers::RegisterMap;
use impeller_core::wire::{self, ModelRef};
use impeller_core::{Scorer, Verdict};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::config::{Config, Source, hub_broker};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxConfig, Outgoing};
use crate::produce::{self, Message, Producer};
use crate::source::{self, Reading};
use crate::store::{ModelStore, PendingWatch};
use crate::tls::HubRoots;
use crate::update::{DownloadError, Downloader};

/// The model in use, with what turns readings into its frames and frames into messages.
struct Active {
    pkg: VerifiedPackage,
    adapter: Adapter,
    scorer: Scorer,
    producer: Producer,
}

impl Active {
    fn new(pkg: VerifiedPackage, cfg: &Config) -> anyhow::Result<Self> {
        let model = pkg.model.clone();
        let adapter = match &cfg.adapter {
            Some(a) => Adapter::new(a, &model.channels)?,
            None => Adapter::identity(&model.channels),
        };
        let m = &pkg.manifest;
        let model_ref = ModelRef { name: m.model.name.clone(), version: m.model.version.clone(), release: m.release };
        let producer = Producer::new(
            model_ref,
            model.channels.clone(),
            model.feature_names(),
            model.calibration.threshold,
            cfg.uplink.clone(),
        );
        Ok(Self { scorer: Scorer::new(model), adapter, producer, pkg })
    }

    /// Adapts and scores one reading; `None` until the adapter has a whole frame.
    fn score<'a>(
        &mut self,
        ts_ms: i64,
        values: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> Option<(i64, Vec<f64>, Verdict)> {
        let (ts, frame) = self.adapter.push(ts_ms, values)?;
        let verdict = self.scorer.push(ts, &frame);
        Some((ts, frame, verdict))
    }
}

/// The last readings, kept compactly for shadow scoring: a source sends the same names every
/// time, so they are stored once per run of identical name lists rather than per reading.
#[derive(Default)]
struct Recent {
    capacity: usize,
    readings: VecDeque<(i64, Names, Box<[f64]>)>,
}

type Names = Arc<[Arc<str>]>;

impl Recent {
    fn push(&mut self, r: &Reading) {
        if self.capacity == 0 {
            return;
        }
        if self.readings.len() >= self.capacity {
            self.readings.pop_front();
        }
        let same = self.readings.back().filter(|(_, names, _)| {
            names.len() == r.values.len() && names.iter().zip(&r.values).all(|(a, (b, _))| Arc::ptr_eq(a, b) || a == b)
        });
        let names = match same {
            Some((_, names, _)) => names.clone(),
            None => r.values.iter().map(|(k, _)| k.clone()).collect(),
        };
        self.readings.push_back((r.ts_ms, names, r.values.iter().map(|(_, v)| *v).collect()));
    }
}

fn count(trial: &mut Trial, verdict: &Verdict) {
    if let Verdict::Scored(s) = verdict {
        trial.add(s.score, s.alarm);
    }
}

/// Scores `readings` with a fresh copy of `pkg`'s model (nothing is sent).
fn shadow(pkg: &VerifiedPackage, cfg: &Config, recent: &Recent) -> anyhow::Result<Trial> {
    let mut a = Active::new(pkg.clone(), cfg)?;
    let mut trial = Trial::default();
    for (ts, names, values) in &recent.readings {
        if let Some((_, _, v)) = a.score(*ts, names.iter().map(AsRef::as_ref).zip(values.iter().copied())) {
            count(&mut trial, &v);
        }
    }
    Ok(trial)
}

/// Shadow scoring: `candidate` and the `running` model score the recent readings; the
/// candidate is refused if it does worse.
fn shadow_judgement(
    candidate: &VerifiedPackage,
    running: &VerifiedPackage,
    cfg: &Config,
    recent: &Recent,
) -> Result<(), String> {
    let new = shadow(candidate, cfg, recent).map_err(|e| e.to_string())?;
    let old = shadow(running, cfg, recent).map_err(|e| e.to_string())?;
    match judge(&new, &old, &trial_policy(cfg)) {
        Judgement::Fail(why) => return Err(format!("shadow scoring: {why}")),
        Judgement::Undecided => {
            tracing::info!(frames = old.scored, "too few recent frames to shadow-score the new model; installing it")
        }
        Judgement::Pass => tracing::info!(?new, ?old, "the new model passed shadow scoring"),
    }
    Ok(())
}

/// After a switch: the previous model keeps scoring beside the new one until `until`.
struct HealthWatch {
    previous: Active,
    deployment: String,
    sha256: String,
    until: Instant,
    new: Trial,
    old: Trial,
}

impl HealthWatch {
    fn new(previous: Active, deployment: String, sha256: String, window: Duration) -> HealthWatch {
        HealthWatch {
            previous,
            deployment,
            sha256,
            until: Instant::now() + window,
            new: Trial::default(),
            old: Trial::default(),
        }
    }
}

/// The health watch a previous run of the agent had under way, if it still applies.
fn resumed_watch(store: &ModelStore, cfg: &Config) -> anyhow::Result<Option<HealthWatch>> {
    let state = store.state()?;
    let Some(w) = state.watch else { return Ok(None) };
    let left_ms = w.until_ms - crate::now_ms();
    if state.active_sha256.as_deref() != Some(w.sha256.as_str()) || left_ms <= 0 {
        store.set_watch(None)?;
        return Ok(None);
    }
    match store.load_previous() {
        Ok(Some(pkg)) => {
            tracing::info!(deployment = %w.deployment, left_s = left_ms / 1000, "resuming the new model's health watch");
            let window = Duration::from_millis(left_ms as u64);
            Ok(Some(HealthWatch::new(Active::new(pkg, cfg)?, w.deployment, w.sha256, window)))
        }
        Ok(None) => Ok(None),
        Err(error) => {
            tracing::error!(%error, "the previous model fails verification; the health watch cannot resume");
            store.set_watch(None)?;
            Ok(None)
        }
    }
}

/// Whether `host` names this machine (a plain connection to it stays on it).
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn trial_policy(cfg: &Config) -> TrialPolicy {
    TrialPolicy { min_frames: cfg.models.min_trial_frames, max_alarm_rate_increase: cfg.models.max_alarm_rate_increase }
}

pub fn load_trust(paths: &[PathBuf]) -> anyhow::Result<TrustStore> {
    let mut trust = TrustStore::new();
    for p in paths {
        let bytes = std::fs::read(p).with_context(|| format!("reading trusted key {}", p.display()))?;
        trust.add_key_file(&bytes, &p.display().to_string())?;
    }
    Ok(trust)
}

/// Holds an exclusive lock on the data directory for the agent's lifetime: two agents (or an
/// agent and a tool) writing one outbox would corrupt it.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("agent.lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!("{} is in use by another impeller-edge agent", dir.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

enum UplinkEvent {
    Connected,
    Disconnected(String),
    Ack(wire::Ack),
    /// The retained desired state (empty: nothing desired).
    Desired(Vec<u8>),
}

async fn uplink_events(
    mut eventloop: EventLoop,
    ack_topic: String,
    desired_topic: String,
    tx: mpsc::Sender<UplinkEvent>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(500);
                if tx.send(UplinkEvent::Connected).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ack_topic => match wire::decode_ack(&p.payload) {
                Ok(a) => {
                    if tx.send(UplinkEvent::Ack(a)).await.is_err() {
                        return;
                    }
                }
                Err(error) => tracing::warn!(%error, "ignoring a malformed acknowledgement"),
            },
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == desired_topic => {
                if tx.send(UplinkEvent::Desired(p.payload.to_vec())).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if tx.send(UplinkEvent::Disconnected(e.to_string())).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Bodies put in one uplink message at most (a single larger record still goes alone), well
/// under the client's and the hub's packet limits.
const MAX_MESSAGE_BYTES: usize = 256 << 10;

/// Messages taken from the outbox and not yet handed to the MQTT client.
struct Uplink {
    client: AsyncClient,
    device: String,
    connected: bool,
    queue: VecDeque<Outgoing>,
    sent_seq: u64,
    /// Sequence numbers sent and not yet acknowledged, oldest first, and when each was sent. The
    /// window is counted in records, not in sequence numbers: after evictions the numbers have gaps.
    in_flight: VecDeque<(u64, Instant)>,
    last_progress: Instant,
    /// When to send again what the hub has not acknowledged, from its acknowledgements' latency.
    resend: wire::ResendTimer,
    /// Records the hub reported lost on the way (an acknowledgement's `held_from`), sent again
    /// ahead of the queue; and the acknowledgement that reported the last such gap, and when.
    gap: VecDeque<Outgoing>,
    gap_reported: Option<(u64, Instant)>,
}

impl Uplink {
    /// Publishes what the client will take now; refills from the outbox. Returns true while a
    /// backlog remains (pump again soon), false when idle.
    fn pump(&mut self, outbox: &mut Outbox, cfg: &Config, metrics: &Metrics) -> anyhow::Result<bool> {
        if !self.connected {
            return Ok(false);
        }
        let acked = outbox.acked();
        let waited = self.last_progress.elapsed();
        if self.sent_seq > acked && waited > self.resend.timeout() {
            tracing::warn!(
                acked,
                sent = self.sent_seq,
                waited_ms = waited.as_millis() as u64,
                "no acknowledgement for a while; sending again from the last acknowledged record"
            );
            self.resend.expired(self.sent_seq);
            self.restart(outbox);
        }
        loop {
            let from_gap = !self.gap.is_empty();
            if !from_gap && self.queue.is_empty() {
                let acked = outbox.acked();
                while self.in_flight.front().is_some_and(|(s, _)| *s <= acked) {
                    self.in_flight.pop_front();
                }
                if self.in_flight.len() as u64 >= cfg.hub.max_unacked {
                    return Ok(false); // the hub is behind; wait for acknowledgements
                }
                // What the last sync made durable (alerts and events are at once): the sync
                // tick pumps right after it, so records wait at most `sync_interval_ms`.
                self.queue.extend(outbox.next_batch(500, 1 << 20)?);
                if self.queue.is_empty() {
                    return Ok(false);
                }
            }
            // The run of records of one kind at the front, as one message (an array when it is
            // more than one: one packet instead of one per record).
            let records = if from_gap { &self.gap } else { &self.queue };
            let Some(first) = records.front() else { return Ok(false) };
            let kind = produce::kind(first.class);
            let (mut envelopes, mut bytes) = (Vec::new(), 0);
            for r in records.iter().take(cfg.uplink.max_records_per_message.max(1)) {
                if produce::kind(r.class) != kind
                    || (bytes + r.payload.len() > MAX_MESSAGE_BYTES && !envelopes.is_empty())
                {
                    break;
                }
                bytes += r.payload.len();
                envelopes.push(wire::encode_envelope(&self.device, r.seq, r.prev, r.ts_ms, kind, &r.payload)?);
            }
            let count = envelopes.len();
            let payload = if count == 1 { envelopes.remove(0) } else { wire::encode_envelopes(&envelopes) };
            match self.client.try_publish(wire::topic(&self.device, kind), QoS::AtLeastOnce, false, payload) {
                Ok(()) if from_gap => {
                    self.gap.drain(..count);
                    Metrics::add(&metrics.sent, count as u64);
                }
                Ok(()) => {
                    for r in self.queue.drain(..count) {
                        self.sent_seq = r.seq;
                        self.in_flight.push_back((r.seq, Instant::now()));
                    }
                    Metrics::add(&metrics.sent, count as u64);
                }
                Err(_) => return Ok(true), // the client's queue is full; continue very soon
            }
        }
    }

    /// Takes the records the hub reports lost (those before `held_from`) to send again, unless
    /// this gap was taken less than `GAP_RESEND_AFTER` ago (they may still be on their way).
    fn resend_gap(&mut self, outbox: &mut Outbox, ack: &wire::Ack) -> anyhow::Result<()> {
        let Some(held_from) = ack.held_from else { return Ok(()) };
        let recent = |(acked, at): (u64, Instant)| acked == ack.acked && at.elapsed() < wire::GAP_RESEND_AFTER;
        if !self.gap.is_empty() || self.gap_reported.is_some_and(recent) {
            return Ok(());
        }
        self.gap = outbox.unacked_before(held_from, 2000, 1 << 20)?.into();
        self.resend.resent(self.sent_seq);
        self.gap_reported = Some((ack.acked, Instant::now()));
        tracing::info!(
            acked = ack.acked,
            held_from,
            records = self.gap.len(),
            "the hub reports records lost on the way; sending them again"
        );
        Ok(())
    }

    /// The hub acknowledged everything up to `acked`, beyond the `before` it had: the wait for
    /// the next acknowledgement starts afresh, timed by the newest record it covers.
    fn acknowledged(&mut self, acked: u64, before: u64) {
        if acked <= before {
            return;
        }
        self.last_progress = Instant::now();
        if let Some(&(seq, sent)) = self.in_flight.iter().take_while(|(s, _)| *s <= acked).last() {
            self.resend.acknowledged(seq, sent.elapsed());
        }
    }

    fn restart(&mut self, outbox: &mut Outbox) {
        self.resend.resent(self.sent_seq);
        self.queue.clear();
        self.gap.clear();
        self.in_flight.clear();
        outbox.rewind();
        self.sent_seq = outbox.acked();
        self.last_progress = Instant::now();
    }
}

/// Appends what a frame produced: to the outbox first (alerts are fsynced there), then alerts
/// to the local journal, so every alert an operator sees on site also reaches the hub.
fn append(
    outbox: &mut Outbox,
    journal: &Journal,
    metrics: &Metrics,
    produced: produce::Produced,
) -> anyhow::Result<()> {
    for Message { class, body } in produced.messages {
        outbox.append(class, crate::now_ms(), &body)?;
    }
    for alert in &produced.alerts {
        if let Err(error) = journal.append(alert) {
            tracing::error!(%error, "cannot write the local alert journal");
        }
        Metrics::add(&metrics.alerts, 1);
        tracing::warn!(started_ms = alert.started_ms, score = alert.score, top = ?alert.top_features.first(), "alert");
    }
    Ok(())
}

/// Runs `f`, which waits on the disk (an fsync), without holding up the other tasks of a
/// multi-threaded runtime: the demo runs a thousand agents and the hub on one, where the
/// agents' fsyncs held its worker threads and starved the rest. On a
/// current-thread runtime, as the agent's own binary has, it simply runs.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn update_outbox_metrics(outbox: &mut Outbox, metrics: &Metrics) {
    Metrics::set(&metrics.outbox_bytes, outbox.bytes());
    Metrics::set(&metrics.outbox_pending, outbox.pending_records());
    Metrics::set(&metrics.acked_seq, outbox.acked());
    let oldest = outbox.oldest_pending_ts().ok().flatten().unwrap_or(0);
    metrics.outbox_oldest_ms.store(oldest, Ordering::Relaxed);
    let s = outbox.stats();
    for i in 0..5 {
        Metrics::set(&metrics.outbox_refused[i], s.refused[i]);
        Metrics::set(&metrics.outbox_evicted[i], s.evicted[i]);
    }
}

fn model_event(name: &str, pkg: &VerifiedPackage) -> Message {
    let m = &pkg.manifest;
    produce::event(
        name,
        serde_json::json!({
            "model": {"name": m.model.name, "version": m.model.version, "release": m.release},
            "manifest_sha256": pkg.manifest_sha256, "signed_by": pkg.signed_by,
        }),
    )
}

/// Makes `pkg` the running model: the old one's pending aggregates are flushed first.
fn switch_to(
    active: &mut Option<Active>,
    pkg: VerifiedPackage,
    cfg: &Config,
    outbox: &mut Outbox,
    journal: &Journal,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    tracing::info!(model = %pkg.manifest.model.name, release = pkg.manifest.release, "switching to the newly installed model");
    let event = model_event("model_installed", &pkg);
    if let Some(mut old) = active.take() {
        append(outbox, journal, metrics, old.producer.flush())?;
    }
    Metrics::set(&metrics.model_release, pkg.manifest.release);
    Metrics::add(&metrics.installs, 1);
    *active = Some(Active::new(pkg, cfg)?);
    outbox.append(event.class, crate::now_ms(), &event.body)?;
    Ok(())
}

/// Tells the hub where this device is with the update its desired state asked for.
fn report(
    outbox: &mut Outbox,
    desired: &Desired,
    state: UpdateState,
    reason: Option<String>,
    active: &Option<Active>,
) -> anyhow::Result<()> {
    report_on(outbox, &desired.deployment, &desired.package.sha256, state, reason, active)
}

fn report_on(
    outbox: &mut Outbox,
    deployment: &str,
    sha256: &str,
    state: UpdateState,
    reason: Option<String>,
    active: &Option<Active>,
) -> anyhow::Result<()> {
    let report = UpdateReport {
        deployment: deployment.to_string(),
        sha256: sha256.to_string(),
        state,
        reason,
        running_release: active.as_ref().map(|a| a.pkg.manifest.release),
    };
    let event = produce::event("update", serde_json::to_value(&report).unwrap_or_default());
    outbox.append(event.class, crate::now_ms(), &event.body)?;
    Ok(())
}

/// Downloads until done or a permanent error; transient errors are retried with backoff.
async fn download(
    downloader: Downloader,
    desired: Desired,
    tx: mpsc::Sender<(Desired, Result<Vec<u8>, DownloadError>)>,
) {
    let mut backoff = Duration::from_secs(2);
    loop {
        let (d, pkg) = (downloader.clone(), desired.package.clone());
        let fetched = tokio::task::spawn_blocking(move || d.fetch(&pkg)).await;
        let fetched = fetched.unwrap_or_else(|e| {
            Err(DownloadError::Io {
                path: downloader.part_path(&desired.package.sha256),
                source: std::io::Error::other(e),
            })
        });
        match fetched {
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, sha256 = %desired.package.sha256, "package download interrupted; resuming later");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
            result => {
                let _ = tx.send((desired, result)).await;
                return;
            }
        }
    }
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&cfg.device.data_dir)?;
    let metrics = Arc::new(Metrics::default());
    let store =
        ModelStore::new(&cfg.device.data_dir, load_trust(&cfg.models.trusted_keys)?, cfg.models.max_package_bytes);
    let journal = Journal::new(&cfg.device.data_dir);
    let mut outbox = Outbox::open(
        &cfg.device.data_dir.join("outbox"),
        OutboxConfig { quota_bytes: cfg.outbox.quota_bytes, segment_bytes: cfg.outbox.segment_bytes },
    )?;
    // Before the metrics endpoint opens: a scraper must never see an empty outbox that is not.
    update_outbox_metrics(&mut outbox, &metrics);

    let mut generation = store.state()?.generation;
    let mut active = match store.load_active() {
        Ok(Some(pkg)) => {
            tracing::info!(model = %pkg.manifest.model.name, release = pkg.manifest.release, "model loaded");
            Some(Active::new(pkg, &cfg)?)
        }
        Ok(None) => {
            tracing::warn!("no model installed: readings are not scored until one is (impeller-edge install)");
            None
        }
        Err(error) => {
            tracing::error!(%error, "the installed model failed verification; not scoring until a valid one is installed");
            None
        }
    };
    Metrics::set(&metrics.model_release, active.as_ref().map_or(0, |a| a.pkg.manifest.release));
    let started = produce::event(
        "agent_started",
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "model_release": active.as_ref().map(|a| a.pkg.manifest.release),
        }),
    );
    outbox.append(started.class, crate::now_ms(), &started.body)?;

    if !cfg.metrics.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&cfg.metrics.listen)
            .await
            .with_context(|| format!("metrics.listen {}", cfg.metrics.listen))?;
        tracing::info!(address = %listener.local_addr()?, "metrics at /metrics");
        tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    }

    let (host, port, over_tls) = hub_broker(&cfg.hub.broker).map_err(anyhow::Error::msg)?;
    let needs_roots = over_tls || cfg.hub.api.starts_with("https://");
    let roots = needs_roots.then(|| HubRoots::load(&cfg.hub.ca_cert)).transpose()?;
    if !over_tls && !cfg.hub.username.is_empty() && !is_loopback(&host) {
        tracing::warn!(broker = %cfg.hub.broker, "the device's secret crosses to a remote broker in the clear: use mqtts://");
    }
    let mut opts = MqttOptions::new(cfg.device.id.clone(), host, port);
    if let (true, Some(roots)) = (over_tls, &roots) {
        opts.set_transport(roots.mqtt()?);
    }
    opts.set_keep_alive(Duration::from_secs(cfg.hub.keep_alive_s.max(5)));
    opts.set_max_packet_size(2 << 20, 2 << 20);
    if !cfg.hub.username.is_empty() {
        opts.set_credentials(cfg.hub.username.clone(), cfg.hub.password.clone());
    }
    let (client, eventloop) = AsyncClient::new(opts, 1000);
    let ack_topic = wire::topic(&cfg.device.id, "ack");
    let desired_topic = wire::topic(&cfg.device.id, "desired");
    let (uplink_tx, mut uplink_rx) = mpsc::channel(64);
    tokio::spawn(uplink_events(eventloop, ack_topic.clone(), desired_topic.clone(), uplink_tx));
    let downloader = if cfg.hub.api.is_empty() {
        None
    } else {
        let dir = cfg.device.data_dir.join("downloads");
        let d = Downloader::new(&cfg.hub.api, &cfg.hub.username, &cfg.hub.password, &dir, cfg.models.max_package_bytes);
        Some(match &roots {
            Some(roots) => d.with_tls(roots.http()),
            None => d,
        })
    };
    let (done_tx, mut done_rx) = mpsc::channel(4);
    // The package being downloaded, and packages refused here (not tried again until the
    // agent restarts: the same bytes would be refused again).
    let mut downloading: Option<(String, tokio::task::JoinHandle<()>)> = None;
    let mut refused: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut recent = Recent { capacity: cfg.models.shadow_readings, ..Recent::default() };
    let mut watch: Option<HealthWatch> = if active.is_some() { resumed_watch(&store, &cfg)? } else { None };
    let mut uplink = Uplink {
        client: client.clone(),
        device: cfg.device.id.clone(),
        connected: false,
        queue: VecDeque::new(),
        sent_seq: outbox.acked(),
        in_flight: VecDeque::new(),
        last_progress: Instant::now(),
        resend: wire::ResendTimer::new(
            Duration::from_secs(cfg.hub.min_ack_timeout_s),
            Duration::from_secs(cfg.hub.ack_timeout_s),
        ),
        gap: VecDeque::new(),
        gap_reported: None,
    };

    let (reading_tx, mut readings) = mpsc::channel::<Reading>(1024);
    match &cfg.source {
        Source::Csv { path, speed, rebase_time } => {
            tokio::spawn(source::replay_csv(path.clone(), *speed, *rebase_time, reading_tx, metrics.clone()));
        }
        Source::Modbus { address, unit, register_map, poll_ms, timeout_ms } => {
            let origin = register_map.display().to_string();
            let text = std::fs::read_to_string(register_map).with_context(|| format!("cannot read {origin}"))?;
            let src = source::ModbusSource {
                address: address.clone(),
                unit: *unit,
                map: RegisterMap::parse(&text, &origin)?,
                poll: Duration::from_millis(*poll_ms),
                timeout: Duration::from_millis(*timeout_ms),
            };
            tokio::spawn(source::poll_modbus(src, reading_tx, metrics.clone()));
        }
        Source::Mqtt { broker, topic } => {
            tokio::spawn(source::subscribe_mqtt(
                cfg.device.id.clone(),
                broker.clone(),
                topic.clone(),
                reading_tx,
                metrics.clone(),
            ));
        }
    }

    let mut sync_tick = tokio::time::interval(Duration::from_millis(cfg.outbox.sync_interval_ms.max(10)));
    // Pumping is adaptive: every few milliseconds while a backlog drains, four times a second
    // when idle (an alert or a reconnect pumps at once), so an idle agent wakes rarely.
    let pump = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pump);
    const BUSY: Duration = Duration::from_millis(2);
    const IDLE: Duration = Duration::from_millis(250);
    let mut model_tick = tokio::time::interval(Duration::from_secs(2));
    let mut source_open = true;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            reading = readings.recv(), if source_open => {
                let Some(reading) = reading else {
                    source_open = false;
                    tracing::info!("the source has no more readings");
                    continue;
                };
                Metrics::add(&metrics.readings, 1);
                recent.push(&reading);
                let named = || reading.values.iter().map(|(k, v)| (k.as_ref(), *v));
                if let Some(w) = watch.as_mut()
                    && let Some((_, _, v)) = w.previous.score(reading.ts_ms, named())
                {
                    count(&mut w.old, &v);
                }
                if let Some(a) = active.as_mut() {
                    let Some((ts, frame, verdict)) = a.score(reading.ts_ms, named()) else { continue };
                    Metrics::add(&metrics.frames, 1);
                    if let Some(w) = watch.as_mut() {
                        count(&mut w.new, &verdict);
                    }
                    if let Verdict::Scored(s) = verdict {
                        Metrics::add(&metrics.scored, 1);
                        if s.alarm {
                            Metrics::add(&metrics.alarms, 1);
                        }
                    }
                    let produced = a.producer.push(ts, &frame, &verdict, a.scorer.features());
                    if !produced.alerts.is_empty() {
                        pump.as_mut().reset(tokio::time::Instant::now());
                    }
                    append(&mut outbox, &journal, &metrics, produced)?;
                }
                if let Some(w) = &watch {
                    let judgement = judge(&w.new, &w.old, &trial_policy(&cfg));
                    if let Judgement::Fail(why) = judgement {
                        let Some(w) = watch.take() else { continue };
                        let sha = w.sha256.clone();
                        tracing::error!(reason = %why, %sha, "the new model does worse than the one before it; rolling back");
                        if store.roll_back()? {
                            generation = store.state()?.generation;
                            if let Some(mut bad) = active.replace(w.previous) {
                                append(&mut outbox, &journal, &metrics, bad.producer.flush())?;
                            }
                            Metrics::set(&metrics.model_release, active.as_ref().map_or(0, |a| a.pkg.manifest.release));
                        }
                        report_on(&mut outbox, &w.deployment, &sha, UpdateState::RolledBack, Some(format!("health watch: {why}")), &active)?;
                        refused.insert(sha);
                        pump.as_mut().reset(tokio::time::Instant::now());
                    } else if Instant::now() >= w.until {
                        tracing::info!(new = ?w.new, old = ?w.old, "the new model passed its health watch");
                        watch = None;
                        store.set_watch(None)?;
                    }
                }
            }
            event = uplink_rx.recv() => match event {
                Some(UplinkEvent::Connected) => {
                    tracing::info!(broker = %cfg.hub.broker, "connected to the hub");
                    uplink.connected = true;
                    metrics.hub_connected.store(true, Ordering::Relaxed);
                    for topic in [&ack_topic, &desired_topic] {
                        if let Err(error) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                            tracing::error!(%error, topic, "cannot subscribe");
                        }
                    }
                    uplink.restart(&mut outbox);
                    pump.as_mut().reset(tokio::time::Instant::now());
                }
                Some(UplinkEvent::Disconnected(error)) => {
                    if uplink.connected {
                        tracing::warn!(%error, "lost the hub; scoring goes on and everything waits in the outbox");
                    }
                    uplink.connected = false;
                    metrics.hub_connected.store(false, Ordering::Relaxed);
                }
                Some(UplinkEvent::Ack(ack)) => {
                    uplink.acknowledged(ack.acked, outbox.acked());
                    outbox.ack(ack.acked)?;
                    uplink.resend_gap(&mut outbox, &ack)?;
                    if !uplink.gap.is_empty() {
                        pump.as_mut().reset(tokio::time::Instant::now());
                    }
                    metrics.last_hub_contact_ms.store(crate::now_ms(), Ordering::Relaxed);
                }
                Some(UplinkEvent::Desired(payload)) => {
                    let desired = match decode_desired(&payload) {
                        Ok(Some(d)) => d,
                        Ok(None) => continue, // no deployment applies: keep what runs
                        Err(error) => { tracing::warn!(%error, "ignoring a malformed desired state"); continue }
                    };
                    let sha = desired.package.sha256.clone();
                    let state = match store.state() {
                        Ok(s) => s,
                        Err(error) => { tracing::error!(%error, "cannot read the model state"); continue }
                    };
                    // The hub aborted a rollout this device took: back to the model before it.
                    if let Some(r) = &desired.rollback
                        && state.active_sha256.as_deref() == Some(r.sha256.as_str())
                    {
                        if state.previous_sha256.as_deref() == Some(sha.as_str()) && store.roll_back()? {
                            tracing::warn!(deployment = %r.deployment, reason = %r.reason, "the hub rolls this device back");
                            generation = store.state()?.generation;
                            watch = None;
                            refused.insert(r.sha256.clone());
                            match store.load_active() {
                                Ok(Some(pkg)) => switch_to(&mut active, pkg, &cfg, &mut outbox, &journal, &metrics)?,
                                Ok(None) => {}
                                Err(error) => tracing::error!(%error, "the previous model fails verification now"),
                            }
                            report_on(&mut outbox, &r.deployment, &r.sha256, UpdateState::RolledBack, Some(r.reason.clone()), &active)?;
                            report(&mut outbox, &desired, UpdateState::Active, None, &active)?;
                            pump.as_mut().reset(tokio::time::Instant::now());
                            continue;
                        }
                        tracing::warn!(deployment = %r.deployment, "asked to roll back, but the previous model here is not the desired one");
                    }
                    let installed = state.active_sha256;
                    if installed.as_deref() == Some(sha.as_str()) {
                        // Already running it (e.g. after a restart): say so, the hub may not know.
                        report(&mut outbox, &desired, UpdateState::Active, None, &active)?;
                    } else if refused.contains(&sha) {
                        tracing::debug!(%sha, "desired package was refused before");
                    } else if downloading.as_ref().is_some_and(|(s, _)| *s == sha) {
                        // already on its way
                    } else if let Some(d) = &downloader {
                        if let Some((_, old)) = downloading.take() {
                            old.abort();
                        }
                        d.clean(Some(&sha));
                        tracing::info!(deployment = %desired.deployment, %sha, release = desired.package.release, "downloading the desired package");
                        report(&mut outbox, &desired, UpdateState::Downloading, None, &active)?;
                        downloading = Some((sha, tokio::spawn(download(d.clone(), desired, done_tx.clone()))));
                    } else {
                        tracing::warn!(%sha, "the hub asks for a new model but hub.api is not set; ignoring");
                    }
                }
                None => anyhow::bail!("the uplink task stopped"),
            },
            Some((desired, result)) = done_rx.recv() => {
                let sha = desired.package.sha256.clone();
                if downloading.as_ref().is_none_or(|(s, _)| *s != sha) {
                    continue; // superseded by a newer desired state
                }
                downloading = None;
                if result.is_ok() {
                    report(&mut outbox, &desired, UpdateState::Verifying, None, &active)?;
                }
                let installed = match result.map_err(|e| e.to_string()) {
                    Err(e) => Err(e),
                    Ok(bytes) => {
                        let now = crate::now_ms();
                        match store.verify(&bytes, &cfg.device.target, now) {
                            Err(e) => Err(e.to_string()),
                            Ok(pkg) => {
                                let verdict = match &active {
                                    None => Ok(()),
                                    Some(a) => {
                                        report(&mut outbox, &desired, UpdateState::Shadow, None, &active)?;
                                        shadow_judgement(&pkg, &a.pkg, &cfg, &recent)
                                    }
                                };
                                verdict.and_then(|()| {
                                    store.install(&bytes, &cfg.device.target, now, None).map_err(|e| e.to_string())
                                })
                            }
                        }
                    }
                };
                if let Some(d) = &downloader {
                    d.clean(None);
                }
                match installed {
                    Ok(pkg) => {
                        generation = store.state()?.generation;
                        // The previous model's pending aggregates are sent; from now on it
                        // only scores, for comparison.
                        let mut previous = active.take();
                        if let Some(p) = previous.as_mut() {
                            append(&mut outbox, &journal, &metrics, p.producer.flush())?;
                        }
                        switch_to(&mut active, pkg, &cfg, &mut outbox, &journal, &metrics)?;
                        report(&mut outbox, &desired, UpdateState::Active, None, &active)?;
                        watch = match previous {
                            Some(p) => {
                                let window = Duration::from_secs(cfg.models.health_window_s);
                                store.set_watch(Some(PendingWatch {
                                    deployment: desired.deployment.clone(),
                                    sha256: sha.clone(),
                                    until_ms: crate::now_ms() + window.as_millis() as i64,
                                }))?;
                                Some(HealthWatch::new(p, desired.deployment.clone(), sha.clone(), window))
                            }
                            None => None,
                        };
                    }
                    Err(reason) => {
                        Metrics::add(&metrics.installs_refused, 1);
                        tracing::error!(%reason, %sha, "refused the desired package; keeping the current model");
                        refused.insert(sha);
                        report(&mut outbox, &desired, UpdateState::Failed, Some(reason), &active)?;
                    }
                }
                pump.as_mut().reset(tokio::time::Instant::now());
            }
            () = &mut pump => {
                let busy = uplink.pump(&mut outbox, &cfg, &metrics)?;
                pump.as_mut().reset(tokio::time::Instant::now() + if busy { BUSY } else { IDLE });
            }
            _ = sync_tick.tick() => {
                blocking(|| outbox.sync())?;
                pump.as_mut().reset(tokio::time::Instant::now());
                update_outbox_metrics(&mut outbox, &metrics);
            }
            _ = model_tick.tick() => {
                let state = match store.state() {
                    Ok(s) => s,
                    Err(error) => { tracing::error!(%error, "cannot read the model state"); continue }
                };
                if state.generation != generation {
                    generation = state.generation;
                    match store.load_active() {
                        Ok(Some(pkg)) => {
                            watch = None; // installed by hand: the operator decided
                            switch_to(&mut active, pkg, &cfg, &mut outbox, &journal, &metrics)?;
                        }
                        Ok(None) => {}
                        Err(error) => {
                            Metrics::add(&metrics.installs_refused, 1);
                            tracing::error!(%error, "the newly installed model failed verification; keeping the current one");
                        }
                    }
                }
            }
            _ = &mut shutdown => {
                tracing::info!("stopping");
                if let Some(a) = active.as_mut() {
                    append(&mut outbox, &journal, &metrics, a.producer.flush())?;
                }
                outbox.sync()?;
                return Ok(());
            }
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
