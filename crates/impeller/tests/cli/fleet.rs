//! The simulated fleet from the command line: files an agent can replay, and the fleet
//! benchmark's scoring against the ground truth.

use impeller_core::table::{CsvFormat, parse_csv};
use serde_json::Value;

use crate::util::{impeller, stderr, stdout};

#[test]
fn sim_writes_replayable_skab_files_and_the_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fleet");
    let o = impeller(&["sim", "--pumps", "6", "--hours", "1", "--faulty-share", "0.5", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("wrote 6 pumps (3 with a fault)"), "{}", stdout(&o));
    let truth: Value = serde_json::from_slice(&std::fs::read(out.join("fleet.json")).unwrap()).unwrap();
    let pumps = truth["pumps"].as_array().unwrap();
    assert_eq!(pumps.len(), 6);
    for p in pumps {
        let file = out.join(format!("{}.csv", p["id"].as_str().unwrap()));
        let table = parse_csv(&std::fs::read(&file).unwrap(), "sim", &CsvFormat::SKAB).unwrap();
        let faulty = table.labels.as_ref().unwrap().iter().any(|&l| l);
        assert_eq!(faulty, !p["faults"].as_array().unwrap().is_empty(), "{}", file.display());
        assert!(table.len() >= 1800, "an hour at 0.5 to 2 s per reading");
    }
}

