//! Isolation Forest (Liu, Ting and Zhou, 2008).
//!
//! Each tree is grown on `sample_size` rows drawn without replacement, splitting on a random
//! feature at a uniform random value between that feature's minimum and maximum, down to depth
//! ⌈log₂ ψ⌉. Anomalies are isolated in few splits. The score is 2^(−E[h(x)]/c(ψ)), where h is
//! the path length (plus c(leaf size) for unsplit leaves) and c(n) the mean path length of an
//! unsuccessful binary search: about 0.5 for normal points, towards 1 for anomalies.
//!
//! Trees are stored flat in pre-order: a split node's left child is the next node, its right
//! child is at `right[i]`; a leaf (`feature[i] == -1`) stores its depth plus c(leaf size) in
//! `value[i]`. Split values are stored as `f32`: they are uniform draws, so the lost precision
//! changes nothing, and the file is half the size. Training partitions on the rounded value, so
//! the stored tree is exactly the trained one.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, TrainError};
use crate::matrix::Matrix;
use crate::rng::Rng;

const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationForestConfig {
    #[serde(default = "default_trees")]
    pub trees: usize,
    /// Rows drawn for each tree (ψ); capped at the number of training rows.
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
}

fn default_trees() -> usize {
    100
}
fn default_sample_size() -> usize {
    256
}

