//! Storage of what the agents send, in SQLite (embedded default) or PostgreSQL (scale-out),
//! chosen by URL. Numbered migrations per backend are embedded in the binary and applied at
//! start in one transaction each.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, Row};

use impeller_core::audit::AuditEvent;
use impeller_core::deploy::{UpdateReport, UpdateState};

use crate::fleet::{Credential, Device, hash_secret, random_hex};

/// Runs the same sqlx code on whichever pool the store holds.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
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

mod alert_rates;
mod audit;
mod datasets;
mod deployments;
mod feedback;
mod queries;
mod registry;
mod retrain;
pub use alert_rates::{AlertRate, ScoringEvent};
pub use audit::AuditFilter;
pub use datasets::{DatasetRecord, Incident};
pub use deployments::{
    AlertActivity, DeploymentInfo, DesiredInfo, Member, PackageInfo, TokenInfo, TokenSecret, UpdateInfo,
};
pub use feedback::{Feedback, Precision, Verdict};
pub use queries::{
    AlertSummary, DriftBucket, DriftReport, FleetFilter, Summary, TelemetryPoint, channel_summary, downsample,
    score_summary,
};
pub use registry::{
    DatasetLineage, ModelVersion, NewModelVersion, RegisteredModel, RunningModel, VersionFinish, VersionPackage,
};
pub use retrain::PolicyRecord;

/// Messages per INSERT statement (7 parameters each; SQLite allows 32,766 per statement).
const INSERT_CHUNK: usize = 500;

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
    /// A request the store refuses as it is (a bad field, a package that does not match).
    #[error("{0}")]
    Invalid(String),
    /// A request that conflicts with the current state (a version already settled).
    #[error("{0}")]
    Conflict(String),
}

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

#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// What one committed batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Committed {
    /// Messages stored for the first time.
    pub stored: u64,
    /// Messages already stored (redeliveries).
    pub duplicates: u64,
}

impl Store {
    /// `sqlite:PATH` (created if missing) or `postgres://…`; migrations applied.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = if url.starts_with("sqlite:") {
            // WAL with full sync: an acknowledged message survives a power cut of the hub.
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(std::time::Duration::from_secs(10));
            Store::Sqlite(SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            Store::Postgres(PgPoolOptions::new().max_connections(8).connect_with(opts).await?)
        } else {
            return Err(StoreError::Url(url.to_string()));
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let create = "CREATE TABLE IF NOT EXISTS impeller_migrations \
                      (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)";
        macro_rules! apply {
            ($pool:expr, $list:expr) => {{
                $pool.execute(create).await?;
                for (version, name, sql) in $list {
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
            Store::Sqlite(p) => apply!(p, SQLITE_MIGRATIONS),
            Store::Postgres(p) => apply!(p, POSTGRES_MIGRATIONS),
        }
        Ok(())
    }

    /// Stores a batch in one transaction, each (device, seq) once, and records each device's
    /// new acknowledged prefix. Returns only after the commit: acknowledge after this.
    pub async fn commit(&self, batch: &[Incoming], acked: &BTreeMap<String, u64>) -> Result<Committed, StoreError> {
        let now = now_ms();
        let mut out = Committed::default();
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                // Multi-row inserts: one round trip per chunk, not per message.
                for chunk in batch.chunks(INSERT_CHUNK) {
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
                    q.push(" ON CONFLICT (device, seq) DO NOTHING");
                    let inserted = q.build().execute(&mut *tx).await?.rows_affected();
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
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        > 0;
                    // Outcomes go to the audit trail, once (a redelivery updates nothing).
                    if fresh && matches!(u.state, UpdateState::Active | UpdateState::Failed | UpdateState::RolledBack) {
                        append_audit!(tx, event update_event(m, u, now));
                    }
                }
                // One statement per chunk of devices too: a batch from a large fleet names
                // hundreds of devices, and a statement each cost more than the messages.
                let acked: Vec<(&String, &u64)> = acked.iter().collect();
                for chunk in acked.chunks(INSERT_CHUNK) {
                    let mut q = sqlx::QueryBuilder::new("INSERT INTO device_streams (device, acked, last_seen_ms) ");
                    q.push_values(chunk, |mut row, (device, acked)| {
                        row.push_bind(*device).push_bind(**acked as i64).push_bind(now);
                    });
                    q.push(" ON CONFLICT (device) DO UPDATE SET acked = excluded.acked, last_seen_ms = excluded.last_seen_ms");
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }};
        }
        match self {
            Store::Sqlite(p) => run!(p),
            Store::Postgres(p) => run!(p),
        }
        Ok(out)
    }

    /// A device's acknowledged prefix and the (seq, prev) of what is stored beyond it.
    pub async fn stream_state(&self, device: &str) -> Result<(u64, BTreeMap<u64, u64>), StoreError> {
        macro_rules! run {
            ($pool:expr) => {{
                let acked: Option<i64> = sqlx::query_scalar("SELECT acked FROM device_streams WHERE device = $1")
                    .bind(device)
                    .fetch_optional($pool)
                    .await?;
                let acked = acked.unwrap_or(0);
                let rows = sqlx::query("SELECT seq, prev FROM messages WHERE device = $1 AND seq > $2")
                    .bind(device)
                    .bind(acked)
                    .fetch_all($pool)
                    .await?;
                let mut beyond = BTreeMap::new();
                for r in rows {
                    beyond.insert(r.try_get::<i64, _>(0)? as u64, r.try_get::<i64, _>(1)? as u64);
                }
                (acked as u64, beyond)
            }};
        }
        Ok(match self {
            Store::Sqlite(p) => run!(p),
            Store::Postgres(p) => run!(p),
        })
    }

    /// A device's messages, oldest first.
    pub async fn messages(&self, device: &str) -> Result<Vec<StoredMessage>, StoreError> {
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
            Store::Sqlite(p) => run!(p),
            Store::Postgres(p) => run!(p),
        })
    }
}

