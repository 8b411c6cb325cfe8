//! Model monitors: drift judgements of the devices' sketches with each device's monitor, and
//! each device's alert rate against its version's validation rate.

use std::collections::HashMap;
use std::future::Future;

use impeller_core::audit::AuditEvent;
use impeller_core::drift::{DriftMonitor, FeatureDrift};
use serde::Serialize;
use sqlx::Row;

use super::{FleetFilter, Store, StoreError, i64_of, u64_of};

/// [`MonitorStore::unjudged_sketches`]. Each device's range (after its last report, up to its
/// acknowledged prefix) is searched in the sketches' index: the devices drive the join (SQLite
/// keeps a CROSS JOIN's order; without it, it scanned every sketch ever stored). Each device's
/// oldest first, then each one's second, …: under a backlog the limit is shared fairly, not
/// spent on the devices first in the alphabet. The turns are ranked on the index alone; only the
/// chosen ones' bodies are read.
const UNJUDGED_SKETCHES: &str = "SELECT m.device, m.seq, m.body FROM (SELECT device, seq, turn FROM \
    (SELECT m.device, m.seq, ROW_NUMBER() OVER (PARTITION BY m.device ORDER BY m.seq) AS turn \
    FROM (SELECT s.device, s.acked, COALESCE((SELECT MAX(d.seq) FROM drift_reports d WHERE d.device = s.device), 0) \
    AS judged FROM device_streams s) AS since CROSS JOIN messages m \
    WHERE m.device = since.device AND m.seq > since.judged AND m.seq <= since.acked AND m.kind = 'sketches') \
    AS pending ORDER BY turn, device, seq LIMIT $1) AS chosen \
    JOIN messages m ON m.device = chosen.device AND m.seq = chosen.seq AND m.kind = 'sketches' \
    ORDER BY chosen.turn, chosen.device, chosen.seq";

/// One sketch judged against its reference, and the device's monitor state after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftReport {
    pub device: String,
    pub seq: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub model: String,
    pub model_version: String,
    pub count: u64,
    /// The monitor's statistic: the worst feature's Wasserstein distance, in training standard
    /// deviations; and the worst PSI, for reference.
    pub max_wasserstein: f64,
    pub max_psi: f64,
    pub page_hinkley: f64,
    /// `unknown`, `stable`, `warning` or `drift` (or `no_reference`: the hub has no package
    /// for the model the device ran).
    pub state: String,
    /// The most drifted features, worst first.
    pub features: Vec<FeatureDrift>,
    #[serde(skip)]
    pub monitor: DriftMonitor,
}

/// Each (device, model)'s latest monitor, with the model version it judged.
pub type DriftMonitors = HashMap<(String, String), (String, DriftMonitor)>;

type DriftRow = (String, i64, i64, i64, String, String, i64, f64, f64, f64, String, String, String);

/// One model's drift reports in one time bucket, across the devices that sent them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftBucket {
    pub model: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub reports: u64,
    /// Devices that reported in the bucket, and those of them with a report in the drift state.
    pub devices: u64,
    pub drifting: u64,
    /// The monitor's statistic (the worst feature's Wasserstein distance, σ) across the reports.
    pub mean_wasserstein: f64,
    pub min_wasserstein: f64,
    pub max_wasserstein: f64,
}

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

