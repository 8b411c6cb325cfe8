//! The REST API under `/api/v1`. Operators call it with an API token, devices with their own
//! credentials (see [`crate::auth`]). Errors are `application/problem+json` with a `code` from
//! a closed set ([`Code`]); lists are paginated with `limit` and `after`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

mod datasets;
mod events;
mod registry;
mod views;
use impeller_core::audit::AuditRecord;
use impeller_core::deploy::{self, Condition, valid_sha256};
use impeller_core::package::{Limits, TrustStore};
use impeller_core::rollout::Rollout;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::artifacts::ByteRange;
use crate::auth::{self, AuthError, Caller, Role};
use crate::fleet::{Credentials, Device};
use crate::store::TelemetryQueries;
use crate::store::{
    AlertRate, AlertSummary, ArtifactStore, AuditFilter, AuditStore, DeploymentInfo, DeploymentStore, DriftReport,
    FleetFilter, FleetStore, MonitorStore, PackageInfo, Store, StoreError, TelemetryPoint, channel_summary, downsample,
    now_ms,
};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Store,
    pub devices: Credentials,
    /// Where uploaded packages are kept, `{sha256}.pkg`.
    pub artifacts: crate::artifacts::Artifacts,
    /// Folder of dataset snapshots, `{sha256}/`.
    pub datasets_dir: PathBuf,
    /// Keys a package must be signed with to be accepted.
    pub trust: Arc<TrustStore>,
    pub max_package_bytes: u64,
    /// Wakes the deployment reconciler after a change.
    pub reconcile: Arc<Notify>,
    /// Pipelines the hub runs itself.
    pub runs: crate::runs::Runs,
    /// The retraining loop, for approvals.
    pub retrainer: Arc<crate::retrain::Retrainer>,
    /// The hub's audit public key, for its own check of the trail; `None` without one.
    pub audit_keys: Option<Arc<TrustStore>>,
    /// What the ingest loop has stored, for the live event stream and the metrics.
    pub stats: Arc<crate::ingest::IngestStats>,
    /// How long raw samples are kept (`[retention] samples_days`); `None`: for ever. A
    /// retraining policy may not ask for a longer window of them.
    pub samples_kept: Option<std::time::Duration>,
    /// The drift monitor's thresholds, drawn on the fleet's drift chart.
    pub drift: impeller_core::drift::DriftPolicy,
}

/// The closed set of error codes; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    InvalidRequest,
    PackageRefused,
    PayloadTooLarge,
    Internal,
}

