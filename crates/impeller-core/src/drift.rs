//! Drift: how far the features a device scores have moved from the training data, from the
//! device's sketches against the reference shipped in the package (both histograms of
//! standardised features on the same bins, see [`crate::sketch`]).
//!
//! Per feature: the population stability index (PSI), the Kolmogorov–Smirnov distance and the
//! Wasserstein-1 distance (in training standard deviations). The monitor judges the worst
//! feature's Wasserstein distance: a device's short interval covers only part of what the class
//! did in training (one operating point, one time of day), which sends PSI and KS to their
//! maximum on healthy data (PSI 6.7 to 12 for ten healthy minutes of a simulated pump), while the
//! Wasserstein distance says how far, in standard deviations, the data has moved. Over time: a
//! Page–Hinkley test on that distance, so a drift that stays below the alarm in every interval
//! is still caught, with hysteresis so that the state does not flap.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sketch::Sketch;

/// Width of a sketch bin, in standard deviations (tails counted as one bin).
const BIN_WIDTH: f64 = 0.25;
/// Share given to an empty bin so that PSI stays finite.
const FLOOR: f64 = 1e-4;

/// Thresholds on the worst feature's Wasserstein distance, in training standard deviations.
/// Defaults from the simulated fleet (docs/BENCHMARKS.md, the demo): ten healthy minutes of one
/// pump sit 0.84 to 2.56 from their class's reference; a 10 °C heat wave flags every pump of
/// its site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftPolicy {
    /// Distance of one interval that means "watch".
    pub warn: f64,
    /// Distance of one interval that means drift at once.
    pub alarm: f64,
    /// Intervals with fewer feature vectors are not judged.
    pub min_count: u64,
    /// Page–Hinkley: the distance tolerated in every interval before excess accumulates…
    pub ph_delta: f64,
    /// … and the accumulated excess that means drift.
    pub ph_lambda: f64,
    /// Calm intervals (below `warn`) in a row before a drift state clears.
    pub clear_after: u32,
}

impl Default for DriftPolicy {
    fn default() -> Self {
        DriftPolicy { warn: 2.0, alarm: 3.5, min_count: 100, ph_delta: 2.2, ph_lambda: 3.0, clear_after: 3 }
    }
}

/// One feature's distance from its reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    pub feature: String,
    pub psi: f64,
    pub ks: f64,
    pub wasserstein: f64,
}

/// One interval's sketch against the reference: every feature, worst (by Wasserstein) first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub count: u64,
    pub features: Vec<FeatureDrift>,
}

impl Comparison {
    pub fn worst(&self) -> Option<&FeatureDrift> {
        self.features.first()
    }

    pub fn max_wasserstein(&self) -> f64 {
        self.worst().map_or(0.0, |f| f.wasserstein)
    }

    pub fn max_psi(&self) -> f64 {
        self.features.iter().map(|f| f.psi).fold(0.0, f64::max)
    }
}

/// Counts as shares of their total. Counts come from devices: summed as floats, so that no
/// count, however large, can overflow.
fn shares(counts: &[u64]) -> Vec<f64> {
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    counts.iter().map(|&c| if total > 0.0 { c as f64 / total } else { 0.0 }).collect()
}

/// Population stability index: Σ (c − r)·ln(c / r), empty bins floored.
pub fn psi(reference: &[u64], current: &[u64]) -> f64 {
    shares(reference)
        .iter()
        .zip(shares(current))
        .map(|(&r, c)| {
            let (r, c) = (r.max(FLOOR), c.max(FLOOR));
            (c - r) * libm::log(c / r)
        })
        .sum()
}

/// Largest gap between the two cumulative distributions (0 to 1).
pub fn ks(reference: &[u64], current: &[u64]) -> f64 {
    let (r, c) = (shares(reference), shares(current));
    let (mut fr, mut fc, mut worst) = (0.0, 0.0, 0.0f64);
    for (a, b) in r.iter().zip(&c) {
        fr += a;
        fc += b;
        worst = worst.max((fr - fc).abs());
    }
    worst
}

/// Earth mover's distance between the histograms, in standard deviations.
pub fn wasserstein(reference: &[u64], current: &[u64]) -> f64 {
    let (r, c) = (shares(reference), shares(current));
    let (mut fr, mut fc, mut sum) = (0.0, 0.0, 0.0);
    for (a, b) in r.iter().zip(&c) {
        fr += a;
        fc += b;
        sum += (fr - fc).abs() * BIN_WIDTH;
    }
    sum
}

