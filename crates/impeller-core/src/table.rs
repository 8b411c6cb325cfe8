//! Sensor tables from CSV bytes (the SKAB layout: `;`-separated, a `datetime` column, sensor
//! columns, optional `anomaly` and `changepoint` labels). Input is untrusted: every problem is
//! reported with the file, line and field, and nothing panics.
//!
//! Cells: an empty cell, `NaN` or `inf` is a missing reading (the gap policy handles it); any
//! other text that is not a number is an error.

use crate::channel::{Channel, Frame};

/// The eight SKAB sensor channels and their units, in file order.
pub const SKAB_CHANNELS: [(&str, &str); 8] = [
    ("Accelerometer1RMS", "g"),
    ("Accelerometer2RMS", "g"),
    ("Current", "A"),
    ("Pressure", "bar"),
    ("Temperature", "°C"),
    ("Thermocouple", "°C"),
    ("Voltage", "V"),
    ("Volume Flow RateRMS", "L/min"),
];

/// Most columns a file may have: every channel a model can take, plus time and labels.
pub const MAX_COLUMNS: usize = crate::model::MAX_CHANNELS + 3;

/// How to read a CSV file.
#[derive(Debug, Clone)]
pub struct CsvFormat<'a> {
    pub delimiter: u8,
    pub time_column: &'a str,
    /// Sensor columns to read, in this order; `None` reads every column that is not the time
    /// or a label column.
    pub columns: Option<&'a [&'a str]>,
    pub label_column: &'a str,
    pub changepoint_column: &'a str,
}

impl CsvFormat<'static> {
    /// SKAB files, reading every sensor column.
    pub const SKAB: CsvFormat<'static> = CsvFormat {
        delimiter: b';',
        time_column: "datetime",
        columns: None,
        label_column: "anomaly",
        changepoint_column: "changepoint",
    };
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Where the table came from (a path or name), used in messages.
    pub file: String,
    pub channels: Vec<Channel>,
    pub timestamps: Vec<i64>,
    /// One row per data line, one value per channel; NaN where missing.
    pub rows: Vec<Vec<f64>>,
    /// The `anomaly` label per row, when the file has that column.
    pub labels: Option<Vec<bool>>,
    pub changepoints: Option<Vec<bool>>,
}

impl Table {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn frames(&self) -> Vec<Frame> {
        self.timestamps.iter().zip(&self.rows).map(|(&ts_ms, v)| Frame { ts_ms, values: v.clone() }).collect()
    }

