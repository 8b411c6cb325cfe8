//! Ingestion: what the agents publish is checked, stored once per (device, seq) in batches, and
//! acknowledged only after the batch is committed. The acknowledgement is cumulative: the largest
//! N such that every message of the device up to N is stored, following each message's `prev`
//! (the agent names the message before it, so gaps it made on purpose, by evicting low-priority
//! records over its quota, do not hold the acknowledgement back).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use impeller_core::deploy::UpdateReport;
use impeller_core::wire;

use crate::bus::{Bus, Received, Send};
use crate::store::{Incoming, Stream, TelemetryStore};

/// Upper bounds in seconds of the buckets of [`IngestStats`]' histograms: from a few
/// milliseconds (a commit's fsync) to the seconds that break the 1-s target.
pub const SECONDS_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0];

/// A histogram of durations over [`SECONDS_BUCKETS`].
#[derive(Debug, Default)]
pub struct Seconds {
    /// Per bucket (not cumulative), the last one beyond the largest bound.
    buckets: [AtomicU64; SECONDS_BUCKETS.len() + 1],
    micros_sum: AtomicU64,
}

impl Seconds {
    pub fn record(&self, took: std::time::Duration) {
        let secs = took.as_secs_f64();
        let bucket = SECONDS_BUCKETS.iter().position(|le| secs <= *le).unwrap_or(SECONDS_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.micros_sum.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Appends the histogram as `name` in Prometheus' text exposition format.
    fn write_prometheus(&self, out: &mut String, name: &str, help: &str) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut count = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            count += bucket.load(Ordering::Relaxed);
            let le = SECONDS_BUCKETS.get(i).map_or("+Inf".to_string(), |le| le.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_sum {}", self.micros_sum.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Counters of the ingest loop.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    /// Messages refused: malformed, or the envelope's device differs from the topic's.
    pub refused: AtomicU64,
    pub batches: AtomicU64,
    /// Batches the database failed to store (read or commit error); sent again by the agents.
    pub failed_batches: AtomicU64,
    /// Publishes waiting in the channel from the broker when the latest batch began: near its
    /// capacity, ingestion is behind and the broker's connections stop reading.
    pub queued: AtomicU64,
    /// Each batch's time in the database (its streams' state read, then its commit).
    pub store_seconds: Seconds,
    /// Each publish's time in the hub: from its arrival to its acknowledgement handed back to
    /// the broker. What it waited for a batch, and behind it, is here and not in
    /// `store_seconds`.
    pub ack_seconds: Seconds,
}

impl IngestStats {
    /// The counters in Prometheus' text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        for (name, help, value) in [
            ("impeller_ingest_stored_total", "Messages stored (each device and sequence number once).", &self.stored),
            ("impeller_ingest_duplicates_total", "Messages received again after they were stored.", &self.duplicates),
            (
                "impeller_ingest_refused_total",
                "Messages refused as malformed or sent for another device.",
                &self.refused,
            ),
            ("impeller_ingest_batches_total", "Batches committed.", &self.batches),
            ("impeller_ingest_failed_batches_total", "Batches the database failed to store.", &self.failed_batches),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", get(value));
        }
        let name = "impeller_ingest_queued_publishes";
        let _ = writeln!(out, "# HELP {name} Publishes waiting for ingestion when its latest batch began.");
        let _ = writeln!(out, "# TYPE {name} gauge\n{name} {}", get(&self.queued));
        self.store_seconds.write_prometheus(
            &mut out,
            "impeller_ingest_store_seconds",
            "A batch's time in the database: its streams' state read, then its commit.",
        );
        self.ack_seconds.write_prometheus(
            &mut out,
            "impeller_ingest_ack_seconds",
            "A publish's time in the hub: from its arrival to its acknowledgement handed to the broker.",
        );
        out
    }
}

/// Checks one publish: topic and envelopes must agree, each envelope on its own (a message may
/// carry an array of them). Empty for topics that are not uplink.
fn check(r: &Received) -> Vec<Result<Incoming, String>> {
    let Some((device, kind)) = wire::parse_topic(&r.topic) else { return Vec::new() };
    if !wire::UPLINK_KINDS.contains(&kind) {
        return Vec::new(); // acknowledgements and desired state, published by the hub itself
    }
    let all = match wire::decode_envelopes(&r.payload) {
        Ok(all) => all,
        Err(e) => return vec![Err(format!("{}: {e}", r.topic))],
    };
    let checked = all.into_iter().enumerate().map(|(i, env)| {
        let at = || if i == 0 { r.topic.clone() } else { format!("{} envelope #{}", r.topic, i + 1) };
        match env {
            Err(e) => Err(format!("{}: {e}", at())),
            Ok(env) if env.device != device => {
                Err(format!("{}: envelope names device `{}`, not the topic's", at(), env.device))
            }
            Ok(env) if env.kind != kind => {
                Err(format!("{}: envelope kind `{}` differs from the topic's", at(), env.kind))
            }
            // Databases store them as signed 64-bit integers.
            Ok(env) if env.seq > i64::MAX as u64 => Err(format!("{}: seq {} is out of range", at(), env.seq)),
            Ok(env) => Ok(Incoming {
                update: update_report(&env),
                device: env.device,
                seq: env.seq,
                prev: env.prev,
                ts_ms: env.ts_ms,
                kind: env.kind,
                // The body's text as parsed, without a copy.
                body: String::from(Box::<str>::from(env.body)),
            }),
        }
    });
    checked.collect()
}

/// The report inside an `update` event. A malformed one is stored as a message all the same
/// (and logged): the device's stream must not stall on it.
fn update_report(env: &wire::Envelope) -> Option<UpdateReport> {
    if env.kind != "events" {
        return None;
    }
    let event: wire::EventBody = serde_json::from_str(env.body.get()).ok()?;
    if event.event != "update" {
        return None;
    }
    match serde_json::from_value(event.detail) {
        Ok(u) => Some(u),
        Err(error) => {
            tracing::warn!(device = %env.device, seq = env.seq, %error, "malformed update report");
            None
        }
    }
}

/// How ingestion gathers publishes into transactions.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Publishes per transaction at most (those that brought a message: not the hub's own
    /// acknowledgements, which an external broker sends back to it).
    pub max_publishes: usize,
    /// A transaction begins at least this long after the one before began (a publish after a
    /// quiet spell is not held back). A commit costs much the same whatever its size (the log's
    /// flush, each device's stream row rewritten, and in SQLite 3.51 a walk of the writer's
    /// whole page cache): at 50,000 msg/s, committing whatever had arrived made 40-360 commits
    /// a second; 25 ms apart, 10-31, and the hub's CPU per message fell by 5-20 %
    /// (docs/BENCHMARKS.md, "Commits at least 25 ms apart").
    pub min_interval: std::time::Duration,
}

