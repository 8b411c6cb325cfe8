//! `impeller bench skab`: the SKAB leaderboard protocol, run honestly.
//!
//! Per file: train on the first `train_rows` rows (no labels used), then score every remaining
//! row one at a time with a streaming [`Scorer`] that has seen only the rows before it. Counts
//! are summed over files; F1, FAR and MAR follow the leaderboard's definitions.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use impeller_core::detector::DetectorConfig;
use impeller_core::metrics::{Confusion, detections};
use impeller_core::table::{CsvFormat, SKAB_CHANNELS, Table};
use impeller_core::{Channel, Frame, Scorer, TrainConfig, stats, train};
use serde::{Deserialize, Serialize};

use crate::InputError;
use crate::cli::Split;
use crate::data::{read_file, read_table, skab_files};

pub const DEFAULT_CONFIG: &str = include_str!("../config/bench-skab.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchConfig {
    /// Format version of this file; 1.
    pub version: u32,
    /// Rows at the start of each file used for training.
    #[serde(default = "default_train_rows")]
    pub train_rows: usize,
    /// Drop channels whose median training trend ratio is above this; 0 keeps all.
    #[serde(default)]
    pub drop_trending_above: f64,
    /// Training settings shared by the detectors.
    pub defaults: Defaults,
    pub detectors: Vec<BenchDetector>,
}

fn default_train_rows() -> usize {
    400
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub gaps: impeller_core::gaps::GapPolicy,
    #[serde(default)]
    pub features: impeller_core::features::FeatureSpec,
    #[serde(default)]
    pub calibration: impeller_core::calibration::CalibrationConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchDetector {
    pub name: String,
    /// Alarm margin; default: the one in `defaults.calibration`.
    pub margin: Option<f64>,
    pub detector: DetectorConfig,
}

impl BenchConfig {
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let config: BenchConfig = toml::from_str(text).map_err(|e| InputError(format!("{origin}: {e}")))?;
        if config.version != 1 {
            return Err(InputError(format!(
                "{origin}: version {} is not supported (this build reads 1)",
                config.version
            ))
            .into());
        }
        if config.train_rows < 20 {
            return Err(InputError(format!("{origin}: train_rows must be at least 20")).into());
        }
        if config.detectors.is_empty() {
            return Err(InputError(format!("{origin}: no [[detectors]] listed")).into());
        }
        Ok(config)
    }

    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            None => Self::parse(DEFAULT_CONFIG, "built-in bench configuration"),
            Some(p) => {
                let bytes = read_file(p)?;
                let text =
                    String::from_utf8(bytes).map_err(|_| InputError(format!("{}: not UTF-8 text", p.display())))?;
                Self::parse(&text, &p.display().to_string())
            }
        }
    }

    fn train_config(&self, d: &BenchDetector, margin_override: Option<f64>) -> TrainConfig {
        let mut calibration = self.defaults.calibration.clone();
        if let Some(m) = margin_override.or(d.margin) {
            calibration.margin = m;
        }
        TrainConfig {
            seed: self.defaults.seed,
            gaps: self.defaults.gaps.clone(),
            features: self.defaults.features.clone(),
            detector: d.detector.clone(),
            calibration,
        }
    }
}

#[derive(Debug)]
pub struct SkabOptions {
    pub data: PathBuf,
    pub config: BenchConfig,
    pub detectors: Vec<String>,
    pub split: Split,
    pub margin: Option<f64>,
}

/// One published row of the SKAB "strict" leaderboard (test parts only), outlier detection.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub algorithm: &'static str,
    pub f1: f64,
    pub far_pct: f64,
    pub mar_pct: f64,
}

