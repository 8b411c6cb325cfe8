//! `/api/v1/models/…` and `/api/v1/lineage/…`: the model registry. Pipelines register a version
//! (pending), upload its packages, then settle it as ready or failed; operators move aliases.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::{ApiResult, ApiState, Code, Page, PageQuery, Problem, operator, page, query};
use crate::auth::Role;
use crate::retrain::RetrainError;
use crate::store::{
    DatasetLineage, JobStore, ModelVersion, NewModelVersion, RegisteredModel, RegistryStore, RunningModel, StoreError,
    VersionFinish,
};
use impeller_core::retrain::RetrainPolicy;

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn version_number(text: &str) -> ApiResult<u64> {
    text.parse::<u64>()
        .ok()
        .filter(|v| (1..=i64::MAX as u64).contains(v))
        .ok_or_else(|| Problem::new(Code::InvalidRequest, format!("version `{text}`: a number from 1")))
}

fn not_found(kind: &'static str, id: String) -> Problem {
    StoreError::NotFound { kind, id }.into()
}

pub async fn list_models(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: QueryResult<PageQuery>,
) -> ApiResult<Json<Page<RegisteredModel>>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    Ok(Json(page(s.store.models().await?, |m| &m.name, &q)?))
}

pub async fn get_model(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<RegisteredModel>> {
    operator(&s, &headers, Role::Read).await?;
    let found = s.store.models().await?.into_iter().find(|m| m.name == name);
    Ok(Json(found.ok_or_else(|| not_found("model", name))?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionsQuery {
    pub limit: Option<usize>,
    pub after: Option<String>,
    /// Only the version this pipeline run registered.
    pub run_key: Option<String>,
}

/// Versions oldest first; `after` is a version number.
pub async fn list_versions(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: QueryResult<VersionsQuery>,
) -> ApiResult<Json<Page<ModelVersion>>> {
    operator(&s, &headers, Role::Read).await?;
    let q = query(q)?;
    let mut all = match &q.run_key {
        Some(key) => s.store.find_run(&name, key).await?.into_iter().collect(),
        None => s.store.versions(&name).await?,
    };
    all.reverse();
    let after = q.after.as_deref().map(version_number).transpose()?;
    let keyed: Vec<(String, ModelVersion)> = all.into_iter().map(|v| (format!("{:020}", v.version), v)).collect();
    let paging = PageQuery { limit: q.limit, after: after.map(|a| format!("{a:020}")) };
    let p = page(keyed, |(k, _)| k, &paging)?;
    Ok(Json(Page {
        next_after: p.items.last().filter(|_| p.next_after.is_some()).map(|(_, v)| v.version.to_string()),
        items: p.items.into_iter().map(|(_, v)| v).collect(),
    }))
}

pub async fn create_version(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<NewModelVersion>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ModelVersion>)> {
    let token = operator(&s, &headers, Role::Operator).await?;
    let Json(v) = body?;
    Ok((StatusCode::CREATED, Json(s.store.create_version(&name, &v, &token).await?)))
}

pub async fn get_version(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ModelVersion>> {
    operator(&s, &headers, Role::Read).await?;
    let v = version_number(&version)?;
    let found = s.store.version(&name, v).await?;
    Ok(Json(found.ok_or_else(|| not_found("model version", format!("{name}@{v}")))?))
}

pub async fn finish_version(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
    body: Result<Json<VersionFinish>, JsonRejection>,
) -> ApiResult<Json<ModelVersion>> {
    let token = operator(&s, &headers, Role::Operator).await?;
    let v = version_number(&version)?;
    let Json(f) = body?;
    Ok(Json(s.store.finish_version(&name, v, &f, &token).await?))
}

pub async fn get_alias(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((name, alias)): Path<(String, String)>,
) -> ApiResult<Json<ModelVersion>> {
    operator(&s, &headers, Role::Read).await?;
    let found = s.store.alias(&name, &alias).await?;
    Ok(Json(found.ok_or_else(|| not_found("alias", format!("{name}:{alias}")))?))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasTarget {
    pub version: u64,
}

pub async fn set_alias(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((name, alias)): Path<(String, String)>,
    body: Result<Json<AliasTarget>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let token = operator(&s, &headers, Role::Operator).await?;
    let Json(t) = body?;
    let v = version_number(&t.version.to_string())?;
    s.store.set_alias(&name, &alias, v, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_alias(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((name, alias)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let token = operator(&s, &headers, Role::Operator).await?;
    s.store.remove_alias(&name, &alias, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Which versions a dataset built and which devices run one of them.
pub async fn dataset_lineage(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(sha256): Path<String>,
) -> ApiResult<Json<DatasetLineage>> {
    operator(&s, &headers, Role::Read).await?;
    if !impeller_core::audit::is_sha256_hex(&sha256) {
        return Err(Problem::new(Code::InvalidRequest, "a dataset is named by its SHA-256: 64 lowercase hex digits"));
    }
    Ok(Json(s.store.dataset_lineage(&sha256).await?))
}

/// What a device runs and which data built it.
pub async fn device_lineage(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<RunningModel>> {
    operator(&s, &headers, Role::Read).await?;
    let found = s.store.device_lineage(&id).await?;
    Ok(Json(found.ok_or_else(|| not_found("running model for device", id))?))
}

/// A model's retraining policy: the policy and the spec it runs (TOML), the target profiles the
/// spec names (path → TOML).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    pub policy: String,
    pub spec: String,
    #[serde(default)]
    pub profiles: std::collections::BTreeMap<String, String>,
}

impl From<RetrainError> for Problem {
    fn from(e: RetrainError) -> Problem {
        match e {
            RetrainError::Store(s) => s.into(),
            RetrainError::Invalid(m) => Problem::new(Code::InvalidRequest, m),
            RetrainError::Conflict(m) => Problem::new(Code::Conflict, m),
        }
    }
}

/// Sets a model's retraining policy (replacing one, with a fresh state). The policy, the spec
/// (with any dataset: each retraining's snapshot replaces it) and every profile it names are
/// checked first.
pub async fn put_policy(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<PolicyRequest>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let token = operator(&s, &headers, Role::Operator).await?;
    let Json(p) = body?;
    if !impeller_core::wire::valid_device_id(&name) {
        return Err(Problem::new(Code::InvalidRequest, "model name: 1 to 64 of A-Z a-z 0-9 . _ -"));
    }
    let policy = RetrainPolicy::parse(&p.policy, "policy").map_err(|e| Problem::new(Code::InvalidRequest, e))?;
    if let Some(kept) = s.samples_kept.filter(|kept| crate::retention::window_exceeds(&policy, *kept)) {
        return Err(Problem::new(
            Code::InvalidRequest,
            format!(
                "policy: data.hours = {} asks for more than this hub keeps of raw samples ({} h, `[retention] \
                 samples_days`): a retraining would train on less than it says; shorten the window or keep samples longer",
                policy.data.hours,
                kept.as_secs_f64() / 3600.0
            ),
        ));
    }
    let spec_text = crate::retrain::with_dataset(&p.spec, &"0".repeat(64))?;
    let spec = impeller_pipeline::spec::PipelineSpec::parse(&spec_text, "spec")
        .map_err(|e| Problem::new(Code::InvalidRequest, e.to_string()))?;
    if spec.model != name {
        return Err(Problem::new(Code::InvalidRequest, format!("spec: model `{}` is not `{name}`", spec.model)));
    }
    for t in &spec.targets {
        let key = t.to_string_lossy();
        let text = p
            .profiles
            .get(key.as_ref())
            .ok_or_else(|| Problem::new(Code::InvalidRequest, format!("profiles: the spec names `{key}`; send it")))?;
        impeller_pipeline::profile::TargetProfile::parse(text, &key)
            .map_err(|e| Problem::new(Code::InvalidRequest, e.to_string()))?;
    }
    let record = crate::store::PolicyRecord {
        model: name,
        policy: p.policy,
        spec: p.spec,
        profiles: p.profiles,
        state: serde_json::to_value(crate::retrain::LoopState::default()).unwrap_or_default(),
        updated_by: token,
        updated_ms: crate::store::now_ms(),
    };
    s.store.put_policy(&record).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A policy as shown: the texts, and the loop's state.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    pub model: String,
    pub policy: String,
    pub spec: String,
    pub state: serde_json::Value,
    pub updated_by: String,
    pub updated_ms: i64,
}

impl From<crate::store::PolicyRecord> for PolicyView {
    fn from(r: crate::store::PolicyRecord) -> PolicyView {
        PolicyView {
            model: r.model,
            policy: r.policy,
            spec: r.spec,
            state: r.state,
            updated_by: r.updated_by,
            updated_ms: r.updated_ms,
        }
    }
}

pub async fn get_policy(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<PolicyView>> {
    operator(&s, &headers, Role::Read).await?;
    let r = s.store.policy(&name).await?.ok_or_else(|| not_found("retraining policy", name))?;
    Ok(Json(r.into()))
}

/// `GET /policies`: every model's retraining policy and the loop's state.
pub async fn list_policies(State(s): State<ApiState>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    operator(&s, &headers, Role::Read).await?;
    let items: Vec<PolicyView> = s.store.policies().await?.into_iter().map(PolicyView::from).collect();
    Ok(Json(serde_json::json!({ "items": items })))
}

pub async fn remove_policy(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let token = operator(&s, &headers, Role::Operator).await?;
    s.store.remove_policy(&name, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize)]
pub struct Approved {
    pub note: String,
}

/// A person's approval of the step a retraining awaits (promotion, or rollout).
pub async fn approve(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Approved>> {
    let token = operator(&s, &headers, Role::Operator).await?;
    Ok(Json(Approved { note: s.retrainer.approve(&name, &token).await? }))
}
