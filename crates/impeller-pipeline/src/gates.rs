//! Validation gates: the spec's thresholds checked against the candidate's evaluation and the
//! champion's on the same data. Each result says what was measured, against what, and by how
//! much it passed or failed.

use serde::{Deserialize, Serialize};

use crate::evaluate::{Agreement, Evaluation};
use crate::spec::Gates;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// The gate's name in the spec (`min_f1`, …) or `fit:{profile}`.
    pub gate: String,
    pub passed: bool,
    /// What was measured, where it is a number.
    pub value: Option<f64>,
    /// The limit it was held to.
    pub limit: Option<f64>,
    /// The verdict in words, with the margin.
    pub detail: String,
}

pub fn all_passed(results: &[GateResult]) -> bool {
    results.iter().all(|g| g.passed)
}

/// Checks every gate the spec sets. `champion`: the current champion's evaluation on the same
/// parts, if there is a champion.
pub fn check(gates: &Gates, candidate: &Evaluation, champion: Option<&Evaluation>) -> Vec<GateResult> {
    let mut out = Vec::new();
    let mut bound = |gate: &str, what: &str, value: Option<f64>, limit: Option<f64>, upper: bool| {
        let Some(limit) = limit else { return };
        let (passed, detail) = match value {
            None => (false, format!("{what} is undefined on the validation data (nothing to measure it on)")),
            Some(v) => {
                let margin = if upper { limit - v } else { v - limit };
                let relation = if upper { "at most" } else { "at least" };
                if margin >= 0.0 {
                    (true, format!("{what} {v:.4} is {relation} {limit:.4} (margin {margin:.4})"))
                } else {
                    (false, format!("{what} {v:.4} should be {relation} {limit:.4}: off by {:.4}", -margin))
                }
            }
        };
        out.push(GateResult { gate: gate.into(), passed, value, limit: Some(limit), detail });
    };
    bound("min_f1", "F1", candidate.f1, gates.min_f1, false);
    bound("max_far", "false-alarm rate", candidate.far, gates.max_far, true);
    bound("max_mar", "missed-alarm rate", candidate.mar, gates.max_mar, true);
    bound("max_alerts_per_day", "alarms per device-day", candidate.alarms_per_day, gates.max_alerts_per_day, true);
    bound("max_median_delay_s", "median detection delay (s)", candidate.median_delay_s, gates.max_median_delay_s, true);
    if let Some(drop) = gates.max_f1_drop {
        out.push(match (champion, champion.and_then(|c| c.f1), candidate.f1) {
            (None, _, _) => GateResult {
                gate: "max_f1_drop".into(),
                passed: true,
                value: candidate.f1,
                limit: None,
                detail: "no champion yet: nothing to compare with".into(),
            },
            (Some(_), Some(best), Some(f1)) => {
                let limit = best - drop;
                let margin = f1 - limit;
                GateResult {
                    gate: "max_f1_drop".into(),
                    passed: margin >= 0.0,
                    value: Some(f1),
                    limit: Some(limit),
                    detail: if margin >= 0.0 {
                        format!("F1 {f1:.4} against the champion's {best:.4}: within {drop:.4} (margin {margin:.4})")
                    } else {
                        format!(
                            "F1 {f1:.4} is {:.4} below the champion's {best:.4}; at most {drop:.4} is allowed: off by {:.4}",
                            best - f1,
                            -margin
                        )
                    },
                }
            }
            (Some(_), _, f1) => GateResult {
                gate: "max_f1_drop".into(),
                passed: false,
                value: f1,
                limit: None,
                detail: "F1 of the candidate or the champion is undefined on the validation data".into(),
            },
        });
    }
    out
}

