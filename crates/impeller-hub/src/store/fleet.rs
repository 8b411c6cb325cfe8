//! Devices and operators: provisioned devices with their credentials (only a salted hash of
//! each secret is kept), and API tokens with roles.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use impeller_core::audit::AuditEvent;
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};
use crate::auth::Role;
use crate::fleet::{Credential, Device, hash_secret, random_hex};

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

/// The fleet: devices, their credentials, and operators' API tokens.
pub trait FleetStore {
    /// Provisions a device; returns its secret, which is not stored and cannot be shown again.
    fn add_device(
        &self,
        id: &str,
        tags: &BTreeMap<String, String>,
        profile: &str,
        actor: &str,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Revokes a device: its connections are refused from the next credentials refresh.
    fn revoke_device(&self, id: &str, actor: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn devices(&self) -> impl Future<Output = Result<Vec<Device>, StoreError>> + Send;

    fn credentials(&self) -> impl Future<Output = Result<HashMap<String, Credential>, StoreError>> + Send;

    /// Creates an API token; returns it (`imp_{id}_{secret}`), which is shown once.
    fn add_token(
        &self,
        name: &str,
        role: Role,
        actor: &str,
    ) -> impl Future<Output = Result<(TokenInfo, String), StoreError>> + Send;

    fn token_secret(&self, id: &str) -> impl Future<Output = Result<Option<TokenSecret>, StoreError>> + Send;
}

impl FleetStore for Store {
    async fn add_device(
        &self,
        id: &str,
        tags: &BTreeMap<String, String>,
        profile: &str,
        actor: &str,
    ) -> Result<String, StoreError> {
        if !impeller_core::wire::valid_device_id(id) {
            return Err(StoreError::BadDeviceId(id.to_string()));
        }
        let secret = random_hex(32)?;
        let salt = random_hex(16)?;
        let tags_json = serde_json::to_string(tags).unwrap_or_else(|_| "{}".into());
        let sql = "INSERT INTO devices (id, tags, profile, secret_salt, secret_hash, created_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING";
        let now = now_ms();
        let event = AuditEvent::new(now, actor, "device.added", id)
            .details(serde_json::json!({ "tags": tags, "profile": profile }));
        let added = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(sql)
                .bind(id)
                .bind(&tags_json)
                .bind(profile)
                .bind(&salt)
                .bind(hash_secret(&salt, &secret))
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                append_audit!(tx, event event);
            }
            tx.commit().await?;
            n
        });
        if added == 0 {
            return Err(StoreError::DeviceExists(id.to_string()));
        }
        Ok(secret)
    }

    async fn revoke_device(&self, id: &str, actor: &str) -> Result<(), StoreError> {
        let sql = "UPDATE devices SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL";
        let now = now_ms();
        let event = AuditEvent::new(now, actor, "device.revoked", id);
        let n = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(sql).bind(now).bind(id).execute(&mut *tx).await?.rows_affected();
            if n > 0 {
                append_audit!(tx, event event);
            }
            tx.commit().await?;
            n
        });
        if n == 0 && !self.devices().await?.iter().any(|d| d.id == id) {
            return Err(StoreError::NoDevice(id.to_string()));
        }
        Ok(())
    }

    async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let sql = "SELECT id, tags, profile, created_ms, revoked_ms FROM devices ORDER BY id";
        macro_rules! run {
            ($pool:expr) => {{
                let mut out = Vec::new();
                for r in sqlx::query(sql).fetch_all($pool).await? {
                    out.push(Device {
                        id: r.try_get(0)?,
                        tags: serde_json::from_str(&r.try_get::<String, _>(1)?).unwrap_or_default(),
                        profile: r.try_get(2)?,
                        created_ms: r.try_get(3)?,
                        revoked_ms: r.try_get(4)?,
                    });
                }
                out
            }};
        }
        Ok(match self {
            Store::Sqlite { pool: p, .. } => run!(p),
            Store::Postgres(p) => run!(p),
        })
    }

    async fn credentials(&self) -> Result<HashMap<String, Credential>, StoreError> {
        let sql = "SELECT id, secret_salt, secret_hash, revoked_ms FROM devices";
        macro_rules! run {
            ($pool:expr) => {{
                let mut out = HashMap::new();
                for r in sqlx::query(sql).fetch_all($pool).await? {
                    let revoked: Option<i64> = r.try_get(3)?;
                    out.insert(
                        r.try_get::<String, _>(0)?,
                        Credential { salt: r.try_get(1)?, hash: r.try_get(2)?, revoked: revoked.is_some() },
                    );
                }
                out
            }};
        }
        Ok(match self {
            Store::Sqlite { pool: p, .. } => run!(p),
            Store::Postgres(p) => run!(p),
        })
    }

    async fn add_token(&self, name: &str, role: Role, actor: &str) -> Result<(TokenInfo, String), StoreError> {
        let id = random_hex(8)?;
        let secret = random_hex(32)?;
        let salt = random_hex(16)?;
        let created_ms = now_ms();
        let sql = "INSERT INTO api_tokens (id, name, role, secret_salt, secret_hash, created_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6)";
        let event = AuditEvent::new(created_ms, actor, "token.created", &format!("token:{id}"))
            .details(serde_json::json!({ "name": name, "role": role.as_str() }));
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            sqlx::query(sql)
                .bind(&id)
                .bind(name)
                .bind(role.as_str())
                .bind(&salt)
                .bind(hash_secret(&salt, &secret))
                .bind(created_ms)
                .execute(&mut *tx)
                .await?;
            append_audit!(tx, event event);
            tx.commit().await?
        });
        let token = format!("imp_{id}_{secret}");
        Ok((TokenInfo { id, name: name.to_string(), role, created_ms, revoked_ms: None }, token))
    }

    async fn token_secret(&self, id: &str) -> Result<Option<TokenSecret>, StoreError> {
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
}
