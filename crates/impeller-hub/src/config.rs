//! The hub's configuration file: versioned, every field documented in `config/hub.toml`
//! (printed by `impeller hub generate-config`), unknown fields refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::HubConfig;
use crate::tls::TlsFiles;

pub const DEFAULT: &str = include_str!("../config/hub.toml");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub version: u32,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub database: String,
    pub mqtt: Mqtt,
    pub http: Http,
    pub packages: Packages,
    #[serde(default)]
    pub audit: Audit,
    #[serde(default)]
    pub pipelines: Pipelines,
    #[serde(default)]
    pub monitors: Monitors,
    #[serde(default)]
    pub retention: Retention,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub samples_days: f64,
    pub sketches_days: f64,
    pub telemetry_days: f64,
    pub alerts_days: f64,
    pub events_days: f64,
    pub sweep_secs: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            samples_days: 30.0,
            sketches_days: 90.0,
            telemetry_days: 400.0,
            alerts_days: 0.0,
            events_days: 0.0,
            sweep_secs: 3600,
        }
    }
}

impl Retention {
    /// (kind, days) for every uplink kind.
    fn days(&self) -> [(&'static str, f64); 5] {
        [
            ("samples", self.samples_days),
            ("sketches", self.sketches_days),
            ("telemetry", self.telemetry_days),
            ("alerts", self.alerts_days),
            ("events", self.events_days),
        ]
    }

    fn check(&self) -> Result<(), String> {
        for (kind, days) in self.days() {
            if !(0.0..=36_500.0).contains(&days) {
                return Err(format!("retention.{kind}_days = {days}: give 0 (for ever) to 36500 days"));
            }
        }
        if self.sweep_secs == 0 {
            return Err("retention.sweep_secs must be positive".into());
        }
        Ok(())
    }

    /// How long each kind is kept, for the kinds not kept for ever.
    pub fn keep(&self) -> crate::retention::Keep {
        self.days()
            .into_iter()
            .filter(|(_, days)| *days > 0.0)
            .map(|(kind, days)| (kind.to_string(), std::time::Duration::from_secs_f64(days * 86_400.0)))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Monitors {
    pub alert_rate_check_secs: u64,
    pub alert_rate: impeller_core::alert_rate::AlertRatePolicy,
    pub drift: impeller_core::drift::DriftPolicy,
}

impl Default for Monitors {
    fn default() -> Monitors {
        Monitors { alert_rate_check_secs: 10, alert_rate: Default::default(), drift: Default::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipelines {
    #[serde(default)]
    pub signing_key: PathBuf,
    #[serde(default = "Pipelines::default_check_secs")]
    pub retrain_check_secs: u64,
}

impl Pipelines {
    fn default_check_secs() -> u64 {
        60
    }
}

impl Default for Pipelines {
    fn default() -> Pipelines {
        Pipelines { signing_key: PathBuf::new(), retrain_check_secs: Pipelines::default_check_secs() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    #[serde(default)]
    pub key: PathBuf,
    #[serde(default = "Audit::default_checkpoint_secs")]
    pub checkpoint_secs: u64,
}

impl Audit {
    fn default_checkpoint_secs() -> u64 {
        60
    }
}

impl Default for Audit {
    fn default() -> Audit {
        Audit { key: PathBuf::new(), checkpoint_secs: Audit::default_checkpoint_secs() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    pub listen: SocketAddr,
    #[serde(default)]
    pub broker: String,
    #[serde(default)]
    pub broker_username: String,
    #[serde(default)]
    pub broker_password_file: PathBuf,
    #[serde(default)]
    pub broker_ca_cert: PathBuf,
    #[serde(default)]
    pub allow_anonymous: bool,
    #[serde(default)]
    pub tls_cert: PathBuf,
    #[serde(default)]
    pub tls_key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub listen: SocketAddr,
    #[serde(default)]
    pub tls_cert: PathBuf,
    #[serde(default)]
    pub tls_key: PathBuf,
}

/// A listener's TLS files: both given, or neither (`None`).
fn tls_files(section: &str, cert: &Path, key: &Path) -> Result<Option<TlsFiles>, String> {
    match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Ok(Some(TlsFiles { cert: cert.to_path_buf(), key: key.to_path_buf() })),
        _ => Err(format!("{section}: give both tls_cert and tls_key, or neither")),
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    pub max_bytes: u64,
    /// `file:///…` or `s3://bucket/prefix`; empty: `packages/` in the data folder.
    #[serde(default)]
    pub store: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub message: String,
}

impl FileConfig {
    /// The built-in defaults (the commented default file).
    pub fn default_file() -> FileConfig {
        #[allow(clippy::expect_used)] // the shipped file is checked by a test
        Self::parse(DEFAULT, "built-in hub.toml").expect("the built-in hub.toml parses")
    }

    /// Reads untrusted text; errors name `origin` and the line and column.
    pub fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
        let err = |message: String| ConfigError { origin: origin.to_string(), message };
        let c: FileConfig = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        if c.version != 1 {
            return Err(err(format!("version {} is not supported (this build reads 1)", c.version)));
        }
        if !c.database.is_empty()
            && !["sqlite:", "postgres://", "postgresql://"].iter().any(|p| c.database.starts_with(p))
        {
            return Err(err(format!("database `{}`: use sqlite:PATH or postgres://…", c.database)));
        }
        c.check_external_broker().map_err(err)?;
        tls_files("mqtt", &c.mqtt.tls_cert, &c.mqtt.tls_key).map_err(err)?;
        tls_files("http", &c.http.tls_cert, &c.http.tls_key).map_err(err)?;
        if !c.mqtt.broker.is_empty() && !c.mqtt.tls_cert.as_os_str().is_empty() {
            return Err(err(
                "mqtt: tls_cert and tls_key are the embedded broker's; an external broker has its own".into()
            ));
        }
        if c.pipelines.retrain_check_secs == 0 {
            return Err(err("pipelines.retrain_check_secs must be positive".into()));
        }
        if c.monitors.alert_rate_check_secs == 0 {
            return Err(err("monitors.alert_rate_check_secs must be positive".into()));
        }
        let a = &c.monitors.alert_rate;
        if a.window_ms <= 0
            || a.min_scored_ms < 0
            || !(0.0..1.0).contains(&a.alpha)
            || !(a.alpha..=1.0).contains(&a.clear_alpha)
        {
            return Err(err(
                "monitors.alert_rate: window_ms must be positive, min_scored_ms at least 0, and 0 <= alpha <= clear_alpha <= 1"
                    .into(),
            ));
        }
        let d = &c.monitors.drift;
        let valid = d.warn > 0.0
            && d.alarm >= d.warn
            && d.alarm.is_finite()
            && d.ph_delta >= 0.0
            && d.ph_lambda > 0.0
            && d.ph_lambda.is_finite()
            && d.clear_after > 0;
        if !valid {
            return Err(err(
                "monitors.drift: 0 < warn <= alarm, ph_delta at least 0, ph_lambda positive and clear_after at least 1"
                    .into(),
            ));
        }
        c.retention.check().map_err(err)?;
        if c.audit.checkpoint_secs == 0 {
            return Err(err("audit.checkpoint_secs must be positive".into()));
        }
        if c.packages.max_bytes == 0 {
            return Err(err("packages.max_bytes must be positive".into()));
        }
        if !c.packages.store.is_empty() && !["file:///", "s3://"].iter().any(|p| c.packages.store.starts_with(p)) {
            return Err(err(format!(
                "packages.store `{}`: use file:///ABSOLUTE/PATH or s3://BUCKET[/PREFIX]",
                c.packages.store
            )));
        }
        Ok(c)
    }

    fn check_external_broker(&self) -> Result<(), String> {
        let m = &self.mqtt;
        let empty = |p: &Path| p.as_os_str().is_empty();
        if m.broker.is_empty() {
            if !m.broker_username.is_empty() || !empty(&m.broker_password_file) || !empty(&m.broker_ca_cert) {
                return Err("mqtt: broker_username, broker_password_file and broker_ca_cert are for an \
                            external broker, and mqtt.broker is empty"
                    .into());
            }
            return Ok(());
        }
        let (_, _, tls) = self.external_broker().address().map_err(|e| format!("mqtt.broker: {e}"))?;
        if !tls && !empty(&m.broker_ca_cert) {
            return Err(format!("mqtt.broker_ca_cert is for mqtts://; the broker `{}` is plain MQTT", m.broker));
        }
        if m.broker_username.is_empty() && !empty(&m.broker_password_file) {
            return Err("mqtt.broker_password_file needs mqtt.broker_username".into());
        }
        Ok(())
    }

    fn external_broker(&self) -> crate::bus::ExternalBroker {
        crate::bus::ExternalBroker {
            url: self.mqtt.broker.clone(),
            username: self.mqtt.broker_username.clone(),
            password_file: self.mqtt.broker_password_file.clone(),
            ca_cert: self.mqtt.broker_ca_cert.clone(),
        }
    }

    /// The database URL: the one given, or SQLite in the data folder.
    pub fn database_url(&self) -> String {
        if self.database.is_empty() {
            format!("sqlite:{}", self.data_dir.join("hub.db").display())
        } else {
            self.database.clone()
        }
    }

    pub fn hub_config(&self) -> HubConfig {
        let external = (!self.mqtt.broker.is_empty()).then(|| self.external_broker());
        HubConfig {
            database: self.database_url(),
            mqtt_listen: external.is_none().then_some(self.mqtt.listen),
            external_broker: external,
            device_auth: !self.mqtt.allow_anonymous,
            http_listen: Some(self.http.listen),
            // Checked by `parse`.
            mqtt_tls: tls_files("mqtt", &self.mqtt.tls_cert, &self.mqtt.tls_key).ok().flatten(),
            http_tls: tls_files("http", &self.http.tls_cert, &self.http.tls_key).ok().flatten(),
            packages_dir: self.data_dir.join("packages"),
            artifacts: (!self.packages.store.is_empty()).then(|| self.packages.store.clone()),
            artifact_options: Vec::new(),
            datasets_dir: self.data_dir.join("datasets"),
            trusted_keys: self.packages.trusted_keys.clone(),
            max_package_bytes: self.packages.max_bytes,
            audit_key: Some(if self.audit.key.as_os_str().is_empty() {
                self.data_dir.join("audit.secret.json")
            } else {
                self.audit.key.clone()
            }),
            checkpoint_every: std::time::Duration::from_secs(self.audit.checkpoint_secs),
            pipeline_key: (!self.pipelines.signing_key.as_os_str().is_empty())
                .then(|| self.pipelines.signing_key.clone()),
            retrain_every: std::time::Duration::from_secs(self.pipelines.retrain_check_secs),
            drift: self.monitors.drift.clone(),
            alert_rate: self.monitors.alert_rate.clone(),
            alert_rate_every: std::time::Duration::from_secs(self.monitors.alert_rate_check_secs),
            retention: self.retention.keep(),
            retention_every: std::time::Duration::from_secs(self.retention.sweep_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::ExternalBroker;

    #[test]
    fn the_default_file_parses_to_the_documented_defaults() {
        let c = FileConfig::default_file();
        let h = c.hub_config();
        assert_eq!(h.mqtt_listen, Some("127.0.0.1:1884".parse().unwrap()));
        assert_eq!(h.http_listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(h.database, "sqlite:impeller-hub-data/hub.db");
        assert!(h.device_auth && h.external_broker.is_none() && h.trusted_keys.is_empty());
        assert_eq!(h.max_package_bytes, 64 << 20);
        assert_eq!(h.audit_key.as_deref(), Some(Path::new("impeller-hub-data/audit.secret.json")));
        assert_eq!(h.checkpoint_every, std::time::Duration::from_secs(60));
        assert_eq!(h.alert_rate, impeller_core::alert_rate::AlertRatePolicy::default());
        assert_eq!(h.drift, impeller_core::drift::DriftPolicy::default());
        assert_eq!(h.alert_rate_every, std::time::Duration::from_secs(10));
        let day = 86_400;
        let keep: Vec<(&str, u64)> = h.retention.iter().map(|(k, d)| (k.as_str(), d.as_secs() / day)).collect();
        assert_eq!(keep, [("samples", 30), ("sketches", 90), ("telemetry", 400)], "alerts and events kept for ever");
        assert_eq!(h.retention_every, std::time::Duration::from_secs(3600));
    }

    #[test]
    fn mistakes_are_refused_with_the_place_named() {
        let typo = DEFAULT.replace("allow_anonymous", "allow_anonymus");
        let e = FileConfig::parse(&typo, "hub.toml").unwrap_err().to_string();
        assert!(e.starts_with("hub.toml: ") && e.contains("allow_anonymus") && e.contains("line"), "{e}");
        let port = DEFAULT.replace("127.0.0.1:8080", "127.0.0.1:80800");
        assert!(FileConfig::parse(&port, "x").unwrap_err().to_string().contains("listen"));
        let db = DEFAULT.replace("database = \"\"", "database = \"mysql://x\"");
        assert!(FileConfig::parse(&db, "x").unwrap_err().to_string().contains("mysql"));
        let alpha = DEFAULT.replace("clear_alpha = 0.05", "clear_alpha = 0.0001");
        assert!(FileConfig::parse(&alpha, "x").unwrap_err().to_string().contains("clear_alpha"));
        let drift = DEFAULT.replace("alarm = 3.5", "alarm = 1.5");
        assert!(FileConfig::parse(&drift, "x").unwrap_err().to_string().contains("monitors.drift: 0 < warn <= alarm"));
        let drift = DEFAULT.replace("clear_after = 3", "clear_after = 0");
        assert!(FileConfig::parse(&drift, "x").unwrap_err().to_string().contains("clear_after at least 1"));
        let drift = DEFAULT.replace("alarm = 3.5", "alarm = 5.0").replace("clear_after = 3", "clear_after = 6");
        let h = FileConfig::parse(&drift, "x").unwrap().hub_config();
        assert_eq!((h.drift.alarm, h.drift.clear_after, h.drift.warn), (5.0, 6, 2.0), "set and defaults kept");
        let forever = DEFAULT.replace("samples_days = 30", "samples_days = -1");
        assert!(FileConfig::parse(&forever, "x").unwrap_err().to_string().contains("retention.samples_days = -1"));
        let nan = DEFAULT.replace("events_days = 0", "events_days = nan");
        assert!(FileConfig::parse(&nan, "x").unwrap_err().to_string().contains("retention.events_days = NaN"));
        let v2 = DEFAULT.replace("version = 1", "version = 2");
        assert!(FileConfig::parse(&v2, "x").unwrap_err().to_string().contains("version 2"));
        let half = DEFAULT.replacen("tls_cert = \"\"", "tls_cert = \"hub.pem\"", 1);
        assert!(FileConfig::parse(&half, "x").unwrap_err().to_string().contains("mqtt: give both"));
        let tls = DEFAULT
            .replace("tls_cert = \"\"", "tls_cert = \"hub.pem\"")
            .replace("tls_key = \"\"", "tls_key = \"hub.key\"");
        let h = FileConfig::parse(&tls, "x").unwrap().hub_config();
        let files = Some(TlsFiles { cert: "hub.pem".into(), key: "hub.key".into() });
        assert_eq!((&h.mqtt_tls, &h.http_tls), (&files, &files));
        let external = DEFAULT.replace("broker = \"\"", "broker = \"mqtt://10.0.0.5:1883\"");
        let h = FileConfig::parse(&external, "x").unwrap().hub_config();
        assert_eq!((h.mqtt_listen, h.external_broker), (None, Some(ExternalBroker::at("mqtt://10.0.0.5:1883"))));
    }

    #[test]
    fn an_external_broker_takes_tls_and_a_login_and_mistakes_are_named() {
        let with = |broker: &str, user: &str, password: &str, ca: &str| {
            let text = DEFAULT
                .replace("broker = \"\"", &format!("broker = \"{broker}\""))
                .replace("broker_username = \"\"", &format!("broker_username = \"{user}\""))
                .replace("broker_password_file = \"\"", &format!("broker_password_file = \"{password}\""))
                .replace("broker_ca_cert = \"\"", &format!("broker_ca_cert = \"{ca}\""));
            FileConfig::parse(&text, "hub.toml").map(|c| c.hub_config().external_broker)
        };
        let full = with("mqtts://broker.site:8883", "impeller-hub", "/etc/impeller/broker.pass", "ca.pem").unwrap();
        let expected = ExternalBroker {
            url: "mqtts://broker.site:8883".into(),
            username: "impeller-hub".into(),
            password_file: "/etc/impeller/broker.pass".into(),
            ca_cert: "ca.pem".into(),
        };
        assert_eq!(full, Some(expected));
        assert_eq!(full.unwrap().address().unwrap(), ("broker.site".to_string(), 8883, true));
        let refused = [
            (with("tcp://broker:1883", "", "", ""), "mqtt:// or mqtts://"),
            (with("mqtt://broker", "", "", ""), "needs a port"),
            (with("mqtt://broker:x", "", "", ""), "not a port"),
            (with("mqtt://broker:1883", "", "", "ca.pem"), "broker_ca_cert is for mqtts://"),
            (with("mqtts://broker:8883", "", "p", ""), "needs mqtt.broker_username"),
            (with("", "hub", "", ""), "mqtt.broker is empty"),
        ];
        for (result, why) in refused {
            let e = result.unwrap_err().to_string();
            assert!(e.starts_with("hub.toml: ") && e.contains(why), "{e}");
        }
    }
}
