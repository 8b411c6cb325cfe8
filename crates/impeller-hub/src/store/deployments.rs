//! Deployments: staged rollouts and their waves, the desired state published per device, and
//! the devices' update reports.

use std::future::Future;

use impeller_core::audit::AuditEvent;
use impeller_core::rollout::Rollout;
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentInfo {
    pub name: String,
    pub package_sha256: String,
    pub target_condition: String,
    pub priority: i64,
    pub created_ms: i64,
    pub stopped_ms: Option<i64>,
    /// None: every device it applies to at once.
    pub rollout: Option<Rollout>,
    /// The wave reached (0-based) and when it started.
    pub wave: usize,
    pub wave_started_ms: i64,
    pub completed_ms: Option<i64>,
    pub aborted_ms: Option<i64>,
    pub abort_reason: Option<String>,
}

impl DeploymentInfo {
    /// A staged rollout still choosing which devices get it.
    pub fn rolling_out(&self) -> bool {
        self.rollout.is_some() && self.completed_ms.is_none() && self.applies()
    }

    /// Neither stopped nor aborted.
    pub fn applies(&self) -> bool {
        self.stopped_ms.is_none() && self.aborted_ms.is_none()
    }
}

/// A device a staged rollout has taken, in wave `wave` (0-based).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub deployment: String,
    pub device: String,
    pub wave: usize,
    pub added_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredInfo {
    pub device: String,
    pub deployment: String,
    pub package_sha256: String,
    pub reason: String,
    pub published_ms: i64,
}

/// A device's latest report on one deployment.
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
    /// The device's first report on this deployment, and its first `active` one.
    pub first_seq: u64,
    pub first_ts_ms: i64,
    pub active_seq: Option<u64>,
}

