//! What dataset snapshots read and record: the raw samples agents send for retraining, labelled
//! incidents, and the record of each snapshot made (its files are in the datasets folder).

use impeller_core::audit::AuditEvent;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, now_ms};

/// A stretch of one device's time with a label: a confirmed fault, a test, a known disturbance.
/// Rows of a dataset that fall inside one are labelled anomalous.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: i64,
    pub device: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub kind: String,
    pub note: String,
    pub created_by: String,
    pub created_ms: i64,
}

/// A snapshot as recorded: the selection resolved (devices, channels, time range) and its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    pub sha256: String,
    pub selection: serde_json::Value,
    pub parts: u64,
    pub rows: u64,
    pub created_by: String,
    pub created_ms: i64,
}

impl Store {
    /// One device's `samples` message bodies in `[since_ms, until_ms)`, oldest first, at most
    /// `limit` (one more tells the caller there were too many).
    pub async fn samples(
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

    pub async fn add_incident(&self, i: &Incident, actor: &str) -> Result<Incident, StoreError> {
        if i.end_ms <= i.start_ms {
            return Err(StoreError::Invalid("an incident ends after it starts".into()));
        }
        if i.kind.is_empty() || i.kind.len() > 100 || i.note.len() > 2000 {
            return Err(StoreError::Invalid("kind: 1 to 100 characters; note: up to 2000".into()));
        }
        if !self.devices().await?.iter().any(|d| d.id == i.device) {
            return Err(StoreError::NoDevice(i.device.clone()));
        }
        let now = now_ms();
        let event = AuditEvent::new(now, actor, "incident.recorded", &i.device).details(serde_json::json!({
            "start_ms": i.start_ms, "end_ms": i.end_ms, "kind": i.kind, "note": i.note,
        }));
        let id: i64 = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO incidents (device, start_ms, end_ms, kind, note, created_by, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(&i.device)
            .bind(i.start_ms)
            .bind(i.end_ms)
            .bind(&i.kind)
            .bind(&i.note)
            .bind(actor)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            append_audit!(tx, event event);
            tx.commit().await?;
            id
        });
        Ok(Incident { id, created_by: actor.to_string(), created_ms: now, ..i.clone() })
    }

    /// Incidents of `device` (or every device) overlapping `[since_ms, until_ms)`.
    pub async fn incidents(
        &self,
        device: Option<&str>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<Incident>, StoreError> {
        let sql = "SELECT id, device, start_ms, end_ms, kind, note, created_by, created_ms FROM incidents \
                   WHERE ($1 IS NULL OR device = $1) AND end_ms > $2 AND start_ms < $3 ORDER BY device, start_ms, id";
        type Row = (i64, String, i64, i64, String, String, String, i64);
        let rows: Vec<Row> =
            on_pool!(self, |p| sqlx::query_as(sql).bind(device).bind(since_ms).bind(until_ms).fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|(id, device, start_ms, end_ms, kind, note, created_by, created_ms)| Incident {
                id,
                device,
                start_ms,
                end_ms,
                kind,
                note,
                created_by,
                created_ms,
            })
            .collect())
    }

    /// Records a snapshot (once per hash) in the same transaction as its audit record.
    pub async fn put_dataset(&self, d: &DatasetRecord) -> Result<(), StoreError> {
        let selection = serde_json::to_string(&d.selection).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let event = AuditEvent::new(d.created_ms, &d.created_by, "dataset.created", &d.sha256)
            .artifact(&d.sha256)
            .details(serde_json::json!({ "selection": d.selection, "parts": d.parts, "rows": d.rows }));
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "INSERT INTO datasets (sha256, selection, parts, rows, created_by, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(&d.sha256)
            .bind(&selection)
            .bind(d.parts as i64)
            .bind(d.rows as i64)
            .bind(&d.created_by)
            .bind(d.created_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                append_audit!(tx, event event);
            }
            tx.commit().await?
        });
        Ok(())
    }

    pub async fn datasets(&self) -> Result<Vec<DatasetRecord>, StoreError> {
        let rows: Vec<(String, String, i64, i64, String, i64)> = on_pool!(self, |p| {
            sqlx::query_as(
            "SELECT sha256, selection, parts, rows, created_by, created_ms FROM datasets ORDER BY created_ms, sha256"
        )
        .fetch_all(p)
        .await?
        });
        rows.into_iter()
            .map(|(sha256, selection, parts, rows, created_by, created_ms)| {
                Ok(DatasetRecord {
                    sha256,
                    selection: serde_json::from_str(&selection)
                        .map_err(|e| StoreError::Corrupt(format!("datasets.selection: {e}")))?,
                    parts: parts as u64,
                    rows: rows as u64,
                    created_by,
                    created_ms,
                })
            })
            .collect()
    }
}
