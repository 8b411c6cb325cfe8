//! The outbox on real files: delivery and acknowledgement, restarts, torn and corrupt segments,
//! the quota's priority policy, and a model-based property test with simulated power cuts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use impeller_edge::outbox::{Class, Outbox, OutboxConfig, Outgoing};
use proptest::prelude::*;

const SMALL: OutboxConfig = OutboxConfig { quota_bytes: 64 * 1024, segment_bytes: 4 * 1024 };

fn payload(seq_hint: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq_hint as usize * 31 + i) as u8).collect()
}

fn drain(o: &mut Outbox) -> Vec<Outgoing> {
    o.sync().unwrap();
    let mut all = Vec::new();
    loop {
        let batch = o.next_batch(50, 1 << 20).unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect();
    v.sort();
    v
}

#[test]
fn delivers_in_order_with_a_prev_chain_and_acks_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    for i in 0..200u64 {
        let class = Class::ALL[(i % 5) as usize];
        assert_eq!(o.append(class, i as i64, &payload(i, 100)).unwrap(), Some(i + 1));
    }
    let sent = drain(&mut o);
    assert_eq!(sent.len(), 200);
    for (i, r) in sent.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.prev, i as u64, "prev must name the record before");
        assert_eq!(r.payload, payload(i as u64, 100));
        assert_eq!(r.class, Class::ALL[i % 5]);
    }
    assert!(segments(dir.path()).len() > 3);
    let before = o.bytes();
    o.ack(150).unwrap();
    assert_eq!(o.pending_records(), 50);
    assert!(o.bytes() < before, "acknowledged segments are deleted");
    o.ack(200).unwrap();
    assert_eq!(o.pending_records(), 0);
    assert_eq!(segments(dir.path()).len(), 1, "only the newest segment stays");
    // A later acknowledgement never goes backwards, and one for numbers never used is clamped.
    o.ack(10).unwrap();
    o.ack(10_000).unwrap();
    assert_eq!(o.acked(), 200);
}

/// The ledger is fsynced lazily, so a power cut may take its newest entries after the segments
/// they freed were deleted: the outbox must then re-send what is still there, and never reuse a
/// number.
#[test]
fn a_ledger_that_lost_its_newest_entries_resends_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    for i in 0..200u64 {
        o.append(Class::Aggregate, i as i64, &payload(i, 100)).unwrap();
    }
    assert_eq!(drain(&mut o).len(), 200);
    o.ack(20).unwrap();
    let old_ledger = std::fs::read(dir.path().join("acked")).unwrap();
    o.ack(150).unwrap();
    let kept = segments(dir.path());
    drop(o);
    std::fs::write(dir.path().join("acked"), old_ledger).unwrap();

    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    assert_eq!(o.acked(), 20, "the lost entry for 150");
    assert_eq!(segments(dir.path()), kept, "nothing more deleted");
    o.rewind();
    let again: Vec<u64> = drain(&mut o).iter().map(|r| r.seq).collect();
    let first = again[0];
    assert!(first > 21 && first <= 151, "from the oldest segment left: {first}");
    assert_eq!(again, (first..=200).collect::<Vec<_>>(), "everything left, in order, once");
    assert_eq!(o.oldest_pending_ts().unwrap(), Some(first as i64 - 1));
    assert_eq!(o.append(Class::Event, 0, b"next").unwrap(), Some(201), "no number reused");
}

#[test]
fn rewind_sends_everything_unacknowledged_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    for i in 0..30 {
        o.append(Class::Aggregate, i, b"x").unwrap();
    }
    assert_eq!(drain(&mut o).len(), 30);
    assert!(drain(&mut o).is_empty());
    o.ack(12).unwrap();
    o.rewind();
    let again = drain(&mut o);
    assert_eq!(again.first().map(|r| (r.seq, r.prev)), Some((13, 12)));
    assert_eq!(again.len(), 18);
}

#[test]
fn a_gap_the_hub_names_is_read_again_without_moving_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    for i in 0..20 {
        o.append(Class::Aggregate, i, b"x").unwrap();
    }
    o.sync().unwrap();
    assert_eq!(o.next_batch(15, 1 << 20).unwrap().len(), 15);
    o.ack(4).unwrap();
    // The hub holds 9 on: 5 to 8 were lost on the way.
    let gap: Vec<(u64, u64)> = o.unacked_before(9, 100, 1 << 20).unwrap().iter().map(|r| (r.seq, r.prev)).collect();
    assert_eq!(gap, [(5, 4), (6, 5), (7, 6), (8, 7)]);
    assert_eq!(o.unacked_before(9, 2, 1 << 20).unwrap().len(), 2, "at most max_records at a time");
    // Delivery goes on where it was.
    let rest: Vec<u64> = drain(&mut o).iter().map(|r| r.seq).collect();
    assert_eq!(rest, (16..=20).collect::<Vec<_>>());
}

