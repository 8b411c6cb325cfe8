//! Storage of what the agents send, in SQLite (embedded default) or PostgreSQL (scale-out),
//! chosen by URL. Numbered migrations per backend are embedded in the binary and applied at
//! start in one transaction each.

use std::str::FromStr;

use sqlx::Executor;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};

/// Runs the same sqlx code on whichever pool the store holds.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Sqlite { pool: $pool, .. } => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

/// The stream rows of `$devices` (`&[&str]`) read through `$conn`, a chunk of devices per
/// statement (one round trip for a batch from a large fleet): device → (its stream, its last
/// contact), those without a row left out. `?` on errors, so inside a function returning
/// `Result<_, StoreError>`.
macro_rules! read_stream_rows {
    ($conn:expr, $devices:expr) => {{
        let mut out: std::collections::HashMap<String, (Stream, i64)> = std::collections::HashMap::new();
        for chunk in fixed_chunks($devices) {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT device, acked, acked_ts_ms, beyond, last_seen_ms FROM device_streams WHERE device IN (",
            );
            let mut list = q.separated(", ");
            for d in chunk {
                list.push_bind(*d);
            }
            q.push(")");
            let rows: Vec<(String, i64, Option<i64>, String, i64)> = q.build_query_as().fetch_all($conn).await?;
            for (device, acked, acked_ts_ms, beyond, last_seen_ms) in rows {
                let stream = Stream::parse(&device, acked, acked_ts_ms, &beyond)?;
                out.insert(device, (stream, last_seen_ms));
            }
        }
        out
    }};
}

/// Writes the stream rows `$rows` (`&[(&str, &Stream, i64)]`: device, stream, last contact)
/// through `$conn`, one statement per chunk of devices (a batch from a large fleet names
/// hundreds, and a statement each cost more than the messages). `?` on errors.
macro_rules! write_stream_rows {
    ($conn:expr, $rows:expr) => {{
        for chunk in fixed_chunks($rows) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO device_streams (device, acked, acked_ts_ms, beyond, last_seen_ms) ",
            );
            q.push_values(chunk, |mut b, (device, stream, seen)| {
                b.push_bind(*device)
                    .push_bind(i64_of(stream.acked))
                    .push_bind(stream.acked_ts_ms)
                    .push_bind(stream.beyond_json())
                    .push_bind(*seen);
            });
            q.push(
                " ON CONFLICT (device) DO UPDATE SET acked = excluded.acked, acked_ts_ms = excluded.acked_ts_ms, \
                 beyond = excluded.beyond, last_seen_ms = excluded.last_seen_ms",
            );
            q.build().execute($conn).await?;
        }
    }};
}

