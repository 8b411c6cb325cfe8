//! Simulated fleets: writing them as files (`impeller sim`), training one model per device class
//! (manufacturer) on healthy history, and scoring what detectors did against the fleet's ground
//! truth (`impeller bench fleet`, and the demo's summary).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use impeller_core::adapter::Adapter;
use impeller_core::detector::{DetectorConfig, PcaConfig};
use impeller_core::gaps::GapPolicy;
use impeller_core::model::Model;
use impeller_core::scorer::Verdict;
use impeller_core::{Channel, Frame, Scorer, TrainConfig, train};
use impeller_sim::{
    DriftKind, FaultKind, Fleet, FleetSpec, MANUFACTURERS, Manufacturer, PumpPlan, SITES, Signal, csv_header, csv_line,
};
use serde::Serialize;

use crate::InputError;
use crate::cli::{FleetArgs, FleetBenchArgs, SimArgs};
use crate::commands::{emit, emit_json};
use crate::simfeed;

pub const HOUR_MS: i64 = 3_600_000;
/// At most this many pumps of a class train its model ([`Class::training_pumps`]).
pub const TRAINING_PUMPS: usize = 24;

/// Writes each pump's readings from `from_ms` to `to_ms` as `DIR/PUMP.csv` (SKAB layout, the
/// manufacturer's names and units, ground-truth labels) and the plan as `DIR/fleet.json`.
pub fn write_fleet(fleet: &Fleet, dir: &Path, from_ms: i64, to_ms: i64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for p in &fleet.pumps {
        let path = dir.join(format!("{}.csv", p.id));
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let sim = fleet.simulate(p, from_ms, to_ms);
        out.write_all(csv_header(&sim.manufacturer()).as_bytes())?;
        for s in sim {
            out.write_all(csv_line(&s).as_bytes())?;
        }
        out.flush().with_context(|| format!("writing {}", path.display()))?;
    }
    let truth = serde_json::to_vec_pretty(fleet)?;
    std::fs::write(dir.join("fleet.json"), truth).with_context(|| format!("writing {}/fleet.json", dir.display()))
}

/// The training configuration for a pump class: PCA over the rolling mean and spread of each
/// channel, windows restarted at the seams between pumps' histories.
pub fn class_train_config() -> TrainConfig {
    let mut cfg = TrainConfig::new(DetectorConfig::Pca(PcaConfig::default()));
    cfg.gaps = GapPolicy { max_time_gap_ms: Some(60_000), ..GapPolicy::default() };
    cfg.features.window = 15;
    cfg.calibration.smoothing = 15;
    cfg.calibration.quantile = 0.999;
    cfg.calibration.margin = 1.5;
    cfg.calibration.debounce = impeller_core::calibration::Debounce { k: 5, n: 8 };
    cfg
}

/// Model frames of one pump, through its manufacturer's adapter (as the agent makes them).
fn pump_frames(fleet: &Fleet, p: &PumpPlan, m: &Manufacturer, from_ms: i64, to_ms: i64) -> Vec<Frame> {
    let channels = m.channels();
    let Ok(mut adapter) = Adapter::new(&m.adapter(), &channels) else { return Vec::new() };
    let columns = m.columns();
    let mut frames = Vec::new();
    for s in fleet.simulate(p, from_ms, to_ms) {
        if let Some((ts_ms, values)) = adapter.push(s.ts_ms, columns.iter().copied().zip(s.values.iter().copied())) {
            frames.push(Frame { ts_ms, values });
        }
    }
    frames
}

/// A device class: one manufacturer's pumps at one site. Pooling sites would teach the model
/// that a motor at 130 °C is normal because the hottest site's motors run warm; one class per
/// operating environment keeps "normal" tight (measured in docs/BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Class {
    pub manufacturer: Manufacturer,
    /// `None`: every site pooled (for comparison: `impeller bench fleet --pool-sites`).
    pub site: Option<&'static str>,
}

