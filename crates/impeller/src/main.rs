//! The `impeller` command. Parses flags, sets up logging, runs the library, maps the outcome to
//! an exit code (see `impeller --help`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = impeller::cli::Cli::parse();
    impeller::logging::init(cli.verbose, cli.quiet);
    match impeller::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = impeller::exit_code(&error);
            tracing::error!("{error:#}");
            ExitCode::from(code)
        }
    }
}
