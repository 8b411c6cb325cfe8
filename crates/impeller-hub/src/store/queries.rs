//! Reading back what the fleet sent: alerts across devices, in time order.

use impeller_core::wire::AlertBody;
use serde::Serialize;

use super::{Store, StoreError};

/// Which alerts: a time range, and optionally only these devices.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
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
}

/// Rows read per round while filtering by device in memory.
const CHUNK: i64 = 1000;

impl Store {
    /// Alerts ordered by (time, device, seq), at most `filter.limit`.
    pub async fn alerts(&self, filter: &AlertFilter) -> Result<Vec<AlertSummary>, StoreError> {
        let sql = "SELECT device, seq, ts_ms, body FROM messages WHERE kind = 'alerts' \
                   AND ts_ms >= $1 AND ts_ms < $2 AND (ts_ms, device, seq) > ($3, $4, $5) \
                   ORDER BY ts_ms, device, seq LIMIT $6";
        let mut cursor = filter
            .after
            .clone()
            .map_or((i64::MIN, String::new(), -1), |(t, d, s)| (t, d, s.min(i64::MAX as u64) as i64));
        let mut out = Vec::new();
        loop {
            let rows: Vec<(String, i64, i64, String)> = on_pool!(self, |p| sqlx::query_as(sql)
                .bind(filter.since_ms.unwrap_or(i64::MIN))
                .bind(filter.until_ms.unwrap_or(i64::MAX))
                .bind(cursor.0)
                .bind(&cursor.1)
                .bind(cursor.2)
                .bind(CHUNK)
                .fetch_all(p)
                .await?);
            let done = (rows.len() as i64) < CHUNK;
            for (device, seq, ts_ms, body) in rows {
                cursor = (ts_ms, device.clone(), seq);
                if filter.devices.as_ref().is_some_and(|d| !d.contains(&device)) {
                    continue;
                }
                // Bodies were checked on ingest; one that no longer parses is skipped, not fatal.
                let Ok(a) = serde_json::from_str::<AlertBody>(&body) else { continue };
                out.push(AlertSummary {
                    device,
                    seq: seq as u64,
                    ts_ms,
                    started_ms: a.started_ms,
                    model: a.model.name,
                    model_version: a.model.version,
                    score: a.score,
                    threshold: a.threshold,
                    top_features: a.top_features,
                });
                if out.len() >= filter.limit {
                    return Ok(out);
                }
            }
            if done {
                return Ok(out);
            }
        }
    }
}