impl Code {
    fn status(self) -> StatusCode {
        match self {
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::Conflict => StatusCode::CONFLICT,
            Code::InvalidRequest | Code::PackageRefused => StatusCode::UNPROCESSABLE_ENTITY,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub code: Code,
    pub detail: String,
}

impl Problem {
    pub fn new(code: Code, detail: impl Into<String>) -> Problem {
        let status = code.status();
        let code_name = serde_json::to_value(code).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        Problem {
            kind: format!("https://impeller.dev/problems/{code_name}"),
            title: status.canonical_reason().unwrap_or("error"),
            status: status.as_u16(),
            code,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(&self)).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.code == Code::Unauthorized {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer, Basic realm=\"impeller\""));
        }
        r
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        match e {
            StoreError::NotFound { .. } | StoreError::NoDevice(_) => Problem::new(Code::NotFound, e.to_string()),
            StoreError::Exists { .. } | StoreError::DeviceExists(_) => Problem::new(Code::Conflict, e.to_string()),
            StoreError::BadDeviceId(_) | StoreError::Invalid(_) => Problem::new(Code::InvalidRequest, e.to_string()),
            StoreError::Conflict(_) => Problem::new(Code::Conflict, e.to_string()),
            other => {
                // The detail is logged, not sent: it may name tables or hosts.
                tracing::error!(error = %other, "api: store error");
                Problem::new(Code::Internal, "the hub could not complete the request; see its log")
            }
        }
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Problem {
        match e {
            AuthError::Store(s) => s.into(),
            other => Problem::new(Code::Unauthorized, other.to_string()),
        }
    }
}

impl From<JsonRejection> for Problem {
    fn from(e: JsonRejection) -> Problem {
        Problem::new(Code::InvalidRequest, e.body_text())
    }
}

type ApiResult<T> = Result<T, Problem>;

async fn caller(state: &ApiState, headers: &HeaderMap) -> ApiResult<Caller> {
    let h = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    Ok(auth::authenticate(h, &state.store, &state.devices).await?)
}

/// An operator with at least `role`; returns `token:{id}`, the actor in the audit trail.
async fn operator(state: &ApiState, headers: &HeaderMap, role: Role) -> ApiResult<String> {
    match caller(state, headers).await? {
        Caller::Operator { role: r, token_id } if r >= role => Ok(format!("token:{token_id}")),
        Caller::Operator { role: r, .. } => Err(Problem::new(
            Code::Forbidden,
            format!("this needs the `{}` role; the token has `{}`", role.as_str(), r.as_str()),
        )),
        Caller::Device(_) => Err(Problem::new(Code::Forbidden, "devices may not call this")),
    }
}

/// An operator who may read, or the device `id` itself.
async fn reader_or_device(state: &ApiState, headers: &HeaderMap, id: Option<&str>) -> ApiResult<()> {
    match caller(state, headers).await? {
        Caller::Operator { .. } => Ok(()),
        Caller::Device(d) if id.is_none_or(|id| id == d) => Ok(()),
        Caller::Device(_) => Err(Problem::new(Code::Forbidden, "a device may read only its own state")),
    }
}

/// `?limit=&after=`: at most `limit` items (default 100, at most 1000) after the key `after`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub after: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

fn page<T>(items: Vec<T>, key: impl Fn(&T) -> &str, q: &PageQuery) -> ApiResult<Page<T>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::new(Code::InvalidRequest, "limit must be 1 to 1000"));
    }
    let mut rest: Vec<T> = match &q.after {
        Some(a) => items.into_iter().filter(|i| key(i) > a.as_str()).collect(),
        None => items,
    };
    let more = rest.len() > limit;
    rest.truncate(limit);
    let next_after = if more { rest.last().map(|i| key(i).to_string()) } else { None };
    Ok(Page { items: rest, next_after })
}

fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q).map_err(|e| Problem::new(Code::InvalidRequest, e.body_text()))
}