/// Deployments with their staged rollouts, the desired state they resolve to per device, and
/// the devices' update reports.
pub trait DeploymentStore {
    fn add_deployment(&self, d: &DeploymentInfo, actor: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stops a deployment: it no longer applies to any device.
    fn stop_deployment(&self, name: &str, actor: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves a staged rollout to wave `wave`, starting now.
    fn start_wave(&self, name: &str, wave: usize, actor: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Marks a staged rollout complete: it applies to every device it matches from now on.
    fn complete_rollout(&self, name: &str, actor: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Aborts a deployment: it no longer applies, and the devices that took it are rolled back.
    fn abort_deployment(
        &self,
        name: &str,
        reason: &str,
        actor: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn deployments(&self) -> impl Future<Output = Result<Vec<DeploymentInfo>, StoreError>> + Send;

    /// Adds devices to a rollout's wave, all or none (so nobody sees half a wave).
    fn add_members(
        &self,
        deployment: &str,
        devices: &[String],
        wave: usize,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn members(&self) -> impl Future<Output = Result<Vec<Member>, StoreError>> + Send;

    fn set_desired(&self, d: &DesiredInfo) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn clear_desired(&self, device: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn desired(&self) -> impl Future<Output = Result<Vec<DesiredInfo>, StoreError>> + Send;

    /// Each device's latest report, whichever deployment it was about.
    fn latest_updates(
        &self,
    ) -> impl Future<Output = Result<std::collections::HashMap<String, UpdateInfo>, StoreError>> + Send;

    fn updates(&self) -> impl Future<Output = Result<Vec<UpdateInfo>, StoreError>> + Send;
}

impl DeploymentStore for Store {
    async fn add_deployment(&self, d: &DeploymentInfo, actor: &str) -> Result<(), StoreError> {
        let sql = "INSERT INTO deployments \
                   (name, package_sha256, target_condition, priority, created_ms, rollout, wave, wave_started_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6, 0, $5) ON CONFLICT (name) DO NOTHING";
        let rollout = d.rollout.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default());
        let event = AuditEvent::new(d.created_ms, actor, "deployment.created", &d.name)
            .artifact(&d.package_sha256)
            .details(serde_json::json!({
                "target_condition": d.target_condition, "priority": d.priority, "rollout": d.rollout,
            }));
        let n = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(sql)
                .bind(&d.name)
                .bind(&d.package_sha256)
                .bind(&d.target_condition)
                .bind(d.priority)
                .bind(d.created_ms)
                .bind(&rollout)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                append_audit!(tx, event event);
            }
            tx.commit().await?;
            n
        });
        if n == 0 {
            return Err(StoreError::Exists { kind: "deployment", id: d.name.clone() });
        }
        Ok(())
    }

    async fn stop_deployment(&self, name: &str, actor: &str) -> Result<(), StoreError> {
        let sql = "UPDATE deployments SET stopped_ms = $1 WHERE name = $2 AND stopped_ms IS NULL";
        self.change_deployment(sql, name, None, AuditEvent::new(now_ms(), actor, "deployment.stopped", name)).await?;
        if !self.deployments().await?.iter().any(|d| d.name == name) {
            return Err(StoreError::NotFound { kind: "deployment", id: name.to_string() });
        }
        Ok(())
    }

    async fn start_wave(&self, name: &str, wave: usize, actor: &str) -> Result<(), StoreError> {
        let sql = "UPDATE deployments SET wave_started_ms = $1, wave = CAST($3 AS BIGINT) WHERE name = $2";
        let event = AuditEvent::new(now_ms(), actor, "deployment.wave_started", name)
            .details(serde_json::json!({ "wave": wave }));
        self.change_deployment(sql, name, Some(&wave.to_string()), event).await?;
        Ok(())
    }

    async fn complete_rollout(&self, name: &str, actor: &str) -> Result<(), StoreError> {
        let sql = "UPDATE deployments SET completed_ms = $1 WHERE name = $2 AND completed_ms IS NULL";
        let event = AuditEvent::new(now_ms(), actor, "deployment.completed", name);
        self.change_deployment(sql, name, None, event).await?;
        Ok(())
    }

    async fn abort_deployment(&self, name: &str, reason: &str, actor: &str) -> Result<(), StoreError> {
        let sql = "UPDATE deployments SET aborted_ms = $1, abort_reason = $3 \
                   WHERE name = $2 AND aborted_ms IS NULL AND stopped_ms IS NULL";
        let event = AuditEvent::new(now_ms(), actor, "deployment.aborted", name)
            .details(serde_json::json!({ "reason": reason }));
        let n = self.change_deployment(sql, name, Some(reason), event).await?;
        if n == 0 {
            return match self.deployments().await?.into_iter().find(|d| d.name == name) {
                None => Err(StoreError::NotFound { kind: "deployment", id: name.to_string() }),
                Some(_) => Err(StoreError::Exists { kind: "ended deployment", id: name.to_string() }),
            };
        }
        Ok(())
    }

    async fn deployments(&self) -> Result<Vec<DeploymentInfo>, StoreError> {
        let sql = "SELECT name, package_sha256, target_condition, priority, created_ms, stopped_ms, \
                   rollout, wave, wave_started_ms, completed_ms, aborted_ms, abort_reason \
                   FROM deployments ORDER BY created_ms, name";
        Ok(on_pool!(self, |p| {
            let mut out = Vec::new();
            for r in sqlx::query(sql).fetch_all(p).await? {
                let name: String = r.try_get(0)?;
                let rollout = match r.try_get::<Option<String>, _>(6)? {
                    None => None,
                    Some(json) => Some(serde_json::from_str(&json).map_err(|e| {
                        StoreError::Corrupt(format!("deployment {name} has an unreadable rollout: {e}"))
                    })?),
                };
                out.push(DeploymentInfo {
                    name,
                    package_sha256: r.try_get(1)?,
                    target_condition: r.try_get(2)?,
                    priority: r.try_get(3)?,
                    created_ms: r.try_get(4)?,
                    stopped_ms: r.try_get(5)?,
                    rollout,
                    wave: r.try_get::<i64, _>(7)?.max(0) as usize,
                    wave_started_ms: r.try_get::<Option<i64>, _>(8)?.unwrap_or(0),
                    completed_ms: r.try_get(9)?,
                    aborted_ms: r.try_get(10)?,
                    abort_reason: r.try_get(11)?,
                });
            }
            out
        }))
    }

    async fn add_members(&self, deployment: &str, devices: &[String], wave: usize) -> Result<(), StoreError> {
        let sql = "INSERT INTO rollout_members (deployment, device, wave, added_ms) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (deployment, device) DO NOTHING";
        let now = now_ms();
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            for device in devices {
                sqlx::query(sql).bind(deployment).bind(device).bind(wave as i64).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?
        });
        Ok(())
    }

    async fn members(&self) -> Result<Vec<Member>, StoreError> {
        let sql = "SELECT deployment, device, wave, added_ms FROM rollout_members ORDER BY deployment, wave, device";
        Ok(on_pool!(self, |p| {
            let mut out = Vec::new();
            for r in sqlx::query(sql).fetch_all(p).await? {
                out.push(Member {
                    deployment: r.try_get(0)?,
                    device: r.try_get(1)?,
                    wave: r.try_get::<i64, _>(2)?.max(0) as usize,
                    added_ms: r.try_get(3)?,
                });
            }
            out
        }))
    }

    async fn set_desired(&self, d: &DesiredInfo) -> Result<(), StoreError> {
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

    async fn clear_desired(&self, device: &str) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query("DELETE FROM desired WHERE device = $1")
            .bind(device)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    async fn desired(&self) -> Result<Vec<DesiredInfo>, StoreError> {
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

    async fn latest_updates(&self) -> Result<std::collections::HashMap<String, UpdateInfo>, StoreError> {
        let mut latest: std::collections::HashMap<String, UpdateInfo> = Default::default();
        for u in self.updates().await? {
            if latest.get(&u.device).is_none_or(|v| v.seq < u.seq) {
                latest.insert(u.device.clone(), u);
            }
        }
        Ok(latest)
    }

    async fn updates(&self) -> Result<Vec<UpdateInfo>, StoreError> {
        let sql = "SELECT device, seq, deployment, package_sha256, state, reason, running_release, ts_ms, \
                   first_seq, first_ts_ms, active_seq FROM update_reports ORDER BY device, deployment";
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
                    first_seq: r.try_get::<i64, _>(8)? as u64,
                    first_ts_ms: r.try_get(9)?,
                    active_seq: r.try_get::<Option<i64>, _>(10)?.map(|v| v as u64),
                });
            }
            out
        }))
    }
}

