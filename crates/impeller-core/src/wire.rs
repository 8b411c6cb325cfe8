//! Messages between devices and the hub: MQTT topics, the envelope every device message carries,
//! and the bodies. JSON, so a third-party gateway with a plain MQTT client can take part.
//!
//! Topics: `impeller/v1/devices/{device}/{kind}`. Device → hub: `samples`, `telemetry`
//! (aggregates), `sketches`, `alerts`, `events`, and `readings` (plain readings from gateways
//! that run no agent). Hub → device: `ack`, `desired` (retained).
//!
//! Decoders here read untrusted bytes: they never panic and say what was wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::sketch::Sketch;

pub const SCHEMA_VERSION: u32 = 1;
pub const TOPIC_ROOT: &str = "impeller/v1/devices";

/// The topic of one kind of message of one device.
pub fn topic(device: &str, kind: &str) -> String {
    format!("{TOPIC_ROOT}/{device}/{kind}")
}

/// Kinds an agent sends to the hub, each in an [`Envelope`].
pub const UPLINK_KINDS: [&str; 5] = ["alerts", "telemetry", "samples", "sketches", "events"];

/// Kinds the hub sends to a device.
pub const DOWNLINK_KINDS: [&str; 2] = ["ack", "desired"];

/// Whether `device` may publish on `topic` at the hub's broker: only its own uplink topics.
pub fn device_may_publish(device: &str, topic: &str) -> bool {
    matches!(parse_topic(topic), Some((d, kind)) if d == device && UPLINK_KINDS.contains(&kind))
}

/// Whether `device` may subscribe to `filter` at the hub's broker: exactly its own `ack` or
/// `desired`, so no wildcard and no other device's topic.
pub fn device_may_subscribe(device: &str, filter: &str) -> bool {
    matches!(parse_topic(filter), Some((d, kind)) if d == device && DOWNLINK_KINDS.contains(&kind))
}

/// `impeller/v1/devices/{device}/{kind}` → (device, kind), for a valid device id.
pub fn parse_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix(TOPIC_ROOT)?.strip_prefix('/')?;
    let (device, kind) = rest.split_once('/')?;
    (valid_device_id(device) && !kind.contains('/')).then_some((device, kind))
}

/// Device ids are 1 to 64 of `[A-Za-z0-9._-]`: safe in topics, file names and URLs.
pub fn valid_device_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("message is not valid JSON or lacks a field: {0}")]
    Json(String),
    #[error("message schema version {found} is not supported (this build reads {SCHEMA_VERSION})")]
    Version { found: u32 },
    #[error("invalid message: {0}")]
    Invalid(String),
}

fn json_err(e: serde_json::Error) -> WireError {
    WireError::Json(e.to_string())
}

/// The envelope of every message a device sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub v: u32,
    pub device: String,
    /// Per-device sequence number, strictly increasing.
    pub seq: u64,
    /// No message of this device exists between `prev` and `seq`.
    pub prev: u64,
    /// When the device produced it (milliseconds since the Unix epoch).
    pub ts_ms: i64,
    pub kind: String,
    pub body: Box<RawValue>,
}

/// Wraps a JSON body in an envelope.
pub fn encode_envelope(
    device: &str,
    seq: u64,
    prev: u64,
    ts_ms: i64,
    kind: &str,
    body: &[u8],
) -> Result<Vec<u8>, WireError> {
    let text = std::str::from_utf8(body).map_err(|_| WireError::Invalid("body is not UTF-8".into()))?;
    let body = RawValue::from_string(text.to_string()).map_err(json_err)?;
    let env =
        Envelope { v: SCHEMA_VERSION, device: device.to_string(), seq, prev, ts_ms, kind: kind.to_string(), body };
    serde_json::to_vec(&env).map_err(json_err)
}

pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, WireError> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(json_err)?;
    check_envelope(&env)?;
    Ok(env)
}

fn check_envelope(env: &Envelope) -> Result<(), WireError> {
    if env.v != SCHEMA_VERSION {
        return Err(WireError::Version { found: env.v });
    }
    if !valid_device_id(&env.device) {
        return Err(WireError::Invalid(format!("device id `{}` is not valid", env.device)));
    }
    if env.prev >= env.seq {
        return Err(WireError::Invalid(format!("prev {} is not below seq {}", env.prev, env.seq)));
    }
    Ok(())
}

/// Most envelopes in one message.
pub const MAX_ENVELOPES: usize = 1000;

