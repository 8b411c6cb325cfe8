//! Where readings come from: a CSV file replayed at a chosen speed, a local MQTT broker, or a
//! pump controller polled over Modbus TCP.
//! Each source runs as its own task and sends readings down a channel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use impeller_core::registers::{RegisterMap, Table};
use impeller_core::table::{CsvFormat, parse_csv};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Named values at one instant, in the vendor's names and units.
#[derive(Debug, Clone)]
pub struct Reading {
    pub ts_ms: i64,
    pub values: Vec<(Arc<str>, f64)>,
}

/// How often a replay wakes at most; rows falling due in between wait for the next tick.
const REPLAY_TICK: Duration = Duration::from_millis(50);

/// Replays a SKAB-layout CSV file: `speed` times real time (0 = as fast as the agent takes
/// them); with `rebase_time` the first row is stamped now and the rest keep their spacing.
pub async fn replay_csv(
    path: PathBuf,
    speed: f64,
    rebase_time: bool,
    tx: mpsc::Sender<Reading>,
    metrics: Arc<Metrics>,
) {
    let name = path.display().to_string();
    // Read once at start; a short blocking read is fine here.
    let table = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| parse_csv(&b, &name, &CsvFormat::SKAB).map_err(|e| e.to_string()))
    {
        Ok(t) => t,
        Err(error) => {
            Metrics::add(&metrics.readings_invalid, 1);
            tracing::error!(%error, "cannot replay the CSV source");
            return;
        }
    };
    let names: Vec<Arc<str>> = table.channels.iter().map(|c| Arc::from(c.name.as_str())).collect();
    let start_wall = crate::now_ms();
    let first_ts = table.timestamps.first().copied().unwrap_or(0);
    let started = tokio::time::Instant::now();
    tracing::info!(file = %name, rows = table.len(), speed, "replaying");
    for (ts, row) in table.timestamps.iter().zip(&table.rows) {
        let offset = ts - first_ts;
        if speed > 0.0 {
            // Rows due within the same tick are sent together: a fast replay wakes the agent
            // at most 1/REPLAY_TICK times a second instead of once per row.
            let due = offset.max(0) as f64 / 1000.0 / speed;
            let tick = REPLAY_TICK.as_secs_f64();
            tokio::time::sleep_until(started + Duration::from_secs_f64((due / tick).ceil() * tick)).await;
        }
        let ts_ms = if rebase_time { start_wall + offset } else { *ts };
        let values = names.iter().cloned().zip(row.iter().copied()).collect();
        if tx.send(Reading { ts_ms, values }).await.is_err() {
            return;
        }
    }
}

/// Channel names as shared strings, made once per name rather than once per reading.
#[derive(Debug, Default)]
struct Names(std::collections::HashSet<Arc<str>>);

impl Names {
    /// Most names kept: a publisher sending ever new names must not grow the agent.
    const MAX: usize = 256;

    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        if self.0.len() < Self::MAX {
            self.0.insert(n.clone());
        }
        n
    }
}

