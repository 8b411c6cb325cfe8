//! The model registry: registered models, versions (pending → ready or failed) with lineage
//! and metrics, the packages built for each, aliases, and lineage both ways (which devices run
//! what a dataset built; which data built what a device runs). Every change is recorded in the
//! audit trail with the dataset, model and package hashes, so `impeller audit trace` can follow
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use impeller_core::audit::{AuditEvent, is_sha256_hex};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{ArtifactStore, Store, StoreError, now_ms};

/// Largest pipeline spec or gate report kept with a version, as JSON text.
const MAX_JSON_BYTES: usize = 256 << 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub model: String,
    pub version: u64,
    /// The release counter its packages carry; unique across the registry.
    pub release: u64,
    /// `pending` (being built), `ready` (passed its gates, packages stored) or `failed`.
    pub status: String,
    /// The pipeline run that built it: the same key for every rerun that would build the same.
    pub run_key: String,
    pub model_sha256: String,
    pub dataset_sha256: String,
    pub code_version: String,
    pub parent_version: Option<u64>,
    pub metrics: BTreeMap<String, f64>,
    pub spec: serde_json::Value,
    pub gates: serde_json::Value,
    pub reason: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub packages: Vec<VersionPackage>,
    pub aliases: Vec<String>,
    pub created_by: String,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionPackage {
    pub target: String,
    pub sha256: String,
}

/// A version as a pipeline registers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewModelVersion {
    pub run_key: String,
    pub model_sha256: String,
    pub dataset_sha256: String,
    pub code_version: String,
    #[serde(default)]
    pub parent_version: Option<u64>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// How a pipeline settles a version it registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionFinish {
    /// `ready` or `failed`.
    pub status: String,
    #[serde(default)]
    pub gates: serde_json::Value,
    #[serde(default)]
    pub packages: Vec<VersionPackage>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredModel {
    pub name: String,
    pub created_ms: i64,
    pub versions: u64,
    pub latest_version: Option<u64>,
    pub aliases: BTreeMap<String, u64>,
}

/// What a dataset built and where it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetLineage {
    pub dataset_sha256: String,
    pub versions: Vec<ModelVersion>,
    pub devices: Vec<RunningModel>,
}

/// A device and the registered model version it runs (from its latest update reports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningModel {
    pub device: String,
    pub package_sha256: String,
    pub model: Option<String>,
    pub version: Option<u64>,
    pub dataset_sha256: Option<String>,
    pub run_key: Option<String>,
    /// The report that made the package active: what the device sent after it, it scored with
    /// this package.
    pub since_seq: u64,
}

fn invalid(m: impl Into<String>) -> StoreError {
    StoreError::Invalid(m.into())
}

fn check_new(model: &str, v: &NewModelVersion) -> Result<(String, String), StoreError> {
    if !impeller_core::wire::valid_device_id(model) {
        return Err(invalid(format!("model name `{model}`: 1 to 64 of A-Z a-z 0-9 . _ -")));
    }
    for (field, h) in
        [("run_key", &v.run_key), ("model_sha256", &v.model_sha256), ("dataset_sha256", &v.dataset_sha256)]
    {
        if !is_sha256_hex(h) {
            return Err(invalid(format!("{field}: 64 lowercase hex digits")));
        }
    }
    if v.code_version.is_empty() || v.code_version.len() > 200 {
        return Err(invalid("code_version: 1 to 200 characters"));
    }
    if let Some((k, _)) = v.metrics.iter().find(|(k, m)| !m.is_finite() || k.is_empty() || k.len() > 100) {
        return Err(invalid(format!("metrics.{k}: a name of 1 to 100 characters and a finite number")));
    }
    if v.tags.len() > 100 || v.tags.iter().any(|(k, t)| k.is_empty() || k.len() > 100 || t.len() > 1000) {
        return Err(invalid("tags: at most 100, names of 1 to 100 characters, values up to 1000"));
    }
    let spec = serde_json::to_string(&v.spec).map_err(|e| invalid(e.to_string()))?;
    if spec.len() > MAX_JSON_BYTES {
        return Err(invalid(format!("spec: at most {MAX_JSON_BYTES} bytes of JSON")));
    }
    let tags = serde_json::to_string(&v.tags).map_err(|e| invalid(e.to_string()))?;
    Ok((spec, tags))
}

