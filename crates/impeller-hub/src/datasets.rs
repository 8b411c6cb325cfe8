//! Dataset snapshots from what the fleet sent: the raw samples of the selected devices over a
//! time range, one part per device, labelled by the incidents recorded for them, written as a
//! content-addressed dataset (`impeller_pipeline::dataset`) in the hub's datasets folder.
//!
//! A snapshot resolves its selection when it is made (which devices, which channels, which time
//! range) and records it, so the same selection over the same stored data gives the same hash.

use std::collections::BTreeMap;
use std::path::Path;

use impeller_core::deploy::{Condition, DeviceFacts};
use impeller_core::package::{Limits, read_unverified};
use impeller_core::wire::SamplesBody;
use impeller_core::{Channel, Frame};
use impeller_pipeline::dataset::{Dataset, Manifest, Part};
use serde::{Deserialize, Serialize};

use crate::store::TelemetryQueries;
use crate::store::{
    ArtifactStore, CONFIRMED_FAULT, DatasetRecord, FeedbackStore, FleetStore, Store, StoreError, now_ms,
};

/// Most rows one snapshot may hold (about 1 GiB of frames in memory at 60 channels).
pub const MAX_ROWS: usize = 2_000_000;
/// Longest time one samples batch is taken to span.
const BATCH_SPAN_MS: i64 = 86_400_000;

/// What to snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// Devices by target condition over tags and profile (`tags.site = 'gulf'`, `*` for all).
    pub condition: String,
    /// Channels in this order; empty: those of the first device's first samples.
    #[serde(default)]
    pub channels: Vec<String>,
    pub since_ms: i64,
    /// End of the range (exclusive); default: now, fixed in the recorded selection.
    #[serde(default)]
    pub until_ms: Option<i64>,
    /// Label rows with the devices' incidents (every part is then labelled).
    #[serde(default)]
    pub label_incidents: bool,
    /// Leave out the rows inside the devices' incidents (training data of normal running).
    #[serde(default)]
    pub exclude_incidents: bool,
    /// Leave out a device's rows from its first confirmed fault in the range on: the fault
    /// lasts until repaired, the incident spans only the alert a technician confirmed.
    #[serde(default)]
    pub exclude_after_confirmed_fault: bool,
    /// A dataset at the hub (its sha256) whose parts the snapshot carries too, as `base/PART`:
    /// a retraining on the champion's training data plus the recent window.
    #[serde(default)]
    pub base_dataset: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the dataset: {0}")]
    Write(String),
}

