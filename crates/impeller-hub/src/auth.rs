//! Who is calling the API. Operators present an API token (`Authorization: Bearer imp_…`) with a
//! role; devices present their own credentials (`Authorization: Basic`, user = device id,
//! password = its secret), the same ones they use with the broker.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::fleet::{Credentials, hash_secret, same};
use crate::store::{FleetStore, Store, StoreError};

/// An operator's role; each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything, changes nothing.
    Read,
    /// Uploads packages and manages deployments.
    Operator,
    /// Also provisions and revokes devices.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator { token_id: String, role: Role },
    Device(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `Authorization: Bearer <token>` or a device's Basic credentials")]
    Missing,
    #[error("the credentials are malformed, unknown, revoked or wrong")]
    Refused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks an `Authorization` header value.
pub async fn authenticate(header: Option<&str>, store: &Store, devices: &Credentials) -> Result<Caller, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    if let Some(token) = header.strip_prefix("Bearer ") {
        let (id, secret) =
            token.trim().strip_prefix("imp_").and_then(|t| t.split_once('_')).ok_or(AuthError::Refused)?;
        let Some(t) = store.token_secret(id).await? else { return Err(AuthError::Refused) };
        if t.revoked || !same(&t.hash, &hash_secret(&t.salt, secret)) {
            return Err(AuthError::Refused);
        }
        return Ok(Caller::Operator { token_id: id.to_string(), role: t.role });
    }
    if let Some(b64) = header.strip_prefix("Basic ") {
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| AuthError::Refused)?;
        let text = String::from_utf8(bytes).map_err(|_| AuthError::Refused)?;
        let (device, secret) = text.split_once(':').ok_or(AuthError::Refused)?;
        if devices.verify(device, device, secret) {
            return Ok(Caller::Device(device.to_string()));
        }
        return Err(AuthError::Refused);
    }
    Err(AuthError::Refused)
}

/// `Authorization: Basic …` for a device.
pub fn basic(device: &str, secret: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{device}:{secret}")))
}
