//! The audit record format's golden fixture: an export written by version 1 of the chain
//! (events of each kind the hub records, and a signed checkpoint) must keep verifying with the
//! key that signed it, so a regulator's copy from years ago still checks.

use std::path::PathBuf;

use impeller_core::audit::{AuditEvent, AuditRecord, GENESIS, checkpoint, verify};
use impeller_core::package::{KeyFile, Signer25519, TrustStore};

fn golden_export() -> Vec<u8> {
    let signer = Signer25519::from_secret([11; 32]);
    let package = "9f2b6c1e0d4a3b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e".to_string();
    let events = [
        AuditEvent::new(1_764_000_000_000, "local:ops", "token.created", "token:0a1b2c3d4e5f6071")
            .details(serde_json::json!({"name": "ci", "role": "operator"})),
        AuditEvent::new(1_764_000_001_000, "token:0a1b2c3d4e5f6071", "device.added", "pump-p101")
            .details(serde_json::json!({"tags": {"site": "gulf", "manufacturer": "acme"}, "profile": "gw-arm64"})),
        AuditEvent::new(1_764_000_002_000, "token:0a1b2c3d4e5f6071", "package.uploaded", "pump-acme@7")
            .artifact(&package)
            .details(serde_json::json!({"release": 7, "target": "gw-arm64", "signed_by": "k1", "size": 5120})),
        AuditEvent::new(1_764_000_003_000, "pump-p101", "device.update.active", "pump-p101")
            .artifact(&package)
            .details(serde_json::json!({"deployment": "acme-gulf", "reason": null, "running_release": 7,
                "seq": 42, "device_ts_ms": 1_764_000_002_900_i64, "note": "µ°C \"quoted\" \u{1F6E2}"})),
    ];
    let mut out = Vec::new();
    let mut prev = GENESIS.to_string();
    let mut seq = 0;
    let mut push = |event: AuditEvent, prev: &mut String, seq: &mut u64| {
        *seq += 1;
        let r = event.seal(*seq, prev);
        out.extend(serde_json::to_vec(&r).unwrap());
        out.push(b'\n');
        *prev = r.hash;
    };
    for e in events {
        push(e, &mut prev, &mut seq);
    }
    let cp = checkpoint(&signer, seq, &prev, 1_764_000_004_000);
    push(cp, &mut prev, &mut seq);
    std::fs::write(fixtures().join("signer.public.json"), signer.public_file().to_json()).unwrap();
    out
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit-v1")
}

#[test]
fn golden_audit_export_still_verifies() {
    let path = fixtures().join("audit.jsonl");
    if !path.exists() {
        assert!(std::env::var_os("IMPELLER_BLESS").is_some(), "missing {}; run with IMPELLER_BLESS=1", path.display());
        std::fs::create_dir_all(fixtures()).unwrap();
        std::fs::write(&path, golden_export()).unwrap();
    }
    let key = fixtures().join("signer.public.json");
    let public = KeyFile::parse(&std::fs::read(&key).unwrap(), "signer.public.json").unwrap();
    let mut pinned = TrustStore::new();
    pinned.add(public.verifying_key("signer.public.json").unwrap());
    let text = std::fs::read_to_string(&path).unwrap();
    let records: Vec<AuditRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary = verify(&records, Some(&pinned)).unwrap();
    assert_eq!((summary.records, summary.checkpoints_verified, summary.last_verified_seq), (5, 1, Some(4)));
    // Hashes are over the fields, not the JSON text: the records re-serialised still verify.
    let again: Vec<AuditRecord> =
        records.iter().map(|r| serde_json::from_value(serde_json::to_value(r).unwrap()).unwrap()).collect();
    assert!(verify(&again, Some(&pinned)).is_ok());
}