/// Seals an audit event as the next record inside the transaction `$tx`, so it commits or rolls
/// back with the action it records. `$make` turns the record's (seq, prev) into the event (a
/// checkpoint needs them); `event $e` for an event that does not. Evaluates to the record.
macro_rules! append_audit {
    ($tx:expr, event $event:expr) => {
        append_audit!($tx, |_: u64, _: &str| $event)
    };
    ($tx:expr, $make:expr) => {{
        // Updating the head first takes the write lock (SQLite) or the row lock (PostgreSQL):
        // concurrent appends wait here, so none can read a stale head.
        let (seq, prev): (i64, String) =
            sqlx::query_as("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
                .fetch_one(&mut *$tx)
                .await?;
        let record = ($make)(seq as u64, prev.as_str()).seal(seq as u64, &prev);
        sqlx::query(
            "INSERT INTO audit_log (seq, time_ms, actor, action, subject, artifacts, details, prev, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(seq)
        .bind(record.time_ms)
        .bind(&record.actor)
        .bind(&record.action)
        .bind(&record.subject)
        .bind(serde_json::to_string(&record.artifacts).unwrap_or_default())
        .bind(record.details.to_string())
        .bind(&record.prev)
        .bind(&record.hash)
        .execute(&mut *$tx)
        .await?;
        sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1").bind(&record.hash).execute(&mut *$tx).await?;
        record
    }};
}

mod artifacts;
mod audit;
mod deployments;
mod feedback;
mod fleet;
mod jobs;
mod monitors;
mod registry;
mod streams_behind;
mod telemetry;
pub use artifacts::{ArtifactStore, DatasetRecord, PackageInfo};
pub use audit::{AuditFilter, AuditStore};
pub use deployments::{DeploymentInfo, DeploymentStore, DesiredInfo, Member, UpdateInfo};
pub use feedback::{CONFIRMED_FAULT, Feedback, FeedbackStore, Incident, Precision, Verdict};
pub use fleet::{FleetStore, TokenInfo, TokenSecret};
pub use jobs::{JobStore, PolicyRecord};
pub use monitors::{AlertRate, DriftBucket, DriftMonitors, DriftReport, MonitorStore};
pub use registry::{
    DatasetLineage, ModelVersion, NewModelVersion, RegisteredModel, RegistryStore, RunningModel, VersionFinish,
    VersionPackage,
};
pub use telemetry::{
    AlertActivity, AlertSummary, Committed, FleetFilter, Incoming, ScoringEvent, StoredMessage, Stream, StreamStates,
    Summary, TelemetryPoint, TelemetryQueries, TelemetryRetention, TelemetryStore, channel_summary, downsample,
    score_summary,
};

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "telemetry", include_str!("../migrations/sqlite/0001_telemetry.sql")),
    (2, "fleet", include_str!("../migrations/sqlite/0002_fleet.sql")),
    (3, "deployments", include_str!("../migrations/sqlite/0003_deployments.sql")),
    (4, "rollouts", include_str!("../migrations/sqlite/0004_rollouts.sql")),
    (5, "queries", include_str!("../migrations/sqlite/0005_queries.sql")),
    (6, "drift", include_str!("../migrations/sqlite/0006_drift.sql")),
    (7, "audit", include_str!("../migrations/sqlite/0007_audit.sql")),
    (8, "registry", include_str!("../migrations/sqlite/0008_registry.sql")),
    (9, "datasets", include_str!("../migrations/sqlite/0009_datasets.sql")),
    (10, "feedback", include_str!("../migrations/sqlite/0010_feedback.sql")),
    (11, "retrain", include_str!("../migrations/sqlite/0011_retrain.sql")),
    (12, "alert_rates", include_str!("../migrations/sqlite/0012_alert_rates.sql")),
    (13, "drift_monitors", include_str!("../migrations/sqlite/0013_drift_monitors.sql")),
    (14, "sketch_index", include_str!("../migrations/sqlite/0014_sketch_index.sql")),
    (15, "alert_time_index", include_str!("../migrations/sqlite/0015_alert_time_index.sql")),
    (16, "streams_hold_what_is_stored", include_str!("../migrations/sqlite/0016_streams_hold_what_is_stored.sql")),
    (17, "streams_written_behind", include_str!("../migrations/sqlite/0017_streams_written_behind.sql")),
];

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "telemetry", include_str!("../migrations/postgres/0001_telemetry.sql")),
    (2, "fleet", include_str!("../migrations/postgres/0002_fleet.sql")),
    (3, "deployments", include_str!("../migrations/postgres/0003_deployments.sql")),
    (4, "rollouts", include_str!("../migrations/postgres/0004_rollouts.sql")),
    (5, "queries", include_str!("../migrations/postgres/0005_queries.sql")),
    (6, "drift", include_str!("../migrations/postgres/0006_drift.sql")),
    (7, "audit", include_str!("../migrations/postgres/0007_audit.sql")),
    (8, "registry", include_str!("../migrations/postgres/0008_registry.sql")),
    (9, "datasets", include_str!("../migrations/postgres/0009_datasets.sql")),
    (10, "feedback", include_str!("../migrations/postgres/0010_feedback.sql")),
    (11, "retrain", include_str!("../migrations/postgres/0011_retrain.sql")),
    (12, "alert_rates", include_str!("../migrations/postgres/0012_alert_rates.sql")),
    (13, "drift_monitors", include_str!("../migrations/postgres/0013_drift_monitors.sql")),
    (14, "sketch_index", include_str!("../migrations/postgres/0014_sketch_index.sql")),
    (15, "alert_time_index", include_str!("../migrations/postgres/0015_alert_time_index.sql")),
    (16, "streams_hold_what_is_stored", include_str!("../migrations/postgres/0016_streams_hold_what_is_stored.sql")),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL `{0}`: use sqlite:PATH or postgres://…")]
    Url(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("device `{0}` already exists")]
    DeviceExists(String),
    #[error("no device `{0}`")]
    NoDevice(String),
    #[error("device id `{0}` must be 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadDeviceId(String),
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    #[error("{kind} `{id}` already exists")]
    Exists { kind: &'static str, id: String },
    #[error("no {kind} `{id}`")]
    NotFound { kind: &'static str, id: String },
    #[error("database content is damaged: {0}")]
    Corrupt(String),
    #[error(
        "the database was migrated by a newer hub (schema version {newest}; this hub knows up to {known}): run that hub's version or newer"
    )]
    NewerSchema { newest: i64, known: i64 },
    /// A request the store refuses as it is (a bad field, a package that does not match).
    #[error("{0}")]
    Invalid(String),
    /// A request that conflicts with the current state (a version already settled).
    #[error("{0}")]
    Conflict(String),
}

