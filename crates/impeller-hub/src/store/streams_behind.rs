//! Ingestion's streams on SQLite, kept in memory between commits and written behind them.
//!
//! Each commit used to read and rewrite the stream row of every device in its batch: under a
//! large fleet hundreds of rows spread over the whole table, in every commit (docs/BENCHMARKS.md,
//! "Stream rows written behind the commits"). The store now keeps the streams it has read or
//! made, and writes the rows of the devices that sent at most every [`WRITE_EVERY`] with
//! `streams_written.through_rowid`, the last message the rows account for. Whoever reads the
//! rows (this process after a crash, another process, the API) applies the messages after it,
//! so the rows and the messages together always say what is stored, and a (device, seq) is
//! still stored once across a kill.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use sqlx::SqliteConnection;

use super::telemetry::{Stream, fixed_chunks};
use super::{StoreError, i64_of};

/// How long a device's stream row may lag its messages while commits keep coming.
pub const WRITE_EVERY: Duration = Duration::from_secs(2);

/// A device's stream and its last contact (the hub's clock, ms).
pub(super) type Known = (Stream, i64);

/// What the SQLite store knows of the streams beyond their rows.
#[derive(Debug, Default)]
pub struct StreamsBehind {
    known: HashMap<String, Known>,
    /// The messages' largest rowid after this process's last transaction here; `None` until one.
    /// Another writer's messages change it, and then what is known is read again.
    last_rowid: Option<i64>,
    /// Devices whose row is behind what is known.
    unwritten: HashSet<String>,
    /// When the rows were last written; never, and a first commit writes them.
    written_at: Option<Instant>,
}

