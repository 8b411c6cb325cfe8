//! The model registry on each backend: versions go from pending to ready or failed once, take
//! numbers and releases in order (releases above any package uploaded before), accept only
//! packages built for them; aliases point at ready versions only; lineage goes both ways; each
//! change is in the audit trail with the hashes that link data, model, packages and devices.

use impeller_core::audit::trace;
use impeller_hub::store::{
    ArtifactStore, AuditFilter, AuditStore, NewModelVersion, PackageInfo, RegistryStore, Store, StoreError,
    TelemetryStore, VersionFinish, VersionPackage,
};

use crate::{incoming, unique};

fn sha_of(text: &str) -> String {
    use sha2::Digest;
    impeller_core::hex::encode(&sha2::Sha256::digest(text.as_bytes()))
}

fn new_version(model: &str, run: &str, parent: Option<u64>) -> NewModelVersion {
    NewModelVersion {
        run_key: sha_of(&format!("{model}-{run}")),
        model_sha256: sha_of(&format!("{model}-{run}-model")),
        dataset_sha256: sha_of(&format!("{model}-data")),
        code_version: "0.1.0+test".into(),
        parent_version: parent,
        metrics: [("f1".to_string(), 0.8)].into_iter().collect(),
        spec: serde_json::json!({"model": model}),
        tags: Default::default(),
    }
}

async fn upload(store: &Store, model: &str, version: u64, release: u64, target: &str) -> String {
    let sha = sha_of(&format!("{model}-{version}-{target}"));
    let info = PackageInfo {
        sha256: sha.clone(),
        size: 100,
        model: model.into(),
        version: version.to_string(),
        release,
        target: target.into(),
        signed_by: "k".into(),
        uploaded_ms: 1,
    };
    store.put_package(&info, &[], "token:ci").await.unwrap();
    sha
}

