//! The Impeller hub: the control plane the edge agents talk to. So far: ingestion of what the
//! agents send, stored once per (device, seq) in SQLite or PostgreSQL and acknowledged after the
//! commit, behind an embedded rumqttd broker or an external MQTT broker; signed packages,
//! deployments resolved per device into retained desired state; drift monitoring; a REST API.

// The OpenAPI document is one `json!` literal, deeper than the default macro recursion allows.
#![recursion_limit = "256"]

pub mod alert_rate;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod bus;
pub mod config;
pub mod dashboard;
pub mod datasets;
pub mod deploy;
pub mod drift;
pub mod fleet;
pub mod gate;
pub mod ingest;
pub mod openapi;
pub mod packages;
pub mod retention;
pub mod retrain;
pub mod runs;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::store::AuditStore;
use anyhow::Context;
use impeller_core::package::{KeyFile, Signer25519, TrustStore};

/// Where the hub keeps things and how agents reach it.
#[derive(Debug, Clone, Default)]
pub struct HubConfig {
    /// `sqlite:PATH` or `postgres://…`.
    pub database: String,
    /// Listen address of the embedded broker, or `None` with `external_broker`.
    pub mqtt_listen: Option<SocketAddr>,
    /// An external broker instead of the embedded one (which then does its own authentication).
    pub external_broker: Option<bus::ExternalBroker>,
    /// The embedded broker admits only provisioned devices with their secret. Off: anyone.
    pub device_auth: bool,
    /// Listen address of the HTTP API; `None`: no API.
    pub http_listen: Option<SocketAddr>,
    /// Serve the embedded broker's devices over TLS (mqtts) with this certificate and key.
    pub mqtt_tls: Option<tls::TlsFiles>,
    /// Serve the HTTP API over TLS (https) with this certificate and key.
    pub http_tls: Option<tls::TlsFiles>,
    /// Folder of uploaded packages (unless `artifacts` names another store).
    pub packages_dir: PathBuf,
    /// `file:///…` or `s3://bucket/prefix` for the packages instead of `packages_dir`.
    pub artifacts: Option<String>,
    /// object_store's S3 settings (`aws_endpoint`, `aws_allow_http`, …) over the `AWS_*`
    /// environment.
    pub artifact_options: Vec<(String, String)>,
    /// Public keys (`impeller keys generate`) a package must be signed with to be uploaded.
    pub trusted_keys: Vec<PathBuf>,
    /// Largest package accepted, in bytes (0: 64 MiB).
    pub max_package_bytes: u64,
    /// Folder of dataset snapshots; empty: `datasets` beside the packages folder.
    pub datasets_dir: PathBuf,
    /// Secret key that signs the packages of the pipelines the hub runs (`POST /runs`); `None`:
    /// the hub runs none. Their step cache and records go in `pipelines` beside the packages.
    pub pipeline_key: Option<PathBuf>,
    /// How often the retraining policies are checked (zero: every minute).
    pub retrain_every: Duration,
    /// Secret key that signs the audit trail's checkpoints, created (with its `.public.json`
    /// twin) if missing; `None`: the chain is kept but not signed.
    pub audit_key: Option<PathBuf>,
    /// How often to sign a checkpoint when something was recorded since (zero: every minute).
    pub checkpoint_every: Duration,
    /// How each device's sketches are judged against its model's reference.
    pub drift: impeller_core::drift::DriftPolicy,
    /// How each device's alert rate is held to its model's validation rate.
    pub alert_rate: impeller_core::alert_rate::AlertRatePolicy,
    /// How often the alert rates are judged (zero: every 10 s).
    pub alert_rate_every: Duration,
    /// How long each kind of device message is kept (kinds not named, and all when empty: for
    /// ever), and how often old ones are deleted (zero: every hour).
    pub retention: retention::Keep,
    pub retention_every: Duration,
}

