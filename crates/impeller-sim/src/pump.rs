//! One centrifugal pump driven by a motor, from first principles: the pump curve scaled by the
//! affinity laws meets the system curve at the operating point; hydraulic power over efficiency
//! gives the motor's load and current; the impeller's losses warm the pumped fluid; motor and
//! bearing temperatures follow first-order lags; vibration grows with speed, distance from the
//! best efficiency point, imbalance, bearing wear and cavitation.
//! Faults act through [`Degradation`], not by painting numbers onto the outputs.

use serde::{Deserialize, Serialize};

/// ρ·g for water, in Pa per metre of head.
const RHO_G: f64 = 1000.0 * 9.806_65;
/// ρ·c_p for water: the heat that warms a cubic metre by one kelvin, in kJ.
const RHO_CP: f64 = 4180.0;
/// Atmospheric pressure and water's vapour pressure at ~25 °C, in metres of head.
const ATMOSPHERE_M: f64 = 10.33;
const VAPOUR_M: f64 = 0.32;

/// The nameplate and installation of one pump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PumpDesign {
    pub rated_speed_rpm: f64,
    /// Flow and head at the best efficiency point (BEP), at rated speed.
    pub bep_flow_m3h: f64,
    pub bep_head_m: f64,
    pub shutoff_head_m: f64,
    pub bep_efficiency: f64,
    /// The system: static lift, and the valve opening at which the system curve meets the
    /// pump curve at the BEP is 1.0.
    pub static_head_m: f64,
    /// Water level in the suction tank above the pump inlet.
    pub tank_head_m: f64,
    /// Suction line friction at the BEP flow, in metres.
    pub suction_loss_m: f64,
    /// Net positive suction head the pump needs at the BEP.
    pub npsh_required_m: f64,
    pub supply_voltage_v: f64,
    pub power_factor: f64,
    pub motor_efficiency: f64,
}

impl PumpDesign {
    /// A mid-size process pump; `scale` (around 1) sizes flow and power.
    pub fn process_pump(scale: f64) -> Self {
        PumpDesign {
            rated_speed_rpm: 2950.0,
            bep_flow_m3h: 100.0 * scale,
            bep_head_m: 50.0,
            shutoff_head_m: 62.0,
            bep_efficiency: 0.78,
            static_head_m: 20.0,
            tank_head_m: 3.0,
            suction_loss_m: 1.5,
            npsh_required_m: 4.5,
            supply_voltage_v: 400.0,
            power_factor: 0.86,
            motor_efficiency: 0.93,
        }
    }
}

/// How far each fault has progressed, each from 0 (healthy) to 1 (the worst simulated).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Degradation {
    /// A clogging suction strainer: suction losses grow until the pump cavitates.
    pub suction_clog: f64,
    pub bearing_wear: f64,
    /// Leak past the seal: a share of the pumped flow that never reaches the meter.
    pub seal_leak: f64,
    pub imbalance: f64,
    /// A discharge valve closing by itself (debris, a failed actuator).
    pub valve_block: f64,
    /// Lost motor cooling (a blocked fan, fouled fins).
    pub cooling_loss: f64,
}

/// What the process does to the pump at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    pub speed_rpm: f64,
    pub valve_opening: f64,
    pub tank_level_m: f64,
    pub ambient_c: f64,
    /// The fluid's temperature at the suction (the tank's water, which follows the air slowly).
    pub inlet_c: f64,
}

/// True physical values (before sensors add noise and bias), SI units.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Physical {
    pub suction_bar: f64,
    pub discharge_bar: f64,
    pub flow_m3h: f64,
    pub current_a: f64,
    pub power_kw: f64,
    pub voltage_v: f64,
    pub bearing_c: f64,
    pub motor_c: f64,
    /// At the discharge: the inlet's temperature plus the impeller's losses.
    pub fluid_c: f64,
    pub vibration_mms: f64,
    pub speed_rpm: f64,
    /// Cavitation intensity, 0 to 1 (not a sensor: for ground truth and tests).
    pub cavitation: f64,
}

