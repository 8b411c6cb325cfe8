//! The simulated fleet live, as edge agents meet real pumps (`impeller sim --mqtt | --modbus`):
//! the simulated clock starts now and runs `speed` times real time. Any list of [`Device`]s is
//! served the same way (SKAB files too, `crate::skabfeed`).
//!
//! - Over MQTT, each pump's readings are published to its own topic in the form the agent's
//!   MQTT source reads (`impeller_core::wire::Readings`): the manufacturer's names and units, an
//!   array per tick, oldest first, at most [`wire::MAX_READINGS`] values a message.
//! - Over Modbus TCP, each pump is a controller on its own port holding its latest reading in
//!   its manufacturer's register map (`crates/impeller-edge/config/modbus/`), as the agent's
//!   Modbus source polls it. A controller is polled in real time, so agents see the pump as the
//!   model was trained to only at `--speed 1`; faster runs compress time.
//!
//! The ground truth (fault intervals, drift onsets) is the fleet plan, written beside
//! (`fleet.json`; a SKAB replay's labels in `skab.json`).

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use impeller_core::adapter::AdapterConfig;
use impeller_core::registers::{RegisterMap, Table, encode_value};
use impeller_core::wire;
use impeller_sim::{Fleet, Manufacturer, Sample};
use tokio_modbus::{ExceptionCode, Request, Response};

use crate::cli::SimArgs;

/// Each controller model's register map: (manufacturer, file name, TOML).
pub const REGISTER_MAPS: [(&str, &str, &str); 4] = [
    ("acme", "acme-p200.toml", include_str!("../../impeller-edge/config/modbus/acme-p200.toml")),
    ("nordpump", "nordpump-cx.toml", include_str!("../../impeller-edge/config/modbus/nordpump-cx.toml")),
    ("kestrel", "kestrel-k9.toml", include_str!("../../impeller-edge/config/modbus/kestrel-k9.toml")),
    ("skab", "skab-testbed.toml", include_str!("../../impeller-edge/config/modbus/skab-testbed.toml")),
];

/// A manufacturer's register map, and its file name.
pub fn register_map(m: &Manufacturer) -> anyhow::Result<(RegisterMap, &'static str)> {
    let (file, text) = map_text(m.name)?;
    Ok((RegisterMap::parse(text, file)?, file))
}

/// The file name and TOML of a manufacturer's register map.
pub(crate) fn map_text(manufacturer: &str) -> anyhow::Result<(&'static str, &'static str)> {
    REGISTER_MAPS
        .iter()
        .find(|(name, _, _)| *name == manufacturer)
        .map(|(_, file, text)| (*file, *text))
        .with_context(|| format!("no register map for manufacturer {manufacturer}"))
}

/// One device served live: its id, the columns it reads (the vendor's names, in order), the
/// register map its Modbus controller holds them in, and its agent's adapter.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    /// What it is, for its agent's source file: "acme P-200 at gulf", "SKAB valve1/0.csv".
    pub about: String,
    pub columns: Vec<String>,
    /// How often it samples: its controller is polled this often.
    pub sample_ms: u64,
    /// The register map's file name and TOML.
    pub register_map: (&'static str, &'static str),
    pub adapter: AdapterConfig,
}

/// The simulated fleet's pumps as devices.
pub fn fleet_devices(fleet: &Fleet) -> anyhow::Result<Vec<Device>> {
    fleet
        .pumps
        .iter()
        .map(|p| {
            let m = Manufacturer::by_name(&p.manufacturer).context("unknown manufacturer")?;
            Ok(Device {
                id: p.id.clone(),
                about: format!("{} {} at {}", m.name, m.model, p.site),
                columns: m.columns().into_iter().map(String::from).collect(),
                sample_ms: m.sample_ms,
                register_map: map_text(m.name)?,
                adapter: m.adapter(),
            })
        })
        .collect()
}

/// The simulated fleet's readings from its start to its end, a stream per pump.
pub fn fleet_streams(fleet: &Fleet) -> Pumps<'static> {
    Pumps::new(
        fleet
            .pumps
            .iter()
            .map(|p| Box::new(fleet.simulate(p, fleet.start_ms, fleet.end_ms)) as Stream<'static>)
            .collect(),
    )
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

/// One device's samples, oldest first.
pub type Stream<'a> = Box<dyn Iterator<Item = Sample> + Send + 'a>;

/// Every device's samples, advanced together along the simulated clock.
pub struct Pumps<'a> {
    streams: Vec<std::iter::Peekable<Stream<'a>>>,
}

impl std::fmt::Debug for Pumps<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pumps").field("streams", &self.streams.len()).finish()
    }
}

