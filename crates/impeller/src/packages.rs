//! `impeller keys …` and `impeller package …`.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use impeller_core::package::rollback::{RollbackDirective, SignedRollback};
use impeller_core::package::{
    InstallContext, KeyFile, Limits, PackageSpec, Signer25519, TrustStore, build, check_install, open, read_unverified,
};
use impeller_core::table::CsvFormat;
use impeller_hub::store::now_ms;
use serde::Serialize;

use crate::InputError;
use crate::cli::{AllowRollbackArgs, KeysGenerateArgs, PackageBuildArgs, PackageCommand, PackageVerifyArgs};
use crate::commands::{emit, emit_json, load_model};
use crate::data::{read_file, read_table};

const DAY_MS: i64 = 86_400_000;

pub fn run(cmd: PackageCommand) -> anyhow::Result<()> {
    match cmd {
        PackageCommand::Build(a) => build_package(a),
        PackageCommand::Verify(a) => verify(a),
        PackageCommand::Inspect { file, json } => inspect(&file, json),
        PackageCommand::AllowRollback(a) => allow_rollback(a),
        PackageCommand::Upload { file, api, json } => crate::remote::upload(&file, &api, json),
    }
}

/// Writes a file readable by its owner only (where the platform has permissions).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

pub fn keys_generate(args: KeysGenerateArgs) -> anyhow::Result<()> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness from the operating system: {e}"))?;
    let signer = Signer25519::from_secret(secret);
    let secret_path = args.out.join(format!("{}.secret.json", args.name));
    let public_path = args.out.join(format!("{}.public.json", args.name));
    if secret_path.exists() || public_path.exists() {
        return Err(InputError(format!(
            "{} or {} exists already; not overwriting a key",
            secret_path.display(),
            public_path.display()
        ))
        .into());
    }
    write_private(&secret_path, &signer.secret_file().to_json())?;
    std::fs::write(&public_path, signer.public_file().to_json())
        .with_context(|| format!("writing {}", public_path.display()))?;
    emit(|out| {
        writeln!(out, "key id {}", signer.key_id())?;
        writeln!(out, "secret: {} (keep it offline; it signs packages)", secret_path.display())?;
        writeln!(out, "public: {} (install it on devices as a trusted key)", public_path.display())
    })
}

fn load_key(path: &Path) -> anyhow::Result<KeyFile> {
    Ok(KeyFile::parse(&read_file(path)?, &path.display().to_string())?)
}

fn build_package(a: PackageBuildArgs) -> anyhow::Result<()> {
    let model = load_model(&a.model)?;
    let key = load_key(&a.key)?;
    let signer = key.signer(&a.key.display().to_string())?;
    let names: Vec<&str> = model.channels.iter().map(|c| c.name.as_str()).collect();
    let table =
        read_table(&a.data, &a.data.display().to_string(), &CsvFormat { columns: Some(&names), ..CsvFormat::SKAB })?;
    let mut frames = table.frames();
    if let Some(n) = a.rows {
        frames.truncate(n);
    }
    let mut metrics = std::collections::BTreeMap::new();
    for m in &a.metrics {
        let (k, v) = m.split_once('=').ok_or_else(|| InputError(format!("--metric {m}: expected NAME=VALUE")))?;
        let v: f64 = v.parse().map_err(|_| InputError(format!("--metric {m}: `{v}` is not a number")))?;
        metrics.insert(k.to_string(), v);
    }
    let created = now_ms();
    let spec = PackageSpec {
        name: a.name,
        version: a.model_version,
        release: a.release,
        target: a.target,
        created_ms: created,
        expires_ms: created + i64::from(a.expires_in_days) * DAY_MS,
        pipeline_run: a.pipeline_run,
        metrics,
    };
    let bytes = build(&model, &frames, &spec, &signer)?;
    std::fs::write(&a.out, &bytes).with_context(|| format!("writing {}", a.out.display()))?;
    emit(|out| {
        writeln!(
            out,
            "wrote {} ({} bytes): {} {} release {} for {}, signed by {}",
            a.out.display(),
            bytes.len(),
            spec.name,
            spec.version,
            spec.release,
            spec.target,
            signer.key_id()
        )
    })
}

#[derive(Debug, Serialize)]
struct VerifyReport {
    ok: bool,
    code: Option<&'static str>,
    reason: Option<String>,
    model: Option<String>,
    release: Option<u64>,
    signed_by: Option<String>,
    manifest_sha256: Option<String>,
}

