//! The Modbus TCP source against a third-party pump controller: pymodbus (PyPI) serving the
//! registers of `config/modbus/acme-p200.toml` in psi, US gpm and scaled integers. The agent must
//! read them through the register map and the manufacturer adapter into the model's units, keep
//! going when a read is refused, and reconnect when the controller goes away and comes back.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use impeller_core::wire::SamplesBody;
use impeller_edge::outbox::{Outbox, OutboxConfig, record::Class};

use crate::support::*;

/// The peer needs python3 with pymodbus (crates/impeller-edge/tests/peers/requirements.txt).
fn pymodbus(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pymodbus"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("IMPELLER_REQUIRE_PEERS").is_err(),
            "{test}: IMPELLER_REQUIRE_PEERS is set but python3 cannot import pymodbus"
        );
        eprintln!(
            "{test}: SKIPPED, needs python3 with pymodbus: \
             pip install -r crates/impeller-edge/tests/peers/requirements.txt"
        );
    }
    ok
}

struct Controller(Child);

impl Controller {
    fn start(port: u16) -> Controller {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/modbus_pump.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "the pymodbus controller did not open port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Controller(child)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn reads_a_pymodbus_controller_through_the_register_map_and_adapter() {
    if !pymodbus("reads_a_pymodbus_controller_through_the_register_map_and_adapter") {
        return;
    }
    let port = free_port();
    // The vendor's map, plus one register the controller does not have: that read is refused
    // every poll while the others go on.
    let acme = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/modbus/acme-p200.toml");
    let map = std::fs::read_to_string(acme).unwrap()
        + "\n[[register]]\nchannel = \"NOT_WIRED\"\ntable = \"input\"\naddress = 50\ntype = \"u16\"\n";
    // No hub: nothing listens on the broker port; everything stays in the outbox.
    let site = Site::new(&format!("mqtt://127.0.0.1:{}", free_port()), 1, 0.0, "");
    std::fs::write(site.dir.path().join("acme.toml"), map).unwrap();
    let config = std::fs::read_to_string(&site.config).unwrap();
    let (head, tail) = config.split_once("[source]").unwrap();
    let metrics = &tail[tail.find("[metrics]").unwrap()..];
    let head = head.replace("raw_every = 5", "raw_every = 1").replace("raw_batch = 10", "raw_batch = 5");
    let source = format!(
        r#"[source]
kind = "modbus"
address = "127.0.0.1:{port}"
register_map = "{}"
poll_ms = 100
timeout_ms = 500
[adapter]
name = "acme-p200"
channels = [
  {{ source = "MOTOR_AMPS", channel = "Current", unit = "A" }},
  {{ source = "DISCH_PRESS_PSI", channel = "Pressure", unit = "psi" }},
  {{ source = "FLOW_GPM", channel = "Volume Flow RateRMS", unit = "gpm" }},
]
"#,
        site.dir.path().join("acme.toml").display()
    );
    std::fs::write(&site.config, format!("{head}{source}{metrics}")).unwrap();
    assert!(site.install(&package(3), &[]).status.success());

    let controller = Controller::start(port);
    let agent = site.start();
    let scored = agent.wait_metric("scores_total", |v| v >= 20.0, Duration::from_secs(20));
    assert!(scored.is_some(), "log:\n{}", site.log());
    assert!(agent.metric("source_errors_total").unwrap() >= 1.0, "the unwired register is refused");
    assert!(site.log().contains("the controller refused a read"), "log:\n{}", site.log());

    // The controller goes away: the agent keeps running and says so; then it comes back.
    drop(controller);
    let errors = agent.metric("source_errors_total").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(agent.metric("source_errors_total").unwrap() > errors, "log:\n{}", site.log());
    let before = agent.metric("frames_total").unwrap();
    let _controller = Controller::start(port);
    let resumed = agent.wait_metric("frames_total", |v| v >= before + 10.0, Duration::from_secs(20));
    assert!(resumed.is_some(), "no frames after the controller came back; log:\n{}", site.log());
    agent.kill();

    // The raw samples carry the controller's values in the model's units.
    let mut outbox = Outbox::open(&site.dir.path().join("data/outbox"), OutboxConfig::default()).unwrap();
    let mut frames = 0;
    loop {
        let batch = outbox.next_batch(1000, usize::MAX).unwrap();
        if batch.is_empty() {
            break;
        }
        for r in batch.iter().filter(|r| r.class == Class::Raw) {
            let body: SamplesBody = serde_json::from_slice(&r.payload).unwrap();
            assert_eq!(body.channels, ["Current", "Pressure", "Volume Flow RateRMS"]);
            for f in &body.frames {
                let v: Vec<f64> = f.values.iter().map(|v| v.unwrap()).collect();
                // The controller wobbles its values by ±1 % around these.
                for (got, want) in v.iter().zip([1.94, 1.6, 32.0]) {
                    assert!((got / want - 1.0).abs() < 0.015, "frame {v:?}: expected about {want}");
                }
                frames += 1;
            }
        }
    }
    assert!(frames >= 20, "only {frames} raw frames");
}
