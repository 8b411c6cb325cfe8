//! Reading files from disk for the commands; parsing lives in `impeller_core::table`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use impeller_core::table::{CsvFormat, Table, parse_csv};

use crate::InputError;

/// Files larger than this are refused: a sensor CSV or model this big is a mistake.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

pub fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(InputError(format!(
            "{}: {} bytes is more than the {MAX_FILE_BYTES} allowed",
            path.display(),
            meta.len()
        ))
        .into());
    }
    std::fs::read(path).map_err(|e| InputError(format!("{}: {e}", path.display())).into())
}

/// Reads and parses one CSV file; `name` is how messages refer to it.
pub fn read_table(path: &Path, name: &str, format: &CsvFormat<'_>) -> anyhow::Result<Table> {
    let bytes = read_file(path)?;
    Ok(parse_csv(&bytes, name, format)?)
}

/// Every `*.csv` under `dir` (recursively) whose path does not contain `anomaly-free`, as
/// (path, name relative to `dir` with `/` separators), sorted by name.
pub fn skab_files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    if !dir.is_dir() {
        return Err(InputError(format!("{}: not a folder", dir.display())).into());
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))?;
        for entry in entries {
            let path = entry.with_context(|| format!("listing {}", d.display()))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                let name = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                if !name.contains("anomaly-free") {
                    out.push((path, name));
                }
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    if out.is_empty() {
        return Err(InputError(format!(
            "{}: no CSV files found (expected SKAB's valve1/, valve2/ and other/ folders)",
            dir.display()
        ))
        .into());
    }
    Ok(out)
}
