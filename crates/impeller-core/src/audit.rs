//! The audit trail's hash chain: every event the hub records is sealed with the hash of the
//! record before it, so editing, deleting, inserting or reordering any record breaks the chain
//! at that point; signed checkpoints (records of their own, action [`CHECKPOINT`]) pin the chain
//! to the hub's key, so rewriting the whole tail after an edit is caught too.
//!
//! A record's hash is SHA-256 over a length-prefixed encoding of its fields (below), never over
//! JSON text, so the same record hashes the same whatever serialiser wrote the export. Details
//! are hashed in a canonical JSON form (object keys sorted, no spaces).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hex;
use crate::package::{Signer25519, TrustStore};

/// The action of a signed checkpoint record.
pub const CHECKPOINT: &str = "audit.checkpoint";
/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const RECORD_DOMAIN: &[u8] = b"impeller.audit.v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"impeller.audit.checkpoint.v1\0";

/// Something that happened, before it is sealed into the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub time_ms: i64,
    /// Who did it: an API token's name, a device id, or `hub` for the hub's own decisions.
    pub actor: String,
    /// Dotted verb, e.g. `device.added`, `package.uploaded`, `deployment.wave_started`.
    pub action: String,
    /// What it was done to: a device id, a deployment name, `model@version`.
    pub subject: String,
    /// SHA-256 (hex) of the artifacts involved: package, model, training data.
    pub artifacts: Vec<String>,
    /// Anything else worth keeping, as a JSON object.
    pub details: serde_json::Value,
}

impl AuditEvent {
    pub fn new(time_ms: i64, actor: &str, action: &str, subject: &str) -> AuditEvent {
        AuditEvent {
            time_ms,
            actor: actor.to_string(),
            action: action.to_string(),
            subject: subject.to_string(),
            artifacts: Vec::new(),
            details: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn artifact(mut self, sha256: &str) -> AuditEvent {
        self.artifacts.push(sha256.to_string());
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> AuditEvent {
        self.details = details;
        self
    }

    /// This event as record `seq`, following the record whose hash is `prev`.
    pub fn seal(self, seq: u64, prev: &str) -> AuditRecord {
        let mut r = AuditRecord {
            seq,
            time_ms: self.time_ms,
            actor: self.actor,
            action: self.action,
            subject: self.subject,
            artifacts: self.artifacts,
            details: self.details,
            prev: prev.to_string(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }
}

/// One sealed record, as stored and as exported (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub seq: u64,
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub artifacts: Vec<String>,
    pub details: serde_json::Value,
    pub prev: String,
    pub hash: String,
}

impl AuditRecord {
    /// SHA-256, as lowercase hex, over the domain tag, `prev` as text, `seq`, `time_ms` (both
    /// big-endian), then actor, action, subject, the artifacts and the canonical details, each
    /// string prefixed with its length as a big-endian u32.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(RECORD_DOMAIN);
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u32).to_be_bytes());
            h.update(bytes);
        };
        field(self.prev.as_bytes());
        field(&self.seq.to_be_bytes());
        field(&self.time_ms.to_be_bytes());
        field(self.actor.as_bytes());
        field(self.action.as_bytes());
        field(self.subject.as_bytes());
        field(&(self.artifacts.len() as u32).to_be_bytes());
        for a in &self.artifacts {
            field(a.as_bytes());
        }
        let mut details = Vec::with_capacity(256);
        canonical_json(&self.details, &mut details);
        field(&details);
        hex::encode(&h.finalize())
    }
}

/// A checkpoint: the hub's signature over the chain up to record `seq`, whose hash is `hash`.
/// It is sealed as the next record, so `seq + 1` with `prev == hash`.
pub fn checkpoint(signer: &Signer25519, seq: u64, hash: &str, time_ms: i64) -> AuditEvent {
    let signature = signer.sign_hex(&checkpoint_message(seq, hash));
    AuditEvent::new(time_ms, "hub", CHECKPOINT, signer.key_id()).details(serde_json::json!({ "signature": signature }))
}

fn checkpoint_message(seq: u64, hash: &str) -> Vec<u8> {
    let mut m = CHECKPOINT_DOMAIN.to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash.as_bytes());
    m
}

