//! Model packages: build, verify, and every refusal a device must make.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use impeller_core::package::rollback::{RollbackDirective, SignedRollback};
use impeller_core::package::{
    InstallContext, Limits, PackageError, PackageSpec, Signer25519, TrustStore, build, check_install, open,
};
use impeller_core::{Frame, Model, train};

use crate::util::{channels, configs, frames};

const NOW: i64 = 1_700_000_000_000;
const DAY: i64 = 86_400_000;

fn signer(seed: u8) -> Signer25519 {
    Signer25519::from_secret([seed; 32])
}

fn trust(signers: &[&Signer25519]) -> TrustStore {
    let mut t = TrustStore::new();
    for s in signers {
        t.add(s.verifying_key());
    }
    t
}

fn spec(release: u64) -> PackageSpec {
    PackageSpec {
        name: "pump-p101".into(),
        version: "1.0.0".into(),
        release,
        target: "acme-gw-small".into(),
        created_ms: NOW,
        expires_ms: NOW + 30 * DAY,
        pipeline_run: Some("run-42".into()),
        metrics: BTreeMap::from([("f1".to_string(), 0.85), ("far".to_string(), 0.14)]),
    }
}

fn trained() -> (Model, Vec<Frame>) {
    let data = frames(400, 1, None);
    (train(&channels(), &data, &configs()[1].1).unwrap(), data)
}

fn package(release: u64) -> Vec<u8> {
    let (model, data) = trained();
    build(&model, &data, &spec(release), &signer(1)).unwrap()
}

fn ctx(installed_release: Option<u64>) -> InstallContext<'static> {
    InstallContext { now_ms: NOW + DAY, target: "acme-gw-small", installed_release, rollback: None }
}

/// The files of a package, in order.
fn unpack(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (e.path().unwrap().to_string_lossy().into_owned(), data)
        })
        .collect()
}