impl Default for IsolationForestConfig {
    fn default() -> Self {
        Self { trees: default_trees(), sample_size: default_sample_size() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    pub feature: Vec<i32>,
    pub value: Vec<f32>,
    pub right: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolationForest {
    pub sample_size: usize,
    pub trees: Vec<Tree>,
}

/// Mean path length of an unsuccessful search in a binary search tree of `n` nodes.
pub fn average_path_length(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * (libm::log(n - 1.0) + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

impl IsolationForest {
    pub fn fit(config: &IsolationForestConfig, x: &Matrix, rng: &mut Rng) -> Result<Self, TrainError> {
        if config.trees == 0 || config.trees > 10_000 {
            return Err(TrainError::Config(format!("isolation_forest.trees must be 1 to 10000, got {}", config.trees)));
        }
        if config.sample_size < 2 {
            return Err(TrainError::Config(format!(
                "isolation_forest.sample_size must be at least 2, got {}",
                config.sample_size
            )));
        }
        if x.rows() < 2 {
            return Err(TrainError::TooFewRows { usable: x.rows(), needed: 2 });
        }
        let psi = config.sample_size.min(x.rows());
        let max_depth = (psi as f64).log2().ceil() as usize;
        let mut all: Vec<usize> = (0..x.rows()).collect();
        let trees = (0..config.trees)
            .map(|_| {
                let mut tree_rng = rng.fork();
                // Partial Fisher–Yates: the first psi entries become a uniform sample.
                for i in 0..psi {
                    let j = i + tree_rng.below(all.len() - i);
                    all.swap(i, j);
                }
                let mut sample = all[..psi].to_vec();
                let mut tree = Tree { feature: Vec::new(), value: Vec::new(), right: Vec::new() };
                grow(&mut tree, x, &mut sample, 0, max_depth, &mut tree_rng);
                tree
            })
            .collect();
        Ok(Self { sample_size: psi, trees })
    }

    /// Mean path length of `x` over the trees.
    pub fn mean_path_length(&self, x: &[f64]) -> f64 {
        let total: f64 = self.trees.iter().map(|t| path_length(t, x)).sum();
        total / self.trees.len() as f64
    }

    pub fn score(&self, x: &[f64]) -> f64 {
        libm::exp2(-self.mean_path_length(x) / average_path_length(self.sample_size))
    }

    pub fn validate(&self, dim: usize, field: &str) -> Result<(), ModelError> {
        if self.trees.is_empty() {
            return Err(ModelError::invalid(format!("{field}.trees"), "needs at least one tree"));
        }
        if self.sample_size < 2 {
            return Err(ModelError::invalid(format!("{field}.sample_size"), "must be at least 2"));
        }
        for (t, tree) in self.trees.iter().enumerate() {
            let f = format!("{field}.trees[{t}]");
            let n = tree.feature.len();
            if n == 0 || tree.value.len() != n || tree.right.len() != n {
                return Err(ModelError::invalid(f, "feature, value and right must be non-empty and of equal length"));
            }
            for i in 0..n {
                if !tree.value[i].is_finite() {
                    return Err(ModelError::invalid(format!("{f}.value[{i}]"), "not a finite number"));
                }
                let feat = tree.feature[i];
                if feat == -1 {
                    continue;
                }
                if feat < 0 || feat as usize >= dim {
                    return Err(ModelError::invalid(
                        format!("{f}.feature[{i}]"),
                        format!("must be -1 or a feature index below {dim}"),
                    ));
                }
                // Children must lie after their parent: this makes every walk terminate.
                let right = tree.right[i] as usize;
                if i + 1 >= n || right <= i + 1 || right >= n {
                    return Err(ModelError::invalid(
                        format!("{f}.right[{i}]"),
                        "child index out of order or out of range",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn path_length(tree: &Tree, x: &[f64]) -> f64 {
    let mut i = 0;
    loop {
        let f = tree.feature[i];
        if f < 0 {
            return f64::from(tree.value[i]);
        }
        i = if x[f as usize] < f64::from(tree.value[i]) { i + 1 } else { tree.right[i] as usize };
    }
}

fn grow(tree: &mut Tree, x: &Matrix, rows: &mut [usize], depth: usize, max_depth: usize, rng: &mut Rng) {
    let leaf = |tree: &mut Tree, size: usize| {
        tree.feature.push(-1);
        tree.value.push((depth as f64 + average_path_length(size)) as f32);
        tree.right.push(0);
    };
    if depth >= max_depth || rows.len() <= 1 {
        leaf(tree, rows.len());
        return;
    }
    // Features that still vary among these rows; splitting on a constant one isolates nothing.
    let ranges: Vec<(usize, f64, f64)> = (0..x.cols())
        .filter_map(|j| {
            let (lo, hi) = rows.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
                let v = x.row(r)[j];
                (lo.min(v), hi.max(v))
            });
            (hi > lo).then_some((j, lo, hi))
        })
        .collect();
    if ranges.is_empty() {
        leaf(tree, rows.len());
        return;
    }
    let (feature, lo, hi) = ranges[rng.below(ranges.len())];
    let split = (lo + rng.next_f64() * (hi - lo)) as f32;
    let split64 = f64::from(split);
    // Partition in place: rows below the split first.
    let mut left_len = 0;
    for i in 0..rows.len() {
        if x.row(rows[i])[feature] < split64 {
            rows.swap(i, left_len);
            left_len += 1;
        }
    }
    let node = tree.feature.len();
    tree.feature.push(feature as i32);
    tree.value.push(split);
    tree.right.push(0);
    let (left, right) = rows.split_at_mut(left_len);
    grow(tree, x, left, depth + 1, max_depth, rng);
    tree.right[node] = tree.feature.len() as u32;
    grow(tree, x, right, depth + 1, max_depth, rng);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_path_length_matches_the_paper() {
        assert_eq!(average_path_length(1), 0.0);
        assert_eq!(average_path_length(2), 1.0);
        // c(256) = 2(ln 255 + γ) − 2·255/256 ≈ 10.2448
        assert!((average_path_length(256) - 10.244_770_920_116_851).abs() < 1e-9);
    }

    #[test]
    fn hand_built_tree_path_lengths() {
        // Root splits feature 0 at 5.0: left is a leaf at depth 1 holding 3 points
        // (1 + c(3) = 1 + 2(ln 2 + γ) − 4/3); right splits feature 1 at 0.0 into two
        // single-point leaves at depth 2.
        let c3 = average_path_length(3) as f32;
        let tree = Tree {
            feature: vec![0, -1, 1, -1, -1],
            value: vec![5.0, 1.0 + c3, 0.0, 2.0, 2.0],
            right: vec![2, 0, 4, 0, 0],
        };
        assert!((path_length(&tree, &[1.0, 9.0]) - f64::from(1.0 + c3)).abs() < 1e-6);
        assert_eq!(path_length(&tree, &[7.0, -1.0]), 2.0);
        assert_eq!(path_length(&tree, &[7.0, 1.0]), 2.0);
        let forest = IsolationForest { sample_size: 4, trees: vec![tree] };
        assert!(forest.validate(2, "d").is_ok());
    }

    #[test]
    fn an_outlier_is_isolated_sooner_than_the_bulk() {
        let mut rng = Rng::new(1);
        let mut x = Matrix::new(2);
        for _ in 0..300 {
            x.push_row(&[rng.next_f64(), rng.next_f64()]);
        }
        let forest = IsolationForest::fit(&IsolationForestConfig::default(), &x, &mut Rng::new(9)).expect("fit");
        let inlier = forest.score(&[0.5, 0.5]);
        let outlier = forest.score(&[4.0, -3.0]);
        assert!(inlier < 0.5, "inlier score {inlier}");
        assert!(outlier > 0.65, "outlier score {outlier}");
        assert!(forest.validate(2, "d").is_ok());
    }

    #[test]
    fn validation_refuses_cycles_and_bad_features() {
        let bad_child = Tree { feature: vec![0, -1, -1], value: vec![0.0, 1.0, 1.0], right: vec![0, 0, 0] };
        let f = IsolationForest { sample_size: 4, trees: vec![bad_child] };
        assert!(f.validate(1, "d").is_err(), "a right child pointing back must be refused");
        let bad_feature = Tree { feature: vec![3, -1, -1], value: vec![0.0, 1.0, 1.0], right: vec![2, 0, 0] };
        let f = IsolationForest { sample_size: 4, trees: vec![bad_feature] };
        assert!(f.validate(2, "d").is_err());
    }
}
