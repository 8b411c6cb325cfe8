//! Integration tests of impeller-core: the model format and its golden fixtures, properties of
//! the codecs and the training, and robustness against untrusted bytes.

// Helpers in a test binary may unwrap: a panic there fails the test, as it should.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod audit;
mod model_format;
mod package;
mod properties;
mod untrusted_input;
mod util;
mod wire_format;