/// `SELECT {every column} FROM model_versions {rest}`, as a static string (sqlx wants one).
macro_rules! select_versions {
    ($rest:literal) => {
        concat!(
            "SELECT model, version, release, status, run_key, model_sha256, dataset_sha256, code_version, ",
            "parent_version, metrics, spec, gates, reason, tags, created_by, created_ms, finished_ms FROM model_versions ",
            $rest
        )
    };
}

/// The model registry: models, their versions with status, metrics and lineage, and aliases.
pub trait RegistryStore {
    /// Registers a new version of `model` (made if new) as `pending`, with the next version
    /// number and the next release from the registry's counter.
    fn create_version(
        &self,
        model: &str,
        v: &NewModelVersion,
        actor: &str,
    ) -> impl Future<Output = Result<ModelVersion, StoreError>> + Send;

    /// Settles a pending version as `ready` (with the packages built for it, each already
    /// uploaded and carrying this version's name, number and release) or `failed`.
    fn finish_version(
        &self,
        model: &str,
        version: u64,
        f: &VersionFinish,
        actor: &str,
    ) -> impl Future<Output = Result<ModelVersion, StoreError>> + Send;

    /// Points `alias` of `model` at a ready version.
    fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: u64,
        actor: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn remove_alias(
        &self,
        model: &str,
        alias: &str,
        actor: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The version `alias` points at.
    fn alias(&self, model: &str, alias: &str) -> impl Future<Output = Result<Option<ModelVersion>, StoreError>> + Send;

    fn models(&self) -> impl Future<Output = Result<Vec<RegisteredModel>, StoreError>> + Send;

    fn version(
        &self,
        model: &str,
        version: u64,
    ) -> impl Future<Output = Result<Option<ModelVersion>, StoreError>> + Send;

    /// Every version of `model`, newest first.
    fn versions(&self, model: &str) -> impl Future<Output = Result<Vec<ModelVersion>, StoreError>> + Send;

    /// The newest version that run `run_key` registered as ready, else its newest in any state.
    fn find_run(
        &self,
        model: &str,
        run_key: &str,
    ) -> impl Future<Output = Result<Option<ModelVersion>, StoreError>> + Send;

    /// Which versions a dataset built, and which devices run one of them now.
    fn dataset_lineage(&self, dataset_sha256: &str) -> impl Future<Output = Result<DatasetLineage, StoreError>> + Send;

    /// What one device runs and what built it.
    fn device_lineage(&self, device: &str) -> impl Future<Output = Result<Option<RunningModel>, StoreError>> + Send;

    /// Each device's running package (its newest `active` report for a package it has not
    /// since rolled back or refused), with the registered version it belongs to, if any.
    fn running_models(&self) -> impl Future<Output = Result<Vec<RunningModel>, StoreError>> + Send;
}

impl RegistryStore for Store {
    async fn create_version(&self, model: &str, v: &NewModelVersion, actor: &str) -> Result<ModelVersion, StoreError> {
        let (spec, tags) = check_new(model, v)?;
        let metrics = serde_json::to_string(&v.metrics).map_err(|e| invalid(e.to_string()))?;
        let now = now_ms();
        let version = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            // The counter row first, in one statement: it serialises concurrent registrations on
            // both backends before anything is read.
            let release: i64 = sqlx::query_scalar(
                "UPDATE registry_counter SET release = CASE \
                 WHEN release > (SELECT COALESCE(MAX(release), 0) FROM packages) THEN release + 1 \
                 ELSE (SELECT COALESCE(MAX(release), 0) FROM packages) + 1 END \
                 WHERE id = 1 RETURNING release",
            )
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO models (name, created_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(model)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if let Some(parent) = v.parent_version {
                let found: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM model_versions WHERE model = $1 AND version = $2")
                        .bind(model)
                        .bind(parent.min(i64::MAX as u64) as i64)
                        .fetch_optional(&mut *tx)
                        .await?;
                if found.is_none() {
                    return Err(invalid(format!("parent_version {parent}: no such version of `{model}`")));
                }
            }
            let version: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE model = $1")
                    .bind(model)
                    .fetch_one(&mut *tx)
                    .await?;
            sqlx::query(
                "INSERT INTO model_versions (model, version, release, status, run_key, model_sha256, dataset_sha256, \
                 code_version, parent_version, metrics, spec, gates, reason, tags, created_by, created_ms) \
                 VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10, '[]', NULL, $11, $12, $13)",
            )
            .bind(model)
            .bind(version)
            .bind(release)
            .bind(&v.run_key)
            .bind(&v.model_sha256)
            .bind(&v.dataset_sha256)
            .bind(&v.code_version)
            .bind(v.parent_version.map(|p| p as i64))
            .bind(&metrics)
            .bind(&spec)
            .bind(&tags)
            .bind(actor)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let event = AuditEvent::new(now, actor, "model.version.created", &format!("{model}@{version}"))
                .artifact(&v.dataset_sha256)
                .artifact(&v.model_sha256)
                .details(serde_json::json!({
                    "run_key": v.run_key, "release": release, "code_version": v.code_version,
                    "parent_version": v.parent_version, "metrics": v.metrics,
                }));
            append_audit!(tx, event event);
            tx.commit().await?;
            version as u64
        });
        self.version(model, version).await?.ok_or_else(|| StoreError::Corrupt(format!("{model}@{version} vanished")))
    }

