//! Target profiles: one class of device a package is built for, with the budgets the model must
//! fit. A package's `target` is the profile's name; a device provisioned with that profile
//! installs only packages built for it.

use std::path::Path;

use impeller_core::Channel;
use impeller_core::adapter::{Adapter, AdapterConfig};
use serde::{Deserialize, Serialize};

use crate::PipelineError;

pub const PROFILE_VERSION: u32 = 1;

/// The committed example profiles, by name, built into the binary (the example spec names them).
pub const EXAMPLES: [(&str, &str); 3] = [
    ("gw-arm64", include_str!("../config/profiles/gw-arm64.toml")),
    ("gw-x86", include_str!("../config/profiles/gw-x86.toml")),
    ("plc-armv7", include_str!("../config/profiles/plc-armv7.toml")),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetProfile {
    /// Format version of this file; 1.
    pub version: u32,
    /// The target name packages carry: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// CPU architecture (`aarch64`, `armv7`, `x86_64`, …), for the record and the agent build.
    pub arch: String,
    #[serde(default)]
    pub cpu_features: Vec<String>,
    /// What scores the model on the device: `native` (the agent's scorer), or `onnx` (the
    /// package also carries `model.onnx`, the scaler and detector as an ONNX graph, for a
    /// device that scores with its own ONNX runtime; the rolling features and the alarm
    /// settings stay in the manifest).
    pub runtime: Runtime,
    /// Weights the package carries: `float` (as trained, the default) or `int8` (weight
    /// matrices quantised per row, an eighth of the memory, for small devices; kinds without
    /// weight matrices stay float). An int8 model's alarms are held to the spec's
    /// `gates.min_int8_agreement` with the float model's before it is signed. Native runtime only.
    #[serde(default, skip_serializing_if = "Weights::is_float")]
    pub weights: Weights,
    /// Largest package the device stores, in bytes.
    pub storage_bytes: u64,
    /// Memory the loaded model may take, in bytes.
    pub memory_bytes: u64,
    /// Time to score one frame on the device, in microseconds.
    pub latency_budget_us: f64,
    /// How many times slower than the machine running the pipeline the device scores.
    #[serde(default = "TargetProfile::default_slowdown")]
    pub slowdown: f64,
    /// The device class's manufacturer adapter: the vendor's signal names and units for the
    /// model's channels (as in the agent's `[adapter]`). When given, a package fits only if
    /// the adapter feeds every channel of the model in a unit convertible to the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Native,
    Onnx,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    #[default]
    Float,
    Int8,
}

impl Weights {
    fn is_float(&self) -> bool {
        *self == Weights::Float
    }
}

impl TargetProfile {
    fn default_slowdown() -> f64 {
        1.0
    }

    pub fn parse(text: &str, origin: &str) -> Result<TargetProfile, PipelineError> {
        let p: TargetProfile = toml::from_str(text).map_err(|e| PipelineError::Spec(format!("{origin}: {e}")))?;
        let bad = |m: String| Err(PipelineError::Spec(format!("{origin}: {m}")));
        if p.version != PROFILE_VERSION {
            return bad(format!("version {} is not supported (this build reads {PROFILE_VERSION})", p.version));
        }
        if !impeller_core::wire::valid_device_id(&p.name) {
            return bad(format!("name `{}`: 1 to 64 of A-Z a-z 0-9 . _ -", p.name));
        }
        if p.weights == Weights::Int8 && p.runtime == Runtime::Onnx {
            return bad("weights = \"int8\" is for the native runtime; an ONNX graph carries float weights".into());
        }
        if p.storage_bytes == 0 || p.memory_bytes == 0 {
            return bad("storage_bytes and memory_bytes must be positive".into());
        }
        if !(p.latency_budget_us.is_finite() && p.latency_budget_us > 0.0) {
            return bad("latency_budget_us must be a positive number".into());
        }
        if !(p.slowdown.is_finite() && p.slowdown >= 1.0) {
            return bad("slowdown must be a number ≥ 1".into());
        }
        if let Some(a) = &p.adapter
            && (a.name.is_empty() || a.channels.is_empty() || a.sample_ms == Some(0))
        {
            return bad("adapter: needs a name, at least one channel, and a positive sample_ms if any".into());
        }
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<TargetProfile, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// How a package fits a profile, measured before it is signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub profile: String,
    pub package_bytes: u64,
    pub storage_bytes: u64,
    /// The model's parameters and the scorer's buffers, estimated from the model's shape.
    pub memory_estimate_bytes: u64,
    pub memory_bytes: u64,
    /// Median time to score one frame here, times the profile's slowdown.
    pub latency_estimate_us: f64,
    pub latency_budget_us: f64,
    /// What does not fit, in words; empty when everything does.
    pub problems: Vec<String>,
}

impl Fit {
    /// `channels`: the model's, which the profile's adapter (if any) must feed.
    pub fn check(
        profile: &TargetProfile,
        channels: &[Channel],
        package_bytes: u64,
        memory_estimate_bytes: u64,
        measured_us: f64,
    ) -> Fit {
        let latency_estimate_us = measured_us * profile.slowdown;
        let mut problems = Vec::new();
        if let Some(Err(e)) = profile.adapter.as_ref().map(|a| Adapter::new(a, channels)) {
            problems.push(e.to_string());
        }
        if package_bytes > profile.storage_bytes {
            problems.push(format!("package {package_bytes} bytes > storage budget {} bytes", profile.storage_bytes));
        }
        if memory_estimate_bytes > profile.memory_bytes {
            problems.push(format!(
                "model needs about {memory_estimate_bytes} bytes of memory > budget {} bytes",
                profile.memory_bytes
            ));
        }
        if latency_estimate_us > profile.latency_budget_us {
            problems.push(format!(
                "scoring takes about {latency_estimate_us:.1} µs a frame on the device > budget {} µs",
                profile.latency_budget_us
            ));
        }
        Fit {
            profile: profile.name.clone(),
            package_bytes,
            storage_bytes: profile.storage_bytes,
            memory_estimate_bytes,
            memory_bytes: profile.memory_bytes,
            latency_estimate_us,
            latency_budget_us: profile.latency_budget_us,
            problems,
        }
    }

    pub fn fits(&self) -> bool {
        self.problems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: &str = EXAMPLES[0].1;

    #[test]
    fn the_committed_profiles_parse() {
        for (name, text) in EXAMPLES {
            assert_eq!(TargetProfile::parse(text, name).unwrap().name, name);
        }
    }

    #[test]
    fn an_unknown_runtime_is_refused_by_name() {
        let e =
            TargetProfile::parse(&GW.replace("runtime = \"native\"", "runtime = \"tflite\""), "p.toml").unwrap_err();
        assert!(e.to_string().contains("tflite"), "{e}");
    }

    #[test]
    fn fit_names_each_budget_it_breaks() {
        let p = TargetProfile::parse(GW, "gw").unwrap();
        assert!(Fit::check(&p, &[], 1000, 1000, 10.0).fits());
        let f = Fit::check(&p, &[], p.storage_bytes + 1, p.memory_bytes + 1, p.latency_budget_us);
        assert_eq!(f.problems.len(), 3, "{:?}", f.problems);
        assert!(f.problems[2].contains("µs"));
    }

    #[test]
    fn a_profile_whose_adapter_cannot_feed_the_model_does_not_fit() {
        let plc = TargetProfile::parse(EXAMPLES[2].1, "plc").unwrap();
        let adapter = plc.adapter.as_ref().expect("the PLC example has an adapter");
        // The model's channels as the adapter names them, in the model's units: fits.
        let model: Vec<Channel> = impeller_core::table::SKAB_CHANNELS
            .iter()
            .filter(|(name, _)| adapter.channels.iter().any(|m| m.channel == *name))
            .map(|(name, unit)| Channel::new(*name, *unit))
            .collect();
        assert_eq!(model.len(), adapter.channels.len());
        assert!(Fit::check(&plc, &model, 1000, 1000, 1.0).fits());
        // A channel the controller does not report, and a unit it cannot be converted to.
        let mut more = model.clone();
        more.push(Channel::new("Thermocouple", "°C"));
        let f = Fit::check(&plc, &more, 1000, 1000, 1.0);
        assert!(f.problems.iter().any(|p| p.contains("`Thermocouple` has no source")), "{:?}", f.problems);
        let mut other_unit = model;
        other_unit[0].unit = "°C".into();
        let f = Fit::check(&plc, &other_unit, 1000, 1000, 1.0);
        assert!(f.problems.iter().any(|p| p.contains(&other_unit[0].name)), "{:?}", f.problems);
        let e = TargetProfile::parse(&EXAMPLES[2].1.replace("name = \"plc-vendor\"", "name = \"\""), "p.toml");
        assert!(e.unwrap_err().to_string().contains("adapter"));
    }
}