impl Store {
    /// Provisions a device; returns its secret, which is not stored and cannot be shown again.
    pub async fn add_device(
        &self,
        id: &str,
        tags: &BTreeMap<String, String>,
        profile: &str,
        actor: &str,
    ) -> Result<String, StoreError> {
        if !impeller_core::wire::valid_device_id(id) {
            return Err(StoreError::BadDeviceId(id.to_string()));
        }
        let secret = random_hex(32)?;
        let salt = random_hex(16)?;
        let tags_json = serde_json::to_string(tags).unwrap_or_else(|_| "{}".into());
        let sql = "INSERT INTO devices (id, tags, profile, secret_salt, secret_hash, created_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING";
        let now = now_ms();
        let event = AuditEvent::new(now, actor, "device.added", id)
            .details(serde_json::json!({ "tags": tags, "profile": profile }));
        let added = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(sql)
                .bind(id)
                .bind(&tags_json)
                .bind(profile)
                .bind(&salt)
                .bind(hash_secret(&salt, &secret))
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                append_audit!(tx, event event);
            }
            tx.commit().await?;
            n
        });
        if added == 0 {
            return Err(StoreError::DeviceExists(id.to_string()));
        }
        Ok(secret)
    }

    /// Revokes a device: its connections are refused from the next credentials refresh.
    pub async fn revoke_device(&self, id: &str, actor: &str) -> Result<(), StoreError> {
        let sql = "UPDATE devices SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL";
        let now = now_ms();
        let event = AuditEvent::new(now, actor, "device.revoked", id);
        let n = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(sql).bind(now).bind(id).execute(&mut *tx).await?.rows_affected();
            if n > 0 {
                append_audit!(tx, event event);
            }
            tx.commit().await?;
            n
        });
        if n == 0 && !self.devices().await?.iter().any(|d| d.id == id) {
            return Err(StoreError::NoDevice(id.to_string()));
        }
        Ok(())
    }

    pub async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let sql = "SELECT id, tags, profile, created_ms, revoked_ms FROM devices ORDER BY id";
        macro_rules! run {
            ($pool:expr) => {{
                let mut out = Vec::new();
                for r in sqlx::query(sql).fetch_all($pool).await? {
                    out.push(Device {
                        id: r.try_get(0)?,
                        tags: serde_json::from_str(&r.try_get::<String, _>(1)?).unwrap_or_default(),
                        profile: r.try_get(2)?,
                        created_ms: r.try_get(3)?,
                        revoked_ms: r.try_get(4)?,
                    });
                }
                out
            }};
        }
        Ok(match self {
            Store::Sqlite(p) => run!(p),
            Store::Postgres(p) => run!(p),
        })
    }

    pub async fn credentials(&self) -> Result<HashMap<String, Credential>, StoreError> {
        let sql = "SELECT id, secret_salt, secret_hash, revoked_ms FROM devices";
        macro_rules! run {
            ($pool:expr) => {{
                let mut out = HashMap::new();
                for r in sqlx::query(sql).fetch_all($pool).await? {
                    let revoked: Option<i64> = r.try_get(3)?;
                    out.insert(
                        r.try_get::<String, _>(0)?,
                        Credential { salt: r.try_get(1)?, hash: r.try_get(2)?, revoked: revoked.is_some() },
                    );
                }
                out
            }};
        }
        Ok(match self {
            Store::Sqlite(p) => run!(p),
            Store::Postgres(p) => run!(p),
        })
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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
