//! Train, inspect and score through the command line, as a user would.

use crate::util::{impeller, skab_csv, stderr, stdout};

#[test]
fn train_then_score_flags_the_anomaly_and_not_the_normal_rows() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pump.csv");
    std::fs::write(&csv, skab_csv(600, 450)).unwrap();
    let model = dir.path().join("model.json");
    let (csv_s, model_s) = (csv.to_str().unwrap(), model.to_str().unwrap());

    let out = impeller(&[
        "train",
        "--data",
        csv_s,
        "--rows",
        "300",
        "--channels",
        "Current,Pressure,Volume Flow RateRMS",
        "--out",
        model_s,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["training"]["frames"], 300);
    assert_eq!(summary["detector"], "pca");

    let out = impeller(&["model", "inspect", model_s, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["format"], "impeller.model");
    assert_eq!(info["features"][0], "Current.mean");

    let out = impeller(&["score", "--model", model_s, "--data", csv_s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 600);
    assert_eq!(rows[0][2], "warmup");
    let alarms = |range: std::ops::Range<usize>| rows[range].iter().filter(|r| r[4] == "1").count();
    assert!(alarms(470..600) > 100, "anomaly rows with an alarm: {}", alarms(470..600));
    assert!(alarms(300..450) < 15, "normal rows with an alarm: {}", alarms(300..450));
}

#[test]
fn scoring_a_file_without_a_model_channel_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pump.csv");
    std::fs::write(&csv, skab_csv(300, 300)).unwrap();
    let model = dir.path().join("model.json");
    let out = impeller(&["train", "--data", csv.to_str().unwrap(), "--out", model.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let other = dir.path().join("other.csv");
    std::fs::write(&other, skab_csv(50, 50).replace("Voltage", "Volts")).unwrap();
    let out = impeller(&["score", "--model", model.to_str().unwrap(), "--data", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("missing column `Voltage`"), "{}", stderr(&out));
}

#[test]
fn a_corrupt_model_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.json");
    std::fs::write(&model, b"{\"format\":\"impeller.model\",\"version\":1,\"channels\":[]}").unwrap();
    let out = impeller(&["model", "inspect", model.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.contains("model.json") && err.contains("missing field"), "{err}");
}

#[test]
fn generated_configurations_are_the_defaults() {
    let out = impeller(&["train", "--generate-config"]);
    let parsed: impeller_core::TrainConfig = toml::from_str(&stdout(&out)).unwrap();
    let defaults = impeller_core::TrainConfig::new(impeller_core::detector::DetectorConfig::Pca(Default::default()));
    assert_eq!(parsed, defaults, "train.toml must show the real defaults");
    let out = impeller(&["bench", "skab", "--generate-config"]);
    assert!(impeller::skab::BenchConfig::parse(&stdout(&out), "generated").is_ok());
}

#[test]
fn help_lists_the_commands_and_exit_codes() {
    let out = impeller(&["--help"]);
    let text = stdout(&out);
    for word in ["bench", "train", "score", "model", "Exit codes", "invalid input"] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
}

/// A simulated kestrel pump's file, in its vendor's names and units (kPa, L/s), scored through
/// kestrel's adapter by a model trained on the same readings in model units (bar, m³/h): the
/// adapter's conversions are what keeps the model quiet. Another manufacturer's adapter, which
/// lacks some of the model's channels, is refused naming one.
#[test]
fn a_manufacturers_file_is_scored_through_its_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    let o = impeller(&["sim", "--pumps", "3", "--hours", "2", "--faulty-share", "0", "--out", fleet.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let truth: serde_json::Value = serde_json::from_slice(&std::fs::read(fleet.join("fleet.json")).unwrap()).unwrap();
    let pump = truth["pumps"].as_array().unwrap().iter().find(|p| p["manufacturer"] == "kestrel").unwrap();
    let vendor_csv = fleet.join(format!("{}.csv", pump["id"].as_str().unwrap()));
    let text = std::fs::read_to_string(&vendor_csv).unwrap();

    // The same readings in model channels and units, written by hand.
    let to_model = [
        ("SuctionP", "suction_pressure", 0.01, "bar"),
        ("DischargeP", "discharge_pressure", 0.01, "bar"),
        ("Flow", "flow", 3.6, "m3/h"),
        ("Current", "motor_current", 1.0, "A"),
        ("Power", "motor_power", 1.0, "kW"),
        ("Voltage", "voltage", 1.0, "V"),
        ("BearingT", "bearing_temp", 1.0, "°C"),
        ("WindingT", "motor_temp", 1.0, "°C"),
        ("VibVel", "vibration", 1.0, "mm/s"),
        ("Speed", "speed", 1.0, "rpm"),
        ("FluidT", "fluid_temp", 1.0, "°C"),
    ];
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(';').collect();
    let index: Vec<(usize, f64)> =
        to_model.iter().map(|(v, _, k, _)| (header.iter().position(|h| h == v).unwrap(), *k)).collect();
    let mut canonical = format!("datetime;{}\n", to_model.map(|(_, c, _, _)| c).join(";"));
    for line in lines {
        let cells: Vec<&str> = line.split(';').collect();
        let values: Vec<String> =
            index.iter().map(|&(i, k)| (cells[i].parse::<f64>().unwrap() * k).to_string()).collect();
        canonical.push_str(&format!("{};{}\n", cells[0], values.join(";")));
    }
    let canonical_csv = dir.path().join("canonical.csv");
    std::fs::write(&canonical_csv, canonical).unwrap();
    let model = dir.path().join("model.json");
    let o = impeller(&["train", "--data", canonical_csv.to_str().unwrap(), "--out", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A CSV names no units; a fleet's pipeline records them. Give the model its channels' units.
    let mut trained: serde_json::Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    for (channel, (_, name, _, unit)) in trained["channels"].as_array_mut().unwrap().iter_mut().zip(&to_model) {
        assert_eq!(channel["name"], *name);
        channel["unit"] = (*unit).into();
    }
    std::fs::write(&model, serde_json::to_vec(&trained).unwrap()).unwrap();

    let score = |manufacturer: &str| {
        impeller(&[
            "score",
            "--model",
            model.to_str().unwrap(),
            "--data",
            vendor_csv.to_str().unwrap(),
            "--manufacturer",
            manufacturer,
        ])
    };
    let o = score("kestrel");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let rows: Vec<Vec<&str>> = out.lines().skip(1).map(|l| l.split(',').collect()).collect();
    // Two hours of frames, one per 2 s: kestrel reads at the model's period.
    assert!((3590..=3601).contains(&rows.len()), "{} frames", rows.len());
    let scored = rows.iter().filter(|r| r[2] == "scored").count();
    let alarms = rows.iter().filter(|r| r[4] == "1").count();
    assert!(scored > 3500, "{scored} frames scored");
    assert!(alarms * 50 < scored, "{alarms} alarms in {scored} frames of a healthy pump");

    let o = score("acme");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("model channel `motor_power` has no source"), "{}", stderr(&o));
    let o = score("vulcan");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no simulated manufacturer `vulcan`"), "{}", stderr(&o));
}
