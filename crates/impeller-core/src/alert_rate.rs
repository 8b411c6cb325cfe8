//! Alert rate: does a device alarm more often than its model did on validation data? A
//! one-sided Poisson test of the alerts a device raised over the time it scored (a sliding
//! window of device time) against the model's false-alarm rate, with hysteresis so that a rate
//! at the edge does not flap.
//!
//! The expected rate is the validation's false alarms per normal device-day plus one alarm
//! over the validated time: a model with no false alarm in validation is then not judged
//! elevated at its first alert, and a short validation counts for less.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertRatePolicy {
    /// Device time looked back over, in milliseconds.
    pub window_ms: i64,
    /// Scoring time needed in the window before a rate is judged at all.
    pub min_scored_ms: i64,
    /// Fewer alerts than this are never elevated, whatever the expected rate.
    pub min_alerts: u64,
    /// Chance under the expected rate of seeing at least as many alerts, below which the rate
    /// is elevated…
    pub alpha: f64,
    /// … and above which an elevated rate is normal again.
    pub clear_alpha: f64,
}

impl Default for AlertRatePolicy {
    fn default() -> Self {
        AlertRatePolicy {
            window_ms: 24 * 3_600_000,
            min_scored_ms: 3_600_000,
            min_alerts: 3,
            alpha: 1e-3,
            clear_alpha: 0.05,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertRateState {
    /// Too little scoring time in the window to judge.
    #[default]
    Unjudged,
    Normal,
    Elevated,
}

impl AlertRateState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertRateState::Unjudged => "unjudged",
            AlertRateState::Normal => "normal",
            AlertRateState::Elevated => "elevated",
        }
    }

    pub fn parse(s: &str) -> AlertRateState {
        match s {
            "normal" => AlertRateState::Normal,
            "elevated" => AlertRateState::Elevated,
            _ => AlertRateState::Unjudged,
        }
    }
}

/// The expected alerts per device-day from a model's validation metrics
/// (`false_alarms_per_day` over `normal_device_days`); `None` when the model has no such
/// figures.
pub fn expected_per_day(metrics: &BTreeMap<String, f64>) -> Option<f64> {
    let rate = *metrics.get("false_alarms_per_day")?;
    let days = *metrics.get("normal_device_days")?;
    (rate.is_finite() && rate >= 0.0 && days.is_finite() && days > 0.0).then(|| rate + 1.0 / days)
}

/// One judgement of a device's window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    pub state: AlertRateState,
    /// Alerts expected over the scored time at the expected rate.
    pub expected: f64,
    /// Chance of at least the observed alerts at that expectation.
    pub p_value: f64,
}

/// Judges `alerts` over `scored_ms` of scoring against `per_day` expected, from the state the
/// device was in.
pub fn judge(policy: &AlertRatePolicy, before: AlertRateState, alerts: u64, scored_ms: i64, per_day: f64) -> Judgement {
    let expected = per_day.max(0.0) * scored_ms.max(0) as f64 / 86_400_000.0;
    let p_value = poisson_at_least(alerts, expected);
    let elevated = alerts >= policy.min_alerts && p_value < policy.alpha;
    let state = if scored_ms < policy.min_scored_ms && !elevated {
        // An elevated device stays so until enough calm time says otherwise.
        if before == AlertRateState::Elevated { before } else { AlertRateState::Unjudged }
    } else if elevated || (before == AlertRateState::Elevated && p_value < policy.clear_alpha) {
        AlertRateState::Elevated
    } else {
        AlertRateState::Normal
    };
    Judgement { state, expected, p_value }
}

