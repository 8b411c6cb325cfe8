//! `impeller pipeline …`, `impeller dataset …` and the registry side of `impeller model …`:
//! the lifecycle from data to a registered, signed package. The pipeline runs here; the
//! registry is the hub's, reached through its API.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use impeller_core::package::{KeyFile, Limits, TrustStore, open};
use impeller_pipeline::PipelineError;
use impeller_pipeline::dataset::{self, Dataset};
use impeller_pipeline::run::{
    Champion, NewVersion, Outcome, Progress, RegisteredVersion, Registry, RunOptions, RunRecord, VersionOutcome, run,
};
use impeller_pipeline::spec::{self, PipelineSpec};
use serde_json::{Value, json};

use crate::InputError;
use crate::audit::CheckFailed;
use crate::cli::{DatasetCommand, ModelCommand, PipelineCommand, PipelineRunArgs};
use crate::commands::{emit, emit_json};
use crate::remote::{Api, each_item};
use impeller_hub::store::FleetStore;

pub fn pipeline(cmd: PipelineCommand) -> anyhow::Result<()> {
    match cmd {
        PipelineCommand::GenerateSpec => emit(|out| out.write_all(spec::EXAMPLE.as_bytes())),
        PipelineCommand::Run(args) => pipeline_run(args),
        PipelineCommand::Submit { spec, wait, api } => submit(&spec, wait, &api),
        PipelineCommand::Runs { api, json } => {
            let v = Api::new(&api)?.call("GET", "/runs", None)?;
            if json {
                return emit_json(&v["items"]);
            }
            emit(|out| {
                for r in v["items"].as_array().into_iter().flatten() {
                    let outcome = r["record"]["outcome"].as_str().or(r["step"].as_str()).unwrap_or("");
                    writeln!(
                        out,
                        "{:<24} {:<20} {:<9} {outcome:<12} version {}",
                        r["id"].as_str().unwrap_or(""),
                        r["model"].as_str().unwrap_or(""),
                        r["state"].as_str().unwrap_or(""),
                        r["record"]["version"]
                    )?;
                }
                Ok(())
            })
        }
    }
}

