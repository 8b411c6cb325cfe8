//! Technicians' feedback on alerts: a verdict per alert (confirmed fault or false alarm, with a
//! work order), precision per model version from it, and the confirmed faults turned into
//! incidents that label the rows of later dataset snapshots.

use std::future::Future;

use impeller_core::audit::AuditEvent;
use serde::{Deserialize, Serialize};

use super::TelemetryQueries;
use super::{FleetStore, Store, StoreError, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Confirmed,
    FalseAlarm,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Confirmed => "confirmed",
            Verdict::FalseAlarm => "false_alarm",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub device: String,
    pub seq: u64,
    pub verdict: Verdict,
    pub work_order: String,
    pub note: String,
    pub model: String,
    pub model_version: String,
    pub alert_ts_ms: i64,
    /// The incident a confirmed fault became.
    pub incident_id: Option<i64>,
    pub created_by: String,
    pub created_ms: i64,
}

/// Verdicts on one model version's alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Precision {
    pub model: String,
    pub model_version: String,
    pub confirmed: u64,
    pub false_alarms: u64,
    /// confirmed / (confirmed + false alarms).
    pub precision: f64,
}

/// The kind of incident a technician's confirmation of an alert records, from the alert's start
/// to its end. The fault itself lasts until repaired, which the hub has no record of: a snapshot
/// may leave out the device's rows from its first one on (`exclude_after_confirmed_fault`).
pub const CONFIRMED_FAULT: &str = "confirmed_fault";

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

/// Technicians' verdicts on alerts, the precision they give each model version, and the
/// incidents (labelled fault periods) confirmed faults become.
pub trait FeedbackStore {
    /// The verdict on one alert, if any.
    fn feedback(&self, device: &str, seq: u64) -> impl Future<Output = Result<Option<Feedback>, StoreError>> + Send;

    /// Records a verdict on an alert, replacing an earlier one. A confirmed fault becomes an
    /// incident from the alarm's start to the end of the readings the alert carries; a verdict
    /// turned to false alarm withdraws that incident. All in one transaction, audited.
    fn put_feedback(
        &self,
        device: &str,
        seq: u64,
        verdict: Verdict,
        work_order: &str,
        note: &str,
        actor: &str,
    ) -> impl Future<Output = Result<Feedback, StoreError>> + Send;

    /// Precision per model version, from the verdicts given (optionally one model's).
    fn precision(&self, model: Option<&str>) -> impl Future<Output = Result<Vec<Precision>, StoreError>> + Send;

    fn add_incident(&self, i: &Incident, actor: &str) -> impl Future<Output = Result<Incident, StoreError>> + Send;

    /// Incidents of `device` (or every device) overlapping `[since_ms, until_ms)`.
    fn incidents(
        &self,
        device: Option<&str>,
        since_ms: i64,
        until_ms: i64,
    ) -> impl Future<Output = Result<Vec<Incident>, StoreError>> + Send;
}

impl FeedbackStore for Store {
    async fn feedback(&self, device: &str, seq: u64) -> Result<Option<Feedback>, StoreError> {
        type Row = (String, String, String, String, String, i64, Option<i64>, String, i64);
        let row: Option<Row> = on_pool!(self, |p| {
            sqlx::query_as(
            "SELECT verdict, work_order, note, model, model_version, alert_ts_ms, incident_id, created_by, created_ms \
             FROM alert_feedback WHERE device = $1 AND seq = $2"
        )
        .bind(device)
        .bind(seq.min(i64::MAX as u64) as i64)
        .fetch_optional(p)
        .await?
        });
        let Some((verdict, work_order, note, model, model_version, alert_ts_ms, incident_id, created_by, created_ms)) =
            row
        else {
            return Ok(None);
        };
        let verdict = match verdict.as_str() {
            "confirmed" => Verdict::Confirmed,
            "false_alarm" => Verdict::FalseAlarm,
            other => return Err(StoreError::Corrupt(format!("alert {device}/{seq}: verdict `{other}`"))),
        };
        Ok(Some(Feedback {
            device: device.to_string(),
            seq,
            verdict,
            work_order,
            note,
            model,
            model_version,
            alert_ts_ms,
            incident_id,
            created_by,
            created_ms,
        }))
    }

