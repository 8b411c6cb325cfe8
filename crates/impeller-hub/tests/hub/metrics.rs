//! `GET /api/v1/metrics` against a running hub: Prometheus' text format, behind a read-only
//! token, counting what a device's messages did to ingestion.

use std::collections::HashMap;

use impeller_hub::auth::Role;
use impeller_hub::store::FleetStore;

use crate::{api_hub, device_session, plain_device};

/// The samples of a text exposition: `name{labels}` → value; `# ` lines skipped.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {l}"));
            (key.to_string(), value.parse().unwrap_or_else(|_| panic!("not a number: {l}")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_ingestion_stored_and_how_long_batches_took() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, _, _) = api_hub(dir.path(), |_| {}).await;
    let base = format!("http://{}", hub.http_addr.unwrap());
    let (_, reader) = hub.store.add_token("scraper", Role::Read, "test").await.unwrap();
    let scrape = || async {
        let resp =
            reqwest::Client::new().get(format!("{base}/api/v1/metrics")).bearer_auth(&reader).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        samples(&resp.text().await.unwrap())
    };

    assert_eq!(reqwest::get(format!("{base}/api/v1/metrics")).await.unwrap().status().as_u16(), 401);
    let before = scrape().await;
    assert_eq!(before["impeller_ingest_stored_total"], 0.0);
    assert_eq!(before["impeller_ingest_store_seconds_count"], 0.0);

    // 20 messages in a shuffled order, 7 and 14 again, then a truncated envelope and one that
    // names another device.
    let acks = device_session(plain_device("127.0.0.1", hub.mqtt_addr.unwrap().port()), "pump-m", 20).await;
    assert_eq!(acks.last(), Some(&20));
    let mut after = scrape().await;
    for _ in 0..50 {
        if after["impeller_ingest_duplicates_total"] >= 2.0 && after["impeller_ingest_refused_total"] >= 2.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = scrape().await;
    }
    assert_eq!(after["impeller_ingest_stored_total"], 20.0);
    assert!(after["impeller_ingest_duplicates_total"] >= 2.0, "{after:?}");
    assert_eq!(after["impeller_ingest_refused_total"], 2.0);
    assert_eq!(after["impeller_ingest_failed_batches_total"], 0.0);
    assert!(after["impeller_ingest_queued_publishes"] <= 25.0, "a gauge of at most what was sent: {after:?}");

    // Every committed batch is in the histogram once; its buckets are cumulative.
    let batches = after["impeller_ingest_batches_total"];
    assert!(batches >= 1.0);
    assert_eq!(after["impeller_ingest_store_seconds_count"], batches);
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("impeller_ingest_store_seconds_bucket{le=\"")?.strip_suffix("\"}")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(buckets.len(), impeller_hub::ingest::SECONDS_BUCKETS.len() + 1);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last().unwrap().1, batches);
    assert!(after["impeller_ingest_store_seconds_sum"] > 0.0);

    // Each of the 22 good publishes (20, and 7 and 14 again) acknowledged once, the two refused
    // ones not; each waited at least its batch's time in the database.
    assert_eq!(after["impeller_ingest_ack_seconds_count"], 22.0, "{after:?}");
    assert!(after["impeller_ingest_ack_seconds_sum"] >= after["impeller_ingest_store_seconds_sum"], "{after:?}");
}