/// Packs files back, with any entry type and raw name.
fn pack(files: &[(String, Vec<u8>, tar::EntryType)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, kind) in files {
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(*kind);
        h.set_cksum();
        tar.append(&h, data.as_slice()).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fn repack(files: Vec<(String, Vec<u8>)>) -> Vec<u8> {
    pack(&files.into_iter().map(|(n, d)| (n, d, tar::EntryType::Regular)).collect::<Vec<_>>())
}

/// Rewrites the manifest with `edit` and signs it again with `by`.
fn resigned(bytes: &[u8], by: &Signer25519, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut files = unpack(bytes);
    let mut manifest: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    edit(&mut manifest);
    files[0].1 = serde_json::to_vec(&manifest).unwrap();
    let sig = serde_json::json!({"algorithm": "ed25519", "key_id": by.key_id(), "signature": by.sign_hex(&files[0].1)});
    files[1].1 = serde_json::to_vec(&sig).unwrap();
    repack(files)
}

fn refusal(bytes: &[u8]) -> PackageError {
    open(bytes, &trust(&[&signer(1)]), Limits::default()).unwrap_err()
}

#[test]
fn a_built_package_verifies_installs_and_passes_its_self_test() {
    let bytes = package(7);
    let pkg = open(&bytes, &trust(&[&signer(1)]), Limits::default()).unwrap();
    assert_eq!(pkg.manifest.release, 7);
    assert_eq!(pkg.signed_by, signer(1).key_id());
    assert_eq!(pkg.manifest.metrics["f1"], 0.85);
    assert_eq!(pkg.manifest.training.data_sha256, pkg.model.training.data_sha256);
    assert_eq!(pkg.reference.count, pkg.model.training.vectors);
    let names: Vec<String> = unpack(&bytes).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["manifest.json", "signature.json", "model.json", "selftest.json", "reference.json"]);
    check_install(&pkg, &ctx(Some(6))).unwrap();
    check_install(&pkg, &ctx(None)).unwrap();
    // The self-test exercises the alarm path, not only normal frames.
    assert!(pkg.selftest.frames.iter().any(|f| f.alarm) && pkg.selftest.frames.iter().any(|f| !f.alarm));
}

#[test]
fn building_is_deterministic() {
    assert!(package(7) == package(7), "same model, data, spec and key must give the same bytes");
}

#[test]
fn the_builder_refuses_frames_that_are_not_the_training_data() {
    let (model, _) = trained();
    let e = build(&model, &frames(400, 2, None), &spec(1), &signer(1)).unwrap_err();
    assert!(matches!(e, PackageError::Build(_)), "{e}");
}

#[test]
fn unsigned() {
    let files: Vec<_> = unpack(&package(7)).into_iter().filter(|(n, _)| n != "signature.json").collect();
    assert_eq!(refusal(&repack(files)), PackageError::Unsigned);
}

#[test]
fn signed_by_an_unknown_key() {
    let e = open(&package(7), &trust(&[&signer(2)]), Limits::default()).unwrap_err();
    assert_eq!(e, PackageError::UnknownKey { key_id: signer(1).key_id().to_string() });
}

#[test]
fn every_manifest_byte_is_covered_by_the_signature() {
    let files = unpack(&package(7));
    let manifest_len = files[0].1.len();
    for i in (0..manifest_len).step_by(97) {
        let mut f = files.clone();
        f[0].1[i] ^= 0x01;
        let e = refusal(&repack(f));
        assert!(matches!(e, PackageError::BadSignature), "byte {i}: {e}");
    }
}

#[test]
fn every_artifact_byte_is_covered_by_its_hash() {
    let files = unpack(&package(7));
    for a in 2..files.len() {
        for i in (0..files[a].1.len()).step_by(211) {
            let mut f = files.clone();
            f[a].1[i] ^= 0x01;
            let e = refusal(&repack(f));
            assert!(matches!(e, PackageError::ArtifactMismatch { .. }), "{} byte {i}: {e}", files[a].0);
        }
    }
}

#[test]
fn a_signature_from_another_trusted_key_over_changed_content_still_fails_consistency() {
    // A trusted signer who lists a different detector than the model holds is caught.
    let bytes = resigned(&package(7), &signer(1), |m| m["detector"] = "mset".into());
    assert!(matches!(refusal(&bytes), PackageError::Malformed { .. }));
}

#[test]
fn rollback_is_refused_unless_a_signed_directive_allows_it() {
    let pkg = open(&package(5), &trust(&[&signer(1)]), Limits::default()).unwrap();
    assert_eq!(check_install(&pkg, &ctx(Some(5))).unwrap_err(), PackageError::NotNewer { offered: 5, installed: 5 });
    assert_eq!(check_install(&pkg, &ctx(Some(9))).unwrap_err(), PackageError::NotNewer { offered: 5, installed: 9 });

    let directive = RollbackDirective::new("pump-p101", 5, "acme-gw-small", NOW, NOW + 2 * DAY).sign(&signer(1));
    let verified = SignedRollback::verify(&directive.to_json(), &trust(&[&signer(1)])).unwrap();
    check_install(&pkg, &InstallContext { rollback: Some(&verified), ..ctx(Some(9)) }).unwrap();

    // For another release, expired, or signed by an untrusted key: refused.
    let other = RollbackDirective::new("pump-p101", 4, "acme-gw-small", NOW, NOW + 2 * DAY);
    let e = check_install(&pkg, &InstallContext { rollback: Some(&other), ..ctx(Some(9)) }).unwrap_err();
    assert!(matches!(e, PackageError::BadRollback { .. }), "{e}");
    let stale = RollbackDirective::new("pump-p101", 5, "acme-gw-small", NOW - 9 * DAY, NOW - DAY);
    let e = check_install(&pkg, &InstallContext { rollback: Some(&stale), ..ctx(Some(9)) }).unwrap_err();
    assert!(matches!(e, PackageError::BadRollback { .. }), "{e}");
    let forged = RollbackDirective::new("pump-p101", 5, "acme-gw-small", NOW, NOW + DAY).sign(&signer(3));
    let e = SignedRollback::verify(&forged.to_json(), &trust(&[&signer(1)])).unwrap_err();
    assert!(matches!(e, PackageError::UnknownKey { .. }), "{e}");
    let mut tampered = directive.clone();
    tampered.directive.release = 4;
    let e = SignedRollback::verify(&tampered.to_json(), &trust(&[&signer(1)])).unwrap_err();
    assert_eq!(e, PackageError::BadSignature);
}

#[test]
fn expired() {
    let pkg = open(&package(7), &trust(&[&signer(1)]), Limits::default()).unwrap();
    let late = InstallContext { now_ms: NOW + 31 * DAY, ..ctx(None) };
    assert!(matches!(check_install(&pkg, &late), Err(PackageError::Expired { .. })));
}

#[test]
fn built_for_another_target() {
    let pkg = open(&package(7), &trust(&[&signer(1)]), Limits::default()).unwrap();
    let other = InstallContext { target: "vendor-b-arm", ..ctx(None) };
    assert_eq!(
        check_install(&pkg, &other).unwrap_err(),
        PackageError::WrongTarget { package: "acme-gw-small".into(), device: "vendor-b-arm".into() }
    );
}

#[test]
fn larger_than_the_limit() {
    let bytes = package(7);
    let small = Limits { max_bytes: bytes.len() as u64 - 1, ..Limits::default() };
    assert!(matches!(open(&bytes, &trust(&[&signer(1)]), small), Err(PackageError::TooLarge { .. })));
    let unpacked = Limits { max_unpacked_bytes: 1000, ..Limits::default() };
    assert!(matches!(open(&bytes, &trust(&[&signer(1)]), unpacked), Err(PackageError::TooLarge { .. })));
}

#[test]
fn archive_paths_escaping_the_package() {
    for evil in ["../model.json", "/etc/passwd", "a/../../b"] {
        let mut files: Vec<_> = unpack(&package(7)).into_iter().map(|(n, d)| (n, d, tar::EntryType::Regular)).collect();
        files.push((evil.to_string(), b"x".to_vec(), tar::EntryType::Regular));
        assert_eq!(refusal(&pack(&files)), PackageError::PathEscape { path: evil.into() }, "{evil}");
    }
}

#[test]
fn links_directories_and_unlisted_files_are_refused() {
    for (name, kind) in
        [("link", tar::EntryType::Symlink), ("dir", tar::EntryType::Directory), ("notes.txt", tar::EntryType::Regular)]
    {
        let mut files: Vec<_> = unpack(&package(7)).into_iter().map(|(n, d)| (n, d, tar::EntryType::Regular)).collect();
        files.push((name.to_string(), Vec::new(), kind));
        assert!(matches!(refusal(&pack(&files)), PackageError::Malformed { .. }), "{name}");
    }
}

#[test]
fn truncated_files_are_refused_at_every_length() {
    let bytes = package(7);
    for len in (0..bytes.len()).step_by(53) {
        let e = refusal(&bytes[..len]);
        assert!(
            matches!(e, PackageError::Truncated { .. } | PackageError::Malformed { .. } | PackageError::Unsigned),
            "{len}: {e}"
        );
    }
}

#[test]
fn a_self_test_the_engine_cannot_reproduce_blocks_installation() {
    // Sign a package whose self-test expects other scores: what a device with a different
    // scoring engine would see.
    let mut files = unpack(&package(7));
    let mut st: serde_json::Value = serde_json::from_slice(&files[3].1).unwrap();
    let frames = st["frames"].as_array_mut().unwrap();
    let scored = frames.iter_mut().rev().find(|f| f["score"].is_number()).unwrap();
    scored["score"] = (scored["score"].as_f64().unwrap() + 0.5).into();
    files[3].1 = serde_json::to_vec(&st).unwrap();
    let new_hash = impeller_core::hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(&files[3].1));
    let new_len = files[3].1.len();
    let bytes = resigned(&repack(files), &signer(1), |m| {
        m["artifacts"][1]["sha256"] = new_hash.into();
        m["artifacts"][1]["bytes"] = new_len.into();
    });
    let pkg = open(&bytes, &trust(&[&signer(1)]), Limits::default()).unwrap();
    assert!(matches!(check_install(&pkg, &ctx(None)), Err(PackageError::SelfTest(_))));
}