/// Several encoded envelopes (of one device and one kind, for one topic) as one message: a
/// JSON array, oldest first. An agent sends what it has ready in one packet instead of one per
/// record, which costs the link and the hub less.
pub fn encode_envelopes(envelopes: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(envelopes.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, e) in envelopes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.push(b']');
    out
}

/// One message from a device: an envelope, or an array of at most [`MAX_ENVELOPES`] of them.
/// The message as a whole is refused when it is not JSON, is a malformed single envelope, or
/// is an array too long; an array's elements are then checked one by one, so a malformed
/// element is refused on its own and its neighbours are kept.
pub fn decode_envelopes(bytes: &[u8]) -> Result<Vec<Result<Envelope, WireError>>, WireError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        return decode_envelope(bytes).map(|e| vec![Ok(e)]);
    }
    // One pass when every element is a well-formed envelope (the agent's case); else each
    // element on its own, to keep the good ones and say what is wrong with the others.
    if let Ok(all) = serde_json::from_slice::<Bounded<Envelope>>(bytes)
        && all.0.iter().all(|e| check_envelope(e).is_ok())
    {
        return Ok(all.0.into_iter().map(Ok).collect());
    }
    let elements: Bounded<&RawValue> = serde_json::from_slice(bytes).map_err(json_err)?;
    Ok(elements.0.iter().map(|e| decode_envelope(e.get().as_bytes())).collect())
}

/// A JSON array refused past [`MAX_ENVELOPES`] elements before the rest is read.
struct Bounded<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Bounded<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Elements<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Elements<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "an array of at most {MAX_ENVELOPES} envelopes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = seq.next_element::<T>()? {
                    if out.len() == MAX_ENVELOPES {
                        return Err(serde::de::Error::custom(format!("more than {MAX_ENVELOPES} envelopes")));
                    }
                    out.push(e);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Elements(std::marker::PhantomData)).map(Bounded)
    }
}

/// Hub → device: everything up to and including `acked` is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub v: u32,
    pub acked: u64,
    /// The hub also holds the records from this one on, and has held them since an earlier
    /// batch: the device's records between `acked` and it were lost on the way (a broker that
    /// dropped them while the hub was away, or a hub too far behind to take them). The device
    /// sends those again at once instead of waiting for its acknowledgement timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_from: Option<u64>,
}

/// How long a device waits before it sends the same gap again (`held_from` with the same
/// `acked`): the records it sent may still be on their way to a hub that is behind.
pub const GAP_RESEND_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a device waits for an acknowledgement before it sends again everything the hub
/// has not acknowledged: four deviations beyond the acknowledgements' usual latency, smoothed as
/// TCP's retransmission timer smooths round trips (RFC 6298), within `[floor, ceiling]`; the
/// ceiling until a first latency is known. Each expiry without an acknowledgement doubles the
/// wait, up to the ceiling, so a hub that is only slow is not flooded. A broker that drops the
/// last records a device sent (nothing after them reaches the hub to show the gap) then costs a
/// few seconds, not the ceiling.
#[derive(Debug, Clone, PartialEq)]
pub struct ResendTimer {
    floor: std::time::Duration,
    ceiling: std::time::Duration,
    /// Smoothed latency and its mean deviation, in seconds.
    smoothed: Option<(f64, f64)>,
    doublings: u32,
    /// Records up to this one may have gone more than once: an acknowledgement of them may
    /// answer either send, so its latency is no sample (Karn's rule).
    resent_through: u64,
}

impl ResendTimer {
    /// `floor` above `ceiling` counts as `ceiling`: a fixed timeout.
    pub fn new(floor: std::time::Duration, ceiling: std::time::Duration) -> ResendTimer {
        ResendTimer { floor: floor.min(ceiling), ceiling, smoothed: None, doublings: 0, resent_through: 0 }
    }

    /// An acknowledgement freed records up to `seq`, the newest of them sent `latency` ago: the
    /// wait starts afresh, undoubled, and the latency is a sample unless `seq` went twice.
    pub fn acknowledged(&mut self, seq: u64, latency: std::time::Duration) {
        self.doublings = 0;
        if seq <= self.resent_through {
            return;
        }
        let r = latency.as_secs_f64();
        self.smoothed = Some(match self.smoothed {
            None => (r, r / 2.0),
            Some((mean, dev)) => (0.875 * mean + 0.125 * r, 0.75 * dev + 0.25 * (mean - r).abs()),
        });
    }

    /// Records up to `through` are being sent again (a gap the hub named, or a reconnect).
    pub fn resent(&mut self, through: u64) {
        self.resent_through = self.resent_through.max(through);
    }