    async fn finish_version(
        &self,
        model: &str,
        version: u64,
        f: &VersionFinish,
        actor: &str,
    ) -> Result<ModelVersion, StoreError> {
        if f.status != "ready" && f.status != "failed" {
            return Err(invalid(format!("status `{}`: ready or failed", f.status)));
        }
        let gates = serde_json::to_string(&f.gates).map_err(|e| invalid(e.to_string()))?;
        if gates.len() > MAX_JSON_BYTES || f.reason.as_ref().is_some_and(|r| r.len() > 10_000) {
            return Err(invalid("gates or reason too large"));
        }
        if f.status == "failed" && !f.packages.is_empty() {
            return Err(invalid("a failed version has no packages"));
        }
        let current = self
            .version(model, version)
            .await?
            .ok_or_else(|| StoreError::NotFound { kind: "model version", id: format!("{model}@{version}") })?;
        if current.status != "pending" {
            return Err(StoreError::Conflict(format!("{model}@{version} is already {}", current.status)));
        }
        let mut targets = BTreeSet::new();
        for p in &f.packages {
            let info = self
                .package(&p.sha256)
                .await?
                .ok_or_else(|| invalid(format!("package {} was not uploaded", p.sha256)))?;
            if info.model != model
                || info.version != version.to_string()
                || info.release != current.release
                || info.target != p.target
            {
                return Err(invalid(format!(
                    "package {} is {} version {} release {} for {}, not {model} version {version} release {} for {}",
                    p.sha256, info.model, info.version, info.release, info.target, current.release, p.target
                )));
            }
            if !targets.insert(p.target.clone()) {
                return Err(invalid(format!("two packages for target `{}`", p.target)));
            }
        }
        let now = now_ms();
        let mut event =
            AuditEvent::new(now, actor, &format!("model.version.{}", f.status), &format!("{model}@{version}"))
                .artifact(&current.dataset_sha256)
                .artifact(&current.model_sha256)
                .details(serde_json::json!({
                    "run_key": current.run_key, "release": current.release, "gates": f.gates, "reason": f.reason,
                    "targets": f.packages.iter().map(|p| &p.target).collect::<Vec<_>>(),
                }));
        for p in &f.packages {
            event = event.artifact(&p.sha256);
        }
        let changed = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "UPDATE model_versions SET status = $1, gates = $2, reason = $3, finished_ms = $4 \
                 WHERE model = $5 AND version = $6 AND status = 'pending'",
            )
            .bind(&f.status)
            .bind(&gates)
            .bind(&f.reason)
            .bind(now)
            .bind(model)
            .bind(version as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                for pkg in &f.packages {
                    sqlx::query(
                        "INSERT INTO version_packages (model, version, target, package_sha256) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(model)
                    .bind(version as i64)
                    .bind(&pkg.target)
                    .bind(&pkg.sha256)
                    .execute(&mut *tx)
                    .await?;
                }
                append_audit!(tx, event event);
            }
            tx.commit().await?;
            n
        });
        if changed == 0 {
            return Err(StoreError::Conflict(format!("{model}@{version} was settled meanwhile")));
        }
        self.version(model, version).await?.ok_or_else(|| StoreError::Corrupt(format!("{model}@{version} vanished")))
    }

    async fn set_alias(&self, model: &str, alias: &str, version: u64, actor: &str) -> Result<(), StoreError> {
        if !impeller_core::wire::valid_device_id(alias) {
            return Err(invalid(format!("alias `{alias}`: 1 to 64 of A-Z a-z 0-9 . _ -")));
        }
        let v = self
            .version(model, version)
            .await?
            .ok_or_else(|| StoreError::NotFound { kind: "model version", id: format!("{model}@{version}") })?;
        if v.status != "ready" {
            return Err(StoreError::Conflict(format!(
                "{model}@{version} is {}; only a ready version takes an alias",
                v.status
            )));
        }
        let previous = self.alias_version(model, alias).await?;
        if previous == Some(version) {
            return Ok(());
        }
        let now = now_ms();
        let event = AuditEvent::new(now, actor, "model.alias.set", &format!("{model}:{alias}"))
            .artifact(&v.model_sha256)
            .details(serde_json::json!({ "version": version, "previous": previous }));
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO model_aliases (model, alias, version, updated_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version, updated_ms = excluded.updated_ms",
            )
            .bind(model)
            .bind(alias)
            .bind(version as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            append_audit!(tx, event event);
            tx.commit().await?
        });
        Ok(())
    }

    async fn remove_alias(&self, model: &str, alias: &str, actor: &str) -> Result<(), StoreError> {
        let Some(previous) = self.alias_version(model, alias).await? else {
            return Err(StoreError::NotFound { kind: "alias", id: format!("{model}:{alias}") });
        };
        let event = AuditEvent::new(now_ms(), actor, "model.alias.removed", &format!("{model}:{alias}"))
            .details(serde_json::json!({ "previous": previous }));
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query("DELETE FROM model_aliases WHERE model = $1 AND alias = $2")
                .bind(model)
                .bind(alias)
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

    async fn alias(&self, model: &str, alias: &str) -> Result<Option<ModelVersion>, StoreError> {
        match self.alias_version(model, alias).await? {
            Some(v) => self.version(model, v).await,
            None => Ok(None),
        }
    }

    async fn models(&self) -> Result<Vec<RegisteredModel>, StoreError> {
        let rows: Vec<(String, i64, i64, Option<i64>)> = on_pool!(self, |p| sqlx::query_as(
            "SELECT m.name, m.created_ms, COUNT(v.version), MAX(v.version) FROM models m \
             LEFT JOIN model_versions v ON v.model = m.name GROUP BY m.name, m.created_ms ORDER BY m.name"
        )
        .fetch_all(p)
        .await?);
        let aliases: Vec<(String, String, i64)> =
            on_pool!(self, |p| sqlx::query_as("SELECT model, alias, version FROM model_aliases").fetch_all(p).await?);
        Ok(rows
            .into_iter()
            .map(|(name, created_ms, n, latest)| RegisteredModel {
                aliases: aliases.iter().filter(|a| a.0 == name).map(|a| (a.1.clone(), a.2 as u64)).collect(),
                name,
                created_ms,
                versions: n as u64,
                latest_version: latest.map(|l| l as u64),
            })
            .collect())
    }

    async fn version(&self, model: &str, version: u64) -> Result<Option<ModelVersion>, StoreError> {
        let sql = select_versions!("WHERE model = $1 AND version = $2");
        Ok(self.query_versions(sql, &[model], Some(version.min(i64::MAX as u64) as i64)).await?.pop())
    }

    async fn versions(&self, model: &str) -> Result<Vec<ModelVersion>, StoreError> {
        self.query_versions(select_versions!("WHERE model = $1 ORDER BY version DESC"), &[model], None).await
    }

    async fn find_run(&self, model: &str, run_key: &str) -> Result<Option<ModelVersion>, StoreError> {
        let sql = select_versions!(
            "WHERE model = $1 AND run_key = $2 ORDER BY CASE WHEN status = 'ready' THEN 0 ELSE 1 END, version DESC LIMIT 1"
        );
        Ok(self.query_versions(sql, &[model, run_key], None).await?.pop())
    }

    async fn dataset_lineage(&self, dataset_sha256: &str) -> Result<DatasetLineage, StoreError> {
        let sql = select_versions!("WHERE dataset_sha256 = $1 ORDER BY model, version");
        let versions = self.query_versions(sql, &[dataset_sha256], None).await?;
        let built: BTreeSet<&str> =
            versions.iter().flat_map(|v| v.packages.iter().map(|p| p.sha256.as_str())).collect();
        let devices =
            self.running_models().await?.into_iter().filter(|r| built.contains(r.package_sha256.as_str())).collect();
        Ok(DatasetLineage { dataset_sha256: dataset_sha256.to_string(), versions, devices })
    }

    async fn device_lineage(&self, device: &str) -> Result<Option<RunningModel>, StoreError> {
        Ok(self.running_models().await?.into_iter().find(|r| r.device == device))
    }

    async fn running_models(&self) -> Result<Vec<RunningModel>, StoreError> {
        let rows: Vec<(String, String, i64, String, i64)> = on_pool!(self, |p| sqlx::query_as(
            "SELECT device, package_sha256, seq, state, COALESCE(active_seq, seq) FROM update_reports \
             ORDER BY device, seq DESC"
        )
        .fetch_all(p)
        .await?);
        let packages: Vec<(String, String, i64)> =
            on_pool!(self, |p| sqlx::query_as("SELECT package_sha256, model, version FROM version_packages")
                .fetch_all(p)
                .await?);
        let mut out: Vec<RunningModel> = Vec::new();
        let mut withdrawn: BTreeSet<&str> = BTreeSet::new();
        let mut device: Option<&str> = None;
        for (d, sha, _, state, since) in &rows {
            if device != Some(d.as_str()) {
                device = Some(d);
                withdrawn.clear();
            }
            if out.last().is_some_and(|r| &r.device == d) {
                continue;
            }
            match state.as_str() {
                "rolled_back" | "failed" => {
                    withdrawn.insert(sha);
                }
                "active" if !withdrawn.contains(sha.as_str()) => out.push(RunningModel {
                    device: d.clone(),
                    package_sha256: sha.clone(),
                    model: None,
                    version: None,
                    dataset_sha256: None,
                    run_key: None,
                    since_seq: (*since).max(0) as u64,
                }),
                _ => {}
            }
        }
        for r in &mut out {
            if let Some((_, model, version)) = packages.iter().find(|p| p.0 == r.package_sha256) {
                if let Some(v) = self.version(model, *version as u64).await? {
                    r.dataset_sha256 = Some(v.dataset_sha256);
                    r.run_key = Some(v.run_key);
                }
                r.model = Some(model.clone());
                r.version = Some(*version as u64);
            }
        }
        Ok(out)
    }
}

