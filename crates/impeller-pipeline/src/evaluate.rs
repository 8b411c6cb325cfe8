//! Evaluation of a model on labelled parts, as the device would score them: one streaming
//! scorer per part, frame by frame. Row metrics follow the SKAB leaderboard (F1, false- and
//! missed-alarm rates over rows); event metrics count labelled anomalies caught and how fast,
//! and alarms raised per device-day.

use std::sync::Arc;
use std::time::Instant;

use impeller_core::metrics::{Confusion, detections};
use impeller_core::{Frame, Model, Scorer, Verdict, stats};
use serde::{Deserialize, Serialize};

/// One labelled part to score: rows before `skip` warm the scorer up and are not counted.
#[derive(Debug, Clone, Copy)]
pub struct ValidationPart<'a> {
    pub name: &'a str,
    pub frames: &'a [Frame],
    pub labels: &'a [bool],
    pub skip: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub parts: u64,
    pub scored_rows: u64,
    pub anomalous_rows: u64,
    pub tp: u64,
    pub tn: u64,
    pub fp: u64,
    pub fn_: u64,
    /// `None` where undefined (no anomalous rows, no normal rows).
    pub f1: Option<f64>,
    pub far: Option<f64>,
    pub mar: Option<f64>,
    /// Labelled anomalies (runs of anomalous rows) and how many raised an alarm within them.
    pub anomalies: u64,
    pub detected: u64,
    pub median_delay_s: Option<f64>,
    /// Alarms raised (rising edges of the debounced alarm) and the scored time, in device-days.
    pub alarms: u64,
    pub device_days: f64,
    pub alarms_per_day: Option<f64>,
    /// Alarms that rose on a normal row, and the scored time of normal rows: what a healthy
    /// device should expect (the hub's alert-rate monitor, `impeller_core::alert_rate`).
    #[serde(default)]
    pub false_alarms: u64,
    #[serde(default)]
    pub normal_device_days: f64,
    #[serde(default)]
    pub false_alarms_per_day: Option<f64>,
    pub per_part: Vec<PartResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartResult {
    pub name: String,
    pub tp: u64,
    pub tn: u64,
    pub fp: u64,
    pub fn_: u64,
    pub anomalies: u64,
    pub detected: u64,
    pub alarms: u64,
}

impl Evaluation {
    /// The figures a package and the registry carry, by name.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let mut m = std::collections::BTreeMap::new();
        let mut put = |k: &str, v: Option<f64>| {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                m.insert(k.to_string(), v);
            }
        };
        put("f1", self.f1);
        put("far", self.far);
        put("mar", self.mar);
        put("median_delay_s", self.median_delay_s);
        put("alarms_per_day", self.alarms_per_day);
        put("false_alarms_per_day", self.false_alarms_per_day);
        put("normal_device_days", Some(self.normal_device_days).filter(|d| *d > 0.0));
        put("anomalies", Some(self.anomalies as f64));
        put("detected", Some(self.detected as f64));
        put("scored_rows", Some(self.scored_rows as f64));
        m
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

