//! What the agent sends: per-interval aggregates of every channel, drift sketches of the
//! model's features, raw frames for retraining, and alerts with the readings around them.
//! Driven by scored frames only, with their own timestamps, so it is deterministic and
//! testable without a clock.

use std::collections::VecDeque;

use impeller_core::Channel;
use impeller_core::scorer::Verdict;
use impeller_core::sketch::Sketch;
use impeller_core::wire::{
    AggregateBody, AlertBody, ChannelStats, EventBody, FrameRecord, ModelRef, SamplesBody, ScoreStats, SketchBody,
};

use crate::config::Uplink;
use crate::outbox::Class;

/// A message for the outbox: its class and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub class: Class,
    pub body: Vec<u8>,
}

/// MQTT topic kind of each class.
pub fn kind(class: Class) -> &'static str {
    match class {
        Class::Raw => "samples",
        Class::Aggregate => "telemetry",
        Class::Sketch => "sketches",
        Class::Alert => "alerts",
        Class::Event => "events",
    }
}

fn message<T: serde::Serialize>(class: Class, body: &T) -> Message {
    Message { class, body: serde_json::to_vec(body).unwrap_or_default() }
}

/// An event message.
pub fn event(name: &str, detail: serde_json::Value) -> Message {
    message(Class::Event, &EventBody { event: name.to_string(), detail })
}

/// Running statistics of one channel (Welford's algorithm for the variance).
#[derive(Debug, Clone, Default)]
struct Running {
    count: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    last: f64,
}

impl Running {
    fn add(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        if self.count == 0 {
            self.min = v;
            self.max = v;
        }
        self.count += 1;
        let d = v - self.mean;
        self.mean += d / self.count as f64;
        self.m2 += d * (v - self.mean);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.last = v;
    }

    fn stats(&self, c: &Channel) -> ChannelStats {
        let some = |v: f64| (self.count > 0).then_some(v);
        ChannelStats {
            name: c.name.clone(),
            unit: c.unit.clone(),
            count: self.count,
            mean: some(self.mean),
            min: some(self.min),
            max: some(self.max),
            std: some((self.m2 / self.count.max(1) as f64).sqrt()),
            last: some(self.last),
        }
    }
}

/// An alert waiting for the readings after its start.
#[derive(Debug)]
struct PendingAlert {
    body: AlertBody,
    after: usize,
}

#[derive(Debug)]
pub struct Producer {
    model: ModelRef,
    channels: Vec<Channel>,
    feature_names: Vec<String>,
    threshold: f64,
    cfg: Uplink,
    agg_start: Option<i64>,
    running: Vec<Running>,
    score: Running,
    scored: u64,
    alarms: u64,
    sketch_start: Option<i64>,
    sketch: Sketch,
    frame_count: u64,
    /// The data time of the latest frame: where a flushed interval ends.
    last_ts: Option<i64>,
    raw: Vec<FrameRecord>,
    history: VecDeque<FrameRecord>,
    alarm_since: Option<i64>,
    pending: Vec<PendingAlert>,
}

/// What one frame produced: messages for the outbox and alerts for the local journal.
#[derive(Debug, Default)]
pub struct Produced {
    pub messages: Vec<Message>,
    pub alerts: Vec<AlertBody>,
}

impl Producer {
    pub fn new(
        model: ModelRef,
        channels: Vec<Channel>,
        feature_names: Vec<String>,
        threshold: f64,
        cfg: Uplink,
    ) -> Self {
        let n = channels.len();
        let dim = feature_names.len();
        Self {
            model,
            channels,
            feature_names,
            threshold,
            cfg,
            agg_start: None,
            running: vec![Running::default(); n],
            score: Running::default(),
            scored: 0,
            alarms: 0,
            sketch_start: None,
            sketch: Sketch::new(dim),
            frame_count: 0,
            last_ts: None,
            raw: Vec::new(),
            history: VecDeque::new(),
            alarm_since: None,
            pending: Vec::new(),
        }
    }

    pub fn model(&self) -> &ModelRef {
        &self.model
    }

