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
        Command::Hub(args) => hub(args),
    }
}

/// `impeller hub`: starts the hub and logs what it ingests once a minute until Ctrl-C.
fn hub(args: cli::HubArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", args.data_dir.display()))?;
    let cfg = impeller_hub::HubConfig {
        database: args.database.unwrap_or_else(|| format!("sqlite:{}", args.data_dir.join("hub.db").display())),
        mqtt_listen: args.broker.is_none().then_some(args.mqtt_listen),
        external_broker: args.broker,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let mut hub = impeller_hub::Hub::start(&cfg).await?;
        match &cfg.external_broker {
            Some(url) => tracing::info!(broker = %url, database = %cfg.database, "hub running"),
            None => tracing::info!(mqtt = ?cfg.mqtt_listen, database = %cfg.database, "hub running"),
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                ended = &mut hub.ingest => {
                    ended??;
                    anyhow::bail!("ingestion stopped: the broker link closed");
                }
                _ = tick.tick() => {
                    use std::sync::atomic::Ordering::Relaxed;
                    let s = &hub.stats;
                    tracing::info!(stored = s.stored.load(Relaxed), duplicates = s.duplicates.load(Relaxed),
                        refused = s.refused.load(Relaxed), "ingest");
                }
            }
        }
        tracing::info!("stopping");
        Ok(())
    })
}
