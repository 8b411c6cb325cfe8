//! Drift sketches: fixed-bin histograms of standardised features.
//!
//! Every feature is standardised with the model's scaler, so one set of bin edges fits all:
//! 32 bins of width 0.25 over [−4, 4) plus one tail bin on each side. Sketches are tiny
//! (34 counts per feature), computed on the device, mergeable by adding counts, and comparable
//! with the reference sketch of the training data that ships in the model package.

use serde::{Deserialize, Serialize};

/// Bins between the tails.
pub const INNER_BINS: usize = 32;
/// Total bins per feature: the inner ones and two tails.
pub const BINS: usize = INNER_BINS + 2;
/// Lower edge of the first inner bin, and every inner bin's width (standardised units).
pub const LOW: f64 = -4.0;
pub const WIDTH: f64 = 0.25;

/// Bin of a standardised value: 0 is (−∞, −4), `BINS − 1` is [4, ∞). NaN goes nowhere.
pub fn bin_of(z: f64) -> Option<usize> {
    if z.is_nan() {
        return None;
    }
    let pos = ((z - LOW) / WIDTH).floor();
    Some(if pos < 0.0 {
        0
    } else if pos >= INNER_BINS as f64 {
        BINS - 1
    } else {
        pos as usize + 1
    })
}

/// Histograms of every feature of one model over some period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sketch {
    /// Feature vectors counted.
    pub count: u64,
    /// One row of `BINS` counts per feature.
    pub bins: Vec<Vec<u64>>,
}

impl Sketch {
    pub fn new(features: usize) -> Self {
        Self { count: 0, bins: vec![vec![0; BINS]; features] }
    }

    /// Counts one standardised feature vector.
    pub fn add(&mut self, z: &[f64]) {
        self.count += 1;
        for (row, &v) in self.bins.iter_mut().zip(z) {
            if let Some(b) = bin_of(v) {
                row[b] += 1;
            }
        }
    }

    /// Adds another sketch's counts (same number of features).
    pub fn merge(&mut self, other: &Sketch) {
        self.count += other.count;
        for (a, b) in self.bins.iter_mut().zip(&other.bins) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }

    pub fn is_valid(&self, features: usize) -> bool {
        self.bins.len() == features && self.bins.iter().all(|r| r.len() == BINS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_the_line() {
        assert_eq!(bin_of(-100.0), Some(0));
        assert_eq!(bin_of(-4.0), Some(1));
        assert_eq!(bin_of(-3.76), Some(1));
        assert_eq!(bin_of(0.0), Some(17));
        assert_eq!(bin_of(3.99), Some(32));
        assert_eq!(bin_of(4.0), Some(33));
        assert_eq!(bin_of(f64::INFINITY), Some(33));
        assert_eq!(bin_of(f64::NAN), None);
    }

    #[test]
    fn add_and_merge_count() {
        let mut a = Sketch::new(2);
        a.add(&[0.1, -5.0]);
        let mut b = Sketch::new(2);
        b.add(&[0.1, 5.0]);
        a.merge(&b);
        assert_eq!(a.count, 2);
        assert_eq!(a.bins[0][bin_of(0.1).unwrap()], 2);
        assert_eq!(a.bins[1][0], 1);
        assert_eq!(a.bins[1][BINS - 1], 1);
        assert!(a.is_valid(2));
    }
}
