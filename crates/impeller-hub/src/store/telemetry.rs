//! What the devices send: each (device, seq) stored once with the acknowledged prefix per
//! device, and the reads over it (alerts by fleet and site, a channel's aggregates over time,
//! raw samples, scoring time).

use std::collections::BTreeMap;
use std::future::Future;

use impeller_core::audit::AuditEvent;
use impeller_core::deploy::{UpdateReport, UpdateState};
use impeller_core::wire::{AggregateBody, AlertBody};
use serde::Serialize;
use sqlx::Row;

use super::streams_behind;
use super::{Store, StoreError, deployments, i64_of, now_ms, u64_of};

/// Messages per INSERT statement (7 parameters each; SQLite allows 32,766 per statement).
const INSERT_CHUNK: usize = 500;

/// `items` in chunks of a few fixed sizes (at most [`INSERT_CHUNK`]), so that a multi-row
/// statement's text, and its prepared statement, repeat from one batch to the next.
pub(super) fn fixed_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = [INSERT_CHUNK, 100, 20, 5, 1].into_iter().find(|&n| n <= items.len())?;
        let (chunk, rest) = items.split_at(size);
        items = rest;
        Some(chunk)
    })
}

/// Per device, its [`Stream`].
pub type StreamStates = std::collections::HashMap<String, Stream>;

/// One message as received, checked against its topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub device: String,
    pub seq: u64,
    pub prev: u64,
    pub ts_ms: i64,
    pub kind: String,
    pub body: String,
    /// The device's report on an update, when this is an `update` event.
    pub update: Option<UpdateReport>,
}

/// A stored message, for queries and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub seq: u64,
    pub prev: u64,
    pub ts_ms: i64,
    pub kind: String,
    pub body: String,
}

/// What one committed batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Committed {
    /// Messages stored for the first time.
    pub stored: u64,
    /// Messages already stored (redeliveries).
    pub duplicates: u64,
}

/// Which records: a time range, and optionally only these devices.
#[derive(Debug, Clone, Default)]
pub struct FleetFilter {
    /// `None`: every device.
    pub devices: Option<Vec<String>>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Resume after this (ts_ms, device, seq), exclusive.
    pub after: Option<(i64, String, u64)>,
    pub limit: usize,
}

/// An alert without its window of readings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertSummary {
    pub device: String,
    pub seq: u64,
    pub ts_ms: i64,
    pub started_ms: i64,
    pub model: String,
    pub model_version: String,
    pub score: f64,
    pub threshold: f64,
    pub top_features: Vec<(String, f64)>,
    /// The technician's verdict (`confirmed`, `false_alarm`), if any.
    pub verdict: Option<String>,
}

/// An alert (`scored_ms` 0), or an aggregate with the time it scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoringEvent {
    pub seq: u64,
    pub ts_ms: i64,
    pub alert: bool,
    pub scored_ms: i64,
}

/// Alerts a device raised over a stretch of its messages, and how long it scored then.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AlertActivity {
    pub alerts: u64,
    pub scored_ms: i64,
}

impl AlertActivity {
    pub fn add(&mut self, other: AlertActivity) {
        self.alerts += other.alerts;
        self.scored_ms += other.scored_ms;
    }

    /// Alerts per day of scoring; 0 without any scoring time.
    pub fn per_day(&self) -> f64 {
        if self.scored_ms > 0 { self.alerts as f64 / (self.scored_ms as f64 / 86_400_000.0) } else { 0.0 }
    }
}

/// One bucket of a downsampled channel: what the device's aggregates in it say together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryPoint {
    pub start_ms: i64,
    pub end_ms: i64,
    /// Readings behind the point.
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// What one aggregate says of a series: readings, mean, minimum, maximum.
pub type Summary = (u64, f64, f64, f64);

/// A channel's [`Summary`] in an aggregate.
pub fn channel_summary(name: &str) -> impl Fn(&AggregateBody) -> Option<Summary> + '_ {
    move |a| {
        let c = a.channels.iter().find(|c| c.name == name)?;
        Some((c.count, c.mean?, c.min?, c.max?))
    }
}

/// The anomaly score's [`Summary`] in an aggregate.
pub fn score_summary(a: &AggregateBody) -> Option<Summary> {
    a.score.as_ref().map(|s| (s.count, s.mean, s.min, s.max))
}

