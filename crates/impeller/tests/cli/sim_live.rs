//! The simulated fleet served live, read as agents read real pumps: Modbus TCP controllers in
//! each manufacturer's register map (polled by the agent's own Modbus source) and MQTT readings
//! (taken by the agent's own MQTT source from the machine's Mosquitto), checked against the
//! simulator's ground truth.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use impeller::simfeed::{ModbusFleet, fleet_devices, register_map};
use impeller_core::registers::DataType;
use impeller_edge::metrics::Metrics;
use impeller_edge::source::{ModbusSource, Reading, poll_modbus, subscribe_mqtt};
use impeller_sim::{Fleet, FleetSpec, Manufacturer, Sample};

use crate::util::free_port;

fn fleet(pumps: usize, start_ms: i64) -> Fleet {
    Fleet::plan(&FleetSpec {
        pumps,
        seed: 3,
        start_ms,
        duration_s: 3600,
        faulty_share: 0.0,
        faults_between_s: (0, 0),
        site_drifts: Vec::new(),
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// How far a value read back may be from the truth: half a step of the register's scale, or
/// f32's precision.
fn tolerance(m: &Manufacturer, column: &str, truth: f64) -> f64 {
    let (map, _) = register_map(m).unwrap();
    let r = map.registers.iter().find(|r| r.channel == column).unwrap();
    match r.data_type {
        DataType::F32 => truth.abs() * 1e-6 + 1e-9,
        _ => r.scale.abs() / 2.0 + 1e-9,
    }
}

/// Whether a reading holds the sample's values, each within what its register can carry.
fn matches(m: &Manufacturer, reading: &Reading, sample: &Sample) -> Result<(), String> {
    for (column, truth) in m.columns().iter().zip(&sample.values) {
        let Some((_, got)) = reading.values.iter().find(|(n, _)| n.as_ref() == *column) else {
            return Err(format!("{column} missing"));
        };
        if (got - truth).abs() > tolerance(m, column, *truth) {
            return Err(format!("{column}: read {got}, truth {truth}"));
        }
    }
    Ok(())
}

async fn first_reading(address: String, m: &Manufacturer) -> Reading {
    let (map, _) = register_map(m).unwrap();
    let src = ModbusSource { address, unit: 1, map, poll: Duration::from_millis(100), timeout: Duration::from_secs(1) };
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let poller = tokio::spawn(poll_modbus(src, tx, Arc::new(Metrics::default())));
    let reading = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
    poller.abort();
    reading
}

#[test]
fn each_pump_is_a_modbus_controller_holding_its_reading_in_its_register_map() {
    let fleet = fleet(3, 1_700_000_000_000);
    runtime().block_on(async {
        let controllers =
            ModbusFleet::serve(&fleet_devices(&fleet).unwrap(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
        for (i, p) in fleet.pumps.iter().enumerate() {
            let m = Manufacturer::by_name(&p.manufacturer).unwrap();
            let sample = fleet.simulate(p, fleet.start_ms, fleet.end_ms).nth(100).unwrap();
            controllers.set(i, &sample);
            let reading = first_reading(controllers.addresses[i].to_string(), &m).await;
            matches(&m, &reading, &sample).unwrap_or_else(|e| panic!("{} ({}): {e}", p.id, m.name));
        }
        // What is not in the map is refused as a real controller would.
        use tokio_modbus::client::Reader;
        let mut ctx = tokio_modbus::client::tcp::connect(controllers.addresses[0]).await.unwrap();
        assert_eq!(
            ctx.read_input_registers(500, 1).await.unwrap(),
            Err(tokio_modbus::ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(ctx.read_input_registers(0, 0).await.unwrap(), Err(tokio_modbus::ExceptionCode::IllegalDataValue));
    });
}

/// `impeller sim` as a child process; killed when dropped.
struct Sim(Child);

impl Sim {
    fn start(args: &[&str]) -> Sim {
        let child = Command::new(env!("CARGO_BIN_EXE_impeller"))
            .arg("sim")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Sim(child)
    }
}

impl Sim {
    /// Waits (a minute at most) for the simulator to reach its end, which must be a success.
    async fn finish(mut self) {
        let status = tokio::task::spawn_blocking(move || {
            let status = self.0.wait();
            (self, status)
        });
        let (_sim, status) = tokio::time::timeout(Duration::from_secs(60), status).await.unwrap().unwrap();
        assert!(status.unwrap().success(), "impeller sim failed");
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let until = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < until, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Written whole: wait until it parses.
    std::thread::sleep(Duration::from_millis(200));
}

/// What `impeller sim` wrote for each pump's agent.
#[derive(serde::Deserialize)]
struct AgentSource {
    source: impeller_edge::config::Source,
    adapter: impeller_core::adapter::AdapterConfig,
}

fn truth(out: &Path) -> Fleet {
    serde_json::from_slice(&std::fs::read(out.join("fleet.json")).unwrap()).unwrap()
}

#[test]
fn sim_serves_pumps_live_over_modbus_where_each_agents_source_settings_say() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live");
    // The pumps listen on consecutive ports from a free one, which a test running beside this
    // one may take first (seen once in CI): the sim then exits, and another port is tried.
    let mut attempts = 0;
    let _sim = loop {
        let first = format!("127.0.0.1:{}", free_port());
        let mut sim = Sim::start(&["--pumps", "3", "--hours", "1", "--modbus", &first, "--out", out.to_str().unwrap()]);
        let until = Instant::now() + Duration::from_secs(20);
        while !out.join("sources/pump-003.toml").exists()
            && sim.0.try_wait().unwrap().is_none()
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        attempts += 1;
        if sim.0.try_wait().unwrap().is_none() || attempts == 3 {
            break sim;
        }
    };
    wait_for(&out.join("sources/pump-003.toml"));
    let fleet = truth(&out);
    runtime().block_on(async {
        for p in &fleet.pumps {
            let m = Manufacturer::by_name(&p.manufacturer).unwrap();
            let text = std::fs::read_to_string(out.join(format!("sources/{}.toml", p.id))).unwrap();
            let settings: AgentSource = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", p.id));
            assert_eq!(settings.adapter, m.adapter());
            let impeller_edge::config::Source::Modbus { address, register_map: map_file, .. } = settings.source else {
                panic!("{}: not a Modbus source:\n{text}", p.id)
            };
            assert_eq!(
                std::fs::read_to_string(map_file).unwrap(),
                impeller::simfeed::REGISTER_MAPS.iter().find(|r| r.0 == m.name).unwrap().2
            );
            // Running at real time, the controller holds a sample from the last few seconds.
            let reading = first_reading(address, &m).await;
            let now = impeller_hub::store::now_ms();
            let recent: Vec<Sample> =
                fleet.simulate(p, fleet.start_ms, now + 1000).filter(|s| s.ts_ms >= now - 5000).collect();
            assert!(!recent.is_empty());
            let verdicts: Vec<Result<(), String>> = recent.iter().map(|s| matches(&m, &reading, s)).collect();
            assert!(
                verdicts.iter().any(Result::is_ok),
                "{} ({}): no recent sample matches: {verdicts:?}",
                p.id,
                m.name
            );
        }
    });
}

#[test]
fn sim_publishes_each_pumps_readings_over_mqtt_as_the_agents_mqtt_source_reads_them() {
    let Ok(broker) = std::env::var("IMPELLER_TEST_MQTT") else {
        eprintln!(
            "sim_publishes_each_pumps_readings_over_mqtt: SKIPPED, needs an MQTT broker: set IMPELLER_TEST_MQTT=mqtt://host:port"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live");
    let prefix = format!("impeller-test/sim-{}-{}", std::process::id(), free_port());
    let topic = format!("{prefix}/{{pump}}");
    let pumps = ["pump-001", "pump-002", "pump-003"];
    runtime().block_on(async {
        // The agents' sources subscribe first: the broker keeps nothing for a subscriber that
        // is not there yet.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Reading)>(100_000);
        let mut sources = Vec::new();
        for (i, id) in pumps.iter().enumerate() {
            let (one_tx, mut one_rx) = tokio::sync::mpsc::channel(10_000);
            sources.push(tokio::spawn(subscribe_mqtt(
                format!("{id}-{}", free_port()),
                broker.clone(),
                format!("{prefix}/{id}"),
                one_tx,
                Arc::new(Metrics::default()),
            )));
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(r) = one_rx.recv().await {
                    let _ = tx.send((i, r)).await;
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Half an hour of readings at 600×: three seconds.
        Sim::start(&[
            "--pumps",
            "3",
            "--hours",
            "0.5",
            "--speed",
            "600",
            "--mqtt",
            &broker,
            "--topic",
            &topic,
            "--out",
            out.to_str().unwrap(),
        ])
        .finish()
        .await;
        let fleet = truth(&out);
        let mut got: Vec<Vec<Reading>> = vec![Vec::new(); 3];
        while let Ok(Some((i, r))) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            got[i].push(r);
        }
        for s in &sources {
            s.abort();
        }
        for (i, p) in fleet.pumps.iter().enumerate() {
            let m = Manufacturer::by_name(&p.manufacturer).unwrap();
            let samples: Vec<Sample> = fleet.simulate(p, fleet.start_ms, fleet.end_ms).collect();
            let times: Vec<i64> = got[i].iter().map(|r| r.ts_ms).collect();
            assert_eq!(
                times,
                samples.iter().map(|s| s.ts_ms).collect::<Vec<_>>(),
                "{}: every reading once, in order",
                p.id
            );
            for (r, s) in got[i].iter().zip(&samples) {
                for (column, truth) in m.columns().iter().zip(&s.values) {
                    let v = r.values.iter().find(|(n, _)| n.as_ref() == *column).map(|(_, v)| *v);
                    assert!(
                        v == Some(*truth) || (truth.is_nan() && v.is_some_and(f64::is_nan)),
                        "{} {column} at {}: {v:?} != {truth}",
                        p.id,
                        s.ts_ms
                    );
                }
            }
        }
    });
}

/// What `impeller sim --skab` wrote as ground truth.
fn skab_truth(out: &Path) -> impeller::skabfeed::Truth {
    serde_json::from_slice(&std::fs::read(out.join("skab.json")).unwrap()).unwrap()
}

/// One real SKAB file, read here on its own: (timestamps, rows, labels).
fn skab_file(path: &Path) -> impeller_core::table::Table {
    let bytes = std::fs::read(path).unwrap();
    impeller_core::table::parse_csv(&bytes, "skab", &impeller_core::table::CsvFormat::SKAB).unwrap()
}

#[test]
fn sim_replays_a_skab_file_over_mqtt_row_for_row_with_its_labels_as_ground_truth() {
    let Ok(broker) = std::env::var("IMPELLER_TEST_MQTT") else {
        eprintln!(
            "sim_replays_a_skab_file_over_mqtt: SKIPPED, needs an MQTT broker: set IMPELLER_TEST_MQTT=mqtt://host:port"
        );
        return;
    };
    let Some(skab) = crate::util::skab_dir("sim_replays_a_skab_file_over_mqtt") else { return };
    let file = skab.join("valve1/1.csv");
    let table = skab_file(&file);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live");
    let prefix = format!("impeller-test/skab-{}-{}", std::process::id(), free_port());
    runtime().block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(100_000);
        let source = tokio::spawn(subscribe_mqtt(
            format!("skab-{}", free_port()),
            broker.clone(),
            format!("{prefix}/valve1-1"),
            tx,
            Arc::new(Metrics::default()),
        ));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // About 19 minutes of the testbed at 1000×: about a second.
        Sim::start(&[
            "--skab",
            file.to_str().unwrap(),
            "--speed",
            "1000",
            "--mqtt",
            &broker,
            "--topic",
            &format!("{prefix}/{{pump}}"),
            "--out",
            out.to_str().unwrap(),
        ])
        .finish()
        .await;
        let mut got: Vec<Reading> = Vec::new();
        while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            got.push(r);
        }
        source.abort();
        let truth = skab_truth(&out);
        assert_eq!(truth.devices.len(), 1);
        let d = &truth.devices[0];
        assert_eq!((d.id.as_str(), d.file.as_str(), d.rows), ("valve1-1", "1.csv", table.len()));
        // Every row once, in order, stamped from the replay's start with the file's spacing.
        let t0 = table.timestamps[0];
        let want: Vec<i64> = table.timestamps.iter().map(|t| d.first_ms + t - t0).collect();
        assert_eq!(got.iter().map(|r| r.ts_ms).collect::<Vec<_>>(), want);
        for (r, row) in got.iter().zip(&table.rows) {
            for (c, v) in table.channels.iter().zip(row) {
                let read = r.values.iter().find(|(n, _)| n.as_ref() == c.name).map(|(_, v)| *v);
                assert_eq!(read, Some(*v), "{} at {}", c.name, r.ts_ms);
            }
        }
        // The labels, as intervals in the replay's time: a row is in one exactly when labelled.
        let labels = table.labels.as_ref().unwrap();
        assert!(labels.iter().any(|&l| l));
        for (at, labelled) in want.iter().zip(labels) {
            let inside = d.anomalies.iter().any(|a| (a.from_ms..=a.to_ms).contains(at));
            assert_eq!(inside, *labelled, "row at +{} ms", at - d.first_ms);
        }
    });
}

#[test]
fn sim_serves_a_skab_file_as_a_modbus_controller_in_the_testbed_map() {
    let Some(skab) = crate::util::skab_dir("sim_serves_a_skab_file_as_a_modbus_controller") else { return };
    let file = skab.join("valve2/0.csv");
    let table = skab_file(&file);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live");
    let sources = out.join("sources/valve2-0.toml");
    let mut attempts = 0;
    let _sim = loop {
        let first = format!("127.0.0.1:{}", free_port());
        let mut sim =
            Sim::start(&["--skab", file.to_str().unwrap(), "--modbus", &first, "--out", out.to_str().unwrap()]);
        let until = Instant::now() + Duration::from_secs(20);
        while !sources.exists() && sim.0.try_wait().unwrap().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        attempts += 1;
        if sim.0.try_wait().unwrap().is_none() || attempts == 3 {
            break sim;
        }
    };
    wait_for(&sources);
    let text = std::fs::read_to_string(&sources).unwrap();
    let settings: AgentSource = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // The agent's adapter takes the testbed's columns as they are.
    assert!(settings.adapter.channels.iter().all(|c| c.source == c.channel));
    let impeller_edge::config::Source::Modbus { address, register_map: map_file, .. } = settings.source else {
        panic!("not a Modbus source:\n{text}")
    };
    let map =
        impeller_core::registers::RegisterMap::parse(&std::fs::read_to_string(&map_file).unwrap(), "map").unwrap();
    let truth = skab_truth(&out);
    let reading = runtime().block_on(async {
        let src =
            ModbusSource { address, unit: 1, map, poll: Duration::from_millis(100), timeout: Duration::from_secs(1) };
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let poller = tokio::spawn(poll_modbus(src, tx, Arc::new(Metrics::default())));
        let reading = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        poller.abort();
        reading
    });
    // At real time the controller holds one of the first rows, as f32.
    let elapsed = reading.ts_ms - truth.devices[0].first_ms;
    let t0 = table.timestamps[0];
    let recent: Vec<&Vec<f64>> = table
        .timestamps
        .iter()
        .zip(&table.rows)
        .filter(|(t, _)| (*t - t0 - elapsed).abs() <= 5000)
        .map(|(_, row)| row)
        .collect();
    assert!(!recent.is_empty(), "the reading at +{elapsed} ms is past the file");
    let matches = |row: &Vec<f64>| {
        table.channels.iter().zip(row).all(|(c, truth)| {
            let got = reading.values.iter().find(|(n, _)| n.as_ref() == c.name).map_or(f64::NAN, |(_, v)| *v);
            (got - truth).abs() <= truth.abs() * 1e-6 + 1e-9
        })
    };
    assert!(recent.iter().any(|row| matches(row)), "{:?} matches no row near +{elapsed} ms", reading.values);
}

#[test]
fn sim_skab_says_what_is_wrong_with_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let o = crate::util::impeller(&["sim", "--skab", "nowhere", "--out", out.to_str().unwrap()]);
    assert!(
        crate::util::stderr(&o).contains("--skab replays the files live: add --mqtt"),
        "{}",
        crate::util::stderr(&o)
    );
    let o = crate::util::impeller(&["sim", "--skab", "x", "--pumps", "3", "--modbus", "127.0.0.1:0", "--out", "y"]);
    assert!(!o.status.success());
    assert!(crate::util::stderr(&o).contains("--pumps"), "{}", crate::util::stderr(&o));
    let o = crate::util::impeller(&[
        "sim",
        "--skab",
        "/nonexistent/skab",
        "--modbus",
        "127.0.0.1:0",
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = crate::util::stderr(&o);
    assert!(!o.status.success() && e.contains("/nonexistent/skab"), "{e}");
}