/// Makes (or finds, when its content exists already) the snapshot; returns its manifest.
pub async fn snapshot(
    store: &Store,
    artifacts: &crate::artifacts::Artifacts,
    datasets_dir: &Path,
    req: &SnapshotRequest,
    actor: &str,
) -> Result<Manifest, SnapshotError> {
    let condition = Condition::parse(&req.condition).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    let until_ms = req.until_ms.unwrap_or_else(now_ms);
    if until_ms <= req.since_ms {
        return Err(SnapshotError::Invalid("until_ms must be after since_ms".into()));
    }
    let devices: Vec<String> = store
        .devices()
        .await?
        .into_iter()
        .filter(|d| condition.matches(&DeviceFacts { id: &d.id, profile: &d.profile, tags: &d.tags }))
        .map(|d| d.id)
        .collect();
    if devices.is_empty() {
        return Err(SnapshotError::Invalid(format!("no device matches `{}`", req.condition)));
    }
    let units = units_of(store, artifacts).await?;
    let mut channels: Vec<String> = req.channels.clone();
    let mut parts = Vec::new();
    let mut rows = 0usize;
    for device in &devices {
        // A samples message is stamped when its batch fills, so its frames are at or before
        // its time: a batch ending after `until_ms` (by up to a day) may still hold some.
        let bodies = store.samples(device, req.since_ms, until_ms.saturating_add(BATCH_SPAN_MS), MAX_ROWS + 1).await?;
        let incidents = if req.label_incidents || req.exclude_incidents || req.exclude_after_confirmed_fault {
            store.incidents(Some(device), req.since_ms, until_ms).await?
        } else {
            Vec::new()
        };
        let in_incident = |ts: i64| incidents.iter().any(|i| i.start_ms <= ts && ts < i.end_ms);
        let faulty_from = incidents.iter().filter(|i| i.kind == CONFIRMED_FAULT).map(|i| i.start_ms).min();
        let excluded = |ts: i64| {
            (req.exclude_incidents && in_incident(ts))
                || (req.exclude_after_confirmed_fault && faulty_from.is_some_and(|from| ts >= from))
        };
        let mut frames: Vec<Frame> = Vec::new();
        for (_, body) in bodies {
            // Ingest checked the envelope, not the body: one that does not parse is skipped.
            let Ok(s) = serde_json::from_str::<SamplesBody>(&body) else { continue };
            if channels.is_empty() {
                channels = s.channels.clone();
            }
            let index: Vec<Option<usize>> = channels.iter().map(|c| s.channels.iter().position(|n| n == c)).collect();
            for f in s.frames {
                if frames.last().is_some_and(|l| l.ts_ms >= f.ts_ms)
                    || f.ts_ms < req.since_ms
                    || f.ts_ms >= until_ms
                    || excluded(f.ts_ms)
                {
                    continue;
                }
                // Counted as they come, so that one busy device cannot fill the memory first.
                rows += 1;
                if rows > MAX_ROWS {
                    return Err(SnapshotError::Invalid(format!(
                        "more than {MAX_ROWS} rows: narrow the devices or the time range"
                    )));
                }
                let values = index
                    .iter()
                    .map(|i| i.and_then(|i| f.values.get(i).copied().flatten()).unwrap_or(f64::NAN))
                    .collect();
                frames.push(Frame { ts_ms: f.ts_ms, values });
            }
        }
        if frames.is_empty() {
            continue;
        }
        // Agents send runs of consecutive frames: each run is a part of its own (named
        // `device#0`, `device#1`, … when there are several), so no rolling window spans a gap;
        // validation still judges the device as one (`dataset::source_of`).
        let runs = split_runs(frames);
        let several = runs.len() > 1;
        for (k, frames) in runs.into_iter().enumerate() {
            let labels = req.label_incidents.then(|| frames.iter().map(|f| in_incident(f.ts_ms)).collect());
            let name = if several { impeller_pipeline::dataset::run_name(device, k) } else { device.clone() };
            parts.push(Part { name, frames, labels });
        }
    }
    if parts.is_empty() {
        return Err(SnapshotError::Invalid(format!(
            "the {} matching devices sent no samples in that time range",
            devices.len()
        )));
    }
    if let Some(base) = &req.base_dataset {
        rows += carry_base(datasets_dir, base, &channels, req.label_incidents, MAX_ROWS - rows, &mut parts)?;
    }
    let channels: Vec<Channel> =
        channels.iter().map(|c| Channel::new(c.clone(), units.get(c).cloned().unwrap_or_default())).collect();
    let dataset = Dataset::new(channels, parts).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    let selection = serde_json::json!({
        "condition": req.condition,
        "devices": dataset.parts.iter().map(|p| &p.name).collect::<Vec<_>>(),
        "channels": dataset.channels,
        "since_ms": req.since_ms,
        "until_ms": until_ms,
        "label_incidents": req.label_incidents,
        "exclude_incidents": req.exclude_incidents,
        "exclude_after_confirmed_fault": req.exclude_after_confirmed_fault,
        "base_dataset": req.base_dataset,
    });
    let source = format!("hub snapshot: {} from {} to {}", req.condition, req.since_ms, until_ms);
    let dir = datasets_dir.to_path_buf();
    let written = dataset.clone();
    let sha = tokio::task::spawn_blocking(move || written.write(&dir, &source))
        .await
        .map_err(|e| SnapshotError::Write(e.to_string()))?
        .map_err(|e| SnapshotError::Write(e.to_string()))?;
    let record = DatasetRecord {
        sha256: sha.clone(),
        selection,
        parts: dataset.parts.len() as u64,
        rows: rows as u64,
        created_by: actor.to_string(),
        created_ms: now_ms(),
    };
    store.put_dataset(&record).await?;
    impeller_pipeline::dataset::read_manifest(datasets_dir, &sha).map_err(|e| SnapshotError::Write(e.to_string()))
}

