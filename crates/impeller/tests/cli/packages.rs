//! Keys and packages through the command line.

use crate::util::{impeller, skab_csv, stderr, stdout};

#[test]
fn generate_keys_build_verify_and_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::write(d("pump.csv"), skab_csv(500, 500)).unwrap();
    for name in ["ops", "rogue"] {
        let out = impeller(&["keys", "generate", "--name", name, "--out", dir.path().to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d("ops.secret.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key must be readable by its owner only");
    }
    let again = impeller(&["keys", "generate", "--name", "ops", "--out", dir.path().to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(3), "must not overwrite a key");

    let out = impeller(&["train", "--data", &d("pump.csv"), "--rows", "400", "--out", &d("m.json")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let build = |rows: &str| {
        impeller(&[
            "package",
            "build",
            "--model",
            &d("m.json"),
            "--data",
            &d("pump.csv"),
            "--rows",
            rows,
            "--key",
            &d("ops.secret.json"),
            "--name",
            "p101",
            "--model-version",
            "1.0.0",
            "--release",
            "4",
            "--target",
            "gw",
            "--metric",
            "f1=0.9",
            "--out",
            &d("p.tar.gz"),
        ])
    };
    let wrong_data = build("399");
    assert_eq!(wrong_data.status.code(), Some(3), "{}", stderr(&wrong_data));
    assert!(stderr(&wrong_data).contains("not the model's training data"), "{}", stderr(&wrong_data));
    let out = build("400");
    assert!(out.status.success(), "{}", stderr(&out));

    let verify = |extra: &[&str]| {
        let mut args = vec!["package", "verify", "--json"];
        let p = d("p.tar.gz");
        args.push(&p);
        args.extend_from_slice(extra);
        impeller(&args)
    };
    let ops = d("ops.public.json");
    let ok = verify(&["--trust", &ops, "--target", "gw", "--installed-release", "3"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["release"], 4);

    for (extra, code) in [
        (vec!["--trust".to_string(), d("rogue.public.json")], "unknown_key"),
        (vec!["--trust".to_string(), ops.clone(), "--target".into(), "other".into()], "wrong_target"),
        (vec!["--trust".to_string(), ops.clone(), "--installed-release".into(), "4".into()], "not_newer"),
    ] {
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = verify(&args);
        assert_eq!(out.status.code(), Some(3), "{code}: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["code"], code);
    }

    let out = impeller(&["package", "inspect", &d("p.tar.gz")]);
    assert!(stdout(&out).starts_with("NOT VERIFIED"), "{}", stdout(&out));
}
