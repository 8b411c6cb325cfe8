//! `impeller sim --skab PATH`: SKAB files replayed live, so that agents meet the testbed's real
//! readings as they meet the simulated pumps. Each file is a device; its rows are stamped from
//! the replay's start on, keeping their spacing, and served at `--speed` over MQTT or by a Modbus
//! controller in the testbed's register map. The files' labels become the ground truth
//! (`skab.json`), in the replay's time.

use std::path::Path;

use impeller_core::adapter::{AdapterConfig, ChannelMap};
use impeller_core::table::{CsvFormat, SKAB_CHANNELS, Table};
use impeller_sim::Sample;
use serde::{Deserialize, Serialize};

use crate::InputError;
use crate::data::{read_table, skab_files};
use crate::simfeed::{Device, Pumps, Stream, map_text};

/// The testbed's sensor columns, in file order.
const COLUMNS: [&str; 8] = {
    let mut names = [""; 8];
    let mut i = 0;
    while i < 8 {
        names[i] = SKAB_CHANNELS[i].0;
        i += 1;
    }
    names
};

/// The testbed samples once a second.
const SAMPLE_MS: u64 = 1000;

/// Labelled rows in a run, in the replay's time (both ends included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// What one replayed file holds, in the replay's time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTruth {
    pub id: String,
    /// The file, relative to the path given.
    pub file: String,
    pub rows: usize,
    pub first_ms: i64,
    pub last_ms: i64,
    /// Runs of rows labelled `anomaly = 1`.
    pub anomalies: Vec<Interval>,
    /// Rows labelled `changepoint = 1`.
    pub changepoints: Vec<i64>,
}

/// The ground truth of a replay (`skab.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    pub start_ms: i64,
    pub speed: f64,
    pub devices: Vec<DeviceTruth>,
}

/// SKAB files ready to replay from `start_ms`.
#[derive(Debug)]
pub struct SkabReplay {
    pub devices: Vec<Device>,
    /// Each device's file, relative to the path given, and its table.
    files: Vec<(String, Table)>,
    pub start_ms: i64,
}

/// A device id from a file's name: what a device id may not hold becomes `-`.
fn device_id(name: &str) -> String {
    let stem = name.strip_suffix(".csv").or_else(|| name.strip_suffix(".CSV")).unwrap_or(name);
    let id: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    id.chars().take(64).collect()
}

/// Whether row `r` carries the label (a file without the label column carries none).
fn labelled(labels: &Option<Vec<bool>>, r: usize) -> bool {
    labels.as_ref().is_some_and(|l| l[r])
}

