//! `impeller-edge`: the agent next to the pump. Parses flags, sets up logging, runs the library.

// The commands print their results (alerts, install outcome) on standard output.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use impeller_core::package::rollback::SignedRollback;
use impeller_edge::agent::load_trust;
use impeller_edge::config::{Config, DEFAULT};
use impeller_edge::journal::Journal;
use impeller_edge::store::{ModelStore, StoreError};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (an unexpected error; the message says what)
  2  usage error
  3  invalid input: a configuration file or package that is wrong or was refused";

/// The Impeller edge agent: scores a pump's sensors offline, keeps everything it produces until
/// the hub has it, and runs only models signed by trusted keys.
#[derive(Debug, Parser)]
#[command(name = "impeller-edge", version, about, after_help = EXIT_CODES)]
struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only log errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent until stopped (SIGINT or SIGTERM).
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the default configuration, with a comment on every setting.
    GenerateConfig,
    /// Verify a model package and make it the active model (the running agent switches to it
    /// within two seconds). The way in for sites with no link: bring the file on a USB stick.
    Install {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The package file.
        package: PathBuf,
        /// A signed rollback directive, to install a release older than the newest installed.
        #[arg(long, value_name = "FILE")]
        rollback: Option<PathBuf>,
    },
    /// Show the most recent alerts from the local journal (works with the link down).
    Alerts {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// How many.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
}

/// A wrong or refused input: exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InputError(String);

fn load_config(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    Config::parse(&text, &path.display().to_string()).map_err(|e| InputError(e.to_string()).into())
}

fn install(config: &Path, package: &Path, rollback: Option<&Path>) -> anyhow::Result<()> {
    let cfg = load_config(config)?;
    let trust = load_trust(&cfg.models.trusted_keys).map_err(|e| InputError(format!("{e:#}")))?;
    let meta = std::fs::metadata(package).map_err(|e| InputError(format!("{}: {e}", package.display())))?;
    if meta.len() > cfg.models.max_package_bytes {
        return Err(InputError(format!(
            "refused: package is {} bytes, more than the {} allowed; the current model keeps running",
            meta.len(),
            cfg.models.max_package_bytes
        ))
        .into());
    }
    let bytes = std::fs::read(package).with_context(|| format!("reading {}", package.display()))?;
    let directive = match rollback {
        Some(p) => {
            let b = std::fs::read(p).map_err(|e| InputError(format!("{}: {e}", p.display())))?;
            Some(
                SignedRollback::verify(&b, &trust)
                    .map_err(|e| InputError(format!("refused: {e}; the current model keeps running")))?,
            )
        }
        None => None,
    };
    std::fs::create_dir_all(&cfg.device.data_dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cfg.device.data_dir.join("install.lock"))?;
    lock.lock()?;
    let store = ModelStore::new(&cfg.device.data_dir, trust, cfg.models.max_package_bytes);
    match store.install(&bytes, &cfg.device.target, impeller_edge::now_ms(), directive.as_ref()) {
        Ok(pkg) => {
            let m = &pkg.manifest;
            println!(
                "installed {} {} release {} (signed by {}); a running agent switches to it within 2 s",
                m.model.name, m.model.version, m.release, pkg.signed_by
            );
            Ok(())
        }
        Err(StoreError::Refused(e)) => {
            Err(InputError(format!("refused ({}): {e}; the current model keeps running", e.code())).into())
        }
        Err(e) => Err(e.into()),
    }
}

fn alerts(config: &Path, last: usize, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let cfg = load_config(config)?;
    let alerts = Journal::new(&cfg.device.data_dir).recent(last).context("reading the alert journal")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write = || -> std::io::Result<()> {
        if alerts.is_empty() && !json {
            writeln!(out, "no alerts")?;
        }
        for a in &alerts {
            if json {
                writeln!(out, "{}", serde_json::to_string(a).map_err(std::io::Error::other)?)?;
            } else {
                let top: Vec<String> = a.top_features.iter().map(|(f, z)| format!("{f} {z:+.1}σ")).collect();
                writeln!(
                    out,
                    "{}  {} release {}  score {:.2} (threshold {:.2})  {}",
                    a.started_ms,
                    a.model.name,
                    a.model.release,
                    a.score,
                    a.threshold,
                    top.join(", ")
                )?;
            }
        }
        out.flush()
    };
    match write() {
        // `| head` closed the pipe: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to standard output"),
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    use std::io::IsTerminal;
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Run { config } => load_config(&config).and_then(|cfg| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(impeller_edge::agent::run(cfg))
        }),
        Command::GenerateConfig => {
            print!("{DEFAULT}");
            Ok(())
        }
        Command::Install { config, package, rollback } => install(&config, &package, rollback.as_deref()),
        Command::Alerts { config, last, json } => alerts(&config, last, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let input = error.chain().any(|e| e.is::<InputError>() || e.is::<impeller_edge::config::ConfigError>());
            tracing::error!("{error:#}");
            ExitCode::from(if input { 3 } else { 1 })
        }
    }
}
