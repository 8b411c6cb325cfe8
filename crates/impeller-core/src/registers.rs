//! Modbus register maps: where a manufacturer's controller keeps each signal, and how to turn
//! the 16-bit words it returns into engineering values (and back, for simulators).
//!
//! A map is a TOML file per controller model (see `crates/impeller-edge/config/modbus/`). Reads
//! are planned as few requests as possible: registers of the same table that are contiguous are
//! read together, at most [`MAX_READ`] words per request (the Modbus limit).

use std::collections::BTreeSet;

use serde::Deserialize;

/// The most registers one Modbus read may return.
pub const MAX_READ: u16 = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Function code 3.
    Holding,
    /// Function code 4.
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl DataType {
    pub fn words(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }
}

/// Order of the two words of a 32-bit value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// High word first (Modbus convention, "ABCD").
    #[default]
    Big,
    /// Low word first ("CDAB"), common on some PLCs.
    Little,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// The vendor's channel name; the manufacturer adapter maps it to a model channel.
    pub channel: String,
    pub table: Table,
    /// Zero-based register address.
    pub address: u16,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub order: WordOrder,
    /// value = raw × scale + offset
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    pub version: u32,
    pub manufacturer: String,
    pub model: String,
    #[serde(rename = "register")]
    pub registers: Vec<Register>,
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct MapError {
    pub origin: String,
    pub message: String,
}

impl RegisterMap {
    /// Parses and checks a map; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<RegisterMap, MapError> {
        let err = |message: String| MapError { origin: origin.to_string(), message };
        let map: RegisterMap = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        if map.version != 1 {
            return Err(err(format!("version {} is not supported (this build reads 1)", map.version)));
        }
        if map.registers.is_empty() {
            return Err(err("the map has no [[register]]".into()));
        }
        let mut names = BTreeSet::new();
        let mut used = BTreeSet::new();
        for (i, r) in map.registers.iter().enumerate() {
            let at = format!("register #{} (`{}`)", i + 1, r.channel);
            if r.channel.is_empty() || !names.insert(r.channel.as_str()) {
                return Err(err(format!("{at}: channel names must be present and unique")));
            }
            if u32::from(r.address) + u32::from(r.data_type.words()) > 65_536 {
                return Err(err(format!("{at}: address {} runs past the last register", r.address)));
            }
            if !(r.scale.is_finite() && r.scale != 0.0 && r.offset.is_finite()) {
                return Err(err(format!("{at}: scale must be finite and non-zero, offset finite")));
            }
            for w in 0..r.data_type.words() {
                if !used.insert((r.table, r.address + w)) {
                    return Err(err(format!("{at}: register {} is already used", r.address + w)));
                }
            }
        }
        Ok(map)
    }

    /// The reads that cover every register: contiguous runs of one table, at most
    /// [`MAX_READ`] words each. Gaps are never read across (unmapped addresses may raise an
    /// "illegal data address" exception on real controllers).
    pub fn plan(&self) -> Vec<Read> {
        let mut order: Vec<usize> = (0..self.registers.len()).collect();
        order.sort_by_key(|&i| (self.registers[i].table, self.registers[i].address));
        let mut reads: Vec<Read> = Vec::new();
        for i in order {
            let r = &self.registers[i];
            let words = r.data_type.words();
            match reads.last_mut() {
                Some(last)
                    if last.table == r.table
                        && u32::from(last.address) + u32::from(last.count) == u32::from(r.address)
                        && last.count + words <= MAX_READ =>
                {
                    last.count += words;
                    last.registers.push(i);
                }
                _ => reads.push(Read { table: r.table, address: r.address, count: words, registers: vec![i] }),
            }
        }
        reads
    }

    /// Engineering values of one read's registers from the words it returned.
    pub fn decode(&self, read: &Read, words: &[u16]) -> Result<Vec<(usize, f64)>, String> {
        if words.len() != usize::from(read.count) {
            return Err(format!(
                "{:?} registers {}..{}: expected {} words, got {}",
                read.table,
                read.address,
                u32::from(read.address) + u32::from(read.count),
                read.count,
                words.len()
            ));
        }
        Ok(read
            .registers
            .iter()
            .map(|&i| {
                let r = &self.registers[i];
                let at = usize::from(r.address - read.address);
                (i, decode_value(r, &words[at..at + usize::from(r.data_type.words())]))
            })
            .collect())
    }
}

/// One Modbus read request and the registers (indices into the map) it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub table: Table,
    pub address: u16,
    pub count: u16,
    pub registers: Vec<usize>,
}

fn join(r: &Register, w: &[u16]) -> u32 {
    let (hi, lo) = match r.order {
        WordOrder::Big => (w[0], w[1]),
        WordOrder::Little => (w[1], w[0]),
    };
    (u32::from(hi) << 16) | u32::from(lo)
}

