//! Devices and their credentials. A device's secret is shown once when it is provisioned; the
//! hub keeps only a salted SHA-256 of it. The broker checks connections against an in-memory
//! copy of the credentials, refreshed from the database every [`REFRESH`], so a device added or
//! revoked by another process (`impeller device …`) is seen within that time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::store::{FleetStore, Store, StoreError};

pub const REFRESH: Duration = Duration::from_secs(2);

/// A provisioned device as listed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Device {
    pub id: String,
    pub tags: BTreeMap<String, String>,
    pub profile: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// What the broker needs to check one device's connection.
#[derive(Debug, Clone)]
pub struct Credential {
    pub salt: String,
    pub hash: String,
    pub revoked: bool,
}

pub fn hash_secret(salt: &str, secret: &str) -> String {
    impeller_core::hex::encode(&Sha256::digest(format!("{salt}:{secret}").as_bytes()))
}

/// A fresh random value, hex: 32 bytes for secrets, 16 for salts.
pub fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(impeller_core::hex::encode(&b))
}

/// Equal-time comparison, so the time to refuse says nothing about how much was right.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The broker's view of the fleet's credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    map: Arc<RwLock<HashMap<String, Credential>>>,
    /// Bumped when a refresh takes a device's access away (revoked, removed, new secret), so
    /// live connections can check theirs at once.
    withdrawn: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Credentials {
    fn default() -> Self {
        Credentials { map: Arc::default(), withdrawn: Arc::new(tokio::sync::watch::Sender::new(0)) }
    }
}

impl Credentials {
    /// True while `device` is provisioned and not revoked.
    pub fn admits(&self, device: &str) -> bool {
        self.map.read().is_ok_and(|map| map.get(device).is_some_and(|c| !c.revoked))
    }

    /// Changes whenever a refresh withdraws some device's access.
    pub fn withdrawals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.withdrawn.subscribe()
    }

    /// True when `client_id` and `username` both name a provisioned, unrevoked device whose
    /// secret is `password`.
    pub fn verify(&self, client_id: &str, username: &str, password: &str) -> bool {
        if client_id != username {
            return false;
        }
        let Ok(map) = self.map.read() else { return false };
        map.get(username).is_some_and(|c| !c.revoked && same(&c.hash, &hash_secret(&c.salt, password)))
    }

    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let fresh = store.credentials().await?;
        let withdrawn = match self.map.write() {
            Ok(mut map) => {
                let withdrawn = map.iter().any(|(id, old)| {
                    !old.revoked && fresh.get(id).is_none_or(|new| new.revoked || new.hash != old.hash)
                });
                *map = fresh;
                withdrawn
            }
            Err(_) => false,
        };
        if withdrawn {
            self.withdrawn.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Refreshes every [`REFRESH`] until the task is dropped.
    pub async fn keep_fresh(self, store: Store) {
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tick.tick().await;
            if let Err(error) = self.refresh(&store).await {
                tracing::error!(%error, "cannot refresh device credentials; keeping the last ones");
            }
        }
    }
}

/// `site=north,manufacturer=acme` → map; keys and values non-empty, no duplicates.
pub fn parse_tags(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("tag `{pair}` must be key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() {
            return Err(format!("tag `{pair}` has an empty key or value"));
        }
        if tags.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("tag `{k}` is given twice"));
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_secret_of_an_unrevoked_device_passes() {
        let creds = Credentials::default();
        let salt = "00ff".to_string();
        let hash = hash_secret(&salt, "s3cret");
        creds
            .map
            .write()
            .unwrap()
            .insert("p1".into(), Credential { salt: salt.clone(), hash: hash.clone(), revoked: false });
        creds.map.write().unwrap().insert("p2".into(), Credential { salt, hash, revoked: true });
        assert!(creds.verify("p1", "p1", "s3cret"));
        assert!(!creds.verify("p1", "p1", "s3cret "));
        assert!(!creds.verify("p1", "p1", ""));
        assert!(!creds.verify("other", "p1", "s3cret"), "client id must be the device");
        assert!(!creds.verify("p2", "p2", "s3cret"), "revoked");
        assert!(!creds.verify("p3", "p3", "s3cret"), "unknown");
        assert!(creds.admits("p1") && !creds.admits("p2") && !creds.admits("p3"));
    }

    #[test]
    fn tags_parse_with_clear_errors() {
        let t = parse_tags("site=north, manufacturer=acme").unwrap();
        assert_eq!(t.get("manufacturer").map(String::as_str), Some("acme"));
        assert!(parse_tags("site").unwrap_err().contains("key=value"));
        assert!(parse_tags("a=1,a=2").unwrap_err().contains("twice"));
        assert!(parse_tags("=x").is_err());
        assert!(parse_tags("").unwrap().is_empty());
    }
}
