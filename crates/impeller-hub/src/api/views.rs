//! Read-only views that put several stores together, for the dashboard and for scripts: the
//! fleet at a glance, a device's charts, one alert with its readings and verdict, one sketch
//! against its reference, the audit trail's verification, and ingestion's metrics.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use impeller_core::audit::ChainVerifier;
use impeller_core::sketch;
use impeller_core::wire::{AlertBody, SketchBody};
use serde::{Deserialize, Serialize};

use super::{ApiResult, ApiState, Code, Page, PageQuery, Problem, operator, page, query};
use crate::auth::Role;
use crate::store::TelemetryQueries;
use crate::store::{
    ArtifactStore, AuditFilter, AuditStore, DeploymentStore, Feedback, FeedbackStore, FleetStore, MonitorStore,
    RegistryStore, StoreError, TelemetryPoint, channel_summary, downsample, now_ms, score_summary,
};

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// One device as the fleet view shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct FleetRow {
    pub id: String,
    pub tags: std::collections::BTreeMap<String, String>,
    pub profile: String,
    pub revoked: bool,
    /// When the hub last heard from the device (hub clock).
    pub last_contact_ms: Option<i64>,
    /// The time of the newest message the device's acknowledged stream reaches (device clock):
    /// far behind the last contact while a backlog drains.
    pub data_through_ms: Option<i64>,
    /// The model the device reported running, from its package.
    pub model: Option<String>,
    pub model_version: Option<String>,
    pub release: Option<u64>,
    /// Its version in the registry, when registered.
    pub registry_version: Option<u64>,
    /// The device's latest report on a deployment (`active`, `failed`, `rolled_back`, …).
    pub update_state: Option<String>,
    pub update_reason: Option<String>,
    /// The drift monitor's state for the model the device runs (`stable`, `warning`, `drift`).
    pub drift_state: Option<String>,
    /// The alert-rate monitor's state for the version the device runs (`normal`, `elevated`, …).
    pub alert_rate: Option<String>,
    pub alerts: u64,
    pub last_alert_ms: Option<i64>,
}

/// `GET /fleet`: every device with its contact, model, rollout, drift, alert rate and alerts, by id.
pub async fn fleet(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: QueryResult<PageQuery>,
) -> ApiResult<Json<Page<FleetRow>>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    let streams: HashMap<String, (i64, Option<i64>)> =
        s.store.device_streams().await?.into_iter().map(|(d, seen, through)| (d, (seen, through))).collect();
    let alerts: HashMap<String, (u64, i64)> =
        s.store.alert_counts().await?.into_iter().map(|(d, n, last)| (d, (n, last))).collect();
    let packages: HashMap<String, _> = s.store.packages().await?.into_iter().map(|p| (p.sha256.clone(), p)).collect();
    let running: HashMap<String, _> =
        s.store.running_models().await?.into_iter().map(|r| (r.device.clone(), r)).collect();
    let updates = s.store.latest_updates().await?;
    let drift = s.store.drift_monitors().await?;
    let rates: HashMap<String, String> =
        s.store.alert_rates().await?.into_iter().map(|r| (r.device, r.state)).collect();
    let rows: Vec<FleetRow> = s
        .store
        .devices()
        .await?
        .into_iter()
        .map(|d| {
            let run = running.get(&d.id);
            let package = run.and_then(|r| packages.get(&r.package_sha256));
            let update = updates.get(&d.id);
            let drift_state = package.and_then(|p| drift.get(&(d.id.clone(), p.model.clone()))).map(|(_, m)| m.state);
            FleetRow {
                revoked: d.revoked_ms.is_some(),
                last_contact_ms: streams.get(&d.id).map(|s| s.0),
                data_through_ms: streams.get(&d.id).and_then(|s| s.1),
                model: package.map(|p| p.model.clone()),
                model_version: package.map(|p| p.version.clone()),
                release: package.map(|p| p.release),
                registry_version: run.and_then(|r| r.version),
                update_state: update.map(|u| u.state.clone()),
                update_reason: update.and_then(|u| u.reason.clone()),
                drift_state: drift_state.map(|s| s.as_str().to_string()),
                alert_rate: rates.get(&d.id).cloned(),
                alerts: alerts.get(&d.id).map_or(0, |a| a.0),
                last_alert_ms: alerts.get(&d.id).map(|a| a.1),
                id: d.id,
                tags: d.tags,
                profile: d.profile,
            }
        })
        .collect();
    Ok(Json(page(rows, |r| &r.id, &q)?))
}

