//! Accepting a package into the hub: signature and contents checked against the trusted keys,
//! the file stored durably as `{sha256}.pkg` in the artifact store, the record (with its lineage for the audit trail)
//! written. The API's upload and the hub's own pipeline runs both come through here.

use impeller_core::package::{self, Limits, PackageError, TrustStore};
use sha2::{Digest, Sha256};

use crate::store::{ArtifactStore, PackageInfo, Store, StoreError, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("the hub has no trusted signing keys: start it with --trusted-key FILE")]
    NoTrust,
    #[error("{code}: {error}", code = .0.code(), error = .0)]
    Refused(PackageError),
    #[error("storing the package: {0}")]
    Write(#[from] crate::artifacts::ArtifactError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn accept(
    store: &Store,
    artifacts: &crate::artifacts::Artifacts,
    trust: &TrustStore,
    limits: Limits,
    bytes: Vec<u8>,
    actor: &str,
) -> Result<PackageInfo, AcceptError> {
    if trust.is_empty() {
        return Err(AcceptError::NoTrust);
    }
    let pkg = package::open(&bytes, trust, limits).map_err(AcceptError::Refused)?;
    let sha256 = impeller_core::hex::encode(&Sha256::digest(&bytes));
    let size = bytes.len() as u64;
    artifacts.put(&sha256, bytes).await?;
    let m = &pkg.manifest;
    let info = PackageInfo {
        sha256,
        size,
        model: m.model.name.clone(),
        version: m.model.version.clone(),
        release: m.release,
        target: m.target.clone(),
        signed_by: pkg.signed_by.clone(),
        uploaded_ms: now_ms(),
    };
    // What it was built from, for the audit trail: the model file and the training data.
    let mut lineage: Vec<String> = m.artifacts.iter().map(|a| a.sha256.clone()).collect();
    lineage.push(pkg.model.training.data_sha256.clone());
    lineage.retain(|h| impeller_core::audit::is_sha256_hex(h));
    lineage.sort();
    lineage.dedup();
    store.put_package(&info, &lineage, actor).await?;
    Ok(store.package(&info.sha256).await?.unwrap_or(info))
}
