//! Ingestion: what the agents publish is checked, stored once per (device, seq) in batches, and
//! acknowledged only after the batch is committed. The acknowledgement is cumulative: the largest
//! N such that every message of the device up to N is stored, following each message's `prev`
//! (the agent names the message before it, so gaps it made on purpose, by evicting low-priority
//! records over its quota, do not hold the acknowledgement back).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use impeller_core::deploy::UpdateReport;
use impeller_core::wire;

use crate::bus::{Bus, Received, Send};
use crate::store::{Incoming, Store};

/// Counters of the ingest loop.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    /// Messages refused: malformed, or the envelope's device differs from the topic's.
    pub refused: AtomicU64,
    pub batches: AtomicU64,
}

/// One device's stream: the acknowledged prefix and the (seq → prev) stored beyond it.
#[derive(Debug, Clone, Default)]
struct Stream {
    acked: u64,
    beyond: BTreeMap<u64, u64>,
}

impl Stream {
    fn add(&mut self, seq: u64, prev: u64) {
        if seq > self.acked {
            self.beyond.insert(seq, prev);
        }
        while let Some((&seq, &prev)) = self.beyond.first_key_value() {
            if prev > self.acked {
                break;
            }
            self.acked = seq;
            self.beyond.pop_first();
        }
    }
}

/// Checks one publish: topic and envelope must agree. `None` for topics that are not uplink.
fn check(r: &Received) -> Option<Result<Incoming, String>> {
    let (device, kind) = wire::parse_topic(&r.topic)?;
    if !wire::UPLINK_KINDS.contains(&kind) {
        return None; // acknowledgements and desired state, published by the hub itself
    }
    Some(match wire::decode_envelope(&r.payload) {
        Err(e) => Err(format!("{}: {e}", r.topic)),
        Ok(env) if env.device != device => {
            Err(format!("{}: envelope names device `{}`, not the topic's", r.topic, env.device))
        }
        Ok(env) if env.kind != kind => {
            Err(format!("{}: envelope kind `{}` differs from the topic's", r.topic, env.kind))
        }
        Ok(env) if env.prev >= env.seq => Err(format!("{}: prev {} is not below seq {}", r.topic, env.prev, env.seq)),
        // Databases store them as signed 64-bit integers.
        Ok(env) if env.seq > i64::MAX as u64 => Err(format!("{}: seq {} is out of range", r.topic, env.seq)),
        Ok(env) => Ok(Incoming {
            update: update_report(&env),
            device: env.device,
            seq: env.seq,
            prev: env.prev,
            ts_ms: env.ts_ms,
            kind: env.kind,
            body: env.body.get().to_string(),
        }),
    })
}

/// The report inside an `update` event. A malformed one is stored as a message all the same
/// (and logged): the device's stream must not stall on it.
fn update_report(env: &wire::Envelope) -> Option<UpdateReport> {
    if env.kind != "events" {
        return None;
    }
    let event: wire::EventBody = serde_json::from_str(env.body.get()).ok()?;
    if event.event != "update" {
        return None;
    }
    match serde_json::from_value(event.detail) {
        Ok(u) => Some(u),
        Err(error) => {
            tracing::warn!(device = %env.device, seq = env.seq, %error, "malformed update report");
            None
        }
    }
}

