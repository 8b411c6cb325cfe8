//! Test support: a trained model and signed packages, agent processes, and a receiving "hub"
//! that stores each (device, seq) once and acknowledges cumulatively, as the hub will.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use impeller_core::detector::{DetectorConfig, PcaConfig};
use impeller_core::package::{PackageSpec, Signer25519, build};
use impeller_core::{Channel, Frame, Model, TrainConfig, train};

pub const CHANNELS: [(&str, &str); 3] = [("Current", "A"), ("Pressure", "bar"), ("Volume Flow RateRMS", "L/min")];

/// The broker for tests that need one: IMPELLER_TEST_MQTT (e.g. mqtt://127.0.0.1:1883).
pub fn mqtt(test: &str) -> Option<String> {
    match std::env::var("IMPELLER_TEST_MQTT") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("{test}: SKIPPED, needs an MQTT broker: set IMPELLER_TEST_MQTT=mqtt://host:port");
            None
        }
    }
}

pub fn now_ms() -> i64 {
    impeller_edge::now_ms()
}

/// Normal pump data, then a pressure drop from `anomaly_from`.
pub fn frames(n: usize, anomaly_from: usize) -> Vec<Frame> {
    let mut state = 7u64;
    let mut noise = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    (0..n)
        .map(|i| {
            let flow = 32.0 + 2.0 * (i as f64 / 30.0).sin() + 0.2 * noise();
            let drop = if i >= anomaly_from { 0.3 } else { 0.0 };
            Frame {
                ts_ms: 1_600_000_000_000 + i as i64 * 1000,
                values: vec![1.3 + 0.02 * flow + 0.01 * noise(), 0.05 * flow + 0.01 * noise() - drop, flow],
            }
        })
        .collect()
}

pub fn write_csv(path: &Path, frames: &[Frame]) {
    let mut s = String::from("datetime;Current;Pressure;Volume Flow RateRMS;anomaly;changepoint\n");
    for f in frames {
        let t = f.ts_ms / 1000;
        let (h, m, sec) = ((t / 3600) % 24, (t / 60) % 60, t % 60);
        s.push_str(&format!("2020-09-13 {h:02}:{m:02}:{sec:02};{};{};{};0;0\n", f.values[0], f.values[1], f.values[2]));
    }
    std::fs::write(path, s).unwrap();
}

pub fn channels() -> Vec<Channel> {
    CHANNELS.iter().map(|(n, u)| Channel::new(*n, *u)).collect()
}

pub fn model() -> (Model, Vec<Frame>) {
    let training = frames(400, usize::MAX);
    let mut cfg = TrainConfig::new(DetectorConfig::Pca(PcaConfig::default()));
    cfg.calibration.margin = 2.0;
    (train(&channels(), &training, &cfg).unwrap(), training)
}

pub fn signer(seed: u8) -> Signer25519 {
    Signer25519::from_secret([seed; 32])
}

pub fn spec(release: u64, target: &str) -> PackageSpec {
    let now = now_ms();
    PackageSpec {
        name: "p101".into(),
        version: format!("1.{release}.0"),
        release,
        target: target.into(),
        created_ms: now - 60_000,
        expires_ms: now + 86_400_000,
        pipeline_run: None,
        metrics: BTreeMap::new(),
    }
}

pub fn package(release: u64) -> Vec<u8> {
    let (model, training) = model();
    build(&model, &training, &spec(release, "gw-test"), &signer(1)).unwrap()
}

