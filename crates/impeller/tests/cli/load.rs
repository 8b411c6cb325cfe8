//! `impeller bench load` on a small fleet, with the hub killed (SIGKILL) halfway and started
//! again: the test reads the store itself afterwards and finds every device's messages stored
//! once each, without a gap, also those sent after the restart. And over TLS, where the hub's
//! broker takes nothing else.

use std::process::Command;

#[test]
fn a_hub_killed_under_load_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("hub.db").display());
    // 50 devices, each publishing every 0.1 s for 6 s: 60 messages each; the kill at 3 s.
    let out = Command::new(env!("CARGO_BIN_EXE_impeller"))
        .args(["bench", "load", "--devices", "50", "--rate", "500", "--secs", "6", "--restart-after", "3"])
        .args(["--database", &db])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("killed the hub (SIGKILL)"), "the hub was not killed:\n{stdout}");

    let rows = stored(&db);
    assert_eq!(rows.len(), 50, "every device stored something");
    for (device, count, first, last) in rows {
        assert_eq!((first, count), (1, last), "{device}: seqs 1..={last} each once");
        assert!(last >= 55, "{device}: only {last} of about 60 messages");
    }
}

#[test]
fn a_fleet_over_tls_is_stored_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("hub.db").display());
    // 20 devices, each publishing every 0.1 s for 3 s: 30 messages each.
    let out = Command::new(env!("CARGO_BIN_EXE_impeller"))
        .args(["bench", "load", "--devices", "20", "--rate", "200", "--secs", "3", "--tls", "--database", &db])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows = stored(&db);
    assert_eq!(rows.len(), 20, "every device stored something");
    for (device, count, first, last) in rows {
        assert_eq!((first, count), (1, last), "{device}: seqs 1..={last} each once");
        assert!(last >= 27, "{device}: only {last} of about 30 messages");
    }
}

/// Per device: how many messages the store holds, and its first and last seq.
fn stored(db: &str) -> Vec<(String, i64, i64, i64)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(db).await.unwrap();
        sqlx::query_as("SELECT device, COUNT(*), MIN(seq), MAX(seq) FROM messages GROUP BY device")
            .fetch_all(&pool)
            .await
            .unwrap()
    })
}
