//! A fleet: pumps across sites and manufacturers, each with its own design, operating point,
//! process noise, faults and drifts, all drawn from one seed. The plan is the ground truth:
//! it says when each fault began and each drift set in, so what a detector did can be scored.

use impeller_core::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::pump::{Conditions, Degradation, Pump, PumpDesign};
use crate::vendor::{MANUFACTURERS, Manufacturer, Signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Cavitation,
    BearingWear,
    SealLeak,
    ImpellerImbalance,
    BlockedValve,
    MotorOverheating,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Cavitation,
        FaultKind::BearingWear,
        FaultKind::SealLeak,
        FaultKind::ImpellerImbalance,
        FaultKind::BlockedValve,
        FaultKind::MotorOverheating,
    ];

    /// How long the fault takes from onset to its full extent: a strainer clogs over hours, an
    /// impeller loses a piece at once.
    pub fn ramp_s(self) -> f64 {
        match self {
            FaultKind::Cavitation => 2.0 * 3600.0,
            FaultKind::BearingWear => 3.0 * 3600.0,
            FaultKind::SealLeak => 3600.0,
            FaultKind::ImpellerImbalance => 60.0,
            FaultKind::BlockedValve => 1800.0,
            FaultKind::MotorOverheating => 3600.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Cavitation => "cavitation",
            FaultKind::BearingWear => "bearing_wear",
            FaultKind::SealLeak => "seal_leak",
            FaultKind::ImpellerImbalance => "impeller_imbalance",
            FaultKind::BlockedValve => "blocked_valve",
            FaultKind::MotorOverheating => "motor_overheating",
        }
    }

    fn apply(self, level: f64, d: &mut Degradation) {
        let slot = match self {
            FaultKind::Cavitation => &mut d.suction_clog,
            FaultKind::BearingWear => &mut d.bearing_wear,
            FaultKind::SealLeak => &mut d.seal_leak,
            FaultKind::ImpellerImbalance => &mut d.imbalance,
            FaultKind::BlockedValve => &mut d.valve_block,
            FaultKind::MotorOverheating => &mut d.cooling_loss,
        };
        *slot = slot.max(level);
    }
}

/// A fault: absent before `onset_ms`, growing linearly to its full extent over the kind's ramp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    pub onset_ms: i64,
}

/// Change that is not a fault: a model should learn it, not alarm on it forever.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DriftKind {
    /// The site's ambient temperature moves (a heat wave, the season turning).
    AmbientShift { delta_c: f64 },
    /// A sensor's reading gains a bias that grows with time.
    SensorAgeing { signal: Signal, per_hour: f64 },
    /// The process runs the pump at another speed from now on.
    OperatingPoint { speed_rpm: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    #[serde(flatten)]
    pub kind: DriftKind,
    pub onset_ms: i64,
    /// Time to reach the full change (ageing keeps growing after it).
    pub ramp_s: f64,
}

impl Drift {
    fn level(&self, t_ms: i64) -> f64 {
        ramp(t_ms, self.onset_ms, self.ramp_s)
    }

    /// How far a first-order lag with time constant `tau_s` has followed the drift: the ramp's
    /// response is the difference of two responses to an unending ramp, r(u) = u − τ(1 − e^(−u/τ)),
    /// one from the onset and one from the ramp's end.
    fn lagged_level(&self, t_ms: i64, tau_s: f64) -> f64 {
        let u = (t_ms - self.onset_ms) as f64 / 1000.0;
        let from_onset = |u: f64| if u <= 0.0 { 0.0 } else { u - tau_s * (1.0 - libm::exp(-u / tau_s)) };
        if self.ramp_s < 1.0 {
            // A step: the ramps' difference would lose its digits.
            return if u <= 0.0 { 0.0 } else { 1.0 - libm::exp(-u / tau_s) };
        }
        (from_onset(u) - from_onset(u - self.ramp_s)) / self.ramp_s
    }
}

/// How slowly a site's suction tank follows the air, in seconds.
const TANK_TAU_S: f64 = 3.0 * 3600.0;