/// `GET /drift/fleet?since_ms=&until_ms=&points=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftFleetQuery {
    /// Reports whose interval ends in `[since_ms, until_ms)` (device clocks); default all.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Buckets over that span (1 to 500, default 60).
    pub points: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct DriftFleet {
    /// The monitor's thresholds on the worst feature's distance (σ): watch, and drift at once.
    pub warn_sigma: f64,
    pub alarm_sigma: f64,
    pub buckets: Vec<crate::store::DriftBucket>,
}

/// `GET /drift/fleet`: drift over time per model across every device that runs it.
pub async fn drift_fleet(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: QueryResult<DriftFleetQuery>,
) -> ApiResult<Json<DriftFleet>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    let points = q.points.unwrap_or(60);
    if !(1..=500).contains(&points) {
        return Err(Problem::new(Code::InvalidRequest, "points must be 1 to 500"));
    }
    if let (Some(a), Some(b)) = (q.since_ms, q.until_ms)
        && a >= b
    {
        return Err(Problem::new(Code::InvalidRequest, "since_ms must be before until_ms"));
    }
    let buckets = s.store.drift_over_time(q.since_ms, q.until_ms, points).await?;
    Ok(Json(DriftFleet { warn_sigma: s.drift.warn, alarm_sigma: s.drift.alarm, buckets }))
}

/// `GET /devices/{id}/series?last=&points=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// The device's newest this many aggregates (1 to 10,000, default 1,440: a day of minutes).
    pub last: Option<usize>,
    /// At most this many points per series (1 to 2000, default 200).
    pub points: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct ChannelSeries {
    pub name: String,
    pub unit: String,
    pub points: Vec<TelemetryPoint>,
}

/// Every channel of a device and its anomaly score over its newest aggregates, downsampled
/// alike. The range is the aggregates' own (the device's clock, which for a replay or a
/// simulation is not the hub's).
#[derive(Debug, Serialize)]
pub struct DeviceSeries {
    pub device: String,
    pub since_ms: i64,
    pub until_ms: i64,
    pub channels: Vec<ChannelSeries>,
    pub score: Vec<TelemetryPoint>,
    /// The threshold in force in the newest scored interval.
    pub threshold: Option<f64>,
}

pub async fn device_series(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: QueryResult<SeriesQuery>,
) -> ApiResult<Json<DeviceSeries>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    let points = q.points.unwrap_or(200);
    if !(1..=2000).contains(&points) {
        return Err(Problem::new(Code::InvalidRequest, "points must be 1 to 2000"));
    }
    let last = q.last.unwrap_or(1440);
    if !(1..=10_000).contains(&last) {
        return Err(Problem::new(Code::InvalidRequest, "last must be 1 to 10000"));
    }
    if !s.store.devices().await?.iter().any(|d| d.id == id) {
        return Err(StoreError::NoDevice(id).into());
    }
    let aggregates = s.store.latest_aggregates(&id, last).await?;
    let since_ms = aggregates.first().map_or_else(now_ms, |a| a.start_ms);
    let until_ms = aggregates.iter().map(|a| a.end_ms).max().unwrap_or(since_ms).max(since_ms + 1);
    let mut names: Vec<(String, String)> = Vec::new();
    for c in aggregates.iter().flat_map(|a| &a.channels) {
        if !names.iter().any(|(n, _)| *n == c.name) {
            names.push((c.name.clone(), c.unit.clone()));
        }
    }
    let channels = names
        .into_iter()
        .map(|(name, unit)| {
            let points = downsample(&aggregates, channel_summary(&name), since_ms, until_ms, points);
            ChannelSeries { name, unit, points }
        })
        .collect();
    Ok(Json(DeviceSeries {
        device: id,
        since_ms,
        until_ms,
        channels,
        score: downsample(&aggregates, score_summary, since_ms, until_ms, points),
        threshold: aggregates.iter().rev().find_map(|a| a.score.as_ref().map(|s| s.threshold)),
    }))
}

/// One alert with the readings around it and the verdict on it.
#[derive(Debug, Serialize)]
pub struct AlertDetail {
    pub device: String,
    pub seq: u64,
    pub ts_ms: i64,
    pub alert: AlertBody,
    pub feedback: Option<Feedback>,
}

fn seq_number(text: &str) -> ApiResult<u64> {
    text.parse::<u64>()
        .ok()
        .filter(|v| (1..=i64::MAX as u64).contains(v))
        .ok_or_else(|| Problem::new(Code::InvalidRequest, format!("seq `{text}`: a message number from 1")))
}

