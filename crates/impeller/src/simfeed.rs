//! The simulated fleet live, as edge agents meet real pumps (`impeller sim --mqtt | --modbus`):
//! the simulated clock starts now and runs `speed` times real time.
//!
//! - Over MQTT, each pump's readings are published to its own topic in the form the agent's
//!   MQTT source reads (`impeller_core::wire::Readings`): the manufacturer's names and units, an
//!   array per tick, oldest first, at most [`wire::MAX_READINGS`] values a message.
//! - Over Modbus TCP, each pump is a controller on its own port holding its latest reading in
//!   its manufacturer's register map (`crates/impeller-edge/config/modbus/`), as the agent's
//!   Modbus source polls it. A controller is polled in real time, so agents see the pump as the
//!   model was trained to only at `--speed 1`; faster runs compress time.
//!
//! The ground truth (fault intervals, drift onsets) is the fleet plan, written beside.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use impeller_core::registers::{RegisterMap, Table, encode_value};
use impeller_core::wire;
use impeller_sim::{Fleet, Manufacturer, PumpSim, Sample};
use tokio_modbus::{ExceptionCode, Request, Response};

/// Each manufacturer's controller map: (manufacturer, file name, TOML).
pub const REGISTER_MAPS: [(&str, &str, &str); 3] = [
    ("acme", "acme-p200.toml", include_str!("../../impeller-edge/config/modbus/acme-p200.toml")),
    ("nordpump", "nordpump-cx.toml", include_str!("../../impeller-edge/config/modbus/nordpump-cx.toml")),
    ("kestrel", "kestrel-k9.toml", include_str!("../../impeller-edge/config/modbus/kestrel-k9.toml")),
];

/// A manufacturer's register map, and its file name.
pub fn register_map(m: &Manufacturer) -> anyhow::Result<(RegisterMap, &'static str)> {
    let (_, file, text) = REGISTER_MAPS
        .iter()
        .find(|(name, _, _)| *name == m.name)
        .with_context(|| format!("no register map for manufacturer {}", m.name))?;
    Ok((RegisterMap::parse(text, file)?, file))
}

/// Simulated time: the fleet's start plus `speed` times the real time since `started`.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    pub start_ms: i64,
    pub started: Instant,
    pub speed: f64,
}

impl SimClock {
    pub fn now_ms(&self) -> i64 {
        self.start_ms + (self.started.elapsed().as_secs_f64() * self.speed * 1000.0) as i64
    }
}

/// Every pump's readings, advanced together along the simulated clock.
#[derive(Debug)]
pub struct Pumps {
    sims: Vec<std::iter::Peekable<PumpSim>>,
}

impl Pumps {
    pub fn new(fleet: &Fleet) -> Pumps {
        Pumps { sims: fleet.pumps.iter().map(|p| fleet.simulate(p, fleet.start_ms, fleet.end_ms).peekable()).collect() }
    }

    /// Hands each sample due by `t_ms` to `each` with its pump's index, oldest first per pump.
    pub fn advance(&mut self, t_ms: i64, mut each: impl FnMut(usize, Sample)) {
        for (i, sim) in self.sims.iter_mut().enumerate() {
            while let Some(s) = sim.next_if(|s| s.ts_ms <= t_ms) {
                each(i, s);
            }
        }
    }

    /// Whether every pump has given its last sample.
    pub fn finished(&mut self) -> bool {
        self.sims.iter_mut().all(|s| s.peek().is_none())
    }
}

/// Readings messages for one pump's samples: arrays of at most [`wire::MAX_READINGS`] values.
pub fn readings_messages(m: &Manufacturer, samples: &[Sample]) -> Vec<Vec<u8>> {
    let columns = m.columns();
    let per_message = (wire::MAX_READINGS / columns.len().max(1)).max(1);
    samples
        .chunks(per_message)
        .map(|chunk| {
            let readings: Vec<wire::Readings> = chunk
                .iter()
                .map(|s| wire::Readings {
                    ts_ms: s.ts_ms,
                    values: columns
                        .iter()
                        .zip(&s.values)
                        .map(|(c, v)| ((*c).to_string(), v.is_finite().then_some(*v)))
                        .collect(),
                })
                .collect();
            serde_json::to_vec(&readings).unwrap_or_default()
        })
        .collect()
}

