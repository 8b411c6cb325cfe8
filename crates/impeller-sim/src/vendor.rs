//! Manufacturers: each names its signals, picks its units and samples at its own rate, as real
//! pump controllers do. The model side speaks one language ([`Signal::channel`]), and each
//! manufacturer's [`Manufacturer::adapter`] is the agent's map from one to the other.

use impeller_core::adapter::{AdapterConfig, ChannelMap};
use impeller_core::channel::Channel;
use impeller_core::units::Conversion;
use serde::{Deserialize, Serialize};

use crate::pump::Physical;

/// What a sensor measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    SuctionPressure,
    DischargePressure,
    Flow,
    MotorCurrent,
    MotorPower,
    Voltage,
    BearingTemp,
    MotorTemp,
    FluidTemp,
    Vibration,
    Speed,
}

impl Signal {
    /// The model channel (name, unit) this signal feeds.
    pub fn channel(self) -> (&'static str, &'static str) {
        match self {
            Signal::SuctionPressure => ("suction_pressure", "bar"),
            Signal::DischargePressure => ("discharge_pressure", "bar"),
            Signal::Flow => ("flow", "m3/h"),
            Signal::MotorCurrent => ("motor_current", "A"),
            Signal::MotorPower => ("motor_power", "kW"),
            Signal::Voltage => ("voltage", "V"),
            Signal::BearingTemp => ("bearing_temp", "°C"),
            Signal::MotorTemp => ("motor_temp", "°C"),
            Signal::FluidTemp => ("fluid_temp", "°C"),
            Signal::Vibration => ("vibration", "mm/s"),
            Signal::Speed => ("speed", "rpm"),
        }
    }

    /// The true value, in the channel's unit.
    pub fn of(self, p: &Physical) -> f64 {
        match self {
            Signal::SuctionPressure => p.suction_bar,
            Signal::DischargePressure => p.discharge_bar,
            Signal::Flow => p.flow_m3h,
            Signal::MotorCurrent => p.current_a,
            Signal::MotorPower => p.power_kw,
            Signal::Voltage => p.voltage_v,
            Signal::BearingTemp => p.bearing_c,
            Signal::MotorTemp => p.motor_c,
            Signal::FluidTemp => p.fluid_c,
            Signal::Vibration => p.vibration_mms,
            Signal::Speed => p.speed_rpm,
        }
    }

    /// Standard deviation of the sensor's noise, in the channel's unit.
    pub fn noise(self) -> f64 {
        match self {
            Signal::SuctionPressure | Signal::DischargePressure => 0.01,
            Signal::Flow => 0.4,
            Signal::MotorCurrent => 0.15,
            Signal::MotorPower => 0.08,
            Signal::Voltage => 1.5,
            Signal::BearingTemp | Signal::MotorTemp | Signal::FluidTemp => 0.1,
            Signal::Vibration => 0.05,
            Signal::Speed => 1.0,
        }
    }
}

/// One manufacturer's controller: its names, units and sample period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Manufacturer {
    pub name: &'static str,
    pub model: &'static str,
    pub sample_ms: u64,
    /// (signal, the vendor's name, the vendor's unit).
    pub signals: &'static [(Signal, &'static str, &'static str)],
}

/// US-built, imperial units, no motor temperature or power (as its Modbus map in
/// `crates/impeller-edge/config/modbus/acme-p200.toml`).
pub const ACME: Manufacturer = Manufacturer {
    name: "acme",
    model: "P-200",
    sample_ms: 1000,
    signals: &[
        (Signal::SuctionPressure, "SUCT_PRESS_PSI", "psi"),
        (Signal::DischargePressure, "DISCH_PRESS_PSI", "psi"),
        (Signal::Flow, "FLOW_GPM", "gpm"),
        (Signal::MotorCurrent, "MOTOR_AMPS", "A"),
        (Signal::BearingTemp, "BEARING_TEMP_F", "°F"),
        (Signal::Vibration, "VIB_RMS_IPS", "in/s"),
        (Signal::Speed, "SPEED_RPM", "rpm"),
    ],
};