pub fn router(state: ApiState) -> axum::Router {
    let upload_limit = usize::try_from(state.max_package_bytes).unwrap_or(usize::MAX).saturating_add(1);
    axum::Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/openapi.json", get(|| async { Json(crate::openapi::document()) }))
        .route("/api/v1/devices", get(list_devices).post(add_device))
        .route("/api/v1/devices/{id}", get(get_device))
        .route("/api/v1/devices/{id}/revoke", post(revoke_device))
        .route("/api/v1/devices/{id}/desired", get(device_desired))
        .route("/api/v1/devices/{id}/telemetry", get(device_telemetry))
        .route("/api/v1/packages", get(list_packages).post(upload_package).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/api/v1/packages/{sha256}", get(get_package))
        .route("/api/v1/packages/{sha256}/content", get(package_content))
        .route("/api/v1/deployments", get(list_deployments).post(create_deployment))
        .route("/api/v1/deployments/{name}", get(get_deployment).delete(stop_deployment))
        .route("/api/v1/deployments/{name}/abort", post(abort_deployment))
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/drift", get(list_drift))
        .route("/api/v1/alert-rates", get(list_alert_rates))
        .route("/api/v1/audit", get(list_audit))
        .route("/api/v1/models", get(registry::list_models))
        .route("/api/v1/models/{name}", get(registry::get_model))
        .route("/api/v1/models/{name}/versions", get(registry::list_versions).post(registry::create_version))
        .route("/api/v1/models/{name}/versions/{version}", get(registry::get_version))
        .route("/api/v1/models/{name}/versions/{version}/finish", post(registry::finish_version))
        .route(
            "/api/v1/models/{name}/aliases/{alias}",
            get(registry::get_alias).put(registry::set_alias).delete(registry::remove_alias),
        )
        .route("/api/v1/lineage/datasets/{sha256}", get(registry::dataset_lineage))
        .route(
            "/api/v1/models/{name}/policy",
            get(registry::get_policy).put(registry::put_policy).delete(registry::remove_policy),
        )
        .route("/api/v1/models/{name}/policy/approve", post(registry::approve))
        .route("/api/v1/datasets", get(datasets::list).post(datasets::create))
        .route("/api/v1/datasets/{sha256}", get(datasets::get))
        .route("/api/v1/datasets/{sha256}/files/{file}", get(datasets::file))
        .route("/api/v1/incidents", get(datasets::list_incidents).post(datasets::add_incident))
        .route("/api/v1/runs", get(datasets::list_runs).post(datasets::submit_run))
        .route("/api/v1/runs/{id}", get(datasets::get_run))
        .route("/api/v1/alerts/{device}/{seq}/feedback", post(datasets::alert_feedback))
        .route("/api/v1/feedback", get(datasets::precision))
        .route("/api/v1/lineage/devices/{id}", get(registry::device_lineage))
        .route("/api/v1/fleet", get(views::fleet))
        .route("/api/v1/policies", get(registry::list_policies))
        .route("/api/v1/devices/{id}/series", get(views::device_series))
        .route("/api/v1/alerts/{device}/{seq}", get(views::alert))
        .route("/api/v1/drift/fleet", get(views::drift_fleet))
        .route("/api/v1/drift/{device}/{seq}", get(views::sketch))
        .route("/api/v1/audit/status", get(views::audit_status))
        .route("/api/v1/metrics", get(views::metrics))
        .route("/api/v1/events", get(events::events))
        .merge(crate::dashboard::router())
        .fallback(|| async { Problem::new(Code::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            Problem::new(Code::MethodNotAllowed, "this endpoint does not take that method")
        })
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// A device with what it should run and what it last reported.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceView {
    #[serde(flatten)]
    pub device: serde_json::Value,
    pub desired_deployment: Option<String>,
    pub update: Option<serde_json::Value>,
}

async fn device_views(store: &Store) -> ApiResult<Vec<DeviceView>> {
    let desired: HashMap<String, String> =
        store.desired().await?.into_iter().map(|d| (d.device, d.deployment)).collect();
    let updates = store.latest_updates().await?;
    Ok(store
        .devices()
        .await?
        .into_iter()
        .map(|d| DeviceView {
            desired_deployment: desired.get(&d.id).cloned(),
            update: updates.get(&d.id).and_then(|u| serde_json::to_value(u).ok()),
            device: serde_json::to_value(&d).unwrap_or_default(),
        })
        .collect())
}

async fn list_devices(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<DeviceView>>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    let views = device_views(&s.store).await?;
    Ok(Json(page(views, |v| v.device["id"].as_str().unwrap_or_default(), &q)?))
}

/// `GET /alerts` and `GET /drift`: the fleet's records in time order, narrowed by device or by
/// tags.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetQuery {
    pub device: Option<String>,
    pub site: Option<String>,
    pub manufacturer: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: Option<usize>,
    /// `next_after` of the previous page.
    pub after: Option<String>,
}

/// `GET /devices/{id}/telemetry`: one channel over a time range, downsampled for a chart.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryQuery {
    pub channel: String,
    /// Default: a day before `until_ms`.
    pub since_ms: Option<i64>,
    /// Default: now.
    pub until_ms: Option<i64>,
    /// At most this many points (1 to 2000, default 200).
    pub points: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct TelemetrySeries {
    pub device: String,
    pub channel: String,
    pub since_ms: i64,
    pub until_ms: i64,
    pub points: Vec<TelemetryPoint>,
}

async fn device_telemetry(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<TelemetryQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<TelemetrySeries>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    let points = q.points.unwrap_or(200);
    if !(1..=2000).contains(&points) {
        return Err(Problem::new(Code::InvalidRequest, "points must be 1 to 2000"));
    }
    let until_ms = q.until_ms.unwrap_or_else(now_ms);
    let since_ms = q.since_ms.unwrap_or(until_ms.saturating_sub(86_400_000));
    if since_ms >= until_ms {
        return Err(Problem::new(Code::InvalidRequest, "since_ms must be before until_ms"));
    }
    if !s.store.devices().await?.iter().any(|d| d.id == id) {
        return Err(StoreError::NoDevice(id).into());
    }
    let aggregates = s.store.aggregates(&id, since_ms, until_ms).await?;
    let points = downsample(&aggregates, channel_summary(&q.channel), since_ms, until_ms, points);
    Ok(Json(TelemetrySeries { device: id, channel: q.channel, since_ms, until_ms, points }))
}

/// The store filter for a query (asking one more than the page for `next_after`), and the page size.
async fn fleet_filter(s: &ApiState, q: &FleetQuery) -> ApiResult<(FleetFilter, usize)> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::new(Code::InvalidRequest, "limit must be 1 to 1000"));
    }
    let after = match &q.after {
        None => None,
        Some(a) => Some(
            parse_cursor(a)
                .ok_or_else(|| Problem::new(Code::InvalidRequest, "after: pass the next_after of the previous page"))?,
        ),
    };
    let devices = matching_devices(s, &q.device, &q.site, &q.manufacturer).await?;
    Ok((FleetFilter { devices, since_ms: q.since_ms, until_ms: q.until_ms, after, limit: limit + 1 }, limit))
}

