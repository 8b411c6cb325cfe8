//! Integration tests of the `impeller` command line: the SKAB benchmark against the issue's
//! targets and the independent scorer, and what a user sees for bad input.

// Helpers in a test binary may unwrap: a panic there fails the test, as it should.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod audit;
mod bad_input;
mod deploy;
mod fleet;
mod hub;
mod load;
mod packages;
mod pipeline;
mod sim_live;
mod skab;
mod train_score;
mod util;