impl Class {
    /// Every class that has pumps in the fleet.
    pub fn all(fleet: &Fleet, pool_sites: bool) -> Vec<Class> {
        let sites: Vec<Option<&'static str>> =
            if pool_sites { vec![None] } else { SITES.iter().map(|s| Some(s.name)).collect() };
        let mut out = Vec::new();
        for manufacturer in MANUFACTURERS {
            for &site in &sites {
                let c = Class { manufacturer, site };
                if fleet.pumps.iter().any(|p| c.contains(p)) {
                    out.push(c);
                }
            }
        }
        out
    }

    pub fn contains(&self, p: &PumpPlan) -> bool {
        p.manufacturer == self.manufacturer.name && self.site.is_none_or(|s| p.site == s)
    }

    /// The pumps whose history trains and validates the class's model: all of them up to
    /// [`TRAINING_PUMPS`], else that many spread evenly over the class (a 1,000-pump fleet has
    /// over 100 per class, and training on every one's history would take minutes per class).
    pub fn training_pumps<'a>(&self, fleet: &'a Fleet) -> Vec<&'a PumpPlan> {
        let all: Vec<&PumpPlan> = fleet.pumps.iter().filter(|p| self.contains(p)).collect();
        if all.len() <= TRAINING_PUMPS {
            return all;
        }
        (0..TRAINING_PUMPS).map(|i| all[i * all.len() / TRAINING_PUMPS]).collect()
    }

    /// `acme-gulf`, or `acme` for all sites.
    pub fn name(&self) -> String {
        match self.site {
            Some(site) => format!("{}-{site}", self.manufacturer.name),
            None => self.manufacturer.name.to_string(),
        }
    }

    /// The deployment target condition that selects this class's devices.
    pub fn target_condition(&self) -> String {
        let m = format!("tags.manufacturer = '{}'", self.manufacturer.name);
        match self.site {
            Some(site) => format!("{m} AND tags.site = '{site}'"),
            None => m,
        }
    }
}

/// Trains one model for a class on its training pumps' history in `[from_ms, to_ms)`, one pump after
/// another (shifted in time, so rolling windows restart between them). Returns the model and
/// the frames it was trained on (for the package's self-test and drift reference).
pub fn train_class(
    fleet: &Fleet,
    class: &Class,
    from_ms: i64,
    to_ms: i64,
    seed: u64,
) -> anyhow::Result<(Model, Vec<Frame>)> {
    let m = &class.manufacturer;
    let mut frames: Vec<Frame> = Vec::new();
    let span = to_ms - from_ms + HOUR_MS;
    for (i, p) in class.training_pumps(fleet).into_iter().enumerate() {
        let shift = span * i as i64;
        frames.extend(pump_frames(fleet, p, m, from_ms, to_ms).into_iter().map(|mut f| {
            f.ts_ms += shift;
            f
        }));
    }
    let mut cfg = class_train_config();
    cfg.seed = seed;
    let channels: Vec<Channel> = m.channels();
    let model = train(&channels, &frames, &cfg).with_context(|| format!("training the {} model", class.name()))?;
    Ok((model, frames))
}

/// The class's model scored frame by frame, as the device would, on each of its training pumps' healthy
/// `[from_ms, to_ms)`: the false alarms the hub then holds each device to.
pub fn validate_class(
    fleet: &Fleet,
    class: &Class,
    model: &Model,
    from_ms: i64,
    to_ms: i64,
) -> impeller_pipeline::evaluate::Evaluation {
    use impeller_pipeline::evaluate::{ValidationPart, evaluate};
    let parts: Vec<(String, Vec<Frame>, Vec<bool>)> = class
        .training_pumps(fleet)
        .into_iter()
        .map(|p| {
            let frames = pump_frames(fleet, p, &class.manufacturer, from_ms, to_ms);
            let labels = vec![false; frames.len()];
            (p.id.clone(), frames, labels)
        })
        .collect();
    let parts: Vec<ValidationPart<'_>> = parts
        .iter()
        .map(|(name, frames, labels)| ValidationPart { name, frames, labels, skip: model.features.window })
        .collect();
    evaluate(model, &parts)
}

