//! The Impeller hub: the control plane the edge agents talk to. So far: ingestion of what the
//! agents send, stored once per (device, seq) in SQLite or PostgreSQL and acknowledged after the
//! commit, behind an embedded rumqttd broker or an external MQTT broker.

pub mod bus;
pub mod fleet;
pub mod ingest;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

/// Where the hub keeps things and how agents reach it.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// `sqlite:PATH` or `postgres://…`.
    pub database: String,
    /// Listen address of the embedded broker, or `None` with `external_broker`.
    pub mqtt_listen: Option<SocketAddr>,
    /// `mqtt://host:port` of an external broker instead of the embedded one (which then does
    /// its own authentication).
    pub external_broker: Option<String>,
    /// The embedded broker admits only provisioned devices with their secret. Off: anyone.
    pub device_auth: bool,
}

/// A running hub's handles.
#[derive(Debug)]
pub struct Hub {
    pub store: store::Store,
    pub stats: Arc<ingest::IngestStats>,
    pub ingest: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Hub {
    /// Opens the database (applying migrations), starts the broker or connects to one, and
    /// starts ingesting; returns once the embedded broker accepts connections. Must run inside
    /// a tokio runtime.
    pub async fn start(cfg: &HubConfig) -> anyhow::Result<Hub> {
        let store = store::Store::open(&cfg.database).await?;
        let bus = match (&cfg.external_broker, cfg.mqtt_listen) {
            (Some(url), _) => bus::external(url, "impeller-hub")?,
            (None, Some(listen)) => {
                let credentials = if cfg.device_auth {
                    let c = fleet::Credentials::default();
                    c.refresh(&store).await?;
                    tokio::spawn(c.clone().keep_fresh(store.clone()));
                    Some(c)
                } else {
                    None
                };
                let bus = bus::embedded(listen, credentials)?;
                wait_listening(listen).await?;
                bus
            }
            (None, None) => anyhow::bail!("the hub needs an MQTT listen address or an external broker"),
        };
        let stats = Arc::new(ingest::IngestStats::default());
        let ingest = tokio::spawn(ingest::run(bus, store.clone(), stats.clone(), 1000));
        Ok(Hub { store, stats, ingest })
    }
}

/// The embedded broker binds on its own thread; wait until it accepts connections.
async fn wait_listening(listen: SocketAddr) -> anyhow::Result<()> {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if tokio::time::Instant::now() > until {
            anyhow::bail!("the embedded MQTT broker does not accept connections on {listen}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}