/// The pump's thermal state, carried from one step to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Pump {
    pub design: PumpDesign,
    motor_c: Option<f64>,
    bearing_c: Option<f64>,
}

const MOTOR_TAU_S: f64 = 900.0;
const BEARING_TAU_S: f64 = 600.0;

impl Pump {
    pub fn new(design: PumpDesign) -> Self {
        Pump { design, motor_c: None, bearing_c: None }
    }

    /// Advances `dt_s` seconds; `jitter` is a standard normal draw for cavitation's noise.
    pub fn step(&mut self, dt_s: f64, c: &Conditions, deg: &Degradation, jitter: f64) -> Physical {
        let d = &self.design;
        let s = (c.speed_rpm / d.rated_speed_rpm).max(0.0);
        let k = (d.shutoff_head_m - d.bep_head_m) / (d.bep_flow_m3h * d.bep_flow_m3h);
        let system = (d.bep_head_m - d.static_head_m) / (d.bep_flow_m3h * d.bep_flow_m3h);
        let opening = (c.valve_opening * (1.0 - 0.85 * deg.valve_block)).clamp(0.05, 1.2);
        let resistance = system / (opening * opening);
        let delivered = 1.0 - 0.3 * deg.seal_leak;
        let suction_k = d.suction_loss_m / (d.bep_flow_m3h * d.bep_flow_m3h) * (1.0 + 7.0 * deg.suction_clog);

        // Operating point: pump head H0·s²·(1−loss) − k·Q² equals the system's static lift
        // plus its friction on the delivered flow. Cavitation lowers the head, which moves the
        // point and with it the suction losses: a damped fixed-point iteration finds the
        // equilibrium.
        let mut head_loss = 0.0;
        let mut q = 0.0;
        let mut cavitation = 0.0;
        for _ in 0..30 {
            let available = d.shutoff_head_m * s * s * (1.0 - head_loss) - d.static_head_m;
            q = (available.max(0.0) / (k + resistance * delivered * delivered)).sqrt();
            let npsh_available = ATMOSPHERE_M + c.tank_level_m - suction_k * q * q - VAPOUR_M;
            let npsh_required = d.npsh_required_m * (0.4 + 0.6 * (q / d.bep_flow_m3h).powi(2));
            cavitation = ((1.0 - (npsh_available - npsh_required)) / 3.0).clamp(0.0, 1.0);
            head_loss = 0.5 * head_loss + 0.5 * 0.2 * cavitation;
        }
        let head = d.shutoff_head_m * s * s * (1.0 - 0.2 * cavitation) - k * q * q;
        let suction_bar = (c.tank_level_m - suction_k * q * q) * RHO_G / 1e5;
        let discharge_bar = suction_bar + head.max(0.0) * RHO_G / 1e5;

        let x = if s > 0.0 { q / (d.bep_flow_m3h * s) } else { 0.0 };
        let efficiency = (d.bep_efficiency * (2.0 * x - x * x)).clamp(0.08, d.bep_efficiency);
        let hydraulic_kw = RHO_G * (q / 3600.0) * head.max(0.0) / 1000.0;
        let friction_kw = 0.25 * s + 1.2 * deg.bearing_wear;
        let shaft_kw = hydraulic_kw / efficiency + friction_kw;
        // What the impeller does not turn into head heats the water passing through: hundredths
        // of a kelvin at the BEP, more as a closing valve starves the pump of flow (the floor
        // keeps a dead-headed pump finite).
        let losses_kw = hydraulic_kw / efficiency - hydraulic_kw;
        let fluid_c = c.inlet_c + losses_kw / (RHO_CP * q.max(1.0) / 3600.0);
        // Hot windings lose efficiency: more current for the same shaft power.
        let motor_eff = d.motor_efficiency - 0.04 * deg.cooling_loss;
        let power_kw = shaft_kw / motor_eff;
        let current_a = power_kw * 1000.0 / (3f64.sqrt() * d.supply_voltage_v * d.power_factor);
        let rated_a = self.rated_current();

        let motor_target = c.ambient_c + 55.0 * (current_a / rated_a).powi(2) * (1.0 + 1.3 * deg.cooling_loss);
        let bearing_target =
            c.ambient_c + 14.0 * s * s + 28.0 * deg.bearing_wear + 6.0 * deg.imbalance + 0.1 * motor_target;
        let motor_c = lag(&mut self.motor_c, motor_target, dt_s, MOTOR_TAU_S);
        let bearing_c = lag(&mut self.bearing_c, bearing_target, dt_s, BEARING_TAU_S);

        let vibration_mms = 1.1 * s * s
            + 2.0 * (x - 1.0).powi(2)
            + 5.0 * deg.imbalance * s * s
            + 6.0 * deg.bearing_wear * deg.bearing_wear
            + 3.5 * cavitation * (0.6 + 0.4 * jitter.abs());
        // An induction motor slips more under load.
        let slip = 0.012 * (power_kw / self.rated_power_kw()).min(2.0);
        Physical {
            suction_bar,
            discharge_bar,
            flow_m3h: q * delivered,
            current_a,
            power_kw,
            voltage_v: d.supply_voltage_v,
            bearing_c,
            motor_c,
            fluid_c,
            vibration_mms,
            speed_rpm: c.speed_rpm * (1.0 - slip),
            cavitation,
        }
    }