impl SkabReplay {
    /// Every SKAB file under folder `path` (all but anomaly-free, as the leaderboard does), or
    /// the one file `path`. A device is named after its folder and file (`skab-valve1-0` for
    /// `skab/valve1/0.csv`). Files that cannot be read are reported and left out; none left is
    /// an error.
    pub fn load(path: &Path, start_ms: i64) -> anyhow::Result<SkabReplay> {
        let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let files = if path.is_dir() {
            let prefix = named(path);
            skab_files(path)?.into_iter().map(|(p, name)| (p, name.clone(), format!("{prefix}/{name}"))).collect()
        } else {
            let parent = path.parent().map(named).unwrap_or_default();
            vec![(path.to_path_buf(), named(path), format!("{parent}/{}", named(path)))]
        };
        let format = CsvFormat { columns: Some(&COLUMNS), ..CsvFormat::SKAB };
        let mut replay = SkabReplay { devices: Vec::new(), files: Vec::new(), start_ms };
        let mut refused = Vec::new();
        for (file, name, long_name) in files {
            let table = match read_table(&file, &name, &format) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("left out of the replay: {e:#}");
                    refused.push(format!("{e:#}"));
                    continue;
                }
            };
            let id = device_id(long_name.trim_start_matches('/'));
            if replay.devices.iter().any(|d| d.id == id) {
                return Err(InputError(format!("{name}: its device id `{id}` is taken by another file")).into());
            }
            replay.devices.push(Device {
                id,
                about: format!("SKAB {name}"),
                columns: COLUMNS.iter().map(|c| (*c).to_string()).collect(),
                sample_ms: SAMPLE_MS,
                register_map: map_text("skab")?,
                adapter: AdapterConfig {
                    name: "skab-testbed".into(),
                    sample_ms: None,
                    channels: SKAB_CHANNELS
                        .iter()
                        .map(|(c, unit)| ChannelMap { source: (*c).into(), channel: (*c).into(), unit: (*unit).into() })
                        .collect(),
                },
            });
            replay.files.push((name, table));
        }
        if replay.files.is_empty() {
            return Err(InputError(format!(
                "--skab {}: no file could be replayed ({})",
                path.display(),
                refused.join("; ")
            ))
            .into());
        }
        Ok(replay)
    }

    /// Where a row of `table` falls in the replay's time.
    fn replay_ms(&self, table: &Table, row: usize) -> i64 {
        self.start_ms + (table.timestamps[row] - table.timestamps[0])
    }

    /// Each device's rows as samples from the replay's start, labels as ground truth.
    pub fn streams(&self) -> Pumps<'_> {
        Pumps::new(
            self.files
                .iter()
                .map(|(_, t)| {
                    Box::new((0..t.len()).map(move |r| Sample {
                        ts_ms: self.replay_ms(t, r),
                        values: t.rows[r].clone(),
                        faulty: labelled(&t.labels, r),
                        onset: labelled(&t.changepoints, r),
                    })) as Stream<'_>
                })
                .collect(),
        )
    }

    /// The replay's ground truth.
    pub fn truth(&self, speed: f64) -> Truth {
        let devices = self
            .devices
            .iter()
            .zip(&self.files)
            .map(|(d, (name, t))| {
                let at = |r| self.replay_ms(t, r);
                let rows_of = |l: &Option<Vec<bool>>| (0..t.len()).filter(|&r| labelled(l, r)).collect();
                let rows: Vec<usize> = rows_of(&t.labels);
                let mut anomalies: Vec<Interval> = Vec::new();
                for (k, &r) in rows.iter().enumerate() {
                    match anomalies.last_mut() {
                        Some(run) if k > 0 && rows[k - 1] + 1 == r => run.to_ms = at(r),
                        _ => anomalies.push(Interval { from_ms: at(r), to_ms: at(r) }),
                    }
                }
                let changepoints: Vec<usize> = rows_of(&t.changepoints);
                DeviceTruth {
                    id: d.id.clone(),
                    file: name.clone(),
                    rows: t.len(),
                    first_ms: at(0),
                    last_ms: at(t.len() - 1),
                    anomalies,
                    changepoints: changepoints.into_iter().map(at).collect(),
                }
            })
            .collect();
        Truth { start_ms: self.start_ms, speed, devices }
    }

    /// Simulated seconds from the start to the last row of the longest file.
    pub fn duration_s(&self) -> f64 {
        self.files.iter().map(|(_, t)| self.replay_ms(t, t.len() - 1) - self.start_ms).max().unwrap_or(0) as f64
            / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "datetime;Accelerometer1RMS;Accelerometer2RMS;Current;Pressure;Temperature;Thermocouple;Voltage;Volume Flow RateRMS;anomaly;changepoint
2020-03-09 10:14:33;0.02;0.04;1.3;0.05;79.3;26.0;233.0;32.0;0;0
2020-03-09 10:14:34;0.02;0.04;1.3;0.38;79.5;26.0;236.0;32.0;1;1
2020-03-09 10:14:35;0.02;0.04;1.3;0.38;79.5;26.0;;32.0;1;0
2020-03-09 10:14:37;0.02;0.04;1.3;0.38;79.5;26.0;236.0;32.0;0;0
2020-03-09 10:14:38;0.02;0.04;1.3;0.38;79.5;26.0;236.0;32.0;1;1
";

    #[test]
    fn a_file_replays_from_the_start_with_its_spacing_labels_and_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("valve 1");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("0.csv"), FILE).unwrap();
        let replay = SkabReplay::load(&folder.join("0.csv"), 1_000_000).unwrap();
        assert_eq!(replay.devices.len(), 1);
        assert_eq!(replay.devices[0].id, "valve-1-0");
        let mut samples = Vec::new();
        replay.streams().advance(i64::MAX, |i, s| samples.push((i, s)));
        let times: Vec<i64> = samples.iter().map(|(_, s)| s.ts_ms).collect();
        assert_eq!(times, [1_000_000, 1_001_000, 1_002_000, 1_004_000, 1_005_000]);
        assert!(samples[2].1.values[6].is_nan(), "the empty Voltage cell stays missing");
        assert_eq!(samples[1].1.values[3], 0.38);
        let truth = replay.truth(60.0);
        let d = &truth.devices[0];
        assert_eq!(
            d.anomalies,
            [Interval { from_ms: 1_001_000, to_ms: 1_002_000 }, Interval { from_ms: 1_005_000, to_ms: 1_005_000 }]
        );
        assert_eq!(d.changepoints, [1_001_000, 1_005_000]);
        assert_eq!((d.first_ms, d.last_ms, d.rows), (1_000_000, 1_005_000, 5));
        assert_eq!(replay.duration_s(), 5.0);
    }

    #[test]
    fn a_folder_replays_its_good_files_and_names_the_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("skab");
        for sub in ["valve1", "other", "anomaly-free"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(root.join("valve1/0.csv"), FILE).unwrap();
        std::fs::write(root.join("anomaly-free/anomaly-free.csv"), FILE).unwrap();
        // Not the testbed's columns: left out, the rest replayed.
        std::fs::write(root.join("other/1.csv"), "datetime;a;anomaly\n2020-03-09 10:14:33;1;0\n").unwrap();
        let replay = SkabReplay::load(&root, 0).unwrap();
        assert_eq!(replay.devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["skab-valve1-0"]);
        std::fs::remove_file(root.join("valve1/0.csv")).unwrap();
        let e = SkabReplay::load(&root, 0).unwrap_err().to_string();
        assert!(e.contains("other/1.csv:1: missing column `Accelerometer1RMS`"), "{e}");
    }
}