/// Ingestion's transactions in flight at once on PostgreSQL ([`Store::parallel_writers`]).
const PG_PARALLEL_WRITERS: usize = 3;

#[derive(Debug, Clone)]
pub enum Store {
    Sqlite {
        pool: SqlitePool,
        /// One connection for ingestion's batches and the stream state they extend.
        ingest: SqlitePool,
        /// Set by [`Store::checkpoint_beside_ingestion`] when the log has been copied and
        /// flushed and is long enough to start over: ingestion's next batch copies what was
        /// logged since (a short tail), and SQLite then starts the log from its beginning.
        log_reset_due: std::sync::Arc<std::sync::atomic::AtomicBool>,
        /// Ingestion's streams, whose rows are written behind its commits.
        streams: std::sync::Arc<tokio::sync::Mutex<streams_behind::StreamsBehind>>,
    },
    Postgres(PgPool),
}

/// How SQLite's write-ahead log is copied into the database file beside ingestion
/// ([`Store::checkpoint_beside_ingestion`]).
#[derive(Debug, Clone, Copy)]
pub struct Checkpointing {
    /// How often the log is copied. A page that commits change again and again (the leaf of the
    /// index where each device's next messages go, which a fleet changes once a second per
    /// device) is copied once per interval however often it was logged: every 2 s rather than
    /// every 0.5 s, the hub wrote 15 % fewer bytes per message, and in two of three interleaved
    /// pairs kept up with 50,000 msg/s where the other fell behind; every 5 s, fewer bytes
    /// still, but each copy stalled commits for longer (docs/BENCHMARKS.md, "How often the log
    /// is copied").
    pub every: std::time::Duration,
    /// Pages of log after which it starts over (SQLite's pages are 4 KiB).
    pub reset_after_pages: i64,
}

impl Default for Checkpointing {
    fn default() -> Checkpointing {
        Checkpointing { every: std::time::Duration::from_secs(2), reset_after_pages: 65536 }
    }
}

