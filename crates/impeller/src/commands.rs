//! The commands behind each subcommand.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use impeller_core::table::CsvFormat;
use impeller_core::{Model, Scorer, TrainConfig, Verdict};
use serde::Serialize;

use crate::InputError;
use crate::cli::{ScoreArgs, SkabArgs, TrainArgs};
use crate::data::{read_file, read_table};
use crate::skab::{self, BenchConfig, SkabOptions};

pub const DEFAULT_TRAIN_CONFIG: &str = include_str!("../config/train.toml");

/// Writes to standard output; a closed pipe (`| head`) ends quietly.
pub fn emit(write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    match write(&mut lock).and_then(|()| lock.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to standard output"),
    }
}

pub fn emit_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    emit(|out| writeln!(out, "{text}"))
}

pub fn bench_skab(args: SkabArgs) -> anyhow::Result<()> {
    if args.generate_config {
        return emit(|out| out.write_all(skab::DEFAULT_CONFIG.as_bytes()));
    }
    let data = args.data.context("--data is required")?;
    let opts = SkabOptions {
        data,
        config: BenchConfig::load(args.config.as_deref())?,
        detectors: args.detectors,
        split: args.split,
        margin: args.margin,
    };
    let report = skab::run(&opts)?;
    if let Some(path) = &args.predictions {
        let first = report.detectors.first().context("no detector ran")?;
        skab::write_predictions(first, path)?;
        tracing::info!(detector = %first.name, path = %path.display(), "predictions written");
    }
    if args.json { emit_json(&report) } else { emit(|out| skab::print_table(&report, args.per_file, out)) }
}

pub fn load_train_config(path: Option<&Path>) -> anyhow::Result<TrainConfig> {
    let (text, origin) = match path {
        None => (DEFAULT_TRAIN_CONFIG.to_string(), "built-in training configuration".to_string()),
        Some(p) => {
            let bytes = read_file(p)?;
            let text = String::from_utf8(bytes).map_err(|_| InputError(format!("{}: not UTF-8 text", p.display())))?;
            (text, p.display().to_string())
        }
    };
    toml::from_str(&text).map_err(|e| InputError(format!("{origin}: {e}")).into())
}

#[derive(Debug, Serialize)]
struct TrainSummary<'a> {
    model: String,
    bytes: usize,
    detector: &'static str,
    channels: Vec<&'a str>,
    features: usize,
    training: &'a impeller_core::model::TrainingSummary,
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    if args.generate_config {
        return emit(|out| out.write_all(DEFAULT_TRAIN_CONFIG.as_bytes()));
    }
    let (data, out_path) = (args.data.context("--data is required")?, args.out.context("--out is required")?);
    let config = load_train_config(args.config.as_deref())?;
    let names: Vec<&str> = args.channels.iter().map(String::as_str).collect();
    let format = CsvFormat { columns: (!names.is_empty()).then_some(names.as_slice()), ..CsvFormat::SKAB };
    let table = read_table(&data, &data.display().to_string(), &format)?;
    let mut frames = table.frames();
    if let Some(n) = args.rows {
        if n > frames.len() {
            return Err(
                InputError(format!("--rows {n}: {} has only {} data rows", data.display(), frames.len())).into()
            );
        }
        frames.truncate(n);
    }
    let model = impeller_core::train(&table.channels, &frames, &config)
        .with_context(|| format!("training on {}", data.display()))?;
    let bytes = model.to_json()?;
    std::fs::write(&out_path, &bytes).with_context(|| format!("writing {}", out_path.display()))?;
    let summary = TrainSummary {
        model: out_path.display().to_string(),
        bytes: bytes.len(),
        detector: model.detector.kind(),
        channels: model.channels.iter().map(|c| c.name.as_str()).collect(),
        features: model.dim(),
        training: &model.training,
    };
    if args.json {
        emit_json(&summary)
    } else {
        emit(|out| {
            writeln!(
                out,
                "wrote {} ({} bytes): {} on {} channels, {} features, fitted on {} of {} frames, data sha256 {}",
                summary.model,
                summary.bytes,
                summary.detector,
                summary.channels.len(),
                summary.features,
                model.training.vectors,
                model.training.frames,
                model.training.data_sha256
            )
        })
    }
}

pub fn load_model(path: &Path) -> anyhow::Result<Model> {
    let bytes = read_file(path)?;
    Model::from_json(&bytes).with_context(|| format!("reading model {}", path.display()))
}

#[derive(Debug, Serialize)]
struct ScoreLine {
    row: usize,
    ts_ms: i64,
    status: &'static str,
    score: Option<f64>,
    alarm: bool,
}

