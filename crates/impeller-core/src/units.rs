//! Engineering units and conversions between them, so that a vendor's readings in psi, °F or
//! gpm reach the model in the units it was trained on.

/// A unit: its physical dimension and how to get to the dimension's base unit:
/// `base = value * scale + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Unit {
    dimension: &'static str,
    scale: f64,
    offset: f64,
}

const fn u(dimension: &'static str, scale: f64, offset: f64) -> Unit {
    Unit { dimension, scale, offset }
}

/// Accepted unit names (case-sensitive; common spellings listed separately).
const UNITS: &[(&str, Unit)] = &[
    ("Pa", u("pressure", 1.0, 0.0)),
    ("kPa", u("pressure", 1e3, 0.0)),
    ("MPa", u("pressure", 1e6, 0.0)),
    ("mbar", u("pressure", 100.0, 0.0)),
    ("bar", u("pressure", 1e5, 0.0)),
    ("psi", u("pressure", 6_894.757_293_168, 0.0)),
    ("atm", u("pressure", 101_325.0, 0.0)),
    ("K", u("temperature", 1.0, 0.0)),
    ("°C", u("temperature", 1.0, 273.15)),
    ("degC", u("temperature", 1.0, 273.15)),
    ("C", u("temperature", 1.0, 273.15)),
    ("°F", u("temperature", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0)),
    ("degF", u("temperature", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0)),
    ("F", u("temperature", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0)),
    ("L/min", u("flow", 1.0, 0.0)),
    ("L/s", u("flow", 60.0, 0.0)),
    ("m3/h", u("flow", 1000.0 / 60.0, 0.0)),
    ("m³/h", u("flow", 1000.0 / 60.0, 0.0)),
    ("gpm", u("flow", 3.785_411_784, 0.0)),
    ("A", u("current", 1.0, 0.0)),
    ("mA", u("current", 1e-3, 0.0)),
    ("V", u("voltage", 1.0, 0.0)),
    ("mV", u("voltage", 1e-3, 0.0)),
    ("kV", u("voltage", 1e3, 0.0)),
    ("W", u("power", 1.0, 0.0)),
    ("kW", u("power", 1e3, 0.0)),
    ("hp", u("power", 745.699_871_582_270_2, 0.0)),
    ("g", u("acceleration", 9.806_65, 0.0)),
    ("m/s2", u("acceleration", 1.0, 0.0)),
    ("m/s²", u("acceleration", 1.0, 0.0)),
    ("mm/s", u("velocity", 1e-3, 0.0)),
    ("in/s", u("velocity", 0.0254, 0.0)),
    ("rpm", u("rotation", 1.0 / 60.0, 0.0)),
    ("Hz", u("rotation", 1.0, 0.0)),
    ("%", u("ratio", 0.01, 0.0)),
];

fn lookup(name: &str) -> Option<Unit> {
    UNITS.iter().find(|(n, _)| *n == name).map(|(_, u)| *u)
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitError {
    #[error("unknown unit `{0}`")]
    Unknown(String),
    #[error("cannot convert {from} ({from_dim}) to {to} ({to_dim})")]
    Incompatible { from: String, from_dim: &'static str, to: String, to_dim: &'static str },
}

/// A linear conversion `to = from * scale + offset`, found once and applied per reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    pub scale: f64,
    pub offset: f64,
}

impl Conversion {
    pub const IDENTITY: Conversion = Conversion { scale: 1.0, offset: 0.0 };

    /// The conversion between two units. Identical names (even unknown ones, such as a
    /// vendor-specific unit, or none) need no conversion.
    pub fn between(from: &str, to: &str) -> Result<Conversion, UnitError> {
        if from == to {
            return Ok(Self::IDENTITY);
        }
        let f = lookup(from).ok_or_else(|| UnitError::Unknown(from.to_string()))?;
        let t = lookup(to).ok_or_else(|| UnitError::Unknown(to.to_string()))?;
        if f.dimension != t.dimension {
            return Err(UnitError::Incompatible {
                from: from.into(),
                from_dim: f.dimension,
                to: to.into(),
                to_dim: t.dimension,
            });
        }
        // base = v·fs + fo ; to = (base − to_o)/ts
        Ok(Conversion { scale: f.scale / t.scale, offset: (f.offset - t.offset) / t.scale })
    }

    pub fn apply(&self, v: f64) -> f64 {
        v * self.scale + self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(v: f64, from: &str, to: &str) -> f64 {
        Conversion::between(from, to).unwrap().apply(v)
    }

    #[test]
    fn known_answers() {
        assert!((conv(14.503_773_773, "psi", "bar") - 1.0).abs() < 1e-9);
        assert!((conv(212.0, "°F", "°C") - 100.0).abs() < 1e-9);
        assert!((conv(-40.0, "degF", "°C") + 40.0).abs() < 1e-9);
        assert!((conv(0.0, "°C", "K") - 273.15).abs() < 1e-9);
        assert!((conv(1.0, "m3/h", "L/min") - 16.666_666_666_7).abs() < 1e-6);
        assert!((conv(10.0, "gpm", "L/min") - 37.854_117_84).abs() < 1e-9);
        assert!((conv(1.0, "g", "m/s2") - 9.806_65).abs() < 1e-12);
        assert_eq!(conv(3.0, "vendor-units", "vendor-units"), 3.0);
    }

    #[test]
    fn refuses_unknown_and_incompatible_units() {
        assert_eq!(Conversion::between("psi", "furlong"), Err(UnitError::Unknown("furlong".into())));
        assert!(matches!(Conversion::between("psi", "°C"), Err(UnitError::Incompatible { .. })));
    }

    #[test]
    fn round_trips() {
        for (a, b) in [("psi", "kPa"), ("°F", "K"), ("gpm", "m3/h"), ("hp", "kW")] {
            let there = Conversion::between(a, b).unwrap();
            let back = Conversion::between(b, a).unwrap();
            for v in [-10.0, 0.0, 1.5, 1e4] {
                assert!((back.apply(there.apply(v)) - v).abs() < 1e-9 * v.abs().max(1.0), "{a} → {b} → {a} at {v}");
            }
        }
    }
}
