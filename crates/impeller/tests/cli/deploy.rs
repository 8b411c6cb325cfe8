//! Deploying through the command line, as an operator would: a token made on the hub's
//! database, then `package upload` and `deploy …` against a running `impeller hub` over HTTP.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{KillOnDrop, impeller, skab_csv, stderr, stdout};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn an_operator_uploads_deploys_inspects_and_stops_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let data = d("hub");
    std::fs::write(d("pump.csv"), skab_csv(500, 500)).unwrap();
    assert!(impeller(&["keys", "generate", "--name", "ops", "--out", dir.path().to_str().unwrap()]).status.success());
    assert!(impeller(&["train", "--data", &d("pump.csv"), "--rows", "400", "--out", &d("m.json")]).status.success());
    let out = impeller(&[
        "package",
        "build",
        "--model",
        &d("m.json"),
        "--data",
        &d("pump.csv"),
        "--rows",
        "400",
        "--key",
        &d("ops.secret.json"),
        "--name",
        "p101",
        "--model-version",
        "1.0.0",
        "--release",
        "1",
        "--target",
        "gw",
        "--out",
        &d("p.tar.gz"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = impeller(&["token", "create", "alice", "--role", "operator", "--data-dir", &data]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    let out = impeller(&["token", "create", "bob", "--role", "read", "--data-dir", &data]);
    let reader = stdout(&out).trim().to_string();
    let out = impeller(&["token", "create", "root", "--role", "admin", "--data-dir", &data]);
    let admin = stdout(&out).trim().to_string();

    let http = free_port();
    let hub_url = format!("http://127.0.0.1:{http}");
    let hub = Command::new(env!("CARGO_BIN_EXE_impeller"))
        .args(["hub", "--data-dir", &data, "--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{http}"), "--trusted-key", &d("ops.public.json")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _hub = KillOnDrop(hub);
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < until, "the hub's API did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let api = |args: &[&str], token: &str| {
        Command::new(env!("CARGO_BIN_EXE_impeller"))
            .args(args)
            .env("IMPELLER_HUB", &hub_url)
            .env("IMPELLER_TOKEN", token)
            .output()
            .unwrap()
    };

    let out = api(&["device", "add", "pump-1", "--tags", "site=north"], &token);
    assert_eq!(out.status.code(), Some(1), "provisioning needs an admin: {}", stderr(&out));
    let out = api(&["device", "add", "pump-1", "--tags", "site=north"], &admin);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = api(&["package", "upload", &d("p.tar.gz")], &token);
    assert!(out.status.success(), "{}", stderr(&out));
    let sha = stdout(&out).trim().to_string();
    assert_eq!(sha.len(), 64);
    // By file (uploaded again: the same content, the same hash) and by hash.
    let out =
        api(&["deploy", "create", "north", "--package", &d("p.tar.gz"), "--target", "tags.site = 'north'"], &token);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&sha));
    let out = api(&["deploy", "create", "all", "--package", &sha, "--target", "*", "--priority", "-1"], &token);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = api(&["deploy", "list"], &reader);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    assert!(listed.contains("north\tactive\tpriority 0") && listed.contains("all\tactive\tpriority -1"), "{listed}");
    // The reconciler assigns pump-1 to `north` (higher priority) within a moment.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let out = api(&["deploy", "status", "north", "--json"], &reader);
        assert!(out.status.success(), "{}", stderr(&out));
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["devices"][0]["device"] == "pump-1" {
            assert_eq!(status["devices"][0]["state"], "pending", "no agent runs, so nothing was reported");
            break;
        }
        assert!(Instant::now() < until, "pump-1 never assigned: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Refusals come back as clear errors with the right exit code.
    let out = api(&["deploy", "create", "x", "--package", &sha, "--target", "tags.site = north"], &token);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("column 13"), "{}", stderr(&out));
    let out = api(&["deploy", "stop", "north"], &reader);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("forbidden"), "{}", stderr(&out));
    let out = api(&["deploy", "list"], "");
    assert_eq!(out.status.code(), Some(3), "no token: {}", stderr(&out));

    let out = api(&["deploy", "stop", "north"], &token);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = api(&["deploy", "list"], &reader);
    assert!(stdout(&out).contains("north\tstopped"), "{}", stdout(&out));

    // A staged rollout: its first wave takes pump-1 (the only device), which never reports,
    // so the rollout waits; then an operator aborts it.
    let staged = ["deploy", "create", "staged", "--package", &sha, "--target", "*", "--priority", "5"];
    let out = api(&[&staged[..], &["--waves", "10,100", "--soak", "1x"]].concat(), &token);
    assert_eq!(out.status.code(), Some(2), "a bad duration is a usage error: {}", stderr(&out));
    let out = api(&[&staged[..], &["--waves", "50,20"]].concat(), &token);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("rollout.waves[1] = 20"), "{}", stderr(&out));
    let out = api(&[&staged[..], &["--waves", "10,100", "--soak", "2m", "--max-failed", "0.1"]].concat(), &token);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("waves of 10 %, 100 %, 120 s each"), "{}", stdout(&out));
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let out = api(&["deploy", "status", "staged"], &reader);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        if text.contains("wave 1 (10 %): 1 devices") {
            break text;
        }
        assert!(Instant::now() < until, "the first wave never took pump-1: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.contains("rollout rolling_out at wave 1: wave 1 soaks"), "{status}");
    assert!(status.contains("pump-1\tpending"), "{status}");
    let out = api(&["deploy", "abort", "staged", "--reason", "wrong package"], &token);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = api(&["deploy", "status", "staged"], &reader);
    assert!(stdout(&out).contains("rollout aborted at wave 1: wrong package"), "{}", stdout(&out));
    let out = api(&["deploy", "list"], &reader);
    assert!(stdout(&out).contains("staged\taborted"), "{}", stdout(&out));
    let out = api(&["deploy", "abort", "staged"], &token);
    assert_eq!(out.status.code(), Some(3), "aborting twice is a conflict: {}", stderr(&out));
}