impl HubConfig {
    pub fn datasets_dir(&self) -> PathBuf {
        if self.datasets_dir.as_os_str().is_empty() {
            self.packages_dir.with_file_name("datasets")
        } else {
            self.datasets_dir.clone()
        }
    }
}

/// Devices' secrets and operators' tokens cross this listener: in the clear only on loopback.
fn warn_if_exposed(what: &str, listen: SocketAddr, tls: bool) {
    if !tls && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "{what} listens beyond this machine without TLS: secrets and tokens cross in the clear");
    }
}

/// A running hub's handles.
#[derive(Debug)]
pub struct Hub {
    pub store: store::Store,
    pub stats: Arc<ingest::IngestStats>,
    pub ingest: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Where the API listens (with the port chosen when `http_listen` asked for port 0).
    pub http_addr: Option<SocketAddr>,
    /// Where the embedded broker listens (likewise); `None` with an external broker.
    pub mqtt_addr: Option<SocketAddr>,
    /// Wakes the deployment reconciler.
    pub reconcile: Arc<tokio::sync::Notify>,
    /// Pipeline runs: [`runs::Runs::stop`] before the runtime ends.
    pub runs: runs::Runs,
}

impl Hub {
    /// Opens the database (applying migrations), starts the broker or connects to one, and
    /// starts ingesting; returns once the embedded broker accepts connections. Must run inside
    /// a tokio runtime.
    pub async fn start(cfg: &HubConfig) -> anyhow::Result<Hub> {
        let store = store::Store::open(&cfg.database).await?;
        let trust = Arc::new(load_trust(&cfg.trusted_keys)?);
        // Devices authenticate to the API with the same credentials as to the broker.
        let credentials = fleet::Credentials::default();
        credentials.refresh(&store).await?;
        tokio::spawn(credentials.clone().keep_fresh(store.clone()));
        let mqtt_tls = cfg.mqtt_tls.as_ref().map(|f| tls::acceptor(f, &[])).transpose().context("mqtt TLS")?;
        let http_tls =
            cfg.http_tls.as_ref().map(|f| tls::acceptor(f, &[b"http/1.1"])).transpose().context("http TLS")?;
        let (bus, mqtt_addr) = match (&cfg.external_broker, cfg.mqtt_listen) {
            (Some(_), _) if mqtt_tls.is_some() => {
                anyhow::bail!("TLS for MQTT is the embedded broker's: an external broker has its own")
            }
            (Some(broker), _) => (bus::external(broker, "impeller-hub").await?, None),
            (None, Some(listen)) => {
                warn_if_exposed("MQTT", listen, mqtt_tls.is_some());
                let (bus, addr) = bus::embedded(listen, cfg.device_auth.then(|| credentials.clone()), mqtt_tls).await?;
                (bus, Some(addr))
            }
            (None, None) => anyhow::bail!("the hub needs an MQTT listen address or an external broker"),
        };
        let audit_key = cfg.audit_key.as_deref().map(audit_signer).transpose()?;
        if let Some(signer) = &audit_key {
            let every = if cfg.checkpoint_every.is_zero() { Duration::from_secs(60) } else { cfg.checkpoint_every };
            tokio::spawn(sign_checkpoints(store.clone(), signer.clone(), every));
        }
        let reconcile = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(deploy::run(store.clone(), bus.outgoing.clone(), reconcile.clone()));
        let artifacts = match &cfg.artifacts {
            Some(url) => artifacts::Artifacts::open(url, &cfg.artifact_options)?,
            None if cfg.packages_dir.as_os_str().is_empty() => {
                anyhow::bail!("the hub needs a packages folder (packages_dir) or an artifact store URL")
            }
            None => artifacts::Artifacts::folder(&cfg.packages_dir)?,
        };
        let latest_sketches = Arc::new(drift::LatestSketches::default());
        tokio::spawn(drift::run(
            store.clone(),
            artifacts.clone(),
            trust.clone(),
            cfg.drift.clone(),
            Duration::from_secs(2),
            latest_sketches.clone(),
        ));
        let every = if cfg.alert_rate_every.is_zero() { Duration::from_secs(10) } else { cfg.alert_rate_every };
        tokio::spawn(alert_rate::run(store.clone(), cfg.alert_rate.clone(), every));
        let pipeline_signer = match &cfg.pipeline_key {
            Some(path) => {
                let origin = path.display().to_string();
                let bytes = std::fs::read(path).with_context(|| format!("reading the pipeline key {origin}"))?;
                Some(KeyFile::parse(&bytes, &origin)?.signer(&origin)?)
            }
            None => None,
        };
        // Its packages go through the same checks as an upload: the key must be trusted.
        if let Some(s) = &pipeline_signer
            && !trust.key_ids().any(|k| k == s.key_id())
        {
            anyhow::bail!(
                "the pipeline key {} is not among the trusted keys: add its public file with --trusted-key",
                s.key_id()
            );
        }
        record_keys(&store, &trust, pipeline_signer.as_ref(), audit_key.as_ref()).await?;
        let runs = runs::Runs::new(
            store.clone(),
            artifacts.clone(),
            cfg.datasets_dir(),
            cfg.packages_dir.with_file_name("pipelines"),
            pipeline_signer,
            trust.clone(),
        );
        let retrainer = Arc::new(retrain::Retrainer::new(
            store.clone(),
            runs.clone(),
            artifacts.clone(),
            cfg.datasets_dir(),
            reconcile.clone(),
            latest_sketches,
        ));
        let every = if cfg.retrain_every.is_zero() { Duration::from_secs(60) } else { cfg.retrain_every };
        tokio::spawn(retrain::run(retrainer.clone(), every));
        let stats = Arc::new(ingest::IngestStats::default());
        let http_addr = match cfg.http_listen {
            Some(listen) => {
                let state = api::ApiState {
                    stats: stats.clone(),
                    samples_kept: retention::samples_kept(&cfg.retention),
                    drift: cfg.drift.clone(),
                    runs: runs.clone(),
                    retrainer,
                    store: store.clone(),
                    devices: credentials,
                    artifacts: artifacts.clone(),
                    datasets_dir: cfg.datasets_dir(),
                    trust: trust.clone(),
                    max_package_bytes: if cfg.max_package_bytes == 0 { 64 << 20 } else { cfg.max_package_bytes },
                    reconcile: reconcile.clone(),
                    audit_keys: audit_key.as_ref().map(|k| {
                        let mut t = TrustStore::new();
                        t.add(k.verifying_key());
                        Arc::new(t)
                    }),
                };
                let listener =
                    tokio::net::TcpListener::bind(listen).await.with_context(|| format!("HTTP API on {listen}"))?;
                let addr = listener.local_addr()?;
                warn_if_exposed("HTTP", addr, http_tls.is_some());
                let router = api::router(state);
                tokio::spawn(async move {
                    let served = match http_tls {
                        Some(acceptor) => match tls::TlsListener::new(listener, acceptor) {
                            Ok(listener) => axum::serve(listener, router).await,
                            Err(error) => Err(error),
                        },
                        None => axum::serve(listener, router).await,
                    };
                    if let Err(error) = &served {
                        tracing::error!(%error, "the HTTP API stopped");
                    }
                    served
                });
                Some(addr)
            }
            None => None,
        };
        tokio::spawn(store.clone().checkpoint_beside_ingestion(store::Checkpointing::default()));
        if !cfg.retention.is_empty() {
            let every = if cfg.retention_every.is_zero() { Duration::from_secs(3600) } else { cfg.retention_every };
            tokio::spawn(retention::run(store.clone(), cfg.retention.clone(), every));
        }
        let shards = store.parallel_writers();
        let ingest = tokio::spawn(ingest::run_sharded(
            bus,
            store.clone(),
            stats.clone(),
            ingest::Batching::default(),
            reconcile.clone(),
            shards,
        ));
        Ok(Hub { store, stats, ingest, http_addr, mqtt_addr, reconcile, runs })
    }
}

