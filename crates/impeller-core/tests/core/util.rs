//! Deterministic synthetic pump data for tests.

use impeller_core::detector::{
    AutoencoderConfig, DetectorConfig, EnsembleConfig, IsolationForestConfig, MsetConfig, PcaConfig, ZscoreConfig,
};
use impeller_core::rng::Rng;
use impeller_core::{Channel, Frame, TrainConfig};

pub fn channels() -> Vec<Channel> {
    vec![Channel::new("flow", "L/min"), Channel::new("pressure", "bar"), Channel::new("current", "A")]
}

/// Normal operation: flow follows a slow load cycle; pressure and current follow flow; noise.
/// From `anomaly_from` on, pressure drops while flow and current stay (a leak after the pump).
pub fn frames(n: usize, seed: u64, anomaly_from: Option<usize>) -> Vec<Frame> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let load = (i as f64 / 40.0).sin();
            let mut noise = || rng.next_f64() - 0.5;
            let flow = 32.0 + 3.0 * load + 0.3 * noise();
            let mut pressure = 2.0 + 0.05 * flow + 0.02 * noise();
            let current = 1.2 + 0.02 * flow + 0.01 * noise();
            if anomaly_from.is_some_and(|a| i >= a) {
                pressure -= 0.4;
            }
            Frame { ts_ms: 1_600_000_000_000 + i as i64 * 1000, values: vec![flow, pressure, current] }
        })
        .collect()
}

/// One training configuration per detector kind, small enough to train in milliseconds.
pub fn configs() -> Vec<(&'static str, TrainConfig)> {
    let ae = AutoencoderConfig { hidden: vec![4, 2], epochs: 10, ..AutoencoderConfig::default() };
    let forest = IsolationForestConfig { trees: 20, sample_size: 64 };
    let mset = MsetConfig { memory: 20 };
    let ensemble = EnsembleConfig {
        members: vec![DetectorConfig::Zscore(ZscoreConfig {}), DetectorConfig::Pca(PcaConfig::default())],
        combine: impeller_core::detector::ensemble::Combine::Mean,
    };
    [
        ("zscore", DetectorConfig::Zscore(ZscoreConfig {})),
        ("pca", DetectorConfig::Pca(PcaConfig::default())),
        ("mset", DetectorConfig::Mset(mset)),
        ("isolation_forest", DetectorConfig::IsolationForest(forest)),
        ("autoencoder", DetectorConfig::Autoencoder(ae)),
        ("ensemble", DetectorConfig::Ensemble(ensemble)),
    ]
    .into_iter()
    .map(|(name, d)| {
        let mut c = TrainConfig::new(d);
        c.seed = 7;
        (name, c)
    })
    .collect()
}
