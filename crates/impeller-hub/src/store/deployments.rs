//! Operators' API tokens, packages, deployments, published desired state and devices' update
//! reports.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};
use crate::auth::Role;
use crate::fleet::{hash_secret, random_hex};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// What the auth layer needs to check a token.
#[derive(Debug, Clone)]
pub struct TokenSecret {
    pub role: Role,
    pub salt: String,
    pub hash: String,
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackageInfo {
    pub sha256: String,
    pub size: u64,
    pub model: String,
    pub version: String,
    pub release: u64,
    pub target: String,
    pub signed_by: String,
    pub uploaded_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentInfo {
    pub name: String,
    pub package_sha256: String,
    pub target_condition: String,
    pub priority: i64,
    pub created_ms: i64,
    pub stopped_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredInfo {
    pub device: String,
    pub deployment: String,
    pub package_sha256: String,
    pub reason: String,
    pub published_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateInfo {
    pub device: String,
    pub seq: u64,
    pub deployment: String,
    pub package_sha256: String,
    pub state: String,
    pub reason: Option<String>,
    pub running_release: Option<u64>,
    pub ts_ms: i64,
}

/// Runs one statement on whichever pool the store has.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

impl Store {
    /// Creates an API token; returns it (`imp_{id}_{secret}`), which is shown once.
    pub async fn add_token(&self, name: &str, role: Role) -> Result<(TokenInfo, String), StoreError> {
        let id = random_hex(8)?;
        let secret = random_hex(32)?;
        let salt = random_hex(16)?;
        let created_ms = now_ms();
        let sql = "INSERT INTO api_tokens (id, name, role, secret_salt, secret_hash, created_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6)";
        on_pool!(self, |p| sqlx::query(sql)
            .bind(&id)
            .bind(name)
            .bind(role.as_str())
            .bind(&salt)
            .bind(hash_secret(&salt, &secret))
            .bind(created_ms)
            .execute(p)
            .await?
            .rows_affected());
        let token = format!("imp_{id}_{secret}");
        Ok((TokenInfo { id, name: name.to_string(), role, created_ms, revoked_ms: None }, token))
    }

    pub async fn token_secret(&self, id: &str) -> Result<Option<TokenSecret>, StoreError> {
        let sql = "SELECT role, secret_salt, secret_hash, revoked_ms FROM api_tokens WHERE id = $1";
        let row = on_pool!(self, |p| match sqlx::query(sql).bind(id).fetch_optional(p).await? {
            None => None,
            Some(r) => Some((
                r.try_get::<String, _>(0)?,
                r.try_get::<String, _>(1)?,
                r.try_get::<String, _>(2)?,
                r.try_get::<Option<i64>, _>(3)?,
            )),
        });
        let Some((role, salt, hash, revoked_ms)) = row else { return Ok(None) };
        Ok(Some(TokenSecret {
            role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("token {id} has role `{role}`")))?,
            salt,
            hash,
            revoked: revoked_ms.is_some(),
        }))
    }

    pub async fn put_package(&self, p: &PackageInfo) -> Result<(), StoreError> {
        let sql = "INSERT INTO packages (sha256, size, model, version, release, target, signed_by, uploaded_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (sha256) DO NOTHING";
        on_pool!(self, |pool| sqlx::query(sql)
            .bind(&p.sha256)
            .bind(p.size as i64)
            .bind(&p.model)
            .bind(&p.version)
            .bind(p.release as i64)
            .bind(&p.target)
            .bind(&p.signed_by)
            .bind(p.uploaded_ms)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    pub async fn packages(&self) -> Result<Vec<PackageInfo>, StoreError> {
        self.query_packages(
            "SELECT sha256, size, model, version, release, target, signed_by, uploaded_ms \
                             FROM packages ORDER BY uploaded_ms, sha256",
            None,
        )
        .await
    }

    pub async fn package(&self, sha256: &str) -> Result<Option<PackageInfo>, StoreError> {
        let sql = "SELECT sha256, size, model, version, release, target, signed_by, uploaded_ms \
                   FROM packages WHERE sha256 = $1";
        Ok(self.query_packages(sql, Some(sha256)).await?.pop())
    }

    async fn query_packages(&self, sql: &'static str, arg: Option<&str>) -> Result<Vec<PackageInfo>, StoreError> {
        Ok(on_pool!(self, |p| {
            let mut q = sqlx::query(sql);
            if let Some(a) = arg {
                q = q.bind(a);
            }
            let mut out = Vec::new();
            for r in q.fetch_all(p).await? {
                out.push(PackageInfo {
                    sha256: r.try_get(0)?,
                    size: r.try_get::<i64, _>(1)? as u64,
                    model: r.try_get(2)?,
                    version: r.try_get(3)?,
                    release: r.try_get::<i64, _>(4)? as u64,
                    target: r.try_get(5)?,
                    signed_by: r.try_get(6)?,
                    uploaded_ms: r.try_get(7)?,
                });
            }
            out
        }))
    }

    pub async fn add_deployment(&self, d: &DeploymentInfo) -> Result<(), StoreError> {
        let sql = "INSERT INTO deployments (name, package_sha256, target_condition, priority, created_ms) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING";
        let n = on_pool!(self, |p| sqlx::query(sql)
            .bind(&d.name)
            .bind(&d.package_sha256)
            .bind(&d.target_condition)
            .bind(d.priority)
            .bind(d.created_ms)
            .execute(p)
            .await?
            .rows_affected());
        if n == 0 {
            return Err(StoreError::Exists { kind: "deployment", id: d.name.clone() });
        }
        Ok(())
    }

    /// Stops a deployment: it no longer applies to any device.
    pub async fn stop_deployment(&self, name: &str) -> Result<(), StoreError> {
        let sql = "UPDATE deployments SET stopped_ms = $1 WHERE name = $2 AND stopped_ms IS NULL";
        on_pool!(self, |p| sqlx::query(sql).bind(now_ms()).bind(name).execute(p).await?.rows_affected());
        if !self.deployments().await?.iter().any(|d| d.name == name) {
            return Err(StoreError::NotFound { kind: "deployment", id: name.to_string() });
        }
        Ok(())
    }

    pub async fn deployments(&self) -> Result<Vec<DeploymentInfo>, StoreError> {
        let sql = "SELECT name, package_sha256, target_condition, priority, created_ms, stopped_ms \
                   FROM deployments ORDER BY created_ms, name";
        Ok(on_pool!(self, |p| {
            let mut out = Vec::new();
            for r in sqlx::query(sql).fetch_all(p).await? {
                out.push(DeploymentInfo {
                    name: r.try_get(0)?,
                    package_sha256: r.try_get(1)?,
                    target_condition: r.try_get(2)?,
                    priority: r.try_get(3)?,
                    created_ms: r.try_get(4)?,
                    stopped_ms: r.try_get(5)?,
                });
            }
            out
        }))
    }

    pub async fn set_desired(&self, d: &DesiredInfo) -> Result<(), StoreError> {
        let sql = "INSERT INTO desired (device, deployment, package_sha256, reason, published_ms) \
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device) DO UPDATE SET \
                   deployment = excluded.deployment, package_sha256 = excluded.package_sha256, \
                   reason = excluded.reason, published_ms = excluded.published_ms";
        on_pool!(self, |p| sqlx::query(sql)
            .bind(&d.device)
            .bind(&d.deployment)
            .bind(&d.package_sha256)
            .bind(&d.reason)
            .bind(d.published_ms)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    pub async fn clear_desired(&self, device: &str) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query("DELETE FROM desired WHERE device = $1")
            .bind(device)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    pub async fn desired(&self) -> Result<Vec<DesiredInfo>, StoreError> {
        let sql = "SELECT device, deployment, package_sha256, reason, published_ms FROM desired ORDER BY device";
        Ok(on_pool!(self, |p| {
            let mut out = Vec::new();
            for r in sqlx::query(sql).fetch_all(p).await? {
                out.push(DesiredInfo {
                    device: r.try_get(0)?,
                    deployment: r.try_get(1)?,
                    package_sha256: r.try_get(2)?,
                    reason: r.try_get(3)?,
                    published_ms: r.try_get(4)?,
                });
            }
            out
        }))
    }

    pub async fn updates(&self) -> Result<Vec<UpdateInfo>, StoreError> {
        let sql = "SELECT device, seq, deployment, package_sha256, state, reason, running_release, ts_ms \
                   FROM device_updates ORDER BY device";
        Ok(on_pool!(self, |p| {
            let mut out = Vec::new();
            for r in sqlx::query(sql).fetch_all(p).await? {
                out.push(UpdateInfo {
                    device: r.try_get(0)?,
                    seq: r.try_get::<i64, _>(1)? as u64,
                    deployment: r.try_get(2)?,
                    package_sha256: r.try_get(3)?,
                    state: r.try_get(4)?,
                    reason: r.try_get(5)?,
                    running_release: r.try_get::<Option<i64>, _>(6)?.map(|v| v as u64),
                    ts_ms: r.try_get(7)?,
                });
            }
            out
        }))
    }
}

/// Upserts update reports inside an ingest transaction; a report older (by seq) than the one
/// stored is ignored, so redeliveries and reordering cannot move a device backwards.
pub(super) const UPSERT_UPDATE: &str = "INSERT INTO device_updates \
    (device, seq, deployment, package_sha256, state, reason, running_release, ts_ms) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (device) DO UPDATE SET \
    seq = excluded.seq, deployment = excluded.deployment, package_sha256 = excluded.package_sha256, \
    state = excluded.state, reason = excluded.reason, running_release = excluded.running_release, \
    ts_ms = excluded.ts_ms WHERE device_updates.seq < excluded.seq";