/// Appends the parts of the dataset `base` (in the hub's datasets folder) to `parts` as
/// `base/PART`, its columns in the order of `channels`; labelled normal where the snapshot is
/// labelled and the base is not. At most `budget` rows: beyond it each part keeps the same
/// share of its latest rows, so that retraining on retraining cannot outgrow a snapshot.
/// Returns the rows carried.
fn carry_base(
    datasets_dir: &Path,
    base: &str,
    channels: &[String],
    labelled: bool,
    budget: usize,
    parts: &mut Vec<Part>,
) -> Result<usize, SnapshotError> {
    let (dataset, _) =
        Dataset::read(datasets_dir, base).map_err(|e| SnapshotError::Invalid(format!("base dataset {base}: {e}")))?;
    let dataset = dataset
        .select_channels(channels)
        .map_err(|e| SnapshotError::Invalid(format!("base dataset {base} lacks a channel of the snapshot: {e}")))?;
    let total: usize = dataset.parts.iter().map(|p| p.frames.len()).sum();
    let mut rows = 0;
    for mut p in dataset.parts {
        let keep = if total > budget { p.frames.len() * budget / total } else { p.frames.len() };
        let drop = p.frames.len() - keep;
        p.frames.drain(..drop);
        let labels = match p.labels {
            Some(mut l) if labelled => {
                l.drain(..drop);
                Some(l)
            }
            _ if labelled => Some(vec![false; keep]),
            _ => None,
        };
        if keep > 0 {
            rows += keep;
            parts.push(Part { name: format!("base/{}", p.name), frames: p.frames, labels });
        }
    }
    Ok(rows)
}

/// Splits frames at gaps longer than five times their median spacing (and a second).
pub fn split_runs(frames: Vec<Frame>) -> Vec<Vec<Frame>> {
    let mut steps: Vec<i64> = frames.windows(2).map(|w| w[1].ts_ms - w[0].ts_ms).collect();
    if steps.is_empty() {
        return vec![frames];
    }
    steps.sort_unstable();
    let gap = (steps[steps.len() / 2].saturating_mul(5)).max(1000);
    let mut runs: Vec<Vec<Frame>> = vec![Vec::new()];
    for f in frames {
        if let Some(last) = runs.last().and_then(|r| r.last())
            && f.ts_ms - last.ts_ms > gap
        {
            runs.push(Vec::new());
        }
        if let Some(run) = runs.last_mut() {
            run.push(f);
        }
    }
    runs
}

/// Units of every channel some stored package's model has, by channel name: samples carry the
/// model's channel names, not their units.
async fn units_of(
    store: &Store,
    artifacts: &crate::artifacts::Artifacts,
) -> Result<BTreeMap<String, String>, StoreError> {
    let mut units = BTreeMap::new();
    for p in store.packages().await? {
        let Ok(Some(bytes)) = artifacts.get(&p.sha256).await else { continue };
        if let Ok((manifest, _)) = read_unverified(&bytes, Limits::default()) {
            for c in manifest.channels {
                units.entry(c.name).or_insert(c.unit);
            }
        }
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_gaps_only() {
        let f = |t: i64| Frame { ts_ms: t, values: vec![] };
        let frames: Vec<Frame> = [0, 100, 200, 300, 10_000, 10_100, 10_200, 10_350].into_iter().map(f).collect();
        let runs = split_runs(frames);
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4]);
        let steady: Vec<Frame> = (0..10).map(|i| f(i * 1000)).collect();
        assert_eq!(split_runs(steady).len(), 1, "a second's spacing is no gap");
        assert_eq!(split_runs(vec![f(5)]).len(), 1);
    }
}