    /// The wait ran out and everything unacknowledged, up to `through`, goes again: the next
    /// wait is twice as long.
    pub fn expired(&mut self, through: u64) {
        self.doublings = (self.doublings + 1).min(16);
        self.resent(through);
    }

    pub fn timeout(&self) -> std::time::Duration {
        let base = match self.smoothed {
            None => self.ceiling,
            Some((mean, dev)) => std::time::Duration::try_from_secs_f64(mean + 4.0 * dev)
                .unwrap_or(self.ceiling)
                .clamp(self.floor, self.ceiling),
        };
        base.saturating_mul(1 << self.doublings).min(self.ceiling)
    }
}

pub fn encode_ack(acked: u64, held_from: Option<u64>) -> Vec<u8> {
    match held_from {
        Some(f) => format!(r#"{{"v":{SCHEMA_VERSION},"acked":{acked},"held_from":{f}}}"#).into_bytes(),
        None => format!(r#"{{"v":{SCHEMA_VERSION},"acked":{acked}}}"#).into_bytes(),
    }
}

pub fn decode_ack(bytes: &[u8]) -> Result<Ack, WireError> {
    let ack: Ack = serde_json::from_slice(bytes).map_err(json_err)?;
    if ack.v != SCHEMA_VERSION {
        return Err(WireError::Version { found: ack.v });
    }
    if let Some(f) = ack.held_from.filter(|f| *f <= ack.acked) {
        return Err(WireError::Invalid(format!("held_from {f} is not after acked {}", ack.acked)));
    }
    Ok(ack)
}

/// Plain sensor readings, as a gateway or a local PLC bridge publishes them:
/// `{"ts_ms": 1700000000000, "values": {"P_PSI": 43.1, "T_F": 104.2}}`, or several in one
/// message as an array of those, oldest first (a gateway that batches sends fewer, larger
/// messages, which costs the device less). A missing or `null` value is a missing reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Readings {
    pub ts_ms: i64,
    pub values: BTreeMap<String, Option<f64>>,
}

/// Most values in one readings message, all its readings together.
pub const MAX_READINGS: usize = 1024;

/// One readings message: a reading, or an array of them.
pub fn decode_readings(bytes: &[u8]) -> Result<Vec<Readings>, WireError> {
    let batch = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let all: Vec<Readings> = if batch {
        serde_json::from_slice(bytes).map_err(json_err)?
    } else {
        vec![serde_json::from_slice(bytes).map_err(json_err)?]
    };
    let values: usize = all.iter().map(|r| r.values.len().max(1)).sum();
    if values > MAX_READINGS {
        return Err(WireError::Invalid(format!("{values} values, more than the {MAX_READINGS} accepted")));
    }
    Ok(all)
}

/// Which model produced a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
    pub release: u64,
}

/// Readings at one instant, `null` where missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameRecord {
    pub ts_ms: i64,
    pub values: Vec<Option<f64>>,
}

impl FrameRecord {
    pub fn new(ts_ms: i64, values: &[f64]) -> Self {
        Self { ts_ms, values: values.iter().map(|v| v.is_finite().then_some(*v)).collect() }
    }
}

/// An alert: the model's alarm, with the readings around its start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertBody {
    pub model: ModelRef,
    pub started_ms: i64,
    /// Normalised score when the alarm started, and the threshold it crossed.
    pub score: f64,
    pub threshold: f64,
    /// Features furthest from normal when the alarm started, most deviant first.
    pub top_features: Vec<(String, f64)>,
    pub channels: Vec<String>,
    /// Readings before and after the start.
    pub window: Vec<FrameRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelStats {
    pub name: String,
    pub unit: String,
    pub count: u64,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub std: Option<f64>,
    pub last: Option<f64>,
}

/// Per-interval statistics of every channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateBody {
    pub start_ms: i64,
    pub end_ms: i64,
    pub scored: u64,
    pub alarms: u64,
    pub channels: Vec<ChannelStats>,
    /// The normalised anomaly score of the frames scored in the interval with a finite score,
    /// and the threshold in force; absent when there were none (and from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<ScoreStats>,
}

/// [`AggregateBody::score`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreStats {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub threshold: f64,
}

/// A drift sketch of the model's standardised features over an interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SketchBody {
    pub model: ModelRef,
    pub start_ms: i64,
    pub end_ms: i64,
    pub features: Vec<String>,
    pub sketch: Sketch,
}