pub fn load_trust(paths: &[PathBuf]) -> anyhow::Result<TrustStore> {
    let mut trust = TrustStore::new();
    for p in paths {
        let bytes = std::fs::read(p).with_context(|| format!("reading trusted key {}", p.display()))?;
        trust.add_key_file(&bytes, &p.display().to_string())?;
    }
    Ok(trust)
}

/// The key that signs audit checkpoints: read from `path`, or made there (readable by the
/// owner only) with its public twin beside it.
pub fn audit_signer(path: &Path) -> anyhow::Result<Signer25519> {
    let origin = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => Ok(KeyFile::parse(&bytes, &origin)?.signer(&origin)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret)
                .map_err(|e| anyhow::anyhow!("no randomness from the operating system: {e}"))?;
            let signer = Signer25519::from_secret(secret);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let public = public_twin(path);
            std::fs::write(&public, signer.public_file().to_json())
                .with_context(|| format!("writing {}", public.display()))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(path).with_context(|| format!("creating {origin}"))?;
            std::io::Write::write_all(&mut f, &signer.secret_file().to_json())?;
            f.sync_all()?;
            tracing::info!(key_id = signer.key_id(), public = %public.display(), "made the audit signing key");
            Ok(signer)
        }
        Err(e) => Err(anyhow::anyhow!("reading the audit key {origin}: {e}")),
    }
}

