//! A day offline, then the link returns.
//!
//!     cargo bench -p impeller-edge --bench offline
//!
//! The agent replays 24 simulated hours of 8 channels at 10 Hz (864,000 frames, with a fault
//! every two hours) while its hub is unreachable (nothing listens on the broker port), raw
//! samples forwarded in batches of 10 rows so the backlog is large. Then a broker (mosquitto)
//! starts on that port with a receiving hub that stores each (device, seq) once and
//! acknowledges cumulatively, and the backlog drains.
//!
//! Two runs: with a byte budget larger than the day (nothing may be lost; every sequence number
//! arrives) and with a budget a quarter of that (the priority policy decides: no alert may be
//! lost, raw samples go first). Prints the drain rate in messages per second.
//!
//! Environment: IMPELLER_BENCH_HOURS (default 24), MOSQUITTO (default: `mosquitto` on PATH or
//! /usr/sbin/mosquitto).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

#[allow(dead_code)]
#[path = "../tests/edge/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use impeller_core::detector::{DetectorConfig, PcaConfig};
use impeller_core::package::build;
use impeller_core::{Channel, Frame, TrainConfig, train};
use support::{Agent, Receiver, Site, free_port, signer, spec};

const CHANNELS: [(&str, &str); 8] = [
    ("Accelerometer1RMS", "g"),
    ("Accelerometer2RMS", "g"),
    ("Current", "A"),
    ("Pressure", "bar"),
    ("Temperature", "degC"),
    ("Thermocouple", "degC"),
    ("Voltage", "V"),
    ("Volume Flow RateRMS", "L/min"),
];
const HZ: usize = 10;

/// Pump-like readings at 10 Hz; from minute 100 of every two hours, 5 minutes of cavitation
/// (pressure and flow fall, vibration rises).
fn frame(i: usize, noise: &mut impl FnMut() -> f64) -> Frame {
    let t = i as f64 / HZ as f64;
    let flow = 32.0 + 2.0 * (t / 300.0).sin() + 0.2 * noise();
    let fault = (t % 7200.0) >= 6000.0 && (t % 7200.0) < 6300.0;
    let f = if fault { 1.0 } else { 0.0 };
    let values = vec![
        0.21 + 0.002 * noise() + 0.05 * f,
        0.26 + 0.002 * noise() + 0.05 * f,
        1.3 + 0.02 * flow + 0.01 * noise(),
        0.05 * flow + 0.01 * noise() - 0.4 * f,
        70.0 + 0.5 * (t / 3600.0).sin() + 0.05 * noise(),
        27.0 + 0.3 * (t / 3600.0).sin() + 0.05 * noise(),
        230.0 + 0.5 * noise(),
        flow - 6.0 * f,
    ];
    Frame { ts_ms: 1_600_000_000_000 + (i * 1000 / HZ) as i64, values }
}