#[test]
fn records_survive_a_restart_and_numbers_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = Outbox::open(dir.path(), SMALL).unwrap();
        for i in 0..100 {
            o.append(Class::Raw, i, &payload(i as u64, 50)).unwrap();
        }
        // Dropped without sync, as a killed process would be: every write() already returned.
    }
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    assert_eq!(o.next_seq(), 101);
    let sent = drain(&mut o);
    assert_eq!(sent.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
    o.ack(100).unwrap();
    drop(o);
    // Everything acknowledged and deleted: the next number still continues.
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    assert_eq!(o.append(Class::Alert, 0, b"a").unwrap(), Some(101));
}

#[test]
fn a_torn_tail_is_cut_at_every_length_and_nothing_before_it_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        for i in 0..10 {
            o.append(Class::Aggregate, i, &payload(i as u64, 40)).unwrap();
        }
        o.sync().unwrap();
    }
    let seg = segments(dir.path()).pop().unwrap();
    let full = std::fs::read(&seg).unwrap();
    let record_len = (full.len() - 8) / 10;
    let last_start = full.len() - record_len;
    for cut in last_start + 1..full.len() {
        std::fs::write(&seg, &full[..cut]).unwrap();
        let mut o = Outbox::open(dir.path(), OutboxConfig::default()).unwrap();
        assert_eq!(o.stats().recovered_damaged_bytes, (cut - last_start) as u64, "cut at {cut}");
        let sent = drain(&mut o);
        assert_eq!(sent.len(), 9, "cut at {cut}");
        assert_eq!(o.next_seq(), 10);
        assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, last_start, "the tail is cut on disk");
        drop(o);
        std::fs::write(&seg, &full).unwrap();
    }
}

#[test]
fn a_bad_checksum_mid_segment_keeps_the_good_records_and_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = Outbox::open(dir.path(), SMALL).unwrap();
        for i in 0..200 {
            o.append(Class::Sketch, i, &payload(i as u64, 100)).unwrap();
        }
        o.sync().unwrap();
    }
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&segs[0], &bytes).unwrap();
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    assert!(o.stats().recovered_damaged_bytes > 0);
    let sent = drain(&mut o);
    let seqs: BTreeSet<u64> = sent.iter().map(|r| r.seq).collect();
    // Records after the damage in the first segment are gone; all other segments are whole.
    let per_segment = (SMALL.segment_bytes as usize - 8) / (100 + 25);
    assert!(seqs.contains(&1));
    assert!((per_segment as u64 + 1..=200).all(|s| seqs.contains(&s)));
    assert!(sent.windows(2).all(|w| w[1].prev == w[0].seq), "prev chain skips the lost records");
}

#[test]
fn a_segment_with_a_bad_header_is_moved_aside_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut o = Outbox::open(dir.path(), SMALL).unwrap();
        for i in 0..100 {
            o.append(Class::Raw, i, &payload(i as u64, 100)).unwrap();
        }
    }
    let first = segments(dir.path()).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[0] = b'X';
    std::fs::write(&first, &bytes).unwrap();
    let o = Outbox::open(dir.path(), SMALL).unwrap();
    assert_eq!(o.stats().damaged_segments, 1);
    assert!(dir.path().join("damaged").join(first.file_name().unwrap()).exists());
}

#[test]
fn the_quota_evicts_a_class_only_when_every_lower_class_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    // Interleave classes; far more than the quota holds.
    for i in 0..5_000u64 {
        let class = match i % 10 {
            0 => Class::Alert,
            1 | 2 => Class::Sketch,
            3..=5 => Class::Aggregate,
            _ => Class::Raw,
        };
        let before = o.stats().clone();
        o.append(class, i as i64, &payload(i, 60)).unwrap();
        let after = o.stats();
        assert!(o.bytes() <= SMALL.quota_bytes, "over quota after append {i}: {}", o.bytes());
        for h in Class::ALL {
            if after.evicted[h as usize] > before.evicted[h as usize] {
                assert!(h <= class, "a {} displaced a higher-class {}", class.as_str(), h.as_str());
                for lower in Class::ALL.iter().filter(|c| **c < h) {
                    let present = after.appended[*lower as usize] - after.evicted[*lower as usize];
                    assert_eq!(
                        present,
                        0,
                        "{} evicted while {} {} records remained",
                        h.as_str(),
                        present,
                        lower.as_str()
                    );
                }
            }
        }
    }
    let kept = drain(&mut o);
    // The 500 alerts fit in the quota: all kept. Raw samples were evicted before anything else.
    assert_eq!(kept.iter().filter(|r| r.class == Class::Alert).count(), 500);
    assert!(o.stats().evicted[Class::Raw as usize] > o.stats().evicted[Class::Sketch as usize]);
    // What was kept of each class is its newest records, and the prev chain spans the gaps.
    for c in Class::ALL {
        let seqs: Vec<u64> = kept.iter().filter(|r| r.class == c).map(|r| r.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    }
    assert!(kept.windows(2).all(|w| w[1].prev == w[0].seq));
}

