//! The retraining policy: when a model should be retrained, from what the hub sees of it, and
//! within what budget. Pure: the hub supplies the facts and the time, keeps the state, and does
//! what the decision says (snapshot, pipeline run, promotion, rollout).
//!
//! Triggers, any of which starts a retraining:
//! - drift: at least `drift_share` of the model's devices in drift, or their latest sketches
//!   pooled at least `class_drift` from the reference, for `drift_rounds` checks in a row (a
//!   sustained drift, not one bad interval);
//! - alert rate: at least `alert_rate_share` of the model's devices alarm more often than the
//!   version's validation rate allows (the hub's alert-rate monitor), before any technician
//!   has judged an alert;
//! - precision: technicians' verdicts on its alerts put its precision below `min_precision`
//!   with `precision_confidence` (the upper end of their Wilson interval below it), once
//!   `min_verdicts` verdicts are in: a few early false alarms, within the rate the version was
//!   validated at, do not retrain it;
//! - schedule: `every_hours` since the last retraining.
//!
//! A trigger fires only when no retraining is running and the budget (`per_day` in any 24 h)
//! allows; a trigger held back by the budget is reported as such, once per round.
//!
//! A drift that a drift-triggered retraining could not absorb does not set off another: once
//! the version it trained is champion, drift triggers nothing until a check sees the class well
//! clear of it, below three quarters of each trigger's level (reported once, as
//! [`Decision::DriftHeld`]). A retraining on a reference that is still
//! mostly the old regime would only chase the drift, a day's budget at a time; whether the drift
//! is the process's new normal or a sensor to recalibrate is for a person to say. The hold does
//! not blind the monitor: with `class_drift`, the class's pool at the first check after the
//! rollout is where the held drift stands, and a feature that moves `class_drift` beyond where it
//! stood then, for `drift_rounds` checks, is a new drift and retrains.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const POLICY_VERSION: u32 = 1;
const DAY_MS: i64 = 86_400_000;
/// A held drift clears once the class is below this share of each trigger's level: hysteresis,
/// so that a pool hovering about the level (one check under it while the devices switch
/// versions, a drift still coming on) does not clear the hold on its way up.
const CLEAR_BELOW: f64 = 0.75;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainPolicy {
    /// Format version of this file; 1.
    pub version: u32,
    pub triggers: Triggers,
    pub data: DataWindow,
    #[serde(default)]
    pub approval: Approval,
    #[serde(default)]
    pub budget: Budget,
    /// How a promoted version reaches the data's devices: a staged rollout with its gates.
    #[serde(default = "RetrainPolicy::default_rollout")]
    pub rollout: crate::rollout::Rollout,
    /// Priority of the deployments a retraining creates: above the ones they replace.
    #[serde(default = "RetrainPolicy::default_priority")]
    pub priority: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// Share of the model's devices in drift (0 to 1) that counts; absent: drift triggers nothing.
    pub drift_share: Option<f64>,
    /// Distance (training standard deviations, worst feature) of the devices' latest sketches
    /// pooled from the reference that counts as drift of the class as a whole
    /// (`crate::drift::class_drift`); absent: off.
    #[serde(default)]
    pub class_drift: Option<f64>,
    /// Checks in a row the drift (either kind) must last.
    #[serde(default = "Triggers::default_rounds")]
    pub drift_rounds: u32,
    /// Share of the model's devices (0 to 1) whose alert rate is elevated against the version's
    /// validation rate that counts; absent: the alert rate triggers nothing.
    #[serde(default)]
    pub alert_rate_share: Option<f64>,
    /// Precision below this (0 to 1) triggers; absent: off.
    pub min_precision: Option<f64>,
    /// Verdicts needed before precision counts.
    #[serde(default = "Triggers::default_verdicts")]
    pub min_verdicts: u64,
    /// How sure the verdicts must make it that precision is below `min_precision` (0.5 to
    /// 1): the upper end of their Wilson interval at this one-sided confidence must be below it.
    /// Two false alarms in five verdicts do not show a model worse than one in two; none right
    /// in five do. 0.5 judges the verdicts' own share.
    #[serde(default = "Triggers::default_precision_confidence")]
    pub precision_confidence: f64,
    /// Retrain on a schedule, every this many hours; absent: off.
    pub every_hours: Option<f64>,
}

impl Triggers {
    fn default_rounds() -> u32 {
        3
    }
    fn default_verdicts() -> u64 {
        10
    }
    fn default_precision_confidence() -> f64 {
        0.95
    }
}