/// The ids of the devices that are `device` and tagged `site` and `manufacturer` where given;
/// `None` when nothing narrows them.
async fn matching_devices(
    s: &ApiState,
    device: &Option<String>,
    site: &Option<String>,
    manufacturer: &Option<String>,
) -> ApiResult<Option<Vec<String>>> {
    if device.is_none() && site.is_none() && manufacturer.is_none() {
        return Ok(None);
    }
    let tag = |d: &Device, key: &str, want: &Option<String>| want.as_ref().is_none_or(|w| d.tags.get(key) == Some(w));
    let ids = s.store.devices().await?.into_iter().filter(|d| {
        device.as_ref().is_none_or(|id| d.id == *id) && tag(d, "site", site) && tag(d, "manufacturer", manufacturer)
    });
    Ok(Some(ids.map(|d| d.id).collect()))
}

/// `GET /alert-rates`: each device's alert rate as last judged, by device id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRateQuery {
    pub device: Option<String>,
    pub site: Option<String>,
    pub manufacturer: Option<String>,
    /// `unjudged`, `normal` or `elevated`.
    pub state: Option<String>,
    pub limit: Option<usize>,
    pub after: Option<String>,
}

async fn list_alert_rates(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<AlertRateQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<AlertRate>>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    if let Some(state) = q.state.as_deref().filter(|s| !["unjudged", "normal", "elevated"].contains(s)) {
        return Err(Problem::new(Code::InvalidRequest, format!("state `{state}`: use unjudged, normal or elevated")));
    }
    let devices: Option<std::collections::HashSet<String>> =
        matching_devices(&s, &q.device, &q.site, &q.manufacturer).await?.map(|d| d.into_iter().collect());
    let items = s
        .store
        .alert_rates()
        .await?
        .into_iter()
        .filter(|r| devices.as_ref().is_none_or(|d| d.contains(&r.device)))
        .filter(|r| q.state.as_ref().is_none_or(|want| r.state == *want))
        .collect();
    Ok(Json(page(items, |r| r.device.as_str(), &PageQuery { limit: q.limit, after: q.after })?))
}

/// A page of `items` fetched with one extra; `key` makes the cursor of an item.
fn fleet_page<T>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Page<T> {
    let more = items.len() > limit;
    items.truncate(limit);
    let next_after = if more { items.last().map(key) } else { None };
    Page { items, next_after }
}

