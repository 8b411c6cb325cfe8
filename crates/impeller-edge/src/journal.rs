//! The local alert journal: every alert as one JSON line in `alerts.jsonl`, fsynced, so an
//! operator on site can read alerts with `impeller-edge alerts` while the link is down. When
//! the file passes `MAX_BYTES` it is renamed to `alerts.jsonl.1` (replacing the previous one).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use impeller_core::wire::AlertBody;

const MAX_BYTES: u64 = 8 << 20;

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    pub fn new(data_dir: &Path) -> Self {
        Self { path: data_dir.join("alerts.jsonl") }
    }

    pub fn append(&self, alert: &AlertBody) -> std::io::Result<()> {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > MAX_BYTES) {
            std::fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
        }
        let mut line = serde_json::to_vec(alert).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new().create(true).append(true).open(&self.path)?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// The most recent alerts, oldest first; lines that do not parse (a torn last line after a
    /// power cut) are skipped.
    pub fn recent(&self, limit: usize) -> std::io::Result<Vec<AlertBody>> {
        let mut lines = Vec::new();
        for p in [self.path.with_extension("jsonl.1"), self.path.clone()] {
            match std::fs::read_to_string(&p) {
                Ok(text) => lines.extend(text.lines().filter_map(|l| serde_json::from_str::<AlertBody>(l).ok())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let skip = lines.len().saturating_sub(limit);
        Ok(lines.split_off(skip))
    }
}