/// Compares a sketch with the reference; `None` when their shapes differ (another model's).
pub fn compare(reference: &Sketch, current: &Sketch, names: &[String]) -> Option<Comparison> {
    let n = reference.bins.len();
    if current.bins.len() != n || names.len() != n || !reference.is_valid(n) || !current.is_valid(n) {
        return None;
    }
    let mut features: Vec<FeatureDrift> = names
        .iter()
        .zip(reference.bins.iter().zip(&current.bins))
        .map(|(name, (r, c))| FeatureDrift {
            feature: name.clone(),
            psi: psi(r, c),
            ks: ks(r, c),
            wasserstein: wasserstein(r, c),
        })
        .collect();
    features.sort_by(|a, b| b.wasserstein.total_cmp(&a.wasserstein));
    Some(Comparison { count: current.count, features })
}

/// Share of a class's devices, farthest from the rest, left out of its pool.
pub const CLASS_TRIM: f64 = 0.2;

/// Where a class of devices stands as a whole: their latest sketches pooled against the reference.
/// One device's interval covers one operating point, so on its own it sits 0.8 to 2.6 σ from
/// its class's reference when healthy, and a shift common to every device (a heat wave) must be
/// large to stand out of that; the pool covers the class's operating points as the training data
/// did, so such a shift shows in it long before most devices cross their own threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassDrift {
    /// Devices whose latest sketch was fresh enough to count, and how many of them were pooled
    /// (`CLASS_TRIM` of them, the farthest from the others, left out: a fault is one pump's, a
    /// shift of the site is every pump's).
    pub devices: u64,
    pub pooled: u64,
    /// The pool's worst feature and its Wasserstein distance, in training standard deviations.
    pub feature: String,
    pub distance: f64,
    /// Every feature's distance: what a held drift is measured against (see
    /// [`crate::retrain`]), since a new drift may move another feature than the worst.
    #[serde(default)]
    pub features: BTreeMap<String, f64>,
}

/// Fewer fresh sketches than this (or than half the class's devices) say nothing of a class.
pub const MIN_CLASS_DEVICES: usize = 3;