fn verify(a: PackageVerifyArgs) -> anyhow::Result<()> {
    let mut trust = TrustStore::new();
    for p in &a.trust {
        trust.add(load_key(p)?.verifying_key(&p.display().to_string())?);
    }
    let rollback = match &a.rollback {
        Some(p) => Some(
            SignedRollback::verify(&read_file(p)?, &trust)
                .with_context(|| format!("rollback directive {}", p.display()))?,
        ),
        None => None,
    };
    let bytes = read_file(&a.file)?;
    let limits = Limits { max_bytes: a.max_bytes, ..Limits::default() };
    let outcome = open(&bytes, &trust, limits).and_then(|pkg| {
        let ctx = InstallContext {
            now_ms: now_ms(),
            target: a.target.as_deref().unwrap_or(&pkg.manifest.target),
            installed_release: a.installed_release,
            rollback: rollback.as_ref(),
        };
        check_install(&pkg, &ctx).map(|()| pkg)
    });
    let report = match &outcome {
        Ok(pkg) => VerifyReport {
            ok: true,
            code: None,
            reason: None,
            model: Some(format!("{} {}", pkg.manifest.model.name, pkg.manifest.model.version)),
            release: Some(pkg.manifest.release),
            signed_by: Some(pkg.signed_by.clone()),
            manifest_sha256: Some(pkg.manifest_sha256.clone()),
        },
        Err(e) => VerifyReport {
            ok: false,
            code: Some(e.code()),
            reason: Some(e.to_string()),
            model: None,
            release: None,
            signed_by: None,
            manifest_sha256: None,
        },
    };
    if a.json {
        emit_json(&report)?;
    } else if let Ok(pkg) = &outcome {
        emit(|out| {
            writeln!(
                out,
                "ok: {} {} release {} for {}, signed by {}, self-test passed",
                pkg.manifest.model.name,
                pkg.manifest.model.version,
                pkg.manifest.release,
                pkg.manifest.target,
                pkg.signed_by
            )
        })?;
    }
    match outcome {
        Ok(_) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("package {} refused", a.file.display()))),
    }
}

fn inspect(path: &Path, json: bool) -> anyhow::Result<()> {
    let (manifest, signature) = read_unverified(&read_file(path)?, Limits::default())?;
    if json {
        return emit_json(&serde_json::json!({ "verified": false, "manifest": manifest, "signature": signature }));
    }
    emit(|out| {
        writeln!(out, "NOT VERIFIED (use `impeller package verify` with trusted keys)")?;
        writeln!(out, "model:     {} {} release {}", manifest.model.name, manifest.model.version, manifest.release)?;
        writeln!(out, "target:    {}", manifest.target)?;
        writeln!(out, "created:   {} ms, expires {} ms", manifest.created_ms, manifest.expires_ms)?;
        writeln!(out, "detector:  {} on {} channels", manifest.detector, manifest.channels.len())?;
        writeln!(out, "training:  {} frames, data sha256 {}", manifest.training.frames, manifest.training.data_sha256)?;
        for (k, v) in &manifest.metrics {
            writeln!(out, "metric:    {k} = {v}")?;
        }
        for a in &manifest.artifacts {
            writeln!(out, "artifact:  {} ({} bytes) sha256 {}", a.name, a.bytes, a.sha256)?;
        }
        match &signature {
            Some(s) => writeln!(out, "signature: {} by key {}", s.algorithm, s.key_id),
            None => writeln!(out, "signature: none"),
        }
    })
}

fn allow_rollback(a: AllowRollbackArgs) -> anyhow::Result<()> {
    let key = load_key(&a.key)?;
    let signer = key.signer(&a.key.display().to_string())?;
    let issued = now_ms();
    let signed =
        RollbackDirective::new(&a.model, a.release, &a.target, issued, issued + i64::from(a.expires_in_days) * DAY_MS)
            .sign(&signer);
    std::fs::write(&a.out, signed.to_json()).with_context(|| format!("writing {}", a.out.display()))?;
    emit(|out| {
        writeln!(
            out,
            "wrote {}: {} release {} on {} allowed for {} days",
            a.out.display(),
            a.model,
            a.release,
            a.target,
            a.expires_in_days
        )
    })
}
