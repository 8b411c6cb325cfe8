//! Manufacturer adapters: each vendor names and scales its sensors differently, and samples at
//! its own rate. An adapter maps a vendor's readings to the model's channels, in the model's
//! units, at the model's sample period.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::units::{Conversion, UnitError};

/// How one vendor's sensors map to model channels (part of the agent's configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// The manufacturer or controller model, for messages.
    pub name: String,
    /// Average readings over windows of this many milliseconds, one frame per window (the
    /// model's sample period). Absent: every reading is a frame.
    #[serde(default)]
    pub sample_ms: Option<u64>,
    pub channels: Vec<ChannelMap>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelMap {
    /// The vendor's name for the signal.
    pub source: String,
    /// The model channel it feeds.
    pub channel: String,
    /// The vendor's unit; converted to the model channel's unit.
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdapterError {
    #[error("adapter `{adapter}`: model channel `{channel}` has no source")]
    Unmapped { adapter: String, channel: String },
    #[error("adapter `{adapter}`: channel `{channel}`: {message}")]
    Unit { adapter: String, channel: String, message: String },
    #[error("adapter `{adapter}`: `{channel}` is not a channel of the model")]
    UnknownChannel { adapter: String, channel: String },
    #[error("adapter `{adapter}`: sample_ms must be positive")]
    BadPeriod { adapter: String },
}

/// An adapter bound to one model's channels.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// For each vendor source name: the model channel index and the conversion.
    sources: BTreeMap<String, (usize, Conversion)>,
    channels: usize,
    sample_ms: Option<u64>,
    bucket: Option<i64>,
    sums: Vec<f64>,
    counts: Vec<u32>,
}

impl Adapter {
    pub fn new(config: &AdapterConfig, model_channels: &[Channel]) -> Result<Self, AdapterError> {
        let adapter = config.name.clone();
        if config.sample_ms == Some(0) {
            return Err(AdapterError::BadPeriod { adapter });
        }
        let mut sources = BTreeMap::new();
        for m in &config.channels {
            let idx = model_channels
                .iter()
                .position(|c| c.name == m.channel)
                .ok_or_else(|| AdapterError::UnknownChannel { adapter: adapter.clone(), channel: m.channel.clone() })?;
            let conv = Conversion::between(&m.unit, &model_channels[idx].unit).map_err(|e: UnitError| {
                AdapterError::Unit { adapter: adapter.clone(), channel: m.channel.clone(), message: e.to_string() }
            })?;
            sources.insert(m.source.clone(), (idx, conv));
        }
        for (i, c) in model_channels.iter().enumerate() {
            if !sources.values().any(|(idx, _)| *idx == i) {
                return Err(AdapterError::Unmapped { adapter, channel: c.name.clone() });
            }
        }
        let n = model_channels.len();
        Ok(Self {
            sources,
            channels: n,
            sample_ms: config.sample_ms,
            bucket: None,
            sums: vec![0.0; n],
            counts: vec![0; n],
        })
    }

    /// An adapter that passes channels through by their model names and units.
    pub fn identity(model_channels: &[Channel]) -> Self {
        let config = AdapterConfig {
            name: "identity".into(),
            sample_ms: None,
            channels: model_channels
                .iter()
                .map(|c| ChannelMap { source: c.name.clone(), channel: c.name.clone(), unit: c.unit.clone() })
                .collect(),
        };
        Self::new(&config, model_channels).unwrap_or_else(|_| unreachable!("identity adapters always build"))
    }

    /// Takes one vendor reading (named values); returns model frames that are now complete.
    /// Unknown source names are ignored; model channels without a value are NaN (missing).
    pub fn push<'a>(
        &mut self,
        ts_ms: i64,
        readings: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> Option<(i64, Vec<f64>)> {
        let Some(period) = self.sample_ms else {
            let mut frame = vec![f64::NAN; self.channels];
            for (name, v) in readings {
                if let Some((idx, conv)) = self.sources.get(name) {
                    frame[*idx] = conv.apply(v);
                }
            }
            return Some((ts_ms, frame));
        };
        let bucket = ts_ms.div_euclid(period as i64);
        let done = match self.bucket {
            Some(b) if b != bucket => self.flush(period),
            _ => None,
        };
        self.bucket = Some(bucket);
        for (name, v) in readings {
            if let Some((idx, conv)) = self.sources.get(name)
                && v.is_finite()
            {
                self.sums[*idx] += conv.apply(v);
                self.counts[*idx] += 1;
            }
        }
        done
    }

    /// The frame of the window in progress, stamped at its start.
    fn flush(&mut self, period: u64) -> Option<(i64, Vec<f64>)> {
        let b = self.bucket?;
        let frame =
            self.sums.iter().zip(&self.counts).map(|(s, &n)| if n > 0 { s / f64::from(n) } else { f64::NAN }).collect();
        self.sums.fill(0.0);
        self.counts.fill(0);
        Some((b * period as i64, frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Vec<Channel> {
        vec![Channel::new("Pressure", "bar"), Channel::new("Temperature", "°C")]
    }

    fn acme(sample_ms: Option<u64>) -> AdapterConfig {
        AdapterConfig {
            name: "acme".into(),
            sample_ms,
            channels: vec![
                ChannelMap { source: "P_PSI".into(), channel: "Pressure".into(), unit: "psi".into() },
                ChannelMap { source: "T_F".into(), channel: "Temperature".into(), unit: "°F".into() },
            ],
        }
    }

    #[test]
    fn maps_names_and_converts_units() {
        let mut a = Adapter::new(&acme(None), &model()).unwrap();
        let (ts, f) = a.push(5, [("T_F", 212.0), ("P_PSI", 14.503_773_773), ("OTHER", 1.0)]).unwrap();
        assert_eq!(ts, 5);
        assert!((f[0] - 1.0).abs() < 1e-9 && (f[1] - 100.0).abs() < 1e-9);
        let (_, f) = a.push(6, [("P_PSI", 0.0)]).unwrap();
        assert!(f[1].is_nan(), "a channel without a reading is missing");
    }

    #[test]
    fn resamples_a_fast_vendor_to_the_model_period() {
        let mut a = Adapter::new(&acme(Some(1000)), &model()).unwrap();
        // 10 Hz readings for 2 s; a frame comes out when a new second begins.
        let mut frames = Vec::new();
        for i in 0..=20 {
            if let Some(f) = a.push(i * 100, [("P_PSI", i as f64), ("T_F", 32.0)]) {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].0, 0);
        let mean_psi = (0..10).sum::<i64>() as f64 / 10.0;
        assert!((frames[0].1[0] - Conversion::between("psi", "bar").unwrap().apply(mean_psi)).abs() < 1e-12);
        assert!(frames[0].1[1].abs() < 1e-9);
        assert_eq!(frames[1].0, 1000);
    }

    #[test]
    fn refuses_incomplete_or_wrong_mappings() {
        let mut partial = acme(None);
        partial.channels.pop();
        assert!(matches!(Adapter::new(&partial, &model()), Err(AdapterError::Unmapped { .. })));
        let mut wrong_unit = acme(None);
        wrong_unit.channels[0].unit = "°C".into();
        let e = Adapter::new(&wrong_unit, &model()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "adapter `acme`: channel `Pressure`: cannot convert °C (temperature) to bar (pressure)"
        );
    }
}
