//! Dataset snapshots through the API: the samples of the devices a condition selects, over a
//! time range, one part per device, labelled by incidents, with the units of the models that
//! name the channels; the same selection gives the same hash; pandas-ready Parquet comes back
//! through the API and reads to the same content; bad requests are refused with the reason.

use impeller_core::package::build;
use impeller_core::{Channel, Frame, TrainConfig, detector::DetectorConfig, train};
use impeller_pipeline::dataset::Dataset;

use crate::{api_hub, incoming};
use impeller_hub::store::TelemetryQueries;
use impeller_hub::store::{ArtifactStore, AuditStore, FeedbackStore, FleetStore, TelemetryStore};

/// (name, rows) of each part of a snapshot's manifest.
fn rows_by_part(manifest: &serde_json::Value) -> Vec<(String, u64)> {
    let parts = manifest["parts"].as_array().unwrap().iter();
    parts.map(|p| (p["name"].as_str().unwrap().to_string(), p["rows"].as_u64().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_select_label_and_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, token, signer) = api_hub(dir.path(), |_| {}).await;
    let base = format!("http://{}/api/v1", hub.http_addr.unwrap());
    let client = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
    };
    async fn json(r: reqwest::Response) -> serde_json::Value {
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    // A model naming the channels, so the snapshot knows their units.
    let channels = [Channel::new("flow", "m3/h"), Channel::new("pressure", "bar")];
    let training: Vec<Frame> = (0..300)
        .map(|i| Frame { ts_ms: i * 1000, values: vec![10.0 + (i as f64 / 9.0).sin(), 5.0 + (i as f64 / 7.0).cos()] })
        .collect();
    let model = train(&channels, &training, &TrainConfig::new(DetectorConfig::Zscore(Default::default()))).unwrap();
    let spec = crate::package_spec("m", 1);
    let pkg = build(&model, &training, &spec, &signer).unwrap();
    let r = client.post(format!("{base}/packages")).bearer_auth(&token).body(pkg).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);

    // Three devices at two sites; each sends samples in batches of ten frames.
    for (id, site) in [("g1", "gulf"), ("g2", "gulf"), ("n1", "north")] {
        let tags = [("site".to_string(), site.to_string())].into_iter().collect();
        hub.store.add_device(id, &tags, "gw", "test").await.unwrap();
        let batch: Vec<_> = (0..6u64)
            .map(|b| {
                let frames: Vec<serde_json::Value> = (0..10)
                    .map(|i| {
                        let ts = 1_000_000 + (b * 10 + i) as i64 * 1000;
                        // One missing pressure reading in each batch.
                        let pressure = if i == 3 { serde_json::Value::Null } else { (5.0 + i as f64 / 10.0).into() };
                        serde_json::json!({"ts_ms": ts, "values": [10.0 + b as f64, pressure]})
                    })
                    .collect();
                let body = serde_json::json!({"channels": ["flow", "pressure"], "frames": frames});
                // Stamped when the batch fills, as the agent does: at its last frame.
                incoming(id, b + 1, 1_000_000 + b as i64 * 10_000 + 9_000, "samples", body)
            })
            .collect();
        hub.store.commit(&batch, &[(id.to_string(), 6)].into_iter().collect()).await.unwrap();
    }
    let r = post(
        "/incidents",
        serde_json::json!({"device": "g2", "start_ms": 1_030_000, "end_ms": 1_040_000, "kind": "cavitation"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let request = serde_json::json!({
        "condition": "tags.site = 'gulf'", "since_ms": 1_005_000, "until_ms": 1_055_000, "label_incidents": true,
    });
    let r = post("/datasets", request.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let m = json(r).await;
    let sha = m["sha256"].as_str().unwrap().to_string();
    assert_eq!(
        m["channels"],
        serde_json::json!([{"name": "flow", "unit": "m3/h"}, {"name": "pressure", "unit": "bar"}])
    );
    let parts: Vec<(&str, u64, u64)> = m["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["rows"].as_u64().unwrap(), p["anomalous_rows"].as_u64().unwrap()))
        .collect();
    assert_eq!(parts, [("g1", 50, 0), ("g2", 50, 10)], "two gulf devices, [1005 s, 1055 s), g2's incident labelled");

    // The same selection again: the same hash, recorded once.
    let again = json(post("/datasets", request).await.unwrap()).await;
    assert_eq!(again["sha256"], sha.as_str());
    let list = json(client.get(format!("{base}/datasets")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // Training data of normal running: g2 loses the rows of its incident (which splits g2 in two
    // runs), g1 the one row of its confirmed fault at 1020 s; and, asked to, every row of g1 from
    // then on, however short the alert was.
    let r = post(
        "/incidents",
        serde_json::json!({"device": "g1", "start_ms": 1_020_000, "end_ms": 1_021_000, "kind": "confirmed_fault"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    for (after_fault, g1) in [(false, 49), (true, 15)] {
        let normal = serde_json::json!({
            "condition": "tags.site = 'gulf'", "since_ms": 1_005_000, "until_ms": 1_055_000,
            "exclude_incidents": true, "exclude_after_confirmed_fault": after_fault,
        });
        let m = json(post("/datasets", normal).await.unwrap()).await;
        let parts = rows_by_part(&m);
        assert_eq!(
            parts,
            [("g1".to_string(), g1), ("g2#0".into(), 25), ("g2#1".into(), 15)],
            "after the fault too: {after_fault}"
        );
    }

    // The files come back through the API and read to the same content.
    let pulled = dir.path().join("pulled").join(&sha);
    std::fs::create_dir_all(&pulled).unwrap();
    for file in ["dataset.json", "part-00000.parquet", "part-00001.parquet"] {
        let r = client.get(format!("{base}/datasets/{sha}/files/{file}")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{file}");
        std::fs::write(pulled.join(file), r.bytes().await.unwrap()).unwrap();
    }
    let (ds, _) = Dataset::read(&dir.path().join("pulled"), &sha).unwrap();
    // The range starts mid-batch: frame 8 is the second batch's fourth, its missing pressure.
    assert!(
        ds.parts[0].frames[8].values[1].is_nan() && !ds.parts[0].frames[7].values[1].is_nan(),
        "a missing reading stays missing"
    );
    let r = client.get(format!("{base}/datasets/{sha}/files/..%2Fhub.db")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404, "only the dataset's own files");

    // A snapshot carrying that one as its base (a retraining on the champion's data and the
    // recent window): n1's window and the base's parts, under base/, in the snapshot's order.
    let carried = serde_json::json!({
        "condition": "tags.site = 'north'", "since_ms": 1_000_000, "until_ms": 1_020_000,
        "channels": ["flow", "pressure"], "base_dataset": sha,
    });
    let r = post("/datasets", carried).await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let m = json(r).await;
    let parts = rows_by_part(&m);
    assert_eq!(parts, [("base/g1".to_string(), 50), ("base/g2".into(), 50), ("n1".into(), 20)]);
    let (with_base, _) = Dataset::read(&dir.path().join("datasets"), m["sha256"].as_str().unwrap()).unwrap();
    // Compared as text: a missing reading is NaN, never equal to itself.
    let text = |frames: &[Frame]| format!("{frames:?}");
    assert_eq!(
        text(&with_base.part("base/g2").unwrap().frames),
        text(&ds.parts[1].frames),
        "the base's rows unchanged"
    );
    // A base lacking one of the snapshot's channels, or none at all: refused, saying which.
    let lacking = serde_json::json!({
        "condition": "tags.site = 'north'", "since_ms": 1_000_000, "channels": ["flow", "speed"], "base_dataset": sha,
    });
    let r = post("/datasets", lacking).await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert!(r.text().await.unwrap().contains("no channel `speed`"));
    let r = post("/datasets", serde_json::json!({"condition": "*", "since_ms": 0, "base_dataset": "0".repeat(64)}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert!(r.text().await.unwrap().contains("base dataset 0000"));

    // Refused with the reason: nothing matches; an empty range; an incident on no device.
    let r = post("/datasets", serde_json::json!({"condition": "tags.site = 'moon'", "since_ms": 0})).await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert!(r.text().await.unwrap().contains("no device matches"));
    let r = post("/datasets", serde_json::json!({"condition": "*", "since_ms": 5, "until_ms": 5})).await.unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let r = post("/incidents", serde_json::json!({"device": "nobody", "start_ms": 1, "end_ms": 2, "kind": "x"}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // The snapshot is in the audit trail, with its hash.
    let audited = hub
        .store
        .audit_records(&impeller_hub::store::AuditFilter {
            action: Some("dataset.".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audited.len(), 4, "the snapshot, the two leaving incidents out and the one carrying a base");
    assert!(audited.iter().any(|r| r.artifacts == [sha.clone()]));
}

/// The store's side on each backend: samples by device and time, incidents overlapping a range,
/// snapshot records.
async fn store_side(url: &str) {
    use impeller_hub::store::{DatasetRecord, Incident, Store};
    let store = Store::open(url).await.unwrap();
    let device = crate::unique("ds-dev");
    store.add_device(&device, &Default::default(), "gw", "test").await.unwrap();
    let batch: Vec<_> = (1..=3u64)
        .map(|s| incoming(&device, s, s as i64 * 1000, "samples", serde_json::json!({"channels": ["a"], "frames": []})))
        .collect();
    store.commit(&batch, &[(device.clone(), 3)].into_iter().collect()).await.unwrap();
    let got: Vec<i64> = store.samples(&device, 2000, 10_000, 10).await.unwrap().into_iter().map(|(ts, _)| ts).collect();
    assert_eq!(got, [2000, 3000]);
    let incident = Incident {
        id: 0,
        device: device.clone(),
        start_ms: 100,
        end_ms: 200,
        kind: "seal_leak".into(),
        note: String::new(),
        created_by: String::new(),
        created_ms: 0,
    };
    let added = store.add_incident(&incident, "token:ops").await.unwrap();
    assert!(added.id > 0);
    assert!(
        store.add_incident(&Incident { end_ms: 100, ..incident.clone() }, "t").await.is_err(),
        "ends before it starts"
    );
    assert_eq!(store.incidents(Some(&device), 150, 160).await.unwrap().len(), 1);
    assert!(store.incidents(Some(&device), 200, 300).await.unwrap().is_empty(), "the end is exclusive");
    assert!(store.incidents(None, 0, i64::MAX).await.unwrap().iter().any(|i| i.id == added.id));
    let sha = {
        use sha2::Digest;
        impeller_core::hex::encode(&sha2::Sha256::digest(device.as_bytes()))
    };
    let record = DatasetRecord {
        sha256: sha.clone(),
        selection: serde_json::json!({"devices": [device]}),
        parts: 1,
        rows: 2,
        created_by: "token:ops".into(),
        created_ms: 5,
    };
    store.put_dataset(&record).await.unwrap();
    store.put_dataset(&record).await.unwrap();
    assert_eq!(store.datasets().await.unwrap().into_iter().filter(|d| d.sha256 == sha).collect::<Vec<_>>(), [record]);
}

on_every_backend!(store_side);
