//! The Impeller edge agent: runs next to a pump, scores its sensors with a signed model, and
//! keeps everything it produces on disk until the hub has it.
//!
//! - [`outbox`]: the durable, quota-bound, priority-aware store-and-forward queue.

pub mod outbox;
