//! Integration tests of the edge agent's library.

// Helpers in a test binary may unwrap: a panic there fails the test, as it should.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod agent;
mod hub;
mod modbus;
mod mqtt_source;
mod ota;
mod outbox;
mod support;