/// Object keys sorted by their bytes, no whitespace; strings escaped and numbers written as
/// serde_json writes them. Sorted here rather than trusting the map's order, which a feature
/// of serde_json (`preserve_order`) would change.
fn canonical_json(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_leaf(k, out);
                out.push(b':');
                canonical_json(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        other => write_leaf(other, out),
    }
}

/// A string, number, boolean or null as serde_json writes it (writing to a Vec cannot fail).
fn write_leaf(v: &(impl Serialize + ?Sized), out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(out, v);
}

/// Where and why a chain is broken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChainBreak {
    #[error("record {seq}: expected record {expected} here (a record was deleted, inserted or moved)")]
    Sequence { seq: u64, expected: u64 },
    #[error("record {seq}: its prev does not match the hash of record {} (a record before it was changed or removed)", seq.saturating_sub(1))]
    Link { seq: u64 },
    #[error("record {seq}: its content does not match its hash (the record was edited)")]
    Content { seq: u64 },
    #[error("record {seq}: checkpoint by key {key_id}: {reason}")]
    Checkpoint { seq: u64, key_id: String, reason: String },
    #[error("record {seq}: artifact `{artifact}` is not a lowercase SHA-256 hex digest")]
    Artifact { seq: u64, artifact: String },
}

/// What a verified stretch of the chain holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChainSummary {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    /// Checkpoints whose signature a pinned key verified, and the last record they cover.
    pub checkpoints_verified: u64,
    pub last_verified_seq: Option<u64>,
    /// Checkpoints by keys nobody pinned: the chain is consistent, but the key proves nothing.
    pub checkpoints_unpinned: u64,
}

/// Checks records one at a time, in order.
#[derive(Debug, Clone)]
pub struct ChainVerifier<'a> {
    pinned: Option<&'a TrustStore>,
    partial: bool,
    summary: ChainSummary,
}

