//! The durable outbox: everything the agent produces waits here, on disk, until the hub
//! confirms it stored it. Specification: docs/specs/outbox-format.md.
//!
//! **Layout.** A directory of segment files `seg-<first seq, 20 digits>.log`, each the magic
//! `IMPOBX01` then checksummed records ([`record`]), and the acknowledgement ledger `acked`
//! ([`ledger`]). Records carry a per-device sequence number, strictly increasing across segments;
//! appends go to the newest segment, which is never deleted, so the next sequence number always
//! survives a restart and is never reused.
//!
//! **Delivery.** Records are handed out in sequence order; each carries `prev`, the sequence
//! number of the record before it in the outbox, so a receiver sees exactly which numbers do not
//! exist (dropped by the quota policy) rather than guessing. The hub acknowledges cumulatively:
//! "I stored everything up to N". Segments holding only records up to N are deleted. After a
//! reconnect the agent rewinds to N + 1: delivery is at least once; the hub stores each
//! (device, seq) once.
//!
//! **Quota.** The segment files never exceed `quota_bytes`. To make room, the oldest records of
//! the lowest class present are removed (by rewriting their segment without them): raw samples
//! go first, then aggregates, drift sketches, alerts, events. A record never displaces a record
//! of a higher class: if only higher classes fill the quota, the new record is refused and
//! counted.
//!
//! **Crashes.** Each record is written with one `write` call, so a killed process loses nothing
//! it appended. Alerts and events are fsynced at once, other classes by [`Outbox::sync`] (the
//! agent calls it periodically), so a power loss loses at most that interval of lower classes.
//! On open, a torn or corrupt tail is cut off (and counted); a segment without a valid header is
//! moved to `damaged/`, never silently deleted.

pub mod ledger;
pub mod record;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ledger::Ledger;
pub use record::{Class, Record};
use record::{HEADER, MAX_PAYLOAD, SEGMENT_MAGIC};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Most bytes the segment files may take together.
    pub quota_bytes: u64,
    /// A new segment starts when the newest would grow past this.
    pub segment_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self { quota_bytes: 64 << 20, segment_bytes: 1 << 20 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox I/O failed at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("payload of {0} bytes is larger than the {MAX_PAYLOAD} a record may hold")]
    TooLarge(usize),
    #[error("outbox quota of {0} bytes is smaller than two segments")]
    QuotaTooSmall(u64),
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T, OutboxError> {
    r.map_err(|source| OutboxError::Io { path: path.to_path_buf(), source })
}

/// Makes renames, creations and deletions in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Counters since the outbox was opened, and what recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub appended: [u64; 5],
    /// New records refused because only higher classes filled the quota.
    pub refused: [u64; 5],
    /// Stored records removed to make room.
    pub evicted: [u64; 5],
    /// Bytes cut from damaged segment tails when opening.
    pub recovered_damaged_bytes: u64,
    /// Segments without a valid header moved aside when opening.
    pub damaged_segments: u64,
}

/// A record ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub seq: u64,
    /// Sequence number of the record before this one in the outbox (or the acknowledged one):
    /// no record exists between `prev` and `seq`.
    pub prev: u64,
    pub ts_ms: i64,
    pub class: Class,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
    /// Sequence numbers present, as runs (start, length): one run unless compaction split it.
    runs: Vec<(u64, u64)>,
    class_bytes: [u64; 5],
}

impl Segment {
    fn last_seq(&self) -> Option<u64> {
        self.runs.last().map(|(s, n)| s + n - 1)
    }

    fn add(&mut self, r: &Record) {
        match self.runs.last_mut() {
            Some((s, n)) if *s + *n == r.seq => *n += 1,
            _ => self.runs.push((r.seq, 1)),
        }
        self.bytes += r.encoded_len() as u64;
        self.class_bytes[r.class as usize] += r.encoded_len() as u64;
    }

    /// Records with a sequence number above `acked`.
    fn pending(&self, acked: u64) -> u64 {
        self.runs.iter().map(|&(s, n)| if s > acked { n } else { (s + n).saturating_sub(acked + 1) }).sum()
    }
}

