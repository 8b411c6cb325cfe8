//! `impeller audit verify|export|trace`: the hub's audit trail, read through its API or from an
//! export, checked with `impeller_core::audit`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use impeller_core::audit::{self, AuditRecord, ChainBreak, ChainSummary, ChainVerifier};
use impeller_core::package::TrustStore;

use crate::InputError;
use crate::cli::{ApiArgs, AuditBenchArgs, AuditCommand, AuditSource};
use crate::remote::Api;

/// The audit trail failed verification; exit code 4.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify { source, keys, partial, json } => {
            let trust = pinned(&keys)?;
            let summary = verify(&source, (!keys.is_empty()).then_some(&trust), partial)?;
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string(&summary)?)?;
            } else {
                write_summary(&mut out, &summary, !keys.is_empty())?;
            }
            // A pinned key that signed nothing ties no record to the hub.
            if !keys.is_empty() && summary.records > 0 && summary.checkpoints_verified == 0 {
                return Err(CheckFailed(
                    "no checkpoint is signed by the pinned key: the chain cannot be tied to the hub".into(),
                )
                .into());
            }
            Ok(())
        }
        AuditCommand::Export { since, out, api } => {
            let since_ms = since.map(|s| impeller_hub::store::now_ms() - s.min(i64::MAX as u64 / 1000) as i64 * 1000);
            let source = AuditSource { file: None, api };
            let mut sink: Box<dyn Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut n = 0u64;
            each_record(&source, since_ms, |r| {
                let r = r.map_err(InputError)?;
                serde_json::to_writer(&mut sink, &r)?;
                sink.write_all(b"\n")?;
                n += 1;
                Ok(())
            })?;
            sink.flush()?;
            if let Some(path) = out {
                tracing::info!(records = n, file = %path.display(), "audit trail exported");
            }
            Ok(())
        }
        AuditCommand::Trace { artifact, source, json } => {
            if !audit::is_sha256_hex(&artifact) {
                return Err(InputError(format!(
                    "`{artifact}`: an artifact is named by its SHA-256, 64 lowercase hex digits"
                ))
                .into());
            }
            let mut records = Vec::new();
            each_record(&source, None, |r| {
                records.push(r.map_err(InputError)?);
                Ok(())
            })?;
            let chain = audit::trace(&records, &artifact);
            let mut out = std::io::stdout().lock();
            for r in &chain {
                if json {
                    writeln!(out, "{}", serde_json::to_string(r)?)?;
                } else {
                    writeln!(
                        out,
                        "{:>6}  {}  {:<28} {:<24} by {}",
                        r.seq,
                        impeller_core::table::format_timestamp(r.time_ms),
                        r.action,
                        r.subject,
                        r.actor
                    )?;
                }
            }
            if chain.is_empty() && !json {
                writeln!(out, "no record names {artifact}")?;
            }
            Ok(())
        }
    }
}

fn pinned(keys: &[PathBuf]) -> anyhow::Result<TrustStore> {
    let mut trust = TrustStore::new();
    for k in keys {
        let bytes = std::fs::read(k).map_err(|e| InputError(format!("{}: {e}", k.display())))?;
        trust.add_key_file(&bytes, &k.display().to_string())?;
    }
    Ok(trust)
}

/// Checks the whole trail (from record 1, unless `partial`) record by record.
pub fn verify(source: &AuditSource, pinned: Option<&TrustStore>, partial: bool) -> anyhow::Result<ChainSummary> {
    let mut verifier = if partial { ChainVerifier::partial(pinned) } else { ChainVerifier::new(pinned) };
    let broken = |e: ChainBreak| CheckFailed(format!("the audit trail is broken: {e}"));
    let damaged = |e: String| CheckFailed(format!("the audit trail is damaged: {e}"));
    match &source.file {
        // An export can be large: each chunk of it is split into stretches verified on every
        // core apart, then joined in order at their boundaries.
        Some(path) => each_batch(path, |lines, first_line| {
            for stretch in verify_stretches(path, lines, first_line, pinned) {
                if let Some((seq, prev)) = &stretch.first {
                    verifier.check_next(*seq, prev).map_err(broken)?;
                }
                match stretch.result {
                    Ok(summary) => verifier.append(summary),
                    Err(StretchError::Damaged(e)) => return Err(damaged(e).into()),
                    Err(StretchError::Broken(e)) => return Err(broken(e).into()),
                }
            }
            Ok(())
        })?,
        None => each_record(source, None, |r| Ok(verifier.push(&r.map_err(damaged)?).map_err(broken)?))?,
    }
    Ok(verifier.finish())
}

/// One stretch of an export verified on its own, and its first record's (seq, prev) for the
/// join, known as long as that record parsed.
struct Stretch {
    first: Option<(u64, String)>,
    result: Result<ChainSummary, StretchError>,
}

