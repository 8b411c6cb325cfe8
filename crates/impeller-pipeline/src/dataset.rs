//! Datasets: named parts (a device's recording, a file) of frames with optional anomaly labels,
//! addressed by the hash of their content and stored as Parquet.
//!
//! On disk, `datasets/{hash}/` holds `dataset.json` (the manifest: channels with units, and
//! each part's name, file, rows and time span) and one Parquet file per part with the columns
//! `ts` (INT64, timestamp in milliseconds, UTC), one DOUBLE per channel (null where the reading
//! is missing) and, for labelled parts, `anomaly` (BOOLEAN). pandas reads them as they are.
//!
//! The hash covers the content, not the files: a domain tag, the channels, then each part in
//! name order (name, rows, every timestamp and value, the labels), so the same selection over
//! the same data gives the same hash whatever wrote it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use impeller_core::table::{CsvFormat, SKAB_CHANNELS, parse_csv};
use impeller_core::{Channel, Frame};
use parquet::basic::{LogicalType, Repetition, TimeUnit, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::data_type::{BoolType, DoubleType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::PipelineError;

pub const DATASET_FORMAT: &str = "impeller.dataset";
pub const DATASET_VERSION: u32 = 1;
const MANIFEST: &str = "dataset.json";
/// Largest CSV file imported (the hub's own limit for a data file).
const MAX_FILE_BYTES: u64 = 1 << 30;

/// The name of run `k` of one source (a device's stretches of consecutive frames, cut at the
/// gaps between them so that no rolling window spans one): `SOURCE#k`.
pub fn run_name(source: &str, k: usize) -> String {
    format!("{source}#{k}")
}

/// The source a part's frames came from: `SOURCE` for a part named by [`run_name`], else the
/// part's own name.
pub fn source_of(part: &str) -> &str {
    match part.rsplit_once('#') {
        Some((source, k)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => source,
        _ => part,
    }
}

/// A part's recording in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub name: String,
    pub frames: Vec<Frame>,
    /// One per frame, when the part is labelled.
    pub labels: Option<Vec<bool>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub channels: Vec<Channel>,
    /// Sorted by name, names unique.
    pub parts: Vec<Part>,
}

/// `dataset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub sha256: String,
    pub channels: Vec<Channel>,
    pub parts: Vec<PartInfo>,
    /// Where it came from, in words (a folder imported, a selection from the hub).
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartInfo {
    pub name: String,
    pub file: String,
    pub rows: u64,
    pub labelled: bool,
    pub anomalous_rows: u64,
    pub first_ts_ms: Option<i64>,
    pub last_ts_ms: Option<i64>,
}

impl Dataset {
    /// Builds a dataset, sorting the parts by name; names must be unique and every frame must
    /// have one value per channel.
    pub fn new(channels: Vec<Channel>, mut parts: Vec<Part>) -> Result<Dataset, PipelineError> {
        parts.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = parts.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(PipelineError::Data(format!("two parts are named `{}`", w[0].name)));
        }
        for p in &parts {
            if p.frames.iter().any(|f| f.values.len() != channels.len()) {
                return Err(PipelineError::Data(format!("part `{}`: a frame without one value per channel", p.name)));
            }
            if p.labels.as_ref().is_some_and(|l| l.len() != p.frames.len()) {
                return Err(PipelineError::Data(format!("part `{}`: labels and frames differ in number", p.name)));
            }
        }
        Ok(Dataset { channels, parts })
    }

    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"impeller.dataset.v1\n");
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(&(self.channels.len() as u64).to_le_bytes());
        for c in &self.channels {
            field(c.name.as_bytes());
            field(c.unit.as_bytes());
        }
        field(&(self.parts.len() as u64).to_le_bytes());
        for p in &self.parts {
            field(p.name.as_bytes());
            field(&(p.frames.len() as u64).to_le_bytes());
            let mut rows = Vec::with_capacity(p.frames.len() * (8 + 8 * self.channels.len()));
            for f in &p.frames {
                rows.extend_from_slice(&f.ts_ms.to_le_bytes());
                for v in &f.values {
                    // Every missing reading hashes alike, whatever NaN it was read as.
                    let v = if v.is_nan() { f64::NAN } else { *v };
                    rows.extend_from_slice(&v.to_bits().to_le_bytes());
                }
            }
            field(&rows);
            let labels: Vec<u8> = match &p.labels {
                None => vec![2],
                Some(l) => l.iter().map(|&a| u8::from(a)).collect(),
            };
            field(&labels);
        }
        impeller_core::hex::encode(&h.finalize())
    }

    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// The same parts with only `names` as channels, in that order.
    pub fn select_channels(&self, names: &[String]) -> Result<Dataset, PipelineError> {
        if names.is_empty() {
            return Ok(self.clone());
        }
        let idx: Vec<usize> = names
            .iter()
            .map(|n| {
                self.channels.iter().position(|c| &c.name == n).ok_or_else(|| {
                    let known: Vec<&str> = self.channels.iter().map(|c| c.name.as_str()).collect();
                    PipelineError::Data(format!("no channel `{n}` in the dataset (it has {})", known.join(", ")))
                })
            })
            .collect::<Result<_, _>>()?;
        let parts = self
            .parts
            .iter()
            .map(|p| Part {
                name: p.name.clone(),
                frames: p
                    .frames
                    .iter()
                    .map(|f| Frame { ts_ms: f.ts_ms, values: idx.iter().map(|&i| f.values[i]).collect() })
                    .collect(),
                labels: p.labels.clone(),
            })
            .collect();
        Ok(Dataset { channels: idx.iter().map(|&i| self.channels[i].clone()).collect(), parts })
    }

    /// Writes `dir/{hash}/` (Parquet files and the manifest) unless it is there already, via a
    /// temporary folder renamed into place, every file fsynced. Returns the hash.
    pub fn write(&self, dir: &Path, source: &str) -> Result<String, PipelineError> {
        let hash = self.sha256();
        let target = dir.join(&hash);
        if target.join(MANIFEST).is_file() {
            return Ok(hash);
        }
        std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
        let tmp = dir.join(crate::temp_name(&hash));
        if let Err(e) = self.write_files(&tmp, &hash, source) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match std::fs::rename(&tmp, &target) {
            Ok(()) => {}
            // Another process wrote the same content first.
            Err(_) if target.join(MANIFEST).is_file() => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Err(e) => return Err(PipelineError::io(&target, e)),
        }
        crate::sync_dir(dir)?;
        Ok(hash)
    }

    /// The Parquet files and the manifest, fsynced, in `tmp`.
    fn write_files(&self, tmp: &Path, hash: &str, source: &str) -> Result<(), PipelineError> {
        std::fs::create_dir_all(tmp).map_err(|e| PipelineError::io(tmp, e))?;
        let mut infos = Vec::new();
        for (i, p) in self.parts.iter().enumerate() {
            let file = format!("part-{i:05}.parquet");
            write_part(&tmp.join(&file), &self.channels, p)?;
            infos.push(PartInfo {
                name: p.name.clone(),
                file,
                rows: p.frames.len() as u64,
                labelled: p.labels.is_some(),
                anomalous_rows: p.labels.as_ref().map_or(0, |l| l.iter().filter(|&&a| a).count() as u64),
                first_ts_ms: p.frames.first().map(|f| f.ts_ms),
                last_ts_ms: p.frames.last().map(|f| f.ts_ms),
            });
        }
        let manifest = Manifest {
            format: DATASET_FORMAT.into(),
            version: DATASET_VERSION,
            sha256: hash.to_string(),
            channels: self.channels.clone(),
            parts: infos,
            source: source.to_string(),
        };
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| PipelineError::Data(e.to_string()))?;
        crate::write_synced(&tmp.join(MANIFEST), &bytes)?;
        crate::sync_dir(tmp)
    }

    /// Reads `dir/{hash}/` back and checks that its content still has that hash.
    pub fn read(dir: &Path, hash: &str) -> Result<(Dataset, Manifest), PipelineError> {
        let manifest = read_manifest(dir, hash)?;
        let folder = dir.join(hash);
        let mut parts = Vec::new();
        for info in &manifest.parts {
            if info.file.contains(['/', '\\']) || info.file.starts_with('.') {
                return Err(PipelineError::Data(format!(
                    "{}: part file `{}` leaves the folder",
                    folder.display(),
                    info.file
                )));
            }
            let path = folder.join(&info.file);
            let bytes = std::fs::read(&path).map_err(|e| PipelineError::io(&path, e))?;
            let origin = path.display().to_string();
            let part = decode_part(bytes, &origin, &info.name, &manifest.channels, info.labelled, info.rows)?;
            if part.frames.len() as u64 != info.rows {
                let found = part.frames.len();
                return Err(PipelineError::Data(format!("{origin}: {found} rows, the manifest says {}", info.rows)));
            }
            parts.push(part);
        }
        let ds = Dataset::new(manifest.channels.clone(), parts)?;
        let actual = ds.sha256();
        if actual != hash {
            return Err(PipelineError::Data(format!(
                "{}: the content hashes to {actual}, not to its name (the files were changed)",
                folder.display()
            )));
        }
        Ok((ds, manifest))
    }
}