    /// Electrical input at the BEP at rated speed.
    pub fn rated_power_kw(&self) -> f64 {
        let d = &self.design;
        let hydraulic = RHO_G * (d.bep_flow_m3h / 3600.0) * d.bep_head_m / 1000.0;
        (hydraulic / d.bep_efficiency + 0.25) / d.motor_efficiency
    }

    pub fn rated_current(&self) -> f64 {
        let d = &self.design;
        self.rated_power_kw() * 1000.0 / (3f64.sqrt() * d.supply_voltage_v * d.power_factor)
    }
}

/// First-order lag toward `target`; starts at the target (a pump that has been running).
fn lag(state: &mut Option<f64>, target: f64, dt_s: f64, tau_s: f64) -> f64 {
    let next = match *state {
        None => target,
        Some(v) => v + (target - v) * (1.0 - libm::exp(-dt_s / tau_s)),
    };
    *state = Some(next);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(speed: f64, valve: f64) -> Conditions {
        Conditions { speed_rpm: speed, valve_opening: valve, tank_level_m: 3.0, ambient_c: 20.0, inlet_c: 15.0 }
    }

    fn run(c: &Conditions, deg: &Degradation) -> Physical {
        let mut p = Pump::new(PumpDesign::process_pump(1.0));
        let mut out = Physical::default();
        for _ in 0..20_000 {
            out = p.step(1.0, c, deg, 0.0);
        }
        out
    }

    #[test]
    fn runs_at_its_best_efficiency_point_with_the_valve_open() {
        let p = run(&at(2950.0, 1.0), &Degradation::default());
        assert!((p.flow_m3h - 100.0).abs() < 0.5, "{p:?}");
        assert!(((p.discharge_bar - p.suction_bar) * 1e5 / RHO_G - 50.0).abs() < 0.5, "{p:?}");
        assert!(p.cavitation == 0.0 && p.vibration_mms < 1.5, "{p:?}");
        let pump = Pump::new(PumpDesign::process_pump(1.0));
        assert!((p.current_a - pump.rated_current()).abs() / pump.rated_current() < 0.02, "{p:?}");
    }

    #[test]
    fn follows_the_affinity_laws() {
        // With no static lift, flow scales with speed, head with its square, power its cube.
        let mut design = PumpDesign::process_pump(1.0);
        design.static_head_m = 0.0;
        let mut a = Pump::new(design.clone());
        let mut b = Pump::new(design);
        let full = a.step(1.0, &at(2950.0, 1.0), &Degradation::default(), 0.0);
        let slow = b.step(1.0, &at(2950.0 * 0.8, 1.0), &Degradation::default(), 0.0);
        assert!((slow.flow_m3h / full.flow_m3h - 0.8).abs() < 1e-9);
        let head = |p: &Physical| p.discharge_bar - p.suction_bar;
        // Suction losses also scale with flow², so the ratio holds for the pressure rise.
        assert!((head(&slow) / head(&full) - 0.64).abs() < 1e-3, "{}", head(&slow) / head(&full));
    }

    #[test]
    fn each_fault_moves_the_signals_physics_says_it_should() {
        let base = run(&at(2950.0, 0.95), &Degradation::default());
        let with = |deg: Degradation| run(&at(2950.0, 0.95), &deg);

        let cav = with(Degradation { suction_clog: 1.0, ..Default::default() });
        assert!(cav.cavitation > 0.3 && cav.suction_bar < base.suction_bar - 0.1, "{cav:?}");
        assert!(cav.vibration_mms > base.vibration_mms + 1.0 && cav.discharge_bar < base.discharge_bar, "{cav:?}");

        let wear = with(Degradation { bearing_wear: 1.0, ..Default::default() });
        assert!(wear.bearing_c > base.bearing_c + 20.0 && wear.vibration_mms > base.vibration_mms + 4.0);

        let leak = with(Degradation { seal_leak: 1.0, ..Default::default() });
        assert!(leak.flow_m3h < base.flow_m3h * 0.9, "metered flow falls: {leak:?}");
        assert!(leak.discharge_bar < base.discharge_bar && leak.power_kw > base.power_kw * 0.98, "{leak:?}");

        let imb = with(Degradation { imbalance: 1.0, ..Default::default() });
        assert!(imb.vibration_mms > base.vibration_mms + 4.0 && (imb.flow_m3h - base.flow_m3h).abs() < 1e-9);

        let valve = with(Degradation { valve_block: 1.0, ..Default::default() });
        assert!(valve.flow_m3h < base.flow_m3h * 0.6 && valve.discharge_bar > base.discharge_bar, "{valve:?}");
        assert!(valve.current_a < base.current_a, "less flow, less power: {valve:?}");

        let hot = with(Degradation { cooling_loss: 1.0, ..Default::default() });
        assert!(hot.motor_c > base.motor_c + 30.0 && hot.current_a > base.current_a, "{hot:?}");
    }

    #[test]
    fn a_throttled_pump_warms_its_fluid_more() {
        let rise = |valve: f64| run(&at(2950.0, valve), &Degradation::default()).fluid_c - 15.0;
        // At the BEP the losses (~3.8 kW on 100 m³/h) warm the water by ~0.03 K.
        assert!(rise(1.0) > 0.01 && rise(1.0) < 0.1, "{}", rise(1.0));
        // Throttled to a tenth of the opening: less flow, worse efficiency, a warmer discharge.
        assert!(rise(0.1) > 5.0 * rise(1.0), "{} against {}", rise(0.1), rise(1.0));
    }

    #[test]
    fn temperatures_lag_behind_a_change() {
        let mut p = Pump::new(PumpDesign::process_pump(1.0));
        let c = at(2950.0, 1.0);
        let cold = p.step(1.0, &c, &Degradation::default(), 0.0);
        let deg = Degradation { cooling_loss: 1.0, ..Default::default() };
        let minute = (0..60).map(|_| p.step(1.0, &c, &deg, 0.0)).last().unwrap();
        let hour = (0..3600).map(|_| p.step(1.0, &c, &deg, 0.0)).last().unwrap();
        assert!(minute.motor_c - cold.motor_c < 0.1 * (hour.motor_c - cold.motor_c), "{minute:?} {hour:?}");
        assert!(hour.motor_c > cold.motor_c + 30.0);
    }
}