#[test]
fn a_record_never_displaces_a_higher_class() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    // Alerts displace the oldest alerts once the quota is full of them …
    for i in 0..1_000u64 {
        assert!(o.append(Class::Alert, 0, &payload(i, 500)).unwrap().is_some());
    }
    assert!(o.stats().evicted[Class::Alert as usize] > 0);
    // … but raw samples may only use the slack and displace each other, never an alert.
    let evicted_alerts = o.stats().evicted[Class::Alert as usize];
    for i in 0..50 {
        o.append(Class::Raw, 0, &payload(i, 500)).unwrap();
    }
    assert_eq!(o.stats().evicted[Class::Alert as usize], evicted_alerts, "a raw sample displaced an alert");
    assert!(o.stats().evicted[Class::Raw as usize] + o.stats().refused[Class::Raw as usize] > 0);
    let kept = drain(&mut o);
    assert!(kept.iter().filter(|r| r.class == Class::Alert).map(|r| r.seq).max() == Some(1_000));
}

/// The time of the first record after the acknowledged one, found by handing everything
/// pending out again (the outbox's slowest and plainest way to know it).
fn first_pending_ts(o: &mut Outbox) -> Option<i64> {
    o.rewind();
    let first = drain(o).first().map(|r| r.ts_ms);
    o.rewind();
    first
}

#[test]
fn the_oldest_pending_time_follows_acknowledgements_eviction_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    assert_eq!(o.oldest_pending_ts().unwrap(), None);
    for i in 1..=100u64 {
        o.append(Class::Raw, 1_000 + i as i64, &payload(i, 100)).unwrap();
    }
    assert_eq!(o.oldest_pending_ts().unwrap(), Some(1_001));
    o.ack(10).unwrap();
    assert_eq!(o.oldest_pending_ts().unwrap(), Some(1_011));
    // Past a segment's end (a segment holds about 35 of these).
    o.ack(70).unwrap();
    assert_eq!(o.oldest_pending_ts().unwrap(), Some(1_071));
    o.ack(100).unwrap();
    assert_eq!(o.oldest_pending_ts().unwrap(), None);
    o.append(Class::Raw, 5_000, &payload(101, 100)).unwrap();
    assert_eq!(o.oldest_pending_ts().unwrap(), Some(5_000));
    // Alerts over the quota evict the oldest raw samples, the pending one among them.
    for i in 0..700u64 {
        o.append(Class::Alert, 6_000 + i as i64, &payload(i, 100)).unwrap();
        if i % 50 == 0 {
            let got = o.oldest_pending_ts().unwrap();
            assert_eq!(got, first_pending_ts(&mut o), "after alert {i}");
        }
    }
    assert!(o.stats().evicted[Class::Raw as usize] > 0 && o.stats().evicted[Class::Alert as usize] > 0);
    let before = o.oldest_pending_ts().unwrap();
    assert_eq!(before, first_pending_ts(&mut o));
    o.sync().unwrap();
    drop(o);
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    assert_eq!(o.oldest_pending_ts().unwrap(), before);
}

#[test]
fn records_are_handed_out_only_once_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = Outbox::open(dir.path(), SMALL).unwrap();
    o.append(Class::Raw, 0, b"a").unwrap();
    assert!(o.next_batch(10, 1 << 20).unwrap().is_empty(), "not synced yet");
    o.append(Class::Alert, 0, b"b").unwrap(); // alerts are synced at once, and everything before
    assert_eq!(o.next_batch(10, 1 << 20).unwrap().len(), 2);
}