enum StretchError {
    Damaged(String),
    Broken(ChainBreak),
}

/// The non-empty lines, parsed and checked as one stretch per core. Each thread frees the
/// records it parsed (freeing them on another thread made the allocator the bottleneck).
fn verify_stretches(path: &Path, lines: &[&[u8]], first_line: usize, pinned: Option<&TrustStore>) -> Vec<Stretch> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = lines.len().div_ceil(cores).max(1);
    let one = |c: usize, part: &[&[u8]]| {
        let mut verifier = ChainVerifier::partial(pinned);
        let mut first = None;
        for (i, line) in part.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
            let r = match serde_json::from_slice::<AuditRecord>(line) {
                Ok(r) => r,
                Err(e) => {
                    let at = first_line + c * per + i;
                    return Stretch {
                        first,
                        result: Err(StretchError::Damaged(format!("{}:{at}: {e}", path.display()))),
                    };
                }
            };
            first.get_or_insert_with(|| (r.seq, r.prev.clone()));
            if let Err(e) = verifier.push(&r) {
                return Stretch { first, result: Err(StretchError::Broken(e)) };
            }
        }
        Stretch { first, result: Ok(verifier.finish()) }
    };
    std::thread::scope(|scope| {
        let parts: Vec<_> = lines.chunks(per).enumerate().map(|(c, part)| scope.spawn(move || one(c, part))).collect();
        let failed = || Stretch { first: None, result: Err(StretchError::Damaged("a verifying thread failed".into())) };
        parts.into_iter().map(|p| p.join().unwrap_or_else(|_| failed())).collect()
    })
}

/// A file's lines in chunks of whole lines (about 8 MiB each), with the number of each chunk's
/// first line. A thread reads ahead while the caller works on the chunk before.
fn each_batch(path: &Path, mut each: impl FnMut(&[&[u8]], usize) -> anyhow::Result<()>) -> anyhow::Result<()> {
    const CHUNK: usize = 8 << 20;
    let mut file = std::fs::File::open(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(2);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut carry = Vec::new();
            loop {
                let mut chunk = std::mem::take(&mut carry);
                let start = chunk.len();
                chunk.resize(start + CHUNK, 0);
                let n = match std::io::Read::read(&mut file, &mut chunk[start..]) {
                    Ok(n) => n,
                    Err(e) => return tx.send(Err(e)),
                };
                chunk.truncate(start + n);
                if n == 0 {
                    return if chunk.is_empty() { Ok(()) } else { tx.send(Ok(chunk)) };
                }
                // Keep a partial last line for the next chunk.
                if let Some(end) = chunk.iter().rposition(|&b| b == b'\n') {
                    carry = chunk.split_off(end + 1);
                    tx.send(Ok(chunk))?;
                } else {
                    carry = chunk;
                }
            }
        });
        let mut first_line = 1;
        for chunk in rx {
            let chunk = chunk.map_err(|e| InputError(format!("{}: {e}", path.display())))?;
            let lines: Vec<&[u8]> = chunk.strip_suffix(b"\n").unwrap_or(&chunk).split(|&b| b == b'\n').collect();
            each(&lines, first_line)?;
            first_line += lines.len();
        }
        Ok(())
    })
}

fn write_summary(out: &mut impl Write, s: &ChainSummary, pinned: bool) -> std::io::Result<()> {
    let (Some(first), Some(last), Some(head)) = (s.first_seq, s.last_seq, &s.last_hash) else {
        return writeln!(out, "the audit trail is empty");
    };
    if pinned && s.checkpoints_verified == 0 {
        return writeln!(
            out,
            "audit trail consistent ({} records, {first} to {last}) but not tied to the hub: no checkpoint is signed by the pinned key",
            s.records
        );
    }
    writeln!(out, "audit trail intact: {} records, {first} to {last}, head {head}", s.records)?;
    if !pinned {
        let found = s.checkpoints_unpinned;
        return writeln!(
            out,
            "{found} signed checkpoints not checked: pass --key with the hub's audit.public.json to pin its key \
             (without it, a rewrite of the whole chain would go unseen)"
        );
    }
    match s.last_verified_seq {
        Some(covered) => writeln!(
            out,
            "{} checkpoints verified with the pinned key, the last covering records 1 to {covered}; \
             {} records after it rely on the chain alone",
            s.checkpoints_verified,
            last - covered
        )?,
        None => writeln!(out, "no checkpoint signed by a pinned key: the chain is consistent but not pinned")?,
    }
    if s.checkpoints_unpinned > 0 {
        writeln!(out, "{} checkpoints by keys not pinned were not counted", s.checkpoints_unpinned)?;
    }
    Ok(())
}

