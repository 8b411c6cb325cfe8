//! Hub ingestion throughput: devices publish telemetry-sized envelopes over MQTT to the embedded
//! broker; the hub stores each once and acknowledges after its commit. Measured from the first
//! publish until every device has its last message acknowledged, for SQLite and, in the same run,
//! PostgreSQL.
//!
//!     cargo bench -p impeller-hub --bench ingest
//!
//! Environment: IMPELLER_BENCH_POSTGRES (default postgres://postgres@127.0.0.1:5432/test; set
//! it empty to skip), IMPELLER_BENCH_DEVICES (default 50), IMPELLER_BENCH_MESSAGES per device
//! (default 2000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use impeller_core::wire;
use impeller_hub::{Hub, HubConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One device: publishes 1..=n, returns when the hub has acknowledged n.
async fn device(port: u16, id: String, n: u64) {
    let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(100);
    let (client, mut ev) = AsyncClient::new(opts, 1000);
    client.subscribe(wire::topic(&id, "ack"), QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.unwrap() {
            break;
        }
    }
    // An aggregate-sized body: 8 channels of statistics.
    let body = format!(
        r#"{{"from_ms":0,"to_ms":60000,"channels":[{}]}}"#,
        [r#"{"n":600,"mean":31.9,"min":29.8,"max":34.1,"std":1.22}"#; 8].join(",")
    );
    let publisher = client.clone();
    let id2 = id.clone();
    tokio::spawn(async move {
        for seq in 1..=n {
            let payload = wire::encode_envelope(&id2, seq, seq - 1, seq as i64, "telemetry", body.as_bytes()).unwrap();
            publisher.publish(wire::topic(&id2, "telemetry"), QoS::AtLeastOnce, false, payload).await.unwrap();
        }
    });
    loop {
        if let Event::Incoming(Packet::Publish(p)) = ev.poll().await.unwrap()
            && wire::decode_ack(&p.payload).unwrap().acked == n
        {
            return;
        }
    }
}

async fn run(label: &str, database: String, devices: u64, messages: u64) {
    let port = free_port();
    let cfg = HubConfig {
        database,
        mqtt_listen: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        external_broker: None,
        device_auth: false,
        packages_dir: std::env::temp_dir().join(format!("impeller-bench-ingest-{}", std::process::id())),
        ..Default::default()
    };
    let hub = Hub::start(&cfg).await.unwrap();
    let run_id = format!("{}-{port}", std::process::id());
    let started = Instant::now();
    let tasks: Vec<_> =
        (0..devices).map(|d| tokio::spawn(device(port, format!("bench-{run_id}-{d}"), messages))).collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(600), t).await.expect("the hub stalled").unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let total = devices * messages;
    let stats = &hub.stats;
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{label:<10} {total} messages from {devices} devices in {secs:.2} s: {:.0} msg/s stored and acknowledged \
         ({batches} transactions, {:.0} messages each)",
        total as f64 / secs,
        total as f64 / batches.max(1) as f64
    );
}

fn main() {
    let devices = env("IMPELLER_BENCH_DEVICES", 50);
    let messages = env("IMPELLER_BENCH_MESSAGES", 2000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(run("sqlite", format!("sqlite:{}", dir.path().join("hub.db").display()), devices, messages));
    let pg = std::env::var("IMPELLER_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    if pg.is_empty() {
        println!("postgres   skipped (IMPELLER_BENCH_POSTGRES is empty)");
    } else {
        rt.block_on(run("postgres", pg, devices, messages));
    }
}