    /// Keeps only the named channels, in the given order; `None` if one is absent.
    pub fn select(&self, names: &[&str]) -> Option<Table> {
        let idx: Vec<usize> =
            names.iter().map(|n| self.channels.iter().position(|c| c.name == *n)).collect::<Option<_>>()?;
        Some(Table {
            file: self.file.clone(),
            channels: idx.iter().map(|&i| self.channels[i].clone()).collect(),
            timestamps: self.timestamps.clone(),
            rows: self.rows.iter().map(|r| idx.iter().map(|&i| r[i]).collect()).collect(),
            labels: self.labels.clone(),
            changepoints: self.changepoints.clone(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TableError {
    #[error("{file}: the file is empty")]
    Empty { file: String },
    #[error("{file}:1: no `{expected}` in the header line; it looks `{found}`-separated (expected `{expected}`)")]
    WrongSeparator { file: String, expected: char, found: char },
    #[error("{file}:1: missing column `{column}`")]
    MissingColumn { file: String, column: String },
    #[error("{file}:1: {found} columns, more than the {limit} accepted")]
    TooManyColumns { file: String, found: usize, limit: usize },
    #[error("{file}:1: column `{column}` appears twice")]
    DuplicateColumn { file: String, column: String },
    #[error("{file}:1: no sensor columns besides the time and label columns")]
    NoChannels { file: String },
    #[error("{file}:{line}: expected {expected} fields, found {found}")]
    FieldCount { file: String, line: u64, expected: usize, found: usize },
    #[error("{file}:{line}: field {field} (`{column}`): `{value}` is not a number")]
    NotNumeric { file: String, line: u64, field: usize, column: String, value: String },
    #[error("{file}:{line}: field {field} (`{column}`): `{value}` is not a timestamp (expected YYYY-MM-DD hh:mm:ss)")]
    BadTimestamp { file: String, line: u64, field: usize, column: String, value: String },
    #[error("{file}:{line}: field {field} (`{column}`): label `{value}` must be 0 or 1")]
    BadLabel { file: String, line: u64, field: usize, column: String, value: String },
    #[error("{file}: no data rows after the header")]
    NoRows { file: String },
    #[error("{file}:{line}: {message}")]
    Malformed { file: String, line: u64, message: String },
}

/// Parses a CSV file's bytes. `file` names it in error messages.
pub fn parse_csv(bytes: &[u8], file: &str, format: &CsvFormat<'_>) -> Result<Table, TableError> {
    let file_s = || file.to_string();
    let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(TableError::Empty { file: file_s() });
    }
    if !first_line.contains(&format.delimiter)
        && let Some(&found) =
            [b',', b';', b'\t', b'|'].iter().find(|&&d| d != format.delimiter && first_line.contains(&d))
    {
        return Err(TableError::WrongSeparator {
            file: file_s(),
            expected: format.delimiter as char,
            found: found as char,
        });
    }
    let mut reader =
        csv::ReaderBuilder::new().delimiter(format.delimiter).has_headers(true).flexible(true).from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| malformed(file, 1, &e))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
        .collect();
    if header.len() > MAX_COLUMNS {
        return Err(TableError::TooManyColumns { file: file_s(), found: header.len(), limit: MAX_COLUMNS });
    }
    let mut seen = std::collections::HashSet::with_capacity(header.len());
    for h in &header {
        if !seen.insert(h.as_str()) {
            return Err(TableError::DuplicateColumn { file: file_s(), column: h.clone() });
        }
    }
    let find = |name: &str| header.iter().position(|h| h == name);
    let time_idx = find(format.time_column)
        .ok_or_else(|| TableError::MissingColumn { file: file_s(), column: format.time_column.to_string() })?;
    let label_idx = find(format.label_column);
    let cp_idx = find(format.changepoint_column);
    let channel_idx: Vec<usize> = match format.columns {
        Some(names) => names
            .iter()
            .map(|n| find(n).ok_or_else(|| TableError::MissingColumn { file: file_s(), column: n.to_string() }))
            .collect::<Result<_, _>>()?,
        None => (0..header.len()).filter(|&i| i != time_idx && Some(i) != label_idx && Some(i) != cp_idx).collect(),
    };
    if channel_idx.is_empty() {
        return Err(TableError::NoChannels { file: file_s() });
    }
    let channels = channel_idx
        .iter()
        .map(|&i| {
            let unit = SKAB_CHANNELS.iter().find(|(n, _)| *n == header[i]).map_or("", |(_, u)| u);
            Channel::new(header[i].clone(), unit)
        })
        .collect();

    let mut table = Table {
        file: file_s(),
        channels,
        timestamps: Vec::new(),
        rows: Vec::new(),
        labels: label_idx.map(|_| Vec::new()),
        changepoints: cp_idx.map(|_| Vec::new()),
    };
    let mut record = csv::StringRecord::new();
    let mut lines = LineCounter::new(bytes);
    loop {
        let more = reader.read_record(&mut record).map_err(|e| {
            let line = e.position().map_or(0, |p| lines.line_at(p.byte()));
            malformed(file, line, &e)
        })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| lines.line_at(p.byte()));
        let field = |i: usize| record[i].trim();
        if record.len() == 1 && field(0).is_empty() {
            continue; // a blank line
        }
        if record.len() != header.len() {
            return Err(TableError::FieldCount { file: file_s(), line, expected: header.len(), found: record.len() });
        }
        let ts = field(time_idx);
        let ts_ms = parse_timestamp(ts).ok_or_else(|| TableError::BadTimestamp {
            file: file_s(),
            line,
            field: time_idx + 1,
            column: header[time_idx].clone(),
            value: ts.to_string(),
        })?;
        let mut values = Vec::with_capacity(channel_idx.len());
        for &i in &channel_idx {
            values.push(parse_value(field(i)).ok_or_else(|| TableError::NotNumeric {
                file: file_s(),
                line,
                field: i + 1,
                column: header[i].clone(),
                value: field(i).to_string(),
            })?);
        }
        for (idx, out) in [(label_idx, &mut table.labels), (cp_idx, &mut table.changepoints)] {
            if let (Some(i), Some(out)) = (idx, out) {
                let bad = || TableError::BadLabel {
                    file: file_s(),
                    line,
                    field: i + 1,
                    column: header[i].clone(),
                    value: field(i).to_string(),
                };
                match field(i).parse::<f64>() {
                    Ok(1.0) => out.push(true),
                    Ok(0.0) => out.push(false),
                    _ => return Err(bad()),
                }
            }
        }
        table.timestamps.push(ts_ms);
        table.rows.push(values);
    }
    if table.rows.is_empty() {
        return Err(TableError::NoRows { file: file_s() });
    }
    Ok(table)
}

/// 1-based line numbers from byte offsets. The csv crate's own line count lags by one with
/// CRLF endings (a record's position is the `\n` ending the line before it), so count here.
struct LineCounter<'a> {
    bytes: &'a [u8],
    byte: usize,
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, byte: 0, line: 1 }
    }

    /// Line of the record starting at `byte` (offsets must not decrease between calls).
    fn line_at(&mut self, byte: u64) -> u64 {
        let mut target = (byte as usize).min(self.bytes.len());
        // A position on the line's own terminator belongs to the next line.
        if self.bytes.get(target) == Some(&b'\n') {
            target += 1;
        }
        if target > self.byte {
            self.line += self.bytes[self.byte..target].iter().filter(|&&b| b == b'\n').count() as u64;
            self.byte = target;
        }
        self.line
    }
}

fn malformed(file: &str, line: u64, e: &csv::Error) -> TableError {
    let message = match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "text is not valid UTF-8".to_string(),
        _ => e.to_string(),
    };
    TableError::Malformed { file: file.to_string(), line, message }
}