pub fn evaluate(model: &Model, parts: &[ValidationPart<'_>]) -> Evaluation {
    let model = Arc::new(model.clone());
    let mut total = Confusion::default();
    let (mut anomalies, mut delays, mut alarms, mut days, mut scored) = (0u64, Vec::new(), 0u64, 0.0f64, 0u64);
    let (mut false_alarms, mut normal_days) = (0u64, 0.0f64);
    let mut per_part = Vec::new();
    for p in parts {
        let skip = p.skip.min(p.frames.len());
        let mut scorer = Scorer::new(Arc::clone(&model));
        let mut preds = Vec::with_capacity(p.frames.len() - skip);
        for (i, f) in p.frames.iter().enumerate() {
            let alarm = scorer.push(f.ts_ms, &f.values).alarm();
            if i >= skip {
                preds.push(alarm);
            }
        }
        let labels = &p.labels[skip..];
        let c = Confusion::from_labels(labels, &preds);
        total.merge(&c);
        let ts: Vec<i64> = p.frames[skip..].iter().map(|f| f.ts_ms).collect();
        let found = detections(labels, &preds);
        let mut detected = 0;
        for d in &found {
            if let Some(a) = d.first_alarm {
                detected += 1;
                delays.push((ts[a] - ts[d.start]) as f64 / 1000.0);
            }
        }
        let rising: Vec<usize> = (0..preds.len()).filter(|&i| preds[i] && (i == 0 || !preds[i - 1])).collect();
        let raised = rising.len() as u64;
        alarms += raised;
        false_alarms += rising.iter().filter(|&&i| !labels[i]).count() as u64;
        anomalies += found.len() as u64;
        scored += preds.len() as u64;
        if let (Some(first), Some(last)) = (ts.first(), ts.last()) {
            let span = (last - first).max(0) as f64 / 86_400_000.0;
            days += span;
            normal_days += span * labels.iter().filter(|l| !**l).count() as f64 / labels.len() as f64;
        }
        per_part.push(PartResult {
            name: p.name.to_string(),
            tp: c.tp,
            tn: c.tn,
            fp: c.fp,
            fn_: c.fn_,
            anomalies: found.len() as u64,
            detected,
            alarms: raised,
        });
    }
    Evaluation {
        parts: parts.len() as u64,
        scored_rows: scored,
        anomalous_rows: total.tp + total.fn_,
        tp: total.tp,
        tn: total.tn,
        fp: total.fp,
        fn_: total.fn_,
        f1: finite(total.f1()),
        far: finite(total.far()),
        mar: finite(total.mar()),
        anomalies,
        detected: delays.len() as u64,
        median_delay_s: stats::quantile(&delays, 0.5),
        alarms,
        device_days: days,
        alarms_per_day: (days > 0.0).then(|| alarms as f64 / days),
        false_alarms,
        normal_device_days: normal_days,
        false_alarms_per_day: (normal_days > 0.0).then(|| false_alarms as f64 / normal_days),
        per_part,
    }
}

/// How closely a model follows the one it was derived from (an int8 variant and its float
/// original), frame by frame, both scored as the device would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Frames both models scored.
    pub frames: u64,
    /// Share of those frames on which the two debounced alarms are the same.
    pub alarm_agreement: f64,
    /// Largest and 99th-percentile difference of the normalised scores, relative to the
    /// reference's score, or to 1 (the calibration quantile) where that is smaller: 0.01 is 1 %
    /// of a high score, or a hundredth of the way to the calibration quantile for a low one.
    pub max_rel_score_diff: f64,
    pub p99_rel_score_diff: f64,
    /// Alarms raised (rising edges) by each.
    pub alarms_reference: u64,
    pub alarms_candidate: u64,
}

pub fn agreement(reference: &Model, candidate: &Model, parts: &[&[Frame]]) -> Agreement {
    let (reference, candidate) = (Arc::new(reference.clone()), Arc::new(candidate.clone()));
    let (mut same, mut diffs) = (0u64, Vec::new());
    let (mut raised_r, mut raised_c) = (0u64, 0u64);
    for frames in parts {
        let (mut a, mut b) = (Scorer::new(Arc::clone(&reference)), Scorer::new(Arc::clone(&candidate)));
        let (mut was_r, mut was_c) = (false, false);
        for f in *frames {
            let (Verdict::Scored(r), Verdict::Scored(c)) = (a.push(f.ts_ms, &f.values), b.push(f.ts_ms, &f.values))
            else {
                continue;
            };
            same += u64::from(r.alarm == c.alarm);
            raised_r += u64::from(r.alarm && !was_r);
            raised_c += u64::from(c.alarm && !was_c);
            (was_r, was_c) = (r.alarm, c.alarm);
            let d = (r.score - c.score).abs() / r.score.abs().max(1.0);
            // Infinite scores on both sides (an overflowing frame) agree.
            diffs.push(if d.is_nan() && r.score == c.score { 0.0 } else { d });
        }
    }
    let frames = diffs.len() as u64;
    Agreement {
        frames,
        alarm_agreement: if frames == 0 { 1.0 } else { same as f64 / frames as f64 },
        max_rel_score_diff: diffs.iter().copied().fold(0.0, f64::max),
        p99_rel_score_diff: stats::quantile(&diffs, 0.99).unwrap_or(0.0),
        alarms_reference: raised_r,
        alarms_candidate: raised_c,
    }
}

