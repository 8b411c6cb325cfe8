//! The `impeller` command line as a library: `main.rs` only parses flags and calls [`run`], so
//! integration tests drive the same code.

pub mod audit;
pub mod cli;
pub mod commands;
pub mod data;
pub mod demo;
pub mod fleet;
pub mod lifecycle;
pub mod load;
pub mod logging;
pub mod packages;
pub mod progress;
pub mod remote;
pub mod simfeed;
pub mod skab;
pub mod skabfeed;

use impeller_core::package::PackageError;
use impeller_core::table::TableError;
use impeller_core::{ModelError, TrainError};
use impeller_hub::store::FleetStore;

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
            || e.downcast_ref::<remote::HubRefused>().is_some_and(remote::HubRefused::is_input)
            || matches!(
                e.downcast_ref::<impeller_pipeline::PipelineError>(),
                Some(impeller_pipeline::PipelineError::Spec(_) | impeller_pipeline::PipelineError::Data(_))
            )
    });
    if error.chain().any(|e| e.is::<audit::CheckFailed>()) {
        4
    } else if input {
        3
    } else {
        1
    }
}

pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    use cli::{Bench, Command, ModelCommand};
    match cli.command {
        Command::Bench(Bench::Skab(args)) => commands::bench_skab(args),
        Command::Bench(Bench::Fleet(args)) => fleet::bench(args),
        Command::Bench(Bench::Audit(args)) => audit::bench(args),
        Command::Bench(Bench::Pipeline(args)) => lifecycle::bench(args),
        Command::Bench(Bench::Int8(args)) => lifecycle::bench_int8(args),
        Command::Bench(Bench::Load(args)) => load::bench(args),
        Command::Sim(args) => fleet::sim(args),
        Command::Demo(args) => demo::run(args),
        Command::Alerts(q) => remote::alerts(q),
        Command::Drift(q) => remote::drift(q),
        Command::AlertRates(q) => remote::alert_rates(q),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Train(args) => commands::train(args),
        Command::Score(args) => commands::score(args),
        Command::Model(ModelCommand::Inspect { file, json }) => commands::inspect(&file, json),
        Command::Model(cmd) => lifecycle::model(cmd),
        Command::Pipeline(cmd) => lifecycle::pipeline(cmd),
        Command::Dataset(cmd) => lifecycle::dataset(cmd),
        Command::Incident(cmd) => lifecycle::incident(cmd),
        Command::Feedback(cmd) => lifecycle::feedback(cmd),
        Command::Retrain(cmd) => lifecycle::retrain(cmd),
        Command::Keys(cli::KeysCommand::Generate(args)) => packages::keys_generate(args),
        Command::Package(cmd) => packages::run(cmd),
        Command::Hub(cli::HubCommand { action: Some(cli::HubAction::GenerateConfig), .. }) => {
            use std::io::Write;
            std::io::stdout().lock().write_all(impeller_hub::config::DEFAULT.as_bytes())?;
            Ok(())
        }
        Command::Hub(cli::HubCommand { action: None, run }) => hub(run),
        Command::Device(cmd) => remote::device(cmd),
        Command::Token(cli::TokenCommand::Create { name, role, db }) => token_create(&name, role, &db),
        Command::Deploy(cmd) => remote::deploy(cmd),
    }
}

/// The hub's settings: the configuration file (or the built-in defaults), then the flags.
fn hub_settings(args: cli::HubArgs) -> anyhow::Result<impeller_hub::config::FileConfig> {
    use impeller_hub::config::FileConfig;
    let mut c = match &args.config {
        Some(path) => {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| InputError(format!("{origin}: {e}")))?;
            FileConfig::parse(&text, &origin).map_err(|e| InputError(e.to_string()))?
        }
        None => FileConfig::default_file(),
    };
    if let Some(d) = args.data_dir {
        c.data_dir = d;
    }
    if let Some(db) = args.database {
        c.database = db;
    }
    if let Some(listen) = args.mqtt_listen {
        c.mqtt.listen = listen;
    }
    if let Some(broker) = args.broker {
        c.mqtt.broker = broker;
    }
    if let Some(store) = args.artifacts {
        c.packages.store = store;
    }
    c.mqtt.allow_anonymous |= args.allow_anonymous;
    if let Some(listen) = args.http_listen {
        c.http.listen = listen;
    }
    c.packages.trusted_keys.extend(args.trusted_keys);
    if let Some(key) = args.pipeline_key {
        c.pipelines.signing_key = key;
    }
    Ok(c)
}

/// `impeller hub`: starts the hub and logs what it ingests once a minute until Ctrl-C.
fn hub(args: cli::HubArgs) -> anyhow::Result<()> {
    let settings = hub_settings(args)?;
    let database = (!settings.database.is_empty()).then(|| settings.database.clone());
    create_data_dir(&cli::HubDb { data_dir: settings.data_dir.clone(), database })?;
    let cfg = settings.hub_config();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let mut hub = impeller_hub::Hub::start(&cfg).await?;
        match &cfg.external_broker {
            Some(broker) => tracing::info!(broker = %broker.url, database = %cfg.database, "hub running"),
            None => {
                let scheme = if cfg.mqtt_tls.is_some() { "mqtts" } else { "mqtt" };
                let mqtt = hub.mqtt_addr.map(|a| format!("{scheme}://{a}")).unwrap_or_default();
                tracing::info!(%mqtt, database = %cfg.database, "hub running");
            }
        }
        if let Some(addr) = hub.http_addr {
            let scheme = if cfg.http_tls.is_some() { "https" } else { "http" };
            tracing::info!(api = %format!("{scheme}://{addr}/api/v1"), dashboard = %format!("{scheme}://{addr}/"), "HTTP API");
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
        if !hub.runs.stop(std::time::Duration::from_secs(60)).await {
            tracing::warn!("a pipeline run was still going after 60 s; it is cut off and records nothing");
        }
        Ok(())
    })
}

/// `impeller token create`: on the database directly, so the first admin token can be made.
fn token_create(name: &str, role: cli::TokenRole, db: &cli::HubDb) -> anyhow::Result<()> {
    use impeller_hub::auth::Role;
    use std::io::Write;
    let role = match role {
        cli::TokenRole::Read => Role::Read,
        cli::TokenRole::Operator => Role::Operator,
        cli::TokenRole::Admin => Role::Admin,
    };
    create_data_dir(db)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (_, token) = rt.block_on(async {
        let store = impeller_hub::store::Store::open(&db.url()).await?;
        // Made on the database, not through the API: the actor is the local account.
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        anyhow::Ok(store.add_token(name, role, &format!("local:{user}")).await?)
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")?;
    Ok(())
}

fn create_data_dir(db: &cli::HubDb) -> anyhow::Result<()> {
    if db.database.is_none() {
        std::fs::create_dir_all(&db.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", db.data_dir.display()))?;
    }
    Ok(())
}