/// The manifest of `dir/{hash}/`.
pub fn read_manifest(dir: &Path, hash: &str) -> Result<Manifest, PipelineError> {
    if !impeller_core::audit::is_sha256_hex(hash) {
        return Err(PipelineError::Data(format!("`{hash}` is not a dataset hash (64 lowercase hex digits)")));
    }
    let path = dir.join(hash).join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| PipelineError::io(&path, e))?;
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| PipelineError::Data(format!("{}: {e}", path.display())))?;
    if m.format != DATASET_FORMAT || m.version != DATASET_VERSION {
        return Err(PipelineError::Data(format!(
            "{}: not an {DATASET_FORMAT} version {DATASET_VERSION}",
            path.display()
        )));
    }
    Ok(m)
}

/// Every dataset in `dir`, by manifest.
pub fn list(dir: &Path) -> Result<Vec<Manifest>, PipelineError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(PipelineError::io(dir, e)),
    };
    for entry in entries {
        let name = entry.map_err(|e| PipelineError::io(dir, e))?.file_name().to_string_lossy().to_string();
        if impeller_core::audit::is_sha256_hex(&name) {
            out.push(read_manifest(dir, &name)?);
        }
    }
    out.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    Ok(out)
}

/// Every `*.csv` under `folder` in the SKAB layout, one part each, named by its path relative
/// to the folder without `.csv` (`valve1/3`). Channels: the SKAB ones in their order where the
/// files have them, with their units; otherwise every sensor column of the first file, unitless.
pub fn import_csv_folder(folder: &Path) -> Result<Dataset, PipelineError> {
    let files = csv_files(folder)?;
    let mut channels: Option<Vec<Channel>> = None;
    let mut parts = Vec::new();
    for (path, name) in files {
        let meta = std::fs::metadata(&path).map_err(|e| PipelineError::io(&path, e))?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(PipelineError::Data(format!("{}: larger than {MAX_FILE_BYTES} bytes", path.display())));
        }
        let bytes = std::fs::read(&path).map_err(|e| PipelineError::io(&path, e))?;
        let columns: Option<Vec<String>> = channels.as_ref().map(|c| c.iter().map(|c| c.name.clone()).collect());
        let names: Option<Vec<&str>> = columns.as_ref().map(|c| c.iter().map(String::as_str).collect());
        let format = CsvFormat { columns: names.as_deref(), ..CsvFormat::SKAB };
        let table =
            parse_csv(&bytes, &path.display().to_string(), &format).map_err(|e| PipelineError::Data(e.to_string()))?;
        if channels.is_none() {
            channels = Some(
                table
                    .channels
                    .iter()
                    .map(|c| {
                        let unit = SKAB_CHANNELS.iter().find(|(n, _)| *n == c.name).map_or(c.unit.as_str(), |(_, u)| u);
                        Channel::new(c.name.clone(), unit)
                    })
                    .collect(),
            );
        }
        let frames = table.frames();
        parts.push(Part { name, frames, labels: table.labels });
    }
    Dataset::new(channels.unwrap_or_default(), parts)
}