impl Default for Batching {
    fn default() -> Batching {
        Batching { max_publishes: 1000, min_interval: std::time::Duration::from_millis(25) }
    }
}

/// Runs until the bus closes. Batches what arrives (see [`Batching`]) into one transaction,
/// and checks what arrives while it commits for the next one; on a database error nothing is
/// acknowledged and the agents send again. Wakes `deployments` when a batch held update
/// reports, so rollouts move on without waiting.
pub async fn run<S: TelemetryStore>(
    mut bus: Bus,
    store: S,
    stats: Arc<IngestStats>,
    batching: Batching,
    deployments: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let max_batch = batching.max_publishes;
    let mut streams: HashMap<String, Stream> = HashMap::new();
    // What waits for the next transaction.
    let mut gathered = Gathered::default();
    // When the last transaction began (tokio's clock, which tests can pause): none yet.
    let mut last_started: Option<tokio::time::Instant> = None;
    loop {
        if gathered.arrivals.is_empty() {
            let Some(first) = bus.incoming.recv().await else { return Ok(()) };
            gathered.take(&first, &stats);
        }
        // What is ready is taken at once (a timeout polls its future first); then, until the
        // interval since the last transaction began is over, what arrives.
        let gather_until = last_started.map_or_else(tokio::time::Instant::now, |t| t + batching.min_interval);
        while gathered.arrivals.len() < max_batch {
            match tokio::time::timeout_at(gather_until, bus.incoming.recv()).await {
                Ok(Some(r)) => gathered.take(&r, &stats),
                Ok(None) | Err(_) => break,
            }
        }
        stats.queued.store(bus.incoming.len() as u64, Ordering::Relaxed);
        let Gathered { messages: batch_now, arrivals } = std::mem::take(&mut gathered);
        if batch_now.is_empty() {
            continue;
        }
        let store_started = tokio::time::Instant::now();
        last_started = Some(store_started);
        // The streams as they will be once this batch is committed.
        let next = match next_streams(&streams, &store, &batch_now).await {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, messages = batch_now.len(), "cannot read stream state; not acknowledged");
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        let acked: BTreeMap<String, u64> = next.iter().map(|(d, s)| (d.clone(), s.acked)).collect();
        // A gap that was already open before this batch is named in the acknowledgement, so
        // the device sends it again at once; a younger one may only be a reordering.
        let held_from: BTreeMap<&str, u64> = next
            .iter()
            .filter(|(d, s)| streams.get(*d).is_some_and(|before| !before.beyond.is_empty() && before.acked == s.acked))
            .filter_map(|(d, s)| Some((d.as_str(), *s.beyond.keys().next()?)))
            .collect();
        // While the database commits, the next publishes are received and checked.
        let commit = store.commit(&batch_now, &acked);
        tokio::pin!(commit);
        let committed = loop {
            tokio::select! {
                biased;
                c = &mut commit => break c,
                r = bus.incoming.recv(), if gathered.arrivals.len() < max_batch => match r {
                    Some(r) => gathered.take(&r, &stats),
                    None => break commit.await,
                },
            }
        };
        stats.store_seconds.record(store_started.elapsed());
        match committed {
            Ok(c) => {
                stats.stored.fetch_add(c.stored, Ordering::Relaxed);
                stats.duplicates.fetch_add(c.duplicates, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                if batch_now.iter().any(|m| m.update.is_some()) {
                    deployments.notify_one();
                }
                for (device, n) in &acked {
                    let payload = wire::encode_ack(*n, held_from.get(device.as_str()).copied());
                    let ack = Send { topic: wire::topic(device, "ack"), payload, retain: false };
                    if bus.outgoing.send(ack).await.is_err() {
                        return Ok(());
                    }
                }
                streams.extend(next);
                let now = std::time::Instant::now();
                for at in arrivals {
                    stats.ack_seconds.record(now.saturating_duration_since(at));
                }
            }
            Err(error) => {
                tracing::error!(%error, messages = batch_now.len(), "cannot store a batch; not acknowledged");
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// Runs ingestion in `shards` loops of [`run`], each taking the devices whose id hashes to it: a
/// device's messages stay in one loop, in order, so its acknowledgements stay cumulative, and a
/// database that commits in parallel (PostgreSQL) gets that many transactions in flight. One
/// shard is [`run`] itself (SQLite has one writer).
pub async fn run_sharded<S: TelemetryStore + Clone + std::marker::Send + Sync + 'static>(
    bus: Bus,
    store: S,
    stats: Arc<IngestStats>,
    batching: Batching,
    deployments: Arc<tokio::sync::Notify>,
    shards: usize,
) -> anyhow::Result<()> {
    if shards <= 1 {
        return run(bus, store, stats, batching, deployments).await;
    }
    let Bus { mut incoming, outgoing } = bus;
    let mut loops = tokio::task::JoinSet::new();
    let mut inputs = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = tokio::sync::mpsc::channel(10_000);
        inputs.push(tx);
        let bus = Bus { incoming: rx, outgoing: outgoing.clone() };
        loops.spawn(run(bus, store.clone(), stats.clone(), batching, deployments.clone()));
    }
    while let Some(r) = incoming.recv().await {
        let shard = wire::parse_topic(&r.topic).map_or(0, |(device, _)| shard_of(device, shards));
        if inputs[shard].send(r).await.is_err() {
            break; // a loop ended: its error is below
        }
    }
    drop(inputs);
    while let Some(ended) = loops.join_next().await {
        ended??;
    }
    Ok(())
}

/// The shard of `device`'s messages: the same for the life of the process.
fn shard_of(device: &str, shards: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    device.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// Publishes gathered for a transaction.
#[derive(Default)]
struct Gathered {
    /// Their messages that passed the checks.
    messages: Vec<Incoming>,
    /// When each publish that brought a message arrived (not the hub's own acknowledgements,
    /// which an external broker sends back to it, nor what was refused whole).
    arrivals: Vec<std::time::Instant>,
}

impl Gathered {
    /// Checks one publish in, counting and logging what is refused.
    fn take(&mut self, r: &Received, stats: &IngestStats) {
        let before = self.messages.len();
        for checked in check(r) {
            match checked {
                Ok(m) => self.messages.push(m),
                Err(error) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "refused a message");
                }
            }
        }
        if self.messages.len() > before {
            self.arrivals.push(r.at);
        }
    }
}

/// The streams of the batch's devices with the batch added (loaded from the store, in one
/// query for the batch, the first time a device is seen by this process).
async fn next_streams(
    streams: &HashMap<String, Stream>,
    store: &impl TelemetryStore,
    batch: &[Incoming],
) -> Result<BTreeMap<String, Stream>, crate::store::StoreError> {
    let mut unseen: Vec<&str> = batch.iter().map(|m| m.device.as_str()).filter(|d| !streams.contains_key(*d)).collect();
    unseen.sort_unstable();
    unseen.dedup();
    let mut loaded = if unseen.is_empty() { Default::default() } else { store.stream_states(&unseen).await? };
    let mut next: BTreeMap<String, Stream> = BTreeMap::new();
    for m in batch {
        let s = next.entry(m.device.clone()).or_insert_with(|| match streams.get(&m.device) {
            Some(s) => s.clone(),
            None => loaded.remove(&m.device).unwrap_or_default(),
        });
        s.take(m.seq, m.prev, m.ts_ms);
        s.settle(u64::MAX);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    use tokio::sync::mpsc;

    use super::*;
    use crate::store::{Committed, StoreError, StoredMessage, StreamStates};

    /// Telemetry in memory, whose next commit can be made to fail (a full disk, a lost
    /// database connection). Clones share it.
    #[derive(Debug, Default, Clone)]
    struct FlakyTelemetry {
        fail_next_commit: Arc<AtomicBool>,
        stored: Arc<Mutex<BTreeMap<(String, u64), Incoming>>>,
        acked: Arc<Mutex<BTreeMap<String, u64>>>,
    }

    impl TelemetryStore for FlakyTelemetry {
        async fn commit(&self, batch: &[Incoming], acked: &BTreeMap<String, u64>) -> Result<Committed, StoreError> {
            if self.fail_next_commit.swap(false, Ordering::SeqCst) {
                return Err(StoreError::Corrupt("injected: the disk is full".into()));
            }
            let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
            let mut c = Committed::default();
            for m in batch {
                if stored.insert((m.device.clone(), m.seq), m.clone()).is_some() {
                    c.duplicates += 1;
                } else {
                    c.stored += 1;
                }
            }
            self.acked.lock().unwrap_or_else(|e| e.into_inner()).extend(acked.iter().map(|(d, n)| (d.clone(), *n)));
            Ok(c)
        }

        async fn stream_states(&self, devices: &[&str]) -> Result<StreamStates, StoreError> {
            let acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
            let stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = StreamStates::new();
            for d in devices {
                let Some(&n) = acked.get(*d) else { continue };
                let beyond = stored
                    .values()
                    .filter(|m| m.device == *d && m.seq > n)
                    .map(|m| (m.seq, (m.prev, m.ts_ms)))
                    .collect();
                out.insert(d.to_string(), Stream { acked: n, acked_ts_ms: None, beyond });
            }
            Ok(out)
        }

        async fn messages(&self, device: &str) -> Result<Vec<StoredMessage>, StoreError> {
            let stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
            Ok(stored
                .values()
                .filter(|m| m.device == device)
                .map(|m| StoredMessage {
                    seq: m.seq,
                    prev: m.prev,
                    ts_ms: m.ts_ms,
                    kind: m.kind.clone(),
                    body: m.body.clone(),
                })
                .collect())
        }
    }

    fn publish(device: &str, seq: u64) -> Received {
        let payload = wire::encode_envelope(device, seq, seq - 1, seq as i64, "telemetry", b"{}").unwrap();
        Received::new(wire::topic(device, "telemetry"), payload.into())
    }

    /// A bus whose two ends the test holds: what it publishes, what ingestion sends back.
    fn wired(capacity: usize) -> (Bus, mpsc::Sender<Received>, mpsc::Receiver<Send>) {
        let (in_tx, in_rx) = mpsc::channel(capacity);
        let (out_tx, out_rx) = mpsc::channel(capacity);
        (Bus { incoming: in_rx, outgoing: out_tx }, in_tx, out_rx)
    }

    /// Each transaction holds what had arrived when it began, up to `max_publishes`.
    fn at_once(max_publishes: usize) -> Batching {
        Batching { max_publishes, min_interval: std::time::Duration::ZERO }
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_within_the_interval_share_a_transaction_and_one_after_a_quiet_spell_waits_for_none() {
        let store = FlakyTelemetry::default();
        let (bus, in_tx, mut out_rx) = wired(16);
        let stats = Arc::new(IngestStats::default());
        let interval = std::time::Duration::from_millis(100);
        let batching = Batching { max_publishes: 10, min_interval: interval };
        let task = tokio::spawn(run(bus, store.clone(), stats.clone(), batching, Default::default()));
        let mut next_ack = async || {
            let ack = tokio::time::timeout(std::time::Duration::from_secs(5), out_rx.recv()).await.unwrap().unwrap();
            wire::decode_ack(&ack.payload).unwrap().acked
        };

        let quiet = tokio::time::Instant::now();
        in_tx.send(publish("p1", 1)).await.unwrap();
        assert_eq!(next_ack().await, 1);
        assert!(quiet.elapsed() < interval, "the first publish waited {:?}", quiet.elapsed());
        // Three publishes 30 ms apart, all within 100 ms of the first transaction: one more.
        for seq in 2..=4 {
            in_tx.send(publish("p1", seq)).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        assert_eq!(next_ack().await, 4, "2 and 3 were acknowledged in transactions of their own");
        assert_eq!(stats.batches.load(Ordering::Relaxed), 2);

        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let quiet = tokio::time::Instant::now();
        in_tx.send(publish("p1", 5)).await.unwrap();
        assert_eq!(next_ack().await, 5);
        assert!(quiet.elapsed() < interval, "a publish after a quiet spell waited {:?}", quiet.elapsed());
        assert_eq!(stats.batches.load(Ordering::Relaxed), 3);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_the_store_fails_to_commit_is_not_acknowledged_and_its_resend_is() {
        let store = FlakyTelemetry::default();
        store.fail_next_commit.store(true, Ordering::SeqCst);
        let (bus, in_tx, mut out_rx) = wired(16);
        let stats = Arc::new(IngestStats::default());
        let task = tokio::spawn(run(bus, store.clone(), stats.clone(), at_once(10), Default::default()));

        in_tx.send(publish("p1", 1)).await.unwrap();
        in_tx.send(publish("p1", 2)).await.unwrap();
        // The commit fails: no acknowledgement may go out, however long we wait.
        let nothing = tokio::time::timeout(std::time::Duration::from_secs(5), out_rx.recv()).await;
        assert!(nothing.is_err(), "acknowledged a batch that was not stored: {nothing:?}");
        assert!(store.messages("p1").await.unwrap().is_empty());

        // The agent sends again (after its ack timeout): now stored, and acknowledged up to 2.
        in_tx.send(publish("p1", 1)).await.unwrap();
        in_tx.send(publish("p1", 2)).await.unwrap();
        let ack = tokio::time::timeout(std::time::Duration::from_secs(5), out_rx.recv()).await.unwrap().unwrap();
        assert_eq!(ack.topic, wire::topic("p1", "ack"));
        assert_eq!(wire::decode_ack(&ack.payload).unwrap().acked, 2);
        assert_eq!(store.messages("p1").await.unwrap().len(), 2);
        assert_eq!(stats.stored.load(Ordering::Relaxed), 2);
        task.abort();
    }

    #[tokio::test]
    async fn a_gap_still_open_after_a_batch_is_named_in_the_acknowledgement() {
        let store = FlakyTelemetry::default();
        let (bus, in_tx, mut out_rx) = wired(16);
        let task = tokio::spawn(run(bus, store.clone(), Default::default(), at_once(10), Default::default()));
        // One publish per batch: an array of envelopes.
        let mut batch = async |seqs: &[u64]| {
            let envelopes: Vec<Vec<u8>> = seqs
                .iter()
                .map(|&seq| wire::encode_envelope("p1", seq, seq - 1, seq as i64, "telemetry", b"{}").unwrap())
                .collect();
            let payload = wire::encode_envelopes(&envelopes).into();
            in_tx.send(Received::new(wire::topic("p1", "telemetry"), payload)).await.unwrap();
            let ack = tokio::time::timeout(std::time::Duration::from_secs(5), out_rx.recv()).await.unwrap().unwrap();
            let ack = wire::decode_ack(&ack.payload).unwrap();
            (ack.acked, ack.held_from)
        };
        assert_eq!(batch(&[1, 2]).await, (2, None));
        // 3 and 4 lost on the way: the first batch past them may be a reordering, not yet a gap.
        assert_eq!(batch(&[5]).await, (2, None));
        assert_eq!(batch(&[6]).await, (2, Some(5)), "the gap outlived a batch");
        assert_eq!(batch(&[3, 4]).await, (6, None), "sent again: closed");
        assert_eq!(batch(&[7]).await, (7, None));
        task.abort();
    }

    #[tokio::test]
    async fn shards_store_every_device_once_and_acknowledge_each_in_order() {
        let store = FlakyTelemetry::default();
        let (bus, in_tx, mut out_rx) = wired(64);
        let stats = Arc::new(IngestStats::default());
        let task = tokio::spawn(run_sharded(bus, store.clone(), stats.clone(), at_once(4), Default::default(), 3));
        let devices: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
        let used: std::collections::HashSet<usize> = devices.iter().map(|d| shard_of(d, 3)).collect();
        assert_eq!(used.len(), 3, "twelve devices spread over the three shards");
        let n = 50;
        tokio::spawn(async move {
            // Interleaved across devices, each device's own in order, some sent twice.
            for seq in 1..=n {
                for d in &devices {
                    in_tx.send(publish(d, seq)).await.unwrap();
                    if seq % 10 == 0 {
                        in_tx.send(publish(d, seq)).await.unwrap();
                    }
                }
            }
        });
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        while last.len() < 12 || last.values().any(|&a| a < n) {
            let ack = tokio::time::timeout(std::time::Duration::from_secs(10), out_rx.recv()).await.unwrap().unwrap();
            let (device, _) = wire::parse_topic(&ack.topic).unwrap();
            let acked = wire::decode_ack(&ack.payload).unwrap().acked;
            let before = last.insert(device.to_string(), acked).unwrap_or(0);
            assert!(acked >= before, "{device}'s acknowledgement went back from {before} to {acked}");
        }
        for d in last.keys() {
            let seqs: Vec<u64> = store.messages(d).await.unwrap().iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{d}");
        }
        assert_eq!(stats.stored.load(Ordering::Relaxed), 12 * n);
        task.abort();
    }

    #[test]
    fn store_times_fall_in_their_buckets_and_are_rendered_cumulative() {
        let stats = IngestStats::default();
        for ms in [3, 5, 40, 1_500, 20_000] {
            stats.store_seconds.record(std::time::Duration::from_millis(ms));
        }
        let text = stats.prometheus();
        let bucket = |le: &str| {
            let line = format!("impeller_ingest_store_seconds_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(line.as_str()))
                .unwrap_or_else(|| panic!("{le}: {text}"))
                .to_string()
        };
        // 3 and 5 ms at most 5 ms (bounds are inclusive); 40 ms by 50; 1.5 s by 2.5; 20 s beyond.
        assert_eq!(bucket("0.005"), "2");
        assert_eq!(bucket("0.025"), "2");
        assert_eq!(bucket("0.05"), "3");
        assert_eq!(bucket("1"), "3");
        assert_eq!(bucket("2.5"), "4");
        assert_eq!(bucket("10"), "4");
        assert_eq!(bucket("+Inf"), "5");
        assert!(text.contains("\nimpeller_ingest_store_seconds_count 5\n"), "{text}");
        assert!(text.contains("\nimpeller_ingest_store_seconds_sum 21.548\n"), "{text}");
        stats.queued.store(7, Ordering::Relaxed);
        assert!(
            stats
                .prometheus()
                .contains("# TYPE impeller_ingest_queued_publishes gauge\nimpeller_ingest_queued_publishes 7\n")
        );
    }

    #[test]
    fn topic_and_envelope_must_agree() {
        let env = |device: &str, kind: &str, seq: u64, prev: u64| {
            wire::encode_envelope(device, seq, prev, 1, kind, b"{}").unwrap()
        };
        let r = |topic: &str, payload: Vec<u8>| Received::new(topic.into(), payload.into());
        let one = |topic: &str, payload: Vec<u8>| {
            let mut all = check(&r(topic, payload));
            assert_eq!(all.len(), 1);
            all.remove(0)
        };
        let ok = one(&wire::topic("a", "events"), env("a", "events", 2, 1)).unwrap();
        assert_eq!((ok.device.as_str(), ok.seq, ok.prev), ("a", 2, 1));
        let spoof = one(&wire::topic("a", "events"), env("b", "events", 2, 1)).unwrap_err();
        assert!(spoof.contains("names device `b`"), "{spoof}");
        assert!(one(&wire::topic("a", "alerts"), env("a", "events", 2, 1)).is_err());
        assert!(one(&wire::topic("a", "events"), env("a", "events", 2, 2)).is_err());
        assert!(one(&wire::topic("a", "events"), b"{not json".to_vec()).is_err());
        assert!(check(&r(&wire::topic("a", "ack"), wire::encode_ack(3, None))).is_empty());
        // An array: each envelope judged on its own; another device's in the middle is refused
        // alone, and named by its place.
        let batch =
            wire::encode_envelopes(&[env("a", "events", 1, 0), env("b", "events", 2, 1), env("a", "events", 3, 1)]);
        let all = check(&r(&wire::topic("a", "events"), batch));
        assert_eq!(all.iter().map(|m| m.as_ref().map(|m| m.seq).ok()).collect::<Vec<_>>(), [Some(1), None, Some(3)]);
        let refused = all[1].as_ref().unwrap_err();
        assert!(refused.contains("envelope #2") && refused.contains("names device `b`"), "{refused}");
    }
}