/// Subscribes to readings on a local broker: `{"ts_ms": …, "values": {"NAME": value, …}}`, or an
/// array of those in one message.
pub async fn subscribe_mqtt(
    device: String,
    broker: String,
    topic: String,
    tx: mpsc::Sender<Reading>,
    metrics: Arc<Metrics>,
) {
    let Ok((host, port)) = crate::config::broker_address(&broker) else { return };
    let mut opts = MqttOptions::new(format!("{device}-source"), host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    // Room for the largest readings message decoded (MAX_READINGS values with long names);
    // larger packets are refused by the client before they take memory.
    opts.set_max_packet_size(256 << 10, 256 << 10);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let mut names = Names::default();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(error) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                    tracing::error!(%error, "cannot subscribe to the readings topic");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => match impeller_core::wire::decode_readings(&p.payload) {
                Ok(batch) => {
                    for r in batch {
                        let values =
                            r.values.into_iter().map(|(k, v)| (names.get(&k), v.unwrap_or(f64::NAN))).collect();
                        if tx.send(Reading { ts_ms: r.ts_ms, values }).await.is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    Metrics::add(&metrics.readings_invalid, 1);
                    tracing::warn!(%error, topic = %p.topic, "ignoring a malformed readings message");
                }
            },
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, broker = %broker, "readings broker unreachable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Where and how to poll a Modbus TCP controller.
#[derive(Debug)]
pub struct ModbusSource {
    pub address: String,
    pub unit: u8,
    pub map: RegisterMap,
    pub poll: Duration,
    pub timeout: Duration,
}

/// Polls a Modbus TCP controller: one reading per poll, channels named by the register map. A
/// read the controller refuses (an exception) leaves its channels missing for that poll (the
/// gap policy decides what that means for scoring); a lost connection is retried with backoff
/// up to 30 s, and nothing is sent while it is down.
pub async fn poll_modbus(src: ModbusSource, tx: mpsc::Sender<Reading>, metrics: Arc<Metrics>) {
    let plan = src.map.plan();
    let names: Vec<Arc<str>> = src.map.registers.iter().map(|r| Arc::from(r.channel.as_str())).collect();
    let mut ctx: Option<tokio_modbus::client::Context> = None;
    let mut backoff = Duration::from_secs(1);
    let mut tick = tokio::time::interval(src.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let Some(c) = ctx.as_mut() else {
            match connect_modbus(&src).await {
                Ok(c) => {
                    tracing::info!(address = %src.address, unit = src.unit, "connected to the controller");
                    ctx = Some(c);
                    backoff = Duration::from_secs(1);
                }
                Err(error) => {
                    Metrics::add(&metrics.source_errors, 1);
                    tracing::warn!(address = %src.address, %error, retry_s = backoff.as_secs(), "controller unreachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
            continue;
        };
        let ts_ms = crate::now_ms();
        let mut values = vec![f64::NAN; names.len()];
        let mut lost = false;
        for read in &plan {
            use tokio_modbus::client::Reader;
            let request = async {
                match read.table {
                    Table::Holding => c.read_holding_registers(read.address, read.count).await,
                    Table::Input => c.read_input_registers(read.address, read.count).await,
                }
            };
            let what = || format!("{:?} registers {}+{}", read.table, read.address, read.count);
            match tokio::time::timeout(src.timeout, request).await {
                Ok(Ok(Ok(words))) => match src.map.decode(read, &words) {
                    Ok(decoded) => decoded.into_iter().for_each(|(i, v)| values[i] = v),
                    Err(error) => {
                        Metrics::add(&metrics.source_errors, 1);
                        tracing::warn!(address = %src.address, %error, "malformed response");
                    }
                },
                Ok(Ok(Err(exception))) => {
                    Metrics::add(&metrics.source_errors, 1);
                    tracing::warn!(address = %src.address, read = %what(), %exception, "the controller refused a read");
                }
                Ok(Err(error)) => {
                    tracing::warn!(address = %src.address, read = %what(), %error, "lost the controller; reconnecting");
                    lost = true;
                    break;
                }
                Err(_) => {
                    tracing::warn!(address = %src.address, read = %what(), "no answer in time; reconnecting");
                    lost = true;
                    break;
                }
            }
        }
        if lost {
            Metrics::add(&metrics.source_errors, 1);
            ctx = None;
            continue;
        }
        let values = names.iter().cloned().zip(values).collect();
        if tx.send(Reading { ts_ms, values }).await.is_err() {
            return;
        }
    }
}

async fn connect_modbus(src: &ModbusSource) -> Result<tokio_modbus::client::Context, String> {
    let connect = async {
        let addr = tokio::net::lookup_host(&src.address)
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| "the host name has no address".to_string())?;
        tokio_modbus::client::tcp::connect_slave(addr, tokio_modbus::Slave(src.unit)).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(src.timeout, connect).await.map_err(|_| "connect timed out".to_string())?
}