/// `x.secret.json` → `x.public.json`; any other name gets `.public.json` appended.
pub fn public_twin(secret: &Path) -> PathBuf {
    let name = secret.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let public = match name.strip_suffix(".secret.json") {
        Some(stem) => format!("{stem}.public.json"),
        None => format!("{name}.public.json"),
    };
    secret.with_file_name(public)
}

async fn sign_checkpoints(store: store::Store, signer: Signer25519, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match store.audit_checkpoint(&signer).await {
            Ok(Some(r)) => tracing::debug!(seq = r.seq, "audit checkpoint signed"),
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "cannot sign an audit checkpoint; retrying"),
        }
    }
}

/// Records in the audit trail which keys this hub trusts and signs with, when that differs from
/// what the last start recorded (`hub.keys`: the ids added and removed, by role).
async fn record_keys(
    store: &store::Store,
    trust: &TrustStore,
    pipeline: Option<&Signer25519>,
    audit: Option<&Signer25519>,
) -> anyhow::Result<()> {
    let keys = serde_json::json!({
        "trusted": trust.key_ids().collect::<Vec<_>>(),
        "pipeline": pipeline.map(Signer25519::key_id),
        "audit": audit.map(Signer25519::key_id),
    });
    let filter = store::AuditFilter { action: Some("hub.keys".into()), limit: usize::MAX, ..Default::default() };
    let last = store.audit_records(&filter).await?.pop().map(|r| r.details["keys"].clone());
    if last.as_ref() == Some(&keys) {
        return Ok(());
    }
    let ids = |v: Option<&serde_json::Value>| -> std::collections::BTreeSet<String> {
        let Some(v) = v else { return Default::default() };
        let mut out: std::collections::BTreeSet<String> = v["trusted"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(|k| format!("trusted:{k}")))
            .collect();
        for role in ["pipeline", "audit"] {
            if let Some(k) = v[role].as_str() {
                out.insert(format!("{role}:{k}"));
            }
        }
        out
    };
    let (now, before) = (ids(Some(&keys)), ids(last.as_ref()));
    let event =
        impeller_core::audit::AuditEvent::new(store::now_ms(), "hub", "hub.keys", "hub").details(serde_json::json!({
            "keys": keys,
            "added": now.difference(&before).collect::<Vec<_>>(),
            "removed": before.difference(&now).collect::<Vec<_>>(),
        }));
    store.audit(event).await?;
    Ok(())
}
