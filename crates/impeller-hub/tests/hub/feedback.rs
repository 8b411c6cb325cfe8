//! Technicians' feedback on each backend: a verdict per alert (the latest counts), precision per
//! model version, a confirmed fault turned into an incident that labels later snapshots and
//! withdrawn when the verdict turns to false alarm, every verdict audited; unknown alerts and
//! oversized notes refused.

use impeller_hub::store::{
    AuditFilter, AuditStore, FeedbackStore, FleetStore, Store, StoreError, TelemetryStore, Verdict,
};

use crate::{incoming, unique};

fn alert(model: &str, version: &str, started_ms: i64) -> serde_json::Value {
    serde_json::json!({
        "model": {"name": model, "version": version, "release": 1}, "started_ms": started_ms, "score": 2.0,
        "threshold": 1.5, "top_features": [], "channels": ["flow"],
        "window": [{"ts_ms": started_ms - 1000, "values": [1.0]}, {"ts_ms": started_ms + 30_000, "values": [5.0]}],
    })
}

async fn feedback(url: &str) {
    let store = Store::open(url).await.unwrap();
    let (device, model) = (unique("fb-dev"), unique("fb-model"));
    store.add_device(&device, &Default::default(), "gw", "test").await.unwrap();
    let batch: Vec<_> = (1..=4u64)
        .map(|s| {
            let version = if s <= 3 { "1" } else { "2" };
            incoming(&device, s, 100_000 * s as i64, "alerts", alert(&model, version, 100_000 * s as i64 - 5000))
        })
        .collect();
    store.commit(&batch, &[(device.clone(), 4)].into_iter().collect()).await.unwrap();

    let confirmed =
        store.put_feedback(&device, 1, Verdict::Confirmed, "WO-1", "bearing noise", "token:tech").await.unwrap();
    let incident = confirmed.incident_id.expect("a confirmed fault becomes an incident");
    let labelled = store.incidents(Some(&device), 0, i64::MAX).await.unwrap();
    assert_eq!(labelled.len(), 1);
    assert_eq!(
        (labelled[0].id, labelled[0].start_ms, labelled[0].end_ms),
        (incident, 95_000, 125_001),
        "alarm start to window end"
    );
    store.put_feedback(&device, 2, Verdict::FalseAlarm, "", "", "token:tech").await.unwrap();
    store.put_feedback(&device, 3, Verdict::Confirmed, "WO-2", "", "token:tech").await.unwrap();
    store.put_feedback(&device, 4, Verdict::FalseAlarm, "", "", "token:tech").await.unwrap();
    let by_version: Vec<(String, u64, u64)> = store
        .precision(Some(&model))
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.model_version, p.confirmed, p.false_alarms))
        .collect();
    assert_eq!(by_version, [("1".to_string(), 2, 1), ("2".to_string(), 0, 1)]);

    // The technician corrects the first verdict: the incident goes, the count follows.
    let corrected =
        store.put_feedback(&device, 1, Verdict::FalseAlarm, "WO-1", "was the valve test", "token:tech").await.unwrap();
    assert_eq!(corrected.incident_id, None);
    assert_eq!(store.incidents(Some(&device), 0, i64::MAX).await.unwrap().len(), 1, "only alert 3's remains");
    let v1 = store.precision(Some(&model)).await.unwrap().into_iter().find(|p| p.model_version == "1").unwrap();
    assert_eq!((v1.confirmed, v1.false_alarms), (1, 2));
    assert!((v1.precision - 1.0 / 3.0).abs() < 1e-12);

    assert!(matches!(
        store.put_feedback(&device, 99, Verdict::Confirmed, "", "", "t").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.put_feedback(&device, 2, Verdict::Confirmed, "", &"x".repeat(3000), "t").await,
        Err(StoreError::Invalid(_))
    ));
    let audited = store
        .audit_records(&AuditFilter {
            action: Some("alert.feedback".into()),
            subject: Some(device.clone()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audited.len(), 5);
}

on_every_backend!(feedback);