fn ramp(t_ms: i64, onset_ms: i64, ramp_s: f64) -> f64 {
    if t_ms < onset_ms { 0.0 } else { ((t_ms - onset_ms) as f64 / 1000.0 / ramp_s.max(1e-3)).min(1.0) }
}

/// Where pumps run: the climate sets their temperatures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Site {
    pub name: &'static str,
    pub ambient_c: f64,
    pub daily_swing_c: f64,
}

pub const SITES: [Site; 3] = [
    Site { name: "north-sea", ambient_c: 9.0, daily_swing_c: 2.0 },
    Site { name: "gulf", ambient_c: 31.0, daily_swing_c: 4.0 },
    Site { name: "permian", ambient_c: 21.0, daily_swing_c: 9.0 },
];

/// One pump's plan: who made it, where it runs, and what will happen to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PumpPlan {
    pub id: String,
    pub site: String,
    pub manufacturer: String,
    pub design: PumpDesign,
    pub speed_rpm: f64,
    pub valve_opening: f64,
    pub seed: u64,
    pub faults: Vec<Fault>,
    pub drifts: Vec<Drift>,
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    pub pumps: usize,
    pub seed: u64,
    pub start_ms: i64,
    pub duration_s: u64,
    /// Share of pumps (0 to 1) that develop a fault; the kinds take turns.
    pub faulty_share: f64,
    /// Faults begin between these offsets from the start, in seconds.
    pub faults_between_s: (u64, u64),
    /// Drifts applied to every pump of a site (site name, drift, offset of onset in seconds).
    pub site_drifts: Vec<(String, DriftKind, u64, f64)>,
}

/// The whole plan, written beside the data as the ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    pub seed: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub pumps: Vec<PumpPlan>,
}

impl Fleet {
    pub fn plan(spec: &FleetSpec) -> Fleet {
        let mut rng = Rng::new(spec.seed);
        let width = spec.pumps.max(1).to_string().len().max(3);
        let mut pumps: Vec<PumpPlan> = (0..spec.pumps)
            .map(|i| {
                let m = MANUFACTURERS[i % MANUFACTURERS.len()];
                let site = SITES[(i / MANUFACTURERS.len()) % SITES.len()];
                PumpPlan {
                    id: format!("pump-{:0width$}", i + 1),
                    site: site.name.to_string(),
                    manufacturer: m.name.to_string(),
                    design: PumpDesign::process_pump(0.8 + 0.45 * rng.next_f64()),
                    speed_rpm: 2950.0 - 150.0 * rng.next_f64(),
                    valve_opening: 0.85 + 0.15 * rng.next_f64(),
                    seed: rng.next_u64(),
                    faults: Vec::new(),
                    drifts: Vec::new(),
                }
            })
            .collect();
        let faulty = ((spec.pumps as f64) * spec.faulty_share.clamp(0.0, 1.0)).round() as usize;
        let mut order: Vec<usize> = (0..spec.pumps).collect();
        rng.shuffle(&mut order);
        let (from, to) = (spec.faults_between_s.0, spec.faults_between_s.1.max(spec.faults_between_s.0));
        for (n, &i) in order.iter().take(faulty).enumerate() {
            let offset_s = from as f64 + (to - from) as f64 * rng.next_f64();
            pumps[i].faults.push(Fault {
                kind: FaultKind::ALL[n % FaultKind::ALL.len()],
                onset_ms: spec.start_ms + (offset_s * 1000.0) as i64,
            });
        }
        for (site, kind, at_s, ramp_s) in &spec.site_drifts {
            for p in pumps.iter_mut().filter(|p| p.site == *site) {
                p.drifts.push(Drift { kind: *kind, onset_ms: spec.start_ms + *at_s as i64 * 1000, ramp_s: *ramp_s });
            }
        }
        Fleet { seed: spec.seed, start_ms: spec.start_ms, end_ms: spec.start_ms + spec.duration_s as i64 * 1000, pumps }
    }