fn noise() -> impl FnMut() -> f64 {
    let mut state = 11u64;
    move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

fn write_day(path: &Path, rows: usize) {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let names: Vec<&str> = CHANNELS.iter().map(|c| c.0).collect();
    writeln!(w, "datetime;{};anomaly;changepoint", names.join(";")).unwrap();
    let mut n = noise();
    for i in 0..rows {
        let f = frame(i, &mut n);
        let ms = f.ts_ms % 86_400_000;
        let day = 13 + f.ts_ms / 86_400_000 - 1_600_000_000_000 / 86_400_000;
        let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        write!(w, "2020-09-{day:02} {h:02}:{m:02}:{s:02}.{frac:03}").unwrap();
        for v in &f.values {
            write!(w, ";{v:.5}").unwrap();
        }
        writeln!(w, ";0;0").unwrap();
    }
}

fn package() -> Vec<u8> {
    let channels: Vec<Channel> = CHANNELS.iter().map(|(n, u)| Channel::new(*n, *u)).collect();
    let mut n = noise();
    let training: Vec<Frame> = (0..4000).map(|i| frame(i, &mut n)).collect();
    let mut cfg = TrainConfig::new(DetectorConfig::Pca(PcaConfig::default()));
    cfg.calibration.margin = 3.0;
    let model = train(&channels, &training, &cfg).unwrap();
    build(&model, &training, &spec(1, "gw-test"), &signer(1)).unwrap()
}

/// A broker on `port` for the second half of the run.
struct Mosquitto(std::process::Child, #[allow(dead_code)] tempfile::TempDir);

impl Mosquitto {
    fn start(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        // Unlimited in-flight and a deep queue: the broker should not be what limits the drain.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\n\
                 max_queued_messages 1000000\npersistence false\n"
            ),
        )
        .unwrap();
        let bin = std::env::var("MOSQUITTO").unwrap_or_else(|_| {
            if Command::new("mosquitto").arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok() {
                "mosquitto".into()
            } else {
                "/usr/sbin/mosquitto".into()
            }
        });
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        let child = child.expect("cannot start mosquitto: install it or set MOSQUITTO");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "mosquitto did not open port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto(child, dir)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Outcome {
    pending: u64,
    received: usize,
    drain_s: f64,
    evicted: BTreeMap<String, u64>,
    received_by_kind: BTreeMap<String, u64>,
    journal_alerts: usize,
}

fn metric(agent: &Agent, name: &str) -> f64 {
    agent.metric(name).unwrap_or(f64::NAN)
}

fn run(csv: &Path, rows: usize, quota: u64) -> Outcome {
    let port = free_port();
    let broker = format!("mqtt://127.0.0.1:{port}");
    let site = Site::new(&broker, 10, 0.0, "");
    // Replace the test site's small source and uplink with the day and a larger budget.
    let config = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace(&format!("{}", site.dir.path().join("readings.csv").display()), &csv.display().to_string())
        .replace("aggregate_interval_s = 10", "aggregate_interval_s = 60")
        .replace("sketch_interval_s = 30", "sketch_interval_s = 600")
        .replace("raw_every = 5", "raw_every = 1")
        .replace("[outbox]\n", &format!("[outbox]\nquota_bytes = {quota}\nsegment_bytes = 4194304\n"))
        .replace("ack_timeout_s = 3", "ack_timeout_s = 10\nmax_unacked = 20000");
    std::fs::write(&site.config, config).unwrap();
    assert!(site.install(&package(), &[]).status.success(), "{}", site.log());

    let agent = site.start();
    let started = Instant::now();
    let replayed = agent.wait_metric("frames_total", |v| v >= rows as f64, Duration::from_secs(1800));
    assert_eq!(replayed, Some(rows as f64), "log:\n{}", site.log());
    std::thread::sleep(Duration::from_secs(2)); // the last appends reach the disk
    let pending = metric(&agent, "outbox_pending_records") as u64;
    eprintln!(
        "  replayed {rows} frames offline in {:.1} s; outbox {:.1} MiB, {pending} records pending",
        started.elapsed().as_secs_f64(),
        metric(&agent, "outbox_bytes") / 1048576.0
    );

    let _mosquitto = Mosquitto::start(port);
    let receiver = Receiver::start(&broker, &site.device);
    let mut first = None;
    let until = Instant::now() + Duration::from_secs(600);
    let mut last_len = 0;
    let mut quiet_since = Instant::now();
    loop {
        let len = receiver.stored.lock().unwrap().len();
        if len > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if len as u64 >= pending {
            break;
        }
        // `pending` is what the outbox still holds after evictions: exactly what must arrive.
        if len != last_len {
            last_len = len;
            quiet_since = Instant::now();
        }
        assert!(
            Instant::now() < until && quiet_since.elapsed() < Duration::from_secs(60),
            "drain stalled at {len} of {pending}; log tail:\n{}",
            site.log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let drain_s = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let evicted = ["alert", "event", "sketch", "aggregate", "raw"]
        .iter()
        .map(|k| {
            let evicted = metric(&agent, &format!("outbox_evicted_total{{class=\"{k}\"}}"));
            let refused = metric(&agent, &format!("outbox_refused_total{{class=\"{k}\"}}"));
            (k.to_string(), (evicted + refused) as u64)
        })
        .collect();
    agent.kill();
    let stored = receiver.stored.lock().unwrap();
    let mut received_by_kind = BTreeMap::new();
    for m in stored.values() {
        *received_by_kind.entry(m.kind.clone()).or_insert(0) += 1;
    }
    let journal_alerts =
        impeller_edge::journal::Journal::new(&site.dir.path().join("data")).recent(usize::MAX).unwrap().len();
    Outcome { pending, received: stored.len(), drain_s, evicted, received_by_kind, journal_alerts }
}

fn main() {
    let hours: usize = std::env::var("IMPELLER_BENCH_HOURS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let rows = hours * 3600 * HZ;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("day.csv");
    write_day(&csv, rows);
    println!("offline for {hours} simulated hours, 8 channels x {HZ} Hz = {rows} frames\n");

    for (label, quota) in [("budget larger than the day", 4u64 << 30), ("budget 16 MiB", 16 << 20)] {
        eprintln!("{label}:");
        let o = run(&csv, rows, quota);
        let lost_alerts = o.journal_alerts as i64 - *o.received_by_kind.get("alerts").unwrap_or(&0) as i64;
        println!("{label}:");
        println!("  pending after the day: {} messages; received {}", o.pending, o.received);
        println!("  received by kind: {:?}", o.received_by_kind);
        println!("  evicted or refused by class: {:?}", o.evicted);
        println!("  alerts in the local journal: {}, not received: {lost_alerts}", o.journal_alerts);
        println!("  drain: {:.2} s, {:.0} messages/s\n", o.drain_s, o.received as f64 / o.drain_s.max(1e-9));
        assert_eq!(lost_alerts, 0, "every alert reaches the hub");
    }
}