pub fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let model = load_model(&args.model)?;
    let names: Vec<&str> = model.channels.iter().map(|c| c.name.as_str()).collect();
    let vendor = match args.manufacturer.as_deref() {
        None => None,
        Some(name) => {
            let m = impeller_sim::vendor::Manufacturer::by_name(name)
                .ok_or_else(|| InputError(format!("--manufacturer: no simulated manufacturer `{name}`")))?;
            let adapter = impeller_core::adapter::Adapter::new(&m.adapter(), &model.channels)
                .map_err(|e| InputError(format!("--manufacturer {name}: {e}")))?;
            Some((m.columns(), adapter))
        }
    };
    let columns = vendor.as_ref().map_or(names, |(columns, _)| columns.clone());
    let format = CsvFormat { columns: Some(&columns), ..CsvFormat::SKAB };
    let table = read_table(&args.data, &args.data.display().to_string(), &format)?;
    // Model frames: the rows themselves, or what the manufacturer's adapter makes of them.
    let frames: Vec<(i64, Vec<f64>)> = match vendor {
        None => table.timestamps.iter().copied().zip(table.rows.iter().cloned()).collect(),
        Some((_, mut adapter)) => table
            .timestamps
            .iter()
            .zip(&table.rows)
            .filter_map(|(ts, values)| adapter.push(*ts, columns.iter().copied().zip(values.iter().copied())))
            .collect(),
    };
    let mut scorer = Scorer::new(Arc::new(model));
    let mut lines = Vec::with_capacity(frames.len());
    for (row, (ts, values)) in frames.iter().enumerate() {
        let v = scorer.push(*ts, values);
        let (status, score) = match v {
            Verdict::Scored(s) => ("scored", Some(s.score)),
            Verdict::Warmup => ("warmup", None),
            Verdict::Unscorable { .. } => ("unscorable", None),
            Verdict::OutOfOrder => ("out_of_order", None),
        };
        lines.push(ScoreLine { row, ts_ms: *ts, status, score, alarm: v.alarm() });
    }
    emit(|out| {
        if !args.json {
            writeln!(out, "row,ts_ms,status,score,alarm")?;
        }
        for l in &lines {
            if args.json {
                writeln!(out, "{}", serde_json::to_string(l).map_err(std::io::Error::other)?)?;
            } else {
                let score = l.score.map_or(String::new(), |s| format!("{s:.6}"));
                writeln!(out, "{},{},{},{},{}", l.row, l.ts_ms, l.status, score, u8::from(l.alarm))?;
            }
        }
        Ok(())
    })
}

#[derive(Debug, Serialize)]
struct Inspect<'a> {
    format: &'a str,
    version: u32,
    channels: &'a [impeller_core::Channel],
    features: Vec<String>,
    detector: serde_json::Value,
    calibration: &'a impeller_core::calibration::Calibration,
    gaps: &'a impeller_core::gaps::GapPolicy,
    training: &'a impeller_core::model::TrainingSummary,
}

/// A short description of the detector: its kind and its scalar settings, not its weights.
fn detector_summary(d: &impeller_core::detector::Detector) -> serde_json::Value {
    use impeller_core::detector::Detector;
    use serde_json::json;
    let mut summary = match d {
        Detector::Zscore(_) => json!({ "kind": "zscore" }),
        Detector::Pca(p) => json!({
            "kind": "pca", "components": p.components.len(), "explained_variance": p.explained,
            "t2_limit": p.t2_limit, "q_limit": p.q_limit, "statistic": p.statistic,
        }),
        Detector::Mset(m) => json!({ "kind": "mset", "memory_vectors": m.memory.len() }),
        Detector::IsolationForest(f) => json!({
            "kind": "isolation_forest", "trees": f.trees.len(), "sample_size": f.sample_size,
            "nodes": f.trees.iter().map(|t| t.feature.len()).sum::<usize>(),
        }),
        Detector::Autoencoder(a) => json!({
            "kind": "autoencoder",
            "layers": a.layers.iter().map(|l| l.bias.len()).collect::<Vec<_>>(),
        }),
        Detector::Ensemble(e) => json!({
            "kind": "ensemble", "combine": e.combine,
            "members": e.members.iter().map(|m| detector_summary(&m.detector)).collect::<Vec<_>>(),
        }),
    };
    summary["weights"] = if d.is_int8() { "int8" } else { "float" }.into();
    summary
}

pub fn inspect(path: &Path, json: bool) -> anyhow::Result<()> {
    let model = load_model(path)?;
    let info = Inspect {
        format: &model.format,
        version: model.version,
        channels: &model.channels,
        features: model.feature_names(),
        detector: detector_summary(&model.detector),
        calibration: &model.calibration,
        gaps: &model.gaps,
        training: &model.training,
    };
    if json {
        return emit_json(&info);
    }
    emit(|out| {
        writeln!(out, "{} version {}", info.format, info.version)?;
        let ch: Vec<String> = model.channels.iter().map(|c| format!("{} [{}]", c.name, c.unit)).collect();
        writeln!(out, "channels:    {}", ch.join(", "))?;
        writeln!(out, "features:    {} (window {})", info.features.join(", "), model.features.window)?;
        writeln!(out, "detector:    {}", info.detector)?;
        let c = &model.calibration;
        writeln!(
            out,
            "calibration: smoothing {}, center {:.6}, spread {:.6}, threshold {}, debounce {} of {}",
            c.smoothing, c.center, c.spread, c.threshold, c.debounce.k, c.debounce.n
        )?;
        writeln!(
            out,
            "gaps:        carry forward up to {} samples, restart after {}",
            model.gaps.max_carry_forward,
            model.gaps.max_time_gap_ms.map_or("never".to_string(), |ms| format!("{ms} ms"))
        )?;
        let t = &model.training;
        writeln!(
            out,
            "training:    {} frames, {} vectors, seed {}, data sha256 {}",
            t.frames, t.vectors, t.seed, t.data_sha256
        )
    })
}