/// Records in chain order from a JSON Lines export or the hub's API; a record that cannot be
/// read is handed over as an error saying where.
fn each_record(
    source: &AuditSource,
    since_ms: Option<i64>,
    mut each: impl FnMut(Result<AuditRecord, String>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if let Some(path) = &source.file {
        return each_line(path, each);
    }
    let api = Api::new(&source.api)?;
    // `since` picks the first record; from there every record follows in chain order, whatever
    // its time (records' times are not strictly monotonic, and a gap would read as tampering).
    let mut after = 0;
    if let Some(ms) = since_ms {
        let first = api.call("GET", &format!("/audit?since_ms={ms}&limit=1"), None)?;
        match first["items"][0]["seq"].as_u64() {
            Some(seq) => after = seq - 1,
            None => return Ok(()),
        }
    }
    loop {
        let page = api.call("GET", &format!("/audit?after={after}&limit=1000"), None)?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        for v in items {
            let seq = v["seq"].clone();
            after = seq.as_u64().unwrap_or(after);
            each(serde_json::from_value(v).map_err(|e| format!("record {seq} from the hub: {e}")))?;
        }
        if page["next_after"].is_null() {
            return Ok(());
        }
    }
}

fn each_line(
    path: &Path,
    mut each: impl FnMut(Result<AuditRecord, String>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|e| InputError(format!("{}: {e}", path.display())))?;
        if line.is_empty() {
            continue;
        }
        each(serde_json::from_slice(&line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1)))?;
    }
    Ok(())
}

/// `impeller bench audit`.
pub fn bench(args: AuditBenchArgs) -> anyhow::Result<()> {
    use impeller_core::audit::{AuditEvent, GENESIS, checkpoint};
    use impeller_core::package::Signer25519;
    use std::time::Instant;
    let temp = tempfile::tempdir()?;
    let dir = args.keep.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| InputError(format!("{}: {e}", dir.display())))?;
    let signer = Signer25519::from_secret([42; 32]);
    let key = dir.join("audit.public.json");
    std::fs::write(&key, signer.public_file().to_json())?;

    // Records shaped like the hub's: an actor, a device, a package hash, a few details.
    let export = dir.join("audit.jsonl");
    let started = Instant::now();
    let mut sink = std::io::BufWriter::new(std::fs::File::create(&export)?);
    let mut prev = GENESIS.to_string();
    let package = impeller_core::hex::encode(&[7u8; 32]);
    for seq in 1..=args.records {
        let time_ms = 1_700_000_000_000 + seq as i64 * 1000;
        let event = if seq % 1000 == 0 {
            checkpoint(&signer, seq - 1, &prev, time_ms)
        } else {
            AuditEvent::new(time_ms, "pump-0042", "device.update.active", &format!("pump-{:04}", seq % 5000))
                .artifact(&package)
                .details(serde_json::json!({"deployment": "acme-gulf-v7", "running_release": 7, "seq": seq}))
        };
        let record = event.seal(seq, &prev);
        serde_json::to_writer(&mut sink, &record)?;
        sink.write_all(b"\n")?;
        prev = record.hash;
    }
    sink.flush()?;
    drop(sink);
    let sealed_s = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&export)?.len();

    // The peer: SHA-256 over the same bytes, read the same way.
    let started = Instant::now();
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut reader = std::fs::File::open(&export)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        sha2::Digest::update(&mut hasher, &buf[..n]);
    }
    let _ = sha2::Digest::finalize(hasher);
    let sha256_s = started.elapsed().as_secs_f64();

    let mut trust = TrustStore::new();
    trust.add(signer.verifying_key());
    let source = AuditSource {
        file: Some(export.clone()),
        api: ApiArgs { hub: String::new(), token: String::new(), ca_cert: None },
    };
    let started = Instant::now();
    let summary = verify(&source, Some(&trust), false)?;
    let verify_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(summary.records == args.records, "verified {} of {} records", summary.records, args.records);

    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "records": args.records, "export_bytes": bytes, "checkpoints": summary.checkpoints_verified,
            "seal_and_export_s": sealed_s, "verify_s": verify_s, "sha256_only_s": sha256_s,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "{} records, {} checkpoints, export {:.1} MiB",
            args.records,
            summary.checkpoints_verified,
            bytes as f64 / 1048576.0
        )?;
        writeln!(out, "seal and export:              {sealed_s:.2} s")?;
        writeln!(
            out,
            "verify the export (parse, hash, link, signatures): {verify_s:.2} s ({:.0} records/s)",
            args.records as f64 / verify_s
        )?;
        writeln!(out, "peer, SHA-256 of the same bytes: {sha256_s:.2} s (verify costs {:.1}x)", verify_s / sha256_s)?;
    }
    Ok(())
}
