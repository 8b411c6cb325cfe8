//! Reading back what the fleet sent, across devices in time order: alerts, and the drift of
//! each sketch against its package's reference.

use std::collections::HashMap;

use impeller_core::audit::AuditEvent;
use impeller_core::drift::{DriftMonitor, FeatureDrift};
use impeller_core::wire::AlertBody;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::{Store, StoreError};

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

/// Rows read per round while filtering by device in memory.
const CHUNK: i64 = 1000;

impl Store {
    /// Alerts ordered by (time, device, seq), at most `filter.limit`.
    pub async fn alerts(&self, filter: &FleetFilter) -> Result<Vec<AlertSummary>, StoreError> {
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

impl Store {
    /// Stores a drift report, and with it `event` in the audit trail (a monitor entering or
    /// leaving the drift state), once: a report already stored adds nothing.
    pub async fn put_drift(&self, r: &DriftReport, event: Option<AuditEvent>) -> Result<(), StoreError> {
        let sql = "INSERT INTO drift_reports (device, seq, start_ms, end_ms, model, model_version, count, \
                   max_wasserstein, max_psi, page_hinkley, state, features, monitor) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (device, seq) DO NOTHING";
        // The (device, model)'s newest monitor: a report judged out of order does not go back.
        let monitor_sql = "INSERT INTO drift_monitors (device, model, model_version, seq, monitor) \
                           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device, model) DO UPDATE SET \
                           model_version = excluded.model_version, seq = excluded.seq, monitor = excluded.monitor \
                           WHERE drift_monitors.seq < excluded.seq";
        let features = serde_json::to_string(&r.features).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let monitor = serde_json::to_string(&r.monitor).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(sql)
                .bind(&r.device)
                .bind(r.seq.min(i64::MAX as u64) as i64)
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
                .bind(&monitor)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                sqlx::query(monitor_sql)
                    .bind(&r.device)
                    .bind(&r.model)
                    .bind(&r.model_version)
                    .bind(r.seq.min(i64::MAX as u64) as i64)
                    .bind(&monitor)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(event) = event.filter(|_| n > 0) {
                append_audit!(tx, event event);
            }
            tx.commit().await?
        });
        Ok(())
    }

    /// Sketch messages after each device's last drift report, up to its acknowledged prefix
    /// (so a gap filled late is judged in order), oldest first per device: (device, seq, body).
    /// Each device's range is read from the sketches' own index (migration 0014), so a pass
    /// costs what arrived since, not every sketch ever stored.
    pub async fn unjudged_sketches(&self, limit: i64) -> Result<Vec<(String, i64, String)>, StoreError> {
        let sql = "SELECT m.device, m.seq, m.body FROM device_streams s JOIN messages m ON m.device = s.device \
                   AND m.seq > COALESCE((SELECT MAX(d.seq) FROM drift_reports d WHERE d.device = s.device), 0) \
                   AND m.seq <= s.acked WHERE m.kind = 'sketches' ORDER BY m.device, m.seq LIMIT $1";
        Ok(on_pool!(self, |p| sqlx::query_as(sql).bind(limit).fetch_all(p).await?))
    }

    /// Each (device, model)'s monitor after its latest report, with the model version it judged.
    pub async fn drift_monitors(&self) -> Result<HashMap<(String, String), (String, DriftMonitor)>, StoreError> {
        let sql = "SELECT device, model, model_version, monitor FROM drift_monitors";
        let rows: Vec<(String, String, String, String)> = on_pool!(self, |p| sqlx::query_as(sql).fetch_all(p).await?);
        let mut out = HashMap::new();
        for (device, model, version, monitor) in rows {
            let m = serde_json::from_str(&monitor).map_err(|e| StoreError::Corrupt(format!("drift monitor: {e}")))?;
            out.insert((device, model), (version, m));
        }
        Ok(out)
    }