/// Where delivery stands: the next record to hand out is the first with a sequence number above
/// `sent`, searched from `offset` in the segment starting at `segment`.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    sent: u64,
    prev: u64,
    segment: u64,
    offset: u64,
}

#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    config: OutboxConfig,
    segments: Vec<Segment>,
    active: File,
    ledger: Ledger,
    next_seq: u64,
    /// Highest sequence number known to be on disk (fsynced). Delivery never goes past it: a
    /// record the hub has seen must never be lost to a power cut and its number reused.
    durable: u64,
    cursor: Cursor,
    unsynced: bool,
    stats: Stats,
    scratch: Vec<u8>,
    read: ReadBuffer,
    /// Where (segment, offset) the first record above the acknowledged one was last found: the
    /// oldest pending record's time is looked up from there on, not from the segment's start
    /// (reading a whole segment once a second cost a thousand agents on one machine a tenth of
    /// their CPU). `None` after offsets moved.
    pending_at: Option<(u64, u64)>,
}

/// Bytes read ahead from one segment for delivery.
#[derive(Debug, Default)]
struct ReadBuffer {
    segment: u64,
    start: u64,
    buf: Vec<u8>,
}

const READ_CHUNK: usize = 256 * 1024;

fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok()
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, recovering from any crash.
    pub fn open(dir: &Path, config: OutboxConfig) -> Result<Self, OutboxError> {
        if config.quota_bytes < 2 * config.segment_bytes.max(HEADER as u64 + 8) {
            return Err(OutboxError::QuotaTooSmall(config.quota_bytes));
        }
        io(dir, std::fs::create_dir_all(dir))?;
        let mut stats = Stats::default();
        let mut names = Vec::new();
        for entry in io(dir, std::fs::read_dir(dir))? {
            let entry = io(dir, entry)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                io(&entry.path(), std::fs::remove_file(entry.path()))?;
            } else if let Some(first) = parse_segment_name(&name) {
                names.push((first, entry.path()));
            }
        }
        names.sort();
        let mut segments = Vec::new();
        for (first_seq, path) in names {
            let mut bytes = Vec::new();
            io(&path, File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)))?;
            if bytes.len() < SEGMENT_MAGIC.len() || &bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
                if bytes.len() < SEGMENT_MAGIC.len() && SEGMENT_MAGIC.starts_with(&bytes) {
                    // Created but its header never fully written: an empty segment.
                    io(&path, write_new_segment(&path))?;
                    bytes = SEGMENT_MAGIC.to_vec();
                } else {
                    let damaged = dir.join("damaged");
                    io(&damaged, std::fs::create_dir_all(&damaged))?;
                    let to = damaged.join(path.file_name().unwrap_or_default());
                    io(&path, std::fs::rename(&path, &to))?;
                    tracing::warn!(segment = %path.display(), moved_to = %to.display(), "outbox segment has no valid header");
                    stats.damaged_segments += 1;
                    continue;
                }
            }
            let body = &bytes[SEGMENT_MAGIC.len()..];
            let (records, used, damage) = record::scan(body, first_seq);
            if let Some(d) = damage {
                let cut = body.len() - used;
                tracing::warn!(segment = %path.display(), ?d, cut_bytes = cut, kept_records = records.len(), "outbox segment damaged; cutting it after the last good record");
                let keep = (SEGMENT_MAGIC.len() + used) as u64;
                io(
                    &path,
                    OpenOptions::new().write(true).open(&path).and_then(|f| {
                        f.set_len(keep)?;
                        f.sync_all()
                    }),
                )?;
                stats.recovered_damaged_bytes += cut as u64;
            }
            let mut seg =
                Segment { first_seq, path, bytes: SEGMENT_MAGIC.len() as u64, runs: Vec::new(), class_bytes: [0; 5] };
            for r in &records {
                seg.add(r);
            }
            segments.push(seg);
        }
        // Sequence numbers must increase across segments too; a segment that overlaps the one
        // before it cannot be trusted.
        let mut kept: Vec<Segment> = Vec::with_capacity(segments.len());
        for seg in segments {
            let floor =
                kept.last().map(|p: &Segment| p.last_seq().unwrap_or(p.first_seq.saturating_sub(1)).max(p.first_seq));
            if let Some(floor) = floor
                && seg.runs.first().is_some_and(|r| r.0 <= floor)
            {
                tracing::warn!(segment = %seg.path.display(), "outbox segment overlaps the previous one; moving it aside");
                let damaged = dir.join("damaged");
                io(&damaged, std::fs::create_dir_all(&damaged))?;
                io(&seg.path, std::fs::rename(&seg.path, damaged.join(seg.path.file_name().unwrap_or_default())))?;
                stats.damaged_segments += 1;
                continue;
            }
            kept.push(seg);
        }
        let mut segments = kept;
        let ledger = io(dir, Ledger::open(&dir.join("acked")))?;
        let acked = ledger.acked();
        let next_seq = segments
            .iter()
            .map(|s| s.last_seq().map_or(s.first_seq, |l| l + 1).max(s.first_seq))
            .chain([acked + 1, 1])
            .max()
            .unwrap_or(1);
        if segments.last().is_none_or(|s| s.first_seq > next_seq) {
            let path = dir.join(segment_name(next_seq));
            io(&path, write_new_segment(&path))?;
            io(dir, sync_dir(dir))?;
            segments.push(Segment {
                first_seq: next_seq,
                path,
                bytes: SEGMENT_MAGIC.len() as u64,
                runs: Vec::new(),
                class_bytes: [0; 5],
            });
        }
        let active_path = segments.last().map(|s| s.path.clone()).unwrap_or_default();
        let active = io(&active_path, OpenOptions::new().append(true).open(&active_path))?;
        let first = segments[0].first_seq;
        let mut outbox = Self {
            dir: dir.to_path_buf(),
            config,
            segments,
            active,
            ledger,
            next_seq,
            durable: next_seq - 1,
            cursor: Cursor { sent: acked, prev: acked, segment: first, offset: SEGMENT_MAGIC.len() as u64 },
            unsynced: false,
            stats,
            scratch: Vec::new(),
            read: ReadBuffer::default(),
            pending_at: None,
        };
        outbox.delete_acked_segments()?;
        outbox.rewind();
        tracing::info!(dir = %dir.display(), next_seq, acked, pending = outbox.pending_records(), bytes = outbox.bytes(), "outbox open");
        Ok(outbox)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes used by the segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Records not yet acknowledged by the hub.
    pub fn pending_records(&self) -> u64 {
        let acked = self.ledger.acked();
        self.segments.iter().map(|s| s.pending(acked)).sum()
    }

    pub fn acked(&self) -> u64 {
        self.ledger.acked()
    }

    /// Highest sequence number known to be on disk; a power cut may lose records above it.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends a record; returns its sequence number, or `None` if the quota is full of records
    /// of higher classes (counted in [`Stats::refused`]).
    pub fn append(&mut self, class: Class, ts_ms: i64, payload: &[u8]) -> Result<Option<u64>, OutboxError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(OutboxError::TooLarge(payload.len()));
        }
        let need = (HEADER + payload.len()) as u64;
        if !self.make_room(class, need)? {
            self.stats.refused[class as usize] += 1;
            return Ok(None);
        }
        let active_bytes = self.segments.last().map_or(0, |s| s.bytes);
        if active_bytes + need > self.config.segment_bytes && active_bytes > SEGMENT_MAGIC.len() as u64 {
            self.roll()?;
        }
        let record = Record { seq: self.next_seq, ts_ms, class, payload: payload.to_vec() };
        self.scratch.clear();
        record.encode_into(&mut self.scratch);
        let path = self.active_path();
        // One write call: once it returns, the record survives the process being killed.
        io(&path, self.active.write_all(&self.scratch))?;
        if class >= Class::Alert {
            io(&path, self.active.sync_data())?;
            self.durable = record.seq;
        } else {
            self.unsynced = true;
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.add(&record);
        }
        self.next_seq += 1;
        self.stats.appended[class as usize] += 1;
        Ok(Some(record.seq))
    }

    /// Makes appended records durable against power loss, and the acknowledgement at most
    /// [`ledger::SYNC_EVERY`] late.
    pub fn sync(&mut self) -> Result<(), OutboxError> {
        if self.unsynced {
            let path = self.active_path();
            io(&path, self.active.sync_data())?;
            self.unsynced = false;
        }
        self.durable = self.next_seq - 1;
        io(&self.dir, self.ledger.sync_due(std::time::Instant::now())).map(drop)
    }

    fn active_path(&self) -> PathBuf {
        self.segments.last().map(|s| s.path.clone()).unwrap_or_default()
    }

    fn roll(&mut self) -> Result<(), OutboxError> {
        self.sync()?;
        let path = self.dir.join(segment_name(self.next_seq));
        io(&path, write_new_segment(&path))?;
        io(&self.dir, sync_dir(&self.dir))?;
        self.active = io(&path, OpenOptions::new().append(true).open(&path))?;
        self.segments.push(Segment {
            first_seq: self.next_seq,
            path,
            bytes: SEGMENT_MAGIC.len() as u64,
            runs: Vec::new(),
            class_bytes: [0; 5],
        });
        Ok(())
    }

    /// Evicts lower-class records until `need` more bytes fit; false if they cannot.
    fn make_room(&mut self, class: Class, need: u64) -> Result<bool, OutboxError> {
        // A new segment may be needed as well: count its header.
        let need = need + SEGMENT_MAGIC.len() as u64;
        loop {
            if self.bytes() + need <= self.config.quota_bytes {
                return Ok(true);
            }
            let lowest = Class::ALL.into_iter().find(|c| self.segments.iter().any(|s| s.class_bytes[*c as usize] > 0));
            let Some(victim) = lowest.filter(|v| *v <= class) else {
                return Ok(false);
            };
            let idx = self.segments.iter().position(|s| s.class_bytes[victim as usize] > 0).unwrap_or(0);
            self.compact(idx, victim)?;
        }
    }

    /// Rewrites segment `idx` without its records of class `victim`.
    fn compact(&mut self, idx: usize, victim: Class) -> Result<(), OutboxError> {
        let is_active = idx + 1 == self.segments.len();
        if is_active {
            self.sync()?;
        }
        let path = self.segments[idx].path.clone();
        let mut bytes = Vec::new();
        io(&path, File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)))?;
        let (records, _, _) = record::scan(&bytes[SEGMENT_MAGIC.len()..], self.segments[idx].first_seq);
        let mut seg = Segment {
            first_seq: self.segments[idx].first_seq,
            path: path.clone(),
            bytes: SEGMENT_MAGIC.len() as u64,
            runs: Vec::new(),
            class_bytes: [0; 5],
        };
        let mut out = SEGMENT_MAGIC.to_vec();
        let mut removed = 0;
        for r in &records {
            if r.class == victim {
                removed += 1;
            } else {
                r.encode_into(&mut out);
                seg.add(r);
            }
        }
        self.stats.evicted[victim as usize] += removed;
        tracing::debug!(segment = %path.display(), class = victim.as_str(), removed, "outbox over quota; evicting");
        if seg.runs.is_empty() && !is_active {
            io(&path, std::fs::remove_file(&path))?;
            self.segments.remove(idx);
        } else {
            let tmp = path.with_extension("tmp");
            io(
                &tmp,
                File::create(&tmp).and_then(|mut f| {
                    f.write_all(&out)?;
                    f.sync_all()
                }),
            )?;
            io(&path, std::fs::rename(&tmp, &path))?;
            if is_active {
                self.active = io(&path, OpenOptions::new().append(true).open(&path))?;
            }
            self.segments[idx] = seg;
        }
        io(&self.dir, sync_dir(&self.dir))?;
        self.read.buf.clear();
        self.pending_at = None;
        // Offsets in the rewritten segment moved: find the cursor again by sequence number.
        if self.cursor.segment == self.segments.get(idx).map_or(u64::MAX, |s| s.first_seq)
            || self.segments.iter().all(|s| s.first_seq != self.cursor.segment)
        {
            self.reposition();
        }
        Ok(())
    }

    /// Records the hub's acknowledgement that it stored everything up to `acked`.
    pub fn ack(&mut self, acked: u64) -> Result<(), OutboxError> {
        let acked = acked.min(self.next_seq.saturating_sub(1));
        if !io(&self.dir, self.ledger.advance(acked))? {
            return Ok(());
        }
        self.delete_acked_segments()?;
        if self.cursor.sent < acked {
            self.cursor.sent = acked;
            self.cursor.prev = self.cursor.prev.max(acked);
            self.reposition();
        }
        Ok(())
    }

    fn delete_acked_segments(&mut self) -> Result<(), OutboxError> {
        let acked = self.ledger.acked();
        let mut deleted = false;
        while self.segments.len() > 1
            && self.segments[0].last_seq().is_none_or(|l| l <= acked)
            && self.segments[1].first_seq <= acked + 1
        {
            let seg = self.segments.remove(0);
            io(&seg.path, std::fs::remove_file(&seg.path))?;
            deleted = true;
        }
        if deleted {
            io(&self.dir, sync_dir(&self.dir))?;
            self.reposition();
        }
        Ok(())
    }

    /// Hands out everything not acknowledged again, from the oldest: after a reconnect, or when
    /// acknowledgements stopped coming.
    pub fn rewind(&mut self) {
        let acked = self.ledger.acked();
        self.cursor.sent = acked;
        self.cursor.prev = acked;
        self.reposition();
    }

    /// The first records after the acknowledged one and before `before` (at most `max_records`
    /// or about `max_bytes`), to send again when the hub reports them lost; the cursor stays
    /// where it is.
    pub fn unacked_before(
        &mut self,
        before: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Outgoing>, OutboxError> {
        let cursor = self.cursor;
        self.rewind();
        let read = self.next_batch(max_records, max_bytes);
        self.cursor = cursor;
        let mut records = read?;
        records.retain(|r| r.seq < before);
        Ok(records)
    }

    /// Points the cursor at the segment holding the first record above `cursor.sent`.
    fn reposition(&mut self) {
        let sent = self.cursor.sent;
        let seg = self.segments.iter().find(|s| s.last_seq().is_some_and(|l| l > sent)).or(self.segments.last());
        if let Some(s) = seg {
            self.cursor.segment = s.first_seq;
            self.cursor.offset = SEGMENT_MAGIC.len() as u64;
        }
    }

    /// The next records to send, oldest first, at most `max_records` or about `max_bytes` of
    /// payload. Only records already on disk are handed out; call [`Outbox::sync`] first to
    /// include the latest.
    pub fn next_batch(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Outgoing>, OutboxError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_records && bytes < max_bytes && self.cursor.sent < self.durable {
            let Some(r) = self.next_record()? else { break };
            if r.seq > self.durable {
                // Not yet durable: step back and hand it out after the next sync.
                self.cursor.offset -= r.encoded_len() as u64;
                break;
            }
            if r.seq <= self.cursor.sent {
                self.cursor.prev = self.cursor.prev.max(r.seq);
                continue;
            }
            bytes += r.payload.len();
            out.push(Outgoing {
                seq: r.seq,
                prev: self.cursor.prev,
                ts_ms: r.ts_ms,
                class: r.class,
                payload: r.payload,
            });
            self.cursor.sent = r.seq;
            self.cursor.prev = r.seq;
        }
        Ok(out)
    }

    /// The record at the cursor, moving past it; `None` at the end of the outbox.
    fn next_record(&mut self) -> Result<Option<Record>, OutboxError> {
        loop {
            let Some(idx) = self.segments.iter().position(|s| s.first_seq == self.cursor.segment) else {
                return Ok(None);
            };
            let (path, end) = (self.segments[idx].path.clone(), self.segments[idx].bytes);
            if self.cursor.offset >= end {
                let Some(next) = self.segments.get(idx + 1) else { return Ok(None) };
                self.cursor.segment = next.first_seq;
                self.cursor.offset = SEGMENT_MAGIC.len() as u64;
                continue;
            }
            let at = self.cursor.offset;
            let cached = self.read.segment == self.cursor.segment && at >= self.read.start;
            let rel = if cached { (at - self.read.start) as usize } else { 0 };
            let decoded = if cached && rel < self.read.buf.len() {
                record::decode(&self.read.buf[rel..])
            } else {
                Err(record::Damage::TornTail)
            };
            match decoded {
                Ok(Some(r)) => {
                    self.cursor.offset += r.encoded_len() as u64;
                    return Ok(Some(r));
                }
                Ok(None) | Err(record::Damage::TornTail) => {
                    // Not (wholly) in the buffer: read from the cursor, at least one whole record.
                    let header_len = if cached && self.read.buf.len() >= rel + 4 {
                        let b = &self.read.buf[rel..rel + 4];
                        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize + HEADER
                    } else {
                        0
                    };
                    if cached && header_len > 0 && header_len <= self.read.buf.len() - rel {
                        // The buffer held the whole record and it still did not decode.
                        self.skip_damaged(&path, end);
                        continue;
                    }
                    let want = (READ_CHUNK.max(header_len) as u64).min(end - at) as usize;
                    self.read.buf.resize(want, 0);
                    let n = io(
                        &path,
                        File::open(&path).and_then(|mut f| {
                            f.seek(SeekFrom::Start(at))?;
                            read_up_to(&mut f, &mut self.read.buf)
                        }),
                    )?;
                    self.read.buf.truncate(n);
                    self.read.segment = self.cursor.segment;
                    self.read.start = at;
                    match record::decode(&self.read.buf) {
                        Ok(Some(r)) => {
                            self.cursor.offset += r.encoded_len() as u64;
                            return Ok(Some(r));
                        }
                        _ => self.skip_damaged(&path, end),
                    }
                }
                Err(_) => self.skip_damaged(&path, end),
            }
        }
    }

    /// Damage that appeared after opening (the disk changed under us): skip the rest of the
    /// segment rather than loop on it. The next open will cut it.
    fn skip_damaged(&mut self, path: &Path, end: u64) {
        tracing::error!(segment = %path.display(), offset = self.cursor.offset, "outbox record damaged while reading; skipping the rest of the segment");
        self.cursor.offset = end;
        self.read.buf.clear();
    }

    /// Time of the oldest record not yet acknowledged: read forward from where it was found
    /// last, so each record is passed once as acknowledgements move on.
    pub fn oldest_pending_ts(&mut self) -> Result<Option<i64>, OutboxError> {
        let acked = self.ledger.acked();
        let delivery = self.cursor;
        let (segment, offset) = match self.pending_at {
            Some((segment, offset)) if self.segments.iter().any(|s| s.first_seq == segment) => (segment, offset),
            _ => {
                let Some(s) = self.segments.iter().find(|s| s.last_seq().is_some_and(|l| l > acked)) else {
                    return Ok(None);
                };
                (s.first_seq, SEGMENT_MAGIC.len() as u64)
            }
        };
        // The delivery cursor's reading, on loan: the same buffer serves both.
        self.cursor.segment = segment;
        self.cursor.offset = offset;
        let found = loop {
            let at = (self.cursor.segment, self.cursor.offset);
            match self.next_record() {
                Ok(Some(r)) if r.seq <= acked => {}
                Ok(Some(r)) => {
                    self.pending_at = Some(at);
                    break Ok(Some(r.ts_ms));
                }
                // Nothing pending: the next record appended will be, so look from the end.
                Ok(None) => {
                    self.pending_at = Some((self.cursor.segment, self.cursor.offset));
                    break Ok(None);
                }
                Err(e) => {
                    self.pending_at = None;
                    break Err(e);
                }
            }
        };
        self.cursor = delivery;
        found
    }
}

fn write_new_segment(path: &Path) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(SEGMENT_MAGIC)?;
    f.sync_all()
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