    async fn put_feedback(
        &self,
        device: &str,
        seq: u64,
        verdict: Verdict,
        work_order: &str,
        note: &str,
        actor: &str,
    ) -> Result<Feedback, StoreError> {
        if work_order.len() > 200 || note.len() > 2000 {
            return Err(StoreError::Invalid("work_order: up to 200 characters; note: up to 2000".into()));
        }
        let (ts_ms, alert) = self
            .alert(device, seq)
            .await?
            .ok_or_else(|| StoreError::NotFound { kind: "alert", id: format!("{device}/{seq}") })?;
        let now = now_ms();
        let end = alert.window.last().map_or(ts_ms, |f| f.ts_ms).max(alert.started_ms) + 1;
        let event = AuditEvent::new(now, actor, "alert.feedback", device).details(serde_json::json!({
            "seq": seq, "verdict": verdict.as_str(), "work_order": work_order, "model": alert.model.name,
            "model_version": alert.model.version,
        }));
        let seq_i = seq as i64;
        let incident_id = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            // A write first: it takes the write lock (SQLite) or the row lock (PostgreSQL), so
            // two verdicts on one alert cannot both read "no incident yet".
            sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1").execute(&mut *tx).await?;
            let previous: Option<Option<i64>> =
                sqlx::query_scalar("SELECT incident_id FROM alert_feedback WHERE device = $1 AND seq = $2")
                    .bind(device)
                    .bind(seq_i)
                    .fetch_optional(&mut *tx)
                    .await?;
            let mut incident = previous.flatten();
            match (verdict, incident) {
                (Verdict::Confirmed, None) => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO incidents (device, start_ms, end_ms, kind, note, created_by, created_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    )
                    .bind(device)
                    .bind(alert.started_ms)
                    .bind(end)
                    .bind(CONFIRMED_FAULT)
                    .bind(format!("alert {seq}; work order {work_order}"))
                    .bind(actor)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                    incident = Some(id);
                }
                (Verdict::FalseAlarm, Some(id)) => {
                    sqlx::query("DELETE FROM incidents WHERE id = $1").bind(id).execute(&mut *tx).await?;
                    incident = None;
                }
                _ => {}
            }
            sqlx::query(
                "INSERT INTO alert_feedback (device, seq, verdict, work_order, note, model, model_version, alert_ts_ms, \
                 incident_id, created_by, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (device, seq) DO UPDATE SET verdict = excluded.verdict, work_order = excluded.work_order, \
                 note = excluded.note, incident_id = excluded.incident_id, created_by = excluded.created_by, \
                 created_ms = excluded.created_ms",
            )
            .bind(device)
            .bind(seq_i)
            .bind(verdict.as_str())
            .bind(work_order)
            .bind(note)
            .bind(&alert.model.name)
            .bind(&alert.model.version)
            .bind(ts_ms)
            .bind(incident)
            .bind(actor)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            append_audit!(tx, event event);
            tx.commit().await?;
            incident
        });
        Ok(Feedback {
            device: device.to_string(),
            seq,
            verdict,
            work_order: work_order.to_string(),
            note: note.to_string(),
            model: alert.model.name,
            model_version: alert.model.version,
            alert_ts_ms: ts_ms,
            incident_id,
            created_by: actor.to_string(),
            created_ms: now,
        })
    }

    async fn precision(&self, model: Option<&str>) -> Result<Vec<Precision>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = on_pool!(self, |p| {
            sqlx::query_as(
            "SELECT model, model_version, \
             SUM(CASE WHEN verdict = 'confirmed' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN verdict = 'false_alarm' THEN 1 ELSE 0 END) \
             FROM alert_feedback WHERE ($1 IS NULL OR model = $1) GROUP BY model, model_version ORDER BY model, model_version"
        )
        .bind(model)
        .fetch_all(p)
        .await?
        });
        Ok(rows
            .into_iter()
            .map(|(model, model_version, c, f)| Precision {
                model,
                model_version,
                confirmed: c as u64,
                false_alarms: f as u64,
                precision: c as f64 / (c + f).max(1) as f64,
            })
            .collect())
    }

    async fn add_incident(&self, i: &Incident, actor: &str) -> Result<Incident, StoreError> {
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

    async fn incidents(&self, device: Option<&str>, since_ms: i64, until_ms: i64) -> Result<Vec<Incident>, StoreError> {
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
}