/// When each alarm episode of a pump began, scoring `[from_ms, to_ms)` frame by frame.
pub fn alarm_starts(
    fleet: &Fleet,
    p: &PumpPlan,
    m: &Manufacturer,
    model: &Model,
    from_ms: i64,
    to_ms: i64,
) -> Vec<i64> {
    let mut scorer = Scorer::new(std::sync::Arc::new(model.clone()));
    let mut starts = Vec::new();
    let mut in_alarm = false;
    for f in pump_frames(fleet, p, m, from_ms, to_ms) {
        if let Verdict::Scored(s) = scorer.push(f.ts_ms, &f.values) {
            if s.alarm && !in_alarm {
                starts.push(f.ts_ms);
            }
            in_alarm = s.alarm;
        }
    }
    starts
}

/// What one pump's alerts mean against the ground truth.
#[derive(Debug, Clone, Serialize)]
pub struct PumpOutcome {
    pub pump: String,
    pub manufacturer: String,
    pub site: String,
    pub fault: Option<FaultKind>,
    /// Alert after the onset: how long after it, in seconds.
    pub delay_s: Option<f64>,
    /// Alerts that began while the pump was healthy.
    pub false_alarms: usize,
    /// Healthy time observed, in hours (for false alarms per pump-day).
    pub healthy_h: f64,
}

/// Scores alert start times (per pump id) against the fleet's ground truth over
/// `[from_ms, to_ms)`.
pub fn outcomes(fleet: &Fleet, alerts: &BTreeMap<String, Vec<i64>>, from_ms: i64, to_ms: i64) -> Vec<PumpOutcome> {
    fleet
        .pumps
        .iter()
        .map(|p| {
            let fault = p.faults.first();
            let onset = fault.map_or(i64::MAX, |f| f.onset_ms);
            let starts = alerts.get(&p.id).map(Vec::as_slice).unwrap_or_default();
            let in_window = |t: &&i64| (from_ms..to_ms).contains(*t);
            PumpOutcome {
                pump: p.id.clone(),
                manufacturer: p.manufacturer.clone(),
                site: p.site.clone(),
                fault: fault.map(|f| f.kind),
                delay_s: starts.iter().filter(in_window).find(|&&t| t >= onset).map(|t| (t - onset) as f64 / 1000.0),
                false_alarms: starts.iter().filter(in_window).filter(|&&t| t < onset).count(),
                healthy_h: (onset.min(to_ms) - from_ms).max(0) as f64 / HOUR_MS as f64,
            }
        })
        .collect()
}

/// Per fault class: pumps, detected, median delay; and false alarms per pump-day overall.
#[derive(Debug, Clone, Serialize)]
pub struct ClassSummary {
    pub fault: String,
    pub pumps: usize,
    pub detected: usize,
    pub median_delay_min: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub classes: Vec<ClassSummary>,
    pub false_alarms: usize,
    pub healthy_pump_days: f64,
    pub false_alarms_per_pump_day: f64,
    /// False alarms per device class (`acme-gulf`: manufacturer and site, one model each).
    pub device_classes: Vec<FalseAlarms>,
}

/// False alarms on a device class's pumps while they were healthy.
#[derive(Debug, Clone, Serialize)]
pub struct FalseAlarms {
    pub class: String,
    pub pumps: usize,
    pub false_alarms: usize,
    pub healthy_pump_days: f64,
    pub per_pump_day: f64,
}

impl FalseAlarms {
    fn of<'a>(class: String, outcomes: impl Iterator<Item = &'a PumpOutcome>) -> FalseAlarms {
        let (mut pumps, mut false_alarms, mut healthy_h) = (0, 0, 0.0);
        for o in outcomes {
            pumps += 1;
            false_alarms += o.false_alarms;
            healthy_h += o.healthy_h;
        }
        let healthy_pump_days = healthy_h / 24.0;
        let per_pump_day = if healthy_pump_days > 0.0 { false_alarms as f64 / healthy_pump_days } else { 0.0 };
        FalseAlarms { class, pumps, false_alarms, healthy_pump_days, per_pump_day }
    }
}