/// (path, part name) of every `*.csv` under `folder`, sorted by name.
pub fn csv_files(folder: &Path) -> Result<Vec<(PathBuf, String)>, PipelineError> {
    if !folder.is_dir() {
        return Err(PipelineError::Data(format!("{}: not a folder", folder.display())));
    }
    let mut out = Vec::new();
    let mut stack = vec![folder.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| PipelineError::io(&d, e))? {
            let path = entry.map_err(|e| PipelineError::io(&d, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
                let rel = path.strip_prefix(folder).unwrap_or(&path).with_extension("");
                let name = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.push((path, name));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    if out.is_empty() {
        return Err(PipelineError::Data(format!("{}: no CSV files found", folder.display())));
    }
    Ok(out)
}

fn pq(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> PipelineError + '_ {
    move |e| PipelineError::Data(format!("{}: {e}", path.display()))
}

fn write_part(path: &Path, channels: &[Channel], part: &Part) -> Result<(), PipelineError> {
    let err = pq(path);
    let mut fields = vec![Arc::new(
        Type::primitive_type_builder("ts", PhysicalType::INT64)
            .with_repetition(Repetition::REQUIRED)
            .with_logical_type(Some(LogicalType::timestamp(true, TimeUnit::MILLIS)))
            .build()
            .map_err(&err)?,
    )];
    for c in channels {
        fields.push(Arc::new(
            Type::primitive_type_builder(&c.name, PhysicalType::DOUBLE)
                .with_repetition(Repetition::OPTIONAL)
                .build()
                .map_err(&err)?,
        ));
    }
    if part.labels.is_some() {
        fields.push(Arc::new(
            Type::primitive_type_builder("anomaly", PhysicalType::BOOLEAN)
                .with_repetition(Repetition::REQUIRED)
                .build()
                .map_err(&err)?,
        ));
    }
    let schema = Arc::new(Type::group_type_builder("part").with_fields(fields).build().map_err(&err)?);
    let channels_json = serde_json::to_string(channels).map_err(|e| PipelineError::Data(e.to_string()))?;
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_key_value_metadata(Some(vec![
            KeyValue::new("impeller.part".into(), part.name.clone()),
            KeyValue::new("impeller.channels".into(), channels_json),
        ]))
        .build();
    let file = File::create(path).map_err(|e| PipelineError::io(path, e))?;
    let mut writer = SerializedFileWriter::new(file, schema, Arc::new(props)).map_err(&err)?;
    let mut group = writer.next_row_group().map_err(&err)?;
    let mut column = 0usize;
    while let Some(mut col) = group.next_column().map_err(&err)? {
        if column == 0 {
            let ts: Vec<i64> = part.frames.iter().map(|f| f.ts_ms).collect();
            col.typed::<Int64Type>().write_batch(&ts, None, None).map_err(&err)?;
        } else if column <= channels.len() {
            let c = column - 1;
            let defs: Vec<i16> = part.frames.iter().map(|f| i16::from(!f.values[c].is_nan())).collect();
            let values: Vec<f64> = part.frames.iter().map(|f| f.values[c]).filter(|v| !v.is_nan()).collect();
            col.typed::<DoubleType>().write_batch(&values, Some(&defs), None).map_err(&err)?;
        } else {
            let labels = part.labels.as_deref().unwrap_or_default();
            col.typed::<BoolType>().write_batch(labels, None, None).map_err(&err)?;
        }
        col.close().map_err(&err)?;
        column += 1;
    }
    group.close().map_err(&err)?;
    let file = writer.into_inner().map_err(&err)?;
    file.sync_all().map_err(|e| PipelineError::io(path, e))?;
    Ok(())
}

/// One part of at most `max_rows` rows from a Parquet file's bytes (from disk, or pulled from a
/// hub: untrusted). A file that is not the part the manifest describes is refused with `origin`
/// named; one claiming more rows is refused before they are read.
pub fn decode_part(
    bytes: Vec<u8>,
    origin: &str,
    name: &str,
    channels: &[Channel],
    labelled: bool,
    max_rows: u64,
) -> Result<Part, PipelineError> {
    // The Parquet reader asserts some things of a file's metadata instead of refusing it;
    // `check_layout` refuses what is known to trip it, and this catches what is not known yet.
    let decode = || decode(bytes, origin, name, channels, labelled, max_rows);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|_| {
        Err(PipelineError::Data(format!("{origin}: a malformed Parquet file (the reader gave up)")))
    })
}

/// Every column chunk of every row group lies inside the file, and the file holds at most
/// `max_rows` rows.
fn check_layout(
    meta: &parquet::file::metadata::ParquetMetaData,
    len: u64,
    max_rows: u64,
    origin: &str,
) -> Result<(), PipelineError> {
    let in_groups =
        meta.row_groups().iter().map(|g| g.num_rows()).try_fold(0u64, |sum, n| sum.checked_add(u64::try_from(n).ok()?));
    let declared = u64::try_from(meta.file_metadata().num_rows()).ok();
    if !matches!((in_groups, declared), (Some(a), Some(b)) if a <= max_rows && b <= max_rows) {
        return Err(PipelineError::Data(format!("{origin}: more rows than the {max_rows} expected")));
    }
    for g in meta.row_groups() {
        for c in g.columns() {
            let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
            let size = c.compressed_size();
            let inside =
                start >= 0 && size >= 0 && (start as u64).checked_add(size as u64).is_some_and(|end| end <= len);
            if !inside {
                return Err(PipelineError::Data(format!("{origin}: a column chunk lies outside the file")));
            }
        }
    }
    Ok(())
}

fn decode(
    bytes: Vec<u8>,
    origin: &str,
    name: &str,
    channels: &[Channel],
    labelled: bool,
    max_rows: u64,
) -> Result<Part, PipelineError> {
    let path = Path::new(origin);
    let err = pq(path);
    let len = bytes.len() as u64;
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).map_err(&err)?;
    check_layout(reader.metadata(), len, max_rows, origin)?;
    // A page may claim more values than its row group: reading stops past the rows expected.
    let too_many = || PipelineError::Data(format!("{origin}: more values than the {max_rows} rows expected"));
    let cap = usize::try_from(max_rows).unwrap_or(usize::MAX);
    let expected = 1 + channels.len() + usize::from(labelled);
    let found = reader.metadata().file_metadata().schema_descr().num_columns();
    if found != expected {
        return Err(PipelineError::Data(format!("{}: {found} columns, expected {expected}", path.display())));
    }
    let mut ts: Vec<i64> = Vec::new();
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); channels.len()];
    let mut labels: Vec<bool> = Vec::new();
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(&err)?;
        for c in 0..expected {
            match group.get_column_reader(c).map_err(&err)? {
                ColumnReader::Int64ColumnReader(mut r) if c == 0 => loop {
                    let (n, _, _) = r.read_records(8192, None, None, &mut ts).map_err(&err)?;
                    if n == 0 {
                        break;
                    }
                    if ts.len() > cap {
                        return Err(too_many());
                    }
                },
                ColumnReader::DoubleColumnReader(mut r) if c >= 1 && c <= channels.len() => {
                    let (mut defs, mut values) = (Vec::new(), Vec::new());
                    loop {
                        let (n, _, _) = r.read_records(8192, Some(&mut defs), None, &mut values).map_err(&err)?;
                        if n == 0 {
                            break;
                        }
                        if defs.len() > cap {
                            return Err(too_many());
                        }
                    }
                    let mut present = values.into_iter();
                    for d in defs {
                        columns[c - 1].push(if d > 0 { present.next().unwrap_or(f64::NAN) } else { f64::NAN });
                    }
                }
                ColumnReader::BoolColumnReader(mut r) if c == expected - 1 && labelled => loop {
                    let (n, _, _) = r.read_records(8192, None, None, &mut labels).map_err(&err)?;
                    if n == 0 {
                        break;
                    }
                    if labels.len() > cap {
                        return Err(too_many());
                    }
                },
                _ => return Err(PipelineError::Data(format!("{}: column {c} has the wrong type", path.display()))),
            }
        }
    }
    if columns.iter().any(|c| c.len() != ts.len()) || (labelled && labels.len() != ts.len()) {
        return Err(PipelineError::Data(format!("{}: columns of different lengths", path.display())));
    }
    let frames =
        (0..ts.len()).map(|i| Frame { ts_ms: ts[i], values: columns.iter().map(|c| c[i]).collect() }).collect();
    Ok(Part { name: name.to_string(), frames, labels: labelled.then_some(labels) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_named_after_their_source_and_traced_back_to_it() {
        assert_eq!(run_name("pump-0006", 16), "pump-0006#16");
        assert_eq!(source_of(&run_name("base/pump-0006", 16)), "base/pump-0006");
        for whole in ["pump-0006", "valve1/1", "a#", "a#1b", "#"] {
            assert_eq!(source_of(whole), whole);
        }
    }

    fn sample() -> Dataset {
        let channels = vec![Channel::new("flow", "L/min"), Channel::new("pressure", "bar")];
        let part = |name: &str, n: usize, labelled: bool| Part {
            name: name.into(),
            frames: (0..n)
                .map(|i| Frame {
                    ts_ms: 1_700_000_000_000 + i as i64 * 1000,
                    values: vec![i as f64 * 0.5, if i % 7 == 3 { f64::NAN } else { 2.0 + i as f64 }],
                })
                .collect(),
            labels: labelled.then(|| (0..n).map(|i| i % 5 == 0).collect()),
        };
        Dataset::new(channels, vec![part("valve1/2", 30, true), part("normal", 50, false)]).unwrap()
    }

    #[test]
    fn parquet_round_trip_keeps_content_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let ds = sample();
        let hash = ds.write(dir.path(), "test").unwrap();
        assert_eq!(ds.write(dir.path(), "test").unwrap(), hash, "written once, found again");
        let (back, manifest) = Dataset::read(dir.path(), &hash).unwrap();
        assert_eq!(back.sha256(), hash);
        assert_eq!(back.parts[0].name, "normal", "parts sorted by name");
        assert!(back.parts[1].frames[3].values[1].is_nan(), "a missing reading stays missing");
        assert_eq!(back.parts[1].labels, ds.parts[1].labels);
        assert_eq!(manifest.parts[1].anomalous_rows, 6);
        assert_eq!(list(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_changed_file_is_found_by_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let hash = sample().write(dir.path(), "test").unwrap();
        let mut other = sample();
        other.parts[0].frames[4].values[0] += 1.0;
        let other_hash = other.write(dir.path(), "test").unwrap();
        assert_ne!(other_hash, hash);
        // Swap one part's file for the other dataset's: the content no longer matches the name.
        std::fs::copy(
            dir.path().join(&other_hash).join("part-00000.parquet"),
            dir.path().join(&hash).join("part-00000.parquet"),
        )
        .unwrap();
        let e = Dataset::read(dir.path(), &hash).unwrap_err().to_string();
        assert!(e.contains("the files were changed"), "{e}");
    }

    #[test]
    fn a_part_with_more_rows_than_expected_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let ds = sample();
        let hash = ds.write(dir.path(), "test").unwrap();
        let file = dir.path().join(&hash).join("part-00000.parquet");
        let bytes = std::fs::read(&file).unwrap();
        let ok = decode_part(bytes.clone(), "f", "normal", &ds.channels, false, 50).unwrap();
        assert_eq!(ok.frames.len(), 50);
        let e = decode_part(bytes, "f", "normal", &ds.channels, false, 49).unwrap_err().to_string();
        assert!(e.contains("more rows than the 49 expected"), "{e}");
    }

    #[test]
    fn writers_of_the_same_dataset_at_once_leave_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let ds = sample();
        let hashes: Vec<String> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..4).map(|_| scope.spawn(|| ds.write(dir.path(), "test").unwrap())).collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert!(hashes.iter().all(|h| *h == hashes[0]));
        let (back, _) = Dataset::read(dir.path(), &hashes[0]).unwrap();
        assert_eq!(back.sha256(), hashes[0], "the files read back to the content named");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "no temporary folder left: {left:?}");
    }

    #[test]
    fn the_hash_depends_on_every_value_label_and_name() {
        let base = sample().sha256();
        let mut a = sample();
        a.parts[1].labels.as_mut().unwrap()[1] = true;
        let mut b = sample();
        b.parts[0].name = "normal2".into();
        let mut c = sample();
        c.parts[0].frames[10].ts_ms += 1;
        let mut d = sample();
        d.channels[0].unit = "gpm".into();
        for other in [a, b, c, d] {
            assert_ne!(other.sha256(), base);
        }
    }
}
