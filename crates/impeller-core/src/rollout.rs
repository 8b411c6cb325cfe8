//! Staged rollouts: a deployment reaches its devices in waves (e.g. 1 %, 10 %, 100 %), each
//! wave soaks for a while, and health gates decide whether the next wave starts or the whole
//! deployment is aborted (the hub then rolls the devices that took it back). Pure decisions
//! here; the hub gathers the evidence and acts on the [`Step`].

use serde::{Deserialize, Serialize};

/// How a deployment is rolled out. Percentages are cumulative shares of the devices the
/// deployment applies to; the last wave is always 100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub waves: Vec<f64>,
    /// Seconds a wave runs before the next may start.
    #[serde(default = "default_soak_s")]
    pub soak_s: u64,
    /// Share of a wave's devices that must report the new model active before the next wave
    /// (or, in the last, before the rollout completes); devices that refused it or rolled it
    /// back, within what `max_failed` and `max_rolled_back` allow, are not waited for.
    #[serde(default = "default_min_active")]
    pub min_active: f64,
    /// Abort when more than this share of the devices so far refused the package.
    #[serde(default)]
    pub max_failed: f64,
    /// Abort when more than this share of the devices so far rolled back by themselves.
    #[serde(default)]
    pub max_rolled_back: f64,
    /// Abort when the devices so far raise more alerts per device-day with the new model than
    /// they did with the previous one, by more than this. None: no alert-rate gate.
    #[serde(default)]
    pub max_alert_rate_increase: Option<f64>,
}

fn default_soak_s() -> u64 {
    600
}
fn default_min_active() -> f64 {
    0.9
}

impl Rollout {
    /// Checks a policy from outside; says which field is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.waves.is_empty() || self.waves.len() > 20 {
            return Err("rollout.waves: give 1 to 20 cumulative percentages, the last 100".into());
        }
        let mut before = 0.0;
        for (i, &p) in self.waves.iter().enumerate() {
            if !(p > before && p <= 100.0) {
                return Err(format!(
                    "rollout.waves[{i}] = {p}: each wave must be above the one before (and above 0) and at most 100"
                ));
            }
            before = p;
        }
        if before != 100.0 {
            return Err("rollout.waves: the last wave must be 100".into());
        }
        for (name, v) in [
            ("min_active", self.min_active),
            ("max_failed", self.max_failed),
            ("max_rolled_back", self.max_rolled_back),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("rollout.{name} = {v}: a share between 0 and 1"));
            }
        }
        if self.soak_s > 30 * 86_400 {
            return Err(format!("rollout.soak_s = {}: at most 30 days", self.soak_s));
        }
        if let Some(x) = self.max_alert_rate_increase
            && !(x.is_finite() && x >= 0.0)
        {
            return Err(format!("rollout.max_alert_rate_increase = {x}: a number of alerts per device-day, 0 or more"));
        }
        Ok(())
    }

    /// How many of `targets` devices are in waves `0..=wave`: at least one once there is a
    /// device, so a 1 % wave of a small fleet still tests the package somewhere.
    pub fn wave_size(&self, wave: usize, targets: usize) -> usize {
        let share = self.waves.get(wave).copied().unwrap_or(100.0);
        let n = (share / 100.0 * targets as f64).ceil() as usize;
        n.clamp(targets.min(1), targets)
    }
}

