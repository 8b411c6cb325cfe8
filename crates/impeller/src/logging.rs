//! Logs go to standard error, so standard output carries only data.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `RUST_LOG` wins when set; otherwise `-v` / `-q` move the level from `default`.
pub fn init(verbose: u8, quiet: bool, default: &'static str) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => default,
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // rumqttd's router opens a span at ERROR level for every publish it routes, which cost a
    // fifth of the router thread under load; what devices do is logged by the hub's gate.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("{level},rumqttd=off")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .try_init();
}