/// SI units, fast sampling (as `nordpump-cx.toml`, plus motor temperature and power).
pub const NORDPUMP: Manufacturer = Manufacturer {
    name: "nordpump",
    model: "CX",
    sample_ms: 500,
    signals: &[
        (Signal::SuctionPressure, "p_in_bar", "bar"),
        (Signal::DischargePressure, "p_out_bar", "bar"),
        (Signal::Flow, "q_m3h", "m3/h"),
        (Signal::MotorCurrent, "i_motor_a", "A"),
        (Signal::MotorPower, "p_motor_kw", "kW"),
        (Signal::BearingTemp, "t_bearing_c", "°C"),
        (Signal::MotorTemp, "t_motor_c", "°C"),
        (Signal::Vibration, "vib_mm_s", "mm/s"),
    ],
};

/// Pressures in kPa, flow in L/s, slow sampling, every signal and the only one that reads the
/// pumped fluid's temperature.
pub const KESTREL: Manufacturer = Manufacturer {
    name: "kestrel",
    model: "K9",
    sample_ms: 2000,
    signals: &[
        (Signal::SuctionPressure, "SuctionP", "kPa"),
        (Signal::DischargePressure, "DischargeP", "kPa"),
        (Signal::Flow, "Flow", "L/s"),
        (Signal::MotorCurrent, "Current", "A"),
        (Signal::MotorPower, "Power", "kW"),
        (Signal::Voltage, "Voltage", "V"),
        (Signal::BearingTemp, "BearingT", "°C"),
        (Signal::MotorTemp, "WindingT", "°C"),
        (Signal::Vibration, "VibVel", "mm/s"),
        (Signal::Speed, "Speed", "rpm"),
        (Signal::FluidTemp, "FluidT", "°C"),
    ],
};

pub const MANUFACTURERS: [Manufacturer; 3] = [ACME, NORDPUMP, KESTREL];

/// The model's sample period for every manufacturer: adapters average faster vendors down to it.
pub const MODEL_SAMPLE_MS: u64 = 2000;

impl Manufacturer {
    pub fn by_name(name: &str) -> Option<Manufacturer> {
        MANUFACTURERS.into_iter().find(|m| m.name == name)
    }

    /// The model channels this manufacturer's pumps can feed.
    pub fn channels(&self) -> Vec<Channel> {
        self.signals.iter().map(|(s, _, _)| s.channel()).map(|(n, u)| Channel::new(n, u)).collect()
    }

    /// The vendor's column names, in order.
    pub fn columns(&self) -> Vec<&'static str> {
        self.signals.iter().map(|(_, name, _)| *name).collect()
    }

    /// The agent's adapter for this manufacturer: vendor names and units to model channels,
    /// averaged to the model's sample period.
    pub fn adapter(&self) -> AdapterConfig {
        AdapterConfig {
            name: format!("{}-{}", self.name, self.model),
            sample_ms: Some(MODEL_SAMPLE_MS),
            channels: self
                .signals
                .iter()
                .map(|(s, source, unit)| ChannelMap {
                    source: (*source).to_string(),
                    channel: s.channel().0.to_string(),
                    unit: (*unit).to_string(),
                })
                .collect(),
        }
    }

    /// A measured value (channel unit) in the vendor's unit.
    pub fn to_vendor_unit(&self, index: usize, value: f64) -> f64 {
        let (signal, _, unit) = self.signals[index];
        Conversion::between(signal.channel().1, unit).map_or(f64::NAN, |c| c.apply(value))
    }
}

#[cfg(test)]
mod tests {
    use impeller_core::adapter::Adapter;

    use super::*;

    #[test]
    fn every_adapter_maps_back_to_the_model_channels() {
        for m in MANUFACTURERS {
            let channels = m.channels();
            let mut adapter = Adapter::new(&m.adapter(), &channels).expect(m.name);
            let truth: Vec<f64> = (0..channels.len()).map(|i| 10.0 + i as f64).collect();
            let vendor: Vec<(&str, f64)> =
                m.columns().into_iter().enumerate().map(|(i, n)| (n, m.to_vendor_unit(i, truth[i]))).collect();
            assert!(adapter.push(0, vendor.iter().copied()).is_none());
            let (_, frame) = adapter.push(MODEL_SAMPLE_MS as i64, vendor.iter().copied()).unwrap();
            for (got, want) in frame.iter().zip(&truth) {
                assert!((got - want).abs() < 1e-9, "{}: {got} != {want}", m.name);
            }
        }
    }
}