pub fn summarise(outcomes: &[PumpOutcome]) -> Summary {
    let mut classes = Vec::new();
    for kind in FaultKind::ALL {
        let of: Vec<&PumpOutcome> = outcomes.iter().filter(|o| o.fault == Some(kind)).collect();
        if of.is_empty() {
            continue;
        }
        let mut delays: Vec<f64> = of.iter().filter_map(|o| o.delay_s).collect();
        delays.sort_by(f64::total_cmp);
        classes.push(ClassSummary {
            fault: kind.name().to_string(),
            pumps: of.len(),
            detected: delays.len(),
            median_delay_min: (!delays.is_empty()).then(|| delays[delays.len() / 2] / 60.0),
        });
    }
    let all = FalseAlarms::of(String::new(), outcomes.iter());
    let mut by_class: BTreeMap<String, Vec<&PumpOutcome>> = BTreeMap::new();
    for o in outcomes {
        by_class.entry(format!("{}-{}", o.manufacturer, o.site)).or_default().push(o);
    }
    let device_classes = by_class.into_iter().map(|(name, of)| FalseAlarms::of(name, of.into_iter())).collect();
    Summary {
        classes,
        false_alarms: all.false_alarms,
        healthy_pump_days: all.healthy_pump_days,
        false_alarms_per_pump_day: all.per_pump_day,
        device_classes,
    }
}

/// The summary as a table.
pub fn write_summary(out: &mut dyn Write, s: &Summary) -> std::io::Result<()> {
    writeln!(out, "{:<20} {:>6} {:>9} {:>18}", "fault", "pumps", "detected", "median delay (min)")?;
    for c in &s.classes {
        let delay = c.median_delay_min.map_or("-".to_string(), |d| format!("{d:.1}"));
        writeln!(out, "{:<20} {:>6} {:>9} {:>18}", c.fault, c.pumps, c.detected, delay)?;
    }
    writeln!(
        out,
        "false alarms: {} in {:.1} healthy pump-days ({:.2} per pump-day)",
        s.false_alarms, s.healthy_pump_days, s.false_alarms_per_pump_day
    )?;
    let per_class: Vec<String> =
        s.device_classes.iter().map(|c| format!("{} {:.2} ({} pumps)", c.class, c.per_pump_day, c.pumps)).collect();
    writeln!(out, "false alarms per pump-day by device class: {}", per_class.join(", "))
}

/// `--sensor-ageing`: a pressure transmitter's zero creeping up, the classic slow drift of a
/// process instrument (its ramp is unused: ageing grows for as long as the run).
const SENSOR_AGEING: DriftKind = DriftKind::SensorAgeing { signal: Signal::DischargePressure, per_hour: 0.05 };

impl FleetArgs {
    /// Every site drift flag, given or not: (flag, its name in a summary, its site, the drift,
    /// its ramp in seconds). `rest_s`: the run's time from the drifts' onset to its end, over
    /// which the season turns.
    fn drift_flags(&self, rest_s: f64) -> [(&'static str, &'static str, Option<&str>, DriftKind, f64); 4] {
        [
            ("--heat-wave", "heat wave", self.heat_wave.as_deref(), DriftKind::AmbientShift { delta_c: 10.0 }, 3600.0),
            ("--season", "warming season", self.season.as_deref(), DriftKind::AmbientShift { delta_c: 8.0 }, rest_s),
            ("--sensor-ageing", "sensor ageing", self.sensor_ageing.as_deref(), SENSOR_AGEING, 0.0),
            (
                "--operating-point",
                "new operating point",
                self.operating_point.as_deref(),
                DriftKind::OperatingPoint { speed_rpm: 2650.0 },
                600.0,
            ),
        ]
    }