impl Store {
    async fn alias_version(&self, model: &str, alias: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> =
            on_pool!(self, |p| sqlx::query_scalar("SELECT version FROM model_aliases WHERE model = $1 AND alias = $2")
                .bind(model)
                .bind(alias)
                .fetch_optional(p)
                .await?);
        Ok(v.map(|v| v as u64))
    }

    async fn query_versions(
        &self,
        sql: &'static str,
        args: &[&str],
        version: Option<i64>,
    ) -> Result<Vec<ModelVersion>, StoreError> {
        let mut out = on_pool!(self, |p| {
            let mut q = sqlx::query(sql);
            for a in args {
                q = q.bind(*a);
            }
            if let Some(v) = version {
                q = q.bind(v);
            }
            let mut out = Vec::new();
            for r in q.fetch_all(p).await? {
                let json = |i: usize| -> Result<serde_json::Value, StoreError> {
                    let text: String = r.try_get(i)?;
                    serde_json::from_str(&text)
                        .map_err(|e| StoreError::Corrupt(format!("model_versions column {i}: {e}")))
                };
                out.push(ModelVersion {
                    model: r.try_get(0)?,
                    version: r.try_get::<i64, _>(1)? as u64,
                    release: r.try_get::<i64, _>(2)? as u64,
                    status: r.try_get(3)?,
                    run_key: r.try_get(4)?,
                    model_sha256: r.try_get(5)?,
                    dataset_sha256: r.try_get(6)?,
                    code_version: r.try_get(7)?,
                    parent_version: r.try_get::<Option<i64>, _>(8)?.map(|v| v as u64),
                    metrics: serde_json::from_value(json(9)?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    spec: json(10)?,
                    gates: json(11)?,
                    reason: r.try_get(12)?,
                    tags: serde_json::from_value(json(13)?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    packages: Vec::new(),
                    aliases: Vec::new(),
                    created_by: r.try_get(14)?,
                    created_ms: r.try_get(15)?,
                    finished_ms: r.try_get(16)?,
                });
            }
            out
        });
        for v in &mut out {
            let (packages, aliases): (Vec<(String, String)>, Vec<(String,)>) = on_pool!(self, |p| {
                (
                sqlx::query_as("SELECT target, package_sha256 FROM version_packages WHERE model = $1 AND version = $2 ORDER BY target")
                    .bind(&v.model)
                    .bind(v.version as i64)
                    .fetch_all(p)
                    .await?,
                sqlx::query_as("SELECT alias FROM model_aliases WHERE model = $1 AND version = $2 ORDER BY alias")
                    .bind(&v.model)
                    .bind(v.version as i64)
                    .fetch_all(p)
                    .await?
            )
            });
            v.packages = packages.into_iter().map(|(target, sha256)| VersionPackage { target, sha256 }).collect();
            v.aliases = aliases.into_iter().map(|(a,)| a).collect();
        }
        Ok(out)
    }
}