/// Merges per-interval aggregates of one series (`pick`) into at most `points` buckets of equal
/// time over `[since_ms, until_ms)`: count-weighted mean, lowest minimum, highest maximum.
/// Intervals without readings of the series leave their bucket out, so a gap shows as a gap.
pub fn downsample(
    aggregates: &[AggregateBody],
    pick: impl Fn(&AggregateBody) -> Option<Summary>,
    since_ms: i64,
    until_ms: i64,
    points: usize,
) -> Vec<TelemetryPoint> {
    let span = (until_ms - since_ms).max(1);
    let width = (span + points.max(1) as i64 - 1) / points.max(1) as i64;
    let mut buckets: BTreeMap<i64, (u64, f64, f64, f64)> = Default::default();
    for a in aggregates {
        let Some((count, mean, min, max)) = pick(a) else { continue };
        if count == 0 || a.start_ms < since_ms || a.start_ms >= until_ms {
            continue;
        }
        let b = buckets.entry((a.start_ms - since_ms) / width).or_insert((0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
        b.0 += count;
        b.1 += mean * count as f64;
        b.2 = b.2.min(min);
        b.3 = b.3.max(max);
    }
    buckets
        .into_iter()
        .map(|(i, (count, sum, min, max))| TelemetryPoint {
            start_ms: since_ms + i * width,
            end_ms: (since_ms + (i + 1) * width).min(until_ms),
            count,
            mean: sum / count as f64,
            min,
            max,
        })
        .collect()
}

/// Telemetry as ingestion writes it: each (device, seq) stored once, with each device's
/// acknowledged prefix.
pub trait TelemetryStore {
    /// Stores a batch in one transaction, each (device, seq) once (a message within the device's
    /// acknowledged prefix, or already stored beyond it, is a duplicate), and records each
    /// device's new acknowledged prefix: `acked`, or less where the stored messages' `prev`
    /// links do not reach that far. Returns only after the commit: acknowledge after this.
    fn commit(
        &self,
        batch: &[Incoming],
        acked: &BTreeMap<String, u64>,
    ) -> impl Future<Output = Result<Committed, StoreError>> + Send;

    /// Each device's [`Stream`], for the devices given (those never heard from are left out):
    /// what ingestion resumes from.
    fn stream_states(&self, devices: &[&str]) -> impl Future<Output = Result<StreamStates, StoreError>> + Send;

    /// A device's messages, oldest first.
    fn messages(&self, device: &str) -> impl Future<Output = Result<Vec<StoredMessage>, StoreError>> + Send;
}

/// Retention: what is old goes (`retention`).
pub trait TelemetryRetention {
    /// Deletes at most `limit` of the devices' messages of `kind` that are older than `before_ms`
    /// by the device's clock and were stored before it by the hub's (so a device whose clock
    /// runs years behind does not lose what it has just sent); returns how many. The devices'
    /// streams are left as they are: a forgotten message redelivered is still a duplicate.
    fn forget(
        &self,
        devices: &[&str],
        kind: &str,
        before_ms: i64,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// A device's stream: the acknowledged prefix (every message up to it is stored, following
/// each message's `prev`: the agent names the message before it, so gaps it made on purpose by
/// evicting records over its quota do not hold the prefix back), the device's time of the
/// message the prefix ends at, and (seq → (prev, ts_ms)) of what is stored beyond it.
/// Ingestion keeps one per device to acknowledge; the store keeps one per device
/// (`device_streams`) and checks each commit's messages against it rather than against a
/// (device, seq) key on every message, which cost the single SQLite writer a random index page
/// per device per commit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stream {
    pub acked: u64,
    pub acked_ts_ms: Option<i64>,
    pub beyond: BTreeMap<u64, (u64, i64)>,
}

impl Stream {
    pub(super) fn parse(
        device: &str,
        acked: i64,
        acked_ts_ms: Option<i64>,
        beyond: &str,
    ) -> Result<Stream, StoreError> {
        let list: Vec<(u64, u64, i64)> = serde_json::from_str(beyond)
            .map_err(|e| StoreError::Corrupt(format!("device_streams.beyond of device `{device}`: {e}")))?;
        Ok(Stream {
            acked: u64_of(acked),
            acked_ts_ms,
            beyond: list.into_iter().map(|(seq, prev, ts)| (seq, (prev, ts))).collect(),
        })
    }

    pub(super) fn beyond_json(&self) -> String {
        if self.beyond.is_empty() {
            return "[]".to_string();
        }
        let list: Vec<(u64, u64, i64)> = self.beyond.iter().map(|(&seq, &(prev, ts))| (seq, prev, ts)).collect();
        serde_json::to_string(&list).expect("a list of numbers serializes")
    }

    /// Takes message `seq` (naming `prev` as the one before it, sent at `ts_ms`) unless it is
    /// stored already, within the prefix or beyond it; whether it was new.
    pub fn take(&mut self, seq: u64, prev: u64, ts_ms: i64) -> bool {
        if seq <= self.acked || self.beyond.contains_key(&seq) {
            return false;
        }
        self.beyond.insert(seq, (prev, ts_ms));
        true
    }

    /// Moves the prefix as far as the `prev` links reach, but not past `up_to` (the store
    /// records the prefix the caller acknowledges, never one past a message not stored, whose
    /// delivery would then look like a redelivery and be lost).
    pub fn settle(&mut self, up_to: u64) {
        while let Some((&seq, &(prev, ts))) = self.beyond.first_key_value() {
            if seq > up_to || prev > self.acked {
                break;
            }
            (self.acked, self.acked_ts_ms) = (seq, Some(ts));
            self.beyond.pop_first();
        }
    }
}

impl TelemetryStore for Store {
    async fn commit(&self, batch: &[Incoming], acked: &BTreeMap<String, u64>) -> Result<Committed, StoreError> {
        let now = now_ms();
        let mut out = Committed::default();
        let mut devices: Vec<&str> =
            batch.iter().map(|m| m.device.as_str()).chain(acked.keys().map(|d| d.as_str())).collect();
        devices.sort_unstable();
        devices.dedup();
        // The batch's new messages (those its devices' streams `take`) and its update reports,
        // written in `$tx`; `$guard` is PostgreSQL's (device, seq) key, kept there as a second
        // check.
        macro_rules! write_messages {
            ($tx:expr, $streams:expr, $guard:expr) => {{
                // What is new: neither stored before nor earlier in this batch.
                let fresh: Vec<&Incoming> =
                    batch.iter().filter(|m| $streams.get_mut(m.device.as_str()).is_some_and(|s| s.take(m.seq, m.prev, m.ts_ms))).collect();
                out.duplicates = (batch.len() - fresh.len()) as u64;
                // Multi-row inserts: one round trip per chunk, not per message.
                for chunk in fixed_chunks(&fresh) {
                    let mut q = sqlx::QueryBuilder::new(
                        "INSERT INTO messages (device, seq, prev, ts_ms, kind, body, received_ms) ",
                    );
                    q.push_values(chunk, |mut row, m| {
                        row.push_bind(&m.device)
                            .push_bind(m.seq as i64)
                            .push_bind(m.prev as i64)
                            .push_bind(m.ts_ms)
                            .push_bind(&m.kind)
                            .push_bind(&m.body)
                            .push_bind(now);
                    });
                    q.push($guard);
                    let inserted = q.build().execute(&mut *$tx).await?.rows_affected();
                    out.stored += inserted;
                    out.duplicates += chunk.len() as u64 - inserted;
                }
                for m in batch {
                    let Some(u) = &m.update else { continue };
                    let fresh = sqlx::query(deployments::UPSERT_UPDATE)
                        .bind(&m.device)
                        .bind(m.seq as i64)
                        .bind(&u.deployment)
                        .bind(&u.sha256)
                        .bind(u.state.as_str())
                        .bind(&u.reason)
                        .bind(u.running_release.map(|r| r as i64))
                        .bind(m.ts_ms)
                        .bind((u.state == UpdateState::Active).then_some(m.seq as i64))
                        .execute(&mut *$tx)
                        .await?
                        .rows_affected()
                        > 0;
                    // Outcomes go to the audit trail, once (a redelivery updates nothing).
                    if fresh && matches!(u.state, UpdateState::Active | UpdateState::Failed | UpdateState::RolledBack) {
                        append_audit!($tx, event update_event(m, u, now));
                    }
                }
                // The prefix each device's acknowledgement names, or less.
                for (device, stream) in $streams.iter_mut() {
                    stream.settle(acked.get(*device).copied().unwrap_or(stream.acked));
                }
            }};
        }
        match self {
            Store::Sqlite { ingest, log_reset_due, streams, .. } => {
                if log_reset_due.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    // The tail of the log the background checkpoint left; BEGIN then starts the
                    // log over (`Store::checkpoint_beside_ingestion`).
                    if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(ingest).await {
                        tracing::warn!(%error, "checkpoint of the log's tail");
                    }
                }
                let mut behind = streams.lock().await;
                let done: Result<_, StoreError> = async {
                    // The write lock at once: the transaction checks what the streams say
                    // before it writes, and a deferred one could not upgrade if another
                    // connection wrote between.
                    let mut tx = ingest.begin_with("BEGIN IMMEDIATE").await?;
                    behind.catch_up(&mut tx, &devices).await?;
                    let mut next: BTreeMap<&str, Stream> =
                        devices.iter().map(|d| (*d, behind.get(d).cloned().unwrap_or_default())).collect();
                    write_messages!(tx, next, "");
                    let written = behind.write_due();
                    if written {
                        behind.write(&mut tx, &next, now).await?;
                    }
                    let last_rowid = streams_behind::last_rowid(&mut tx).await?;
                    tx.commit().await?;
                    Ok((next, last_rowid, written))
                }
                .await;
                match done {
                    Ok((next, last_rowid, written)) => behind.committed(next, now, last_rowid, written),
                    Err(error) => {
                        behind.forget();
                        return Err(error);
                    }
                }
            }
            Store::Postgres(p) => {
                let mut tx = p.begin().await?;
                // Every device of the batch has a stream, empty until its row says otherwise.
                let mut read = read_stream_rows!(&mut *tx, &devices);
                let mut streams: BTreeMap<&str, Stream> =
                    devices.iter().map(|d| (*d, read.remove(*d).map(|(s, _)| s).unwrap_or_default())).collect();
                write_messages!(tx, streams, " ON CONFLICT (device, seq) DO NOTHING");
                let rows: Vec<(&str, &Stream, i64)> = streams.iter().map(|(d, s)| (*d, s, now)).collect();
                write_stream_rows!(&mut *tx, &rows);
                tx.commit().await?;
            }
        }
        Ok(out)
    }

    async fn stream_states(&self, devices: &[&str]) -> Result<StreamStates, StoreError> {
        let p = match self {
            Store::Sqlite { ingest, streams, .. } => {
                let mut behind = streams.lock().await;
                let mut tx = ingest.begin().await?;
                if let Err(error) = behind.catch_up(&mut tx, devices).await {
                    behind.forget();
                    return Err(error);
                }
                tx.rollback().await?;
                return Ok(devices.iter().filter_map(|d| Some((d.to_string(), behind.get(d)?.clone()))).collect());
            }
            Store::Postgres(p) => p,
        };
        Ok(read_stream_rows!(p, devices).into_iter().map(|(device, (stream, _))| (device, stream)).collect())
    }

    async fn messages(&self, device: &str) -> Result<Vec<StoredMessage>, StoreError> {
        macro_rules! run {
            ($pool:expr) => {{
                let rows =
                    sqlx::query("SELECT seq, prev, ts_ms, kind, body FROM messages WHERE device = $1 ORDER BY seq")
                        .bind(device)
                        .fetch_all($pool)
                        .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push(StoredMessage {
                        seq: r.try_get::<i64, _>(0)? as u64,
                        prev: r.try_get::<i64, _>(1)? as u64,
                        ts_ms: r.try_get(2)?,
                        kind: r.try_get(3)?,
                        body: r.try_get(4)?,
                    });
                }
                out
            }};
        }
        Ok(match self {
            Store::Sqlite { pool: p, .. } => run!(p),
            Store::Postgres(p) => run!(p),
        })
    }
}

impl TelemetryRetention for Store {
    async fn forget(&self, devices: &[&str], kind: &str, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        // The (device, kind, ts_ms) index finds them; SQLite's rowid and PostgreSQL's ctid name
        // them for a delete of bounded size, which holds the single SQLite writer briefly.
        let mut done = 0;
        for chunk in fixed_chunks(devices) {
            // `SELECT … FROM messages WHERE` the chunk's old messages of `kind`, on either backend.
            macro_rules! old {
                ($db:ty, $head:expr) => {{
                    let mut q = sqlx::QueryBuilder::<$db>::new($head);
                    q.push(" FROM messages WHERE device IN (");
                    let mut list = q.separated(", ");
                    for d in chunk {
                        list.push_bind(*d);
                    }
                    q.push(") AND kind = ").push_bind(kind);
                    q.push(" AND ts_ms < ").push_bind(before_ms).push(" AND received_ms < ").push_bind(before_ms);
                    q
                }};
            }
            macro_rules! run {
                ($db:ty, $pool:expr, $begin:expr, $id:expr, $then:expr) => {{
                    // A read first, which takes no write lock: most devices have nothing old most
                    // of the time, and a sweep asks about every one.
                    let mut probe = old!($db, "SELECT 1");
                    probe.push(" LIMIT 1");
                    let any: Option<i32> = probe.build_query_scalar().fetch_optional($pool).await?;
                    if any.is_some() {
                        let mut delete = old!($db, concat!("DELETE FROM messages WHERE ", $id, " IN (SELECT ", $id));
                        delete.push(" LIMIT ").push_bind(i64::from(limit) - done as i64).push(")");
                        let mut tx = $pool.begin_with($begin).await?;
                        done += delete.build().execute(&mut *tx).await?.rows_affected();
                        if let Some(then) = $then {
                            sqlx::query(then).execute(&mut *tx).await?;
                        }
                        tx.commit().await?;
                    }
                }};
            }
            match self {
                // IMMEDIATE: the delete reads before it writes, and a deferred transaction could
                // not upgrade after an ingestion commit in between.
                // SQLite numbers a new row one past the largest rowid: if the newest messages
                // went, rowids the stream rows already account for (`streams_written`) would be
                // given again, so the mark comes down with them.
                Store::Sqlite { pool: p, .. } => run!(
                    sqlx::Sqlite,
                    p,
                    "BEGIN IMMEDIATE",
                    "rowid",
                    Some(
                        "UPDATE streams_written SET through_rowid = \
                         MIN(through_rowid, (SELECT COALESCE(MAX(rowid), 0) FROM messages))"
                    )
                ),
                Store::Postgres(p) => run!(sqlx::Postgres, p, "BEGIN", "ctid", None::<&str>),
            }
            if done >= u64::from(limit) {
                break;
            }
        }
        Ok(done)
    }
}

/// Reads over what the devices sent: alerts by fleet and site, a channel's aggregates over
/// time, raw samples, scoring time.
pub trait TelemetryQueries {
    /// One stored message of a kind (`alerts`, `sketches`, …): its time and body.
    fn message(
        &self,
        device: &str,
        seq: u64,
        kind: &str,
    ) -> impl Future<Output = Result<Option<(i64, String)>, StoreError>> + Send;

    /// One stored alert.
    fn alert(
        &self,
        device: &str,
        seq: u64,
    ) -> impl Future<Output = Result<Option<(i64, AlertBody)>, StoreError>> + Send;

    /// Alerts ordered by (time, device, seq), at most `filter.limit`.
    fn alerts(&self, filter: &FleetFilter) -> impl Future<Output = Result<Vec<AlertSummary>, StoreError>> + Send;

    /// A device's telemetry aggregates sent in `[since_ms, until_ms)` of its clock (the
    /// envelope's time: an interval's end), oldest first. Bodies that do not parse are skipped
    /// (ingest checked the envelope only).
    fn aggregates(
        &self,
        device: &str,
        since_ms: i64,
        until_ms: i64,
    ) -> impl Future<Output = Result<Vec<AggregateBody>, StoreError>> + Send;

    /// A device's newest `limit` telemetry aggregates (by when it sent them), in the order of
    /// their intervals. Bodies that do not parse are skipped.
    fn latest_aggregates(
        &self,
        device: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AggregateBody>, StoreError>> + Send;

    /// Per device that ever sent: the hub's time of its last contact, and the time of the
    /// newest message its acknowledged stream reaches.
    fn device_streams(&self) -> impl Future<Output = Result<Vec<(String, i64, Option<i64>)>, StoreError>> + Send;

    /// Per device with alerts: how many, and the newest one's time.
    fn alert_counts(&self) -> impl Future<Output = Result<Vec<(String, u64, i64)>, StoreError>> + Send;

    /// One device's `samples` message bodies in `[since_ms, until_ms)`, oldest first, at most
    /// `limit` (one more tells the caller there were too many).
    fn samples(
        &self,
        device: &str,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(i64, String)>, StoreError>> + Send;

    /// A device's alerts and aggregates with `seq > after` and no older than `window_ms` before
    /// its newest aggregate (device clock), in sequence order.
    fn scoring_events(
        &self,
        device: &str,
        after: u64,
        window_ms: i64,
    ) -> impl Future<Output = Result<Vec<ScoringEvent>, StoreError>> + Send;

    /// Alerts and scoring time in a device's messages with `after < seq < before` and
    /// `ts_ms >= since_ms` (device clock). Scoring time is the span of the aggregates that
    /// scored anything.
    fn alert_activity(
        &self,
        device: &str,
        after: u64,
        before: u64,
        since_ms: i64,
    ) -> impl Future<Output = Result<AlertActivity, StoreError>> + Send;
}

impl TelemetryQueries for Store {
    async fn message(&self, device: &str, seq: u64, kind: &str) -> Result<Option<(i64, String)>, StoreError> {
        Ok(on_pool!(self, |p| sqlx::query_as(
            "SELECT ts_ms, body FROM messages WHERE device = $1 AND seq = $2 AND kind = $3"
        )
        .bind(device)
        .bind(seq.min(i64::MAX as u64) as i64)
        .bind(kind)
        .fetch_optional(p)
        .await?))
    }

    async fn alert(&self, device: &str, seq: u64) -> Result<Option<(i64, AlertBody)>, StoreError> {
        let row = self.message(device, seq, "alerts").await?;
        Ok(row.and_then(|(ts, body)| serde_json::from_str(&body).ok().map(|b| (ts, b))))
    }

    async fn alerts(&self, filter: &FleetFilter) -> Result<Vec<AlertSummary>, StoreError> {
        let sql = "SELECT m.device, m.seq, m.ts_ms, m.body, f.verdict FROM messages m LEFT JOIN alert_feedback f \
                   ON f.device = m.device AND f.seq = m.seq WHERE m.kind = 'alerts' \
                   AND m.ts_ms >= $1 AND m.ts_ms < $2 AND (m.ts_ms, m.device, m.seq) > ($3, $4, $5) \
                   ORDER BY m.ts_ms, m.device, m.seq LIMIT $6";
        let key = |r: &(String, i64, i64, String, Option<String>)| (r.2, r.0.clone(), r.1);
        self.scan(sql, filter, key, |(device, seq, ts_ms, body, verdict)| {
            // Bodies were checked on ingest; one that no longer parses is skipped, not fatal.
            let Ok(a) = serde_json::from_str::<AlertBody>(&body) else { return Ok(None) };
            Ok(Some(AlertSummary {
                device,
                seq: seq as u64,
                ts_ms,
                started_ms: a.started_ms,
                model: a.model.name,
                model_version: a.model.version,
                score: a.score,
                threshold: a.threshold,
                top_features: a.top_features,
                verdict,
            }))
        })
        .await
    }

    async fn aggregates(&self, device: &str, since_ms: i64, until_ms: i64) -> Result<Vec<AggregateBody>, StoreError> {
        let sql = "SELECT body FROM messages WHERE device = $1 AND kind = 'telemetry' AND ts_ms >= $2 AND ts_ms < $3 \
                   ORDER BY ts_ms";
        let rows: Vec<(String,)> =
            on_pool!(self, |p| sqlx::query_as(sql).bind(device).bind(since_ms).bind(until_ms).fetch_all(p).await?);
        Ok(rows.into_iter().filter_map(|(body,)| serde_json::from_str(&body).ok()).collect())
    }

    async fn latest_aggregates(&self, device: &str, limit: usize) -> Result<Vec<AggregateBody>, StoreError> {
        let sql = "SELECT body FROM messages WHERE device = $1 AND kind = 'telemetry' ORDER BY ts_ms DESC, seq DESC \
                   LIMIT $2";
        let rows: Vec<(String,)> = on_pool!(self, |p| sqlx::query_as(sql)
            .bind(device)
            .bind(limit.min(i64::MAX as usize) as i64)
            .fetch_all(p)
            .await?);
        let mut out: Vec<AggregateBody> =
            rows.into_iter().filter_map(|(body,)| serde_json::from_str(&body).ok()).collect();
        out.sort_by_key(|a| a.start_ms);
        Ok(out)
    }

    async fn device_streams(&self) -> Result<Vec<(String, i64, Option<i64>)>, StoreError> {
        let sql = "SELECT device, last_seen_ms, acked_ts_ms FROM device_streams";
        match self {
            Store::Sqlite { pool, .. } => {
                // The rows, and the messages they do not account for yet, in one snapshot.
                let mut tx = pool.begin().await?;
                let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(sql).fetch_all(&mut *tx).await?;
                let mut newer = streams_behind::replayed(&mut tx).await?;
                tx.rollback().await?;
                let mut out: Vec<_> = rows
                    .into_iter()
                    .map(|row| match newer.remove(&row.0) {
                        Some((stream, seen)) => (row.0, seen, stream.acked_ts_ms),
                        None => row,
                    })
                    .collect();
                out.extend(newer.into_iter().map(|(device, (stream, seen))| (device, seen, stream.acked_ts_ms)));
                Ok(out)
            }
            Store::Postgres(p) => Ok(sqlx::query_as(sql).fetch_all(p).await?),
        }
    }

    async fn alert_counts(&self) -> Result<Vec<(String, u64, i64)>, StoreError> {
        let sql = "SELECT device, COUNT(*), MAX(ts_ms) FROM messages WHERE kind = 'alerts' GROUP BY device";
        let rows: Vec<(String, i64, i64)> = on_pool!(self, |p| sqlx::query_as(sql).fetch_all(p).await?);
        Ok(rows.into_iter().map(|(d, n, t)| (d, n.max(0) as u64, t)).collect())
    }

    async fn samples(
        &self,
        device: &str,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let sql = "SELECT ts_ms, body FROM messages WHERE device = $1 AND kind = 'samples' \
                   AND ts_ms >= $2 AND ts_ms < $3 ORDER BY ts_ms, seq LIMIT $4";
        Ok(on_pool!(self, |p| sqlx::query_as(sql)
            .bind(device)
            .bind(since_ms)
            .bind(until_ms)
            .bind(limit.min(i64::MAX as usize) as i64)
            .fetch_all(p)
            .await?))
    }

    async fn scoring_events(&self, device: &str, after: u64, window_ms: i64) -> Result<Vec<ScoringEvent>, StoreError> {
        let sql = "SELECT seq, ts_ms, kind, body FROM messages WHERE device = $1 AND kind IN ('alerts', 'telemetry') \
                   AND seq > $2 AND ts_ms >= COALESCE((SELECT MAX(ts_ms) FROM messages \
                   WHERE device = $1 AND kind = 'telemetry'), 0) - $3 ORDER BY seq";
        let rows: Vec<(i64, i64, String, String)> = on_pool!(self, |p| sqlx::query_as(sql)
            .bind(device)
            .bind(i64_of(after))
            .bind(window_ms)
            .fetch_all(p)
            .await?);
        Ok(rows
            .into_iter()
            .filter_map(|(seq, ts_ms, kind, body)| {
                let (alert, scored_ms) = if kind == "alerts" {
                    (true, 0)
                } else {
                    // Ingest checked the envelope, not the body; one that does not parse scored nothing.
                    let a = serde_json::from_str::<AggregateBody>(&body).ok().filter(|a| a.scored > 0)?;
                    (false, (a.end_ms - a.start_ms).max(0))
                };
                Some(ScoringEvent { seq: u64_of(seq), ts_ms, alert, scored_ms })
            })
            .collect())
    }

    async fn alert_activity(
        &self,
        device: &str,
        after: u64,
        before: u64,
        since_ms: i64,
    ) -> Result<AlertActivity, StoreError> {
        let sql = "SELECT kind, body FROM messages WHERE device = $1 AND kind IN ('alerts', 'telemetry') \
                   AND seq > $2 AND seq < $3 AND ts_ms >= $4";
        let rows: Vec<(String, String)> = on_pool!(self, |p| sqlx::query_as(sql)
            .bind(device)
            .bind(after.min(i64::MAX as u64) as i64)
            .bind(before.min(i64::MAX as u64) as i64)
            .bind(since_ms)
            .fetch_all(p)
            .await?);
        let mut out = AlertActivity::default();
        for (kind, body) in rows {
            if kind == "alerts" {
                out.alerts += 1;
            } else if let Ok(a) = serde_json::from_str::<AggregateBody>(&body)
                && a.scored > 0
            {
                out.scored_ms += (a.end_ms - a.start_ms).max(0);
            }
        }
        Ok(out)
    }
}

/// A device's update outcome as an audit event. The package hash comes from the device, so it
/// is listed as an artifact only when it is one.
fn update_event(m: &Incoming, u: &UpdateReport, now: i64) -> AuditEvent {
    let mut e = AuditEvent::new(now, &m.device, &format!("device.update.{}", u.state.as_str()), &m.device).details(
        serde_json::json!({
            "deployment": u.deployment,
            "package_sha256": u.sha256,
            "reason": u.reason,
            "running_release": u.running_release,
            "seq": m.seq,
            "device_ts_ms": m.ts_ms,
        }),
    );
    if impeller_core::audit::is_sha256_hex(&u.sha256) {
        e = e.artifact(&u.sha256);
    }
    e
}

#[cfg(test)]
mod tests {
    use impeller_core::wire::{AggregateBody, ChannelStats};

    use super::*;

    #[test]
    fn chunks_come_in_a_few_fixed_sizes_and_cover_everything() {
        let items: Vec<usize> = (0..1234).collect();
        let sizes: Vec<usize> = fixed_chunks(&items).map(<[usize]>::len).collect();
        assert_eq!(sizes, [500, 500, 100, 100, 20, 5, 5, 1, 1, 1, 1]);
        assert_eq!(fixed_chunks(&items).flatten().copied().collect::<Vec<_>>(), items);
        assert_eq!(fixed_chunks::<u8>(&[]).count(), 0);
    }

    fn agg(start_ms: i64, mean: f64, count: u64) -> AggregateBody {
        let stats = ChannelStats {
            name: "flow".into(),
            unit: "m3/h".into(),
            count,
            mean: Some(mean),
            min: Some(mean - 1.0),
            max: Some(mean + 1.0),
            std: Some(0.5),
            last: Some(mean),
        };
        AggregateBody {
            start_ms,
            end_ms: start_ms + 60_000,
            scored: count,
            alarms: 0,
            channels: vec![stats],
            score: None,
        }
    }

    #[test]
    fn buckets_merge_counts_means_and_extremes_and_keep_gaps() {
        // Six one-minute aggregates over ten minutes, into five two-minute points.
        let aggs: Vec<AggregateBody> =
            [(0, 10.0, 30), (60_000, 20.0, 10), (120_000, 5.0, 30), (420_000, 7.0, 30), (480_000, 9.0, 30)]
                .into_iter()
                .map(|(t, m, n)| agg(t, m, n))
                .chain([agg(540_000, 100.0, 0)])
                .collect();
        let points = downsample(&aggs, channel_summary("flow"), 0, 600_000, 5);
        let got: Vec<(i64, i64, u64, f64, f64, f64)> =
            points.iter().map(|p| (p.start_ms, p.end_ms, p.count, p.mean, p.min, p.max)).collect();
        assert_eq!(
            got,
            [
                (0, 120_000, 40, 12.5, 9.0, 21.0),
                (120_000, 240_000, 30, 5.0, 4.0, 6.0),
                (360_000, 480_000, 30, 7.0, 6.0, 8.0),
                (480_000, 600_000, 30, 9.0, 8.0, 10.0),
            ],
            "minutes 4 to 6 had no data: no point; an aggregate without readings adds nothing"
        );
        assert!(downsample(&aggs, channel_summary("pressure"), 0, 600_000, 5).is_empty());
        assert_eq!(downsample(&aggs, channel_summary("flow"), 0, 600_000, 1).len(), 1);
    }

    /// Takes a message and moves the prefix as far as it goes, as ingestion does.
    fn add(s: &mut Stream, seq: u64, prev: u64) -> bool {
        let new = s.take(seq, prev, seq as i64 * 1_000);
        s.settle(u64::MAX);
        new
    }

    #[test]
    fn the_prefix_follows_prev_across_gaps_and_out_of_order() {
        let mut s = Stream::default();
        assert!(add(&mut s, 2, 1));
        assert_eq!(s.acked, 0, "1 is missing");
        add(&mut s, 1, 0);
        assert_eq!((s.acked, s.acked_ts_ms), (2, Some(2_000)));
        add(&mut s, 5, 2); // 3 and 4 were evicted by the agent: 5 names 2 as the one before it
        assert_eq!(s.acked, 5);
        assert!(add(&mut s, 7, 6));
        assert!(!add(&mut s, 7, 6), "stored beyond the prefix already");
        assert_eq!(s.acked, 5);
        assert!(!add(&mut s, 3, 2), "a late duplicate below the prefix changes nothing");
        assert_eq!((s.acked, s.beyond.len()), (5, 1));
        add(&mut s, 6, 5);
        assert_eq!((s.acked, s.acked_ts_ms, s.beyond.len()), (7, Some(7_000), 0));
    }

    #[test]
    fn the_prefix_stops_where_the_caller_does_and_where_a_message_is_missing() {
        let mut s = Stream::default();
        for seq in [1, 2, 3, 5] {
            s.take(seq, seq - 1, 0);
        }
        s.settle(2);
        assert_eq!(s.acked, 2, "no further than the caller acknowledges");
        s.settle(9);
        assert_eq!(s.acked, 3, "4 is not stored: a prefix past it would take its delivery for a redelivery");
        assert!(s.take(4, 3, 0), "so 4 is still new");
        s.settle(9);
        assert_eq!((s.acked, s.beyond.len()), (5, 0));
    }

    #[test]
    fn the_stored_list_beyond_the_prefix_reads_back() {
        let mut s = Stream { acked: 4, acked_ts_ms: Some(40), beyond: BTreeMap::new() };
        s.take(7, 6, 70);
        s.take(9, 8, 90);
        let back = Stream::parse("d", 4, Some(40), &s.beyond_json()).unwrap();
        assert_eq!(back, s);
        assert_eq!(Stream::parse("d", 0, None, "[]").unwrap(), Stream::default());
        let bad = Stream::parse("pump-7", 0, None, "[[1, 0]]").unwrap_err().to_string();
        assert!(bad.contains("pump-7"), "{bad}");
    }
}