async fn list_alerts(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<FleetQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<AlertSummary>>> {
    operator(&s, &headers, Role::Read).await?;
    let (filter, limit) = fleet_filter(&s, &query(q)?).await?;
    let items = s.store.alerts(&filter).await?;
    Ok(Json(fleet_page(items, limit, |a| format!("{}/{}/{}", a.ts_ms, a.device, a.seq))))
}

/// `GET /drift`: each sketch's drift against its reference, ordered by the interval's end.
async fn list_drift(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<FleetQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<DriftReport>>> {
    operator(&s, &headers, Role::Read).await?;
    let (filter, limit) = fleet_filter(&s, &query(q)?).await?;
    let items = s.store.drift_reports(&filter).await?;
    Ok(Json(fleet_page(items, limit, |r| format!("{}/{}/{}", r.end_ms, r.device, r.seq))))
}

/// `?after=SEQ&limit=&action=&subject=&since_ms=` over the audit trail.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub after: Option<u64>,
    pub limit: Option<usize>,
    /// One action, or every action under a prefix ending in `.` (e.g. `deployment.`).
    pub action: Option<String>,
    pub subject: Option<String>,
    pub since_ms: Option<i64>,
}

/// `GET /audit`: the audit trail in chain order, records as sealed (verify them with
/// `impeller audit verify`).
async fn list_audit(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<AuditRecord>>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::new(Code::InvalidRequest, "limit must be 1 to 1000"));
    }
    let filter = AuditFilter {
        after: q.after.unwrap_or(0),
        limit: limit + 1,
        action: q.action,
        subject: q.subject,
        since_ms: q.since_ms,
    };
    let items = s.store.audit_records(&filter).await?;
    Ok(Json(fleet_page(items, limit, |r| r.seq.to_string())))
}

/// `TS/DEVICE/SEQ` (device ids hold no `/`).
fn parse_cursor(text: &str) -> Option<(i64, String, u64)> {
    let mut parts = text.splitn(3, '/');
    let ts = parts.next()?.parse().ok()?;
    let device = parts.next()?.to_string();
    let seq = parts.next()?.parse().ok()?;
    Some((ts, device, seq))
}