#[test]
fn each_site_drift_lands_in_the_ground_truth_at_its_own_site() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fleet");
    let o = impeller(&[
        "sim",
        "--pumps",
        "9",
        "--hours",
        "1",
        "--faulty-share",
        "0",
        "--heat-wave",
        "gulf",
        "--sensor-ageing",
        "permian",
        "--operating-point",
        "north-sea",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let truth: Value = serde_json::from_slice(&std::fs::read(out.join("fleet.json")).unwrap()).unwrap();
    for p in truth["pumps"].as_array().unwrap() {
        let drifts = p["drifts"].as_array().unwrap();
        let kinds: Vec<&str> = drifts.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        let expected = match p["site"].as_str().unwrap() {
            "gulf" => "ambient_shift",
            "permian" => "sensor_ageing",
            _ => "operating_point",
        };
        assert_eq!(kinds, [expected], "{p}");
        assert_eq!(drifts[0]["onset_ms"].as_i64().unwrap() - truth["start_ms"].as_i64().unwrap(), 900_000, "{p}");
    }
}

#[test]
fn the_fleet_benchmark_catches_faults_that_show_in_a_manufacturers_sensors() {
    // Six pumps, one per fault kind, twelve hours of history per pump (four are too few to
    // learn the process's slow wander: false alarms follow). Acme pumps have no motor temperature sensor, so motor
    // overheating may go unseen there; everything else must be caught.
    let o = impeller(&[
        "bench",
        "fleet",
        "--pumps",
        "6",
        "--faulty-share",
        "1",
        "--hours",
        "4",
        "--train-hours",
        "12",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    for c in report["summary"]["classes"].as_array().unwrap() {
        if c["fault"] != "motor_overheating" {
            assert_eq!(c["detected"], c["pumps"], "{c}");
        }
    }
    let per_day = report["summary"]["false_alarms_per_pump_day"].as_f64().unwrap();
    assert!(per_day < 3.0, "false alarms per healthy pump-day: {per_day}");
}

#[test]
fn bad_fleet_flags_are_refused_with_the_flag_named() {
    for (args, says) in [
        (vec!["--faulty-share", "1.5"], "--faulty-share 1.5"),
        (vec!["--heat-wave", "atlantis"], "no such site"),
        (vec!["--sensor-ageing", "atlantis"], "--sensor-ageing atlantis: no such site"),
        (vec!["--operating-point", "gulf", "--heat-wave", "moon"], "--heat-wave moon: no such site"),
        (vec!["--faults-between", "0.8,0.2"], "--faults-between 0.8,0.2"),
        (vec!["--hours", "0"], "--hours 0"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec!["sim", "--out", dir.path().to_str().unwrap()];
        all.extend(args);
        let o = impeller(&all);
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    }
    for (args, says) in [(["--speed", "0"], "--speed 0"), (["--train-hours", "0"], "--train-hours 0")] {
        let o = impeller(&[&["demo"], &args[..]].concat());
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "the demo checks its flags before starting anything: {}", stderr(&o));
    }
}

/// The demo end to end on a small fleet: hub, agents, training, signed packages, staged
/// rollouts, alerts judged against the ground truth. The demo itself fails when a rollout does
/// not complete or no fault is caught; here we also check what it leaves in `--dir`.
#[test]
fn the_demo_rolls_out_models_and_catches_faults() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let o = impeller(&[
        "demo",
        "--pumps",
        "6",
        "--faulty-share",
        "1",
        "--hours",
        "3",
        "--speed",
        "720",
        "--soak-s",
        "1",
        "--no-drift",
        "--dir",
        data.to_str().unwrap(),
    ]);
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "{out}\n{err}");
    // Six pumps: one per manufacturer at each of two sites, so six classes and rollouts, and
    // one more for any version the hub retrained (with no heat wave, only on a fault's drift
    // before its first verdict sets the pump aside); all complete.
    let rollouts = out.lines().find(|l| l.starts_with("rollouts: ")).unwrap();
    assert!(rollouts.ends_with("complete; 6/6 devices run their model") && !rollouts.contains(','), "{out}");
    // Every pump is faulty: the technician confirms what it is shown.
    let technician = out.lines().find(|l| l.starts_with("technician: ")).unwrap();
    assert!(!technician.starts_with("technician: 0 alerts confirmed"), "{technician}");
    // An impeller losing a piece shows at once in vibration on every manufacturer's sensors.
    let imbalance = out.lines().find(|l| l.starts_with("impeller_imbalance")).unwrap();
    assert_eq!(imbalance.split_whitespace().take(3).collect::<Vec<_>>(), ["impeller_imbalance", "1", "1"], "{out}");
    assert!(out.contains(", caught"), "alerts were narrated as they came: {out}");
    // Every pump develops a fault; the hub's drift monitor flags pumps whose data moved, and
    // the ground truth has a cause for each.
    let drift = out.lines().find(|l| l.starts_with("drift: ")).unwrap();
    let numbers: Vec<usize> = drift.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    assert!(numbers[0] >= 3 && numbers[1] == 6 && numbers[2] == numbers[0], "{drift}");
    assert!(data.join("hub.db").is_file() && data.join("fleet/fleet.json").is_file());
    assert_eq!(std::fs::read_dir(data.join("agents")).unwrap().count(), 6, "one agent data folder per pump");

    let o = impeller(&["demo", "--dir", data.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "a used folder is refused: {}", stderr(&o));

    // Afterwards, an operator opens the demo's hub and asks it what happened, through the API.
    let data = data.to_str().unwrap();
    let o = impeller(&["token", "create", "ops", "--role", "read", "--data-dir", data]);
    let token = stdout(&o).trim().to_string();
    let port = |_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (http, mqtt) = (port(()), port(()));
    let hub = std::process::Command::new(env!("CARGO_BIN_EXE_impeller"))
        .args(["hub", "--data-dir", data, "--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}"), "--trusted-key", &format!("{data}/ops.public.json")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _hub = crate::util::KillOnDrop(hub);
    let url = format!("http://127.0.0.1:{http}");
    let query = |what: &str, extra: &[&str]| {
        let mut args = vec![what, "--hub", &url, "--token", &token, "--since", "30d"];
        args.extend(extra);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let o = impeller(&args);
            if o.status.success() || std::time::Instant::now() > until {
                return o;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    // Pumps 4 to 6 are at the second site, the gulf.
    let o = query("alerts", &["--site", "gulf"]);
    let alerts = stdout(&o);
    assert!(o.status.success() && !alerts.trim().is_empty(), "{alerts}{}", stderr(&o));
    for line in alerts.lines() {
        let device = line.split('\t').nth(1).unwrap();
        assert!(["pump-004", "pump-005", "pump-006"].contains(&device), "{line}");
    }
    let o = query("drift", &["--limit", "4"]);
    let drift = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(drift.lines().count(), 4, "{drift}");
    assert!(drift.lines().all(|l| l.contains(" σ")), "{drift}");
}
