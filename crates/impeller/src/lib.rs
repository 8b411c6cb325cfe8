//! The `impeller` command line as a library: `main.rs` only parses flags and calls [`run`], so
//! integration tests drive the same code.

pub mod cli;
pub mod commands;
pub mod data;
pub mod logging;
pub mod packages;
pub mod skab;

use impeller_core::package::PackageError;
use impeller_core::table::TableError;
use impeller_core::{ModelError, TrainError};

/// Something from outside (a file, a flag's value) that is wrong; exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Exit code for an error, per the table in `impeller --help`.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let input = error.chain().any(|e| {
        e.is::<InputError>()
            || e.is::<TableError>()
            || e.is::<ModelError>()
            || e.is::<TrainError>()
            || e.is::<PackageError>()
    });
    if input { 3 } else { 1 }
}

pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    use cli::{Bench, Command, ModelCommand};
    match cli.command {
        Command::Bench(Bench::Skab(args)) => commands::bench_skab(args),
        Command::Train(args) => commands::train(args),
        Command::Score(args) => commands::score(args),
        Command::Model(ModelCommand::Inspect { file, json }) => commands::inspect(&file, json),
        Command::Keys(cli::KeysCommand::Generate(args)) => packages::keys_generate(args),
        Command::Package(cmd) => packages::run(cmd),
    }
}