/// Drift reports and monitors, and alert-rate judgements, per device.
pub trait MonitorStore {
    /// Stores each drift report, and with it its event in the audit trail (a monitor entering
    /// or leaving the drift state), once: a report already stored adds nothing. One
    /// transaction: the drift monitor's pass writes what it judged at once, not a commit (and a
    /// wait for the single SQLite writer beside ingestion) per sketch.
    fn put_drifts(
        &self,
        reports: &[(DriftReport, Option<AuditEvent>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sketch messages after each device's last drift report, up to its acknowledged prefix
    /// (so a gap filled late is judged in order), oldest first per device and taken in turns
    /// across devices (every device's first before any device's second): (device, seq, body).
    /// Each device's range is searched in the sketches' own index (migration 0014), so a pass
    /// costs a look per device and what arrived since, not every sketch ever stored.
    fn unjudged_sketches(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(String, i64, String)>, StoreError>> + Send;

    /// Each (device, model)'s monitor after its latest report, with the model version it judged.
    fn drift_monitors(&self) -> impl Future<Output = Result<DriftMonitors, StoreError>> + Send;

    /// Drift over time across the fleet: per model, the reports ending in `[since, until)`
    /// (device clocks; default everything), in `points` equal buckets over the span those
    /// reports cover. Buckets without reports are left out.
    fn drift_over_time(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        points: u32,
    ) -> impl Future<Output = Result<Vec<DriftBucket>, StoreError>> + Send;

    /// Drift reports ordered by (end of interval, device, seq), at most `filter.limit`.
    fn drift_reports(&self, filter: &FleetFilter) -> impl Future<Output = Result<Vec<DriftReport>, StoreError>> + Send;

    /// Replaces a device's alert rate unless the store holds a judgement of the same version
    /// that read further (another hub on the same database is ahead); `announce` is given
    /// the state stored before for the same version (`unjudged` if none) and its event goes in
    /// the audit trail in the same transaction, so that two hubs announce a change once.
    /// `changed_ms` is kept when the state is. Whether it was written.
    fn put_alert_rate(
        &self,
        r: &AlertRate,
        announce: impl FnOnce(&str) -> Option<AuditEvent> + Send,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn remove_alert_rate(&self, device: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every device's alert rate as last judged, by device id.
    fn alert_rates(&self) -> impl Future<Output = Result<Vec<AlertRate>, StoreError>> + Send;
}

impl MonitorStore for Store {
    async fn put_drifts(&self, reports: &[(DriftReport, Option<AuditEvent>)]) -> Result<(), StoreError> {
        let sql = "INSERT INTO drift_reports (device, seq, start_ms, end_ms, model, model_version, count, \
                   max_wasserstein, max_psi, page_hinkley, state, features, monitor) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (device, seq) DO NOTHING";
        // The (device, model)'s newest monitor: a report judged out of order does not go back.
        let monitor_sql = "INSERT INTO drift_monitors (device, model, model_version, seq, monitor) \
                           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device, model) DO UPDATE SET \
                           model_version = excluded.model_version, seq = excluded.seq, monitor = excluded.monitor \
                           WHERE drift_monitors.seq < excluded.seq";
        let mut rows = Vec::with_capacity(reports.len());
        for (r, event) in reports {
            let features = serde_json::to_string(&r.features).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let monitor = serde_json::to_string(&r.monitor).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            rows.push((r, event, features, monitor));
        }
        if rows.is_empty() {
            return Ok(());
        }
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            for (r, event, features, monitor) in &rows {
                let seq = r.seq.min(i64::MAX as u64) as i64;
                let n = sqlx::query(sql)
                    .bind(&r.device)
                    .bind(seq)
                    .bind(r.start_ms)
                    .bind(r.end_ms)
                    .bind(&r.model)
                    .bind(&r.model_version)
                    .bind(r.count.min(i64::MAX as u64) as i64)
                    .bind(r.max_wasserstein)
                    .bind(r.max_psi)
                    .bind(r.page_hinkley)
                    .bind(&r.state)
                    .bind(features)
                    .bind(monitor)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    continue;
                }
                sqlx::query(monitor_sql)
                    .bind(&r.device)
                    .bind(&r.model)
                    .bind(&r.model_version)
                    .bind(seq)
                    .bind(monitor)
                    .execute(&mut *tx)
                    .await?;
                if let Some(event) = event {
                    append_audit!(tx, event event.clone());
                }
            }
            tx.commit().await?
        });
        Ok(())
    }

    async fn unjudged_sketches(&self, limit: i64) -> Result<Vec<(String, i64, String)>, StoreError> {
        // The query reads each device's acknowledged prefix from its stream row.
        self.write_stream_rows().await?;
        Ok(on_pool!(self, |p| sqlx::query_as(UNJUDGED_SKETCHES).bind(limit).fetch_all(p).await?))
    }

    async fn drift_monitors(&self) -> Result<DriftMonitors, StoreError> {
        let sql = "SELECT device, model, model_version, monitor FROM drift_monitors";
        let rows: Vec<(String, String, String, String)> = on_pool!(self, |p| sqlx::query_as(sql).fetch_all(p).await?);
        let mut out = HashMap::new();
        for (device, model, version, monitor) in rows {
            let m = serde_json::from_str(&monitor).map_err(|e| StoreError::Corrupt(format!("drift monitor: {e}")))?;
            out.insert((device, model), (version, m));
        }
        Ok(out)
    }

    async fn drift_over_time(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        points: u32,
    ) -> Result<Vec<DriftBucket>, StoreError> {
        let span: (Option<i64>, Option<i64>) = on_pool!(self, |p| sqlx::query_as(
            "SELECT MIN(end_ms), MAX(end_ms) FROM drift_reports WHERE end_ms >= $1 AND end_ms < $2"
        )
        .bind(since_ms.unwrap_or(i64::MIN))
        .bind(until_ms.unwrap_or(i64::MAX))
        .fetch_one(p)
        .await?);
        let (Some(first), Some(last)) = span else { return Ok(Vec::new()) };
        // The span the reports cover, so that `end_ms - lo` in the query cannot overflow
        // however far apart the range asked for is.
        let (lo, hi) = (first, last.saturating_add(1));
        let Some(span) = hi.checked_sub(lo) else {
            return Err(StoreError::Corrupt(format!("drift reports end from {first} to {last} ms: no time span")));
        };
        let width = (span as u64).div_ceil(u64::from(points.max(1))).max(1) as i64;
        let sql = "SELECT model, (end_ms - $1) / $2 AS bucket, COUNT(*), COUNT(DISTINCT device), \
                   COUNT(DISTINCT CASE WHEN state = 'drift' THEN device END), AVG(max_wasserstein), \
                   MIN(max_wasserstein), MAX(max_wasserstein) FROM drift_reports \
                   WHERE end_ms >= $1 AND end_ms < $3 GROUP BY model, bucket ORDER BY model, bucket";
        type Row = (String, i64, i64, i64, i64, f64, f64, f64);
        let rows: Vec<Row> = on_pool!(self, |p| sqlx::query_as(sql).bind(lo).bind(width).bind(hi).fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|(model, b, reports, devices, drifting, mean, min, max)| DriftBucket {
                model,
                start_ms: lo.saturating_add(b.saturating_mul(width)),
                end_ms: lo.saturating_add(b.saturating_add(1).saturating_mul(width)).min(hi),
                reports: reports as u64,
                devices: devices as u64,
                drifting: drifting as u64,
                mean_wasserstein: mean,
                min_wasserstein: min,
                max_wasserstein: max,
            })
            .collect())
    }

    async fn drift_reports(&self, filter: &FleetFilter) -> Result<Vec<DriftReport>, StoreError> {
        let sql = "SELECT device, seq, start_ms, end_ms, model, model_version, count, max_wasserstein, max_psi, \
                   page_hinkley, state, features, monitor FROM drift_reports WHERE end_ms >= $1 AND end_ms < $2 \
                   AND (end_ms, device, seq) > ($3, $4, $5) ORDER BY end_ms, device, seq LIMIT $6";
        let key = |r: &DriftRow| (r.3, r.0.clone(), r.1);
        self.scan(sql, filter, key, |row| {
            let (
                device,
                seq,
                start_ms,
                end_ms,
                model,
                model_version,
                count,
                max_wasserstein,
                max_psi,
                page_hinkley,
                state,
                f,
                m,
            ) = row;
            let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("drift report {device}/{seq}: {e}"));
            Ok(Some(DriftReport {
                features: serde_json::from_str(&f).map_err(corrupt)?,
                monitor: serde_json::from_str(&m).map_err(corrupt)?,
                device,
                seq: seq as u64,
                start_ms,
                end_ms,
                model,
                model_version,
                count: count as u64,
                max_wasserstein,
                max_psi,
                page_hinkley,
                state,
            }))
        })
        .await
    }

    async fn put_alert_rate(
        &self,
        r: &AlertRate,
        announce: impl FnOnce(&str) -> Option<AuditEvent> + Send,
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

    async fn remove_alert_rate(&self, device: &str) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query("DELETE FROM alert_rates WHERE device = $1")
            .bind(device)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    async fn alert_rates(&self) -> Result<Vec<AlertRate>, StoreError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_searches_each_devices_unjudged_range_instead_of_scanning_every_sketch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite:{}", dir.path().join("hub.db").display())).await.unwrap();
        let Store::Sqlite { pool, .. } = &store else { unreachable!("opened as SQLite") };
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {UNJUDGED_SKETCHES}")))
                .bind(500)
                .fetch_all(pool)
                .await
                .unwrap();
        let steps: Vec<&str> = plan.iter().map(|(_, _, _, detail)| detail.as_str()).collect();
        let ranged = |s: &&str| {
            s.starts_with("SEARCH m USING ") && s.ends_with("messages_sketches (device=? AND seq>? AND seq<?)")
        };
        assert!(steps.iter().any(ranged), "{steps:#?}");
        assert!(!steps.iter().any(|s| s.starts_with("SCAN m")), "{steps:#?}");
    }
}