impl<'a> Pumps<'a> {
    pub fn new(streams: Vec<Stream<'a>>) -> Pumps<'a> {
        Pumps { streams: streams.into_iter().map(Iterator::peekable).collect() }
    }

    /// Hands each sample due by `t_ms` to `each` with its device's index, oldest first per device.
    pub fn advance(&mut self, t_ms: i64, mut each: impl FnMut(usize, Sample)) {
        for (i, stream) in self.streams.iter_mut().enumerate() {
            while let Some(s) = stream.next_if(|s| s.ts_ms <= t_ms) {
                each(i, s);
            }
        }
    }

    /// Whether every device has given its last sample.
    pub fn finished(&mut self) -> bool {
        self.streams.iter_mut().all(|s| s.peek().is_none())
    }
}

/// Readings messages for one device's samples: arrays of at most [`wire::MAX_READINGS`] values.
pub fn readings_messages(columns: &[String], samples: &[Sample]) -> Vec<Vec<u8>> {
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
                        .map(|(c, v)| (c.clone(), v.is_finite().then_some(*v)))
                        .collect(),
                })
                .collect();
            serde_json::to_vec(&readings).unwrap_or_default()
        })
        .collect()
}

/// Publishes every device's readings to `broker` on `topic` (`{pump}` replaced by its id) as the
/// simulated clock reaches them, until the streams end or `stop`. Returns the readings sent.
pub async fn publish_mqtt(
    devices: &[Device],
    mut pumps: Pumps<'_>,
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
        let mut disconnecting = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => disconnecting = true,
                Ok(_) => {}
                // The broker closes the connection on our DISCONNECT, once it has read what
                // was sent before it.
                Err(_) if disconnecting => return,
                Err(error) => {
                    tracing::warn!(%error, "MQTT broker unreachable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let topics: Vec<String> = devices.iter().map(|d| topic.replace("{pump}", &d.id)).collect();
    let mut due: Vec<Vec<Sample>> = vec![Vec::new(); devices.len()];
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
                for payload in readings_messages(&devices[i].columns, samples) {
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
    let _ = tokio::time::timeout(Duration::from_secs(10), driver).await;
    result
}

/// One controller's registers: each table as words from address 0.
#[derive(Debug, Default)]
struct Bank {
    input: Vec<u16>,
    holding: Vec<u16>,
}

/// What the controllers serve, one per device, the maps they serve it in, and each device's
/// columns in sample order.
#[derive(Debug)]
pub struct ModbusFleet {
    pub addresses: Vec<SocketAddr>,
    banks: Vec<Arc<RwLock<Bank>>>,
    maps: Vec<RegisterMap>,
    columns: Vec<Vec<String>>,
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
    /// Binds a Modbus TCP server per device: the first on `first`, the next on the following
    /// port, and so on (port 0: any free ports), and serves until the runtime ends.
    pub async fn serve(devices: &[Device], first: SocketAddr) -> anyhow::Result<ModbusFleet> {
        let mut out = ModbusFleet { addresses: Vec::new(), banks: Vec::new(), maps: Vec::new(), columns: Vec::new() };
        for (i, d) in devices.iter().enumerate() {
            let (file, text) = d.register_map;
            let map = RegisterMap::parse(text, file)?;
            let mut addr = first;
            if first.port() != 0 {
                let port = u16::try_from(usize::from(first.port()) + i).map_err(|_| {
                    crate::InputError(format!("--modbus {first}: {} devices run past port 65535", devices.len()))
                })?;
                addr.set_port(port);
            }
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("Modbus TCP on {addr} for {}", d.id))?;
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
            out.columns.push(d.columns.clone());
        }
        Ok(out)
    }

    /// Sets device `i`'s registers to `sample` (its columns' values, in their order).
    pub fn set(&self, i: usize, sample: &Sample) {
        let (Some(bank), Some(map), Some(columns)) = (self.banks.get(i), self.maps.get(i), self.columns.get(i)) else {
            return;
        };
        let Ok(mut bank) = bank.write() else { return };
        for (column, value) in columns.iter().zip(&sample.values) {
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

/// Writes, for each device, the agent configuration that reads it live (`[source]` and its
/// `[adapter]`) to `DIR/sources/ID.toml`, and the register maps to `DIR/modbus/`.
pub fn write_sources(
    devices: &[Device],
    dir: &Path,
    mqtt: Option<(&str, &str)>,
    modbus: Option<&ModbusFleet>,
) -> anyhow::Result<()> {
    let sources = dir.join("sources");
    std::fs::create_dir_all(&sources).with_context(|| format!("creating {}", sources.display()))?;
    let maps = dir.join("modbus");
    if modbus.is_some() {
        std::fs::create_dir_all(&maps).with_context(|| format!("creating {}", maps.display()))?;
        let used: std::collections::BTreeMap<_, _> = devices.iter().map(|d| d.register_map).collect();
        for (file, text) in used {
            std::fs::write(maps.join(file), text).with_context(|| format!("writing {}", maps.join(file).display()))?;
        }
    }
    for (i, d) in devices.iter().enumerate() {
        let mut text = format!("# {} ({}): the [source] and [adapter] of its agent's edge.toml\n", d.id, d.about);
        if let Some((broker, topic)) = mqtt {
            let topic = topic.replace("{pump}", &d.id);
            text.push_str(&format!("[source]\nkind = \"mqtt\"\nbroker = \"{broker}\"\ntopic = \"{topic}\"\n"));
        }
        if let Some(mb) = modbus {
            let poll_ms = d.sample_ms.max(100);
            text.push_str(&format!(
                "[source]\nkind = \"modbus\"\naddress = \"{}\"\nunit = 1\nregister_map = {:?}\npoll_ms = {poll_ms}\n",
                mb.addresses[i],
                maps.join(d.register_map.0).display().to_string()
            ));
        }
        #[derive(serde::Serialize)]
        struct Adapter<'a> {
            adapter: &'a AdapterConfig,
        }
        text.push('\n');
        text.push_str(&toml::to_string(&Adapter { adapter: &d.adapter })?);
        let path = sources.join(format!("{}.toml", d.id));
        let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// How `impeller sim` serves live: where to, how fast, and where its files go.
#[derive(Debug)]
pub struct Live {
    out: PathBuf,
    mqtt: Option<(String, String)>,
    modbus: Option<SocketAddr>,
    start_ms: i64,
    speed: f64,
}

impl Live {
    pub fn from_args(args: &SimArgs, start_ms: i64) -> anyhow::Result<Live> {
        if !(args.speed >= 0.01 && args.speed <= 10_000.0) {
            return Err(crate::InputError(format!("--speed {}: must be 0.01 to 10000", args.speed)).into());
        }
        std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
        Ok(Live {
            out: args.out.clone(),
            mqtt: args.mqtt.clone().map(|broker| (broker, args.topic.clone())),
            modbus: args.modbus,
            start_ms,
            speed: args.speed,
        })
    }

    /// Writes the ground truth as `OUT/file`.
    pub fn write_truth(&self, file: &str, truth: &impl serde::Serialize) -> anyhow::Result<()> {
        let path = self.out.join(file);
        std::fs::write(&path, serde_json::to_vec_pretty(truth)?).with_context(|| format!("writing {}", path.display()))
    }

    /// Serves `devices` until their streams end (`sim_s` simulated seconds) or Ctrl-C, after
    /// writing each one's agent settings. `streams` gives every device's samples from the
    /// start; it is called once per way of serving.
    pub fn serve<'a>(
        &self,
        devices: &[Device],
        streams: impl Fn() -> Pumps<'a>,
        sim_s: f64,
        about: &str,
    ) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(async {
            let modbus = match self.modbus {
                Some(first) => Some(ModbusFleet::serve(devices, first).await?),
                None => None,
            };
            let mqtt = self.mqtt.as_ref().map(|(b, t)| (b.as_str(), t.as_str()));
            write_sources(devices, &self.out, mqtt, modbus.as_ref())?;
            let clock = SimClock { start_ms: self.start_ms, started: Instant::now(), speed: self.speed };
            crate::commands::emit(|out| {
                writeln!(
                    out,
                    "serving {about} live at {}× for {:.0} s; ground truth and each agent's source in {}",
                    self.speed,
                    sim_s / self.speed,
                    self.out.display()
                )?;
                if let Some((broker, topic)) = mqtt {
                    writeln!(out, "  MQTT: {broker}, topics {topic}")?;
                }
                if let Some(m) = &modbus {
                    let (first, last) = (m.addresses[0], m.addresses[m.addresses.len() - 1]);
                    writeln!(out, "  Modbus TCP: {} devices from {first} to {last}, unit 1", m.addresses.len())?;
                }
                Ok(())
            })?;
            let registers = async {
                let Some(m) = &modbus else { return std::future::pending::<()>().await };
                let mut pumps = streams();
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while !pumps.finished() {
                    tick.tick().await;
                    let mut latest: Vec<Option<Sample>> = vec![None; devices.len()];
                    pumps.advance(clock.now_ms(), |i, s| latest[i] = Some(s));
                    for (i, s) in latest.iter().enumerate() {
                        if let Some(s) = s {
                            m.set(i, s);
                        }
                    }
                }
            };
            let published = async {
                match mqtt {
                    Some((broker, topic)) => {
                        publish_mqtt(devices, streams(), clock, broker, topic, std::future::pending()).await.map(Some)
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = registers => {}
                sent = published => { sent?; }
            }
            Ok(())
        })
    }
}
