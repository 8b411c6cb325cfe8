//! The agent against the real hub: embedded rumqttd broker (admitting provisioned devices only)
//! and SQLite, in this process. Needs no external service, so it always runs.

use std::time::Duration;

use impeller_edge::outbox::{Outbox, OutboxConfig};
use impeller_hub::{Hub, HubConfig};

use crate::support::*;
use impeller_hub::store::{FleetStore, TelemetryStore};

#[test]
fn the_hub_stores_every_message_once_across_agent_restarts() {
    let port = free_port();
    let site = Site::new(&format!("mqtt://127.0.0.1:{port}"), 1000, 200.0, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = HubConfig {
        database: format!("sqlite:{}", site.dir.path().join("hub.db").display()),
        mqtt_listen: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        external_broker: None,
        device_auth: true,
        packages_dir: site.dir.path().join("packages"),
        ..Default::default()
    };
    // Provisioned first, as an operator would; the agent connects with its secret.
    let store = rt.block_on(impeller_hub::store::Store::open(&cfg.database)).unwrap();
    let secret = rt.block_on(store.add_device(&site.device, &Default::default(), "gw-test", "test")).unwrap();
    let config = std::fs::read_to_string(&site.config).unwrap().replace(
        "ack_timeout_s = 3",
        &format!("ack_timeout_s = 3\nusername = \"{}\"\npassword = \"{secret}\"", site.device),
    );
    std::fs::write(&site.config, config).unwrap();
    let hub = rt.block_on(Hub::start(&cfg)).unwrap();
    assert!(site.install(&package(3), &[]).status.success());

    // Interrupted twice mid-stream, once gracefully, once by SIGKILL; then runs to the end.
    let agent = site.start();
    std::thread::sleep(Duration::from_millis(1500));
    agent.stop();
    let agent = site.start();
    std::thread::sleep(Duration::from_millis(1500));
    agent.kill();
    let agent = site.start();
    let replayed = agent.wait_metric("readings_total", |v| v >= 1000.0, Duration::from_secs(30));
    assert!(replayed.is_some(), "log:\n{}", site.log());
    let drained = agent.wait_metric("outbox_pending_records", |v| v == 0.0, Duration::from_secs(30));
    assert_eq!(drained, Some(0.0), "log:\n{}", site.log());
    agent.kill();

    // The agent may append a record between the drained reading and the kill (seen once, on a
    // busy machine): that one is still in its outbox, not lost.
    let outbox = Outbox::open(&site.dir.path().join("data/outbox"), OutboxConfig::default()).unwrap();
    let highest = outbox.next_seq() - 1;
    let stored = rt.block_on(hub.store.messages(&site.device)).unwrap();
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    let delivered = seqs.len() as u64;
    assert_eq!(seqs, (1..=delivered).collect::<Vec<_>>(), "every message once, in order from 1, none missing");
    assert!(outbox.acked() <= delivered && delivered <= highest, "acked {} of {highest}", outbox.acked());
    assert_eq!(outbox.pending_records(), highest - outbox.acked(), "the rest is still in the outbox");
    assert!(highest - delivered <= 2, "the agent had drained: {delivered} of {highest} delivered");
    assert!(stored.iter().all(|m| m.prev == m.seq - 1), "nothing was evicted, so prev is always seq - 1");
    for kind in ["alerts", "telemetry", "samples", "sketches", "events"] {
        assert!(stored.iter().any(|m| m.kind == kind), "no {kind} stored");
    }
    let stream = rt.block_on(hub.store.stream_states(&[&site.device])).unwrap().remove(&site.device).unwrap();
    assert_eq!((stream.acked, stream.beyond.len()), (delivered, 0));
}

/// Behind an external broker the hub can go away while the agent stays connected: the broker
/// drops what the agent publishes meanwhile. The restarted hub names the gap in its
/// acknowledgements and the agent sends it again at once; its acknowledgement timeout is set
/// far beyond the test's length, so only that can fill the gap.
#[test]
fn the_agent_fills_at_once_a_gap_the_restarted_hub_names() {
    let Some(broker) = mqtt("the_agent_fills_at_once_a_gap_the_restarted_hub_names") else { return };
    let site = Site::new(&broker, 6000, 200.0, "");
    let config = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace("ack_timeout_s = 3", "ack_timeout_s = 3600\nmin_ack_timeout_s = 3600");
    std::fs::write(&site.config, config).unwrap();
    let cfg = HubConfig {
        database: format!("sqlite:{}", site.dir.path().join("hub.db").display()),
        mqtt_listen: None,
        external_broker: Some(impeller_hub::bus::ExternalBroker::at(&broker)),
        packages_dir: site.dir.path().join("packages"),
        ..Default::default()
    };
    let start = || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let hub = rt.block_on(Hub::start(&cfg)).unwrap();
        (rt, hub)
    };
    assert!(site.install(&package(3), &[]).status.success());
    let (rt, hub) = start();
    let agent = site.start();
    let acked = agent.wait_metric("acked_seq", |v| v >= 20.0, Duration::from_secs(20));
    assert!(acked.is_some_and(|v| v >= 20.0), "log:\n{}", site.log());

    // The hub goes away for 3 s (its tasks and its connection to the broker end with its
    // runtime); the agent keeps publishing to the broker, which has no one to pass it to.
    drop(hub);
    rt.shutdown_timeout(Duration::from_secs(5));
    let before = agent.metric("acked_seq").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (rt, hub) = start();

    let replayed = agent.wait_metric("readings_total", |v| v >= 6000.0, Duration::from_secs(60));
    assert!(replayed.is_some_and(|v| v >= 6000.0), "log:\n{}", site.log());
    let drained = agent.wait_metric("outbox_pending_records", |v| v == 0.0, Duration::from_secs(20));
    assert_eq!(drained, Some(0.0), "the gap is still open; log:\n{}", site.log());
    agent.kill();

    let stored = rt.block_on(hub.store.messages(&site.device)).unwrap();
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    let delivered = seqs.len() as u64;
    assert!(delivered > before as u64 + 100, "published after the restart: {delivered} (acked {before} before)");
    assert_eq!(seqs, (1..=delivered).collect::<Vec<_>>(), "every message once, in order from 1, none missing");
    let stream = rt.block_on(hub.store.stream_states(&[&site.device])).unwrap().remove(&site.device).unwrap();
    assert_eq!((stream.acked, stream.beyond.len()), (delivered, 0));
}