/// The data a retraining snapshots: the devices, the recent window, and what to leave out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataWindow {
    /// Devices by target condition (`tags.site = 'gulf' AND tags.manufacturer = 'acme'`).
    pub condition: String,
    /// Hours of recent samples to train on.
    pub hours: f64,
    /// Leave confirmed faults and other incidents out of the training data.
    #[serde(default = "DataWindow::yes")]
    pub exclude_incidents: bool,
    /// Leave out a device's samples from its first confirmed fault in the window on, not only
    /// the alert's span. Off by default: measured, it caught more faults and raised 2.5–3 times
    /// the false alarms (the faulty pumps' rows had widened the calibrated threshold).
    #[serde(default)]
    pub exclude_after_confirmed_fault: bool,
    /// Train on the champion's own training data as well as the recent window, so a retraining
    /// widens what the model knows as normal (the hours the technicians called false alarms)
    /// rather than forgetting the history it was first trained on.
    #[serde(default)]
    pub include_champion_data: bool,
}

impl DataWindow {
    fn yes() -> bool {
        true
    }
}

/// What needs a person's approval. `auto`: no one is asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Making a retrained version that passed its gates the champion.
    #[serde(default)]
    pub promote: Gate,
    /// Rolling the new champion out to the devices.
    #[serde(default)]
    pub rollout: Gate,
}

impl Default for Approval {
    fn default() -> Self {
        Approval { promote: Gate::Manual, rollout: Gate::Manual }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    Auto,
    #[default]
    Manual,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Retrainings allowed in any 24 hours.
    #[serde(default = "Budget::default_per_day")]
    pub per_day: u32,
}

impl Budget {
    fn default_per_day() -> u32 {
        2
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget { per_day: Self::default_per_day() }
    }
}

impl RetrainPolicy {
    fn default_rollout() -> crate::rollout::Rollout {
        crate::rollout::Rollout {
            waves: vec![10.0, 50.0, 100.0],
            soak_s: 600,
            min_active: 0.9,
            max_failed: 0.0,
            max_rolled_back: 0.0,
            max_alert_rate_increase: None,
        }
    }

    fn default_priority() -> i64 {
        10
    }

    /// Parses and checks a policy; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<RetrainPolicy, String> {
        let p: RetrainPolicy = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        let bad = |m: &str| Err(format!("{origin}: {m}"));
        if p.version != POLICY_VERSION {
            return bad(&format!("version {} is not supported (this build reads {POLICY_VERSION})", p.version));
        }
        let t = &p.triggers;
        if t.drift_share.is_none()
            && t.class_drift.is_none()
            && t.alert_rate_share.is_none()
            && t.min_precision.is_none()
            && t.every_hours.is_none()
        {
            return bad(
                "triggers: set at least one of drift_share, class_drift, alert_rate_share, min_precision, every_hours",
            );
        }
        for (name, v) in [
            ("drift_share", t.drift_share),
            ("alert_rate_share", t.alert_rate_share),
            ("min_precision", t.min_precision),
        ] {
            if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return bad(&format!("triggers.{name} must be 0 to 1"));
            }
        }
        if !(0.5..1.0).contains(&t.precision_confidence) {
            return bad("triggers.precision_confidence must be at least 0.5 and below 1");
        }
        if t.class_drift.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
            return bad("triggers.class_drift must be a positive distance");
        }
        if t.drift_rounds == 0 {
            return bad("triggers.drift_rounds must be at least 1");
        }
        if t.every_hours.is_some_and(|h| !(h.is_finite() && h > 0.0)) {
            return bad("triggers.every_hours must be positive");
        }
        if !(p.data.hours.is_finite() && p.data.hours > 0.0 && p.data.hours <= 24.0 * 366.0) {
            return bad("data.hours must be 0 to a year");
        }
        crate::deploy::Condition::parse(&p.data.condition).map_err(|e| format!("{origin}: data.condition: {e}"))?;
        if p.budget.per_day == 0 {
            return bad("budget.per_day must be at least 1");
        }
        p.rollout.validate().map_err(|e| format!("{origin}: {e}"))?;
        Ok(p)
    }

    pub fn data_window_ms(&self) -> i64 {
        (self.data.hours * 3_600_000.0) as i64
    }
}

/// What the hub sees of the model at one check.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub now_ms: i64,
    /// Devices running the model's champion, and how many of them are in drift now, not counting those
    /// set aside: devices with a labelled incident (a confirmed fault) in the policy's window,
    /// whose drift has a known cause that retraining must not learn.
    pub devices: u64,
    pub drifting: u64,
    pub set_aside: u64,
    /// `devices` as a class: their latest sketches pooled against the reference, when enough of
    /// them sent one lately.
    pub class: Option<crate::drift::ClassDrift>,
    /// Of `devices`, those whose alert rate is elevated against the version's validation rate.
    pub elevated: u64,
    /// Technicians' verdicts on the model's current version: confirmed faults, false alarms.
    pub confirmed: u64,
    pub false_alarms: u64,
    /// A retraining of this model is under way (snapshot, run, approval or rollout).
    pub busy: bool,
    /// The champion's version, if there is one.
    pub champion: Option<u64>,
}

