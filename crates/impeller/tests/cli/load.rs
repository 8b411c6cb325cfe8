//! `impeller bench load` on a small fleet, with the hub killed (SIGKILL) halfway and started
//! again: the test reads the store itself afterwards and finds every device's messages stored
//! once each, without a gap, also those sent after the restart.

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

    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows: Vec<(String, i64, i64, i64)> = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
        sqlx::query_as("SELECT device, COUNT(*), MIN(seq), MAX(seq) FROM messages GROUP BY device")
            .fetch_all(&pool)
            .await
            .unwrap()
    });
    assert_eq!(rows.len(), 50, "every device stored something");
    for (device, count, first, last) in rows {
        assert_eq!((first, count), (1, last), "{device}: seqs 1..={last} each once");
        assert!(last >= 55, "{device}: only {last} of about 60 messages");
    }
}