impl Store {
    /// Runs `sql` on one deployment (binds: now, name, then `text` if given) and, when it
    /// changed a row, records `event` with it.
    async fn change_deployment(
        &self,
        sql: &'static str,
        name: &str,
        text: Option<&str>,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        Ok(on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let mut q = sqlx::query(sql).bind(event.time_ms).bind(name);
            if let Some(t) = text {
                q = q.bind(t);
            }
            let n = q.execute(&mut *tx).await?.rows_affected();
            if n > 0 {
                append_audit!(tx, event event);
            }
            tx.commit().await?;
            n
        }))
    }
}

/// Upserts update reports inside an ingest transaction, one row per (device, deployment); a
/// report older (by seq) than the one stored is ignored, so redeliveries and reordering cannot
/// move a device backwards. `$9` is the seq when the report says `active`, else NULL.
pub(super) const UPSERT_UPDATE: &str = "INSERT INTO update_reports \
    (device, seq, deployment, package_sha256, state, reason, running_release, ts_ms, first_seq, first_ts_ms, active_seq) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $2, $8, $9) ON CONFLICT (device, deployment) DO UPDATE SET \
    seq = excluded.seq, package_sha256 = excluded.package_sha256, state = excluded.state, \
    reason = excluded.reason, running_release = excluded.running_release, ts_ms = excluded.ts_ms, \
    active_seq = COALESCE(update_reports.active_seq, excluded.active_seq) \
    WHERE update_reports.seq < excluded.seq";
