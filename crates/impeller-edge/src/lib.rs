//! The Impeller edge agent: runs next to a pump, scores its sensors with a signed model, and
//! keeps everything it produces on disk until the hub has it.
//!
//! - [`config`]: the configuration file.
//! - [`source`]: readings from a CSV replay or a local MQTT broker; [`produce`]: aggregates,
//!   sketches, raw samples and alerts; [`agent`]: the main loop and the MQTT uplink.
//! - [`outbox`]: the durable, quota-bound, priority-aware store-and-forward queue.
//! - [`store`]: installed models in two slots; [`journal`]: the local alert journal.
//! - [`update`]: downloads of the packages the hub's desired state names.
//! - [`metrics`]: Prometheus metrics.

pub mod agent;
pub mod config;
pub mod journal;
pub mod metrics;
pub mod outbox;
pub mod produce;
pub mod source;
pub mod store;
pub mod tls;
pub mod update;

/// Wall-clock milliseconds since the Unix epoch (the shell's clock; the core takes time as
/// input).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