/// From the SKAB README (github.com/waico/SKAB), "Strict Leaderboard", outlier detection.
pub const PUBLISHED: [Published; 10] = [
    Published { algorithm: "Conv-AE", f1: 0.78, far_pct: 13.55, mar_pct: 28.02 },
    Published { algorithm: "MSET", f1: 0.78, far_pct: 39.73, mar_pct: 14.13 },
    Published { algorithm: "T-squared+Q (PCA-based)", f1: 0.76, far_pct: 26.62, mar_pct: 24.92 },
    Published { algorithm: "LSTM-AE", f1: 0.74, far_pct: 29.96, mar_pct: 25.92 },
    Published { algorithm: "T-squared", f1: 0.66, far_pct: 19.21, mar_pct: 42.6 },
    Published { algorithm: "LSTM-VAE", f1: 0.56, far_pct: 9.13, mar_pct: 55.03 },
    Published { algorithm: "Vanilla LSTM", f1: 0.54, far_pct: 12.54, mar_pct: 59.53 },
    Published { algorithm: "MSCRED", f1: 0.40, far_pct: 31.04, mar_pct: 69.05 },
    Published { algorithm: "Vanilla AE", f1: 0.39, far_pct: 2.59, mar_pct: 75.15 },
    Published { algorithm: "Isolation forest", f1: 0.29, far_pct: 2.56, mar_pct: 82.89 },
];

#[derive(Debug, Clone, Serialize)]
pub struct ChannelTrend {
    pub channel: String,
    /// Median over files of the training rows' trend ratio.
    pub trend_ratio: f64,
    pub used: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    pub file: String,
    #[serde(flatten)]
    pub confusion: Confusion,
}