impl<'a> ChainVerifier<'a> {
    /// A whole trail, from record 1. `pinned`: the hub keys whose checkpoints count; `None`
    /// checks the chain alone.
    pub fn new(pinned: Option<&'a TrustStore>) -> ChainVerifier<'a> {
        ChainVerifier { pinned, partial: false, summary: ChainSummary::default() }
    }

    /// A stretch that may start anywhere (an export `--since`): its first record's `prev` is
    /// taken on trust, as `first_seq` says.
    pub fn partial(pinned: Option<&'a TrustStore>) -> ChainVerifier<'a> {
        ChainVerifier { partial: true, ..ChainVerifier::new(pinned) }
    }

    pub fn push(&mut self, r: &AuditRecord) -> Result<(), ChainBreak> {
        self.check_next(r.seq, &r.prev)?;
        if r.compute_hash() != r.hash {
            return Err(ChainBreak::Content { seq: r.seq });
        }
        if let Some(a) = r.artifacts.iter().find(|a| !is_sha256_hex(a)) {
            return Err(ChainBreak::Artifact { seq: r.seq, artifact: a.clone() });
        }
        if r.action == CHECKPOINT {
            self.check_point(r)?;
        }
        let s = &mut self.summary;
        s.records += 1;
        s.first_seq.get_or_insert(r.seq);
        s.last_seq = Some(r.seq);
        s.last_hash = Some(r.hash.clone());
        Ok(())
    }

    /// Whether a record `seq` whose `prev` is given may come next: the sequence goes on by one
    /// and the link holds (or, first, the trail starts at record 1 after the genesis hash).
    pub fn check_next(&self, seq: u64, prev: &str) -> Result<(), ChainBreak> {
        match (self.summary.last_seq, &self.summary.last_hash) {
            (Some(last), Some(last_hash)) => {
                if seq != last + 1 {
                    return Err(ChainBreak::Sequence { seq, expected: last + 1 });
                }
                if prev != last_hash {
                    return Err(ChainBreak::Link { seq });
                }
            }
            _ => {
                if seq == 0 || (seq != 1 && !self.partial) {
                    return Err(ChainBreak::Sequence { seq, expected: 1 });
                }
                if seq == 1 && prev != GENESIS {
                    return Err(ChainBreak::Link { seq: 1 });
                }
            }
        }
        Ok(())
    }

    /// Appends a stretch verified on its own by a [`partial`](Self::partial) verifier with the
    /// same keys (one file checked on several cores), after [`check_next`](Self::check_next)
    /// accepted the stretch's first record.
    pub fn append(&mut self, stretch: ChainSummary) {
        let s = &mut self.summary;
        if stretch.records == 0 {
            return;
        }
        s.records += stretch.records;
        s.first_seq = s.first_seq.or(stretch.first_seq);
        s.last_seq = stretch.last_seq;
        s.last_hash = stretch.last_hash;
        s.checkpoints_verified += stretch.checkpoints_verified;
        s.last_verified_seq = stretch.last_verified_seq.or(s.last_verified_seq);
        s.checkpoints_unpinned += stretch.checkpoints_unpinned;
    }

    fn check_point(&mut self, r: &AuditRecord) -> Result<(), ChainBreak> {
        let fail =
            |reason: &str| ChainBreak::Checkpoint { seq: r.seq, key_id: r.subject.clone(), reason: reason.into() };
        let signature = r.details.get("signature").and_then(|v| v.as_str()).ok_or_else(|| fail("no signature"))?;
        let Some(pinned) = self.pinned else {
            self.summary.checkpoints_unpinned += 1;
            return Ok(());
        };
        let covered = r.seq - 1;
        match pinned.verify(&r.subject, signature, &checkpoint_message(covered, &r.prev)) {
            Ok(()) => {
                self.summary.checkpoints_verified += 1;
                self.summary.last_verified_seq = Some(covered);
                Ok(())
            }
            Err(crate::package::PackageError::UnknownKey { .. }) => {
                self.summary.checkpoints_unpinned += 1;
                Ok(())
            }
            Err(_) => Err(fail("the signature does not verify")),
        }
    }

    pub fn finish(self) -> ChainSummary {
        self.summary
    }
}

/// Verifies a whole sequence of records.
pub fn verify<'r>(
    records: impl IntoIterator<Item = &'r AuditRecord>,
    pinned: Option<&TrustStore>,
) -> Result<ChainSummary, ChainBreak> {
    let mut v = ChainVerifier::new(pinned);
    for r in records {
        v.push(r)?;
    }
    Ok(v.finish())
}

pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The records connected to `artifact`: those naming it, then, transitively, those naming any
/// artifact named together with it (data → model → package → deployments → devices running it).
pub fn trace<'r>(records: &'r [AuditRecord], artifact: &str) -> Vec<&'r AuditRecord> {
    let mut known = std::collections::BTreeSet::from([artifact.to_string()]);
    let mut hit = vec![false; records.len()];
    loop {
        let before = known.len();
        for (i, r) in records.iter().enumerate() {
            if !hit[i] && r.artifacts.iter().any(|a| known.contains(a)) {
                hit[i] = true;
                known.extend(r.artifacts.iter().cloned());
            }
        }
        if known.len() == before {
            break;
        }
    }
    records.iter().zip(hit).filter_map(|(r, h)| h.then_some(r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(n: u8) -> String {
        hex::encode(&Sha256::digest([n]))
    }

    fn chain(n: u64, signer: Option<&Signer25519>) -> Vec<AuditRecord> {
        chain_every(n, signer, 10)
    }

    /// `n` records, every `every`-th a checkpoint when there is a signer.
    fn chain_every(n: u64, signer: Option<&Signer25519>, every: u64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let prev = out.last().map_or(GENESIS.to_string(), |r| r.hash.clone());
            let seq = i + 1;
            let event = match signer {
                Some(s) if i % every == every - 1 => checkpoint(s, i, &prev, i as i64 * 1000),
                _ => AuditEvent::new(i as i64 * 1000, "admin", "device.added", &format!("pump-{i}"))
                    .artifact(&sha(i as u8))
                    .details(serde_json::json!({"tags": {"site": "gulf", "manufacturer": "acme"}, "n": i})),
            };
            out.push(event.seal(seq, &prev));
        }
        out
    }

    fn export(records: &[AuditRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            out.extend(serde_json::to_vec(r).unwrap());
            out.push(b'\n');
        }
        out
    }

    /// The whole verification path of an export: each line parsed, then the chain checked.
    fn verify_export(bytes: &[u8], pinned: Option<&TrustStore>) -> Result<ChainSummary, String> {
        verify_lines(ChainVerifier::new(pinned), bytes.split(|&b| b == b'\n'))
    }

    /// Lines of an export, continuing from `verifier`'s state; stops at the first break.
    fn verify_lines<'l>(
        mut verifier: ChainVerifier<'_>,
        lines: impl Iterator<Item = &'l [u8]>,
    ) -> Result<ChainSummary, String> {
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
            let record = serde_json::from_slice::<AuditRecord>(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            verifier.push(&record).map_err(|e| e.to_string())?;
        }
        Ok(verifier.finish())
    }

    fn signer() -> (Signer25519, TrustStore) {
        let s = Signer25519::from_secret([7; 32]);
        let mut t = TrustStore::new();
        t.add(s.verifying_key());
        (s, t)
    }

    #[test]
    fn an_intact_chain_verifies_and_its_checkpoints_count() {
        let (s, pinned) = signer();
        let records = chain(100, Some(&s));
        let summary = verify(&records, Some(&pinned)).unwrap();
        assert_eq!(summary.records, 100);
        assert_eq!(summary.checkpoints_verified, 10);
        assert_eq!(summary.last_verified_seq, Some(99));
        let unpinned = verify(&records, None).unwrap();
        assert_eq!((unpinned.checkpoints_verified, unpinned.checkpoints_unpinned), (0, 10));
    }

    #[test]
    fn the_hash_does_not_depend_on_key_order_or_spacing() {
        let r = chain(1, None).remove(0);
        let text = r#"{"hash":"H","prev":"P","details":{"tags":{"manufacturer":"acme","site":"gulf"},"n":0},
            "artifacts":["A"],"subject":"pump-0","action":"device.added","actor":"admin","time_ms":0,"seq":1}"#
            .replace('H', &r.hash)
            .replace('P', &r.prev)
            .replace("\"A\"", &format!("\"{}\"", r.artifacts[0]));
        let parsed: AuditRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed.compute_hash(), r.hash);
    }

    #[test]
    fn deletion_insertion_reordering_and_rewriting_are_found() {
        let (s, pinned) = signer();
        let records = chain(30, Some(&s));
        let mut deleted = records.clone();
        deleted.remove(5);
        assert_eq!(verify(&deleted, None), Err(ChainBreak::Sequence { seq: 7, expected: 6 }));
        assert_eq!(verify(&records[3..], None), Err(ChainBreak::Sequence { seq: 4, expected: 1 }));
        let mut partial = ChainVerifier::partial(None);
        records[3..].iter().try_for_each(|r| partial.push(r)).unwrap();
        assert_eq!(partial.finish().first_seq, Some(4));
        let mut swapped = records.clone();
        swapped.swap(3, 4);
        assert!(matches!(verify(&swapped, None), Err(ChainBreak::Sequence { .. })));
        let mut inserted = records.clone();
        inserted.insert(12, records[12].clone());
        assert!(verify(&inserted, None).is_err());

        // An attacker who edits record 5 and re-seals everything after it keeps the chain
        // consistent, but not the checkpoint at 10 they cannot sign.
        let mut rewritten = records.clone();
        rewritten[4].subject = "pump-x".into();
        for i in 4..rewritten.len() {
            let prev = if i == 0 { GENESIS.to_string() } else { rewritten[i - 1].hash.clone() };
            rewritten[i].prev = prev;
            rewritten[i].hash = rewritten[i].compute_hash();
        }
        assert!(verify(&rewritten, None).is_ok(), "the chain alone cannot see a full rewrite");
        assert_eq!(
            verify(&rewritten, Some(&pinned)).unwrap_err(),
            ChainBreak::Checkpoint {
                seq: 10,
                key_id: s.key_id().into(),
                reason: "the signature does not verify".into()
            }
        );
    }

    #[test]
    fn stretches_verified_apart_join_as_one_chain() {
        let (s, pinned) = signer();
        let records = chain(95, Some(&s));
        let whole = verify(&records, Some(&pinned)).unwrap();
        let join = |parts: &[&[AuditRecord]]| -> Result<ChainSummary, ChainBreak> {
            let mut v = ChainVerifier::new(Some(&pinned));
            for part in parts {
                // As the command does: the stretch is checked apart, then its boundary, then
                // its own verdict.
                let mut apart = ChainVerifier::partial(Some(&pinned));
                let verdict = part.iter().try_for_each(|r| apart.push(r));
                if let Some(first) = part.first() {
                    v.check_next(first.seq, &first.prev)?;
                }
                verdict?;
                v.append(apart.finish());
            }
            Ok(v.finish())
        };
        assert_eq!(join(&[&records[..40], &[], &records[40..41], &records[41..]]).unwrap(), whole);
        assert_eq!(join(&[&records[..40], &records[41..]]), Err(ChainBreak::Sequence { seq: 42, expected: 41 }));
        assert_eq!(join(&[&records[1..40], &records[40..]]), Err(ChainBreak::Sequence { seq: 2, expected: 1 }));
        let mut relinked = records.clone();
        relinked[50].prev = records[48].hash.clone();
        relinked[50].hash = relinked[50].compute_hash();
        assert_eq!(join(&[&relinked[..50], &relinked[50..]]), Err(ChainBreak::Link { seq: 51 }));
    }

    #[test]
    fn every_flipped_byte_of_an_export_is_found() {
        let (s, pinned) = signer();
        let bytes = export(&chain(40, Some(&s)));
        assert!(verify_export(&bytes, Some(&pinned)).is_ok());
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x20, 0x80] {
                let mut flipped = bytes.clone();
                flipped[i] ^= mask;
                assert!(verify_export(&flipped, Some(&pinned)).is_err(), "byte {i} ^ {mask:#x} went unnoticed");
            }
        }
    }

    /// Every byte of a 10,000-record export, each flipped in turn, is found by the whole
    /// verification path (parse, then the chain). Verifying is sequential and stops at the
    /// first break, so the records before the flipped line are checked once and the verifier's
    /// state after them reused; from the flipped line on, the check runs to the end of the log
    /// unless it breaks first (which, in practice, is at that line or the next).
    #[test]
    fn every_flipped_byte_of_a_10000_record_export_is_found() {
        let (s, pinned) = signer();
        let records = chain_every(10_000, Some(&s), 1000);
        let bytes = export(&records);
        let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), records.len());
        let mut before = ChainVerifier::new(Some(&pinned));
        let mut flips = 0u64;
        for (k, line) in lines.iter().enumerate() {
            // Each byte of this line and of the newline that ends it, bit (k + i) % 8. The next
            // line is re-split with it, since a flipped newline joins the two.
            let next: &[u8] = lines.get(k + 1).copied().unwrap_or_default();
            for i in 0..line.len() {
                let mut flipped = [*line, next].concat();
                flipped[i] ^= 1 << ((k + i) % 8);
                let tail = lines[(k + 2).min(lines.len())..].iter().map(|l| &l[..l.len() - 1]);
                let result = verify_lines(before.clone(), flipped.split(|&b| b == b'\n').chain(tail));
                assert!(result.is_err(), "line {} byte {i} went unnoticed", k + 1);
                flips += 1;
            }
            before.push(&records[k]).unwrap();
        }
        assert_eq!(flips, bytes.len() as u64);
        assert_eq!(before.finish().checkpoints_verified, 10);
    }

    #[test]
    fn a_trace_follows_artifacts_from_data_to_devices() {
        let (data, model, package, other) = (sha(1), sha(2), sha(3), sha(4));
        let events = [
            AuditEvent::new(1, "ci", "package.uploaded", "m@1").artifact(&package).artifact(&model).artifact(&data),
            AuditEvent::new(2, "ci", "package.uploaded", "n@1").artifact(&other),
            AuditEvent::new(3, "ops", "deployment.created", "d1").artifact(&package),
            AuditEvent::new(4, "pump-1", "device.update", "pump-1").artifact(&package),
            AuditEvent::new(5, "pump-2", "device.update", "pump-2").artifact(&other),
        ];
        let mut records: Vec<AuditRecord> = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            let prev = records.last().map_or(GENESIS.to_string(), |r| r.hash.clone());
            records.push(e.seal(i as u64 + 1, &prev));
        }
        let seqs = |a: &str| trace(&records, a).iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&data), [1, 3, 4]);
        assert_eq!(seqs(&package), [1, 3, 4]);
        assert_eq!(seqs(&other), [2, 5]);
        assert!(seqs(&sha(9)).is_empty());
    }
}