/// The streams of the devices with messages after `streams_written.through_rowid`: their rows
/// with those messages applied. Read in one transaction with the rows it is applied to.
pub(super) async fn replayed(conn: &mut SqliteConnection) -> Result<HashMap<String, Known>, StoreError> {
    let (through,): (i64,) = sqlx::query_as("SELECT through_rowid FROM streams_written").fetch_one(&mut *conn).await?;
    let after: Vec<(String, i64, i64, i64, i64)> =
        sqlx::query_as("SELECT device, seq, prev, ts_ms, received_ms FROM messages WHERE rowid > $1 ORDER BY rowid")
            .bind(through)
            .fetch_all(&mut *conn)
            .await?;
    let mut devices: Vec<&str> = after.iter().map(|m| m.0.as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    let mut out = read_stream_rows!(&mut *conn, &devices);
    for (device, seq, prev, ts_ms, received_ms) in &after {
        let (stream, last_seen) = out.entry(device.clone()).or_default();
        stream.take(*seq as u64, *prev as u64, *ts_ms);
        // As ingestion does: the prefix follows the stored messages' links as far as they go.
        stream.settle(u64::MAX);
        *last_seen = (*last_seen).max(*received_ms);
    }
    Ok(out)
}

/// The messages' largest rowid, 0 without any: what [`StreamsBehind::committed`] is told.
pub(super) async fn last_rowid(conn: &mut SqliteConnection) -> Result<i64, StoreError> {
    let (last,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(rowid), 0) FROM messages").fetch_one(conn).await?;
    Ok(last)
}

impl StreamsBehind {
    /// Makes what is known current in `conn`'s transaction (read again from the rows and the
    /// messages after them when another writer has added messages since this process's last
    /// transaction here, or before the first), and knows `devices` too where they have a row.
    pub(super) async fn catch_up(&mut self, conn: &mut SqliteConnection, devices: &[&str]) -> Result<(), StoreError> {
        let last = last_rowid(conn).await?;
        if self.last_rowid != Some(last) {
            // What this process had not written is among the messages after the rows, or
            // another writer has written it.
            self.known = replayed(conn).await?;
            self.unwritten = self.known.keys().cloned().collect();
            self.last_rowid = Some(last);
        }
        let unknown: Vec<&str> = devices.iter().copied().filter(|d| !self.known.contains_key(*d)).collect();
        let read = read_stream_rows!(&mut *conn, &unknown);
        self.known.extend(read);
        Ok(())
    }

    /// `device`'s stream, if it has one.
    pub(super) fn get(&self, device: &str) -> Option<&Stream> {
        self.known.get(device).map(|(s, _)| s)
    }

    /// Whether a commit now writes the rows.
    pub(super) fn write_due(&self) -> bool {
        self.written_at.is_none_or(|t| t.elapsed() >= WRITE_EVERY)
    }

    /// Writes, in `conn`'s transaction, the rows of the devices not written yet and of `next`
    /// (last heard from at `now`), and the last message they account for: all of them, as the
    /// transaction's own messages are inserted before this.
    pub(super) async fn write(
        &self,
        conn: &mut SqliteConnection,
        next: &BTreeMap<&str, Stream>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut rows: Vec<(&str, &Stream, i64)> = next.iter().map(|(d, s)| (*d, s, now)).collect();
        for device in &self.unwritten {
            if let Some((stream, seen)) = self.known.get(device)
                && !next.contains_key(device.as_str())
            {
                rows.push((device, stream, *seen));
            }
        }
        write_stream_rows!(&mut *conn, &rows);
        sqlx::query("UPDATE streams_written SET through_rowid = (SELECT COALESCE(MAX(rowid), 0) FROM messages)")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// After a commit that made `next` (last heard from at `now`), leaving `last_rowid` the
    /// messages' largest, and wrote the rows or not.
    pub(super) fn committed(&mut self, next: BTreeMap<&str, Stream>, now: i64, last_rowid: i64, written: bool) {
        for (device, stream) in next {
            if !written {
                self.unwritten.insert(device.to_string());
            }
            self.known.insert(device.to_string(), (stream, now));
        }
        if written {
            self.unwritten.clear();
            self.written_at = Some(Instant::now());
        }
        self.last_rowid = Some(last_rowid);
    }

    /// After a transaction that failed (it may still have committed): read everything again.
    pub(super) fn forget(&mut self) {
        self.last_rowid = None;
    }
}

impl super::Store {
    /// On SQLite, writes the stream rows that commits have left behind (this process's, or
    /// another's it finds), for readers of the rows themselves (the drift monitor's query).
    /// Nothing on PostgreSQL, whose commits write them.
    pub async fn write_stream_rows(&self) -> Result<(), StoreError> {
        self.write_stream_rows_when(false).await
    }

    /// [`Store::write_stream_rows`], with `due_only` once no commit has written them for
    /// [`WRITE_EVERY`]: after the last commit of a busy spell, or a restart.
    pub(super) async fn write_stream_rows_when(&self, due_only: bool) -> Result<(), StoreError> {
        let super::Store::Sqlite { ingest, streams, .. } = self else { return Ok(()) };
        let mut behind = streams.lock().await;
        if due_only && !behind.write_due() {
            return Ok(());
        }
        let done: Result<_, StoreError> = async {
            let mut tx = ingest.begin_with("BEGIN IMMEDIATE").await?;
            behind.catch_up(&mut tx, &[]).await?;
            if behind.unwritten.is_empty() {
                return Ok(None);
            }
            behind.write(&mut tx, &BTreeMap::new(), super::now_ms()).await?;
            let last_rowid = last_rowid(&mut tx).await?;
            tx.commit().await?;
            Ok(Some(last_rowid))
        }
        .await;
        match done {
            Ok(Some(last_rowid)) => behind.committed(BTreeMap::new(), 0, last_rowid, true),
            Ok(None) => {}
            Err(error) => {
                behind.forget();
                return Err(error);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Incoming, Store, TelemetryQueries, TelemetryRetention, TelemetryStore};
    use super::*;

    fn message(device: &str, seq: u64) -> Incoming {
        Incoming {
            device: device.into(),
            seq,
            prev: seq - 1,
            ts_ms: seq as i64 * 1_000,
            kind: "telemetry".into(),
            body: "{}".into(),
            update: None,
        }
    }

    fn batch(list: &[(&str, u64)]) -> Vec<Incoming> {
        list.iter().map(|(d, seq)| message(d, *seq)).collect()
    }

    fn acked(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
        list.iter().map(|(d, n)| (d.to_string(), *n)).collect()
    }

    async fn row_acked(store: &Store, device: &str) -> Option<i64> {
        let Store::Sqlite { pool, .. } = store else { unreachable!() };
        sqlx::query_scalar("SELECT acked FROM device_streams WHERE device = $1")
            .bind(device)
            .fetch_optional(pool)
            .await
            .unwrap()
    }

    /// A hub killed between two writes of the stream rows: the next one, on the same database,
    /// applies the messages the rows do not account for, and a redelivery of them is still a
    /// duplicate.
    #[tokio::test]
    async fn streams_survive_a_kill_between_writes_of_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("hub.db").display());
        let store = Store::open(&url).await.unwrap();
        store.commit(&batch(&[("a", 1), ("a", 2), ("a", 3)]), &acked(&[("a", 3)])).await.unwrap();
        let c = store.commit(&batch(&[("a", 4), ("a", 5), ("b", 1)]), &acked(&[("a", 5), ("b", 1)])).await.unwrap();
        assert_eq!((c.stored, c.duplicates), (3, 0));
        // The first commit wrote the rows, the second (within WRITE_EVERY) did not.
        assert_eq!((row_acked(&store, "a").await, row_acked(&store, "b").await), (Some(3), None));
        drop(store);

        let store = Store::open(&url).await.unwrap();
        let seen: BTreeMap<String, i64> =
            store.device_streams().await.unwrap().into_iter().map(|(d, seen, _)| (d, seen)).collect();
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["a", "b"], "b is known from its message alone");
        let states = store.stream_states(&["a", "b"]).await.unwrap();
        assert_eq!((states["a"].acked, states["b"].acked), (5, 1));
        let c = store
            .commit(&batch(&[("a", 4), ("a", 5), ("b", 1), ("a", 6)]), &acked(&[("a", 6), ("b", 1)]))
            .await
            .unwrap();
        assert_eq!((c.stored, c.duplicates), (1, 3), "only a's 6 is new");
        let seqs = |m: Vec<super::super::StoredMessage>| m.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.messages("a").await.unwrap()), [1, 2, 3, 4, 5, 6]);
        assert_eq!(seqs(store.messages("b").await.unwrap()), [1]);
        // Written now: the rows account for everything.
        store.write_stream_rows().await.unwrap();
        assert_eq!((row_acked(&store, "a").await, row_acked(&store, "b").await), (Some(6), Some(1)));
    }

    /// Two stores on one database (a tool beside the hub): each sees the other's messages
    /// before it decides what is new, and neither's writes of the rows lose the other's.
    #[tokio::test]
    async fn two_writers_on_one_database_store_each_message_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("hub.db").display());
        let (one, two) = (Store::open(&url).await.unwrap(), Store::open(&url).await.unwrap());
        assert_eq!(one.commit(&batch(&[("a", 1)]), &acked(&[("a", 1)])).await.unwrap().stored, 1);
        assert_eq!(two.commit(&batch(&[("a", 1), ("a", 2)]), &acked(&[("a", 2)])).await.unwrap().stored, 1);
        // `one` wrote its rows with its first commit; this one it does not write.
        assert_eq!(one.commit(&batch(&[("a", 2), ("a", 3)]), &acked(&[("a", 3)])).await.unwrap().stored, 1);
        // `two` writes its rows now: what `one` left unwritten is written with them.
        two.write_stream_rows().await.unwrap();
        assert_eq!(row_acked(&two, "a").await, Some(3));
        assert_eq!(one.commit(&batch(&[("a", 3), ("a", 4)]), &acked(&[("a", 4)])).await.unwrap().stored, 1);
        let seqs: Vec<u64> = one.messages("a").await.unwrap().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }

    /// Retention taking the newest messages makes SQLite give their rowids again: the messages
    /// that get them are still applied to the rows after a kill.
    #[tokio::test]
    async fn rowids_given_again_after_retention_are_still_applied() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("hub.db").display());
        let store = Store::open(&url).await.unwrap();
        store.commit(&batch(&[("a", 1), ("a", 2)]), &acked(&[("a", 2)])).await.unwrap();
        let tomorrow = super::super::now_ms() + 86_400_000;
        assert_eq!(store.forget(&["a"], "telemetry", tomorrow, 10).await.unwrap(), 2);
        store.commit(&batch(&[("b", 1)]), &acked(&[("b", 1)])).await.unwrap();
        drop(store);

        let store = Store::open(&url).await.unwrap();
        let c = store.commit(&batch(&[("b", 1), ("a", 2)]), &acked(&[("a", 2), ("b", 1)])).await.unwrap();
        assert_eq!((c.stored, c.duplicates), (0, 2));
    }
}
