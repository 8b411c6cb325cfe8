//! Ed25519 keys: key ids, key files, and the set of public keys a device trusts.
//!
//! A key file is JSON: `{"format": "impeller.key", "version": 1, "algorithm": "ed25519",
//! "kind": "public" | "secret", "key_id": "…", "key": "<64 hex>"}`. A key id is the first 16 hex
//! digits of the SHA-256 of the 32-byte public key. Generating a key needs randomness, which is
//! I/O: the caller supplies the 32 secret bytes.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::PackageError;
use crate::hex;

pub const KEY_FORMAT: &str = "impeller.key";

/// The id of a public key: 16 hex digits of its SHA-256.
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Public,
    Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub format: String,
    pub version: u32,
    pub algorithm: String,
    pub kind: KeyKind,
    pub key_id: String,
    pub key: String,
}

/// A signing key with its id.
#[derive(Debug, Clone)]
pub struct Signer25519 {
    key: SigningKey,
    id: String,
}

impl Signer25519 {
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&secret);
        let id = key_id(&key.verifying_key());
        Self { key, id }
    }

    pub fn key_id(&self) -> &str {
        &self.id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The signature of `message`, 64 bytes as hex.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(&self.key.sign(message).to_bytes())
    }

    pub fn secret_file(&self) -> KeyFile {
        key_file(KeyKind::Secret, &self.id, self.key.as_bytes())
    }

    pub fn public_file(&self) -> KeyFile {
        key_file(KeyKind::Public, &self.id, self.key.verifying_key().as_bytes())
    }
}

fn key_file(kind: KeyKind, id: &str, key: &[u8; 32]) -> KeyFile {
    KeyFile {
        format: KEY_FORMAT.into(),
        version: 1,
        algorithm: "ed25519".into(),
        kind,
        key_id: id.to_string(),
        key: hex::encode(key),
    }
}

impl KeyFile {
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self, PackageError> {
        let bad = |m: String| PackageError::BadKey { origin: origin.to_string(), message: m };
        let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if file.format != KEY_FORMAT || file.version != 1 || file.algorithm != "ed25519" {
            return Err(bad(format!(
                "expected format {KEY_FORMAT} version 1 algorithm ed25519, found {} version {} algorithm {}",
                file.format, file.version, file.algorithm
            )));
        }
        hex::decode::<32>(&file.key).ok_or_else(|| bad("key must be 64 hex digits".into()))?;
        Ok(file)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// The signer of a secret key file; checks the stated key id.
    pub fn signer(&self, origin: &str) -> Result<Signer25519, PackageError> {
        let bad = |m: &str| PackageError::BadKey { origin: origin.to_string(), message: m.to_string() };
        if self.kind != KeyKind::Secret {
            return Err(bad("this is a public key; signing needs the secret key file"));
        }
        let secret = hex::decode::<32>(&self.key).ok_or_else(|| bad("key must be 64 hex digits"))?;
        let signer = Signer25519::from_secret(secret);
        if signer.key_id() != self.key_id {
            return Err(bad("key_id does not match the key"));
        }
        Ok(signer)
    }

    /// The public key of either kind of key file; checks the stated key id.
    pub fn verifying_key(&self, origin: &str) -> Result<VerifyingKey, PackageError> {
        let bad = |m: &str| PackageError::BadKey { origin: origin.to_string(), message: m.to_string() };
        let key = match self.kind {
            KeyKind::Secret => self.signer(origin)?.verifying_key(),
            KeyKind::Public => {
                let bytes = hex::decode::<32>(&self.key).ok_or_else(|| bad("key must be 64 hex digits"))?;
                VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid Ed25519 public key"))?
            }
        };
        if key_id(&key) != self.key_id {
            return Err(bad("key_id does not match the key"));
        }
        Ok(key)
    }
}

/// Public keys a device accepts signatures from, by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: BTreeMap<String, VerifyingKey>,
}

impl TrustStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, key: VerifyingKey) {
        self.keys.insert(key_id(&key), key);
    }

    /// Adds the public key in a key file's bytes (`impeller keys generate`); `origin` names the
    /// file in errors.
    pub fn add_key_file(&mut self, bytes: &[u8], origin: &str) -> Result<(), PackageError> {
        self.add(KeyFile::parse(bytes, origin)?.verifying_key(origin)?);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The ids of the keys held, in order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Verifies a hex signature by the key `key_id` over `message`.
    pub fn verify(&self, key_id: &str, signature_hex: &str, message: &[u8]) -> Result<(), PackageError> {
        let key = self.keys.get(key_id).ok_or_else(|| PackageError::UnknownKey { key_id: key_id.to_string() })?;
        let sig = hex::decode::<64>(signature_hex).ok_or(PackageError::BadSignature)?;
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig)).map_err(|_| PackageError::BadSignature)
    }
}