#[derive(Debug, Clone, Serialize)]
pub struct DetectorResult {
    pub name: String,
    pub kind: &'static str,
    pub margin: f64,
    #[serde(flatten)]
    pub confusion: Confusion,
    pub f1: f64,
    pub far_pct: f64,
    pub mar_pct: f64,
    /// Labelled anomalies (runs of anomalous test rows) and how many raised an alarm.
    pub anomalies: usize,
    pub detected: usize,
    /// Median seconds from an anomaly's first row to its first alarm, over detected ones.
    pub median_delay_s: Option<f64>,
    /// Training time summed over files.
    pub train_ms: f64,
    /// Mean wall time to score one row (features, detector, calibration), release build.
    pub score_us_per_row: f64,
    pub rows_per_s: f64,
    pub per_file: Vec<FileResult>,
    #[serde(skip)]
    pub predictions: Vec<(String, Vec<bool>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkabReport {
    pub split: String,
    pub files: usize,
    pub train_rows: usize,
    pub test_rows: usize,
    pub anomalous_test_rows: usize,
    pub channels: Vec<ChannelTrend>,
    pub detectors: Vec<DetectorResult>,
    pub published: Vec<Published>,
}

struct SkabFile {
    name: String,
    table: Table,
}

fn in_split(name: &str, split: Split) -> bool {
    let number = Path::new(name).file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok());
    match split {
        Split::All => true,
        Split::Dev => number.is_none_or(|n| n % 2 == 0),
        Split::Holdout => number.is_some_and(|n| n % 2 == 1),
    }
}

fn load_files(dir: &Path, train_rows: usize) -> anyhow::Result<Vec<SkabFile>> {
    let names: Vec<&str> = SKAB_CHANNELS.iter().map(|(n, _)| *n).collect();
    let format = CsvFormat { columns: Some(&names), ..CsvFormat::SKAB };
    skab_files(dir)?
        .into_iter()
        .map(|(path, name)| {
            let table = read_table(&path, &name, &format)?;
            if table.labels.is_none() {
                return Err(InputError(format!("{name}: no `anomaly` column; the benchmark needs labels")).into());
            }
            if table.len() <= train_rows {
                return Err(InputError(format!(
                    "{name}: {} data rows; the benchmark needs more than {train_rows}",
                    table.len()
                ))
                .into());
            }
            Ok(SkabFile { name, table })
        })
        .collect()
}

/// Median over files of each channel's trend ratio in the training rows.
fn channel_trends(files: &[SkabFile], train_rows: usize, drop_above: f64) -> Vec<ChannelTrend> {
    SKAB_CHANNELS
        .iter()
        .enumerate()
        .map(|(c, (name, _))| {
            let ratios: Vec<f64> = files
                .iter()
                .map(|f| {
                    let col: Vec<f64> =
                        f.table.rows[..train_rows].iter().map(|r| r[c]).filter(|v| v.is_finite()).collect();
                    stats::trend_ratio(&col)
                })
                .collect();
            let trend_ratio = stats::quantile(&ratios, 0.5).unwrap_or(0.0);
            ChannelTrend {
                channel: name.to_string(),
                trend_ratio,
                used: drop_above <= 0.0 || trend_ratio <= drop_above,
            }
        })
        .collect()
}

pub fn run(opts: &SkabOptions) -> anyhow::Result<SkabReport> {
    let cfg = &opts.config;
    let all_files = load_files(&opts.data, cfg.train_rows)?;
    let trends = channel_trends(&all_files, cfg.train_rows, cfg.drop_trending_above);
    let used: Vec<&str> = trends.iter().filter(|t| t.used).map(|t| t.channel.as_str()).collect();
    let files: Vec<SkabFile> = all_files
        .into_iter()
        .filter(|f| in_split(&f.name, opts.split))
        .map(|f| {
            let table = f.table.select(&used).context("selecting channels")?;
            Ok(SkabFile { name: f.name, table })
        })
        .collect::<anyhow::Result<_>>()?;
    if files.is_empty() {
        return Err(InputError(format!("no files in the {:?} split", opts.split)).into());
    }
    for wanted in &opts.detectors {
        if !cfg.detectors.iter().any(|d| &d.name == wanted) {
            let known: Vec<&str> = cfg.detectors.iter().map(|d| d.name.as_str()).collect();
            return Err(InputError(format!("no detector named `{wanted}` (known: {})", known.join(", "))).into());
        }
    }
    let selected = cfg.detectors.iter().filter(|d| opts.detectors.is_empty() || opts.detectors.contains(&d.name));
    let mut results = Vec::new();
    for d in selected {
        let tc = cfg.train_config(d, opts.margin);
        tracing::info!(detector = %d.name, files = files.len(), "running");
        results.push(run_detector(&d.name, &tc, &files, cfg.train_rows)?);
    }
    let test_rows = files.iter().map(|f| f.table.len() - cfg.train_rows).sum();
    let anomalous = files
        .iter()
        .map(|f| f.table.labels.as_ref().map_or(0, |l| l[cfg.train_rows..].iter().filter(|&&a| a).count()))
        .sum();
    Ok(SkabReport {
        split: format!("{:?}", opts.split).to_lowercase(),
        files: files.len(),
        train_rows: cfg.train_rows,
        test_rows,
        anomalous_test_rows: anomalous,
        channels: trends,
        detectors: results,
        published: PUBLISHED.to_vec(),
    })
}

fn run_detector(name: &str, tc: &TrainConfig, files: &[SkabFile], train_rows: usize) -> anyhow::Result<DetectorResult> {
    let mut total = Confusion::default();
    let (mut train_time, mut score_time) = (Duration::ZERO, Duration::ZERO);
    let (mut anomalies, mut delays) = (0, Vec::new());
    let mut scored_rows = 0usize;
    let mut per_file = Vec::new();
    let mut predictions = Vec::new();
    for f in files {
        let frames: Vec<Frame> = f.table.frames();
        let channels: Vec<Channel> = f.table.channels.clone();
        let (train_part, test_part) = frames.split_at(train_rows);
        let started = Instant::now();
        let model = train(&channels, train_part, tc).with_context(|| format!("training `{name}` on {}", f.name))?;
        train_time += started.elapsed();

        let mut scorer = Scorer::new(Arc::new(model));
        for fr in train_part {
            scorer.push(fr.ts_ms, &fr.values);
        }
        let mut preds = Vec::with_capacity(test_part.len());
        let started = Instant::now();
        for fr in test_part {
            preds.push(scorer.push(fr.ts_ms, &fr.values).alarm());
        }
        score_time += started.elapsed();
        scored_rows += test_part.len();

        let labels = &f.table.labels.as_ref().context("labels checked at load")?[train_rows..];
        let c = Confusion::from_labels(labels, &preds);
        total.merge(&c);
        let ts = &f.table.timestamps[train_rows..];
        for d in detections(labels, &preds) {
            anomalies += 1;
            if let Some(a) = d.first_alarm {
                delays.push((ts[a] - ts[d.start]) as f64 / 1000.0);
            }
        }
        per_file.push(FileResult { file: f.name.clone(), confusion: c });
        predictions.push((f.name.clone(), preds));
    }
    let us_per_row = score_time.as_secs_f64() * 1e6 / scored_rows.max(1) as f64;
    Ok(DetectorResult {
        name: name.to_string(),
        kind: tc.detector.kind(),
        margin: tc.calibration.margin,
        confusion: total,
        f1: total.f1(),
        far_pct: total.far() * 100.0,
        mar_pct: total.mar() * 100.0,
        anomalies,
        detected: delays.len(),
        median_delay_s: stats::quantile(&delays, 0.5),
        train_ms: train_time.as_secs_f64() * 1e3,
        score_us_per_row: us_per_row,
        rows_per_s: if us_per_row > 0.0 { 1e6 / us_per_row } else { f64::INFINITY },
        per_file,
        predictions,
    })
}

/// Writes `file,row,prediction` for one detector.
pub fn write_predictions(result: &DetectorResult, path: &Path) -> anyhow::Result<()> {
    let mut out = String::from("file,row,prediction\n");
    for (file, preds) in &result.predictions {
        for (row, &p) in preds.iter().enumerate() {
            out.push_str(&format!("{file},{row},{}\n", u8::from(p)));
        }
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

pub fn print_table(report: &SkabReport, per_file: bool, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "SKAB outlier detection ({} split): {} files, {} test rows ({} anomalous); train on the first {} rows of each file, score the rest one row at a time",
        report.split, report.files, report.test_rows, report.anomalous_test_rows, report.train_rows
    )?;
    let fmt_channels = |used: bool| {
        report
            .channels
            .iter()
            .filter(|c| c.used == used)
            .map(|c| format!("{} ({:.2})", c.channel, c.trend_ratio))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(out, "channels used (median training trend ratio): {}", fmt_channels(true))?;
    let dropped = fmt_channels(false);
    if !dropped.is_empty() {
        writeln!(out, "channels dropped, level trends in normal operation: {dropped}")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<18} {:>6} {:>7} {:>7} {:>9} {:>9} {:>10} {:>9} {:>11}",
        "detector", "F1", "FAR %", "MAR %", "detected", "delay s", "train ms", "µs/row", "rows/s"
    )?;
    for r in &report.detectors {
        writeln!(
            out,
            "{:<18} {:>6.3} {:>7.2} {:>7.2} {:>9} {:>9} {:>10.0} {:>9.3} {:>11.0}",
            r.name,
            r.f1,
            r.far_pct,
            r.mar_pct,
            format!("{}/{}", r.detected, r.anomalies),
            r.median_delay_s.map_or("-".to_string(), |d| format!("{d:.0}")),
            r.train_ms,
            r.score_us_per_row,
            r.rows_per_s
        )?;
    }
    writeln!(out, "\npublished, SKAB strict leaderboard (test parts only):")?;
    for p in &report.published {
        writeln!(out, "{:<26} {:>6.2} {:>7.2} {:>7.2}", p.algorithm, p.f1, p.far_pct, p.mar_pct)?;
    }
    if per_file {
        for r in &report.detectors {
            writeln!(out, "\n{} per file:", r.name)?;
            for f in &r.per_file {
                let c = &f.confusion;
                writeln!(out, "  {:<16} TP {:>4} TN {:>4} FP {:>4} FN {:>4}", f.file, c.tp, c.tn, c.fp, c.fn_)?;
            }
        }
    }
    Ok(())
}