#[test]
fn golden_package_still_verifies() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/package-v1");
    let path = dir.join("pump-p101-r7.tar.gz");
    let key = dir.join("signer.public.json");
    if !path.exists() {
        assert!(std::env::var_os("IMPELLER_BLESS").is_some(), "missing {}; run with IMPELLER_BLESS=1", path.display());
        std::fs::write(&path, package(7)).unwrap();
        std::fs::write(&key, signer(1).public_file().to_json()).unwrap();
    }
    let public = impeller_core::package::KeyFile::parse(&std::fs::read(&key).unwrap(), "signer.public.json").unwrap();
    let mut t = TrustStore::new();
    t.add(public.verifying_key("signer.public.json").unwrap());
    let pkg = open(&std::fs::read(&path).unwrap(), &t, Limits::default()).unwrap();
    check_install(&pkg, &ctx(Some(6))).unwrap();
}

#[test]
fn an_extra_artifact_is_listed_hashed_and_checked() {
    use impeller_core::package::build_parts_with;
    let (model, frames) = trained();
    let onnx: &[u8] = b"\x08\x08graph";
    let bytes = build_parts_with(&model, &[&frames], &spec(3), &signer(1), &[("model.onnx", onnx)]).unwrap();
    let pkg = open(&bytes, &trust(&[&signer(1)]), Limits::default()).unwrap();
    let listed = pkg.manifest.artifacts.iter().find(|a| a.name == "model.onnx").unwrap();
    assert_eq!(listed.bytes, onnx.len() as u64);
    // Its bytes changed: refused, naming it.
    let mut files = unpack(&bytes);
    let at = files.iter().position(|(n, _)| n == "model.onnx").unwrap();
    files[at].1[0] ^= 1;
    let tampered = repack(files);
    assert!(matches!(
        open(&tampered, &trust(&[&signer(1)]), Limits::default()),
        Err(PackageError::ArtifactMismatch { name, .. }) if name == "model.onnx"
    ));
    for bad in ["model.json", "../x", "", "Model.onnx", "a/b"] {
        let r = build_parts_with(&model, &[&frames], &spec(3), &signer(1), &[(bad, onnx)]);
        assert!(matches!(r, Err(PackageError::Build(_))), "`{bad}` accepted");
    }
    let twice = build_parts_with(&model, &[&frames], &spec(3), &signer(1), &[("a.onnx", onnx), ("a.onnx", onnx)]);
    assert!(matches!(twice, Err(PackageError::Build(_))));
}
