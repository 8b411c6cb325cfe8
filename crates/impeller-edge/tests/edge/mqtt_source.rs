//! The MQTT source against a real broker (IMPELLER_TEST_MQTT): readings published one per
//! message and as arrays reach the model, each counted once; a malformed message or one over
//! the cap is refused and counted, and what follows it still arrives.

use std::time::Duration;

use impeller_core::wire::MAX_READINGS;

use crate::support::*;

fn reading(ts_ms: i64, i: usize) -> serde_json::Value {
    serde_json::json!({"ts_ms": ts_ms, "values": {
        "Current": 2.0 + (i % 7) as f64 * 0.01, "Pressure": 1.0, "Volume Flow RateRMS": 32.0,
    }})
}

#[test]
fn readings_arrive_one_per_message_and_in_arrays() {
    let Some(broker) = mqtt("readings_arrive_one_per_message_and_in_arrays") else { return };
    let topic = format!("test/{}/{}/readings", std::process::id(), free_port());
    // No hub: nothing listens on the uplink broker port; everything stays in the outbox.
    let site = Site::new(&format!("mqtt://127.0.0.1:{}", free_port()), 1, 0.0, "");
    let config = std::fs::read_to_string(&site.config).unwrap();
    let (head, tail) = config.split_once("[source]").unwrap();
    let metrics = &tail[tail.find("[metrics]").unwrap()..];
    let source = format!("[source]\nkind = \"mqtt\"\nbroker = \"{broker}\"\ntopic = \"{topic}\"\n");
    std::fs::write(&site.config, format!("{head}{source}{metrics}")).unwrap();
    assert!(site.install(&package(3), &[]).status.success());
    let agent = site.start();

    let (host, port) = broker.trim_start_matches("mqtt://").rsplit_once(':').unwrap();
    let mut opts = rumqttc::MqttOptions::new(format!("gateway-{}", free_port()), host, port.parse::<u16>().unwrap());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = rumqttc::Client::new(opts, 100);
    std::thread::spawn(move || for _ in connection.iter() {});
    let publish = |payload: String| client.publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload).unwrap();

    // Until the agent has subscribed, what is published is lost: probe until one arrives.
    let t0 = now_ms() - 100_000;
    let mut probes = 0;
    while agent.metric("readings_total").unwrap_or(0.0) < 1.0 {
        assert!(probes < 100, "the agent never received a reading; log:\n{}", site.log());
        publish(reading(t0 + probes, probes as usize).to_string());
        probes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let base = agent.metric("readings_total").unwrap();

    let mut ts = t0 + 1000;
    let mut next = || {
        ts += 10;
        ts
    };
    for i in 0..10 {
        publish(reading(next(), i).to_string());
    }
    let batch: Vec<_> = (0..40).map(|i| reading(next(), i)).collect();
    publish(serde_json::Value::Array(batch).to_string());
    publish("{\"ts_ms\": 1, \"values\": {\"Current\": \"high\"}}".into());
    let over: Vec<_> = (0..MAX_READINGS / 3 + 1).map(|i| reading(next(), i)).collect();
    publish(serde_json::Value::Array(over).to_string());
    let batch: Vec<_> = (0..25).map(|i| reading(next(), i)).collect();
    publish(serde_json::Value::Array(batch).to_string());

    let want = base + 75.0;
    let got = agent.wait_metric("readings_total", |v| v >= want, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(agent.metric("readings_total"), Some(want), "got {got:?}; log:\n{}", site.log());
    assert_eq!(agent.metric("readings_invalid_total"), Some(2.0), "log:\n{}", site.log());
    let frames = agent.metric("frames_total").unwrap();
    assert!(frames >= want - 1.0, "{frames} frames of {want} readings; log:\n{}", site.log());
    assert!(site.log().contains("more than the 1024 accepted"), "log:\n{}", site.log());
    agent.kill();
}
