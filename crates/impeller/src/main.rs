//! The `impeller` command. Parses flags, sets up logging, runs the library, maps the outcome to
//! an exit code (see `impeller --help`).

use std::process::ExitCode;

use clap::Parser;

// The hub allocates per message (envelopes, bodies, statements): under a fleet's load glibc's
// malloc took a sixth of its CPU (`impeller bench load`, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = impeller::cli::Cli::parse();
    // The demo tells its story on standard output; two dozen agents' routine logs, and the
    // embedded broker's notes on their connections ending when the demo stops, would drown it.
    let default = if matches!(cli.command, impeller::cli::Command::Demo(_)) { "error" } else { "info" };
    impeller::logging::init(cli.verbose, cli.quiet, default);
    match impeller::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = impeller::exit_code(&error);
            tracing::error!("{error:#}");
            ExitCode::from(code)
        }
    }
}