    /// Takes one frame (in model channels and units) and its verdict; `features` is the
    /// scorer's standardised feature vector, used when the frame was scored.
    pub fn push(&mut self, ts_ms: i64, frame: &[f64], verdict: &Verdict, features: &[f64]) -> Produced {
        let mut out = Produced::default();
        self.roll_intervals(ts_ms, &mut out);
        self.last_ts = Some(ts_ms);
        let record = FrameRecord::new(ts_ms, frame);

        for (r, v) in self.running.iter_mut().zip(frame) {
            r.add(*v);
        }
        // Raw frames for retraining come in runs of `raw_batch` consecutive frames, one run in
        // every `raw_every`: the same share as one frame in `raw_every`, but a model trained
        // on them sees the frame rate it will score at.
        if self.cfg.raw_every > 0 {
            let run = self.cfg.raw_batch as u64;
            if self.frame_count % run.saturating_mul(self.cfg.raw_every).max(1) < run {
                self.raw.push(record.clone());
                if self.raw.len() >= self.cfg.raw_batch {
                    out.messages.push(self.take_raw());
                }
            }
        }
        self.frame_count += 1;

        // Alerts waiting for context get this frame.
        for p in &mut self.pending {
            p.body.window.push(record.clone());
            p.after -= 1;
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|p| p.after == 0);
        self.pending = waiting;
        for p in ready {
            out.messages.push(message(Class::Alert, &p.body));
            out.alerts.push(p.body);
        }

        if let Verdict::Scored(s) = verdict {
            self.scored += 1;
            self.score.add(s.score);
            self.sketch.add(features);
            if s.alarm {
                self.alarms += 1;
            }
            match (s.alarm, self.alarm_since) {
                (true, None) => {
                    self.alarm_since = Some(ts_ms);
                    let mut window: Vec<FrameRecord> = self.history.iter().cloned().collect();
                    window.push(record.clone());
                    let body = AlertBody {
                        model: self.model.clone(),
                        started_ms: ts_ms,
                        score: s.score,
                        threshold: self.threshold,
                        top_features: self.top_features(features),
                        channels: self.channels.iter().map(|c| c.name.clone()).collect(),
                        window,
                    };
                    if self.cfg.alert_context == 0 {
                        out.messages.push(message(Class::Alert, &body));
                        out.alerts.push(body);
                    } else {
                        self.pending.push(PendingAlert { body, after: self.cfg.alert_context });
                    }
                }
                (false, Some(started)) => {
                    self.alarm_since = None;
                    out.messages.push(event(
                        "alert_cleared",
                        serde_json::json!({
                            "model": self.model, "started_ms": started, "ended_ms": ts_ms,
                        }),
                    ));
                }
                _ => {}
            }
        }
        self.history.push_back(record);
        while self.history.len() > self.cfg.alert_context {
            self.history.pop_front();
        }
        out
    }

    /// The three features furthest from normal.
    fn top_features(&self, features: &[f64]) -> Vec<(String, f64)> {
        let mut ranked: Vec<(String, f64)> =
            self.feature_names.iter().cloned().zip(features.iter().copied()).filter(|(_, v)| v.is_finite()).collect();
        ranked.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        ranked.truncate(3);
        ranked
    }

    fn take_raw(&mut self) -> Message {
        let body = SamplesBody {
            channels: self.channels.iter().map(|c| c.name.clone()).collect(),
            frames: std::mem::take(&mut self.raw),
        };
        message(Class::Raw, &body)
    }

    /// Ends the aggregate and sketch intervals that `ts_ms` lies beyond.
    fn roll_intervals(&mut self, ts_ms: i64, out: &mut Produced) {
        let agg_ms = (self.cfg.aggregate_interval_s * 1000) as i64;
        let start = *self.agg_start.get_or_insert(ts_ms - ts_ms.rem_euclid(agg_ms));
        if ts_ms >= start + agg_ms {
            out.messages.push(self.take_aggregate(start, start + agg_ms));
            self.agg_start = Some(ts_ms - ts_ms.rem_euclid(agg_ms));
        }
        let sk_ms = (self.cfg.sketch_interval_s * 1000) as i64;
        let start = *self.sketch_start.get_or_insert(ts_ms - ts_ms.rem_euclid(sk_ms));
        if ts_ms >= start + sk_ms {
            if let Some(m) = self.take_sketch(start, start + sk_ms) {
                out.messages.push(m);
            }
            self.sketch_start = Some(ts_ms - ts_ms.rem_euclid(sk_ms));
        }
    }

    fn take_aggregate(&mut self, start_ms: i64, end_ms: i64) -> Message {
        let body = AggregateBody {
            start_ms,
            end_ms,
            scored: self.scored,
            alarms: self.alarms,
            channels: self.running.iter().zip(&self.channels).map(|(r, c)| r.stats(c)).collect(),
            score: (self.score.count > 0).then_some(ScoreStats {
                count: self.score.count,
                mean: self.score.mean,
                min: self.score.min,
                max: self.score.max,
                threshold: self.threshold,
            }),
        };
        self.running.iter_mut().for_each(|r| *r = Running::default());
        self.score = Running::default();
        self.scored = 0;
        self.alarms = 0;
        message(Class::Aggregate, &body)
    }

    fn take_sketch(&mut self, start_ms: i64, end_ms: i64) -> Option<Message> {
        if self.sketch.count == 0 {
            return None;
        }
        let sketch = std::mem::replace(&mut self.sketch, Sketch::new(self.feature_names.len()));
        Some(message(
            Class::Sketch,
            &SketchBody { model: self.model.clone(), start_ms, end_ms, features: self.feature_names.clone(), sketch },
        ))
    }