/// The order in which a deployment takes its devices: a hash of both names, so each
/// deployment's first wave is a different, stable, spread-out sample of the fleet.
pub fn rank(deployment: &str, device: &str) -> u64 {
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in deployment.bytes().chain([0]).chain(device.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What the devices taken so far report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evidence {
    pub members: usize,
    pub active: usize,
    pub failed: usize,
    pub rolled_back: usize,
    /// Devices that refused the new model in shadow scoring or rolled it back because it
    /// alarmed more than the running one, while a labelled incident (a confirmed fault) was open
    /// on them; not counted in `failed` or `rolled_back`: on a faulty pump a better model alarms
    /// more.
    pub refused_in_fault: usize,
    /// Alerts per device-day before and after the switch, over the active devices; None when
    /// they have sent no telemetry since switching.
    pub alerts: Option<AlertRates>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertRates {
    pub before_per_day: f64,
    pub after_per_day: f64,
}

/// What to do next with a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Stay in this wave; why.
    Wait(String),
    /// Start the next wave.
    Advance,
    /// The last wave passed: the deployment applies like any other from now on.
    Complete,
    /// A gate failed: which and by how much.
    Abort(String),
}

/// Decides the next step of a rollout in wave `wave` (0-based) started at `wave_started_ms`.
/// Failure gates are checked at every step; the alert gate and the soak at the wave's end.
pub fn step(policy: &Rollout, wave: usize, wave_started_ms: i64, now_ms: i64, e: &Evidence) -> Step {
    if e.members == 0 {
        return Step::Wait("no device to roll out to".into());
    }
    let share = |n: usize| n as f64 / e.members as f64;
    let over = |n: usize, max: f64, what: &str| {
        (share(n) > max).then(|| {
            Step::Abort(format!(
                "{n} of {} devices {what} ({:.0} %, at most {:.0} % allowed)",
                e.members,
                100.0 * share(n),
                100.0 * max
            ))
        })
    };
    let excused = match e.refused_in_fault {
        0 => String::new(),
        n => format!("; {n} more refused or rolled it back under a confirmed fault, not counted"),
    };
    if let Some(abort) = over(e.failed, policy.max_failed, &format!("refused the package{excused}")).or_else(|| {
        over(e.rolled_back, policy.max_rolled_back, &format!("rolled the new model back by themselves{excused}"))
    }) {
        return abort;
    }
    let soaked_ms = now_ms.saturating_sub(wave_started_ms);
    let soak_ms = policy.soak_s as i64 * 1000;
    if soaked_ms < soak_ms {
        return Step::Wait(format!("wave {} soaks for {} s more", wave + 1, (soak_ms - soaked_ms + 999) / 1000));
    }
    // A device that refused or rolled the new model back keeps the old one, whether under a
    // confirmed fault or within what the gates allow: the wave needs the others, or it would
    // wait for it forever.
    let settled = e.refused_in_fault + e.failed + e.rolled_back;
    let expected = e.members.saturating_sub(settled);
    if (e.active as f64) < policy.min_active * expected as f64 {
        let excused = match settled {
            0 => String::new(),
            n => format!(" ({n} more refused or rolled it back)"),
        };
        return Step::Wait(format!(
            "{} of {expected} devices run the new model{excused}; {:.0} % needed",
            e.active,
            100.0 * policy.min_active
        ));
    }
    if let Some(max) = policy.max_alert_rate_increase {
        let Some(a) = e.alerts else {
            return Step::Wait("no telemetry from the new model yet to compare alert rates".into());
        };
        let increase = a.after_per_day - a.before_per_day;
        if increase > max {
            return Step::Abort(format!(
                "alerts rose from {:.2} to {:.2} per device-day (+{increase:.2}, at most +{max:.2} allowed)",
                a.before_per_day, a.after_per_day
            ));
        }
    }
    if wave + 1 >= policy.waves.len() { Step::Complete } else { Step::Advance }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Rollout {
        Rollout {
            waves: vec![1.0, 10.0, 100.0],
            soak_s: 60,
            min_active: 0.9,
            max_failed: 0.05,
            max_rolled_back: 0.0,
            max_alert_rate_increase: Some(1.0),
        }
    }

    fn healthy(members: usize) -> Evidence {
        Evidence {
            members,
            active: members,
            alerts: Some(AlertRates { before_per_day: 0.5, after_per_day: 0.5 }),
            ..Evidence::default()
        }
    }

    #[test]
    fn policies_are_checked_field_by_field() {
        assert!(policy().validate().is_ok());
        let bad = |f: &dyn Fn(&mut Rollout)| {
            let mut p = policy();
            f(&mut p);
            p.validate().unwrap_err()
        };
        assert!(bad(&|p| p.waves = vec![]).contains("rollout.waves"));
        assert!(bad(&|p| p.waves = vec![10.0, 5.0, 100.0]).contains("waves[1] = 5"));
        assert!(bad(&|p| p.waves = vec![0.0, 100.0]).contains("waves[0]"));
        assert!(bad(&|p| p.waves = vec![10.0, 50.0]).contains("last wave must be 100"));
        assert!(bad(&|p| p.waves = vec![f64::NAN, 100.0]).contains("waves[0]"));
        assert!(bad(&|p| p.max_failed = 1.5).contains("max_failed"));
        assert!(bad(&|p| p.min_active = f64::NAN).contains("min_active"));
        assert!(bad(&|p| p.max_alert_rate_increase = Some(-1.0)).contains("max_alert_rate_increase"));
        assert!(bad(&|p| p.soak_s = 31 * 86_400).contains("soak_s"));
    }

    #[test]
    fn waves_take_shares_of_the_fleet_and_never_nothing() {
        let p = policy();
        assert_eq!([p.wave_size(0, 1000), p.wave_size(1, 1000), p.wave_size(2, 1000)], [10, 100, 1000]);
        assert_eq!([p.wave_size(0, 3), p.wave_size(1, 3), p.wave_size(2, 3)], [1, 1, 3]);
        assert_eq!(p.wave_size(0, 0), 0);
        assert_eq!(p.wave_size(7, 5), 5, "past the last wave: everyone");
    }

    #[test]
    fn ranks_are_stable_and_differ_between_deployments() {
        assert_eq!(rank("v2", "pump-1"), rank("v2", "pump-1"));
        assert_ne!(rank("v2", "pump-1"), rank("v3", "pump-1"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(rank("ab", "c"), rank("a", "bc"));
        let mut first: Vec<_> = (0..100).map(|i| format!("pump-{i}")).collect();
        first.sort_by_key(|d| rank("v2", d));
        let mut other = first.clone();
        other.sort_by_key(|d| rank("v3", d));
        assert_ne!(first[..10], other[..10], "each deployment samples its own first wave");
    }

    #[test]
    fn a_healthy_wave_advances_after_its_soak_and_the_last_one_completes() {
        let p = policy();
        assert!(matches!(step(&p, 0, 0, 30_000, &healthy(10)), Step::Wait(w) if w.contains("30 s more")));
        assert_eq!(step(&p, 0, 0, 60_000, &healthy(10)), Step::Advance);
        assert_eq!(step(&p, 2, 0, 60_000, &healthy(10)), Step::Complete);
        assert!(matches!(step(&p, 0, 0, 60_000, &Evidence::default()), Step::Wait(_)), "nobody to roll out to");
    }

    #[test]
    fn a_wave_waits_for_its_devices_and_their_telemetry() {
        let p = policy();
        let slow = Evidence { active: 8, ..healthy(10) };
        assert!(matches!(step(&p, 0, 0, 60_000, &slow), Step::Wait(w) if w.contains("8 of 10")));
        let quiet = Evidence { alerts: None, ..healthy(10) };
        assert!(matches!(step(&p, 0, 0, 60_000, &quiet), Step::Wait(w) if w.contains("telemetry")));
        let no_gate = Rollout { max_alert_rate_increase: None, ..policy() };
        assert_eq!(step(&no_gate, 0, 0, 60_000, &quiet), Step::Advance);
    }

    #[test]
    fn failed_gates_abort_at_once_and_say_by_how_much() {
        let p = policy();
        let refused = Evidence { failed: 1, active: 9, ..healthy(10) };
        let Step::Abort(why) = step(&p, 0, 0, 1_000, &refused) else { panic!("must abort before the soak ends") };
        assert!(why.contains("1 of 10") && why.contains("10 %") && why.contains("5 %"), "{why}");
        let in_fault = Evidence { refused_in_fault: 1, active: 9, ..healthy(10) };
        assert_eq!(step(&p, 0, 0, 60_000, &in_fault), Step::Advance, "a faulty pump's refusal is no evidence");
        // Nor does the wave wait for that pump to run the new model (seen: a 3-pump wave that
        // needed all of them stuck at 2 of 3 for good).
        let all = Rollout { min_active: 1.0, ..policy() };
        let small = Evidence { members: 3, active: 2, refused_in_fault: 1, ..healthy(3) };
        assert_eq!(step(&all, 2, 0, 60_000, &small), Step::Complete);
        let slow = Evidence { active: 1, ..small };
        assert!(
            matches!(step(&all, 2, 0, 60_000, &slow), Step::Wait(w) if w.contains("1 of 2 devices run the new model (1 more refused or rolled it back)"))
        );
        // Nor for a device whose refusal or rollback the gates tolerate.
        let tolerant = Rollout { min_active: 1.0, max_failed: 0.05, max_rolled_back: 0.05, ..policy() };
        let one_each = Evidence { members: 40, active: 38, failed: 1, rolled_back: 1, ..healthy(40) };
        assert_eq!(step(&tolerant, 2, 0, 60_000, &one_each), Step::Complete);
        let one_slow = Evidence { active: 37, ..one_each };
        assert!(matches!(step(&tolerant, 2, 0, 60_000, &one_slow), Step::Wait(w) if w.contains("37 of 38")));
        // Excused devices are named when another one aborts the rollout.
        let both = Evidence { failed: 1, refused_in_fault: 2, active: 7, ..healthy(10) };
        assert!(
            matches!(step(&p, 0, 0, 1_000, &both), Step::Abort(w) if w.contains("1 of 10 devices refused the package; 2 more"))
        );
        let rolled = Evidence { rolled_back: 1, active: 9, ..healthy(10) };
        assert!(matches!(step(&p, 0, 0, 1_000, &rolled), Step::Abort(w) if w.contains("rolled")));
        let noisy = Evidence { alerts: Some(AlertRates { before_per_day: 0.5, after_per_day: 3.0 }), ..healthy(10) };
        let Step::Abort(why) = step(&p, 1, 0, 60_000, &noisy) else { panic!("alert gate") };
        assert!(why.contains("0.50 to 3.00") && why.contains("+2.50"), "{why}");
        // Within the allowance: fine.
        let slightly = Evidence { alerts: Some(AlertRates { before_per_day: 0.5, after_per_day: 1.4 }), ..healthy(10) };
        assert_eq!(step(&p, 1, 0, 60_000, &slightly), Step::Advance);
    }
}