    /// Each pump's readings from `from_ms` to `to_ms`.
    pub fn simulate(&self, pump: &PumpPlan, from_ms: i64, to_ms: i64) -> PumpSim {
        PumpSim::new(pump, self.start_ms, from_ms, to_ms)
    }
}

/// One reading of one pump, in the manufacturer's units and column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub ts_ms: i64,
    pub values: Vec<f64>,
    /// A fault is present (ground truth, the SKAB `anomaly` label).
    pub faulty: bool,
    /// A fault began since the previous sample (the SKAB `changepoint` label).
    pub onset: bool,
}

/// Slow random wander of a process variable around its set value (Ornstein–Uhlenbeck).
#[derive(Debug, Clone, Copy)]
struct Wander {
    value: f64,
    mean: f64,
    sigma: f64,
    tau_s: f64,
}

impl Wander {
    fn step(&mut self, dt_s: f64, z: f64) -> f64 {
        let a = dt_s / self.tau_s;
        self.value += (self.mean - self.value) * a + self.sigma * (2.0 * a).sqrt() * z;
        self.value
    }
}

/// A pump's reading generator (an iterator of [`Sample`]s).
#[derive(Debug, Clone)]
pub struct PumpSim {
    plan: PumpPlan,
    manufacturer: Manufacturer,
    site: Site,
    pump: Pump,
    rng: Rng,
    valve: Wander,
    tank: Wander,
    /// The fleet's start: noise streams and the daily cycle count from it, so the same seed
    /// gives the same readings whenever the simulation is run.
    origin_ms: i64,
    t_ms: i64,
    end_ms: i64,
}