/// Median microseconds to score one frame here, over `frames` (repeated to at least 2,000).
pub fn scoring_latency_us(model: &Model, frames: &[Frame]) -> f64 {
    if frames.is_empty() {
        return 0.0;
    }
    let model = Arc::new(model.clone());
    let mut per_round = Vec::new();
    for _ in 0..5 {
        let mut scorer = Scorer::new(Arc::clone(&model));
        let started = Instant::now();
        let mut n = 0usize;
        let mut last_ts = i64::MIN;
        while n < 2_000 {
            for f in frames {
                // Replayed rounds must stay in time order for the scorer to score them.
                let ts = if f.ts_ms > last_ts { f.ts_ms } else { last_ts + 1 };
                last_ts = ts;
                std::hint::black_box(scorer.push(ts, &f.values));
                n += 1;
            }
        }
        per_round.push(started.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    stats::quantile(&per_round, 0.5).unwrap_or(0.0)
}

/// Memory a loaded model takes on a device, estimated from its file (the parameters as parsed
/// take no more than their text) and the scorer's rolling buffers.
pub fn memory_estimate_bytes(model: &Model, model_json_bytes: usize) -> u64 {
    let windows = model.features.window * model.channels.len() * 8 * 2;
    let smoothing = model.calibration.smoothing * 8;
    (model_json_bytes + windows + smoothing + 4096) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use impeller_core::detector::DetectorConfig;
    use impeller_core::{Channel, TrainConfig, train};

    fn wave(n: usize, offset: usize, jump_at: Option<usize>) -> Vec<Frame> {
        (0..n)
            .map(|i| {
                let t = (i + offset) as f64 * 0.1;
                let jump = if jump_at.is_some_and(|j| i >= j) { 8.0 } else { 0.0 };
                Frame { ts_ms: 1000 * (i + offset) as i64, values: vec![t.sin() + jump, t.cos()] }
            })
            .collect()
    }

    #[test]
    fn a_clear_fault_is_caught_and_counted() {
        let channels = vec![Channel::new("a", ""), Channel::new("b", "")];
        let model =
            train(&channels, &wave(600, 0, None), &TrainConfig::new(DetectorConfig::Zscore(Default::default())))
                .unwrap();
        let frames = wave(400, 600, Some(300));
        let labels: Vec<bool> = (0..400).map(|i| i >= 300).collect();
        let e = evaluate(&model, &[ValidationPart { name: "p", frames: &frames, labels: &labels, skip: 100 }]);
        assert_eq!(e.scored_rows, 300);
        assert_eq!((e.anomalies, e.detected), (1, 1));
        assert!(e.f1.unwrap() > 0.9, "{e:?}");
        assert!(e.median_delay_s.unwrap() < 15.0);
        assert_eq!(e.alarms, 1);
        assert!(e.alarms_per_day.unwrap() > 0.0);
        assert_eq!(e.metrics()["detected"], 1.0);
        // The one alarm rose on the fault: none was false, over 200 normal rows of 1 s.
        assert_eq!(e.false_alarms, 0);
        assert!((e.normal_device_days - 299.0 * 200.0 / 300.0 / 86_400.0).abs() < 1e-9, "{}", e.normal_device_days);
        assert_eq!(e.metrics()["false_alarms_per_day"], 0.0);
    }
}
