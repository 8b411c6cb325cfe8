//! The audit trail as stored: records appended by [`append_audit!`] inside the transaction of
//! the action they record, read back in chain order, and signed checkpoints.

use std::future::Future;

use impeller_core::audit::{self, AuditEvent, AuditRecord};
use impeller_core::package::Signer25519;
use sqlx::Row;

use super::{Store, StoreError, now_ms};

/// Which records to read: after a sequence number, optionally one action (or every action
/// under a prefix ending in `.`), one subject, or from a time on.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub after: u64,
    pub limit: usize,
    pub action: Option<String>,
    pub subject: Option<String>,
    pub since_ms: Option<i64>,
}

/// The hash-chained audit trail: appends, signed checkpoints, reads in chain order. Other
/// stores append their own records inside their transactions.
pub trait AuditStore {
    /// Appends one event in a transaction of its own (for events with no other write).
    fn audit(&self, event: AuditEvent) -> impl Future<Output = Result<AuditRecord, StoreError>> + Send;

    /// Signs the chain as it stands, as a checkpoint record; nothing when there is nothing
    /// new since the last checkpoint.
    fn audit_checkpoint(
        &self,
        signer: &Signer25519,
    ) -> impl Future<Output = Result<Option<AuditRecord>, StoreError>> + Send;

    /// Records in chain order, at most `filter.limit`. A stored field that no longer parses is
    /// returned as it is (artifacts as one unreadable string, details as a string), so that
    /// verification reports the record instead of the read failing.
    /// The sequence number of the newest record (0 for an empty trail).
    fn audit_head(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    fn audit_records(&self, filter: &AuditFilter) -> impl Future<Output = Result<Vec<AuditRecord>, StoreError>> + Send;
}

impl AuditStore for Store {
    async fn audit(&self, event: AuditEvent) -> Result<AuditRecord, StoreError> {
        Ok(on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let record = append_audit!(tx, event event);
            tx.commit().await?;
            record
        }))
    }

    async fn audit_checkpoint(&self, signer: &Signer25519) -> Result<Option<AuditRecord>, StoreError> {
        let last: Option<String> =
            on_pool!(self, |p| sqlx::query_scalar("SELECT action FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(p)
                .await?);
        if last.is_none_or(|a| a == audit::CHECKPOINT) {
            return Ok(None);
        }
        let now = now_ms();
        Ok(Some(on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let record = append_audit!(tx, |seq: u64, prev: &str| audit::checkpoint(signer, seq - 1, prev, now));
            tx.commit().await?;
            record
        })))
    }

    async fn audit_head(&self) -> Result<u64, StoreError> {
        let seq: i64 =
            on_pool!(self, |p| sqlx::query_scalar("SELECT seq FROM audit_head WHERE id = 1").fetch_one(p).await?);
        Ok(seq.max(0) as u64)
    }

    async fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let (action, prefix) = match filter.action.as_deref() {
            Some(a) if a.ends_with('.') => (None, Some(a.to_string())),
            Some(a) => (Some(a.to_string()), None),
            None => (None, None),
        };
        let sql = "SELECT seq, time_ms, actor, action, subject, artifacts, details, prev, hash FROM audit_log \
                   WHERE seq > $1 AND ($2 IS NULL OR action = $2) AND ($3 IS NULL OR substr(action, 1, length($3)) = $3) \
                   AND ($4 IS NULL OR subject = $4) AND time_ms >= $5 ORDER BY seq LIMIT $6";
        let after = filter.after.min(i64::MAX as u64) as i64;
        let limit = filter.limit.min(i64::MAX as usize) as i64;
        let rows = on_pool!(self, |p| {
            let mut out = Vec::new();
            for r in sqlx::query(sql)
                .bind(after)
                .bind(&action)
                .bind(&prefix)
                .bind(&filter.subject)
                .bind(filter.since_ms.unwrap_or(i64::MIN))
                .bind(limit)
                .fetch_all(p)
                .await?
            {
                let artifacts: String = r.try_get(5)?;
                let details: String = r.try_get(6)?;
                out.push(AuditRecord {
                    seq: r.try_get::<i64, _>(0)? as u64,
                    time_ms: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    action: r.try_get(3)?,
                    subject: r.try_get(4)?,
                    artifacts: serde_json::from_str(&artifacts).unwrap_or_else(|_| vec![artifacts.clone()]),
                    details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
                    prev: r.try_get(7)?,
                    hash: r.try_get(8)?,
                });
            }
            out
        });
        Ok(rows)
    }
}