/// Pools `sketches`, one a device, leaving out the `CLASS_TRIM` share farthest from the pool of
/// them all, and compares the pool with the reference. Trimmed by distance from the class, not
/// from the reference: when every device moves, the ones that moved most are not outliers, and
/// leaving them out would hide the very shift looked for. `None` when no sketch fits.
pub fn class_drift(reference: &Sketch, names: &[String], sketches: &[&Sketch]) -> Option<ClassDrift> {
    let features = reference.bins.len();
    let sketches: Vec<&Sketch> = sketches.iter().copied().filter(|s| s.is_valid(features) && s.count > 0).collect();
    if sketches.is_empty() {
        return None;
    }
    let mut all = Sketch::new(features);
    for s in &sketches {
        all.merge(s);
    }
    let mut by_distance: Vec<(f64, &Sketch)> =
        sketches.iter().map(|s| Some((compare(&all, s, names)?.max_wasserstein(), *s))).collect::<Option<_>>()?;
    by_distance.sort_by(|a, b| a.0.total_cmp(&b.0));
    let keep = by_distance.len() - (by_distance.len() as f64 * CLASS_TRIM).floor() as usize;
    let mut pool = Sketch::new(features);
    for (_, s) in &by_distance[..keep] {
        pool.merge(s);
    }
    let c = compare(reference, &pool, names)?;
    let worst = c.worst()?;
    Some(ClassDrift {
        devices: by_distance.len() as u64,
        pooled: keep as u64,
        feature: worst.feature.clone(),
        distance: worst.wasserstein,
        features: c.features.iter().map(|f| (f.feature.clone(), f.wasserstein)).collect(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftState {
    /// Too few intervals or vectors to say.
    Unknown,
    Stable,
    Warning,
    Drift,
}

impl DriftState {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftState::Unknown => "unknown",
            DriftState::Stable => "stable",
            DriftState::Warning => "warning",
            DriftState::Drift => "drift",
        }
    }
}

/// The sequential state of one device's model, carried from interval to interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftMonitor {
    pub state: DriftState,
    /// Intervals judged.
    pub n: u64,
    /// The Page–Hinkley sum and its minimum.
    pub sum: f64,
    pub min: f64,
    /// Calm intervals in a row while in drift.
    pub calm: u32,
}

impl Default for DriftMonitor {
    fn default() -> Self {
        DriftMonitor { state: DriftState::Unknown, n: 0, sum: 0.0, min: 0.0, calm: 0 }
    }
}

impl DriftMonitor {
    /// The Page–Hinkley statistic: how far the accumulated rise stands above its lowest point.
    pub fn page_hinkley(&self) -> f64 {
        self.sum - self.min
    }

    /// Takes one interval's comparison; returns the new state. Intervals with too few vectors
    /// leave the state as it was.
    pub fn update(&mut self, c: &Comparison, policy: &DriftPolicy) -> DriftState {
        if c.count < policy.min_count {
            return self.state;
        }
        let x = c.max_wasserstein();
        self.n += 1;
        // The reference is the training data, so the test accumulates excess above the
        // tolerated `ph_delta` rather than above the series' own mean, which a drift present
        // from the start would hide.
        self.sum += x - policy.ph_delta;
        self.min = self.min.min(self.sum);
        self.state = if self.state == DriftState::Drift {
            // Hysteresis: drift holds until `clear_after` calm intervals in a row, whatever the
            // accumulated sum says (it would take long to fall back below λ).
            self.calm = if x < policy.warn { self.calm + 1 } else { 0 };
            if self.calm >= policy.clear_after {
                // Recovered (or retrained): start the accumulation afresh.
                self.sum = 0.0;
                self.min = 0.0;
                self.calm = 0;
                DriftState::Stable
            } else {
                DriftState::Drift
            }
        } else if x >= policy.alarm || self.page_hinkley() > policy.ph_lambda {
            self.calm = 0;
            DriftState::Drift
        } else if x >= policy.warn {
            DriftState::Warning
        } else {
            DriftState::Stable
        };
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn gaussian(rng: &mut Rng) -> f64 {
        let (u1, u2) = (rng.next_f64().max(1e-300), rng.next_f64());
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(std::f64::consts::TAU * u2)
    }

    fn sketch(seed: u64, n: usize, shift: f64, scale: f64) -> Sketch {
        let mut rng = Rng::new(seed);
        let mut s = Sketch::new(2);
        for _ in 0..n {
            s.add(&[gaussian(&mut rng), shift + scale * gaussian(&mut rng)]);
        }
        s
    }

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn a_shift_of_the_whole_class_shows_in_its_pool_and_one_faulty_device_does_not() {
        let reference = sketch(1, 20_000, 0.0, 1.0);
        // Ten devices, each at its own operating point on feature b (offsets −1.8 to +1.8 σ):
        // each alone is far from the reference, the ten together are not.
        let devices = |shift: f64| -> Vec<Sketch> {
            (0..10).map(|i| sketch(10 + i, 600, -1.8 + 0.4 * i as f64 + shift, 0.3)).collect()
        };
        let judged = |sketches: &[Sketch]| -> Option<ClassDrift> {
            class_drift(&reference, &names(), &sketches.iter().collect::<Vec<_>>())
        };
        let healthy = devices(0.0);
        let own_max = healthy.iter().map(|s| compare(&reference, s, &names()).unwrap().max_wasserstein());
        assert!(own_max.fold(0.0, f64::max) > 1.4, "each device alone sits far from its class");
        let calm = judged(&healthy).unwrap();
        assert_eq!((calm.devices, calm.pooled), (10, 8));
        assert!(calm.distance < 0.3, "{calm:?}");
        let shifted = judged(&devices(1.0)).unwrap();
        assert!(shifted.distance > 0.8 && shifted.feature == "b", "{shifted:?}");
        assert_eq!(shifted.features.len(), 2, "every feature, not only the worst");
        assert_eq!(shifted.features["b"], shifted.distance);
        assert!(shifted.features["a"] < 0.3, "{shifted:?}");
        let mut one_faulty = healthy.clone();
        one_faulty[4] = sketch(99, 600, 20.0, 0.3);
        let faulty = judged(&one_faulty).unwrap();
        assert!(faulty.distance < 0.35, "the faulty device is left out of the pool: {faulty:?}");
        assert!(class_drift(&reference, &names(), &[]).is_none());
        assert!(class_drift(&reference, &names(), &[&Sketch::new(3)]).is_none(), "another model's sketch");
    }

    #[test]
    fn known_answers() {
        assert_eq!(psi(&[10, 10], &[10, 10]), 0.0);
        assert_eq!(ks(&[10, 0], &[0, 10]), 1.0);
        // All mass moved one bin: the distance is one bin width.
        assert!((wasserstein(&[10, 0, 0], &[0, 10, 0]) - BIN_WIDTH).abs() < 1e-12);
        // PSI of shares (0.5, 0.5) → (0.9, 0.1): 0.4·ln(1.8) + 0.4·ln(5) … with the second term negative.
        let want = (0.9 - 0.5) * (0.9f64 / 0.5).ln() + (0.1 - 0.5) * (0.1f64 / 0.5).ln();
        assert!((psi(&[5, 5], &[9, 1]) - want).abs() < 1e-12);
    }

    #[test]
    fn the_same_distribution_is_stable_and_a_shift_is_found_on_the_right_feature() {
        let reference = sketch(1, 20_000, 0.0, 1.0);
        let same = compare(&reference, &sketch(2, 2_000, 0.0, 1.0), &names()).unwrap();
        assert!(same.max_psi() < 0.05 && same.max_wasserstein() < 0.1, "{same:?}");
        let shifted = compare(&reference, &sketch(3, 2_000, 1.0, 1.0), &names()).unwrap();
        let worst = shifted.worst().unwrap();
        assert_eq!(worst.feature, "b");
        assert!(worst.psi > 0.5 && worst.ks > 0.3, "{worst:?}");
        assert!((worst.wasserstein - 1.0).abs() < 0.1, "a one-sigma shift moves one sigma: {worst:?}");
        let wider = compare(&reference, &sketch(4, 2_000, 0.0, 2.0), &names()).unwrap();
        assert_eq!(wider.worst().unwrap().feature, "b");
        assert!(compare(&reference, &Sketch::new(3), &["a".into(), "b".into(), "c".into()]).is_none());
    }

    #[test]
    fn page_hinkley_catches_a_drift_that_never_crosses_the_alarm() {
        let policy = DriftPolicy::default();
        let reference = sketch(1, 20_000, 0.0, 1.0);
        let mut m = DriftMonitor::default();
        for i in 0..10 {
            let c = compare(&reference, &sketch(100 + i, 2_000, 0.0, 1.0), &names()).unwrap();
            assert_ne!(m.update(&c, &policy), DriftState::Drift, "no drift in stable data");
        }
        // A shift of 2.8 sigma: above what is tolerated, below the alarm.
        let mut when = None;
        for i in 0..30 {
            let c = compare(&reference, &sketch(200 + i, 2_000, 2.8, 1.0), &names()).unwrap();
            assert!(c.max_wasserstein() < policy.alarm, "{}", c.max_wasserstein());
            if m.update(&c, &policy) == DriftState::Drift && when.is_none() {
                when = Some(i);
            }
        }
        assert!(when.is_some_and(|i| i < 10), "caught after {when:?} intervals");
        // Back to normal: drift holds for `clear_after` calm intervals, then clears and stays.
        let mut states = Vec::new();
        for i in 0..5 {
            let c = compare(&reference, &sketch(300 + i, 2_000, 0.0, 1.0), &names()).unwrap();
            states.push(m.update(&c, &policy));
        }
        assert_eq!(states[..2], [DriftState::Drift, DriftState::Drift]);
        assert_eq!(states[2..], [DriftState::Stable; 3]);
    }

    #[test]
    fn hostile_counts_give_finite_answers() {
        let reference = sketch(1, 20_000, 0.0, 1.0);
        let mut hostile = Sketch::new(2);
        hostile.count = u64::MAX;
        hostile.bins = vec![vec![u64::MAX; crate::sketch::BINS], vec![0; crate::sketch::BINS]];
        let c = compare(&reference, &hostile, &names()).unwrap();
        assert!(c.features.iter().all(|f| f.psi.is_finite() && f.ks.is_finite() && f.wasserstein.is_finite()), "{c:?}");
        let mut m = DriftMonitor::default();
        m.update(&c, &DriftPolicy::default());
        assert!(m.page_hinkley().is_finite());
    }

    #[test]
    fn small_intervals_are_not_judged() {
        let reference = sketch(1, 20_000, 0.0, 1.0);
        let mut m = DriftMonitor::default();
        let c = compare(&reference, &sketch(2, 50, 3.0, 1.0), &names()).unwrap();
        assert_eq!(m.update(&c, &DriftPolicy::default()), DriftState::Unknown);
        assert_eq!(m.n, 0);
    }
}
