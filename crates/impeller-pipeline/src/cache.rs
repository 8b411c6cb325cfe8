//! The step cache: each step's output is kept under `cache/{step}/{key}/`, where the key is the
//! SHA-256 of the step's name, the code version and everything the step reads. A step whose key
//! is present is not run again; a step whose inputs changed gets a new key, and so does every
//! step that reads its output.
//!
//! Outputs are written into a temporary folder, fsynced and renamed into place, so a run cut off
//! midway leaves no half-written entry that a later run would trust.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{CODE_VERSION, PipelineError};

#[derive(Debug, Clone)]
pub struct StepCache {
    root: PathBuf,
}

/// What a cached step returned: its folder, and whether it was there already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub dir: PathBuf,
    pub hit: bool,
}

impl StepCache {
    pub fn new(root: impl Into<PathBuf>) -> StepCache {
        StepCache { root: root.into() }
    }

    /// The key of `step` over its inputs: SHA-256 of a domain tag, the step, the code version
    /// and each input with its length.
    pub fn key(step: &str, inputs: &[&[u8]]) -> String {
        let mut h = Sha256::new();
        h.update(b"impeller.step.v1\n");
        for part in [step.as_bytes(), CODE_VERSION.as_bytes()].into_iter().chain(inputs.iter().copied()) {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        impeller_core::hex::encode(&h.finalize())
    }

    /// The step's folder for `key`, running `make` to fill it first unless it is there.
    pub fn get_or_run(
        &self,
        step: &str,
        key: &str,
        make: impl FnOnce(&Path) -> Result<(), PipelineError>,
    ) -> Result<Cached, PipelineError> {
        let dir = self.root.join(step).join(key);
        if dir.is_dir() {
            return Ok(Cached { dir, hit: true });
        }
        let parent = self.root.join(step);
        std::fs::create_dir_all(&parent).map_err(|e| PipelineError::io(&parent, e))?;
        let tmp = parent.join(crate::temp_name(key));
        std::fs::create_dir_all(&tmp).map_err(|e| PipelineError::io(&tmp, e))?;
        if let Err(e) = make(&tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        crate::sync_dir(&tmp)?;
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another run of the same step finished first: its output is as good as ours.
            if !dir.is_dir() {
                return Err(PipelineError::io(&dir, e));
            }
        }
        crate::sync_dir(&parent)?;
        Ok(Cached { dir, hit: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_runs_once_per_key_and_a_failed_one_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let cache = StepCache::new(root.path());
        let key = StepCache::key("train", &[b"data", b"config"]);
        assert_ne!(key, StepCache::key("train", &[b"data", b"config2"]));
        assert_ne!(StepCache::key("train", &[b"ab", b"c"]), StepCache::key("train", &[b"a", b"bc"]));
        let mut runs = 0;
        for _ in 0..2 {
            let c = cache
                .get_or_run("train", &key, |dir| {
                    runs += 1;
                    crate::write_synced(&dir.join("out"), b"model")
                })
                .unwrap();
            assert_eq!(std::fs::read(c.dir.join("out")).unwrap(), b"model");
        }
        assert_eq!(runs, 1);
        let failed = cache.get_or_run("evaluate", &key, |dir| {
            crate::write_synced(&dir.join("half"), b"x")?;
            Err(PipelineError::Data("boom".into()))
        });
        assert!(failed.is_err());
        assert!(!root.path().join("evaluate").join(&key).exists());
        assert_eq!(std::fs::read_dir(root.path().join("evaluate")).unwrap().count(), 0, "no temporary folder left");
    }
}