    /// The drifts asked for, each named as a summary speaks of it ("heat wave") with its site.
    pub fn site_drifts(&self) -> Vec<(&'static str, &str)> {
        self.drift_flags(0.0).into_iter().filter_map(|(_, name, site, _, _)| Some((name, site?))).collect()
    }
}

/// The fleet plan for these flags: readings from `start_ms` for `hours`, faults between the
/// given fractions of that span.
pub fn plan(args: &FleetArgs, start_ms: i64, hours: f64, faults_between: (f64, f64)) -> anyhow::Result<Fleet> {
    if !(0.0..=1.0).contains(&args.faulty_share) {
        return Err(InputError(format!("--faulty-share {}: must be between 0 and 1", args.faulty_share)).into());
    }
    if !(hours > 0.0 && hours <= 24.0 * 366.0) {
        return Err(InputError(format!("--hours {hours}: must be above 0 and at most a year")).into());
    }
    if args.pumps == 0 || args.pumps > 100_000 {
        return Err(InputError(format!("--pumps {}: must be 1 to 100000", args.pumps)).into());
    }
    let duration_s = (hours * 3600.0) as u64;
    let at = |f: f64| (duration_s as f64 * f) as u64;
    let mut site_drifts = Vec::new();
    for (flag, _, site, kind, ramp_s) in args.drift_flags(duration_s.saturating_sub(at(faults_between.0)) as f64) {
        let Some(site) = site else { continue };
        if !SITES.iter().any(|s| s.name == site) {
            let names: Vec<&str> = SITES.iter().map(|s| s.name).collect();
            return Err(InputError(format!("{flag} {site}: no such site (sites: {})", names.join(", "))).into());
        }
        site_drifts.push((site.to_string(), kind, at(faults_between.0), ramp_s));
    }
    Ok(Fleet::plan(&FleetSpec {
        pumps: args.pumps,
        seed: args.seed,
        start_ms,
        duration_s,
        faulty_share: args.faulty_share,
        faults_between_s: (at(faults_between.0), at(faults_between.1)),
        site_drifts,
    }))
}