/// P(X ≥ k) for X ~ Poisson(λ).
pub fn poisson_at_least(k: u64, lambda: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if lambda.is_nan() || lambda <= 0.0 {
        return 0.0;
    }
    // P(X = i) in log space, from i = 0 up.
    let ln_term = |i: u64| -lambda + i as f64 * lambda.ln() - (1..=i).map(|j| (j as f64).ln()).sum::<f64>();
    if k as f64 <= lambda {
        // The tail is large: one minus the (short) lower sum loses nothing that matters.
        let mut term = (-lambda).exp();
        let mut below = 0.0;
        for i in 0..k {
            below += term;
            term *= lambda / (i + 1) as f64;
        }
        return (1.0 - below).clamp(0.0, 1.0);
    }
    // The tail is small: sum it from k up; terms fall by at least λ/(k+1) < 1 each step.
    let mut term = ln_term(k).exp();
    let mut sum = 0.0;
    let mut i = k;
    while term > sum * 1e-17 && term > 0.0 {
        sum += term;
        i += 1;
        term *= lambda / i as f64;
    }
    sum.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// P(X ≥ k) by the definition, for small k.
    fn direct(k: u64, lambda: f64) -> f64 {
        let mut fact = 1.0;
        let mut below = 0.0;
        for i in 0..k {
            if i > 0 {
                fact *= i as f64;
            }
            below += (-lambda).exp() * lambda.powi(i as i32) / fact;
        }
        1.0 - below
    }

    #[test]
    fn poisson_tail_matches_the_definition_on_both_sides_of_lambda() {
        for &lambda in &[0.01, 0.5, 3.0, 12.5] {
            for k in 0..15 {
                let (got, want) = (poisson_at_least(k, lambda), direct(k, lambda));
                assert!((got - want).abs() < 1e-12 + want * 1e-9, "k={k} λ={lambda}: {got} vs {want}");
            }
        }
        // P(X ≥ 3; 0.5) = 1 − e^−0.5 (1 + 0.5 + 0.125).
        assert!((poisson_at_least(3, 0.5) - (1.0 - (-0.5f64).exp() * 1.625)).abs() < 1e-15);
        assert_eq!(poisson_at_least(0, 0.0), 1.0);
        assert_eq!(poisson_at_least(1, 0.0), 0.0);
        // Far tails stay finite and ordered.
        let (a, b) = (poisson_at_least(100, 1.0), poisson_at_least(101, 1.0));
        assert!(a > 0.0 && b < a && a < 1e-150, "{a} {b}");
        assert!(poisson_at_least(5000, 4000.0) < 1e-40);
    }

    #[test]
    fn a_device_alarming_far_above_validation_is_elevated_until_calm_again() {
        let p = AlertRatePolicy::default();
        let hours = |h: i64| h * 3_600_000;
        // One false alarm a day expected; an hour of scoring is not enough to judge 0 alerts.
        assert_eq!(judge(&p, AlertRateState::Unjudged, 0, hours(1) / 2, 1.0).state, AlertRateState::Unjudged);
        assert_eq!(judge(&p, AlertRateState::Unjudged, 1, hours(12), 1.0).state, AlertRateState::Normal);
        // Eight alerts in six hours at one a day: p ≈ 1e-8.
        let j = judge(&p, AlertRateState::Normal, 8, hours(6), 1.0);
        assert_eq!(j.state, AlertRateState::Elevated);
        assert!((j.expected - 0.25).abs() < 1e-12 && j.p_value < 1e-6, "{j:?}");
        // Even early, a storm is elevated.
        assert_eq!(judge(&p, AlertRateState::Normal, 10, hours(1) / 4, 1.0).state, AlertRateState::Elevated);
        // Two alerts are never enough.
        assert_eq!(judge(&p, AlertRateState::Normal, 2, hours(6), 0.01).state, AlertRateState::Normal);
        // Hysteresis: 3 in 24 h at 1/day has p ≈ 0.08 — not elevated from normal…
        let edge = judge(&p, AlertRateState::Normal, 3, hours(24), 1.0);
        assert_eq!(edge.state, AlertRateState::Normal);
        // … and 4 in 24 h (p ≈ 0.019) keeps an elevated device elevated, 3 clears it.
        assert_eq!(judge(&p, AlertRateState::Elevated, 4, hours(24), 1.0).state, AlertRateState::Elevated);
        assert_eq!(judge(&p, AlertRateState::Elevated, 3, hours(24), 1.0).state, AlertRateState::Normal);
        assert_eq!(judge(&p, AlertRateState::Elevated, 0, 0, 1.0).state, AlertRateState::Elevated);
    }

    #[test]
    fn expected_rate_adds_one_alarm_over_the_validated_time() {
        let m = |fa: f64, days: f64| {
            [("false_alarms_per_day".to_string(), fa), ("normal_device_days".to_string(), days)].into_iter().collect()
        };
        assert_eq!(expected_per_day(&m(0.0, 0.5)), Some(2.0));
        assert_eq!(expected_per_day(&m(3.0, 10.0)), Some(3.1));
        assert_eq!(expected_per_day(&m(1.0, 0.0)), None);
        assert_eq!(expected_per_day(&BTreeMap::new()), None);
    }
}