/// What the policy remembers between checks (kept by the hub, with the policy).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    /// Checks in a row with the drift share reached.
    pub drift_rounds: u32,
    /// When retrainings were started, the last 24 hours' worth.
    pub started_ms: Vec<i64>,
    /// When the latest retraining started, however long ago: a schedule counts from it.
    #[serde(default)]
    pub last_started_ms: Option<i64>,
    /// A trigger holds but the budget is spent, and that was said already: said once, not at
    /// every check.
    #[serde(default)]
    pub over_budget: bool,
    /// The champion the latest drift-triggered retraining replaced, until a check sees the
    /// class clear of drift: while a later version is champion, drift triggers nothing.
    #[serde(default)]
    pub drift_retrained_from: Option<u64>,
    /// The drift held back that way was said already.
    #[serde(default)]
    pub drift_held: bool,
    /// Where the held drift stands: the class's pool at the first check of the hold that was
    /// not busy (the champion's rollout done), against that champion's reference.
    #[serde(default)]
    pub held_at: Option<HeldAt>,
}

/// A held drift's class, feature by feature, under the champion that holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldAt {
    pub champion: u64,
    /// Each feature's distance from the champion's reference, in training standard deviations.
    pub features: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Wait,
    /// Start a retraining, for this reason, with the evidence.
    Retrain {
        reason: String,
        evidence: serde_json::Value,
    },
    /// A trigger fired but the day's budget is spent.
    OverBudget {
        reason: String,
    },
    /// Drift persists against the version a drift-triggered retraining made: not retrained
    /// again until it clears.
    DriftHeld {
        reason: String,
    },
}