/// Runs until the bus closes. Batches whatever has arrived (up to `max_batch`) into one
/// transaction; on a database error nothing is acknowledged and the agents send again. Wakes
/// `deployments` when a batch held update reports, so rollouts move on without waiting.
pub async fn run(
    mut bus: Bus,
    store: Store,
    stats: Arc<IngestStats>,
    max_batch: usize,
    deployments: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let mut streams: HashMap<String, Stream> = HashMap::new();
    let mut received = Vec::with_capacity(max_batch);
    loop {
        let Some(first) = bus.incoming.recv().await else { return Ok(()) };
        received.push(first);
        while received.len() < max_batch {
            match bus.incoming.try_recv() {
                Ok(r) => received.push(r),
                Err(_) => break,
            }
        }
        let mut batch = Vec::with_capacity(received.len());
        for r in received.drain(..) {
            match check(&r) {
                None => {}
                Some(Ok(m)) => batch.push(m),
                Some(Err(error)) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "refused a message");
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        // The streams as they will be once this batch is committed.
        let next = match next_streams(&streams, &store, &batch).await {
            Ok(next) => next,
            Err(error) => {
                tracing::error!(%error, messages = batch.len(), "cannot read stream state; not acknowledged");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        let acked: BTreeMap<String, u64> = next.iter().map(|(d, s)| (d.clone(), s.acked)).collect();
        match store.commit(&batch, &acked).await {
            Ok(c) => {
                stats.stored.fetch_add(c.stored, Ordering::Relaxed);
                stats.duplicates.fetch_add(c.duplicates, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                if batch.iter().any(|m| m.update.is_some()) {
                    deployments.notify_one();
                }
                for (device, n) in &acked {
                    let ack = Send { topic: wire::topic(device, "ack"), payload: wire::encode_ack(*n), retain: false };
                    if bus.outgoing.send(ack).await.is_err() {
                        return Ok(());
                    }
                }
                streams.extend(next);
            }
            Err(error) => {
                tracing::error!(%error, messages = batch.len(), "cannot store a batch; not acknowledged");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// The streams of the batch's devices with the batch added (loaded from the store the first
/// time a device is seen by this process).
async fn next_streams(
    streams: &HashMap<String, Stream>,
    store: &Store,
    batch: &[Incoming],
) -> Result<BTreeMap<String, Stream>, crate::store::StoreError> {
    let mut next: BTreeMap<String, Stream> = BTreeMap::new();
    for m in batch {
        if !next.contains_key(&m.device) {
            let s = match streams.get(&m.device) {
                Some(s) => s.clone(),
                None => {
                    let (acked, beyond) = store.stream_state(&m.device).await?;
                    Stream { acked, beyond }
                }
            };
            next.insert(m.device.clone(), s);
        }
        if let Some(s) = next.get_mut(&m.device) {
            s.add(m.seq, m.prev);
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acknowledgement_follows_prev_across_gaps_and_out_of_order() {
        let mut s = Stream::default();
        s.add(2, 1);
        assert_eq!(s.acked, 0, "1 is missing");
        s.add(1, 0);
        assert_eq!(s.acked, 2);
        s.add(5, 2); // 3 and 4 were evicted by the agent: 5 names 2 as the one before it
        assert_eq!(s.acked, 5);
        s.add(7, 6);
        s.add(7, 6);
        assert_eq!(s.acked, 5);
        s.add(3, 2); // a late duplicate below the prefix changes nothing
        assert_eq!((s.acked, s.beyond.len()), (5, 1));
        s.add(6, 5);
        assert_eq!((s.acked, s.beyond.len()), (7, 0));
    }

    #[test]
    fn topic_and_envelope_must_agree() {
        let env = |device: &str, kind: &str, seq: u64, prev: u64| {
            wire::encode_envelope(device, seq, prev, 1, kind, b"{}").unwrap()
        };
        let r = |topic: &str, payload: Vec<u8>| Received { topic: topic.into(), payload };
        let ok = check(&r(&wire::topic("a", "events"), env("a", "events", 2, 1))).unwrap().unwrap();
        assert_eq!((ok.device.as_str(), ok.seq, ok.prev), ("a", 2, 1));
        let spoof = check(&r(&wire::topic("a", "events"), env("b", "events", 2, 1))).unwrap().unwrap_err();
        assert!(spoof.contains("names device `b`"), "{spoof}");
        assert!(check(&r(&wire::topic("a", "alerts"), env("a", "events", 2, 1))).unwrap().is_err());
        assert!(check(&r(&wire::topic("a", "events"), env("a", "events", 2, 2))).unwrap().is_err());
        assert!(check(&r(&wire::topic("a", "events"), b"{not json".to_vec())).unwrap().is_err());
        assert!(check(&r(&wire::topic("a", "ack"), wire::encode_ack(3))).is_none());
    }
}
