//! `impeller audit` as an auditor uses it against a running hub: the trail of what operators
//! did verifies with the hub's pinned key, through the API and as an export; an edited,
//! deleted or reordered line of the export is found, with exit code 4.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{KillOnDrop, impeller, stderr, stdout};
use impeller_hub::store::AuditStore;

#[test]
fn the_audit_trail_verifies_and_tampering_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (mqtt, http) = (free(), free());
    let config = stdout(&impeller(&["hub", "generate-config"]))
        .replace("127.0.0.1:1884", &format!("127.0.0.1:{mqtt}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{http}"))
        .replace("data_dir = \"impeller-hub-data\"", &format!("data_dir = {:?}", data.display().to_string()))
        .replace("checkpoint_secs = 60", "checkpoint_secs = 1");
    let config_path = dir.path().join("hub.toml");
    std::fs::write(&config_path, config).unwrap();
    let out = impeller(&["token", "create", "auditor", "--role", "admin", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    let hub = Command::new(env!("CARGO_BIN_EXE_impeller"))
        .args(["hub", "--config", config_path.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _hub = KillOnDrop(hub);
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < until, "the hub did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let hub_url = format!("http://127.0.0.1:{http}");
    let api = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--hub", hub_url.as_str(), "--token", token.as_str()]);
        impeller(&all)
    };
    for id in ["aud-1", "aud-2"] {
        let out = api(&["device", "add", id, "--tags", "site=gulf"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(api(&["device", "revoke", "aud-1"]).status.success());

    // The hub signs a checkpoint within a second or two of the last record.
    let key = data.join("audit.public.json");
    let key = key.to_str().unwrap();
    let export = dir.path().join("audit.jsonl");
    let until = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let out = api(&["audit", "export", "--out", export.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = std::fs::read_to_string(&export).unwrap();
        if text.lines().last().is_some_and(|l| l.contains("\"audit.checkpoint\"")) {
            break text.lines().map(str::to_string).collect::<Vec<_>>();
        }
        assert!(Instant::now() < until, "no checkpoint was signed: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    // The hub may also have signed checkpoints between the operators' actions.
    let records: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let actions: Vec<&str> =
        records.iter().map(|r| r["action"].as_str().unwrap()).filter(|a| *a != "audit.checkpoint").collect();
    assert_eq!(actions, ["token.created", "hub.keys", "device.added", "device.added", "device.revoked"]);
    let keys = &records[1]["details"];
    assert_eq!(keys["added"], serde_json::json!([format!("audit:{}", keys["keys"]["audit"].as_str().unwrap())]));
    assert!(records[0]["actor"].as_str().unwrap().starts_with("local:"), "made on the database: {}", records[0]);
    let line_of = |action: &str, subject: &str| {
        records.iter().position(|r| r["action"] == action && r["subject"] == subject).unwrap()
    };
    let added = &records[line_of("device.added", "aud-2")];
    assert!(added["actor"].as_str().unwrap().starts_with("token:"), "made through the API: {added}");
    let checkpoints = records.iter().filter(|r| r["action"] == "audit.checkpoint").count();

    let out = api(&["audit", "verify", "--key", key]);
    assert!(out.status.success(), "{}", stderr(&out));
    let n = lines.len();
    assert!(stdout(&out).contains(&format!("audit trail intact: {n} records, 1 to {n}")), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("{checkpoints} checkpoints verified")), "{}", stdout(&out));
    let unpinned = api(&["audit", "verify"]);
    assert!(unpinned.status.success() && stdout(&unpinned).contains("not checked"), "{}", stdout(&unpinned));
    let from_file = impeller(&["audit", "verify", "--file", export.to_str().unwrap(), "--key", key]);
    assert!(from_file.status.success(), "{}", stderr(&from_file));

    // A key the hub never used ties nothing to it.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    assert!(impeller(&["keys", "generate", "--name", "other", "--out", other.to_str().unwrap()]).status.success());
    let other_key = other.join("other.public.json");
    let wrong =
        impeller(&["audit", "verify", "--file", export.to_str().unwrap(), "--key", other_key.to_str().unwrap()]);
    assert_eq!(wrong.status.code(), Some(4), "{}", stdout(&wrong));

    let tampered = |lines: &[String], what: &str| {
        let path = dir.path().join(format!("{what}.jsonl"));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let out = impeller(&["audit", "verify", "--file", path.to_str().unwrap(), "--key", key]);
        assert_eq!(out.status.code(), Some(4), "{what}: {}", stdout(&out));
        stderr(&out)
    };
    let at = line_of("device.added", "aud-2");
    let mut edited = lines.clone();
    edited[at] = edited[at].replace("aud-2", "aud-9");
    assert!(tampered(&edited, "edited").contains(&format!("record {}: its content does not match its hash", at + 1)));
    let at = line_of("device.revoked", "aud-1");
    let mut deleted = lines.clone();
    deleted.remove(at);
    assert!(tampered(&deleted, "deleted").contains(&format!("record {}: expected record {}", at + 2, at + 1)));
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    assert!(tampered(&swapped, "swapped").contains("record 3: expected record 2"));
    let mut head_cut = lines.clone();
    head_cut.remove(0);
    assert!(tampered(&head_cut, "head-cut").contains("expected record 1"));
    let mut garbled = lines.clone();
    garbled[1].truncate(40);
    assert!(tampered(&garbled, "garbled").contains("garbled.jsonl:2:"));

    let bad = impeller(&["audit", "trace", "not-a-hash", "--file", export.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(3), "{}", stderr(&bad));

    // Records' times are not strictly monotonic (each is stamped before the chain's lock): an
    // export since a time takes every record after the first one since then, in chain order.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store =
        rt.block_on(impeller_hub::store::Store::open(&format!("sqlite:{}", data.join("hub.db").display()))).unwrap();
    let soon = impeller_hub::store::now_ms() + 3_600_000;
    for (i, t) in [soon, soon - 40_000_000, soon + 1000].into_iter().enumerate() {
        let event = impeller_core::audit::AuditEvent::new(t, "test", "test.clock", &format!("r{i}"));
        rt.block_on(store.audit(event)).unwrap();
    }
    let since = dir.path().join("since.jsonl");
    let out = api(&["audit", "export", "--since", "0s", "--out", since.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&since).unwrap();
    assert!(text.contains("\"r0\"") && text.contains("\"r1\"") && text.contains("\"r2\""), "{text}");
    let out = impeller(&["audit", "verify", "--file", since.to_str().unwrap(), "--partial"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
