//! The agent's configuration file: versioned, every field documented in `config/edge.toml`
//! (printed by `impeller-edge generate-config`), unknown fields refused.

use std::path::PathBuf;

use impeller_core::adapter::AdapterConfig;
use serde::Deserialize;

pub const DEFAULT: &str = include_str!("../config/edge.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub version: u32,
    pub device: Device,
    pub hub: Hub,
    pub models: Models,
    pub outbox: Outbox,
    pub uplink: Uplink,
    pub source: Source,
    #[serde(default)]
    pub adapter: Option<AdapterConfig>,
    #[serde(default)]
    pub metrics: Metrics,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: String,
    pub target: String,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hub {
    /// `mqtt://host:port`, or `mqtts://host:port` over TLS.
    pub broker: String,
    /// The hub's HTTP API, where packages are downloaded from; empty: no over-the-air updates.
    #[serde(default)]
    pub api: String,
    /// The CA certificate (PEM) the hub's TLS certificate must chain to; empty: the system's.
    #[serde(default)]
    pub ca_cert: PathBuf,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default = "d30")]
    pub keep_alive_s: u64,
    /// The longest wait for an acknowledgement before everything unacknowledged is sent again.
    #[serde(default = "d30")]
    pub ack_timeout_s: u64,
    /// The shortest: in between, the wait follows the acknowledgements' own latency (four
    /// deviations beyond it, doubled at each expiry). Set it to `ack_timeout_s` for a fixed wait.
    #[serde(default = "d2")]
    pub min_ack_timeout_s: u64,
    #[serde(default = "d20000")]
    pub max_unacked: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    pub trusted_keys: Vec<PathBuf>,
    #[serde(default = "d64mib")]
    pub max_package_bytes: u64,
    /// Recent readings kept to shadow-score a new model before switching to it.
    #[serde(default = "d1200usize")]
    pub shadow_readings: usize,
    /// Frames the running model must have scored before a new one is judged against it.
    #[serde(default = "d100")]
    pub min_trial_frames: u64,
    /// How much higher (0 to 1) a new model's alarm rate may be than the running one's.
    #[serde(default = "d02")]
    pub max_alarm_rate_increase: f64,
    /// After a switch, the old model keeps scoring beside the new one this long; the new one
    /// is rolled back if it does worse.
    #[serde(default = "d600")]
    pub health_window_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbox {
    #[serde(default = "d64mib")]
    pub quota_bytes: u64,
    #[serde(default = "d1mib")]
    pub segment_bytes: u64,
    #[serde(default = "d1000")]
    pub sync_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    #[serde(default = "d60")]
    pub aggregate_interval_s: u64,
    #[serde(default = "d600")]
    pub sketch_interval_s: u64,
    #[serde(default = "d10")]
    pub raw_every: u64,
    #[serde(default = "d60usize")]
    pub raw_batch: usize,
    #[serde(default = "d30usize")]
    pub alert_context: usize,
    #[serde(default = "d100usize")]
    pub max_records_per_message: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    Csv {
        path: PathBuf,
        #[serde(default = "d1f")]
        speed: f64,
        #[serde(default = "dtrue")]
        rebase_time: bool,
    },
    Mqtt {
        broker: String,
        topic: String,
    },
    Modbus {
        /// `host:port` of the controller's Modbus TCP server.
        address: String,
        #[serde(default = "d1u8")]
        unit: u8,
        /// The controller's register map (see `config/modbus/`).
        register_map: PathBuf,
        #[serde(default = "d1000")]
        poll_ms: u64,
        #[serde(default = "d1000")]
        timeout_ms: u64,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    #[serde(default)]
    pub listen: String,
}

fn d1200usize() -> usize {
    1200
}
fn d100() -> u64 {
    100
}
fn d02() -> f64 {
    0.2
}
fn d2() -> u64 {
    2
}

fn d30() -> u64 {
    30
}
fn d60() -> u64 {
    60
}
fn d60usize() -> usize {
    60
}
fn d100usize() -> usize {
    100
}
fn d30usize() -> usize {
    30
}
fn d600() -> u64 {
    600
}
fn d10() -> u64 {
    10
}
fn d1000() -> u64 {
    1000
}
fn d20000() -> u64 {
    20_000
}
fn d1mib() -> u64 {
    1 << 20
}
fn d64mib() -> u64 {
    64 << 20
}
fn d1u8() -> u8 {
    1
}
fn d1f() -> f64 {
    1.0
}
fn dtrue() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub message: String,
}