async fn registry(url: &str) {
    let store = Store::open(url).await.unwrap();
    let model = unique("pump-model");
    let highest = store.packages().await.unwrap().iter().map(|p| p.release).max().unwrap_or(0);

    let v1 = store.create_version(&model, &new_version(&model, "a", None), "token:ci").await.unwrap();
    assert_eq!((v1.version, v1.status.as_str()), (1, "pending"));
    assert!(v1.release > highest, "release {} above every uploaded package's ({highest})", v1.release);
    assert_eq!(store.find_run(&model, &v1.run_key).await.unwrap().map(|v| v.version), Some(1));
    assert!(matches!(
        store.create_version(&model, &new_version(&model, "b", Some(99)), "token:ci").await,
        Err(StoreError::Invalid(_))
    ));

    // Only packages built for this version, release and target are taken.
    let wrong_release = upload(&store, &model, 1, v1.release + 1000, "gw").await;
    let finish = |packages: Vec<VersionPackage>| VersionFinish {
        status: "ready".into(),
        gates: serde_json::json!([{"gate": "min_f1", "passed": true}]),
        packages,
        reason: None,
    };
    let bad = store
        .finish_version(&model, 1, &finish(vec![VersionPackage { target: "gw".into(), sha256: wrong_release }]), "t")
        .await;
    assert!(matches!(&bad, Err(StoreError::Invalid(m)) if m.contains("release")), "{bad:?}");
    let gw = upload(&store, &model, 1, v1.release, "gw-arm64").await;
    let plc = upload(&store, &model, 1, v1.release, "plc-armv7").await;
    let packages = vec![
        VersionPackage { target: "gw-arm64".into(), sha256: gw.clone() },
        VersionPackage { target: "plc-armv7".into(), sha256: plc.clone() },
    ];
    let ready = store.finish_version(&model, 1, &finish(packages.clone()), "token:ci").await.unwrap();
    assert_eq!(ready.status, "ready");
    assert_eq!(ready.packages, packages);
    assert!(matches!(store.finish_version(&model, 1, &finish(vec![]), "t").await, Err(StoreError::Conflict(_))));

    // A second version that fails its gates, with the first as its parent.
    let v2 = store.create_version(&model, &new_version(&model, "b", Some(1)), "token:ci").await.unwrap();
    assert_eq!((v2.version, v2.parent_version), (2, Some(1)));
    assert!(v2.release > v1.release);
    let failed = VersionFinish {
        status: "failed".into(),
        gates: serde_json::json!([{"gate": "max_far", "passed": false}]),
        packages: vec![],
        reason: Some("max_far: off by 0.1".into()),
    };
    store.finish_version(&model, 2, &failed, "token:ci").await.unwrap();

    // Aliases: only a ready version takes one; setting it again where it is records nothing.
    store.set_alias(&model, "champion", 1, "token:ops").await.unwrap();
    store.set_alias(&model, "champion", 1, "token:ops").await.unwrap();
    assert!(matches!(store.set_alias(&model, "champion", 2, "token:ops").await, Err(StoreError::Conflict(_))));
    assert_eq!(store.alias(&model, "champion").await.unwrap().map(|v| v.version), Some(1));
    assert_eq!(store.version(&model, 1).await.unwrap().unwrap().aliases, ["champion"]);
    let listed = store.models().await.unwrap().into_iter().find(|m| m.name == model).unwrap();
    assert_eq!((listed.versions, listed.latest_version, listed.aliases["champion"]), (2, Some(2), 1));

    // The same run registered again (a rerun cut off, left pending): the ready version is the
    // one found.
    let again = store.create_version(&model, &new_version(&model, "a", None), "token:ci").await.unwrap();
    assert_eq!((again.version, again.status.as_str()), (3, "pending"));
    assert_eq!(store.find_run(&model, &v1.run_key).await.unwrap().map(|v| v.version), Some(1));

    // A device runs the gateway package; another ran it and rolled it back.
    let (runs, rolled) = (unique("lineage-dev"), unique("lineage-dev"));
    let report = |device: &str, seq: u64, state: &str| {
        let body = serde_json::json!({"event": "update", "detail": {"deployment": format!("{model}-dep"), "sha256": gw, "state": state}});
        incoming(device, seq, 1000 + seq as i64, "events", body)
    };
    let acked = [(runs.clone(), 1), (rolled.clone(), 2)].into_iter().collect();
    store
        .commit(&[report(&runs, 1, "active"), report(&rolled, 1, "active"), report(&rolled, 2, "rolled_back")], &acked)
        .await
        .unwrap();
    let lineage = store.dataset_lineage(&v1.dataset_sha256).await.unwrap();
    assert_eq!(lineage.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2, 3]);
    let devices: Vec<&str> = lineage.devices.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(devices, [runs.as_str()], "the device that rolled back runs something else");
    let running = store.device_lineage(&runs).await.unwrap().unwrap();
    assert_eq!(running.model.as_deref(), Some(model.as_str()));
    assert_eq!((running.version, running.dataset_sha256.as_deref()), (Some(1), Some(v1.dataset_sha256.as_str())));
    assert!(store.device_lineage(&rolled).await.unwrap().is_none());

    // The audit trail links the data to the devices.
    let records = store.audit_records(&AuditFilter { after: 0, limit: 100_000, ..Default::default() }).await.unwrap();
    let ours: Vec<&str> = records
        .iter()
        .filter(|r| r.subject.starts_with(&model) && r.action.starts_with("model."))
        .map(|r| r.action.as_str())
        .collect();
    assert_eq!(
        ours,
        [
            "model.version.created",
            "model.version.ready",
            "model.version.created",
            "model.version.failed",
            "model.alias.set",
            "model.version.created"
        ]
    );
    let traced: Vec<&str> = trace(&records, &v1.dataset_sha256)
        .into_iter()
        .filter(|r| r.subject.starts_with(&model) || r.subject == runs || r.artifacts.contains(&gw))
        .map(|r| r.action.as_str())
        .collect();
    assert!(traced.contains(&"package.uploaded") && traced.contains(&"device.update.active"), "{traced:?}");
}

on_every_backend!(registry);