/// `w` holds exactly `r.data_type.words()` words.
fn decode_value(r: &Register, w: &[u16]) -> f64 {
    let raw = match r.data_type {
        DataType::U16 => f64::from(w[0]),
        DataType::I16 => f64::from(w[0] as i16),
        DataType::U32 => f64::from(join(r, w)),
        DataType::I32 => f64::from(join(r, w) as i32),
        DataType::F32 => f64::from(f32::from_bits(join(r, w))),
    };
    raw * r.scale + r.offset
}

/// The words a controller would hold for `value` (a simulator's side): scaled, rounded and
/// clamped to the type's range.
pub fn encode_value(r: &Register, value: f64) -> Vec<u16> {
    let raw = (value - r.offset) / r.scale;
    let split = |v: u32| match r.order {
        WordOrder::Big => vec![(v >> 16) as u16, v as u16],
        WordOrder::Little => vec![v as u16, (v >> 16) as u16],
    };
    // `as` from f64 saturates and maps NaN to 0.
    match r.data_type {
        DataType::U16 => vec![raw.round() as u16],
        DataType::I16 => vec![raw.round() as i16 as u16],
        DataType::U32 => split(raw.round() as u32),
        DataType::I32 => split(raw.round() as i32 as u32),
        DataType::F32 => split((raw as f32).to_bits()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"
version = 1
manufacturer = "acme"
model = "P-200"
[[register]]
channel = "PRESS"
table = "holding"
address = 10
type = "i16"
scale = 0.01
[[register]]
channel = "FLOW"
table = "holding"
address = 11
type = "f32"
order = "little"
[[register]]
channel = "TEMP"
table = "input"
address = 0
type = "u32"
scale = 0.1
offset = -40.0
[[register]]
channel = "RPM"
table = "holding"
address = 20
type = "u16"
"#;

    #[test]
    fn plans_contiguous_reads_and_decodes_what_it_encodes() {
        let map = RegisterMap::parse(MAP, "acme.toml").unwrap();
        let plan = map.plan();
        let spans: Vec<_> = plan.iter().map(|r| (r.table, r.address, r.count)).collect();
        assert_eq!(spans, vec![(Table::Holding, 10, 3), (Table::Holding, 20, 1), (Table::Input, 0, 2)]);
        let values = [-1.23, 31.75, 65.3, 1480.0];
        for read in &plan {
            let mut words = vec![0u16; usize::from(read.count)];
            for &i in &read.registers {
                let r = &map.registers[i];
                let at = usize::from(r.address - read.address);
                let enc = encode_value(r, values[i]);
                words[at..at + enc.len()].copy_from_slice(&enc);
            }
            for (i, v) in map.decode(read, &words).unwrap() {
                assert!((v - values[i]).abs() < 1e-6, "{}: {v} != {}", map.registers[i].channel, values[i]);
            }
        }
    }

    #[test]
    fn a_short_response_is_an_error_not_a_panic() {
        let map = RegisterMap::parse(MAP, "acme.toml").unwrap();
        let read = &map.plan()[0];
        let e = map.decode(read, &[1]).unwrap_err();
        assert!(e.contains("expected 3 words, got 1"), "{e}");
    }

    #[test]
    fn mistakes_name_the_file_and_register() {
        let overlap = MAP.replace("address = 20", "address = 12");
        let e = RegisterMap::parse(&overlap, "acme.toml").unwrap_err().to_string();
        assert!(e.starts_with("acme.toml: register #4 (`RPM`)") && e.contains("already used"), "{e}");
        let typo = MAP.replace("scale = 0.01", "scael = 0.01");
        let e = RegisterMap::parse(&typo, "acme.toml").unwrap_err().to_string();
        assert!(e.contains("scael") && e.contains("line"), "{e}");
        let past_end = MAP.replace("address = 0\ntype = \"u32\"", "address = 65535\ntype = \"u32\"");
        assert!(RegisterMap::parse(&past_end, "m").unwrap_err().to_string().contains("past the last"));
        let dup = MAP.replace("channel = \"RPM\"", "channel = \"PRESS\"");
        assert!(RegisterMap::parse(&dup, "m").unwrap_err().to_string().contains("unique"));
    }

    #[test]
    fn long_runs_split_at_the_modbus_limit() {
        let mut text = String::from("version = 1\nmanufacturer = \"x\"\nmodel = \"y\"\n");
        for a in 0..200 {
            text.push_str(&format!(
                "[[register]]\nchannel = \"c{a}\"\ntable = \"input\"\naddress = {a}\ntype = \"u16\"\n"
            ));
        }
        let plan = RegisterMap::parse(&text, "m").unwrap().plan();
        assert_eq!(plan.iter().map(|r| r.count).collect::<Vec<_>>(), vec![125, 75]);
    }
}
