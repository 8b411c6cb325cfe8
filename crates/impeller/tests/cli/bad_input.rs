//! Bad input gives a clear error naming the file, line and field, exit code 3, no panic.

use std::path::Path;

use crate::util::{impeller, skab_csv, stderr};

/// A SKAB-like folder with one good file and `bad` written as `other/bad.csv`.
fn folder_with(bad: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("valve1")).unwrap();
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    std::fs::write(dir.path().join("valve1/0.csv"), skab_csv(500, 450)).unwrap();
    std::fs::write(dir.path().join("other/bad.csv"), bad).unwrap();
    dir
}

fn bench(dir: &Path) -> std::process::Output {
    impeller(&["bench", "skab", "--data", dir.to_str().unwrap()])
}

fn assert_input_error(out: &std::process::Output, expected: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(3), "exit code; stderr: {err}");
    assert!(err.contains(expected), "stderr should contain {expected:?}, got: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_column() {
    let csv = skab_csv(500, 450).replace(";Current;", ";Amps;");
    assert_input_error(&bench(folder_with(csv.as_bytes()).path()), "other/bad.csv:1: missing column `Current`");
}

#[test]
fn non_numeric_cell() {
    let csv = skab_csv(500, 450);
    let mut lines: Vec<String> = csv.split("\r\n").map(String::from).collect();
    let mut fields: Vec<&str> = lines[57].split(';').collect();
    fields[3] = "oops";
    lines[57] = fields.join(";");
    let out = bench(folder_with(lines.join("\r\n").as_bytes()).path());
    assert_input_error(&out, "other/bad.csv:58: field 4 (`Current`): `oops` is not a number");
}

#[test]
fn wrong_separator() {
    let csv = skab_csv(500, 450).replace(';', ",");
    assert_input_error(&bench(folder_with(csv.as_bytes()).path()), "it looks `,`-separated (expected `;`)");
}

#[test]
fn empty_file() {
    assert_input_error(&bench(folder_with(b"").path()), "other/bad.csv: the file is empty");
}

#[test]
fn folder_without_csv_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "nothing here").unwrap();
    assert_input_error(&bench(dir.path()), "no CSV files found");
}

#[test]
fn too_short_for_the_protocol() {
    assert_input_error(&bench(folder_with(skab_csv(300, 250).as_bytes()).path()), "other/bad.csv: 300 data rows");
}

#[test]
fn bad_configuration_names_the_field() {
    let dir = folder_with(skab_csv(500, 450).as_bytes());
    let cfg = dir.path().join("bench.toml");
    let text = impeller::skab::DEFAULT_CONFIG.replace("window = 10", "window = 10\nwindwo = 3");
    std::fs::write(&cfg, text).unwrap();
    let out = impeller(&["bench", "skab", "--data", dir.path().to_str().unwrap(), "--config", cfg.to_str().unwrap()]);
    assert_input_error(&out, "unknown field `windwo`");
}

#[test]
fn usage_errors_exit_with_2() {
    let out = impeller(&["bench", "skab", "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