fn parse_fractions(text: &str) -> anyhow::Result<(f64, f64)> {
    let bad = || InputError(format!("--faults-between {text}: expected FROM,TO with 0 ≤ FROM ≤ TO ≤ 1"));
    let (a, b) = text.split_once(',').ok_or_else(bad)?;
    let (a, b): (f64, f64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if !(0.0 <= a && a <= b && b <= 1.0) {
        return Err(bad().into());
    }
    Ok((a, b))
}

/// Whole hours, so that files from two runs line up.
fn this_hour_ms() -> i64 {
    let now = impeller_hub::store::now_ms();
    now - now.rem_euclid(HOUR_MS)
}

pub fn sim(args: SimArgs) -> anyhow::Result<()> {
    if let Some(path) = args.skab.clone() {
        if args.mqtt.is_none() && args.modbus.is_none() {
            return Err(InputError(
                "--skab replays the files live: add --mqtt URL or --modbus HOST:PORT (the files themselves are the CSV)"
                    .into(),
            )
            .into());
        }
        return sim_skab(args, &path);
    }
    let between = parse_fractions(&args.faults_between)?;
    if args.mqtt.is_some() || args.modbus.is_some() {
        return sim_live(args, between);
    }
    let fleet = plan(&args.fleet, this_hour_ms(), args.hours, between)?;
    write_fleet(&fleet, &args.out, fleet.start_ms, fleet.end_ms)?;
    let faulty = fleet.pumps.iter().filter(|p| !p.faults.is_empty()).count();
    emit(|out| {
        writeln!(
            out,
            "wrote {} pumps ({} with a fault) over {} h to {} (ground truth in fleet.json)",
            fleet.pumps.len(),
            faulty,
            args.hours,
            args.out.display()
        )?;
        for m in MANUFACTURERS {
            writeln!(out, "  {} {}: every {} ms, columns {}", m.name, m.model, m.sample_ms, m.columns().join(", "))?;
        }
        Ok(())
    })
}

/// `impeller sim --mqtt | --modbus`: the fleet from now, served live until its end or Ctrl-C.
fn sim_live(args: SimArgs, between: (f64, f64)) -> anyhow::Result<()> {
    let start_ms = impeller_hub::store::now_ms();
    let fleet = plan(&args.fleet, start_ms, args.hours, between)?;
    let live = simfeed::Live::from_args(&args, start_ms)?;
    live.write_truth("fleet.json", &fleet)?;
    let about = format!("{} pumps ({} simulated hours)", fleet.pumps.len(), args.hours);
    live.serve(&simfeed::fleet_devices(&fleet)?, || simfeed::fleet_streams(&fleet), args.hours * 3600.0, &about)
}

/// `impeller sim --skab PATH --mqtt | --modbus`: SKAB files replayed live from now.
fn sim_skab(args: SimArgs, path: &Path) -> anyhow::Result<()> {
    let start_ms = impeller_hub::store::now_ms();
    let replay = crate::skabfeed::SkabReplay::load(path, start_ms)?;
    let live = simfeed::Live::from_args(&args, start_ms)?;
    live.write_truth("skab.json", &replay.truth(args.speed))?;
    let n = replay.devices.len();
    let about = format!("{n} SKAB file{} from {}", if n == 1 { "" } else { "s" }, path.display());
    live.serve(&replay.devices, || replay.streams(), replay.duration_s(), &about)
}

#[derive(Debug, Serialize)]
struct FleetReport {
    summary: Summary,
    pumps: Vec<PumpOutcome>,
}

pub fn bench(args: FleetBenchArgs) -> anyhow::Result<()> {
    let train_ms = (args.train_hours * 3600.0 * 1000.0) as i64;
    if train_ms <= 0 {
        return Err(InputError(format!("--train-hours {}: must be above 0", args.train_hours)).into());
    }
    let start = this_hour_ms();
    let fleet = plan(&args.fleet, start, args.hours, (0.25, 0.75))?;
    let mut alerts = BTreeMap::new();
    for class in Class::all(&fleet, args.pool_sites) {
        let (model, _) = train_class(&fleet, &class, start - train_ms, start, args.fleet.seed)?;
        for p in fleet.pumps.iter().filter(|p| class.contains(p)) {
            alerts.insert(p.id.clone(), alarm_starts(&fleet, p, &class.manufacturer, &model, start, fleet.end_ms));
        }
    }
    let pumps = outcomes(&fleet, &alerts, start, fleet.end_ms);
    let summary = summarise(&pumps);
    if args.json {
        return emit_json(&FleetReport { summary, pumps });
    }
    emit(|out| {
        if args.per_pump {
            for o in &pumps {
                let fault = o.fault.map_or("-", FaultKind::name);
                let delay = o.delay_s.map_or("-".to_string(), |d| format!("{:.1} min", d / 60.0));
                writeln!(
                    out,
                    "{} {:<9} {:<10} {:<19} delay {:<10} false alarms {}",
                    o.pump, o.manufacturer, o.site, fault, delay, o.false_alarms
                )?;
            }
        }
        write_summary(out, &summary)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pumps: usize) -> FleetArgs {
        FleetArgs {
            pumps,
            seed: 7,
            faulty_share: 0.5,
            heat_wave: None,
            season: None,
            sensor_ageing: None,
            operating_point: None,
        }
    }

    fn fleet(pumps: usize) -> Fleet {
        plan(&args(pumps), 0, 6.0, (0.3, 0.7)).unwrap()
    }

    #[test]
    fn the_season_warms_a_site_evenly_over_the_rest_of_the_run() {
        let with = plan(&FleetArgs { season: Some("gulf".into()), ..args(12) }, 0, 6.0, (0.5, 1.0)).unwrap();
        let without = plan(&args(12), 0, 6.0, (0.5, 1.0)).unwrap();
        let pump = with.pumps.iter().find(|p| p.site == "gulf" && p.manufacturer == "kestrel").unwrap();
        let twin = without.pumps.iter().find(|p| p.id == pump.id).unwrap();
        // Kestrel's bearing temperature: it follows the air (and the motor, which the air cools)
        // within minutes; half the run in, the season has not begun to turn.
        let column = Manufacturer::by_name(&pump.manufacturer).unwrap().columns().iter().position(|c| *c == "BearingT");
        let column = column.unwrap();
        // One run each from the second hour, so that the temperatures carry their history.
        let run = |f: &Fleet, p: &PumpPlan| -> Vec<(i64, f64)> {
            f.simulate(p, 2 * 3_600_000, 6 * 3_600_000).map(|s| (s.ts_ms, s.values[column])).collect()
        };
        let (hot, plain) = (run(&with, pump), run(&without, twin));
        let warmer = |h: f64| {
            let near = |t: i64| ((t as f64 / 3_600_000.0) - h).abs() < 0.1;
            let mean = |r: &[(i64, f64)]| {
                let v: Vec<f64> = r.iter().filter(|(t, _)| near(*t)).map(|(_, v)| *v).collect();
                v.iter().sum::<f64>() / v.len() as f64
            };
            mean(&hot) - mean(&plain)
        };
        assert!(warmer(2.5).abs() < 0.05, "{}", warmer(2.5));
        // 8 °C over the three hours left (the bearing takes a tenth more, through the motor's
        // cooling air): about a third an hour in, nearly all at the end.
        let (mid, end) = (warmer(4.0), warmer(5.8));
        assert!((1.5..3.5).contains(&mid) && (6.5..9.0).contains(&end), "{mid} then {end}");
    }

    #[test]
    fn false_alarms_are_counted_per_device_class_over_its_healthy_time() {
        let pump = |id: &str, manufacturer: &str, site: &str, false_alarms: usize, healthy_h: f64| PumpOutcome {
            pump: id.into(),
            manufacturer: manufacturer.into(),
            site: site.into(),
            fault: None,
            delay_s: None,
            false_alarms,
            healthy_h,
        };
        let s = summarise(&[
            pump("p1", "acme", "gulf", 3, 24.0),
            pump("p2", "acme", "gulf", 1, 24.0),
            pump("p3", "acme", "permian", 0, 12.0),
            pump("p4", "kestrel", "gulf", 2, 48.0),
        ]);
        let got: Vec<(&str, usize, usize, f64)> =
            s.device_classes.iter().map(|c| (c.class.as_str(), c.pumps, c.false_alarms, c.per_pump_day)).collect();
        assert_eq!(got, [("acme-gulf", 2, 4, 2.0), ("acme-permian", 1, 0, 0.0), ("kestrel-gulf", 1, 2, 1.0)]);
        assert_eq!((s.false_alarms, s.healthy_pump_days), (6, 4.5));
    }

    #[test]
    fn a_large_class_trains_on_an_even_spread_of_its_pumps_and_a_small_one_on_all() {
        let big = fleet(1000);
        for class in Class::all(&big, false) {
            let members: Vec<&str> = big.pumps.iter().filter(|p| class.contains(p)).map(|p| p.id.as_str()).collect();
            let chosen: Vec<&str> = class.training_pumps(&big).iter().map(|p| p.id.as_str()).collect();
            assert_eq!(chosen.len(), TRAINING_PUMPS, "{}", class.name());
            assert!(chosen.iter().all(|id| members.contains(id)), "{}: only its own pumps", class.name());
            assert!(chosen.windows(2).all(|w| w[0] < w[1]), "{}: no pump twice", class.name());
            assert!(
                chosen.last() > members.get(members.len() / 2),
                "{}: the spread reaches the class's far half",
                class.name()
            );
        }
        let small = fleet(24);
        for class in Class::all(&small, false) {
            assert_eq!(class.training_pumps(&small).len(), small.pumps.iter().filter(|p| class.contains(p)).count());
        }
    }
}
