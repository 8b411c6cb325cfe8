//! Installed models: two slots (`models/slot-a.pkg`, `models/slot-b.pkg`) and a state file
//! (`state.json`) naming the active slot and the highest release ever installed. A new package
//! goes to the inactive slot; switching is one atomic rename of the state file, so a power cut
//! leaves either the old model or the new one, never half of each.

use std::path::{Path, PathBuf};

use impeller_core::package::{
    InstallContext, Limits, PackageError, RollbackDirective, TrustStore, VerifiedPackage, check_install, open,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn file(self) -> &'static str {
        match self {
            Slot::A => "slot-a.pkg",
            Slot::B => "slot-b.pkg",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub active: Option<Slot>,
    /// Highest release ever installed here: older ones are refused (rollback protection).
    pub highest_release: Option<u64>,
    /// Bumped on every install, so a running agent notices the change.
    pub generation: u64,
    /// SHA-256 of the active package file: what the hub's desired state names.
    #[serde(default)]
    pub active_sha256: Option<String>,
    /// SHA-256 of the package in the other slot: what a rollback returns to.
    #[serde(default)]
    pub previous_sha256: Option<String>,
    /// A health watch under way, so a restarted agent resumes it rather than let the new model
    /// run unwatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<PendingWatch>,
}

/// The health watch of the active package (`sha256`, from `deployment`) until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingWatch {
    pub deployment: String,
    pub sha256: String,
    pub until_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Refused(#[from] PackageError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: state file is damaged: {message}")]
    State { path: PathBuf, message: String },
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T, StoreError> {
    r.map_err(|source| StoreError::Io { path: path.to_path_buf(), source })
}

/// Writes a file atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    crate::outbox::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[derive(Debug)]
pub struct ModelStore {
    models: PathBuf,
    state_path: PathBuf,
    trust: TrustStore,
    limits: Limits,
}

impl ModelStore {
    pub fn new(data_dir: &Path, trust: TrustStore, max_package_bytes: u64) -> Self {
        Self {
            models: data_dir.join("models"),
            state_path: data_dir.join("state.json"),
            trust,
            limits: Limits { max_bytes: max_package_bytes, ..Limits::default() },
        }
    }

    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    pub fn state(&self) -> Result<State, StoreError> {
        match std::fs::read(&self.state_path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError::State { path: self.state_path.clone(), message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(StoreError::Io { path: self.state_path.clone(), source: e }),
        }
    }

    /// Verifies a package for this device as [`install`](Self::install) would, without
    /// installing it: signature, hashes, target, release, expiry, then its self-test.
    pub fn verify(&self, bytes: &[u8], target: &str, now_ms: i64) -> Result<VerifiedPackage, StoreError> {
        self.check(bytes, target, now_ms, None, &self.state()?)
    }

    fn check(
        &self,
        bytes: &[u8],
        target: &str,
        now_ms: i64,
        rollback: Option<&RollbackDirective>,
        state: &State,
    ) -> Result<VerifiedPackage, StoreError> {
        let pkg = open(bytes, &self.trust, self.limits)?;
        let ctx = InstallContext { now_ms, target, installed_release: state.highest_release, rollback };
        check_install(&pkg, &ctx)?;
        // A package whose model does not reproduce its own golden scores here must never
        // become the active model.
        pkg.selftest.run(&pkg.model).map_err(PackageError::from)?;
        Ok(pkg)
    }

    /// Verifies a package for this device and makes it the active model.
    pub fn install(
        &self,
        bytes: &[u8],
        target: &str,
        now_ms: i64,
        rollback: Option<&RollbackDirective>,
    ) -> Result<VerifiedPackage, StoreError> {
        let mut state = self.state()?;
        let pkg = self.check(bytes, target, now_ms, rollback, &state)?;
        let slot = state.active.map_or(Slot::A, Slot::other);
        io(&self.models, std::fs::create_dir_all(&self.models))?;
        let path = self.models.join(slot.file());
        io(&path, write_atomic(&path, bytes))?;
        state.active = Some(slot);
        state.previous_sha256 = state.active_sha256.take();
        state.highest_release =
            Some(state.highest_release.map_or(pkg.manifest.release, |h| h.max(pkg.manifest.release)));
        state.generation += 1;
        state.active_sha256 = Some(impeller_core::hex::encode(&Sha256::digest(bytes)));
        state.watch = None;
        self.write_state(&state)?;
        Ok(pkg)
    }

    /// Records (or, with None, ends) the health watch of the active package.
    pub fn set_watch(&self, watch: Option<PendingWatch>) -> Result<(), StoreError> {
        let mut state = self.state()?;
        if state.watch != watch {
            state.watch = watch;
            self.write_state(&state)?;
        }
        Ok(())
    }

    fn write_state(&self, state: &State) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        io(&self.state_path, write_atomic(&self.state_path, &bytes))
    }

    /// Makes the other slot active again: the model that ran before the last install. The
    /// highest release stays where it was, so the rolled-back release cannot come back.
    /// Returns false when there is no previous model.
    pub fn roll_back(&self) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        let Some(active) = state.active else { return Ok(false) };
        if state.previous_sha256.is_none() || !self.models.join(active.other().file()).exists() {
            return Ok(false);
        }
        state.active = Some(active.other());
        std::mem::swap(&mut state.active_sha256, &mut state.previous_sha256);
        state.generation += 1;
        state.watch = None;
        self.write_state(&state)?;
        Ok(true)
    }

    /// The active model, verified again (signature, hashes, self-test): a file changed on disk
    /// since installation is caught here. Expiry and release are not re-checked: a model that
    /// was valid when installed keeps running rather than leave the pump unwatched.
    pub fn load_active(&self) -> Result<Option<VerifiedPackage>, StoreError> {
        let Some(slot) = self.state()?.active else { return Ok(None) };
        self.load_slot(slot)
    }

    /// The model in the other slot (what a rollback returns to), verified the same way.
    pub fn load_previous(&self) -> Result<Option<VerifiedPackage>, StoreError> {
        let state = self.state()?;
        match (state.active, state.previous_sha256) {
            (Some(slot), Some(_)) => self.load_slot(slot.other()),
            _ => Ok(None),
        }
    }

    fn load_slot(&self, slot: Slot) -> Result<Option<VerifiedPackage>, StoreError> {
        let path = self.models.join(slot.file());
        let bytes = io(&path, std::fs::read(&path))?;
        let pkg = open(&bytes, &self.trust, self.limits)?;
        pkg.selftest.run(&pkg.model).map_err(PackageError::from)?;
        Ok(Some(pkg))
    }
}
