//! `/api/v1/datasets/…`, `/api/v1/incidents` and `/api/v1/runs`: snapshots of what the fleet
//! sent, as Parquet datasets a pipeline trains on; the labelled incidents that mark their
//! anomalous rows; and the pipeline runs the hub executes on them.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use impeller_pipeline::dataset::{Manifest, read_manifest};
use serde::{Deserialize, Serialize};

use super::{ApiResult, ApiState, Code, Page, PageQuery, Problem, operator, page, query};
use crate::auth::Role;
use crate::datasets::{SnapshotError, SnapshotRequest, snapshot};
use crate::runs::{RunRequest, RunView, SubmitError};
use crate::store::{ArtifactStore, DatasetRecord, Feedback, FeedbackStore, Incident, Precision, StoreError, Verdict};

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

impl From<SnapshotError> for Problem {
    fn from(e: SnapshotError) -> Problem {
        match e {
            SnapshotError::Invalid(m) => Problem::new(Code::InvalidRequest, m),
            SnapshotError::Store(s) => s.into(),
            SnapshotError::Write(detail) => {
                tracing::error!(%detail, "api: writing a dataset");
                Problem::new(Code::Internal, "the hub could not write the dataset; see its log")
            }
        }
    }
}

pub async fn create(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<SnapshotRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Manifest>)> {
    let token = operator(&s, &headers, Role::Operator).await?;
    let Json(req) = body?;
    let m = snapshot(&s.store, &s.artifacts, &s.datasets_dir, &req, &token).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

pub async fn list(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: QueryResult<PageQuery>,
) -> ApiResult<Json<Page<DatasetRecord>>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    let mut all = s.store.datasets().await?;
    all.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    Ok(Json(page(all, |d| &d.sha256, &q)?))
}

fn manifest(s: &ApiState, sha256: &str) -> ApiResult<Manifest> {
    if !impeller_core::audit::is_sha256_hex(sha256) {
        return Err(Problem::new(Code::InvalidRequest, "a dataset is named by its SHA-256: 64 lowercase hex digits"));
    }
    read_manifest(&s.datasets_dir, sha256)
        .map_err(|_| StoreError::NotFound { kind: "dataset", id: sha256.to_string() }.into())
}

pub async fn get(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> ApiResult<Json<Manifest>> {
    operator(&s, &headers, Role::Read).await?;
    Ok(Json(manifest(&s, &sha256)?))
}

/// One of the dataset's files: `dataset.json` or a part's Parquet file.
pub async fn file(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((sha256, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    operator(&s, &headers, Role::Read).await?;
    let m = manifest(&s, &sha256)?;
    let content_type = if name == "dataset.json" {
        "application/json"
    } else if m.parts.iter().any(|p| p.file == name) {
        "application/vnd.apache.parquet"
    } else {
        return Err(StoreError::NotFound { kind: "dataset file", id: format!("{sha256}/{name}") }.into());
    };
    let bytes = tokio::fs::read(s.datasets_dir.join(&sha256).join(&name)).await.map_err(|e| {
        tracing::error!(error = %e, dataset = %sha256, file = %name, "api: reading a dataset file");
        Problem::new(Code::Internal, "the hub could not read the file; see its log")
    })?;
    let mut r = Body::from(bytes).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(r)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewIncident {
    pub device: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub kind: String,
    #[serde(default)]
    pub note: String,
}

pub async fn add_incident(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<NewIncident>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Incident>)> {
    let token = operator(&s, &headers, Role::Operator).await?;
    let Json(n) = body?;
    let i = Incident {
        id: 0,
        device: n.device,
        start_ms: n.start_ms,
        end_ms: n.end_ms,
        kind: n.kind,
        note: n.note,
        created_by: String::new(),
        created_ms: 0,
    };
    Ok((StatusCode::CREATED, Json(s.store.add_incident(&i, &token).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    pub device: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Incidents {
    pub items: Vec<Incident>,
}

pub async fn list_incidents(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: QueryResult<IncidentQuery>,
) -> ApiResult<Json<Incidents>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    let items =
        s.store.incidents(q.device.as_deref(), q.since_ms.unwrap_or(i64::MIN), q.until_ms.unwrap_or(i64::MAX)).await?;
    Ok(Json(Incidents { items }))
}

impl From<SubmitError> for Problem {
    fn from(e: SubmitError) -> Problem {
        match e {
            SubmitError::Invalid(m) => Problem::new(Code::InvalidRequest, m),
            SubmitError::NoKey | SubmitError::Stopping => Problem::new(Code::Conflict, e.to_string()),
            SubmitError::Io(detail) => {
                tracing::error!(%detail, "api: writing a run's inputs");
                Problem::new(Code::Internal, "the hub could not write the run's inputs; see its log")
            }
        }
    }
}

/// Queues a pipeline run on the hub; its state and steps at `GET /runs/{id}`.
pub async fn submit_run(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<RunRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<RunView>)> {
    let token = operator(&s, &headers, Role::Operator).await?;
    let Json(req) = body?;
    Ok((StatusCode::ACCEPTED, Json(s.runs.submit(&req, &token)?)))
}

#[derive(Debug, Serialize)]
pub struct Runs {
    pub items: Vec<RunView>,
}

/// Runs submitted since the hub started, newest first.
pub async fn list_runs(State(s): State<ApiState>, headers: HeaderMap) -> ApiResult<Json<Runs>> {
    operator(&s, &headers, Role::Read).await?;
    Ok(Json(Runs { items: s.runs.list() }))
}

pub async fn get_run(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    operator(&s, &headers, Role::Read).await?;
    Ok(Json(s.runs.get(&id).ok_or_else(|| Problem::from(StoreError::NotFound { kind: "run", id }))?))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    pub verdict: Verdict,
    #[serde(default)]
    pub work_order: String,
    #[serde(default)]
    pub note: String,
}

/// A technician's verdict on an alert; a confirmed fault labels later snapshots.
pub async fn alert_feedback(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((device, seq)): Path<(String, String)>,
    body: Result<Json<FeedbackRequest>, JsonRejection>,
) -> ApiResult<Json<Feedback>> {
    let token = operator(&s, &headers, Role::Operator).await?;
    let seq: u64 = seq
        .parse()
        .ok()
        .filter(|v| *v <= i64::MAX as u64)
        .ok_or_else(|| Problem::new(Code::InvalidRequest, format!("seq `{seq}`: a sequence number")))?;
    let Json(f) = body?;
    Ok(Json(s.store.put_feedback(&device, seq, f.verdict, &f.work_order, &f.note, &token).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecisionQuery {
    pub model: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PrecisionList {
    pub items: Vec<Precision>,
}

/// Precision per model version from the verdicts given.
pub async fn precision(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: QueryResult<PrecisionQuery>,
) -> ApiResult<Json<PrecisionList>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    Ok(Json(PrecisionList { items: s.store.precision(q.model.as_deref()).await? }))
}
