//! Channels (named sensor signals with units) and frames (one reading of every channel).

use serde::{Deserialize, Serialize};

/// A named sensor signal and the unit its values are in, e.g. `Pressure` in `bar`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: String,
    pub unit: String,
}

impl Channel {
    pub fn new(name: impl Into<String>, unit: impl Into<String>) -> Self {
        Self { name: name.into(), unit: unit.into() }
    }
}

/// One reading of every channel at one time. A value that is missing or was not a finite number
/// is `NaN`; the [gap policy](crate::gaps::GapPolicy) decides what happens to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Milliseconds since the Unix epoch, UTC.
    pub ts_ms: i64,
    pub values: Vec<f64>,
}