/// One step of the model-based test.
#[derive(Debug, Clone)]
enum Op {
    Append(u8, u16),
    Sync,
    Deliver(u8),
    AckDelivered,
    Rewind,
    OldestPending,
    /// Power cut: unsynced bytes at the end of the newest segment may be lost (some of them).
    PowerCut(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..5, 0u16..300).prop_map(|(c, l)| Op::Append(c, l)),
        2 => Just(Op::Sync),
        3 => (1u8..40).prop_map(Op::Deliver),
        2 => Just(Op::AckDelivered),
        1 => Just(Op::Rewind),
        2 => Just(Op::OldestPending),
        1 => any::<u16>().prop_map(Op::PowerCut),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Appends, deliveries, acknowledgements, rewinds and power cuts in any order: the receiver
    /// never sees a number twice with different content, no number it saw is ever reused, and
    /// every record that was on disk and not acknowledged is delivered in the end, in order, with
    /// an unbroken prev chain. (The quota is large enough here that nothing is evicted; the
    /// eviction policy has its own tests.)
    #[test]
    fn outbox_keeps_its_promises(ops in prop::collection::vec(op(), 1..300)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = OutboxConfig { quota_bytes: 4 << 20, segment_bytes: 2 * 1024 };
        let mut o = Outbox::open(dir.path(), cfg).unwrap();
        let mut received: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut delivered_max = 0u64;
        // Records that must survive (appended and on disk), and the content of every append.
        let mut expected: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut content: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        // Every record in the outbox files, synced or not (each one's time is its number × 7).
        let mut present: BTreeSet<u64> = BTreeSet::new();
        for op in ops {
            match op {
                Op::Append(c, len) => {
                    let p = payload(o.next_seq(), len as usize);
                    let seq = o.append(Class::ALL[c as usize], o.next_seq() as i64 * 7, &p).unwrap().unwrap();
                    present.insert(seq);
                    prop_assert!(seq > delivered_max, "seq {seq} reused (the receiver saw up to {delivered_max})");
                    expected.insert(seq, p.clone());
                    content.insert(seq, p);
                }
                Op::Sync => o.sync().unwrap(),
                Op::Deliver(n) => {
                    for r in o.next_batch(n as usize, 1 << 20).unwrap() {
                        prop_assert!(r.seq <= o.durable(), "seq {} handed out before it was on disk", r.seq);
                        prop_assert!(r.prev < r.seq);
                        prop_assert_eq!(Some(&r.payload), content.get(&r.seq));
                        if let Some(p) = received.get(&r.seq) { prop_assert_eq!(p, &r.payload); }
                        received.insert(r.seq, r.payload);
                        delivered_max = delivered_max.max(r.seq);
                    }
                }
                Op::AckDelivered => o.ack(delivered_max).unwrap(),
                Op::Rewind => o.rewind(),
                Op::OldestPending => {
                    let first = present.range(o.acked() + 1..).next().map(|s| *s as i64 * 7);
                    prop_assert_eq!(o.oldest_pending_ts().unwrap(), first);
                }
                Op::PowerCut(n) => {
                    let durable = o.durable();
                    drop(o);
                    // Lose some of the bytes after the last durable record of the newest segment.
                    let newest = segments(dir.path()).pop().unwrap();
                    let bytes = std::fs::read(&newest).unwrap();
                    let mut keep = 8usize;
                    while keep + 25 <= bytes.len() {
                        let len = u32::from_le_bytes(bytes[keep..keep + 4].try_into().unwrap()) as usize + 25;
                        let seq = u64::from_le_bytes(bytes[keep + 8..keep + 16].try_into().unwrap());
                        if seq > durable { break; }
                        keep += len;
                    }
                    if bytes.len() > keep {
                        let cut = keep + usize::from(n) % (bytes.len() - keep + 1);
                        std::fs::OpenOptions::new().write(true).open(&newest).unwrap().set_len(cut as u64).unwrap();
                    }
                    expected.retain(|&s, _| s <= durable);
                    o = Outbox::open(dir.path(), cfg).unwrap();
                    // What the cut took is numbered from the reopened outbox's next number on.
                    present.retain(|&s| s < o.next_seq());
                }
            }
        }
        o.sync().unwrap();
        o.rewind();
        let acked = o.acked();
        let rest = drain(&mut o);
        let rest_seqs: BTreeSet<u64> = rest.iter().map(|r| r.seq).collect();
        for seq in expected.keys().filter(|&&s| s > acked) {
            prop_assert!(rest_seqs.contains(seq), "durable record {seq} was lost");
        }
        for r in &rest { prop_assert_eq!(Some(&r.payload), content.get(&r.seq)); }
        prop_assert!(rest.windows(2).all(|w| w[1].prev == w[0].seq && w[0].seq < w[1].seq));
    }
}
