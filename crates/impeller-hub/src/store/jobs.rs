//! The hub's own jobs: each model's retraining policy and the state its loop keeps.

use std::future::Future;

use impeller_core::audit::AuditEvent;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, now_ms};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub model: String,
    /// The policy (TOML).
    pub policy: String,
    /// The pipeline spec each retraining runs (TOML), its data replaced by the snapshot.
    pub spec: String,
    /// The target profiles the spec names, by path, as TOML.
    pub profiles: std::collections::BTreeMap<String, String>,
    /// The loop's state (JSON): the policy's counters and the retraining under way.
    pub state: serde_json::Value,
    pub updated_by: String,
    pub updated_ms: i64,
}

/// Retraining policies per model and their loop's state.
pub trait JobStore {
    /// Sets (or replaces) a model's policy, resetting its state; audited.
    fn put_policy(&self, r: &PolicyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn policies(&self) -> impl Future<Output = Result<Vec<PolicyRecord>, StoreError>> + Send;

    fn policy(&self, model: &str) -> impl Future<Output = Result<Option<PolicyRecord>, StoreError>> + Send;

    /// Saves the loop's state of a model's policy.
    fn save_policy_state(
        &self,
        model: &str,
        state: &serde_json::Value,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn remove_policy(&self, model: &str, actor: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl JobStore for Store {
    async fn put_policy(&self, r: &PolicyRecord) -> Result<(), StoreError> {
        let profiles = serde_json::to_string(&r.profiles).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let state = serde_json::to_string(&r.state).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let event = AuditEvent::new(r.updated_ms, &r.updated_by, "retrain.policy.set", &r.model)
            .details(serde_json::json!({ "policy": r.policy }));
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO retrain_policies (model, policy, spec, profiles, state, updated_by, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (model) DO UPDATE SET policy = excluded.policy, \
                 spec = excluded.spec, profiles = excluded.profiles, state = excluded.state, \
                 updated_by = excluded.updated_by, updated_ms = excluded.updated_ms",
            )
            .bind(&r.model)
            .bind(&r.policy)
            .bind(&r.spec)
            .bind(&profiles)
            .bind(&state)
            .bind(&r.updated_by)
            .bind(r.updated_ms)
            .execute(&mut *tx)
            .await?;
            append_audit!(tx, event event);
            tx.commit().await?
        });
        Ok(())
    }

    async fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        type Row = (String, String, String, String, String, String, i64);
        let rows: Vec<Row> = on_pool!(self, |p| {
            sqlx::query_as(
            "SELECT model, policy, spec, profiles, state, updated_by, updated_ms FROM retrain_policies ORDER BY model"
        )
        .fetch_all(p)
        .await?
        });
        rows.into_iter()
            .map(|(model, policy, spec, profiles, state, updated_by, updated_ms)| {
                let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("retrain_policies: {e}"));
                Ok(PolicyRecord {
                    model,
                    policy,
                    spec,
                    profiles: serde_json::from_str(&profiles).map_err(corrupt)?,
                    state: serde_json::from_str(&state).map_err(corrupt)?,
                    updated_by,
                    updated_ms,
                })
            })
            .collect()
    }

    async fn policy(&self, model: &str) -> Result<Option<PolicyRecord>, StoreError> {
        Ok(self.policies().await?.into_iter().find(|p| p.model == model))
    }

    async fn save_policy_state(&self, model: &str, state: &serde_json::Value) -> Result<(), StoreError> {
        let state = serde_json::to_string(state).map_err(|e| StoreError::Invalid(e.to_string()))?;
        on_pool!(self, |p| sqlx::query("UPDATE retrain_policies SET state = $1 WHERE model = $2")
            .bind(&state)
            .bind(model)
            .execute(p)
            .await?
            .rows_affected());
        Ok(())
    }

    async fn remove_policy(&self, model: &str, actor: &str) -> Result<(), StoreError> {
        let event = AuditEvent::new(now_ms(), actor, "retrain.policy.removed", model);
        let n = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query("DELETE FROM retrain_policies WHERE model = $1")
                .bind(model)
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
            return Err(StoreError::NotFound { kind: "retraining policy", id: model.to_string() });
        }
        Ok(())
    }
}