async fn get_device(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceView>> {
    reader_or_device(&s, &headers, Some(&id)).await?;
    device_views(&s.store)
        .await?
        .into_iter()
        .find(|v| v.device["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| StoreError::NoDevice(id).into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub id: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub profile: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NewDeviceCredentials {
    pub id: String,
    /// Shown once; the hub keeps only a salted hash.
    pub secret: String,
}

async fn add_device(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<NewDevice>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<NewDeviceCredentials>)> {
    let token = operator(&s, &headers, Role::Admin).await?;
    let Json(d) = body?;
    let secret = s.store.add_device(&d.id, &d.tags, &d.profile, &token).await?;
    s.devices.refresh(&s.store).await?;
    s.reconcile.notify_one();
    Ok((StatusCode::CREATED, Json(NewDeviceCredentials { id: d.id, secret })))
}

async fn revoke_device(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let token = operator(&s, &headers, Role::Admin).await?;
    s.store.revoke_device(&id, &token).await?;
    s.devices.refresh(&s.store).await?;
    s.reconcile.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

/// A device's desired state and why.
#[derive(Debug, Serialize, Deserialize)]
pub struct DesiredView {
    pub desired: Option<deploy::Desired>,
    pub assignment: Option<serde_json::Value>,
}

async fn device_desired(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<DesiredView>> {
    reader_or_device(&s, &headers, Some(&id)).await?;
    let devices = s.store.devices().await?;
    let device: &Device = devices.iter().find(|d| d.id == id).ok_or_else(|| StoreError::NoDevice(id.clone()))?;
    let (assignment, rollback) = crate::deploy::Plan::load(&s.store).await?.assign(device);
    let desired = match &assignment {
        Some(a) => s.store.package(&a.package_sha256).await?.map(|p| crate::deploy::desired_message(a, &p, rollback)),
        None => None,
    };
    Ok(Json(DesiredView { desired, assignment: assignment.and_then(|a| serde_json::to_value(a).ok()) }))
}

async fn upload_package(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<PackageInfo>)> {
    let token = operator(&s, &headers, Role::Operator).await?;
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(Code::PayloadTooLarge, format!("packages are limited to {} bytes", s.max_package_bytes))
        }
        _ => Problem::new(Code::InvalidRequest, e.body_text()),
    })?;
    let limits = Limits { max_bytes: s.max_package_bytes, ..Limits::default() };
    let stored = crate::packages::accept(&s.store, &s.artifacts, &s.trust, limits, bytes.to_vec(), &token).await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

impl From<crate::packages::AcceptError> for Problem {
    fn from(e: crate::packages::AcceptError) -> Problem {
        use crate::packages::AcceptError;
        match e {
            AcceptError::NoTrust | AcceptError::Refused(_) => Problem::new(Code::PackageRefused, e.to_string()),
            AcceptError::Store(s) => s.into(),
            AcceptError::Write(error) => {
                tracing::error!(%error, "cannot store a package");
                Problem::new(Code::Internal, "the hub could not store the package; see its log")
            }
        }
    }
}

async fn list_packages(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<PackageInfo>>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    let mut all = s.store.packages().await?;
    all.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    Ok(Json(page(all, |p| &p.sha256, &q)?))
}

async fn known_package(s: &ApiState, sha256: &str) -> ApiResult<PackageInfo> {
    if !valid_sha256(sha256) {
        return Err(Problem::new(Code::InvalidRequest, "a package is named by its SHA-256: 64 lowercase hex digits"));
    }
    s.store
        .package(sha256)
        .await?
        .ok_or_else(|| StoreError::NotFound { kind: "package", id: sha256.to_string() }.into())
}

async fn get_package(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> ApiResult<Json<PackageInfo>> {
    operator(&s, &headers, Role::Read).await?;
    Ok(Json(known_package(&s, &sha256).await?))
}

/// The package file, with range requests (a device resumes an interrupted download) and its
/// hash as the entity tag, from the artifact store.
async fn package_content(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> ApiResult<Response> {
    reader_or_device(&s, &headers, None).await?;
    let p = known_package(&s, &sha256).await?;
    let missing = || {
        tracing::error!(package = %p.sha256, store = s.artifacts.url(), "a registered package is missing from the artifact store");
        Problem::new(Code::Internal, "the package file is missing on the hub; see its log")
    };
    let unreadable = |error: crate::artifacts::ArtifactError| {
        tracing::error!(%error, "cannot read a package from the artifact store");
        Problem::new(Code::Internal, "the package file cannot be read; see the hub's log")
    };
    let size = s.artifacts.size(&p.sha256).await.map_err(unreadable)?.ok_or_else(missing)?;
    let etag = format!("\"{}\"", p.sha256);
    // A range only while the file is the one the client has part of (If-Range), else whole.
    let same = headers.get(header::IF_RANGE).is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).filter(|_| same);
    let mut response = match crate::artifacts::byte_range(range, size) {
        ByteRange::Whole => {
            let bytes = s.artifacts.get(&p.sha256).await.map_err(unreadable)?.ok_or_else(missing)?;
            (StatusCode::OK, bytes).into_response()
        }
        ByteRange::Part(r) => {
            let content_range = format!("bytes {}-{}/{size}", r.start, r.end - 1);
            let bytes = s.artifacts.get_range(&p.sha256, r).await.map_err(unreadable)?;
            let mut resp = (StatusCode::PARTIAL_CONTENT, bytes).into_response();
            if let Ok(v) = HeaderValue::from_str(&content_range) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            resp
        }
        ByteRange::Unsatisfiable => {
            let mut resp = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, etag);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDeployment {
    pub name: String,
    pub package_sha256: String,
    /// e.g. `tags.site = 'north' AND profile = 'arm-small'`; `*` for every device.
    pub target_condition: String,
    #[serde(default)]
    pub priority: i64,
    /// Waves, soak and health gates; absent: every device at once.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

async fn create_deployment(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<NewDeployment>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<DeploymentInfo>)> {
    let token = operator(&s, &headers, Role::Operator).await?;
    let Json(d) = body?;
    if !impeller_core::wire::valid_device_id(&d.name) {
        return Err(Problem::new(Code::InvalidRequest, "name must be 1 to 64 of A-Z a-z 0-9 . _ -"));
    }
    Condition::parse(&d.target_condition).map_err(|e| Problem::new(Code::InvalidRequest, e.to_string()))?;
    if let Some(r) = &d.rollout {
        r.validate().map_err(|e| Problem::new(Code::InvalidRequest, e))?;
    }
    known_package(&s, &d.package_sha256).await?;
    let created_ms = now_ms();
    let info = DeploymentInfo {
        name: d.name,
        package_sha256: d.package_sha256,
        target_condition: d.target_condition,
        priority: d.priority,
        created_ms,
        stopped_ms: None,
        rollout: d.rollout,
        wave: 0,
        wave_started_ms: created_ms,
        completed_ms: None,
        aborted_ms: None,
        abort_reason: None,
    };
    s.store.add_deployment(&info, &token).await?;
    s.reconcile.notify_one();
    Ok((StatusCode::CREATED, Json(info)))
}

async fn list_deployments(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Page<DeploymentInfo>>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    let mut all = s.store.deployments().await?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(page(all, |d| &d.name, &q)?))
}

/// A deployment with where each of its devices is.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeploymentStatus {
    pub deployment: serde_json::Value,
    /// Waves and what the rollout waits for; absent for a deployment without a rollout.
    pub rollout: Option<serde_json::Value>,
    /// Devices by state: `pending` (told, nothing reported yet), then the reported states.
    pub counts: BTreeMap<String, usize>,
    pub devices: Vec<DeviceStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device: String,
    pub state: String,
    pub reason: Option<String>,
    pub running_release: Option<u64>,
}

async fn get_deployment(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<DeploymentStatus>> {
    operator(&s, &headers, Role::Read).await?;
    let plan = crate::deploy::Plan::load(&s.store).await?;
    let d = plan.info(&name).cloned().ok_or_else(|| StoreError::NotFound { kind: "deployment", id: name.clone() })?;
    // The devices told to run it, and those a staged rollout took (kept after an abort).
    let mut ids: Vec<String> =
        s.store.desired().await?.into_iter().filter(|x| x.deployment == name).map(|x| x.device).collect();
    ids.extend(plan.members.keys().filter(|(dep, _)| *dep == name).map(|(_, dev)| dev.clone()));
    ids.sort();
    ids.dedup();
    let mut devices = Vec::new();
    let mut counts = BTreeMap::new();
    for device in ids {
        let u = plan.report(&d, &device);
        let state = u.map_or("pending".to_string(), |u| u.state.clone());
        *counts.entry(state.clone()).or_insert(0) += 1;
        devices.push(DeviceStatus {
            device,
            state,
            reason: u.and_then(|u| u.reason.clone()),
            running_release: u.and_then(|u| u.running_release),
        });
    }
    let rollout = crate::deploy::rollout_status(&s.store, &plan, &d).await?.and_then(|r| serde_json::to_value(r).ok());
    Ok(Json(DeploymentStatus { deployment: serde_json::to_value(&d).unwrap_or_default(), rollout, counts, devices }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// Aborts a deployment by hand: it stops applying and the devices a staged rollout took are
/// rolled back, as when a health gate fails.
async fn abort_deployment(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let token = operator(&s, &headers, Role::Operator).await?;
    let body = body.map_err(|e| Problem::new(Code::InvalidRequest, e.body_text()))?;
    let req: AbortRequest = if body.is_empty() {
        AbortRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Problem::new(Code::InvalidRequest, format!("body: {e}")))?
    };
    let reason = req.reason.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| "aborted by hand".into());
    if reason.len() > 1000 {
        return Err(Problem::new(Code::InvalidRequest, "reason: at most 1000 bytes"));
    }
    s.store.abort_deployment(&name, &format!("{reason} ({token})"), &token).await?;
    s.reconcile.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

async fn stop_deployment(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let token = operator(&s, &headers, Role::Operator).await?;
    s.store.stop_deployment(&name, &token).await?;
    s.reconcile.notify_one();
    Ok(StatusCode::NO_CONTENT)
}
