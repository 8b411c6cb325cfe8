//! Alert rates as last judged per device, and the alerts and scoring time the judge reads.

use impeller_core::audit::AuditEvent;
use impeller_core::wire::AggregateBody;
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// A device's alert rate over the window, against its model's validation rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRate {
    pub device: String,
    pub model: String,
    pub model_version: u64,
    /// The report that made this version active: only messages after it count.
    pub since_seq: u64,
    /// The last message the judgement read.
    pub through_seq: u64,
    /// `unjudged`, `normal` or `elevated`.
    pub state: String,
    pub alerts: u64,
    /// Time the device scored in the window (the spans of its aggregates that scored).
    pub scored_ms: i64,
    /// Alerts expected over `scored_ms` at `per_day`.
    pub expected: f64,
    /// The model's validation rate the device is held to, in alerts per device-day.
    pub per_day: f64,
    /// Chance of at least `alerts` at that expectation.
    pub p_value: f64,
    /// The newest aggregate's time (device clock): the window ends there.
    pub window_end_ms: i64,
    /// When the state last changed (kept by the store while it does not), and when it was
    /// judged (hub clock).
    pub changed_ms: i64,
    pub judged_ms: i64,
}

/// An alert (`scored_ms` 0), or an aggregate with the time it scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoringEvent {
    pub seq: u64,
    pub ts_ms: i64,
    pub alert: bool,
    pub scored_ms: i64,
}

fn u64_of(v: i64) -> u64 {
    v.max(0) as u64
}

fn i64_of(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Store {
    /// Replaces a device's alert rate unless the store holds a judgement of the same version
    /// that read further (another hub on the same database is ahead); `announce` is given
    /// the state stored before for the same version (`unjudged` if none) and its event goes in
    /// the audit trail in the same transaction, so that two hubs announce a change once.
    /// `changed_ms` is kept when the state is. Whether it was written.
    pub async fn put_alert_rate(
        &self,
        r: &AlertRate,
        announce: impl FnOnce(&str) -> Option<AuditEvent>,
    ) -> Result<bool, StoreError> {
        // A no-op update first: PostgreSQL locks the row until commit (SQLite the database).
        let lock = "UPDATE alert_rates SET judged_ms = judged_ms WHERE device = $1";
        let before = "SELECT state, through_seq FROM alert_rates WHERE device = $1 AND model = $2 \
                      AND model_version = $3 AND since_seq = $4";
        let sql = "INSERT INTO alert_rates (device, model, model_version, since_seq, state, alerts, scored_ms, \
                   expected, per_day, p_value, window_end_ms, changed_ms, judged_ms, through_seq) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (device) DO UPDATE SET \
                   model = excluded.model, model_version = excluded.model_version, since_seq = excluded.since_seq, \
                   through_seq = excluded.through_seq, \
                   state = excluded.state, alerts = excluded.alerts, scored_ms = excluded.scored_ms, \
                   expected = excluded.expected, per_day = excluded.per_day, p_value = excluded.p_value, \
                   window_end_ms = excluded.window_end_ms, judged_ms = excluded.judged_ms, \
                   changed_ms = CASE WHEN alert_rates.state = excluded.state AND alert_rates.model = excluded.model \
                   AND alert_rates.model_version = excluded.model_version THEN alert_rates.changed_ms \
                   ELSE excluded.changed_ms END";
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            sqlx::query(lock).bind(&r.device).execute(&mut *tx).await?;
            let was: Option<(String, i64)> = sqlx::query_as(before)
                .bind(&r.device)
                .bind(&r.model)
                .bind(i64_of(r.model_version))
                .bind(i64_of(r.since_seq))
                .fetch_optional(&mut *tx)
                .await?;
            if was.as_ref().is_some_and(|w| w.1 > i64_of(r.through_seq)) {
                return Ok(false);
            }
            sqlx::query(sql)
                .bind(&r.device)
                .bind(&r.model)
                .bind(i64_of(r.model_version))
                .bind(i64_of(r.since_seq))
                .bind(&r.state)
                .bind(i64_of(r.alerts))
                .bind(r.scored_ms)
                .bind(r.expected)
                .bind(r.per_day)
                .bind(r.p_value)
                .bind(r.window_end_ms)
                .bind(r.changed_ms)
                .bind(r.judged_ms)
                .bind(i64_of(r.through_seq))
                .execute(&mut *tx)
                .await?;
            if let Some(event) = announce(was.as_ref().map_or("unjudged", |w| w.0.as_str())) {
                append_audit!(tx, event event);
            }
            tx.commit().await?
        });
        Ok(true)
    }

    pub async fn remove_alert_rate(&self, device: &str) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query("DELETE FROM alert_rates WHERE device = $1")
            .bind(device)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Every device's alert rate as last judged, by device id.
    pub async fn alert_rates(&self) -> Result<Vec<AlertRate>, StoreError> {
        let sql = "SELECT device, model, model_version, since_seq, state, alerts, scored_ms, expected, per_day, \
                   p_value, window_end_ms, changed_ms, judged_ms, through_seq FROM alert_rates ORDER BY device";
        Ok(on_pool!(self, |p| {
            let mut out = Vec::new();
            for r in sqlx::query(sql).fetch_all(p).await? {
                out.push(AlertRate {
                    device: r.try_get(0)?,
                    model: r.try_get(1)?,
                    model_version: u64_of(r.try_get(2)?),
                    since_seq: u64_of(r.try_get(3)?),
                    state: r.try_get(4)?,
                    alerts: u64_of(r.try_get(5)?),
                    scored_ms: r.try_get(6)?,
                    expected: r.try_get(7)?,
                    per_day: r.try_get(8)?,
                    p_value: r.try_get(9)?,
                    window_end_ms: r.try_get(10)?,
                    changed_ms: r.try_get(11)?,
                    judged_ms: r.try_get(12)?,
                    through_seq: u64_of(r.try_get(13)?),
                });
            }
            out
        }))
    }

    /// A device's alerts and aggregates with `seq > after` and no older than `window_ms` before
    /// its newest aggregate (device clock), in sequence order.
    pub async fn scoring_events(
        &self,
        device: &str,
        after: u64,
        window_ms: i64,
    ) -> Result<Vec<ScoringEvent>, StoreError> {
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
}
