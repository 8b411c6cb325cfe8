//! A small dense autoencoder trained on the CPU: `dim → h₁ → … → hₖ → … → h₁ → dim`, tanh on the
//! hidden layers, linear output, mean squared error, Adam, mini-batches shuffled by the seeded
//! generator. The raw score is the mean squared reconstruction error. Hand-written (a few hundred
//! multiply-adds per frame) rather than a deep-learning crate, which would cost minutes of build
//! time and megabytes of edge binary for no gain at this size.

use serde::{Deserialize, Serialize};

use super::Scratch;
use crate::error::{ModelError, TrainError, check_finite};
use crate::matrix::Matrix;
use crate::rng::Rng;
use crate::weights::Rows;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderConfig {
    /// Encoder layer widths; the decoder mirrors them. The last is the bottleneck.
    #[serde(default = "default_hidden")]
    pub hidden: Vec<usize>,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
}

fn default_hidden() -> Vec<usize> {
    vec![8, 3]
}
fn default_epochs() -> usize {
    60
}
fn default_batch() -> usize {
    32
}
fn default_learning_rate() -> f64 {
    0.01
}

impl Default for AutoencoderConfig {
    fn default() -> Self {
        Self {
            hidden: default_hidden(),
            epochs: default_epochs(),
            batch: default_batch(),
            learning_rate: default_learning_rate(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// `outputs × inputs`.
    pub weights: Rows,
    pub bias: Vec<f64>,
    /// tanh when true, identity otherwise.
    pub tanh: bool,
}

impl Layer {
    fn inputs(&self) -> usize {
        self.weights.width()
    }

    fn forward(&self, input: &[f64], out: &mut [f64]) {
        for (i, (o, b)) in out.iter_mut().zip(&self.bias).enumerate() {
            let z = self.weights.dot(i, input) + b;
            *o = if self.tanh { libm::tanh(z) } else { z };
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoencoder {
    pub layers: Vec<Layer>,
}

/// Adam moments for one layer.
struct Moments {
    mw: Vec<Vec<f64>>,
    vw: Vec<Vec<f64>>,
    mb: Vec<f64>,
    vb: Vec<f64>,
}

/// Gradient of the mean squared error with respect to every weight and bias, and the buffers
/// used to compute it.
struct Gradients {
    weights: Vec<Vec<Vec<f64>>>,
    bias: Vec<Vec<f64>>,
    acts: Vec<Vec<f64>>,
    deltas: Vec<Vec<f64>>,
}

impl Gradients {
    fn new(layers: &[Layer]) -> Self {
        let mut widths = vec![layers[0].inputs()];
        widths.extend(layers.iter().map(|l| l.bias.len()));
        Self {
            weights: layers.iter().map(|l| vec![vec![0.0; l.inputs()]; l.bias.len()]).collect(),
            bias: layers.iter().map(|l| vec![0.0; l.bias.len()]).collect(),
            acts: widths.iter().map(|&w| vec![0.0; w]).collect(),
            deltas: widths.iter().map(|&w| vec![0.0; w]).collect(),
        }
    }
}

/// Computes into `g` the gradient of the loss `mean over rows and features of (output − input)²`
/// over the rows `batch` of `x`, by backpropagation.
fn backprop(layers: &[Layer], x: &Matrix, batch: &[usize], g: &mut Gradients) {
    g.weights.iter_mut().flatten().for_each(|r| r.fill(0.0));
    g.bias.iter_mut().for_each(|r| r.fill(0.0));
    let d = x.cols();
    let last = layers.len();
    let scale = 2.0 / (d * batch.len()) as f64;
    for &row in batch {
        let input = x.row(row);
        g.acts[0].copy_from_slice(input);
        for (l, layer) in layers.iter().enumerate() {
            let (before, after) = g.acts.split_at_mut(l + 1);
            layer.forward(&before[l], &mut after[0]);
        }
        for ((dl, out), target) in g.deltas[last].iter_mut().zip(&g.acts[last]).zip(input) {
            *dl = scale * (out - target);
        }
        for l in (0..last).rev() {
            let layer = &layers[l];
            // Through the activation of layer l's output.
            if layer.tanh {
                for (dl, a) in g.deltas[l + 1].iter_mut().zip(&g.acts[l + 1]) {
                    *dl *= 1.0 - a * a;
                }
            }
            for (o, (gw, dl)) in g.weights[l].iter_mut().zip(&g.deltas[l + 1]).enumerate() {
                g.bias[l][o] += dl;
                for (gwi, a) in gw.iter_mut().zip(&g.acts[l]) {
                    *gwi += dl * a;
                }
            }
            if l == 0 {
                break; // nothing below the input layer needs a delta
            }
            let (lower, upper) = g.deltas.split_at_mut(l + 1);
            for (i, di) in lower[l].iter_mut().enumerate() {
                *di = upper[0].iter().enumerate().map(|(o, dl)| layer.weights.at(o, i) * dl).sum();
            }
        }
    }
}

impl Autoencoder {
    pub fn fit(config: &AutoencoderConfig, x: &Matrix, rng: &mut Rng) -> Result<Self, TrainError> {
        if config.hidden.is_empty() || config.hidden.iter().any(|&h| h == 0 || h > 1024) {
            return Err(TrainError::Config("autoencoder.hidden must list 1 to 1024 units per layer".into()));
        }
        if config.epochs == 0 || config.batch == 0 {
            return Err(TrainError::Config("autoencoder.epochs and autoencoder.batch must be positive".into()));
        }
        if !(config.learning_rate > 0.0 && config.learning_rate < 1.0) {
            return Err(TrainError::Config(format!(
                "autoencoder.learning_rate must be in (0, 1), got {}",
                config.learning_rate
            )));
        }
        if x.rows() < 2 {
            return Err(TrainError::TooFewRows { usable: x.rows(), needed: 2 });
        }
        let d = x.cols();
        let mut widths = vec![d];
        widths.extend(&config.hidden);
        widths.extend(config.hidden.iter().rev().skip(1));
        widths.push(d);
        let mut layers: Vec<Layer> = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                // Glorot-uniform initialisation.
                let limit = (6.0 / (w[0] + w[1]) as f64).sqrt();
                let weights: Vec<Vec<f64>> =
                    (0..w[1]).map(|_| (0..w[0]).map(|_| (2.0 * rng.next_f64() - 1.0) * limit).collect()).collect();
                Layer { weights: weights.into(), bias: vec![0.0; w[1]], tanh: i + 2 < widths.len() }
            })
            .collect();

        let mut moments: Vec<Moments> = layers
            .iter()
            .map(|l| Moments {
                mw: vec![vec![0.0; l.inputs()]; l.bias.len()],
                vw: vec![vec![0.0; l.inputs()]; l.bias.len()],
                mb: vec![0.0; l.bias.len()],
                vb: vec![0.0; l.bias.len()],
            })
            .collect();
        let (beta1, beta2, eps) = (0.9, 0.999, 1e-8);
        let mut step = 0i32;
        let mut order: Vec<usize> = (0..x.rows()).collect();
        let mut grads = Gradients::new(&layers);
        for _ in 0..config.epochs {
            rng.shuffle(&mut order);
            for batch in order.chunks(config.batch) {
                backprop(&layers, x, batch, &mut grads);
                let (gw, gb) = (&grads.weights, &grads.bias);
                step += 1;
                let lr = config.learning_rate * (1.0 - libm::pow(beta2, f64::from(step))).sqrt()
                    / (1.0 - libm::pow(beta1, f64::from(step)));
                for ((layer, m), (gwl, gbl)) in layers.iter_mut().zip(&mut moments).zip(gw.iter().zip(gb)) {
                    let weights = layer.weights.float_mut();
                    let adam = |w: &mut f64, m: &mut f64, v: &mut f64, g: f64| {
                        *m = beta1 * *m + (1.0 - beta1) * g;
                        *v = beta2 * *v + (1.0 - beta2) * g * g;
                        *w -= lr * *m / (v.sqrt() + eps);
                    };
                    for (o, grow) in gwl.iter().enumerate() {
                        for (i, &g) in grow.iter().enumerate() {
                            adam(&mut weights[o][i], &mut m.mw[o][i], &mut m.vw[o][i], g);
                        }
                        adam(&mut layer.bias[o], &mut m.mb[o], &mut m.vb[o], gbl[o]);
                    }
                }
            }
        }
        let ae = Self { layers };
        Ok(ae)
    }

    pub fn scratch(&self) -> Scratch {
        let widest = self.layers.iter().map(|l| l.bias.len().max(l.inputs())).max().unwrap_or(0);
        Scratch { a: vec![0.0; widest], b: vec![0.0; widest], ..Scratch::default() }
    }

    pub fn score(&self, x: &[f64], scratch: &mut Scratch) -> f64 {
        let Scratch { a, b, .. } = scratch;
        a[..x.len()].copy_from_slice(x);
        let mut width = x.len();
        for layer in &self.layers {
            let out = layer.bias.len();
            layer.forward(&a[..width], &mut b[..out]);
            std::mem::swap(a, b);
            width = out;
        }
        a[..width].iter().zip(x).map(|(r, v)| (r - v) * (r - v)).sum::<f64>() / x.len() as f64
    }

    pub fn validate(&self, dim: usize, field: &str) -> Result<(), ModelError> {
        if self.layers.is_empty() {
            return Err(ModelError::invalid(format!("{field}.layers"), "needs at least one layer"));
        }
        let mut width = dim;
        for (l, layer) in self.layers.iter().enumerate() {
            let f = format!("{field}.layers[{l}]");
            if layer.bias.is_empty() || layer.weights.len() != layer.bias.len() {
                return Err(ModelError::invalid(f, "weights must have one row per bias entry"));
            }
            layer.weights.validate(None, width, &format!("{f}.weights"))?;
            check_finite(&format!("{f}.bias"), &layer.bias)?;
            width = layer.bias.len();
        }
        if width != dim {
            return Err(ModelError::invalid(
                format!("{field}.layers"),
                format!("output width {width} differs from the {dim} features"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points on a line in 4-D: a 1-unit bottleneck can learn it; points off it cannot be
    /// reconstructed.
    fn line(n: usize, rng: &mut Rng) -> Matrix {
        let mut m = Matrix::new(4);
        for _ in 0..n {
            let t = 2.0 * rng.next_f64() - 1.0;
            m.push_row(&[t, -t, 0.5 * t, 0.01 * (rng.next_f64() - 0.5)]);
        }
        m
    }

    #[test]
    fn learns_normal_data_and_flags_what_breaks_its_structure() {
        let mut rng = Rng::new(2);
        let x = line(400, &mut rng);
        let cfg = AutoencoderConfig { hidden: vec![4, 1], epochs: 200, ..AutoencoderConfig::default() };
        let ae = Autoencoder::fit(&cfg, &x, &mut Rng::new(4)).expect("fit");
        let mut s = ae.scratch();
        let normal = ae.score(&[0.3, -0.3, 0.15, 0.0], &mut s);
        let broken = ae.score(&[0.3, 0.3, 0.15, 0.0], &mut s);
        assert!(normal < 0.01, "normal reconstruction error {normal}");
        assert!(broken > 10.0 * normal, "broken {broken} vs normal {normal}");
    }

    #[test]
    fn backprop_matches_finite_differences() {
        let mut rng = Rng::new(8);
        let x = line(8, &mut rng);
        let cfg = AutoencoderConfig { hidden: vec![3, 2], epochs: 1, batch: 8, learning_rate: 0.05 };
        let ae = Autoencoder::fit(&cfg, &x, &mut Rng::new(1)).expect("fit");
        let rows: Vec<usize> = (0..x.rows()).collect();
        let mut g = Gradients::new(&ae.layers);
        backprop(&ae.layers, &x, &rows, &mut g);
        let loss = |ae: &Autoencoder| {
            let mut s = ae.scratch();
            x.iter_rows().map(|r| ae.score(r, &mut s)).sum::<f64>() / x.rows() as f64
        };
        let h = 1e-6;
        for l in 0..ae.layers.len() {
            for (o, i) in [(0, 0), (1, 1)] {
                let mut plus = ae.clone();
                let mut minus = ae.clone();
                plus.layers[l].weights.float_mut()[o][i] += h;
                minus.layers[l].weights.float_mut()[o][i] -= h;
                let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h);
                let analytic = g.weights[l][o][i];
                assert!(
                    (numeric - analytic).abs() < 1e-6 * numeric.abs().max(1e-3),
                    "layer {l} weight ({o},{i}): analytic {analytic}, numeric {numeric}"
                );
            }
            let mut plus = ae.clone();
            let mut minus = ae.clone();
            plus.layers[l].bias[0] += h;
            minus.layers[l].bias[0] -= h;
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h);
            assert!(
                (numeric - g.bias[l][0]).abs() < 1e-6 * numeric.abs().max(1e-3),
                "layer {l} bias: analytic {}, numeric {numeric}",
                g.bias[l][0]
            );
        }
    }
}