    /// Everything still accumulating (before a model switch or shutdown). The partial intervals
    /// end just after the latest frame, on the data clock like every other interval: a replay
    /// or a backlog runs behind the wall clock, and the hub orders each device's sketches by end.
    pub fn flush(&mut self) -> Produced {
        let mut out = Produced::default();
        let ts_ms = self.last_ts.map_or(0, |t| t + 1);
        if let Some(start) = self.agg_start.take()
            && self.running.iter().any(|r| r.count > 0)
        {
            out.messages.push(self.take_aggregate(start, ts_ms));
        }
        if let Some(start) = self.sketch_start.take()
            && let Some(m) = self.take_sketch(start, ts_ms)
        {
            out.messages.push(m);
        }
        if !self.raw.is_empty() {
            out.messages.push(self.take_raw());
        }
        for p in self.pending.drain(..) {
            out.messages.push(message(Class::Alert, &p.body));
            out.alerts.push(p.body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use impeller_core::scorer::Scored;

    fn cfg() -> Uplink {
        Uplink {
            aggregate_interval_s: 10,
            sketch_interval_s: 20,
            raw_every: 2,
            raw_batch: 3,
            alert_context: 2,
            max_records_per_message: 1,
        }
    }

    fn producer() -> Producer {
        let model = ModelRef { name: "m".into(), version: "1".into(), release: 3 };
        Producer::new(model, vec![Channel::new("p", "bar")], vec!["p.mean".into()], 1.5, cfg())
    }

    fn scored(alarm: bool) -> Verdict {
        Verdict::Scored(Scored { raw: 0.0, score: if alarm { 3.0 } else { 0.1 }, above: alarm, alarm })
    }

    #[test]
    fn aggregates_sketches_and_raw_batches_follow_the_data_clock() {
        let mut p = producer();
        let mut msgs = Vec::new();
        for i in 0..25 {
            msgs.extend(p.push(i * 1000, &[i as f64], &scored(false), &[0.0]).messages);
        }
        let count = |c: Class| msgs.iter().filter(|m| m.class == c).count();
        assert_eq!(count(Class::Aggregate), 2, "intervals [0,10) and [10,20) ended");
        assert_eq!(count(Class::Sketch), 1, "interval [0,20) ended");
        assert_eq!(
            count(Class::Raw),
            4,
            "runs of 3 consecutive frames, one run in every 2 (frames 0-2, 6-8, 12-14, 18-20)"
        );
        let raw: Vec<SamplesBody> =
            msgs.iter().filter(|m| m.class == Class::Raw).map(|m| serde_json::from_slice(&m.body).unwrap()).collect();
        let times: Vec<i64> = raw[1].frames.iter().map(|f| f.ts_ms).collect();
        assert_eq!(times, [6000, 7000, 8000], "consecutive frames");
        let agg: AggregateBody =
            serde_json::from_slice(&msgs.iter().find(|m| m.class == Class::Aggregate).unwrap().body).unwrap();
        assert_eq!((agg.start_ms, agg.end_ms, agg.channels[0].count), (0, 10_000, 10));
        assert_eq!(agg.channels[0].mean, Some(4.5));
        assert_eq!(agg.channels[0].max, Some(9.0));
        let score = ScoreStats { count: 10, mean: 0.1, min: 0.1, max: 0.1, threshold: 1.5 };
        assert_eq!(agg.score, Some(score), "the score of the scored frames and the threshold");
    }

    #[test]
    fn a_flush_ends_the_partial_intervals_at_the_latest_frame() {
        let mut p = producer();
        assert!(p.flush().messages.is_empty(), "nothing pushed, nothing to flush");
        for i in 0..25 {
            p.push(i * 1000, &[i as f64], &scored(false), &[0.0]);
        }
        let out = p.flush();
        let body = |c: Class| &out.messages.iter().find(|m| m.class == c).unwrap().body;
        let agg: AggregateBody = serde_json::from_slice(body(Class::Aggregate)).unwrap();
        assert_eq!((agg.start_ms, agg.end_ms, agg.channels[0].count), (20_000, 24_001, 5));
        let sketch: SketchBody = serde_json::from_slice(body(Class::Sketch)).unwrap();
        assert_eq!((sketch.start_ms, sketch.end_ms, sketch.sketch.count), (20_000, 24_001, 5));
        assert!(p.flush().messages.is_empty(), "flushed once");
    }

    #[test]
    fn an_alert_carries_readings_before_and_after_its_start() {
        let mut p = producer();
        let mut produced = Vec::new();
        for (i, alarm) in [false, false, false, true, true, true, false].into_iter().enumerate() {
            produced.push(p.push(i as i64 * 1000, &[i as f64], &scored(alarm), &[4.0]));
        }
        let alerts: Vec<&AlertBody> = produced.iter().flat_map(|o| &o.alerts).collect();
        assert_eq!(alerts.len(), 1, "one alarm episode, one alert");
        let a = alerts[0];
        assert_eq!(a.started_ms, 3000);
        let ts: Vec<i64> = a.window.iter().map(|f| f.ts_ms).collect();
        assert_eq!(ts, [1000, 2000, 3000, 4000, 5000], "2 frames before, the start, 2 after");
        assert_eq!(a.top_features[0], ("p.mean".to_string(), 4.0));
        let cleared = produced[6].messages.iter().find(|m| m.class == Class::Event).unwrap();
        assert!(String::from_utf8_lossy(&cleared.body).contains("alert_cleared"));
    }
}