impl Config {
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError { origin: origin.to_string(), message };
        let c: Config = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        if c.version != 1 {
            return Err(err(format!("version {} is not supported (this build reads 1)", c.version)));
        }
        if !impeller_core::wire::valid_device_id(&c.device.id) {
            return Err(err(format!("device.id `{}` must be 1 to 64 of A-Z a-z 0-9 . _ -", c.device.id)));
        }
        if c.models.trusted_keys.is_empty() {
            return Err(err("models.trusted_keys is empty: the agent would accept no model".into()));
        }
        hub_broker(&c.hub.broker).map_err(|m| err(format!("hub.broker: {m}")))?;
        if !(c.hub.api.is_empty() || c.hub.api.starts_with("http://") || c.hub.api.starts_with("https://")) {
            return Err(err(format!("hub.api `{}` must start with http:// or https://", c.hub.api)));
        }
        if let Source::Mqtt { broker, .. } = &c.source {
            broker_address(broker).map_err(|m| err(format!("source.broker: {m}")))?;
        }
        if let Source::Modbus { address, poll_ms, timeout_ms, .. } = &c.source {
            if address.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
                return Err(err(format!("source.address `{address}` must be host:port")));
            }
            if *poll_ms == 0 || *timeout_ms == 0 {
                return Err(err("source.poll_ms and source.timeout_ms must be positive".into()));
            }
        }
        if let Source::Csv { speed, .. } = &c.source
            && !(speed.is_finite() && *speed >= 0.0)
        {
            return Err(err("source.speed must be 0 or more".into()));
        }
        if c.uplink.raw_batch == 0 || c.uplink.aggregate_interval_s == 0 || c.uplink.sketch_interval_s == 0 {
            return Err(err("uplink intervals and raw_batch must be positive".into()));
        }
        Ok(c)
    }
}

/// The hub's broker, `mqtt://host:port` or `mqtts://host:port` → (host, port, over TLS).
pub fn hub_broker(url: &str) -> Result<(String, u16, bool), String> {
    match url.strip_prefix("mqtts://") {
        Some(rest) => broker_address(&format!("mqtt://{rest}")).map(|(host, port)| (host, port, true)),
        None if url.starts_with("mqtt://") => broker_address(url).map(|(host, port)| (host, port, false)),
        None => Err(format!("`{url}` must start with mqtt:// or mqtts://")),
    }
}

/// `mqtt://host:port` → (host, port).
pub fn broker_address(url: &str) -> Result<(String, u16), String> {
    let rest = url.strip_prefix("mqtt://").ok_or_else(|| format!("`{url}` must start with mqtt://"))?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("`{url}` needs a port"))?;
    let port = port.parse().map_err(|_| format!("`{port}` is not a port"))?;
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_parses() {
        let c = Config::parse(DEFAULT, "default").unwrap();
        assert_eq!(c.device.id, "pump-p101");
        assert!(matches!(c.source, Source::Csv { .. }));
        assert_eq!(c.metrics.listen, "127.0.0.1:9464");
    }

    #[test]
    fn the_shipped_register_maps_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/modbus");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let map = impeller_core::registers::RegisterMap::parse(&text, &path.display().to_string()).unwrap();
            assert!(!map.plan().is_empty());
            n += 1;
        }
        assert!(n >= 2);
    }

    #[test]
    fn mistakes_are_refused_with_the_place_named() {
        let typo = DEFAULT.replace("quota_bytes", "quota_byte");
        let e = Config::parse(&typo, "edge.toml").unwrap_err();
        assert!(e.to_string().starts_with("edge.toml: ") && e.to_string().contains("quota_byte"), "{e}");
        let bad_id = DEFAULT.replace("pump-p101", "pump/p101");
        assert!(Config::parse(&bad_id, "x").is_err());
        let bad_broker = DEFAULT.replace("mqtt://127.0.0.1:1884", "127.0.0.1");
        assert!(Config::parse(&bad_broker, "x").unwrap_err().to_string().contains("hub.broker"));
    }
}