/// One check: updates the state and says what to do.
pub fn decide(p: &RetrainPolicy, s: &mut PolicyState, f: &Facts) -> Decision {
    let share = if f.devices == 0 { 0.0 } else { f.drifting as f64 / f.devices as f64 };
    let by_share = p.triggers.drift_share.is_some_and(|t| f.devices > 0 && f.drifting > 0 && share >= t);
    let as_class = match (p.triggers.class_drift, &f.class) {
        (Some(t), Some(c)) if c.distance >= t => Some(c),
        _ => None,
    };
    let drift_seen = by_share || as_class.is_some();
    // Clear of drift takes evidence, well inside each trigger: devices to count and, with
    // `class_drift`, a pool to judge (unless the class is too small ever to make one).
    let calm_share = p.triggers.drift_share.is_none_or(|t| share < t * CLEAR_BELOW);
    let calm_class = match (p.triggers.class_drift, &f.class) {
        (None, _) => true,
        (Some(t), Some(c)) => c.distance < t * CLEAR_BELOW,
        (Some(_), None) => f.devices < crate::drift::MIN_CLASS_DEVICES as u64,
    };
    let clear = f.devices > 0 && calm_share && calm_class;
    if clear && !f.busy {
        s.drift_retrained_from = None;
        s.drift_held = false;
    }
    let held = s.drift_retrained_from.is_some_and(|from| f.champion.is_some_and(|c| c != from));
    if !held {
        s.held_at = None;
    } else if let (Some(c), Some(champion), false) = (&f.class, f.champion, f.busy)
        && s.held_at.as_ref().is_none_or(|h| h.champion != champion)
    {
        s.held_at = Some(HeldAt { champion, features: c.features.clone() });
    }
    // While held, a feature moved a whole trigger's level beyond where the held drift stood.
    let further = match (p.triggers.class_drift, &f.class, &s.held_at) {
        (Some(t), Some(c), Some(h)) if held => c
            .features
            .iter()
            .filter_map(|(name, &now)| Some((name, now, now - h.features.get(name)?)))
            .filter(|(_, _, moved)| *moved >= t)
            .max_by(|a, b| a.2.total_cmp(&b.2)),
        _ => None,
    };
    let drifting = (drift_seen && !held) || further.is_some();
    // A check with no pool to judge (too few fresh sketches: agents lagging on a busy machine or
    // a slow link) is no evidence either way: it neither counts nor starts the count afresh.
    let no_evidence = !drifting && !by_share && p.triggers.class_drift.is_some() && f.class.is_none();
    // Drift seen while a retraining is under way is the old model's; the new one must show its
    // own for the full count before it is retrained in turn.
    s.drift_rounds = match (f.busy, drifting, no_evidence) {
        (false, true, _) => s.drift_rounds.saturating_add(1),
        (false, false, true) => s.drift_rounds,
        _ => 0,
    };
    s.started_ms.retain(|&t| f.now_ms - t < DAY_MS);
    let verdicts = f.confirmed + f.false_alarms;
    let precision = (verdicts > 0).then(|| f.confirmed as f64 / verdicts as f64);
    let precision_at_most = crate::stats::wilson_upper(f.confirmed, verdicts, p.triggers.precision_confidence);
    let last = s.last_started_ms.max(s.started_ms.iter().max().copied());
    let aside = match f.set_aside {
        0 => String::new(),
        n => format!(" ({n} more set aside under a labelled incident)"),
    };
    let on_drift = drifting && s.drift_rounds >= p.triggers.drift_rounds;
    let reason = if on_drift {
        Some(match (further, as_class) {
            (Some((feature, now, moved)), _) => format!(
                "a further drift while the last is held: the class's pool stands {now:.2} σ from version {}'s \
                 reference on {feature}, {moved:.2} σ beyond where it stood when held, for {} checks in a row",
                f.champion.unwrap_or_default(),
                s.drift_rounds
            ),
            (None, Some(c)) if !by_share => format!(
                "class drift: the latest sketches of {} of {} devices{aside} pooled ({} nearest kept) are {:.2} σ \
                 from the reference on {} for {} checks in a row",
                c.devices, f.devices, c.pooled, c.distance, c.feature, s.drift_rounds
            ),
            _ => format!(
                "drift on {} of {} devices ({:.0} %){aside} for {} checks in a row",
                f.drifting,
                f.devices,
                share * 100.0,
                s.drift_rounds
            ),
        })
    } else if let Some(t) = p.triggers.alert_rate_share
        && f.elevated > 0
        && f.elevated as f64 >= t * f.devices as f64
    {
        Some(format!(
            "alert rate elevated on {} of {} devices ({:.0} %)",
            f.elevated,
            f.devices,
            f.elevated as f64 * 100.0 / f.devices.max(1) as f64
        ))
    } else if let (Some(min), Some(prec)) = (p.triggers.min_precision, precision)
        && verdicts >= p.triggers.min_verdicts
        && precision_at_most < min
    {
        let confidence = p.triggers.precision_confidence;
        let bound = if confidence > 0.5 {
            format!(" (at most {precision_at_most:.2} at {:.0} % confidence)", confidence * 100.0)
        } else {
            String::new()
        };
        Some(format!("alert precision {prec:.2} from {verdicts} verdicts is below {min:.2}{bound}"))
    } else if let Some(h) = p.triggers.every_hours
        && last.is_none_or(|t| (f.now_ms - t) as f64 >= h * 3_600_000.0)
    {
        Some(format!("scheduled every {h} h"))
    } else {
        None
    };
    let Some(reason) = reason else {
        s.over_budget = false;
        if held && drift_seen && !f.busy && !std::mem::replace(&mut s.drift_held, true) {
            let how = match as_class {
                Some(c) => format!("its devices pooled stand {:.2} σ from the reference on {}", c.distance, c.feature),
                None => format!("{} of {} devices are in drift", f.drifting, f.devices),
            };
            return Decision::DriftHeld {
                reason: format!(
                    "drift persists against version {}, retrained on drift from version {}: {how}; not retrained \
                     on drift again until it clears",
                    f.champion.unwrap_or_default(),
                    s.drift_retrained_from.unwrap_or_default()
                ),
            };
        }
        return Decision::Wait;
    };
    if f.busy {
        return Decision::Wait;
    }
    if s.started_ms.len() >= p.budget.per_day as usize {
        if std::mem::replace(&mut s.over_budget, true) {
            return Decision::Wait;
        }
        return Decision::OverBudget {
            reason: format!("{reason}; {} retrainings in the last 24 h already", s.started_ms.len()),
        };
    }
    s.started_ms.push(f.now_ms);
    s.last_started_ms = Some(f.now_ms);
    s.drift_rounds = 0;
    let held_at = s.held_at.take().filter(|_| further.is_some());
    if on_drift {
        s.drift_retrained_from = f.champion;
        s.drift_held = false;
    }
    let evidence = serde_json::json!({
        "devices": f.devices, "drifting": f.drifting, "set_aside": f.set_aside, "drift_share": share,
        "class_drift": f.class, "held_at": held_at,
        "elevated": f.elevated,
        "confirmed": f.confirmed, "false_alarms": f.false_alarms, "precision": precision,
        "precision_at_most": (verdicts > 0).then_some(precision_at_most),
    });
    Decision::Retrain { reason, evidence }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
version = 1
[triggers]
drift_share = 0.3
drift_rounds = 3
min_precision = 0.5
min_verdicts = 4
[data]
condition = "tags.site = 'gulf'"
hours = 24
[budget]
per_day = 2
"#;

    fn facts(now_ms: i64, drifting: u64) -> Facts {
        Facts {
            now_ms,
            devices: 10,
            drifting,
            set_aside: 0,
            class: None,
            elevated: 0,
            confirmed: 0,
            false_alarms: 0,
            busy: false,
            champion: None,
        }
    }

    /// Nine devices pooled (eight kept), `distance` from the reference on their one feature.
    fn pool_of_nine(distance: f64) -> crate::drift::ClassDrift {
        crate::drift::ClassDrift {
            devices: 9,
            pooled: 8,
            feature: "motor_c".into(),
            distance,
            features: [("motor_c".into(), distance)].into(),
        }
    }

    #[test]
    fn drift_must_last_and_the_budget_holds() {
        let p = RetrainPolicy::parse(POLICY, "p").unwrap();
        let mut s = PolicyState::default();
        assert_eq!(decide(&p, &mut s, &facts(0, 3)), Decision::Wait);
        assert_eq!(decide(&p, &mut s, &facts(1, 1)), Decision::Wait, "below the share: the count restarts");
        assert_eq!(decide(&p, &mut s, &facts(2, 3)), Decision::Wait);
        assert_eq!(decide(&p, &mut s, &facts(3, 4)), Decision::Wait);
        assert!(matches!(decide(&p, &mut s, &facts(4, 5)), Decision::Retrain { .. }), "third check in a row");
        // Busy: no new retraining, and drift seen meanwhile does not count.
        for t in 5..8 {
            let busy = Facts { busy: true, ..facts(t, 5) };
            assert_eq!(decide(&p, &mut s, &busy), Decision::Wait);
        }
        assert_eq!(decide(&p, &mut s, &facts(8, 5)), Decision::Wait, "the count starts again after a retraining");
        assert_eq!(decide(&p, &mut s, &facts(9, 5)), Decision::Wait);
        assert!(matches!(decide(&p, &mut s, &facts(10, 5)), Decision::Retrain { .. }), "three checks of its own");
        for t in 11..13 {
            assert_eq!(decide(&p, &mut s, &facts(t, 5)), Decision::Wait);
        }
        assert!(matches!(decide(&p, &mut s, &facts(13, 5)), Decision::OverBudget { .. }), "two a day");
        assert_eq!(decide(&p, &mut s, &facts(14, 5)), Decision::Wait, "said once while the trigger holds");
        // A day after the first, there is budget again (the one at 10 still counts).
        assert!(matches!(decide(&p, &mut s, &facts(DAY_MS + 5, 5)), Decision::Retrain { .. }));
        assert_eq!(s.started_ms, [10, DAY_MS + 5]);
    }

    #[test]
    fn a_schedule_counts_from_the_last_retraining_even_weeks_back() {
        let weekly = POLICY.replace("min_precision = 0.5\nmin_verdicts = 4", "every_hours = 168");
        let p = RetrainPolicy::parse(&weekly, "p").unwrap();
        let mut s = PolicyState::default();
        let hour = 3_600_000;
        match decide(&p, &mut s, &facts(0, 0)) {
            Decision::Retrain { reason, .. } => assert_eq!(reason, "scheduled every 168 h", "none before: at once"),
            d => panic!("{d:?}"),
        }
        for h in [1, 25, 100, 167] {
            assert_eq!(decide(&p, &mut s, &facts(h * hour, 0)), Decision::Wait, "{h} h after");
        }
        assert!(matches!(decide(&p, &mut s, &facts(168 * hour, 0)), Decision::Retrain { .. }));
        // A retraining for another reason restarts the week.
        let mut s = PolicyState::default();
        let low_precision = Facts { confirmed: 0, false_alarms: 5, ..facts(10 * hour, 0) };
        let p = RetrainPolicy::parse(&POLICY.replace("min_verdicts = 4", "min_verdicts = 4\nevery_hours = 168"), "p")
            .unwrap();
        assert!(matches!(decide(&p, &mut s, &low_precision), Decision::Retrain { .. }));
        assert_eq!(decide(&p, &mut s, &facts(170 * hour, 0)), Decision::Wait, "160 h after the last");
        assert!(matches!(decide(&p, &mut s, &facts(178 * hour, 0)), Decision::Retrain { .. }));
    }

    #[test]
    fn a_drift_the_retrained_version_did_not_absorb_waits_until_it_clears() {
        let p = RetrainPolicy::parse(&POLICY.replace("drift_share = 0.3", "class_drift = 2.0"), "p").unwrap();
        let f = |t, champion, distance: Option<f64>| Facts {
            champion: Some(champion),
            class: distance.map(pool_of_nine),
            ..facts(t, 0)
        };
        let mut s = PolicyState::default();
        for t in 0..2 {
            assert_eq!(decide(&p, &mut s, &f(t, 1, Some(2.5))), Decision::Wait);
        }
        assert!(matches!(decide(&p, &mut s, &f(2, 1, Some(2.5))), Decision::Retrain { .. }));
        // Version 2, trained on it, is champion; its devices still stand 2.3 σ from its
        // reference: said once, then quiet, however long it lasts.
        match decide(&p, &mut s, &f(3, 2, Some(2.3))) {
            Decision::DriftHeld { reason } => assert_eq!(
                reason,
                "drift persists against version 2, retrained on drift from version 1: its devices pooled stand 2.30 σ \
                 from the reference on motor_c; not retrained on drift again until it clears"
            ),
            d => panic!("{d:?}"),
        }
        for t in 4..10 {
            assert_eq!(decide(&p, &mut s, &f(t, 2, Some(2.3))), Decision::Wait);
        }
        // Feedback still counts while the drift is held.
        let low_precision = Facts { confirmed: 0, false_alarms: 5, ..f(10, 2, Some(2.3)) };
        assert!(matches!(decide(&p, &mut s, &low_precision), Decision::Retrain { .. }));
        // No pool is no evidence that it cleared.
        for t in 11..14 {
            assert_eq!(decide(&p, &mut s, &f(t, 3, None)), Decision::Wait);
        }
        assert_eq!(decide(&p, &mut s, &f(14, 3, Some(2.3))), Decision::Wait);
        assert_eq!(s.drift_retrained_from, Some(1));
        // Under the trigger but not well inside it: still held.
        assert_eq!(decide(&p, &mut s, &f(15, 3, Some(1.8))), Decision::Wait);
        assert_eq!(decide(&p, &mut s, &f(16, 3, Some(2.3))), Decision::Wait);
        assert_eq!(s.drift_retrained_from, Some(1));
        // Cleared once below three quarters of it: a new drift counts again (the budget of two
        // a day is spent by now).
        assert_eq!(decide(&p, &mut s, &f(17, 3, Some(1.4))), Decision::Wait);
        assert_eq!(s.drift_retrained_from, None);
        for t in 18..20 {
            assert_eq!(decide(&p, &mut s, &f(t, 3, Some(2.4))), Decision::Wait);
        }
        assert!(matches!(decide(&p, &mut s, &f(20, 3, Some(2.4))), Decision::OverBudget { .. }));
        // A class too small to pool clears on its devices' own drift alone.
        let both =
            RetrainPolicy::parse(&POLICY.replace("drift_share = 0.3", "drift_share = 0.3\nclass_drift = 2.0"), "p")
                .unwrap();
        let mut s = PolicyState { drift_retrained_from: Some(1), ..PolicyState::default() };
        let pair = |drifting| Facts { devices: 2, drifting, ..f(0, 2, None) };
        assert!(matches!(decide(&both, &mut s, &pair(1)), Decision::DriftHeld { .. }), "one of two in drift");
        assert_eq!(s.drift_retrained_from, Some(1));
        assert_eq!(decide(&both, &mut s, &pair(0)), Decision::Wait);
        assert_eq!(s.drift_retrained_from, None);
        // A version refused by its fleet sends the champion back to the one drifted from: its
        // drift counts (a retraining may try again).
        let mut s = PolicyState { drift_retrained_from: Some(1), ..PolicyState::default() };
        for t in 0..2 {
            assert_eq!(decide(&p, &mut s, &f(t, 1, Some(2.5))), Decision::Wait);
        }
        assert!(matches!(decide(&p, &mut s, &f(2, 1, Some(2.5))), Decision::Retrain { .. }));
    }

    #[test]
    fn a_further_drift_while_one_is_held_retrains() {
        let p = RetrainPolicy::parse(&POLICY.replace("drift_share = 0.3", "class_drift = 2.0"), "p").unwrap();
        // The pool's distance on two features; the worst of them is the class's distance.
        let f = |t, champion, busy, motor: f64, bearing: f64| {
            let features: BTreeMap<String, f64> =
                [("motor_c".to_string(), motor), ("bearing_t".to_string(), bearing)].into();
            let (feature, distance) = if motor >= bearing { ("motor_c", motor) } else { ("bearing_t", bearing) };
            let class = crate::drift::ClassDrift { devices: 9, pooled: 8, feature: feature.into(), distance, features };
            Facts { champion: Some(champion), class: Some(class), busy, ..facts(t, 0) }
        };
        let mut s = PolicyState { drift_retrained_from: Some(1), ..PolicyState::default() };
        // Version 2 rolling out: its devices' pool is not yet where the hold stands.
        assert_eq!(decide(&p, &mut s, &f(0, 2, true, 1.0, 0.4)), Decision::Wait);
        assert_eq!(s.held_at, None);
        assert!(matches!(decide(&p, &mut s, &f(1, 2, false, 3.4, 0.4)), Decision::DriftHeld { .. }));
        let at = |motor: f64, bearing: f64| {
            Some(HeldAt { champion: 2, features: [("motor_c".into(), motor), ("bearing_t".into(), bearing)].into() })
        };
        assert_eq!(s.held_at, at(3.4, 0.4), "taken at the first check after the rollout");
        // The held drift going on as it was, or another feature moving less than a trigger's
        // level: still held.
        for t in 2..8 {
            assert_eq!(decide(&p, &mut s, &f(t, 2, false, 4.9, 2.3)), Decision::Wait, "check {t}");
        }
        assert_eq!(s.held_at, at(3.4, 0.4), "where it stood when held, not where it went since");
        // Bearing temperature moves 2.1 σ beyond where it stood, though the worst feature is still
        // the held one: three checks in a row retrain, from version 2.
        assert_eq!(decide(&p, &mut s, &f(8, 2, false, 3.5, 2.5)), Decision::Wait);
        assert_eq!(decide(&p, &mut s, &f(9, 2, false, 3.5, 1.0)), Decision::Wait, "one check under: count again");
        assert_eq!(decide(&p, &mut s, &f(10, 2, false, 3.5, 2.5)), Decision::Wait);
        assert_eq!(decide(&p, &mut s, &f(11, 2, false, 3.5, 2.6)), Decision::Wait);
        match decide(&p, &mut s, &f(12, 2, false, 3.5, 2.6)) {
            Decision::Retrain { reason, evidence } => {
                assert_eq!(
                    reason,
                    "a further drift while the last is held: the class's pool stands 2.60 σ from version 2's \
                     reference on bearing_t, 2.20 σ beyond where it stood when held, for 3 checks in a row"
                );
                assert_eq!(evidence["held_at"]["features"]["bearing_t"], 0.4);
            }
            d => panic!("{d:?}"),
        }
        assert_eq!((s.drift_retrained_from, s.held_at.clone()), (Some(2), None));
        // Version 3 takes over the hold, measured afresh against its own reference.
        assert!(matches!(decide(&p, &mut s, &f(13, 3, false, 3.0, 2.5)), Decision::DriftHeld { .. }));
        assert_eq!(s.held_at.as_ref().map(|h| h.champion), Some(3));
        // Without class_drift in the policy there is no pool to measure a further drift by.
        let share_only = RetrainPolicy::parse(POLICY, "p").unwrap();
        let mut s = PolicyState { drift_retrained_from: Some(1), ..PolicyState::default() };
        for t in 0..6 {
            let d = decide(&share_only, &mut s, &Facts { drifting: 5, ..f(t, 2, false, 0.5, 9.0) });
            assert!(matches!(d, Decision::Wait | Decision::DriftHeld { .. }), "{d:?}");
        }
    }

    #[test]
    fn low_precision_triggers_once_enough_verdicts_are_in() {
        let p = RetrainPolicy::parse(POLICY, "p").unwrap();
        let mut s = PolicyState::default();
        let f = |c, fa| Facts { confirmed: c, false_alarms: fa, ..facts(0, 0) };
        assert_eq!(decide(&p, &mut s, &f(0, 3)), Decision::Wait, "3 verdicts are not enough");
        assert_eq!(decide(&p, &mut s, &f(3, 1)), Decision::Wait, "precision 0.75");
        assert_eq!(decide(&p, &mut s, &f(2, 3)), Decision::Wait, "0.40 of 5 leaves 0.73 plausible");
        match decide(&p, &mut s, &f(1, 7)) {
            Decision::Retrain { reason, evidence } => {
                assert!(reason.contains("0.12 from 8 verdicts") && reason.contains("at most 0.41 at 95 %"), "{reason}");
                assert_eq!(evidence["precision"], 0.125);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_precision_confidence_of_one_half_judges_the_verdicts_share_itself() {
        let p = RetrainPolicy::parse(
            &POLICY.replace("min_verdicts = 4", "min_verdicts = 4\nprecision_confidence = 0.5"),
            "p",
        )
        .unwrap();
        let f = |c, fa| Facts { confirmed: c, false_alarms: fa, ..facts(0, 0) };
        match decide(&p, &mut PolicyState::default(), &f(2, 3)) {
            Decision::Retrain { reason, .. } => {
                assert_eq!(reason, "alert precision 0.40 from 5 verdicts is below 0.50")
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(decide(&p, &mut PolicyState::default(), &f(3, 2)), Decision::Wait);
        for bad in ["0.4", "1.0"] {
            let text = POLICY.replace("min_verdicts = 4", &format!("min_verdicts = 4\nprecision_confidence = {bad}"));
            let error = RetrainPolicy::parse(&text, "p").unwrap_err();
            assert!(error.contains("precision_confidence"), "{error}");
        }
    }

    #[test]
    fn an_elevated_alert_rate_on_enough_devices_triggers() {
        let off = RetrainPolicy::parse(POLICY, "p").unwrap();
        let on = RetrainPolicy::parse(&POLICY.replace("min_precision", "alert_rate_share = 0.5\nmin_precision"), "p")
            .unwrap();
        let f = |elevated| Facts { elevated, ..facts(0, 0) };
        assert_eq!(decide(&off, &mut PolicyState::default(), &f(10)), Decision::Wait, "not in the policy");
        assert_eq!(decide(&on, &mut PolicyState::default(), &f(4)), Decision::Wait, "4 of 10 is below half");
        match decide(&on, &mut PolicyState::default(), &f(5)) {
            Decision::Retrain { reason, evidence } => {
                assert_eq!(reason, "alert rate elevated on 5 of 10 devices (50 %)");
                assert_eq!(evidence["elevated"], 5);
            }
            d => panic!("{d:?}"),
        }
        let none = Facts { devices: 0, ..f(0) };
        assert_eq!(decide(&on, &mut PolicyState::default(), &none), Decision::Wait, "no devices, no evidence");
    }

    #[test]
    fn a_class_pooled_far_from_its_reference_for_enough_checks_triggers() {
        let on = RetrainPolicy::parse(&POLICY.replace("drift_share = 0.3", "class_drift = 0.8"), "p").unwrap();
        let f = |distance| Facts { set_aside: 1, class: Some(pool_of_nine(distance)), ..facts(0, 0) };
        let mut s = PolicyState::default();
        // Three checks in a row at or over 0.8; one below starts the count afresh.
        assert_eq!(decide(&on, &mut s, &f(0.9)), Decision::Wait);
        assert_eq!(decide(&on, &mut s, &f(0.5)), Decision::Wait);
        assert_eq!(decide(&on, &mut s, &f(0.8)), Decision::Wait);
        assert_eq!(decide(&on, &mut s, &f(1.2)), Decision::Wait);
        match decide(&on, &mut s, &f(1.0)) {
            Decision::Retrain { reason, evidence } => {
                assert_eq!(
                    reason,
                    "class drift: the latest sketches of 9 of 10 devices (1 more set aside under a labelled incident) \
                     pooled (8 nearest kept) are 1.00 σ from the reference on motor_c for 3 checks in a row"
                );
                assert_eq!(evidence["class_drift"]["distance"], 1.0);
            }
            d => panic!("{d:?}"),
        }
        let off = RetrainPolicy::parse(POLICY, "p").unwrap();
        let mut s = PolicyState::default();
        for _ in 0..5 {
            assert_eq!(decide(&off, &mut s, &f(5.0)), Decision::Wait, "not in the policy");
        }
        let mut s = PolicyState::default();
        for _ in 0..5 {
            assert_eq!(decide(&on, &mut s, &Facts { class: None, ..f(0.0) }), Decision::Wait, "no pool, no evidence");
        }
        // A check without a pool between two with one neither counts nor starts the count again.
        let mut s = PolicyState::default();
        assert_eq!(decide(&on, &mut s, &f(0.9)), Decision::Wait);
        assert_eq!(decide(&on, &mut s, &Facts { class: None, ..f(0.0) }), Decision::Wait);
        assert_eq!(s.drift_rounds, 1);
        assert_eq!(decide(&on, &mut s, &f(0.9)), Decision::Wait);
        assert!(matches!(decide(&on, &mut s, &f(0.9)), Decision::Retrain { .. }), "the third check with a pool");
    }

    #[test]
    fn mistakes_in_a_policy_are_named() {
        let e = |t: &str| RetrainPolicy::parse(t, "p.toml").unwrap_err();
        assert!(e(&POLICY.replace("drift_share = 0.3", "drift_share = 3")).contains("drift_share"));
        assert!(e(&POLICY.replace("drift_share = 0.3", "alert_rate_share = -1")).contains("alert_rate_share"));
        assert!(e(&POLICY.replace("drift_share = 0.3", "class_drift = 0")).contains("class_drift"));
        assert!(e(&POLICY.replace("hours = 24", "hours = 0")).contains("data.hours"));
        assert!(e(&POLICY.replace("tags.site = 'gulf'", "tags.site = ")).contains("data.condition"));
        assert!(e(&POLICY.replace("[budget]", "[budget]\nper_week = 1")).contains("per_week"));
        let none = "version = 1\n[triggers]\n[data]\ncondition = \"*\"\nhours = 1\n";
        assert!(e(none).contains("at least one"));
    }
}