/// Raw frames kept for retraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplesBody {
    pub channels: Vec<String>,
    pub frames: Vec<FrameRecord>,
}

/// Something the hub must know about the device: a model installed or refused, a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    pub event: String,
    pub detail: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_keeps_the_body_bytes() {
        let body = br#"{"event":"model_installed","detail":{"release":7}}"#;
        let bytes = encode_envelope("p101", 9, 7, 1_700_000_000_000, "events", body).unwrap();
        let env = decode_envelope(&bytes).unwrap();
        assert_eq!((env.seq, env.prev, env.kind.as_str()), (9, 7, "events"));
        assert_eq!(env.body.get().as_bytes(), body);
        assert!(encode_envelope("p101", 1, 0, 0, "events", b"{not json").is_err());
    }

    #[test]
    fn the_resend_timer_follows_the_acknowledgements_latency_and_backs_off() {
        use std::time::Duration as D;
        let mut t = ResendTimer::new(D::from_secs(2), D::from_secs(30));
        assert_eq!(t.timeout(), D::from_secs(30), "no latency known yet: the ceiling");
        t.acknowledged(1, D::from_millis(100));
        assert_eq!(t.timeout(), D::from_secs(2), "0.1 s + 4 × 0.05 s is under the floor");
        for seq in 2..52 {
            t.acknowledged(seq, D::from_secs(3));
        }
        let settled = t.timeout();
        assert!(settled > D::from_secs(3) && settled < D::from_millis(3100), "steady 3 s latency: {settled:?}");
        // RFC 6298's update, by hand: an 8 s latency moves the mean an eighth of the way and the
        // deviation a quarter.
        let (m, d) = t.smoothed.unwrap();
        t.acknowledged(52, D::from_secs(8));
        let (mean, dev) = (0.875 * m + 0.125 * 8.0, 0.75 * d + 0.25 * (8.0 - m));
        assert!((t.timeout().as_secs_f64() - (mean + 4.0 * dev)).abs() < 1e-6, "{:?}", t.timeout());
        let before = t.timeout();
        t.expired(60);
        assert_eq!(t.timeout(), before * 2);
        for _ in 0..20 {
            t.expired(60);
        }
        assert_eq!(t.timeout(), D::from_secs(30), "backing off stops at the ceiling");
        // Records up to 60 went twice: their acknowledgement ends the backing off, but its
        // latency is no sample (Karn's rule).
        t.acknowledged(60, D::from_millis(10));
        assert_eq!(t.timeout(), before);
        let fixed = ResendTimer::new(D::from_secs(3600), D::from_secs(3600));
        assert_eq!(fixed.timeout(), D::from_secs(3600));
        let mut fixed = fixed;
        fixed.acknowledged(1, D::from_millis(10));
        assert_eq!(fixed.timeout(), D::from_secs(3600), "a floor at the ceiling fixes the wait");
    }

    #[test]
    fn decoders_refuse_with_a_reason() {
        assert!(matches!(decode_ack(br#"{"v":1,"acked":5}"#), Ok(Ack { acked: 5, .. })));
        assert!(matches!(decode_ack(br#"{"v":2,"acked":5}"#), Err(WireError::Version { found: 2 })));
        assert!(matches!(decode_ack(br#"{"v":1,"acked":-5}"#), Err(WireError::Json(_))));
        assert!(matches!(decode_ack(br#"{"v":1,"acked":5,"held_from":5}"#), Err(WireError::Invalid(_))));
        assert_eq!(decode_ack(&encode_ack(5, Some(9))).unwrap().held_from, Some(9));
        let bad_prev = br#"{"v":1,"device":"d","seq":3,"prev":3,"ts_ms":0,"kind":"alerts","body":{}}"#;
        assert!(matches!(decode_envelope(bad_prev), Err(WireError::Invalid(_))));
        let bad_id = br#"{"v":1,"device":"a/b","seq":3,"prev":2,"ts_ms":0,"kind":"alerts","body":{}}"#;
        assert!(matches!(decode_envelope(bad_id), Err(WireError::Invalid(_))));
        let r = decode_readings(br#"{"ts_ms":1,"values":{"P":1.5,"T":null}}"#).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].values["P"], Some(1.5));
        assert_eq!(r[0].values["T"], None);
        let batch = decode_readings(br#" [{"ts_ms":1,"values":{"P":1}},{"ts_ms":2,"values":{"P":2}}]"#).unwrap();
        assert_eq!(
            batch.iter().map(|r| (r.ts_ms, r.values["P"])).collect::<Vec<_>>(),
            [(1, Some(1.0)), (2, Some(2.0))]
        );
        let e = decode_readings(br#"[{"ts_ms":1,"values":{"P":1}},{"ts_ms":"2","values":{}}]"#).unwrap_err();
        assert!(e.to_string().contains("line 1 column"), "{e}");
        // The cap is on the message, not each reading: empty readings count too.
        let many = format!("[{}]", vec![r#"{"ts_ms":1,"values":{}}"#; MAX_READINGS + 1].join(","));
        assert!(matches!(decode_readings(many.as_bytes()), Err(WireError::Invalid(_))));
        assert!(decode_readings(b"[]").unwrap().is_empty());
    }

    #[test]
    fn several_envelopes_travel_as_one_array_and_a_bad_one_is_refused_alone() {
        let env = |seq: u64| encode_envelope("p1", seq, seq - 1, seq as i64, "telemetry", b"{}").unwrap();
        let one = decode_envelopes(&env(1)).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].as_ref().unwrap().seq, 1);
        let mut parts = vec![env(1), env(2)];
        parts.push(br#"{"v":1,"device":"p1","seq":3,"prev":3,"ts_ms":0,"kind":"telemetry","body":{}}"#.to_vec());
        parts.push(b"7".to_vec());
        parts.push(env(4));
        let got = decode_envelopes(&encode_envelopes(&parts)).unwrap();
        let seqs: Vec<Result<u64, ()>> = got.iter().map(|r| r.as_ref().map(|e| e.seq).map_err(|_| ())).collect();
        assert_eq!(seqs, [Ok(1), Ok(2), Err(()), Err(()), Ok(4)]);
        assert!(decode_envelopes(b"[]").unwrap().is_empty());
        // Refused whole: not JSON, a bad single envelope, too many elements.
        assert!(decode_envelopes(b"[{}, ").is_err());
        assert!(decode_envelopes(b"{}").is_err());
        let many = encode_envelopes(&vec![b"0".to_vec(); MAX_ENVELOPES + 1]);
        let e = decode_envelopes(&many).unwrap_err();
        assert!(e.to_string().contains("more than 1000"), "{e}");
        assert_eq!(decode_envelopes(&encode_envelopes(&vec![env(1); MAX_ENVELOPES])).unwrap().len(), MAX_ENVELOPES);
    }

    #[test]
    fn device_ids() {
        assert!(valid_device_id("pump-p101.site_7"));
        for bad in ["", "a/b", "a+b", "a#", "ä", &"x".repeat(65)] {
            assert!(!valid_device_id(bad), "{bad}");
        }
    }

    #[test]
    fn topics_parse_back() {
        assert_eq!(parse_topic(&topic("p-101", "alerts")), Some(("p-101", "alerts")));
        assert_eq!(parse_topic("impeller/v1/devices/p-101/alerts/x"), None);
        assert_eq!(parse_topic("impeller/v1/devices/+/alerts"), None);
        assert_eq!(parse_topic("other/p/alerts"), None);
        assert_eq!(decode_ack(&encode_ack(42, None)).unwrap().acked, 42);
    }

    #[test]
    fn a_device_reaches_only_its_own_topics() {
        for kind in UPLINK_KINDS {
            assert!(device_may_publish("p1", &topic("p1", kind)), "{kind}");
            assert!(!device_may_publish("p1", &topic("p2", kind)), "another device's {kind}");
            assert!(!device_may_subscribe("p1", &topic("p1", kind)), "subscribing to uplink {kind}");
        }
        for kind in DOWNLINK_KINDS {
            assert!(device_may_subscribe("p1", &topic("p1", kind)), "{kind}");
            assert!(!device_may_subscribe("p1", &topic("p2", kind)), "another device's {kind}");
            assert!(!device_may_publish("p1", &topic("p1", kind)), "publishing its own {kind}");
        }
        for filter in [
            "#",
            "impeller/#",
            "impeller/v1/devices/#",
            "impeller/v1/devices/+/desired",
            "impeller/v1/devices/p1/+",
            "impeller/v1/devices/p1/#",
            "$share/g/impeller/v1/devices/p1/desired",
            "impeller/v1/devices/p1/desired/x",
            "",
        ] {
            assert!(!device_may_subscribe("p1", filter), "{filter}");
            assert!(!device_may_publish("p1", filter), "{filter}");
        }
        assert!(!device_may_publish("p1", "impeller/v1/devices/p1/readings"), "the hub ingests no readings");
    }
}