/// The int8 variant's alarms against the float model's (`min_int8_agreement`, 0.99 unless the
/// spec says otherwise).
pub fn int8_agreement(gates: &Gates, a: &Agreement) -> GateResult {
    let limit = gates.min_int8_agreement.unwrap_or(DEFAULT_MIN_INT8_AGREEMENT);
    let margin = a.alarm_agreement - limit;
    let said = format!(
        "int8 alarms equal the float model's on {:.2} % of {} frames ({} against {} alarms raised; scores differ by at most {:.1} %, p99 {:.1} %)",
        100.0 * a.alarm_agreement,
        a.frames,
        a.alarms_candidate,
        a.alarms_reference,
        100.0 * a.max_rel_score_diff,
        100.0 * a.p99_rel_score_diff
    );
    GateResult {
        gate: "min_int8_agreement".into(),
        passed: margin >= 0.0,
        value: Some(a.alarm_agreement),
        limit: Some(limit),
        detail: if margin >= 0.0 {
            format!("{said}: at least {:.2} % (margin {:.2} points)", 100.0 * limit, 100.0 * margin)
        } else {
            format!("{said}: should be at least {:.2} %, off by {:.2} points", 100.0 * limit, -100.0 * margin)
        },
    }
}

pub const DEFAULT_MIN_INT8_AGREEMENT: f64 = 0.99;

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(f1: f64, far: f64) -> Evaluation {
        Evaluation {
            parts: 1,
            scored_rows: 100,
            anomalous_rows: 10,
            tp: 0,
            tn: 0,
            fp: 0,
            fn_: 0,
            f1: Some(f1),
            far: Some(far),
            mar: None,
            anomalies: 1,
            detected: 1,
            median_delay_s: Some(4.0),
            alarms: 2,
            device_days: 0.5,
            alarms_per_day: Some(4.0),
            false_alarms: 1,
            normal_device_days: 0.45,
            false_alarms_per_day: Some(2.2),
            per_part: vec![],
        }
    }

    #[test]
    fn each_gate_says_by_how_much() {
        let gates = Gates {
            max_f1_drop: Some(0.01),
            min_f1: Some(0.7),
            max_far: Some(0.1),
            max_mar: Some(0.5),
            ..Default::default()
        };
        let results = check(&gates, &eval(0.75, 0.2), Some(&eval(0.8, 0.05)));
        let by = |g: &str| results.iter().find(|r| r.gate == g).unwrap();
        assert!(by("min_f1").passed);
        assert!(!by("max_far").passed && by("max_far").detail.contains("off by 0.1000"), "{}", by("max_far").detail);
        assert!(!by("max_mar").passed && by("max_mar").detail.contains("undefined"));
        let drop = by("max_f1_drop");
        assert!(!drop.passed && drop.detail.contains("0.0500 below the champion's 0.8000"), "{}", drop.detail);
        assert!(!all_passed(&results));
        let first = check(&gates, &eval(0.75, 0.05), None);
        assert!(first.iter().find(|r| r.gate == "max_f1_drop").unwrap().passed, "no champion: nothing to lose to");
    }

    #[test]
    fn the_int8_gate_holds_the_alarm_agreement_to_its_limit_or_the_default() {
        let a = Agreement {
            frames: 1000,
            alarm_agreement: 0.985,
            max_rel_score_diff: 0.2,
            p99_rel_score_diff: 0.01,
            alarms_reference: 4,
            alarms_candidate: 6,
        };
        let by_default = int8_agreement(&Gates::default(), &a);
        assert!(!by_default.passed, "{by_default:?}");
        assert_eq!(by_default.limit, Some(DEFAULT_MIN_INT8_AGREEMENT));
        assert!(by_default.detail.contains("98.50 % of 1000 frames (6 against 4 alarms"), "{}", by_default.detail);
        assert!(by_default.detail.contains("off by 0.50 points"), "{}", by_default.detail);
        let lenient = int8_agreement(&Gates { min_int8_agreement: Some(0.98), ..Default::default() }, &a);
        assert!(lenient.passed && lenient.detail.contains("margin 0.50 points"), "{}", lenient.detail);
    }
}