    /// Drift over time across the fleet: per model, the reports ending in `[since, until)`
    /// (device clocks; default everything), in `points` equal buckets over the span those
    /// reports cover. Buckets without reports are left out.
    pub async fn drift_over_time(
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

    /// Drift reports ordered by (end of interval, device, seq), at most `filter.limit`.
    pub async fn drift_reports(&self, filter: &FleetFilter) -> Result<Vec<DriftReport>, StoreError> {
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
pub fn channel_summary(name: &str) -> impl Fn(&impeller_core::wire::AggregateBody) -> Option<Summary> + '_ {
    move |a| {
        let c = a.channels.iter().find(|c| c.name == name)?;
        Some((c.count, c.mean?, c.min?, c.max?))
    }
}

/// The anomaly score's [`Summary`] in an aggregate.
pub fn score_summary(a: &impeller_core::wire::AggregateBody) -> Option<Summary> {
    a.score.as_ref().map(|s| (s.count, s.mean, s.min, s.max))
}

/// Merges per-interval aggregates of one series (`pick`) into at most `points` buckets of equal
/// time over `[since_ms, until_ms)`: count-weighted mean, lowest minimum, highest maximum.
/// Intervals without readings of the series leave their bucket out, so a gap shows as a gap.
pub fn downsample(
    aggregates: &[impeller_core::wire::AggregateBody],
    pick: impl Fn(&impeller_core::wire::AggregateBody) -> Option<Summary>,
    since_ms: i64,
    until_ms: i64,
    points: usize,
) -> Vec<TelemetryPoint> {
    let span = (until_ms - since_ms).max(1);
    let width = (span + points.max(1) as i64 - 1) / points.max(1) as i64;
    let mut buckets: std::collections::BTreeMap<i64, (u64, f64, f64, f64)> = Default::default();
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

impl Store {
    /// Per device that ever sent: the hub's time of its last contact, and the time of the
    /// newest message its acknowledged stream reaches.
    pub async fn device_streams(&self) -> Result<Vec<(String, i64, Option<i64>)>, StoreError> {
        let sql = "SELECT s.device, s.last_seen_ms, m.ts_ms FROM device_streams s \
                   LEFT JOIN messages m ON m.device = s.device AND m.seq = s.acked";
        Ok(on_pool!(self, |p| sqlx::query_as(sql).fetch_all(p).await?))
    }

    /// Per device with alerts: how many, and the newest one's time.
    pub async fn alert_counts(&self) -> Result<Vec<(String, u64, i64)>, StoreError> {
        let sql = "SELECT device, COUNT(*), MAX(ts_ms) FROM messages WHERE kind = 'alerts' GROUP BY device";
        let rows: Vec<(String, i64, i64)> = on_pool!(self, |p| sqlx::query_as(sql).fetch_all(p).await?);
        Ok(rows.into_iter().map(|(d, n, t)| (d, n.max(0) as u64, t)).collect())
    }

    /// A device's newest `limit` telemetry aggregates (by when it sent them), in the order of
    /// their intervals. Bodies that do not parse are skipped.
    pub async fn latest_aggregates(
        &self,
        device: &str,
        limit: usize,
    ) -> Result<Vec<impeller_core::wire::AggregateBody>, StoreError> {
        let sql = "SELECT body FROM messages WHERE device = $1 AND kind = 'telemetry' ORDER BY ts_ms DESC, seq DESC \
                   LIMIT $2";
        let rows: Vec<(String,)> = on_pool!(self, |p| sqlx::query_as(sql)
            .bind(device)
            .bind(limit.min(i64::MAX as usize) as i64)
            .fetch_all(p)
            .await?);
        let mut out: Vec<impeller_core::wire::AggregateBody> =
            rows.into_iter().filter_map(|(body,)| serde_json::from_str(&body).ok()).collect();
        out.sort_by_key(|a| a.start_ms);
        Ok(out)
    }

    /// A device's telemetry aggregates that began in `[since_ms, until_ms)`, oldest first.
    /// Bodies that do not parse are skipped (ingest checked the envelope only).
    pub async fn aggregates(
        &self,
        device: &str,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<impeller_core::wire::AggregateBody>, StoreError> {
        let sql = "SELECT body FROM messages WHERE device = $1 AND kind = 'telemetry' AND ts_ms >= $2 AND ts_ms < $3 \
                   ORDER BY ts_ms";
        let rows: Vec<(String,)> =
            on_pool!(self, |p| sqlx::query_as(sql).bind(device).bind(since_ms).bind(until_ms).fetch_all(p).await?);
        Ok(rows.into_iter().filter_map(|(body,)| serde_json::from_str(&body).ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use impeller_core::wire::{AggregateBody, ChannelStats};

    use super::*;

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
}