impl Store {
    /// `sqlite:PATH` (created if missing) or `postgres://…`; migrations applied.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_at_version(url, i64::MAX).await
    }

    /// [`Store::open`] with the migrations up to `version` only: for tests of a migration, which
    /// need a database as an older hub left it.
    #[doc(hidden)]
    pub async fn open_at_version(url: &str, version: i64) -> Result<Store, StoreError> {
        let store = if url.starts_with("sqlite:") {
            // WAL with full sync: an acknowledged message survives a power cut of the hub.
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                // 64 MiB of pages per connection: a batch from a large fleet touches a leaf of
                // the device-keyed indexes per device.
                .pragma("cache_size", "-65536")
                // A multi-row insert keeps a statement journal (to undo itself on a constraint
                // error): in memory, not in a temporary file written for every batch.
                .pragma("temp_store", "memory")
                // A connection's own checkpoint after a commit once the log holds 1 GiB: only a
                // backstop, should `checkpoint_beside_ingestion` not run.
                .pragma("wal_autocheckpoint", "262144")
                .busy_timeout(std::time::Duration::from_secs(10));
            // Ingestion writes through a connection of its own, which never waits for the pool
            // and whose page cache (stale whenever another connection writes) keeps the leaf of
            // each device-keyed index that each device's next messages go to: 256 MiB holds
            // them for a fleet of tens of thousands.
            let ingest_opts = opts.clone().pragma("cache_size", "-262144");
            let ingest = SqlitePoolOptions::new().max_connections(1).connect_with(ingest_opts).await?;
            Store::Sqlite {
                pool: SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?,
                ingest,
                log_reset_due: Default::default(),
                streams: Default::default(),
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            // Ingestion's shards hold PARALLEL_WRITERS of these; the API and monitors the rest.
            Store::Postgres(
                PgPoolOptions::new().max_connections(8 + PG_PARALLEL_WRITERS as u32).connect_with(opts).await?,
            )
        } else {
            return Err(StoreError::Url(url.to_string()));
        };
        store.migrate(version).await?;
        Ok(store)
    }

    /// How many of ingestion's transactions may be in flight at once: SQLite has one writer;
    /// PostgreSQL commits in parallel, and a commit's wait for its log flush is then shared.
    pub fn parallel_writers(&self) -> usize {
        match self {
            Store::Sqlite { .. } => 1,
            Store::Postgres(_) => PG_PARALLEL_WRITERS,
        }
    }

    /// Runs until the process ends: on SQLite, copies the write-ahead log into the database
    /// file every [`Checkpointing::every`] from a connection other than ingestion's and flushes
    /// the file to disk, so that neither the copying nor the flush runs in ingestion's commits.
    /// Once the log is long enough to start over, a second pass copies what was logged
    /// meanwhile and ingestion's next batch the short rest, after which SQLite starts the log
    /// over (it can only do so once all of it is copied, which with commits arriving all the
    /// time only the writer can see). Each time it also writes the stream rows that the last
    /// commits of a busy spell left behind them ([`streams_behind`]). Nothing on PostgreSQL.
    pub async fn checkpoint_beside_ingestion(self, checkpointing: Checkpointing) {
        let Store::Sqlite { pool, log_reset_due, .. } = &self else { return };
        // Kept open while this runs, in the hub the life of the process: closing a descriptor
        // of the database file drops the locks SQLite's own connections hold on it (POSIX
        // advisory locks belong to the process). None for a database in memory.
        let mut file = std::fs::File::open(pool.connect_options().get_filename()).ok().map(std::sync::Arc::new);
        loop {
            tokio::time::sleep(checkpointing.every).await;
            // Streams that the last commits of a busy spell left unwritten.
            if let Err(error) = self.write_stream_rows_when(true).await {
                tracing::warn!(%error, "writing the stream rows behind ingestion");
            }
            for pass in 0..2 {
                // PASSIVE waits for no reader or writer; what it cannot copy yet, it copies next
                // time. It flushes the file only when it copied the whole log, which commits
                // arriving all the time prevent; the flush below does it instead.
                let logged: i64 = match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(pool)
                    .await
                {
                    Ok((_busy, logged, _copied)) => logged,
                    Err(error) => {
                        tracing::warn!(%error, "background checkpoint");
                        break;
                    }
                };
                if let Some(f) = file.clone()
                    && let Ok(Err(error)) = tokio::task::spawn_blocking(move || f.sync_data()).await
                {
                    // Then the writer's checkpoints flush it, as SQLite does by itself.
                    tracing::warn!(%error, "cannot flush the database file beside ingestion; leaving it to SQLite");
                    file = None;
                }
                if logged < checkpointing.reset_after_pages {
                    break;
                }
                // The second pass copies what was logged during the first; what is logged during
                // the second, ingestion's next batch copies. (More passes, until under 8 MiB was
                // left, raised p99: 0.40 and 0.41 s against 0.21 and 0.26 s; docs/BENCHMARKS.md.)
                if pass == 1 {
                    log_reset_due.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    async fn migrate(&self, up_to: i64) -> Result<(), StoreError> {
        let create = "CREATE TABLE IF NOT EXISTS impeller_migrations \
                      (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)";
        macro_rules! apply {
            ($pool:expr, $list:expr) => {{
                $pool.execute(create).await?;
                // A newer hub's schema is not this one's (0016 removed a key this hub's
                // inserts name): refuse it rather than fail every write.
                let newest: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(version) FROM impeller_migrations").fetch_one($pool).await?;
                let known = $list.last().map_or(0, |(v, _, _)| *v);
                if let Some(newest) = newest.filter(|n| *n > known) {
                    return Err(StoreError::NewerSchema { newest, known });
                }
                for (version, name, sql) in $list.iter().filter(|(v, _, _)| *v <= up_to) {
                    let mut tx = $pool.begin().await?;
                    let done: Option<i64> =
                        sqlx::query_scalar("SELECT version FROM impeller_migrations WHERE version = $1")
                            .bind(version)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if done.is_some() {
                        continue;
                    }
                    tx.execute(*sql).await?;
                    sqlx::query("INSERT INTO impeller_migrations (version, name, applied_ms) VALUES ($1, $2, $3)")
                        .bind(version)
                        .bind(name)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    tracing::info!(version, name, "database migration applied");
                }
            }};
        }
        match self {
            Store::Sqlite { pool, .. } => apply!(pool, SQLITE_MIGRATIONS),
            Store::Postgres(p) => apply!(p, POSTGRES_MIGRATIONS),
        }
        Ok(())
    }

    /// Runs a time-ordered query over the fleet in chunks, resuming after the (time, device,
    /// seq) `key` of the last row, keeping rows of the filter's devices that `take` keeps,
    /// until `filter.limit`. `sql` binds since, until, the cursor's three parts and the chunk.
    async fn scan<R, T>(
        &self,
        sql: &'static str,
        filter: &FleetFilter,
        key: impl Fn(&R) -> (i64, String, i64),
        mut take: impl FnMut(R) -> Result<Option<T>, StoreError>,
    ) -> Result<Vec<T>, StoreError>
    where
        R: Send + Unpin + for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow>,
    {
        let mut cursor = filter
            .after
            .clone()
            .map_or((i64::MIN, String::new(), -1), |(t, d, s)| (t, d, s.min(i64::MAX as u64) as i64));
        let mut out = Vec::new();
        loop {
            let rows: Vec<R> = on_pool!(self, |p| sqlx::query_as(sql)
                .bind(filter.since_ms.unwrap_or(i64::MIN))
                .bind(filter.until_ms.unwrap_or(i64::MAX))
                .bind(cursor.0)
                .bind(&cursor.1)
                .bind(cursor.2)
                .bind(CHUNK)
                .fetch_all(p)
                .await?);
            let done = (rows.len() as i64) < CHUNK;
            for row in rows {
                cursor = key(&row);
                if filter.devices.as_ref().is_some_and(|d| !d.contains(&cursor.1)) {
                    continue;
                }
                if let Some(item) = take(row)? {
                    out.push(item);
                    if out.len() >= filter.limit {
                        return Ok(out);
                    }
                }
            }
            if done {
                return Ok(out);
            }
        }
    }
}

/// Rows read per round while filtering by device in memory.
const CHUNK: i64 = 1000;

fn u64_of(v: i64) -> u64 {
    v.max(0) as u64
}

fn i64_of(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Commits arriving back to back leave SQLite no moment at which the whole log is copied,
    /// and it starts the log over only then; without ingestion copying the last of it on its
    /// background checkpoint's word, the log grew by every page ever written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_starts_over_while_commits_arrive_back_to_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite:{}", dir.path().join("hub.db").display())).await.unwrap();
        let reset_after_pages = 250;
        let checkpointing = Checkpointing { every: std::time::Duration::from_millis(20), reset_after_pages };
        let checkpoints = tokio::spawn(store.clone().checkpoint_beside_ingestion(checkpointing));
        let log = dir.path().join("hub.db-wal");
        let body = format!("\"{}\"", "x".repeat(2000));
        let (mut largest, mut pages_written) = (0u64, 0u64);
        for batch in 0..300u64 {
            let messages: Vec<Incoming> = (0..50)
                .map(|d| Incoming {
                    device: format!("pump-{d}"),
                    seq: batch + 1,
                    prev: batch,
                    ts_ms: batch as i64,
                    kind: "telemetry".into(),
                    body: body.clone(),
                    update: None,
                })
                .collect();
            store.commit(&messages, &BTreeMap::new()).await.unwrap();
            pages_written += 50 * 2000 / 4096;
            largest = largest.max(std::fs::metadata(&log).map_or(0, |m| m.len()));
        }
        checkpoints.abort();
        // Started over, it holds what was logged while the two passes ran, a few times the
        // threshold at these commits' pace (up to a quarter of it all with other tests taking
        // the cores); never started over, all of it.
        let written = pages_written * 4096;
        assert!(largest < written / 2, "the log grew to {largest} bytes of the {written} or more written");
    }
}
