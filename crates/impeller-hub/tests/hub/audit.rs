//! The audit trail as the hub stores it, on each backend: operators' and devices' actions are
//! recorded with the action itself, once; concurrent appends keep one unbroken chain; signed
//! checkpoints verify with the hub's key; a record edited in the database is found.

use impeller_core::audit::{AuditEvent, AuditRecord, ChainBreak, ChainVerifier, trace};
use impeller_core::package::{Signer25519, TrustStore};
use impeller_hub::store::{
    ArtifactStore, AuditFilter, AuditStore, DeploymentInfo, DeploymentStore, FleetStore, PackageInfo, Store,
    TelemetryStore,
};

use crate::{incoming, unique};

/// Every record, in chain order.
async fn all_records(store: &Store) -> Vec<AuditRecord> {
    let mut out: Vec<AuditRecord> = Vec::new();
    loop {
        let after = out.last().map_or(0, |r| r.seq);
        let page = store.audit_records(&AuditFilter { after, limit: 1000, ..Default::default() }).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn sha_of(text: &str) -> String {
    use sha2::Digest;
    impeller_core::hex::encode(&sha2::Sha256::digest(text.as_bytes()))
}

async fn audit_trail(url: &str) {
    let store = Store::open(url).await.unwrap();
    let device = unique("audited");
    let tags = [("site".to_string(), "gulf".to_string())].into_iter().collect();
    store.add_device(&device, &tags, "gw", "token:ops").await.unwrap();
    assert!(store.add_device(&device, &tags, "gw", "token:ops").await.is_err());
    let (package_sha, model_sha, data_sha) = (sha_of(&device), sha_of("model"), sha_of("data"));
    let package = PackageInfo {
        sha256: package_sha.clone(),
        size: 10,
        model: "m".into(),
        version: "1".into(),
        release: 1,
        target: "t".into(),
        signed_by: "k".into(),
        uploaded_ms: 1,
    };
    store.put_package(&package, &[model_sha.clone(), data_sha.clone()], "token:ci").await.unwrap();
    store.put_package(&package, &[], "token:ci").await.unwrap(); // the same package again: nothing new
    let name = unique("audited-dep");
    let deployment = DeploymentInfo {
        name: name.clone(),
        package_sha256: package_sha.clone(),
        target_condition: "*".into(),
        priority: 0,
        created_ms: 2,
        stopped_ms: None,
        rollout: None,
        wave: 0,
        wave_started_ms: 2,
        completed_ms: None,
        aborted_ms: None,
        abort_reason: None,
    };
    store.add_deployment(&deployment, "token:ops").await.unwrap();
    store.start_wave(&name, 1, "hub").await.unwrap();
    store.abort_deployment(&name, "gate failed", "hub").await.unwrap();
    // The device reports running the package: recorded once, however often it is redelivered;
    // progress (downloading) is not an outcome and is not recorded.
    let update = |seq: u64, state: &str| {
        let body = serde_json::json!({"event": "update", "detail": {"deployment": name, "sha256": package_sha, "state": state}});
        incoming(&device, seq, 100 + seq as i64, "events", body)
    };
    let acked = [(device.clone(), 2)].into_iter().collect();
    let batch = [update(1, "downloading"), update(2, "active")];
    store.commit(&batch, &acked).await.unwrap();
    store.commit(&batch, &acked).await.unwrap();

    // Appends from many tasks at once keep one chain.
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let (store, device) = (store.clone(), device.clone());
            tokio::spawn(async move { store.audit(AuditEvent::new(i, "test", "test.concurrent", &device)).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for w in writers {
        seqs.push(w.await.unwrap().unwrap().seq);
    }
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 16, "every concurrent append got its own place");

    let signer = Signer25519::from_secret([3; 32]);
    let checkpoint = store.audit_checkpoint(&signer).await.unwrap().expect("there was something to sign");
    let records = all_records(&store).await;
    let mut pinned = TrustStore::new();
    pinned.add(signer.verifying_key());
    let mut verifier = ChainVerifier::new(Some(&pinned));
    for r in &records {
        verifier.push(r).unwrap_or_else(|e| panic!("{e}"));
    }
    let summary = verifier.finish();
    assert!(summary.checkpoints_verified >= 1 && summary.last_verified_seq == Some(checkpoint.seq - 1), "{summary:?}");

    let ours: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r.subject == device || r.subject == name || r.artifacts.contains(&package_sha))
        .filter(|r| r.action != "test.concurrent")
        .map(|r| (r.action.as_str(), r.actor.as_str()))
        .collect();
    assert_eq!(
        ours,
        [
            ("device.added", "token:ops"),
            ("package.uploaded", "token:ci"),
            ("deployment.created", "token:ops"),
            ("deployment.wave_started", "hub"),
            ("deployment.aborted", "hub"),
            ("device.update.active", device.as_str()),
        ]
    );
    // From the training data to the device that ran a model built from it.
    let traced: Vec<&str> = trace(&records, &data_sha)
        .into_iter()
        .filter(|r| r.artifacts.contains(&package_sha))
        .map(|r| r.action.as_str())
        .collect();
    assert_eq!(traced, ["package.uploaded", "deployment.created", "device.update.active"]);
    let filtered = store
        .audit_records(&AuditFilter {
            action: Some("deployment.".into()),
            subject: Some(name.clone()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = filtered.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["deployment.created", "deployment.wave_started", "deployment.aborted"]);
}

on_every_backend!(audit_trail);

/// Someone with write access to the database edits a record; verification names it. (SQLite
/// only: the shared PostgreSQL database must keep an intact trail for the other tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_edited_in_the_database_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("hub.db").display());
    let store = Store::open(&url).await.unwrap();
    for i in 0..5 {
        store.add_device(&format!("p{i}"), &Default::default(), "gw", "token:ops").await.unwrap();
    }
    assert!(impeller_core::audit::verify(&all_records(&store).await, None).is_ok());
    let Store::Sqlite { pool, .. } = &store else { unreachable!() };
    sqlx::query("UPDATE audit_log SET subject = 'p9' WHERE seq = 3").execute(pool).await.unwrap();
    assert_eq!(impeller_core::audit::verify(&all_records(&store).await, None), Err(ChainBreak::Content { seq: 3 }));
    sqlx::query("UPDATE audit_log SET artifacts = 'not json' WHERE seq = 2").execute(pool).await.unwrap();
    assert!(matches!(
        impeller_core::audit::verify(&all_records(&store).await, None),
        Err(ChainBreak::Content { seq: 2 }) | Err(ChainBreak::Artifact { seq: 2, .. })
    ));
}

/// Which keys the hub trusts and signs with is recorded when it changes from one start to the
/// next, with what was added and removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_keys_is_recorded_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = |seed: u8| {
        let path = dir.path().join(format!("k{seed}.public.json"));
        std::fs::write(&path, Signer25519::from_secret([seed; 32]).public_file().to_json()).unwrap();
        path
    };
    let (k1, k2) = (key(1), key(2));
    let start = |trusted: Vec<std::path::PathBuf>| {
        let (mut cfg, _) = crate::embedded_sqlite(dir.path(), false);
        cfg.trusted_keys = trusted;
        async move { impeller_hub::Hub::start(&cfg).await.unwrap() }
    };
    let records = |hub: &impeller_hub::Hub| {
        let filter = AuditFilter { action: Some("hub.keys".into()), limit: 10, ..Default::default() };
        let store = hub.store.clone();
        async move { store.audit_records(&filter).await.unwrap() }
    };
    let hub = start(vec![k1.clone()]).await;
    assert_eq!(records(&hub).await.len(), 1);
    let hub = start(vec![k1.clone()]).await;
    assert_eq!(records(&hub).await.len(), 1, "the same keys: nothing new");
    let hub = start(vec![k2.clone()]).await;
    let all = records(&hub).await;
    assert_eq!(all.len(), 2);
    let id = |seed: u8| impeller_core::package::key_id(&Signer25519::from_secret([seed; 32]).verifying_key());
    assert_eq!(all[1].details["added"], serde_json::json!([format!("trusted:{}", id(2))]));
    assert_eq!(all[1].details["removed"], serde_json::json!([format!("trusted:{}", id(1))]));
}
