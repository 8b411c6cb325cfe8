//! Impeller's core: the pure logic of anomaly detection for pumps, with no I/O, no async runtime
//! and no wall clock. Functions take data and state and return new state or results; the edge
//! agent and the hub do the I/O around them.
//!
//! - [`channel`]: channels with units, frames; [`units`] and [`adapter`]: vendors' names, units
//!   and sample rates mapped to a model's channels.
//! - [`gaps`]: the missing-value policy; [`features`]: rolling features and scaling.
//! - [`detector`]: PCA (T² and Q), MSET, Isolation Forest, autoencoder, z-score limits, ensemble.
//! - [`calibration`]: smoothing, normalisation, threshold and debouncing, the same for all.
//! - [`model`]: training and the versioned model format; [`scorer`]: streaming scoring.
//! - [`metrics`]: F1, false- and missed-alarm rates, detection delays.
//! - [`package`]: signed model packages: build, verify, install checks; [`sketch`]: drift sketches.
//! - [`audit`]: the audit trail's hash chain, signed checkpoints, verification and tracing.
//! - [`retrain`]: the retraining policy: when a model is retrained, within what budget.
//! - [`wire`]: MQTT topics and the message envelope between devices and the hub.
//! - [`table`]: parsing sensor CSV files (the SKAB format) from bytes, with located errors.
//!
//! ```
//! use std::sync::Arc;
//! use impeller_core::{Channel, Frame, Scorer, TrainConfig, Verdict, train};
//! use impeller_core::detector::{DetectorConfig, PcaConfig};
//!
//! // Two correlated channels of normal operation.
//! let channels = [Channel::new("flow", "L/min"), Channel::new("current", "A")];
//! let frames: Vec<Frame> = (0..300)
//!     .map(|i| {
//!         let load = (i as f64 * 0.37).sin();
//!         Frame { ts_ms: i * 1000, values: vec![30.0 + 2.0 * load, 1.5 + 0.1 * load + 0.01 * (i as f64 * 1.7).cos()] }
//!     })
//!     .collect();
//! let model = train(&channels, &frames, &TrainConfig::new(DetectorConfig::Pca(PcaConfig::default())))?;
//!
//! // The model file round-trips, and a device scores frame by frame.
//! let model = Arc::new(impeller_core::Model::from_json(&model.to_json()?)?);
//! let mut scorer = Scorer::new(model);
//! for f in &frames {
//!     scorer.push(f.ts_ms, &f.values);
//! }
//! // Flow collapses while current stays up: the correlation breaks and the alarm follows.
//! let alarms = (300..330).filter(|&i| scorer.push(i * 1000, &[20.0, 1.6]).alarm()).count();
//! assert!(alarms > 20);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod adapter;
pub mod alert_rate;
pub mod audit;
pub mod calibration;
pub mod channel;
pub mod deploy;
pub mod detector;
pub mod drift;
pub mod error;
pub mod features;
pub mod gaps;
pub mod hex;
pub mod matrix;
pub mod metrics;
pub mod model;
pub mod package;
pub mod pipeline;
pub mod registers;
pub mod retrain;
pub mod rng;
pub mod rollout;
pub mod scorer;
pub mod sketch;
pub mod stats;
pub mod table;
pub mod units;
pub mod weights;
pub mod wire;

pub use channel::{Channel, Frame};
pub use error::{ModelError, TrainError};
pub use model::{Model, TrainConfig, adopt_parts, train, train_parts};
pub use scorer::{Scored, Scorer, Verdict};