/// A number, or NaN for a missing reading (empty, `NaN`, `inf`); `None` if not a number at all.
fn parse_value(s: &str) -> Option<f64> {
    if s.is_empty() {
        return Some(f64::NAN);
    }
    let v: f64 = s.parse().ok()?;
    Some(if v.is_finite() { v } else { f64::NAN })
}

/// `YYYY-MM-DD hh:mm:ss[.fff]` (or with `T`), taken as UTC, to milliseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().ok() } else { None }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut ms = 0;
    if b.len() > 19 {
        let frac = s.get(20..)?;
        if b[19] != b'.' || frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let padded = format!("{frac:0<3}");
        ms = padded[..3].parse().ok()?;
    }
    Some(((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

/// Milliseconds since the epoch as `YYYY-MM-DD hh:mm:ss.fff` (UTC), the inverse of
/// [`parse_timestamp`], for writing files in the SKAB layout.
pub fn format_timestamp(ms: i64) -> String {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, f) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{f:03}")
}

/// The proleptic Gregorian date of a day number (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "datetime;Current;Pressure;anomaly;changepoint\r\n\
                        2020-03-09 10:14:33;1.33;0.05;0.0;0.0\r\n\
                        2020-03-09 10:14:34;;0.38;1.0;1.0\r\n";

    #[test]
    fn parses_the_skab_layout() {
        let t = parse_csv(GOOD.as_bytes(), "x.csv", &CsvFormat::SKAB).expect("parse");
        assert_eq!(t.channels, vec![Channel::new("Current", "A"), Channel::new("Pressure", "bar")]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.timestamps[1] - t.timestamps[0], 1000);
        assert!(t.rows[1][0].is_nan(), "an empty cell is a missing reading");
        assert_eq!(t.labels, Some(vec![false, true]));
        assert_eq!(t.changepoints, Some(vec![false, true]));
    }

    #[test]
    fn formatted_timestamps_parse_back() {
        for ms in [0, 1_583_748_873_123, 951_782_400_000, -86_400_001, 4_102_444_799_999] {
            assert_eq!(parse_timestamp(&format_timestamp(ms)), Some(ms), "{}", format_timestamp(ms));
        }
        assert_eq!(format_timestamp(1_583_748_873_123), "2020-03-09 10:14:33.123");
    }

    #[test]
    fn timestamps_are_utc_milliseconds() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_timestamp("2020-03-09 10:14:33"), Some(1_583_748_873_000));
        assert_eq!(parse_timestamp("2020-02-29T00:00:00.25"), Some(1_582_934_400_250));
        assert_eq!(parse_timestamp("2019-02-29 00:00:00"), None);
        assert_eq!(parse_timestamp("2020-03-09 25:00:00"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let bad_cell = GOOD.replace("1.33", "1,33x");
        let e = parse_csv(bad_cell.as_bytes(), "valve1/3.csv", &CsvFormat::SKAB).unwrap_err();
        assert_eq!(e.to_string(), "valve1/3.csv:2: field 2 (`Current`): `1,33x` is not a number");

        let comma = GOOD.replace(';', ",");
        let e = parse_csv(comma.as_bytes(), "a.csv", &CsvFormat::SKAB).unwrap_err();
        assert!(matches!(e, TableError::WrongSeparator { found: ',', expected: ';', .. }), "{e}");

        let cols = ["Current", "Voltage"];
        let fmt = CsvFormat { columns: Some(&cols), ..CsvFormat::SKAB };
        let e = parse_csv(GOOD.as_bytes(), "a.csv", &fmt).unwrap_err();
        assert_eq!(e.to_string(), "a.csv:1: missing column `Voltage`");

        assert!(matches!(parse_csv(b"", "e.csv", &CsvFormat::SKAB), Err(TableError::Empty { .. })));
        let header_only = "datetime;Current\r\n";
        assert!(matches!(parse_csv(header_only.as_bytes(), "h.csv", &CsvFormat::SKAB), Err(TableError::NoRows { .. })));

        let short = format!("{GOOD}2020-03-09 10:14:35;1.0\r\n");
        let e = parse_csv(short.as_bytes(), "s.csv", &CsvFormat::SKAB).unwrap_err();
        assert_eq!(e.to_string(), "s.csv:4: expected 5 fields, found 2");

        let bad_label = GOOD.replace("1.0;1.0", "2.0;1.0");
        let e = parse_csv(bad_label.as_bytes(), "l.csv", &CsvFormat::SKAB).unwrap_err();
        assert!(matches!(e, TableError::BadLabel { line: 3, field: 4, .. }), "{e}");

        let bad_time = GOOD.replace("2020-03-09 10:14:34", "2020-13-09 10:14:34");
        let e = parse_csv(bad_time.as_bytes(), "t.csv", &CsvFormat::SKAB).unwrap_err();
        assert!(matches!(e, TableError::BadTimestamp { line: 3, field: 1, .. }), "{e}");
    }

    #[test]
    fn invalid_utf8_is_an_error_not_a_panic() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes[60] = 0xff;
        assert!(parse_csv(&bytes, "u.csv", &CsvFormat::SKAB).is_err());
    }
}