/// A data directory, trusted key and configuration for one agent.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub device: String,
    pub config: PathBuf,
    pub metrics_port: u16,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Site {
    /// `source_rows` of readings replayed at `speed` (0 = as fast as possible).
    pub fn new(broker: &str, source_rows: usize, speed: f64, extra: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let device = format!("test-{}-{}", std::process::id(), free_port());
        std::fs::write(dir.path().join("ops.public.json"), signer(1).public_file().to_json()).unwrap();
        write_csv(&dir.path().join("readings.csv"), &frames(source_rows, source_rows / 2));
        let metrics_port = free_port();
        let d = dir.path().display();
        let config = dir.path().join("edge.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 1
[device]
id = "{device}"
target = "gw-test"
data_dir = "{d}/data"
[hub]
broker = "{broker}"
ack_timeout_s = 3
[models]
trusted_keys = ["{d}/ops.public.json"]
[outbox]
sync_interval_ms = 100
[uplink]
aggregate_interval_s = 10
sketch_interval_s = 30
raw_every = 5
raw_batch = 10
alert_context = 5
[source]
kind = "csv"
path = "{d}/readings.csv"
speed = {speed}
[metrics]
listen = "127.0.0.1:{metrics_port}"
{extra}"#
            ),
        )
        .unwrap();
        Site { dir, device, config, metrics_port }
    }

    pub fn install(&self, package: &[u8], extra: &[&str]) -> std::process::Output {
        let p = self.dir.path().join(format!("pkg-{}.tar.gz", free_port()));
        std::fs::write(&p, package).unwrap();
        Command::new(env!("CARGO_BIN_EXE_impeller-edge"))
            .arg("install")
            .arg("--config")
            .arg(&self.config)
            .arg(&p)
            .args(extra)
            .output()
            .unwrap()
    }

    pub fn start(&self) -> Agent {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_impeller-edge"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent { child, port: self.metrics_port }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

pub struct Agent {
    pub child: Child,
    port: u16,
}

impl Agent {
    /// A metric's value, if the endpoint answers.
    pub fn metric(&self, name: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        text.lines().find_map(|l| l.strip_prefix(&format!("impeller_edge_{name} ")).and_then(|v| v.trim().parse().ok()))
    }

    pub fn wait_metric(&self, name: &str, pred: impl Fn(f64) -> bool, timeout: Duration) -> Option<f64> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(v) = self.metric(name)
                && pred(v)
            {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.metric(name)
    }

    pub fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }

    pub fn stop(mut self) {
        #[cfg(unix)]
        {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    pub prev: u64,
    pub kind: String,
    pub body: String,
}

/// The receiving side: stores each (device, seq) once; acknowledges the largest N such that
/// every message up to N is stored, following the `prev` chain.
pub struct Receiver {
    pub stored: Arc<Mutex<BTreeMap<u64, Stored>>>,
    pub acked: Arc<AtomicU64>,
    pub duplicates: Arc<AtomicU64>,
    /// Duplicates whose content differed from the first copy: a reused sequence number.
    pub conflicts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    pub fn start(broker: &str, device: &str) -> Receiver {
        let (host, port) = impeller_edge::config::broker_address(broker).unwrap();
        let stored: Arc<Mutex<BTreeMap<u64, Stored>>> = Arc::default();
        let acked = Arc::new(AtomicU64::new(0));
        let duplicates = Arc::new(AtomicU64::new(0));
        let conflicts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, a, d, c, st) = (stored.clone(), acked.clone(), duplicates.clone(), conflicts.clone(), stop.clone());
        let device = device.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut opts = rumqttc::MqttOptions::new(format!("hub-{device}"), host, port);
                opts.set_max_packet_size(4 << 20, 4 << 20);
                let (client, mut ev) = rumqttc::AsyncClient::new(opts, 1000);
                let ack_topic = impeller_core::wire::topic(&device, "ack");
                let mut ready = Some(ready_tx);
                while !st.load(Ordering::Relaxed) {
                    let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(100), ev.poll()).await else {
                        continue;
                    };
                    match event {
                        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => {
                            client
                                .subscribe(format!("impeller/v1/devices/{device}/+"), rumqttc::QoS::AtLeastOnce)
                                .await
                                .unwrap();
                        }
                        rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) if p.topic != ack_topic => {
                            let all = impeller_core::wire::decode_envelopes(&p.payload)
                                .expect("the agent sent a malformed message");
                            let mut map = s.lock().unwrap();
                            for env in all {
                                let env = env.expect("the agent sent a malformed envelope");
                                let body = env.body.get().to_string();
                                match map.get(&env.seq) {
                                    Some(first) => {
                                        d.fetch_add(1, Ordering::Relaxed);
                                        if first.body != body || first.kind != env.kind {
                                            c.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                    None => {
                                        map.insert(env.seq, Stored { prev: env.prev, kind: env.kind, body });
                                    }
                                }
                            }
                            let mut n = a.load(Ordering::Relaxed);
                            while let Some((&seq, m)) = map.range(n + 1..).next() {
                                if m.prev > n {
                                    break;
                                }
                                n = seq;
                            }
                            a.store(n, Ordering::Relaxed);
                            drop(map);
                            let body = format!(r#"{{"v":1,"acked":{n}}}"#);
                            let _ = client.try_publish(ack_topic.clone(), rumqttc::QoS::AtLeastOnce, false, body);
                        }
                        _ => {}
                    }
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("the test receiver could not subscribe");
        Receiver { stored, acked, duplicates, conflicts, stop, thread: Some(thread) }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