/// Publishes every pump's readings to `broker` on `topic` (`{pump}` replaced by its id) as the
/// simulated clock reaches them, until the fleet's end or `stop`. Returns the readings sent.
pub async fn publish_mqtt(
    fleet: &Fleet,
    clock: SimClock,
    broker: &str,
    topic: &str,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<u64> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let (host, port) =
        impeller_edge::config::broker_address(broker).map_err(|e| crate::InputError(format!("--mqtt {e}")))?;
    let mut opts = MqttOptions::new(format!("impeller-sim-{}", std::process::id()), host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
    // The connection first: a broker that is not there is an error, not a silent run.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("MQTT broker {broker}: {e}"),
            Err(_) => anyhow::bail!("MQTT broker {broker}: no answer in 10 s"),
        }
    }
    let driver = tokio::spawn(async move {
        loop {
            if let Err(error) = eventloop.poll().await {
                tracing::warn!(%error, "MQTT broker unreachable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let topics: Vec<String> = fleet.pumps.iter().map(|p| topic.replace("{pump}", &p.id)).collect();
    let makers: Vec<Manufacturer> = fleet
        .pumps
        .iter()
        .map(|p| Manufacturer::by_name(&p.manufacturer).unwrap_or(impeller_sim::MANUFACTURERS[0]))
        .collect();
    let mut pumps = Pumps::new(fleet);
    let mut due: Vec<Vec<Sample>> = vec![Vec::new(); fleet.pumps.len()];
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(stop);
    let result: anyhow::Result<u64> = async {
        loop {
            tokio::select! {
                () = &mut stop => return Ok(sent),
                _ = tick.tick() => {}
            }
            pumps.advance(clock.now_ms(), |i, s| due[i].push(s));
            for (i, samples) in due.iter_mut().enumerate() {
                for payload in readings_messages(&makers[i], samples) {
                    client
                        .publish(topics[i].as_str(), QoS::AtLeastOnce, false, payload)
                        .await
                        .context("the MQTT client stopped")?;
                }
                sent += samples.len() as u64;
                samples.clear();
            }
            if pumps.finished() {
                return Ok(sent);
            }
        }
    }
    .await;
    // Let the client hand over what is queued before the connection goes.
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    driver.abort();
    result
}

/// One controller's registers: each table as words from address 0.
#[derive(Debug, Default)]
struct Bank {
    input: Vec<u16>,
    holding: Vec<u16>,
}

/// What the controllers serve, one per pump, and the maps they serve it in.
#[derive(Debug)]
pub struct ModbusFleet {
    pub addresses: Vec<SocketAddr>,
    banks: Vec<Arc<RwLock<Bank>>>,
    maps: Vec<RegisterMap>,
}

/// A controller answering reads of its two register tables, refusing anything else.
#[derive(Debug, Clone)]
struct Controller(Arc<RwLock<Bank>>);

impl tokio_modbus::server::Service for Controller {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let read = |words: &[u16], address: u16, count: u16| {
            let (from, to) = (usize::from(address), usize::from(address) + usize::from(count));
            if count == 0 || count > impeller_core::registers::MAX_READ {
                Err(ExceptionCode::IllegalDataValue)
            } else {
                words.get(from..to).map(<[u16]>::to_vec).ok_or(ExceptionCode::IllegalDataAddress)
            }
        };
        let Ok(bank) = self.0.read() else { return std::future::ready(Err(ExceptionCode::ServerDeviceFailure)) };
        std::future::ready(match req {
            Request::ReadInputRegisters(a, n) => read(&bank.input, a, n).map(Response::ReadInputRegisters),
            Request::ReadHoldingRegisters(a, n) => read(&bank.holding, a, n).map(Response::ReadHoldingRegisters),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

impl ModbusFleet {
    /// Binds a Modbus TCP server per pump: the first on `first`, the next on the following
    /// port, and so on (port 0: any free ports), and serves until the runtime ends.
    pub async fn serve(fleet: &Fleet, first: SocketAddr) -> anyhow::Result<ModbusFleet> {
        let mut out = ModbusFleet { addresses: Vec::new(), banks: Vec::new(), maps: Vec::new() };
        for (i, p) in fleet.pumps.iter().enumerate() {
            let m = Manufacturer::by_name(&p.manufacturer).context("unknown manufacturer")?;
            let (map, _) = register_map(&m)?;
            let mut addr = first;
            if first.port() != 0 {
                let port = u16::try_from(usize::from(first.port()) + i).map_err(|_| {
                    crate::InputError(format!("--modbus {first}: {} pumps run past port 65535", fleet.pumps.len()))
                })?;
                addr.set_port(port);
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("Modbus TCP on {addr} for {}", p.id))?;
            out.addresses.push(listener.local_addr()?);
            let size = |t: Table| {
                map.registers
                    .iter()
                    .filter(|r| r.table == t)
                    .map(|r| usize::from(r.address) + usize::from(r.data_type.words()))
                    .max()
                    .unwrap_or(0)
            };
            let bank = Arc::new(RwLock::new(Bank {
                input: vec![0; size(Table::Input)],
                holding: vec![0; size(Table::Holding)],
            }));
            let controller = Controller(bank.clone());
            tokio::spawn(async move {
                let server = tokio_modbus::server::tcp::Server::new(listener);
                let new_service = move |_| Ok(Some(controller.clone()));
                let on_connected = |stream, addr| {
                    let new_service = new_service.clone();
                    async move { tokio_modbus::server::tcp::accept_tcp_connection(stream, addr, new_service) }
                };
                if let Err(error) =
                    server.serve(&on_connected, |error| tracing::debug!(%error, "Modbus client gone")).await
                {
                    tracing::error!(%error, "Modbus server stopped");
                }
            });
            out.banks.push(bank);
            out.maps.push(map);
        }
        Ok(out)
    }

    /// Sets pump `i`'s registers to `sample` (vendor names and units, the manufacturer's order).
    pub fn set(&self, i: usize, m: &Manufacturer, sample: &Sample) {
        let (Some(bank), Some(map)) = (self.banks.get(i), self.maps.get(i)) else { return };
        let Ok(mut bank) = bank.write() else { return };
        for (column, value) in m.columns().iter().zip(&sample.values) {
            let Some(r) = map.registers.iter().find(|r| r.channel == *column) else { continue };
            let words = encode_value(r, *value);
            let table = match r.table {
                Table::Input => &mut bank.input,
                Table::Holding => &mut bank.holding,
            };
            let at = usize::from(r.address);
            table[at..at + words.len()].copy_from_slice(&words);
        }
    }
}

/// Writes, for each pump, the agent configuration that reads it live (`[source]` and the
/// manufacturer's `[adapter]`) to `DIR/sources/PUMP.toml`, and the register maps to
/// `DIR/modbus/`.
pub fn write_sources(
    fleet: &Fleet,
    dir: &Path,
    mqtt: Option<(&str, &str)>,
    modbus: Option<&ModbusFleet>,
) -> anyhow::Result<()> {
    let sources = dir.join("sources");
    std::fs::create_dir_all(&sources).with_context(|| format!("creating {}", sources.display()))?;
    let maps = dir.join("modbus");
    if modbus.is_some() {
        std::fs::create_dir_all(&maps).with_context(|| format!("creating {}", maps.display()))?;
        for (_, file, text) in REGISTER_MAPS {
            std::fs::write(maps.join(file), text).with_context(|| format!("writing {}", maps.join(file).display()))?;
        }
    }
    for (i, p) in fleet.pumps.iter().enumerate() {
        let m = Manufacturer::by_name(&p.manufacturer).context("unknown manufacturer")?;
        let mut text = format!(
            "# {} ({} {} at {}): the [source] and [adapter] of its agent's edge.toml\n",
            p.id, m.name, m.model, p.site
        );
        if let Some((broker, topic)) = mqtt {
            let topic = topic.replace("{pump}", &p.id);
            text.push_str(&format!("[source]\nkind = \"mqtt\"\nbroker = \"{broker}\"\ntopic = \"{topic}\"\n"));
        }
        if let Some(mb) = modbus {
            let (_, file) = register_map(&m)?;
            let poll_ms = m.sample_ms.max(100);
            text.push_str(&format!(
                "[source]\nkind = \"modbus\"\naddress = \"{}\"\nunit = 1\nregister_map = {:?}\npoll_ms = {poll_ms}\n",
                mb.addresses[i],
                maps.join(file).display().to_string()
            ));
        }
        #[derive(serde::Serialize)]
        struct Adapter {
            adapter: impeller_core::adapter::AdapterConfig,
        }
        text.push('\n');
        text.push_str(&toml::to_string(&Adapter { adapter: m.adapter() })?);
        let path = sources.join(format!("{}.toml", p.id));
        let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
