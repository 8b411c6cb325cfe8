//! Signed rollback directives: the only way a device installs a release that is not newer than
//! the newest it has installed. An operator signs "target T may go back to release R of model
//! M until time E"; without such a directive an older package is a rollback attack.
//!
//! File: `{"directive": {…}, "key_id": "…", "signature": "<hex>"}`, the signature covering the
//! canonical JSON of `directive` (fields in the order below, no whitespace).

use serde::{Deserialize, Serialize};

use super::{Manifest, PackageError, Signer25519, TrustStore};

pub const ROLLBACK_FORMAT: &str = "impeller.rollback";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackDirective {
    pub format: String,
    pub version: u32,
    pub model: String,
    pub release: u64,
    pub target: String,
    pub issued_ms: i64,
    pub expires_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRollback {
    pub directive: RollbackDirective,
    pub key_id: String,
    pub signature: String,
}

impl RollbackDirective {
    pub fn new(model: &str, release: u64, target: &str, issued_ms: i64, expires_ms: i64) -> Self {
        Self {
            format: ROLLBACK_FORMAT.into(),
            version: 1,
            model: model.into(),
            release,
            target: target.into(),
            issued_ms,
            expires_ms,
        }
    }

    fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn sign(self, signer: &Signer25519) -> SignedRollback {
        let signature = signer.sign_hex(&self.canonical());
        SignedRollback { directive: self, key_id: signer.key_id().to_string(), signature }
    }

    /// Whether this directive allows installing the package described by `m` at `now_ms`.
    pub fn allows(&self, m: &Manifest, now_ms: i64) -> Result<(), PackageError> {
        let refuse = |detail: String| PackageError::BadRollback { detail };
        if self.model != m.model.name || self.release != m.release || self.target != m.target {
            return Err(refuse(format!(
                "it allows {} release {} on {}, the package is {} release {} for {}",
                self.model, self.release, self.target, m.model.name, m.release, m.target
            )));
        }
        if now_ms > self.expires_ms {
            return Err(refuse(format!("it expired at {} ms", self.expires_ms)));
        }
        Ok(())
    }
}

impl SignedRollback {
    /// Parses untrusted bytes and checks the signature.
    pub fn verify(bytes: &[u8], trust: &TrustStore) -> Result<RollbackDirective, PackageError> {
        let refuse = |detail: String| PackageError::BadRollback { detail };
        let signed: SignedRollback = serde_json::from_slice(bytes).map_err(|e| refuse(e.to_string()))?;
        if signed.directive.format != ROLLBACK_FORMAT || signed.directive.version != 1 {
            return Err(refuse("not an impeller.rollback version 1 document".into()));
        }
        trust.verify(&signed.key_id, &signed.signature, &signed.directive.canonical())?;
        Ok(signed.directive)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}