impl PumpSim {
    pub fn new(plan: &PumpPlan, origin_ms: i64, from_ms: i64, to_ms: i64) -> PumpSim {
        let manufacturer = Manufacturer::by_name(&plan.manufacturer).unwrap_or(MANUFACTURERS[0]);
        let site = SITES.into_iter().find(|s| s.name == plan.site).unwrap_or(SITES[0]);
        // Each window of time has its own stream, so training and live data never repeat.
        let period = manufacturer.sample_ms as i64;
        let from_ms = origin_ms + (from_ms - origin_ms).div_euclid(period) * period;
        let mut rng = Rng::new(plan.seed ^ ((from_ms - origin_ms) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut sim = PumpSim {
            pump: Pump::new(plan.design.clone()),
            valve: Wander { value: plan.valve_opening, mean: plan.valve_opening, sigma: 0.04, tau_s: 1200.0 },
            tank: Wander { value: plan.design.tank_head_m, mean: plan.design.tank_head_m, sigma: 0.4, tau_s: 2400.0 },
            plan: plan.clone(),
            manufacturer,
            site,
            rng: rng.fork(),
            origin_ms,
            t_ms: from_ms,
            end_ms: to_ms,
        };
        // Settle temperatures and the process wander before the first sample.
        for _ in 0..600 {
            sim.physics(sim.t_ms - 3_600_000, 6.0);
        }
        sim
    }

    pub fn manufacturer(&self) -> Manufacturer {
        self.manufacturer
    }

    fn gaussian(&mut self) -> f64 {
        // Box–Muller; libm keeps the stream identical on every platform.
        let u1 = self.rng.next_f64().max(1e-300);
        let u2 = self.rng.next_f64();
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(std::f64::consts::TAU * u2)
    }

    fn physics(&mut self, t_ms: i64, dt_s: f64) -> crate::pump::Physical {
        let mut deg = Degradation::default();
        for f in &self.plan.faults {
            f.kind.apply(ramp(t_ms, f.onset_ms, f.kind.ramp_s()), &mut deg);
        }
        // The fleet starts at 06:00 local time: coolest before dawn, warmest mid-afternoon.
        let day = (t_ms - self.origin_ms + 6 * 3_600_000).rem_euclid(86_400_000) as f64 / 86_400_000.0;
        let phase = std::f64::consts::TAU * (day - 0.375);
        let mut ambient = self.site.ambient_c + self.site.daily_swing_c * libm::sin(phase);
        // The suction tank's water follows the air as a first-order lag. Its temperature is the
        // lag's settled response, computed rather than stepped, so it does not depend on where a
        // simulation window starts: the daily cycle damped and delayed, each shift in the air
        // followed over hours.
        let wt = std::f64::consts::TAU * TANK_TAU_S / 86_400.0;
        let mut inlet = self.site.ambient_c
            + self.site.daily_swing_c / libm::sqrt(1.0 + wt * wt) * libm::sin(phase - libm::atan(wt));
        let mut speed = self.plan.speed_rpm;
        for d in &self.plan.drifts {
            match d.kind {
                DriftKind::AmbientShift { delta_c } => {
                    ambient += delta_c * d.level(t_ms);
                    inlet += delta_c * d.lagged_level(t_ms, TANK_TAU_S);
                }
                DriftKind::OperatingPoint { speed_rpm } => {
                    speed += (speed_rpm - self.plan.speed_rpm) * d.level(t_ms);
                }
                DriftKind::SensorAgeing { .. } => {}
            }
        }
        let (z1, z2, z3) = (self.gaussian(), self.gaussian(), self.gaussian());
        let conditions = Conditions {
            speed_rpm: speed,
            valve_opening: self.valve.step(dt_s, z1).clamp(0.3, 1.2),
            tank_level_m: self.tank.step(dt_s, z2),
            ambient_c: ambient,
            inlet_c: inlet,
        };
        self.pump.step(dt_s, &conditions, &deg, z3)
    }
}

impl Iterator for PumpSim {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        if self.t_ms >= self.end_ms {
            return None;
        }
        let t = self.t_ms;
        let period = self.manufacturer.sample_ms as i64;
        let physical = self.physics(t, period as f64 / 1000.0);
        let mut values = Vec::with_capacity(self.manufacturer.signals.len());
        for (i, (signal, _, _)) in self.manufacturer.signals.iter().enumerate() {
            let mut v = signal.of(&physical) + signal.noise() * self.gaussian();
            for d in &self.plan.drifts {
                if let DriftKind::SensorAgeing { signal: s, per_hour } = d.kind
                    && s == *signal
                    && t >= d.onset_ms
                {
                    v += per_hour * (t - d.onset_ms) as f64 / 3_600_000.0;
                }
            }
            values.push(self.manufacturer.to_vendor_unit(i, v));
        }
        self.t_ms += period;
        let faulty = self.plan.faults.iter().any(|f| f.onset_ms <= t);
        let onset = self.plan.faults.iter().any(|f| f.onset_ms <= t && f.onset_ms > t - period);
        Some(Sample { ts_ms: t, values, faulty, onset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vendor::{KESTREL, NORDPUMP};

    fn spec() -> FleetSpec {
        FleetSpec {
            pumps: 12,
            seed: 7,
            start_ms: 1_700_000_000_000,
            duration_s: 6 * 3600,
            faulty_share: 0.5,
            faults_between_s: (3600, 4 * 3600),
            site_drifts: vec![("gulf".into(), DriftKind::AmbientShift { delta_c: 10.0 }, 3600, 1800.0)],
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_fleet_and_readings() {
        let (a, b) = (Fleet::plan(&spec()), Fleet::plan(&spec()));
        assert_eq!(a, b);
        let take = |f: &Fleet| f.simulate(&f.pumps[4], f.start_ms, f.end_ms).take(500).collect::<Vec<_>>();
        assert_eq!(take(&a), take(&b));
        // Run at another time, the readings are the same relative to the fleet's start.
        let later = Fleet::plan(&FleetSpec { start_ms: spec().start_ms + 12_345_000, ..spec() });
        let values = |f: &Fleet| take(f).into_iter().map(|s| (s.ts_ms - f.start_ms, s.values)).collect::<Vec<_>>();
        assert_eq!(values(&a), values(&later));
        let other = Fleet::plan(&FleetSpec { seed: 8, ..spec() });
        assert_ne!(a.pumps, other.pumps);
    }

    #[test]
    fn the_fleet_spans_sites_manufacturers_and_fault_kinds() {
        let f = Fleet::plan(&spec());
        let faulty: Vec<&PumpPlan> = f.pumps.iter().filter(|p| !p.faults.is_empty()).collect();
        assert_eq!(faulty.len(), 6);
        let mut kinds: Vec<FaultKind> = faulty.iter().map(|p| p.faults[0].kind).collect();
        kinds.sort();
        assert_eq!(kinds, FaultKind::ALL.to_vec());
        for p in &faulty {
            let at = p.faults[0].onset_ms - f.start_ms;
            assert!((3_600_000..=4 * 3_600_000).contains(&at), "{at}");
        }
        for site in SITES {
            for m in MANUFACTURERS {
                assert!(f.pumps.iter().any(|p| p.site == site.name && p.manufacturer == m.name));
            }
        }
        assert!(f.pumps.iter().all(|p| (p.site == "gulf") != p.drifts.is_empty()));
    }

    #[test]
    fn samples_come_at_the_manufacturers_rate_with_labels_from_the_truth() {
        let f = Fleet::plan(&spec());
        for p in f.pumps.iter().filter(|p| !p.faults.is_empty()) {
            let samples: Vec<Sample> = f.simulate(p, f.start_ms, f.end_ms).collect();
            let period = Manufacturer::by_name(&p.manufacturer).unwrap().sample_ms as i64;
            assert_eq!(samples.len() as i64, 6 * 3_600_000 / period);
            assert!(samples.windows(2).all(|w| w[1].ts_ms - w[0].ts_ms == period));
            assert_eq!(samples.iter().filter(|s| s.onset).count(), 1);
            let first_faulty = samples.iter().position(|s| s.faulty).unwrap();
            assert!(samples[first_faulty].onset && samples[first_faulty..].iter().all(|s| s.faulty));
            assert!(samples.iter().all(|s| s.values.iter().all(|v| v.is_finite())));
        }
    }

    /// A site's pump with `drift` from the first hour, and its twin without: the same seed
    /// draws the same noise, so what differs is the drift alone.
    fn with_and_without(drift: DriftKind, ramp_s: f64, manufacturer: &str) -> (Fleet, PumpPlan, PumpPlan) {
        let spec =
            FleetSpec { faulty_share: 0.0, site_drifts: vec![("permian".into(), drift, 3600, ramp_s)], ..spec() };
        let f = Fleet::plan(&spec);
        let drifted = f.pumps.iter().find(|p| p.site == "permian" && p.manufacturer == manufacturer).unwrap().clone();
        assert_eq!(drifted.drifts.len(), 1);
        let twin = PumpPlan { drifts: Vec::new(), ..drifted.clone() };
        (f, drifted, twin)
    }

    #[test]
    fn an_ageing_sensor_biases_its_own_reading_and_nothing_else() {
        let ageing = DriftKind::SensorAgeing { signal: Signal::DischargePressure, per_hour: 0.05 };
        let (f, aged, twin) = with_and_without(ageing, 0.0, "nordpump");
        let column = NORDPUMP.signals.iter().position(|(s, _, _)| *s == Signal::DischargePressure).unwrap();
        let (a, b) = (f.simulate(&aged, f.start_ms, f.end_ms), f.simulate(&twin, f.start_ms, f.end_ms));
        for (x, y) in a.zip(b) {
            let hours = (x.ts_ms - f.start_ms - 3_600_000).max(0) as f64 / 3_600_000.0;
            for (i, (vx, vy)) in x.values.iter().zip(&y.values).enumerate() {
                let bias = if i == column { 0.05 * hours } else { 0.0 };
                assert!((vx - vy - bias).abs() < 1e-9, "column {i} at {} h: {vx} against {vy}", hours + 1.0);
            }
        }
    }

    #[test]
    fn a_new_operating_point_follows_the_affinity_laws() {
        let new_point = DriftKind::OperatingPoint { speed_rpm: 2650.0 };
        let (f, moved, twin) = with_and_without(new_point, 600.0, "kestrel");
        let mean = |p: &PumpPlan, from_h: f64, signal: Signal| {
            let col = KESTREL.signals.iter().position(|(s, _, _)| *s == signal).unwrap();
            let from = f.start_ms + (from_h * 3_600_000.0) as i64;
            let v: Vec<f64> = f.simulate(p, from, from + 1_800_000).map(|s| s.values[col]).collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        assert!((mean(&moved, 0.0, Signal::Speed) - mean(&twin, 0.0, Signal::Speed)).abs() < 1e-9, "before the onset");
        let ratio = |s: Signal| mean(&moved, 2.0, s) / mean(&twin, 2.0, s);
        // The speed read is the motor's, a little under the set speed (slip, which falls with the load).
        let speed_ratio = ratio(Signal::Speed);
        assert!((speed_ratio - 2650.0 / moved.speed_rpm).abs() < 0.01, "{speed_ratio} for {}", moved.speed_rpm);
        // Against a system curve with static head, flow falls at least as fast as speed; head
        // (and the pressure the pump adds) and shaft power fall faster still.
        assert!(ratio(Signal::Flow) < speed_ratio + 0.01, "flow {} at speed {speed_ratio}", ratio(Signal::Flow));
        let head = |p: &PumpPlan| mean(p, 2.0, Signal::DischargePressure) - mean(p, 2.0, Signal::SuctionPressure);
        assert!(head(&moved) / head(&twin) < speed_ratio, "head {}", head(&moved) / head(&twin));
        assert!(ratio(Signal::MotorPower) < speed_ratio * speed_ratio, "power {}", ratio(Signal::MotorPower));
    }

    #[test]
    fn the_tank_follows_the_air_over_hours_whatever_the_window() {
        let (f, warmed, twin) = with_and_without(DriftKind::AmbientShift { delta_c: 10.0 }, 0.0, "kestrel");
        let col = |signal: Signal| KESTREL.signals.iter().position(|(s, _, _)| *s == signal).unwrap();
        let (fluid, bearing) = (col(Signal::FluidTemp), col(Signal::BearingTemp));
        let onset = f.start_ms + 3_600_000;
        let whole: Vec<(Sample, Sample)> =
            f.simulate(&warmed, f.start_ms, f.end_ms).zip(f.simulate(&twin, f.start_ms, f.end_ms)).collect();
        for hours in [1.0, 4.0] {
            let t = onset + (hours * 3_600_000.0) as i64;
            let (a, b) = whole.iter().find(|(a, _)| a.ts_ms == t).unwrap();
            // The same noise in both: what differs is the air, and the tank's lagged answer to it.
            let want = 10.0 * (1.0 - (-hours / 3.0f64).exp());
            let got = a.values[fluid] - b.values[fluid];
            assert!((got - want).abs() < 1e-6, "{hours} h after the step: fluid +{got}, want +{want}");
            let bearing_rise = a.values[bearing] - b.values[bearing];
            assert!(bearing_rise > 9.9, "the bearing follows within minutes: +{bearing_rise}");
            // A window that starts here reads the same fluid temperature.
            let alone = |p: &PumpPlan| f.simulate(p, t, t + 2000).next().unwrap().values[fluid];
            assert!((alone(&warmed) - alone(&twin) - got).abs() < 1e-6, "window from {hours} h");
        }
    }

    #[test]
    fn a_heat_wave_warms_the_motor_but_leaves_the_hydraulics_alone() {
        let f = Fleet::plan(&spec());
        let p = f.pumps.iter().find(|p| p.site == "gulf" && p.manufacturer == "kestrel" && p.faults.is_empty());
        let Some(p) = p else { return };
        let mean = |from_h: i64, col: usize| {
            let from = f.start_ms + from_h * 3_600_000;
            let s: Vec<f64> = f.simulate(p, from, from + 1_800_000).map(|s| s.values[col]).collect();
            s.iter().sum::<f64>() / s.len() as f64
        };
        // WindingT is column 7, Flow (L/s) column 2.
        assert!(mean(5, 7) > mean(0, 7) + 5.0, "{} {}", mean(5, 7), mean(0, 7));
        assert!((mean(5, 2) - mean(0, 2)).abs() < 0.05 * mean(0, 2));
    }
}
