//! The acknowledgement ledger: the highest sequence number up to which the hub has confirmed it
//! stored everything. An append-only file of checksummed 16-byte entries
//! (`acked:u64 crc:u32 zero:u32`, little-endian); the last valid entry wins, a torn tail is
//! ignored. Rewritten from scratch (write, fsync, rename) when it grows past `MAX_BYTES`.
//!
//! Losing the newest entries (power loss before a sync) is safe: the agent then re-sends a few
//! records the hub already has, and the hub stores each (device, seq) once. So the ledger is
//! fsynced at most every [`SYNC_EVERY`], not with every sync of the segments: on an edge device's
//! flash that nearly halves the fsyncs of a steady stream.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest an acknowledgement waits for its fsync.
pub const SYNC_EVERY: Duration = Duration::from_secs(10);

const ENTRY: usize = 16;
const MAX_BYTES: u64 = 64 * 1024;

#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
    acked: u64,
    bytes: u64,
    dirty: bool,
    synced_at: Instant,
}

fn entry(acked: u64) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..8].copy_from_slice(&acked.to_le_bytes());
    let crc = crc32fast::hash(&e[..8]);
    e[8..12].copy_from_slice(&crc.to_le_bytes());
    e
}

impl Ledger {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(path)?.read_to_end(&mut bytes)?;
        }
        let acked = bytes
            .chunks_exact(ENTRY)
            .filter(|e| u32::from_le_bytes([e[8], e[9], e[10], e[11]]) == crc32fast::hash(&e[..8]))
            .map(|e| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&e[..8]);
                u64::from_le_bytes(b)
            })
            .max()
            .unwrap_or(0);
        let mut ledger = Self {
            path: path.to_path_buf(),
            file: OpenOptions::new().create(true).append(true).open(path)?,
            acked,
            bytes: bytes.len() as u64,
            dirty: false,
            synced_at: Instant::now(),
        };
        if bytes.len() % ENTRY != 0 || ledger.bytes > MAX_BYTES {
            ledger.rewrite()?;
        }
        Ok(ledger)
    }

    /// Everything up to and including this sequence number is acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Records a new acknowledgement; older ones are ignored. Not synced: see the module doc.
    pub fn advance(&mut self, acked: u64) -> std::io::Result<bool> {
        if acked <= self.acked {
            return Ok(false);
        }
        self.acked = acked;
        self.file.write_all(&entry(acked))?;
        self.bytes += ENTRY as u64;
        self.dirty = true;
        if self.bytes > MAX_BYTES {
            self.rewrite()?;
        }
        Ok(true)
    }

    /// Fsyncs what was written since the last fsync if that was [`SYNC_EVERY`] before `now` or
    /// longer; says whether it did.
    pub fn sync_due(&mut self, now: Instant) -> std::io::Result<bool> {
        if !self.dirty || now.saturating_duration_since(self.synced_at) < SYNC_EVERY {
            return Ok(false);
        }
        self.file.sync_data()?;
        self.dirty = false;
        self.synced_at = now;
        Ok(true)
    }

    fn rewrite(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&entry(self.acked))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        super::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.bytes = ENTRY as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_highest_ack_across_reopen_and_ignores_a_torn_entry() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("acked");
        let mut l = Ledger::open(&p).unwrap();
        assert_eq!(l.acked(), 0);
        l.advance(10).unwrap();
        l.advance(7).unwrap();
        l.advance(42).unwrap();
        drop(l);
        // A torn write of a further entry.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&entry(99)[..5]).unwrap();
        let l = Ledger::open(&p).unwrap();
        assert_eq!(l.acked(), 42);
    }

    #[test]
    fn an_acknowledgement_waits_at_most_sync_every_for_its_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(&dir.path().join("acked")).unwrap();
        let t0 = l.synced_at;
        assert!(!l.sync_due(t0 + SYNC_EVERY).unwrap(), "nothing written, nothing to sync");
        l.advance(5).unwrap();
        assert!(!l.sync_due(t0 + SYNC_EVERY / 2).unwrap(), "synced half an interval ago");
        assert!(l.sync_due(t0 + SYNC_EVERY).unwrap());
        l.advance(6).unwrap();
        assert!(!l.sync_due(t0 + SYNC_EVERY * 3 / 2).unwrap(), "synced half an interval ago");
        assert!(l.sync_due(t0 + SYNC_EVERY * 3).unwrap(), "an acknowledgement after a quiet spell, at once");
    }

    #[test]
    fn a_corrupt_entry_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("acked");
        let mut l = Ledger::open(&p).unwrap();
        l.advance(5).unwrap();
        l.advance(9).unwrap();
        drop(l);
        let mut b = std::fs::read(&p).unwrap();
        b[ENTRY] ^= 0xff; // damage the entry for 9
        std::fs::write(&p, b).unwrap();
        assert_eq!(Ledger::open(&p).unwrap().acked(), 5);
    }

    #[test]
    fn grows_and_is_rewritten_compactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("acked");
        let mut l = Ledger::open(&p).unwrap();
        for i in 1..=10_000 {
            l.advance(i).unwrap();
        }
        assert!(std::fs::metadata(&p).unwrap().len() <= MAX_BYTES + ENTRY as u64);
        drop(l);
        assert_eq!(Ledger::open(&p).unwrap().acked(), 10_000);
    }
}