pub async fn alert(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((device, seq)): Path<(String, String)>,
) -> ApiResult<Json<AlertDetail>> {
    operator(&s, &headers, Role::Read).await?;
    let seq = seq_number(&seq)?;
    let (ts_ms, alert) = s
        .store
        .alert(&device, seq)
        .await?
        .ok_or_else(|| StoreError::NotFound { kind: "alert", id: format!("{device}/{seq}") })?;
    let feedback = s.store.feedback(&device, seq).await?;
    Ok(Json(AlertDetail { device, seq, ts_ms, alert, feedback }))
}

/// One feature's histogram in the sketch and in the package's reference, over the same bins.
#[derive(Debug, Serialize)]
pub struct FeatureHistograms {
    pub feature: String,
    pub reference: Vec<u64>,
    pub current: Vec<u64>,
}

/// A drift sketch beside the reference it was judged against. Bin `i` of every feature covers
/// standardised values `[low + (i−1)·width, low + i·width)`; the first and last bins are the
/// tails below `low` and above `low + (bins−2)·width`.
#[derive(Debug, Serialize)]
pub struct SketchDetail {
    pub device: String,
    pub seq: u64,
    pub model: String,
    pub model_version: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub low: f64,
    pub width: f64,
    /// `None` when the hub holds no package for the model.
    pub features: Option<Vec<FeatureHistograms>>,
}

pub async fn sketch(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((device, seq)): Path<(String, String)>,
) -> ApiResult<Json<SketchDetail>> {
    operator(&s, &headers, Role::Read).await?;
    let seq = seq_number(&seq)?;
    let not_found = || StoreError::NotFound { kind: "drift sketch", id: format!("{device}/{seq}") };
    let (_, body) = s.store.message(&device, seq, "sketches").await?.ok_or_else(not_found)?;
    let body: SketchBody = serde_json::from_str(&body)
        .map_err(|e| Problem::new(Code::NotFound, format!("sketch {device}/{seq} was stored unreadable: {e}")))?;
    let reference = crate::drift::reference(&s.store, &s.artifacts, &s.trust, &body.model).await?;
    let features = reference.map(|r| {
        body.features
            .iter()
            .zip(&body.sketch.bins)
            .zip(&r.bins)
            .map(|((name, current), reference)| FeatureHistograms {
                feature: name.clone(),
                reference: reference.clone(),
                current: current.clone(),
            })
            .collect()
    });
    Ok(Json(SketchDetail {
        device,
        seq,
        model: body.model.name,
        model_version: body.model.version,
        start_ms: body.start_ms,
        end_ms: body.end_ms,
        low: sketch::LOW,
        width: sketch::WIDTH,
        features,
    }))
}

/// The hub's own check of its audit trail (`impeller audit verify` is the independent one).
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditStatus {
    pub intact: bool,
    /// What is wrong, at which record, when not intact.
    pub problem: Option<String>,
    pub records: u64,
    pub last_seq: Option<u64>,
    pub checkpoints_verified: u64,
    /// The last record a checkpoint signed by the hub's audit key covers.
    pub last_verified_seq: Option<u64>,
    pub audit_key: Option<String>,
    pub checked_ms: i64,
}

/// `GET /metrics`: ingestion's counters and its histogram of store times, for Prometheus.
pub async fn metrics(
    State(s): State<ApiState>,
    headers: HeaderMap,
) -> ApiResult<([(header::HeaderName, &'static str); 1], String)> {
    operator(&s, &headers, Role::Read).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.stats.prometheus()))
}

pub async fn audit_status(State(s): State<ApiState>, headers: HeaderMap) -> ApiResult<Json<AuditStatus>> {
    operator(&s, &headers, Role::Read).await?;
    let pinned = s.audit_keys.as_deref();
    let mut verifier = ChainVerifier::new(pinned);
    let mut after = 0;
    let mut problem = None;
    'pages: loop {
        let filter = AuditFilter { after, limit: 10_000, ..AuditFilter::default() };
        let page = s.store.audit_records(&filter).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            if let Err(e) = verifier.push(r) {
                problem = Some(e.to_string());
                break 'pages;
            }
        }
    }
    let summary = verifier.finish();
    Ok(Json(AuditStatus {
        intact: problem.is_none(),
        problem,
        records: summary.records,
        last_seq: summary.last_seq,
        checkpoints_verified: summary.checkpoints_verified,
        last_verified_seq: summary.last_verified_seq,
        audit_key: pinned.and_then(|t| t.key_ids().next().map(String::from)),
        checked_ms: now_ms(),
    }))
}
