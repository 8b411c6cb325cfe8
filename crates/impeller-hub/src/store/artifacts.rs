//! Artifacts the hub keeps records of: signed model packages (the files are in the artifact
//! store) and dataset snapshots (Parquet files in the data folder).

use std::future::Future;

use impeller_core::audit::AuditEvent;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, StoreError};

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

/// A snapshot as recorded: the selection resolved (devices, channels, time range) and its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    pub sha256: String,
    pub selection: serde_json::Value,
    pub parts: u64,
    pub rows: u64,
    pub created_by: String,
    pub created_ms: i64,
}

/// Records of packages and datasets, each recorded once and audited.
pub trait ArtifactStore {
    /// Records an uploaded package (once per hash). `lineage`: the hashes it was built from
    /// (model file, training data), for the audit trail.
    fn put_package(
        &self,
        p: &PackageInfo,
        lineage: &[String],
        actor: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn packages(&self) -> impl Future<Output = Result<Vec<PackageInfo>, StoreError>> + Send;

    fn package(&self, sha256: &str) -> impl Future<Output = Result<Option<PackageInfo>, StoreError>> + Send;

    /// Records a snapshot (once per hash) in the same transaction as its audit record.
    fn put_dataset(&self, d: &DatasetRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn datasets(&self) -> impl Future<Output = Result<Vec<DatasetRecord>, StoreError>> + Send;
}

impl ArtifactStore for Store {
    async fn put_package(&self, p: &PackageInfo, lineage: &[String], actor: &str) -> Result<(), StoreError> {
        let sql = "INSERT INTO packages (sha256, size, model, version, release, target, signed_by, uploaded_ms) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (sha256) DO NOTHING";
        let mut event =
            AuditEvent::new(p.uploaded_ms, actor, "package.uploaded", &format!("{}@{}", p.model, p.version))
                .artifact(&p.sha256)
                .details(serde_json::json!({
                    "release": p.release, "target": p.target, "signed_by": p.signed_by, "size": p.size,
                }));
        for hash in lineage {
            event = event.artifact(hash);
        }
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(sql)
                .bind(&p.sha256)
                .bind(p.size as i64)
                .bind(&p.model)
                .bind(&p.version)
                .bind(p.release as i64)
                .bind(&p.target)
                .bind(&p.signed_by)
                .bind(p.uploaded_ms)
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

    async fn packages(&self) -> Result<Vec<PackageInfo>, StoreError> {
        self.query_packages(
            "SELECT sha256, size, model, version, release, target, signed_by, uploaded_ms \
                             FROM packages ORDER BY uploaded_ms, sha256",
            None,
        )
        .await
    }

    async fn package(&self, sha256: &str) -> Result<Option<PackageInfo>, StoreError> {
        let sql = "SELECT sha256, size, model, version, release, target, signed_by, uploaded_ms \
                   FROM packages WHERE sha256 = $1";
        Ok(self.query_packages(sql, Some(sha256)).await?.pop())
    }

    async fn put_dataset(&self, d: &DatasetRecord) -> Result<(), StoreError> {
        let selection = serde_json::to_string(&d.selection).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let event = AuditEvent::new(d.created_ms, &d.created_by, "dataset.created", &d.sha256)
            .artifact(&d.sha256)
            .details(serde_json::json!({ "selection": d.selection, "parts": d.parts, "rows": d.rows }));
        on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "INSERT INTO datasets (sha256, selection, parts, rows, created_by, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(&d.sha256)
            .bind(&selection)
            .bind(d.parts as i64)
            .bind(d.rows as i64)
            .bind(&d.created_by)
            .bind(d.created_ms)
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

    async fn datasets(&self) -> Result<Vec<DatasetRecord>, StoreError> {
        let rows: Vec<(String, String, i64, i64, String, i64)> = on_pool!(self, |p| {
            sqlx::query_as(
            "SELECT sha256, selection, parts, rows, created_by, created_ms FROM datasets ORDER BY created_ms, sha256"
        )
        .fetch_all(p)
        .await?
        });
        rows.into_iter()
            .map(|(sha256, selection, parts, rows, created_by, created_ms)| {
                Ok(DatasetRecord {
                    sha256,
                    selection: serde_json::from_str(&selection)
                        .map_err(|e| StoreError::Corrupt(format!("datasets.selection: {e}")))?,
                    parts: parts as u64,
                    rows: rows as u64,
                    created_by,
                    created_ms,
                })
            })
            .collect()
    }
}

impl Store {
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
}