/// `impeller pipeline submit`: the spec and the profiles it names go to the hub, which runs it.
fn submit(spec_path: &Path, wait: bool, api: &crate::cli::ApiArgs) -> anyhow::Result<()> {
    let (spec, base) = PipelineSpec::load(spec_path)?;
    let text = std::fs::read_to_string(spec_path).map_err(|e| InputError(format!("{}: {e}", spec_path.display())))?;
    let mut profiles = serde_json::Map::new();
    for t in &spec.targets {
        let path = base.join(t);
        let p = std::fs::read_to_string(&path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
        profiles.insert(t.to_string_lossy().into_owned(), Value::String(p));
    }
    let api = Api::new(api)?;
    let body = serde_json::to_vec(&json!({"spec": text, "profiles": profiles}))?;
    let view = api.call("POST", "/runs", Some((body, "application/json")))?;
    let id = view["id"].as_str().context("the hub's answer has no run id")?.to_string();
    if !wait {
        return emit(|out| writeln!(out, "{id}"));
    }
    let mut shown = 0;
    loop {
        let v = api.call("GET", &format!("/runs/{id}"), None)?;
        let steps = v["steps"].as_array().cloned().unwrap_or_default();
        for s in steps.iter().skip(shown) {
            let how = if s["cached"].as_bool() == Some(true) { "cached" } else { "ran" };
            let _ = writeln!(
                std::io::stderr(),
                "  {:<28} {how:>6} {:>8.0} ms  {}",
                s["step"].as_str().unwrap_or(""),
                s["ms"].as_f64().unwrap_or_default(),
                s["detail"].as_str().unwrap_or("")
            );
        }
        shown = steps.len();
        if v["state"] == "finished" {
            let record: RunRecord = serde_json::from_value(v["record"].clone()).context("the run's record")?;
            emit(|out| write_record(out, &record, Path::new("(on the hub)")))?;
            return match record.outcome {
                Outcome::Rejected => Err(CheckFailed(format!("{} was not registered as ready", record.model)).into()),
                Outcome::Failed => Err(InputError(record.error.unwrap_or_else(|| "the run failed".into())).into()),
                _ => Ok(()),
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Packages' creation time: `SOURCE_DATE_EPOCH` (seconds, the reproducible-builds convention)
/// when set, else now.
fn created_ms() -> anyhow::Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| InputError(format!("SOURCE_DATE_EPOCH `{s}`: seconds since the epoch")).into()),
        Err(_) => Ok(impeller_hub::store::now_ms()),
    }
}

fn load_key(path: &Path) -> anyhow::Result<KeyFile> {
    let bytes = std::fs::read(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    Ok(KeyFile::parse(&bytes, &path.display().to_string())?)
}

fn pipeline_run(a: PipelineRunArgs) -> anyhow::Result<()> {
    let (spec, base) = PipelineSpec::load(&a.spec)?;
    let key = load_key(&a.key)?;
    let signer = key.signer(&a.key.display().to_string())?;
    let mut trust = TrustStore::new();
    trust.add(signer.verifying_key());
    for k in &a.trusted_keys {
        let bytes = std::fs::read(k).map_err(|e| InputError(format!("{}: {e}", k.display())))?;
        trust.add_key_file(&bytes, &k.display().to_string())?;
    }
    let mut options = RunOptions::new(a.work.clone(), base, signer, created_ms()?);
    options.import = a.import.clone();
    options.release = a.release;
    let mut hub = if a.local { None } else { Some(HubRegistry { api: Api::new(&a.api)?, trust }) };
    // A dataset named by hash that is not here yet comes from the hub.
    if let (Some(hash), Some(h)) = (&spec.data.dataset, &hub)
        && dataset::read_manifest(&options.datasets(), hash).is_err()
    {
        pull(&h.api, hash, &options.datasets())?;
    }
    // A spinner names the step running (on a terminal); each finished step is a line.
    let spinner = crate::progress::spinner("  {spinner} {msg} ({elapsed})");
    let mut progress = |p: Progress<'_>| match p {
        Progress::Started { step } => spinner.set_message(step.to_string()),
        Progress::Finished(s) => {
            let how = if s.cached { "cached" } else { "ran" };
            let line = format!("  {:<28} {how:>6} {:>8.0} ms  {}", s.step, s.ms, s.detail);
            spinner.suspend(|| writeln!(std::io::stderr(), "{line}").ok());
        }
    };
    let record = run(&spec, &options, hub.as_mut().map(|h| h as &mut dyn Registry), &mut progress);
    crate::progress::done();
    let record = record?;
    if a.json {
        emit_json(&record)?;
    } else {
        emit(|out| write_record(out, &record, &a.work))?;
    }
    match record.outcome {
        Outcome::Registered | Outcome::Built | Outcome::Unchanged => Ok(()),
        Outcome::Rejected => {
            let failed: Vec<String> =
                record.gates.iter().filter(|g| !g.passed).map(|g| format!("{}: {}", g.gate, g.detail)).collect();
            let why = failed.join("; ");
            Err(CheckFailed(format!("{} was not registered as ready: {why}", spec.model)).into())
        }
        Outcome::Failed => {
            let error = record.error.unwrap_or_else(|| "the run failed".into());
            Err(InputError(error).into())
        }
    }
}

fn write_record(out: &mut dyn Write, r: &RunRecord, work: &Path) -> std::io::Result<()> {
    let outcome = match r.outcome {
        Outcome::Registered => {
            format!("registered {} version {} (release {})", r.model, opt(r.version), opt(r.release))
        }
        Outcome::Built => format!("built {} (not registered: --local)", r.model),
        Outcome::Unchanged => format!("unchanged: {} version {} has this run already", r.model, opt(r.version)),
        Outcome::Rejected => match r.version {
            Some(v) => format!("rejected: {} version {v} registered as failed", r.model),
            None => format!("rejected: {} failed its checks (not registered: --local)", r.model),
        },
        Outcome::Failed => format!("failed: {}", r.error.as_deref().unwrap_or("")),
    };
    writeln!(out, "{outcome}")?;
    if let Some(sha) = &r.dataset_sha256 {
        writeln!(out, "dataset   {sha}")?;
    }
    if let Some(sha) = &r.model_sha256 {
        writeln!(out, "model     {sha}")?;
    }
    if let Some(key) = &r.run_key {
        writeln!(out, "run key   {key}")?;
    }
    for g in &r.gates {
        writeln!(out, "  {} {:<22} {}", if g.passed { "pass" } else { "FAIL" }, g.gate, g.detail)?;
    }
    for p in &r.packages {
        writeln!(out, "  package {:<12} {} {:>8} bytes", p.target, p.sha256, p.bytes)?;
    }
    writeln!(out, "run record: {}", work.join("runs").join(format!("{}.json", r.id)).display())
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// The hub's registry, through its API.
struct HubRegistry {
    api: Api,
    /// Keys the champion's package must be signed with.
    trust: TrustStore,
}

fn registry_error(e: anyhow::Error) -> PipelineError {
    PipelineError::Registry(format!("{e:#}"))
}

fn registered(v: &Value) -> Result<RegisteredVersion, PipelineError> {
    serde_json::from_value(json!({"version": v["version"], "release": v["release"], "status": v["status"]}))
        .map_err(|e| PipelineError::Registry(format!("the hub's answer: {e}")))
}

impl Registry for HubRegistry {
    fn champion(&mut self, model: &str) -> Result<Option<Champion>, PipelineError> {
        let Some(v) = self.api.get_opt(&format!("/models/{model}/aliases/champion")).map_err(registry_error)? else {
            return Ok(None);
        };
        let version = v["version"].as_u64().unwrap_or_default();
        let sha = v["packages"][0]["sha256"].as_str().ok_or_else(|| {
            PipelineError::Registry(format!("champion {model}@{version} has no package to read its model from"))
        })?;
        let bytes = self.api.raw(&format!("/packages/{sha}/content")).map_err(registry_error)?;
        let pkg = open(&bytes, &self.trust, Limits::default())
            .map_err(|e| PipelineError::Registry(format!("champion {model}@{version}'s package {sha}: {e}")))?;
        Ok(Some(Champion { version, model: (*pkg.model).clone() }))
    }

    fn find_run(&mut self, model: &str, run_key: &str) -> Result<Option<RegisteredVersion>, PipelineError> {
        let page = self
            .api
            .call("GET", &format!("/models/{model}/versions?run_key={run_key}"), None)
            .map_err(registry_error)?;
        page["items"].as_array().and_then(|items| items.first()).map(registered).transpose()
    }

    fn create_version(&mut self, model: &str, new: &NewVersion) -> Result<RegisteredVersion, PipelineError> {
        let body = serde_json::to_vec(new).map_err(|e| PipelineError::Registry(e.to_string()))?;
        let v = self
            .api
            .call("POST", &format!("/models/{model}/versions"), Some((body, "application/json")))
            .map_err(registry_error)?;
        registered(&v)
    }

    fn upload_package(&mut self, bytes: &[u8]) -> Result<String, PipelineError> {
        let info = self
            .api
            .call("POST", "/packages", Some((bytes.to_vec(), "application/octet-stream")))
            .map_err(registry_error)?;
        info["sha256"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| PipelineError::Registry("the hub's answer has no sha256".into()))
    }

    fn finish_version(&mut self, model: &str, version: u64, o: &VersionOutcome) -> Result<(), PipelineError> {
        let body = json!({
            "status": o.status,
            "gates": o.gates,
            "packages": o.packages.iter().map(|p| json!({"target": p.target, "sha256": p.sha256})).collect::<Vec<_>>(),
            "reason": o.reason,
        });
        let body = serde_json::to_vec(&body).map_err(|e| PipelineError::Registry(e.to_string()))?;
        self.api
            .call("POST", &format!("/models/{model}/versions/{version}/finish"), Some((body, "application/json")))
            .map_err(registry_error)?;
        Ok(())
    }
}

pub fn dataset(cmd: DatasetCommand) -> anyhow::Result<()> {
    match cmd {
        DatasetCommand::Create { import, work, json } => {
            let ds = dataset::import_csv_folder(&import)?;
            let hash = ds.write(&work.join("datasets"), &format!("imported from {}", import.display()))?;
            let m = dataset::read_manifest(&work.join("datasets"), &hash)?;
            if json {
                return emit_json(&m);
            }
            emit(|out| {
                writeln!(out, "{hash}")?;
                writeln!(
                    out,
                    "{} parts, {} rows, in {}",
                    m.parts.len(),
                    rows(&m),
                    work.join("datasets").join(&hash).display()
                )
            })
        }
        DatasetCommand::List { work, json } => {
            let all = dataset::list(&work.join("datasets"))?;
            if json {
                return emit_json(&all);
            }
            emit(|out| {
                for m in &all {
                    writeln!(out, "{}  {:>4} parts {:>9} rows  {}", m.sha256, m.parts.len(), rows(m), m.source)?;
                }
                Ok(())
            })
        }
        DatasetCommand::Show { hash, work, json } => {
            // Reading it back checks its content against its name.
            let (_, m) = Dataset::read(&work.join("datasets"), &hash)?;
            if json {
                return emit_json(&m);
            }
            emit(|out| {
                writeln!(out, "dataset {} ({})", m.sha256, m.source)?;
                let channels: Vec<String> = m.channels.iter().map(|c| format!("{} [{}]", c.name, c.unit)).collect();
                writeln!(out, "channels: {}", channels.join(", "))?;
                for p in &m.parts {
                    let labels =
                        if p.labelled { format!("{} anomalous", p.anomalous_rows) } else { "unlabelled".into() };
                    let span = match (p.first_ts_ms, p.last_ts_ms) {
                        (Some(a), Some(b)) => format!(
                            "{} to {}",
                            impeller_core::table::format_timestamp(a),
                            impeller_core::table::format_timestamp(b)
                        ),
                        _ => "empty".into(),
                    };
                    writeln!(out, "  {:<28} {:>7} rows  {labels:<15} {span}  {}", p.name, p.rows, p.file)?;
                }
                Ok(())
            })
        }
        DatasetCommand::Snapshot {
            condition,
            since,
            since_ms,
            until_ms,
            channels,
            label_incidents,
            exclude_incidents,
            exclude_after_confirmed_fault,
            api,
            json,
        } => {
            let since_ms = match (since, since_ms) {
                (_, Some(ms)) => ms,
                (Some(s), None) => impeller_hub::store::now_ms() - (s.min(i64::MAX as u64 / 1000) as i64) * 1000,
                (None, None) => return Err(InputError("give --since DURATION or --since-ms MS".into()).into()),
            };
            let api = Api::new(&api)?;
            let body = json!({
                "condition": condition, "channels": channels, "since_ms": since_ms, "until_ms": until_ms,
                "label_incidents": label_incidents, "exclude_incidents": exclude_incidents,
                "exclude_after_confirmed_fault": exclude_after_confirmed_fault,
            });
            let m = api.call("POST", "/datasets", Some((serde_json::to_vec(&body)?, "application/json")))?;
            if json {
                return emit_json(&m);
            }
            emit(|out| {
                writeln!(out, "{}", m["sha256"].as_str().unwrap_or(""))?;
                for p in m["parts"].as_array().into_iter().flatten() {
                    writeln!(
                        out,
                        "  {:<24} {:>8} rows {:>6} anomalous",
                        p["name"].as_str().unwrap_or(""),
                        p["rows"].as_u64().unwrap_or_default(),
                        p["anomalous_rows"].as_u64().unwrap_or_default()
                    )?;
                }
                Ok(())
            })
        }
        DatasetCommand::Pull { hash, work, api } => {
            let m = pull(&Api::new(&api)?, &hash, &work.join("datasets"))?;
            emit(|out| {
                writeln!(out, "{hash}: {} parts in {}", m.parts.len(), work.join("datasets").join(&hash).display())
            })
        }
        DatasetCommand::Export { hash, out, work } => {
            let (_, m) = Dataset::read(&work.join("datasets"), &hash)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let from = work.join("datasets").join(&hash);
            for p in &m.parts {
                std::fs::copy(from.join(&p.file), out.join(&p.file)).with_context(|| format!("copying {}", p.file))?;
            }
            std::fs::copy(from.join("dataset.json"), out.join("dataset.json")).context("copying dataset.json")?;
            emit(|w| writeln!(w, "{} parts and dataset.json written to {}", m.parts.len(), out.display()))
        }
    }
}

/// Downloads a hub's dataset into `dir/{hash}/`: into a staging folder first, checked against
/// its hash there, then moved into place, so a bad download never takes the hash's name. A
/// dataset there already is only checked.
fn pull(api: &Api, hash: &str, dir: &Path) -> anyhow::Result<dataset::Manifest> {
    if dataset::read_manifest(dir, hash).is_err() {
        let stage = dir.join(format!(".pull-{}-{hash}", std::process::id()));
        let fetched = fetch(api, hash, &stage);
        let moved = fetched.and_then(|()| {
            std::fs::rename(stage.join(hash), dir.join(hash))
                .with_context(|| format!("moving the dataset into {}", dir.display()))
        });
        let _ = std::fs::remove_dir_all(&stage);
        moved?;
    }
    Ok(Dataset::read(dir, hash)?.1)
}

/// The dataset's files into `stage/{hash}/`, checked against the hash.
fn fetch(api: &Api, hash: &str, stage: &Path) -> anyhow::Result<()> {
    let manifest: dataset::Manifest = serde_json::from_value(api.call("GET", &format!("/datasets/{hash}"), None)?)
        .context("the hub's dataset manifest")?;
    let folder = stage.join(hash);
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    for file in manifest.parts.iter().map(|p| p.file.as_str()).chain(["dataset.json"]) {
        if file.contains(['/', '\\']) || file.starts_with('.') {
            anyhow::bail!("the hub's dataset names a file `{file}` outside its folder");
        }
        let bytes = api.raw(&format!("/datasets/{hash}/files/{file}"))?;
        impeller_pipeline::write_synced(&folder.join(file), &bytes)?;
    }
    // Reading it checks every file against the hash.
    Dataset::read(stage, hash)?;
    Ok(())
}

pub fn incident(cmd: crate::cli::IncidentCommand) -> anyhow::Result<()> {
    use crate::cli::IncidentCommand;
    let time = |s: &str| -> anyhow::Result<i64> {
        s.parse::<i64>().ok().or_else(|| impeller_core::table::parse_timestamp(s)).ok_or_else(|| {
            InputError(format!("`{s}`: a time as YYYY-MM-DD hh:mm:ss (UTC) or milliseconds since the epoch")).into()
        })
    };
    match cmd {
        IncidentCommand::Add { device, start, end, kind, note, api } => {
            let body =
                json!({"device": device, "start_ms": time(&start)?, "end_ms": time(&end)?, "kind": kind, "note": note});
            let i =
                Api::new(&api)?.call("POST", "/incidents", Some((serde_json::to_vec(&body)?, "application/json")))?;
            emit(|out| writeln!(out, "incident {} on {device} recorded", i["id"]))
        }
        IncidentCommand::List { device, api, json } => {
            let path = match &device {
                Some(d) => format!("/incidents?device={d}"),
                None => "/incidents".to_string(),
            };
            let v = Api::new(&api)?.call("GET", &path, None)?;
            if json {
                return emit_json(&v["items"]);
            }
            emit(|out| {
                for i in v["items"].as_array().into_iter().flatten() {
                    let t = |k: &str| impeller_core::table::format_timestamp(i[k].as_i64().unwrap_or_default());
                    writeln!(
                        out,
                        "{:>5} {:<20} {} to {}  {:<16} {}",
                        i["id"].as_i64().unwrap_or_default(),
                        i["device"].as_str().unwrap_or(""),
                        t("start_ms"),
                        t("end_ms"),
                        i["kind"].as_str().unwrap_or(""),
                        i["note"].as_str().unwrap_or("")
                    )?;
                }
                Ok(())
            })
        }
    }
}

pub fn feedback(cmd: crate::cli::FeedbackCommand) -> anyhow::Result<()> {
    use crate::cli::FeedbackCommand;
    let (verdict, a) = match cmd {
        FeedbackCommand::Confirm(a) => ("confirmed", a),
        FeedbackCommand::Reject(a) => ("false_alarm", a),
        FeedbackCommand::Precision { model, api, json } => {
            let path = match &model {
                Some(m) => format!("/feedback?model={m}"),
                None => "/feedback".to_string(),
            };
            let v = Api::new(&api)?.call("GET", &path, None)?;
            if json {
                return emit_json(&v["items"]);
            }
            return emit(|out| {
                writeln!(
                    out,
                    "{:<24} {:>8} {:>10} {:>13} {:>10}",
                    "model", "version", "confirmed", "false alarms", "precision"
                )?;
                for p in v["items"].as_array().into_iter().flatten() {
                    writeln!(
                        out,
                        "{:<24} {:>8} {:>10} {:>13} {:>10.3}",
                        p["model"].as_str().unwrap_or(""),
                        p["model_version"].as_str().unwrap_or(""),
                        p["confirmed"].as_u64().unwrap_or_default(),
                        p["false_alarms"].as_u64().unwrap_or_default(),
                        p["precision"].as_f64().unwrap_or_default()
                    )?;
                }
                Ok(())
            });
        }
    };
    let body = serde_json::to_vec(&json!({"verdict": verdict, "work_order": a.work_order, "note": a.note}))?;
    let path = format!("/alerts/{}/{}/feedback", a.device, a.seq);
    let f = Api::new(&a.api)?.call("POST", &path, Some((body, "application/json")))?;
    emit(|out| match f["incident_id"].as_i64() {
        Some(id) => writeln!(out, "alert {} of {}: {verdict}; incident {id} labels its rows", a.seq, a.device),
        None => writeln!(out, "alert {} of {}: {verdict}", a.seq, a.device),
    })
}

fn rows(m: &dataset::Manifest) -> u64 {
    m.parts.iter().map(|p| p.rows).sum()
}

pub fn model(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Inspect { file, json } => crate::commands::inspect(&file, json),
        ModelCommand::ExportOnnx { file, out } => {
            let model = crate::commands::load_model(&file)?;
            let bytes = impeller_pipeline::onnx::export(&model);
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            emit(|w| {
                writeln!(
                    w,
                    "wrote {} ({} bytes): input `features` float32 [N, {}], output `score` float32 [N]",
                    out.display(),
                    bytes.len(),
                    model.dim()
                )
            })
        }
        ModelCommand::List { api, json } => {
            let api = Api::new(&api)?;
            let mut all = Vec::new();
            each_item(&api, "/models", &[], |m| {
                all.push(m);
                Ok(())
            })?;
            if json {
                return emit_json(&all);
            }
            emit(|out| {
                for m in &all {
                    let aliases: Vec<String> =
                        m["aliases"].as_object().into_iter().flatten().map(|(a, v)| format!("{a}={v}")).collect();
                    let versions = m["versions"].as_u64().unwrap_or_default();
                    writeln!(
                        out,
                        "{:<24} {versions:>3} versions  {}",
                        m["name"].as_str().unwrap_or(""),
                        aliases.join(" ")
                    )?;
                }
                Ok(())
            })
        }
        ModelCommand::Versions { name, api, json } => {
            let api = Api::new(&api)?;
            let mut all = Vec::new();
            each_item(&api, &format!("/models/{name}/versions"), &[], |v| {
                all.push(v);
                Ok(())
            })?;
            if json {
                return emit_json(&all);
            }
            emit(|out| {
                writeln!(
                    out,
                    "{:>7} {:>7} {:<8} {:>6} {:>6}  {:<12} {:<12} aliases",
                    "version", "release", "status", "F1", "FAR", "model", "dataset"
                )?;
                for v in &all {
                    let metric = |k: &str| v["metrics"][k].as_f64().map_or("-".to_string(), |x| format!("{x:.3}"));
                    let short = |k: &str| v[k].as_str().map_or(String::new(), |s| s.chars().take(12).collect());
                    writeln!(
                        out,
                        "{:>7} {:>7} {:<8} {:>6} {:>6}  {:<12} {:<12} {}",
                        v["version"].as_u64().unwrap_or_default(),
                        v["release"].as_u64().unwrap_or_default(),
                        v["status"].as_str().unwrap_or(""),
                        metric("f1"),
                        metric("far"),
                        short("model_sha256"),
                        short("dataset_sha256"),
                        v["aliases"]
                            .as_array()
                            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                            .unwrap_or_default()
                    )?;
                }
                Ok(())
            })
        }
        ModelCommand::Show { name, which, api, json } => {
            let api = Api::new(&api)?;
            let path = if which.parse::<u64>().is_ok() {
                format!("/models/{name}/versions/{which}")
            } else {
                format!("/models/{name}/aliases/{which}")
            };
            let v = api.call("GET", &path, None)?;
            if json {
                return emit_json(&v);
            }
            emit(|out| {
                writeln!(
                    out,
                    "{name} version {} (release {}): {}",
                    v["version"],
                    v["release"],
                    v["status"].as_str().unwrap_or("")
                )?;
                for k in ["model_sha256", "dataset_sha256", "run_key", "code_version", "created_by"] {
                    writeln!(out, "  {k:<15} {}", v[k].as_str().unwrap_or(""))?;
                }
                writeln!(out, "  {:<15} {}", "parent_version", v["parent_version"])?;
                writeln!(out, "  {:<15} {}", "metrics", v["metrics"])?;
                if let Some(reason) = v["reason"].as_str() {
                    writeln!(out, "  {:<15} {reason}", "reason")?;
                }
                for g in v["gates"].as_array().into_iter().flatten() {
                    let pass = if g["passed"].as_bool() == Some(true) { "pass" } else { "FAIL" };
                    writeln!(
                        out,
                        "  {pass} {:<22} {}",
                        g["gate"].as_str().unwrap_or(""),
                        g["detail"].as_str().unwrap_or("")
                    )?;
                }
                for p in v["packages"].as_array().into_iter().flatten() {
                    writeln!(
                        out,
                        "  package {:<12} {}",
                        p["target"].as_str().unwrap_or(""),
                        p["sha256"].as_str().unwrap_or("")
                    )?;
                }
                Ok(())
            })
        }
        ModelCommand::Alias { name, alias, number, api } => {
            let api = Api::new(&api)?;
            let body = serde_json::to_vec(&json!({ "version": number }))?;
            api.call("PUT", &format!("/models/{name}/aliases/{alias}"), Some((body, "application/json")))?;
            emit(|out| writeln!(out, "{name}:{alias} → version {number}"))
        }
        ModelCommand::Unalias { name, alias, api } => {
            let api = Api::new(&api)?;
            api.call("DELETE", &format!("/models/{name}/aliases/{alias}"), None)?;
            emit(|out| writeln!(out, "{name}:{alias} removed"))
        }
        ModelCommand::Lineage { dataset, device, api, json } => {
            let api = Api::new(&api)?;
            let v = match (&dataset, &device) {
                (Some(d), _) => api.call("GET", &format!("/lineage/datasets/{d}"), None)?,
                (None, Some(d)) => api.call("GET", &format!("/lineage/devices/{d}"), None)?,
                (None, None) => return Err(InputError("give --dataset HASH or --device ID".into()).into()),
            };
            if json {
                return emit_json(&v);
            }
            emit(|out| {
                if dataset.is_some() {
                    for ver in v["versions"].as_array().into_iter().flatten() {
                        writeln!(
                            out,
                            "built {}@{} ({})",
                            ver["model"].as_str().unwrap_or(""),
                            ver["version"],
                            ver["status"].as_str().unwrap_or("")
                        )?;
                    }
                    for d in v["devices"].as_array().into_iter().flatten() {
                        writeln!(
                            out,
                            "runs on {} ({}@{}, package {})",
                            d["device"].as_str().unwrap_or(""),
                            d["model"].as_str().unwrap_or("?"),
                            d["version"],
                            d["package_sha256"].as_str().unwrap_or("")
                        )?;
                    }
                    Ok(())
                } else {
                    writeln!(
                        out,
                        "{} runs package {}",
                        v["device"].as_str().unwrap_or(""),
                        v["package_sha256"].as_str().unwrap_or("")
                    )?;
                    writeln!(out, "  model {}@{}", v["model"].as_str().unwrap_or("(not registered)"), v["version"])?;
                    writeln!(out, "  built from dataset {}", v["dataset_sha256"].as_str().unwrap_or("(unknown)"))?;
                    writeln!(out, "  by run {}", v["run_key"].as_str().unwrap_or("(unknown)"))
                }
            })
        }
    }
}

/// `impeller bench pipeline`.
pub fn bench(args: crate::cli::PipelineBenchArgs) -> anyhow::Result<()> {
    use impeller_core::package::Signer25519;
    use std::time::Instant;
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    // The spec and its profiles: the built-in example is written out, profiles beside it.
    let spec_path = match &args.spec {
        Some(p) => p.clone(),
        None => {
            std::fs::create_dir_all(dir.join("spec/profiles"))?;
            std::fs::write(dir.join("spec/pipeline.toml"), spec::EXAMPLE)?;
            for (name, text) in impeller_pipeline::profile::EXAMPLES {
                std::fs::write(dir.join("spec/profiles").join(format!("{name}.toml")), text)?;
            }
            dir.join("spec/pipeline.toml")
        }
    };
    let (spec, base) = PipelineSpec::load(&spec_path)?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let signer = Signer25519::from_secret(secret);
    std::fs::write(dir.join("ops.public.json"), signer.public_file().to_json())?;

    // The hub on its own runtime and thread, as it would run in its own process.
    let cfg = impeller_hub::HubConfig {
        database: format!("sqlite:{}", dir.join("hub.db").display()),
        // The broker needs a fixed port (it is not asked which it got); the API does not.
        mqtt_listen: Some(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?),
        http_listen: Some("127.0.0.1:0".parse()?),
        packages_dir: dir.join("packages"),
        trusted_keys: vec![dir.join("ops.public.json")],
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let hub = rt.block_on(impeller_hub::Hub::start(&cfg))?;
    let (_, token) = rt.block_on(hub.store.add_token("bench", impeller_hub::auth::Role::Admin, "bench"))?;
    let api = crate::cli::ApiArgs {
        hub: format!("http://{}", hub.http_addr.context("no API address")?),
        token,
        ca_cert: None,
    };

    let mut timings = Vec::new();
    for (label, work) in [("first run", "work"), ("unchanged rerun", "work"), ("fresh work folder", "work2")] {
        let mut trust = TrustStore::new();
        trust.add(signer.verifying_key());
        let mut registry = HubRegistry { api: Api::new(&api)?, trust };
        let mut options =
            RunOptions::new(dir.join(work), base.clone(), Signer25519::from_secret(secret), created_ms()?);
        options.import = Some(args.data.clone());
        let started = Instant::now();
        let record = run(&spec, &options, Some(&mut registry), &mut |_| {})?;
        let s = started.elapsed().as_secs_f64();
        if record.outcome == Outcome::Failed {
            anyhow::bail!("{label}: {}", record.error.unwrap_or_default());
        }
        timings.push((label, s, record));
    }
    drop(rt);
    if args.json {
        let v: Vec<Value> = timings
            .iter()
            .map(|(label, s, r)| json!({"run": label, "seconds": s, "outcome": r.outcome, "version": r.version, "steps": r.steps}))
            .collect();
        return emit_json(&v);
    }
    emit(|out| {
        for (label, s, r) in &timings {
            let steps: Vec<String> = r
                .steps
                .iter()
                .map(|st| format!("{} {:.0} ms{}", st.step, st.ms, if st.cached { " (cached)" } else { "" }))
                .collect();
            writeln!(out, "{label:<18} {s:>7.3} s  {:?} version {}: {}", r.outcome, opt(r.version), steps.join(", "))?;
        }
        Ok(())
    })
}

/// `impeller bench int8`.
pub fn bench_int8(args: crate::cli::Int8BenchArgs) -> anyhow::Result<()> {
    use impeller_core::detector::{
        AutoencoderConfig, DetectorConfig, EnsembleConfig, MsetConfig, PcaConfig, ZscoreConfig, ensemble::Combine,
    };
    use impeller_core::package::Signer25519;
    use impeller_pipeline::evaluate::Agreement;
    use impeller_pipeline::profile::TargetProfile;
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    std::fs::create_dir_all(dir.join("profiles"))?;
    for (name, text) in impeller_pipeline::profile::EXAMPLES {
        std::fs::write(dir.join("profiles").join(format!("{name}.toml")), text)?;
    }
    let mut spec = PipelineSpec::parse(spec::EXAMPLE, "example")?;
    // The float gateway and the int8 PLC; every quality gate off, so that each kind is packaged
    // and its agreement measured whatever its F1.
    spec.targets = vec!["profiles/gw-arm64.toml".into(), "profiles/plc-armv7.toml".into()];
    spec.gates = spec::Gates { min_int8_agreement: Some(0.0), ..Default::default() };
    let pca = match &spec.train.detector {
        DetectorConfig::Pca(c) => c.clone(),
        _ => PcaConfig::default(),
    };
    let kinds = [
        ("pca", DetectorConfig::Pca(pca.clone())),
        ("mset", DetectorConfig::Mset(MsetConfig::default())),
        ("autoencoder", DetectorConfig::Autoencoder(AutoencoderConfig::default())),
        (
            "ensemble (zscore + pca)",
            DetectorConfig::Ensemble(EnsembleConfig {
                members: vec![DetectorConfig::Zscore(ZscoreConfig {}), DetectorConfig::Pca(pca)],
                combine: Combine::Max,
            }),
        ),
    ];
    // The packages are signed with a throwaway key, trusted only to read them back.
    const SECRET: [u8; 32] = [7; 32];
    let mut trust = TrustStore::new();
    trust.add(Signer25519::from_secret(SECRET).verifying_key());
    let mut rows = Vec::new();
    for (i, (name, detector)) in kinds.into_iter().enumerate() {
        spec.train.detector = detector;
        let work = dir.join(format!("work{i}"));
        let mut options =
            RunOptions::new(work.clone(), dir.to_path_buf(), Signer25519::from_secret(SECRET), created_ms()?);
        options.import = Some(args.data.clone());
        let record = run(&spec, &options, None, &mut |_| {})?;
        if let Some(e) = &record.error {
            anyhow::bail!("{name}: {e}");
        }
        let step = record.steps.iter().find(|s| s.step == "quantize-int8").context("no quantize-int8 step")?;
        let key = step.key.as_deref().context("the detector has no weights to quantise")?;
        let agreement: Agreement =
            serde_json::from_slice(&std::fs::read(work.join("cache/quantize-int8").join(key).join("agreement.json"))?)?;
        let package = |target: &str| record.packages.iter().find(|p| p.target == target).context("no package");
        let (float, int8) = (package("gw-arm64")?, package("plc-armv7")?);
        let model_bytes = |p: &impeller_pipeline::run::PackageRecord| -> anyhow::Result<u64> {
            let pkg = open(&std::fs::read(&p.path)?, &trust, Limits::default())?;
            Ok(pkg.model.to_json()?.len() as u64)
        };
        // The fit check's latency is the one measured here times the profile's slowdown.
        let here_us = |p: &impeller_pipeline::run::PackageRecord| -> anyhow::Result<f64> {
            let profile = TargetProfile::load(&dir.join("profiles").join(format!("{}.toml", p.target)))?;
            Ok(p.fit.latency_estimate_us / profile.slowdown)
        };
        rows.push(json!({
            "detector": name,
            "f1_float": record.evaluation.as_ref().and_then(|e| e.f1),
            "frames": agreement.frames,
            "alarm_agreement": agreement.alarm_agreement,
            "alarms_float": agreement.alarms_reference,
            "alarms_int8": agreement.alarms_candidate,
            "max_rel_score_diff": agreement.max_rel_score_diff,
            "p99_rel_score_diff": agreement.p99_rel_score_diff,
            "model_bytes_float": model_bytes(float)?,
            "model_bytes_int8": model_bytes(int8)?,
            "memory_estimate_float": float.fit.memory_estimate_bytes,
            "memory_estimate_int8": int8.fit.memory_estimate_bytes,
            "us_per_frame_float": here_us(float)?,
            "us_per_frame_int8": here_us(int8)?,
        }));
    }
    if args.json {
        return emit_json(&rows);
    }
    emit(|out| {
        writeln!(
            out,
            "{:<24} {:>7} {:>9} {:>11} {:>17} {:>17} {:>17} {:>13}",
            "detector",
            "frames",
            "agree %",
            "alarms f/i",
            "rel. diff max/p99",
            "model bytes f/i",
            "memory est. f/i",
            "µs/frame f/i"
        )?;
        for r in &rows {
            let n = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            writeln!(
                out,
                "{:<24} {:>7} {:>9.3} {:>11} {:>17} {:>17} {:>17} {:>13}",
                r["detector"].as_str().unwrap_or(""),
                n("frames"),
                100.0 * n("alarm_agreement"),
                format!("{}/{}", n("alarms_float"), n("alarms_int8")),
                format!("{:.2}/{:.2} %", 100.0 * n("max_rel_score_diff"), 100.0 * n("p99_rel_score_diff")),
                format!("{}/{}", n("model_bytes_float"), n("model_bytes_int8")),
                format!("{}/{}", n("memory_estimate_float"), n("memory_estimate_int8")),
                format!("{:.2}/{:.2}", n("us_per_frame_float"), n("us_per_frame_int8")),
            )?;
        }
        Ok(())
    })
}

/// The commented example retraining policy.
pub const RETRAIN_EXAMPLE: &str = include_str!("../config/retrain.toml");

pub fn retrain(cmd: crate::cli::RetrainCommand) -> anyhow::Result<()> {
    use crate::cli::RetrainCommand;
    match cmd {
        RetrainCommand::GeneratePolicy => emit(|out| out.write_all(RETRAIN_EXAMPLE.as_bytes())),
        RetrainCommand::Set { model, policy, spec, api } => {
            let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| InputError(format!("{}: {e}", p.display())));
            let policy_text = read(&policy)?;
            // Checked here too, so that a mistake is named with its file before anything is sent.
            impeller_core::retrain::RetrainPolicy::parse(&policy_text, &policy.display().to_string())
                .map_err(InputError)?;
            let spec_text = read(&spec)?;
            let base = spec.parent().map(Path::to_path_buf).unwrap_or_default();
            let parsed: toml::Table =
                toml::from_str(&spec_text).map_err(|e| InputError(format!("{}: {e}", spec.display())))?;
            let mut profiles = serde_json::Map::new();
            for t in parsed.get("targets").and_then(toml::Value::as_array).into_iter().flatten() {
                let Some(t) = t.as_str() else { continue };
                profiles.insert(t.to_string(), Value::String(read(&base.join(t))?));
            }
            let body = serde_json::to_vec(&json!({"policy": policy_text, "spec": spec_text, "profiles": profiles}))?;
            Api::new(&api)?.call("PUT", &format!("/models/{model}/policy"), Some((body, "application/json")))?;
            emit(|out| writeln!(out, "{model}: retraining policy set"))
        }
        RetrainCommand::Show { model, api, json } => {
            let v = Api::new(&api)?.call("GET", &format!("/models/{model}/policy"), None)?;
            if json {
                return emit_json(&v);
            }
            let s = &v["state"];
            emit(|out| {
                writeln!(out, "{model}: {}", s["stage"].as_str().unwrap_or("idle"))?;
                for (k, label) in [("reason", "last trigger"), ("note", "last outcome"), ("run", "run")] {
                    if let Some(t) = s[k].as_str() {
                        writeln!(out, "  {label}: {t}")?;
                    }
                }
                if let Some(version) = s["version"].as_u64() {
                    writeln!(out, "  version awaiting approval: {version}")?;
                }
                writeln!(out, "  drift checks in a row: {}", s["policy"]["drift_rounds"])?;
                writeln!(
                    out,
                    "  retrainings in the last 24 h: {}",
                    s["policy"]["started_ms"].as_array().map_or(0, Vec::len)
                )
            })
        }
        RetrainCommand::Approve { model, api } => {
            let v = Api::new(&api)?.call("POST", &format!("/models/{model}/policy/approve"), None)?;
            emit(|out| writeln!(out, "{}", v["note"].as_str().unwrap_or("")))
        }
        RetrainCommand::Remove { model, api } => {
            Api::new(&api)?.call("DELETE", &format!("/models/{model}/policy"), None)?;
            emit(|out| writeln!(out, "{model}: retraining policy removed"))
        }
    }
}
