//! The hub's ingestion against real brokers and databases: the embedded rumqttd and the
//! machine's Mosquitto; SQLite and PostgreSQL (when IMPELLER_TEST_POSTGRES is set).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use impeller_core::wire;
use impeller_hub::bus::ExternalBroker;
use impeller_hub::store::TelemetryQueries;
use impeller_hub::store::{ArtifactStore, AuditStore, DeploymentStore, FleetStore, MonitorStore, TelemetryStore};
use impeller_hub::{Hub, HubConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// A store conformance test run on every backend, each time on an empty database of its own:
/// `on_every_backend!(name)` runs `async fn name(url: &str)` as `name::sqlite` (a temporary
/// file) and `name::postgres` (a database created on IMPELLER_TEST_POSTGRES's server and dropped
/// afterwards; skipped, saying so, without it).
macro_rules! on_every_backend {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(&format!("sqlite:{}", dir.path().join("hub.db").display())).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = crate::FreshPostgres::create(concat!(stringify!($name), "::postgres")).await else {
                    return;
                };
                super::$name(&db.url).await;
            }
        }
    };
}

mod alert_rate;
mod artifacts;
mod audit;
mod broker_rules;
mod conformance;
mod dashboard;
mod datasets;
mod events;
mod external_broker;
mod feedback;
mod metrics;
mod openapi;
mod registry;
mod retrain;
mod tls;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Says that `test` is skipped because a third-party peer is missing (`why`), or fails it when
/// IMPELLER_REQUIRE_PEERS is set (CI, which installs the peers, must not skip).
fn skip_without_peer(test: &str, why: &str) {
    assert!(std::env::var("IMPELLER_REQUIRE_PEERS").is_err(), "IMPELLER_REQUIRE_PEERS is set but {test} {why}");
    eprintln!("{test}: SKIPPED, {why}");
}

fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), free_port())
}

/// The embedded broker on a free port and SQLite in `dir`.
fn embedded_sqlite(dir: &std::path::Path, device_auth: bool) -> (HubConfig, u16) {
    let port = free_port();
    let cfg = HubConfig {
        database: format!("sqlite:{}", dir.join("hub.db").display()),
        mqtt_listen: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        external_broker: None,
        device_auth,
        packages_dir: dir.join("packages"),
        ..Default::default()
    };
    (cfg, port)
}

/// A hub on SQLite in `dir` with its API, trusting the packages one signer signs; an admin
/// token and that signer.
async fn api_hub(
    dir: &std::path::Path,
    more: impl FnOnce(&mut HubConfig),
) -> (Hub, String, impeller_core::package::Signer25519) {
    let signer = impeller_core::package::Signer25519::from_secret([7; 32]);
    let key = dir.join("ops.public.json");
    std::fs::write(&key, signer.public_file().to_json()).unwrap();
    let (mut cfg, _) = embedded_sqlite(dir, false);
    cfg.http_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.trusted_keys = vec![key];
    cfg.packages_dir = dir.join("packages");
    std::fs::create_dir_all(&cfg.packages_dir).unwrap();
    more(&mut cfg);
    let hub = Hub::start(&cfg).await.unwrap();
    let (_, token) = hub.store.add_token("admin", impeller_hub::auth::Role::Admin, "test").await.unwrap();
    (hub, token, signer)
}

/// A test package's specification: version 1 of `name` at `release`, for target `gw`, never
/// expiring.
fn package_spec(name: &str, release: u64) -> impeller_core::package::PackageSpec {
    impeller_core::package::PackageSpec {
        name: name.into(),
        version: "1".into(),
        release,
        target: "gw".into(),
        created_ms: 0,
        expires_ms: i64::MAX,
        pipeline_run: None,
        metrics: Default::default(),
    }
}

fn postgres(test: &str) -> Option<String> {
    match std::env::var("IMPELLER_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("{test}: SKIPPED, needs PostgreSQL: set IMPELLER_TEST_POSTGRES=postgres://user@host/db");
            None
        }
    }
}

/// An empty PostgreSQL database of one test's own on IMPELLER_TEST_POSTGRES's server, dropped
/// when this is (tests can then assert totals, and an edited audit trail harms no other test).
struct FreshPostgres {
    url: String,
    admin: String,
    name: String,
}

impl FreshPostgres {
    async fn create(test: &str) -> Option<FreshPostgres> {
        use sqlx::Connection;
        let admin = postgres(test)?;
        let name = format!("impeller_test_{}_{}", std::process::id(), free_port());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        Some(FreshPostgres { url: format!("{base}/{name}"), admin, name })
    }
}

impl Drop for FreshPostgres {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs outside async: a thread of its own with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

fn mqtt(test: &str) -> Option<String> {
    match std::env::var("IMPELLER_TEST_MQTT") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("{test}: SKIPPED, needs an MQTT broker: set IMPELLER_TEST_MQTT=mqtt://host:port");
            None
        }
    }
}

/// A device that sends 1..=n out of order, some twice, plus a malformed message and one that
/// claims to come from another device; returns the acknowledgements it saw, in order.
async fn device_session(mut opts: MqttOptions, device: &str, n: u64) -> Vec<u64> {
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(opts, 1000);
    client.subscribe(wire::topic(device, "ack"), QoS::AtLeastOnce).await.unwrap();
    // Wait for the subscription before publishing.
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = ev.poll().await.unwrap() {
            break;
        }
    }
    let mut order: Vec<u64> = (1..=n).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let dupes: Vec<u64> = order.iter().copied().filter(|s| s % 7 == 0).collect();
    let body = |seq: u64| format!(r#"{{"seq_in_body":{seq}}}"#);
    let publisher = client.clone();
    let device_owned = device.to_string();
    tokio::spawn(async move {
        let device = device_owned.as_str();
        for seq in order.into_iter().chain(dupes) {
            let payload = wire::encode_envelope(
                device,
                seq,
                seq - 1,
                1_700_000_000_000 + seq as i64,
                "events",
                body(seq).as_bytes(),
            )
            .unwrap();
            publisher.publish(wire::topic(device, "events"), QoS::AtLeastOnce, false, payload).await.unwrap();
        }
        let bad = b"{\"v\":1,\"device\":".to_vec();
        publisher.publish(wire::topic(device, "events"), QoS::AtLeastOnce, false, bad).await.unwrap();
        let spoof = wire::encode_envelope("someone-else", n + 1, n, 0, "events", b"{}").unwrap();
        publisher.publish(wire::topic(device, "events"), QoS::AtLeastOnce, false, spoof).await.unwrap();
    });
    let mut acks = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while acks.last() != Some(&n) && Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(200), ev.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => acks.push(wire::decode_ack(&p.payload).unwrap().acked),
            Ok(Err(e)) => panic!("device connection failed: {e}"),
            _ => {}
        }
    }
    acks
}

/// A device's connection options without a login or TLS.
fn plain_device(host: &str, port: u16) -> MqttOptions {
    MqttOptions::new(unique("dev"), host, port)
}

/// A hub started on `cfg` stores each of `device`'s messages once, sent over `opts`, and
/// acknowledges them; returns the hub.
async fn exactly_once(mut cfg: HubConfig, opts: MqttOptions, device: &str) -> Hub {
    let packages = tempfile::tempdir().unwrap();
    if cfg.packages_dir.as_os_str().is_empty() {
        cfg.packages_dir = packages.path().to_path_buf();
    }
    let hub = Hub::start(&cfg).await.unwrap();
    let n = 300;
    let acks = device_session(opts, device, n).await;
    assert_eq!(acks.last(), Some(&n), "acknowledgements seen: {acks:?}");
    assert!(acks.windows(2).all(|w| w[0] <= w[1]), "acknowledgements never go back: {acks:?}");
    let stored = hub.store.messages(device).await.unwrap();
    assert_eq!(stored.len() as u64, n, "each seq stored once");
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1);
        assert_eq!(m.body, format!(r#"{{"seq_in_body":{}}}"#, m.seq));
    }
    // The redeliveries and refusals arrive after the last acknowledgement; give them a moment.
    // (A batch counts its refusals as it reads them and its duplicates after its commit, so
    // the refusals being counted does not mean the duplicates are: CI saw 0 of 42 once.)
    let resent = (1..=n).filter(|s| s % 7 == 0).count() as u64;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(5);
    while (count(&hub.stats.refused) < 2 || count(&hub.stats.duplicates) < resent) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&hub.stats.refused), 2, "malformed and spoofed");
    let duplicates = count(&hub.stats.duplicates);
    assert!(duplicates >= resent, "{duplicates} duplicates counted, {resent} sent");
    // A restarted hub resumes the stream where it was: a redelivery is acknowledged at once.
    let stream = hub.store.stream_states(&[device]).await.unwrap().remove(device).unwrap();
    assert_eq!((stream.acked, stream.beyond.len()), (n, 0));
    hub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_and_sqlite_store_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, port) = embedded_sqlite(dir.path(), false);
    exactly_once(cfg, plain_device("127.0.0.1", port), &unique("pump")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_mosquitto_and_postgres_store_each_message_once() {
    let (Some(broker), Some(pg)) = (
        mqtt("external_mosquitto_and_postgres_store_each_message_once"),
        postgres("external_mosquitto_and_postgres_store_each_message_once"),
    ) else {
        return;
    };
    let (host, port) = broker.strip_prefix("mqtt://").unwrap().rsplit_once(':').unwrap();
    let cfg = HubConfig {
        database: pg,
        mqtt_listen: None,
        external_broker: Some(ExternalBroker::at(&broker)),
        ..Default::default()
    };
    exactly_once(cfg, plain_device(host, port.parse().unwrap()), &unique("pump")).await;
}

/// The outcome of one connection attempt to the embedded broker.
async fn connects(port: u16, client_id: &str, user: &str, pass: &str) -> bool {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_credentials(user, pass);
    let (_client, mut ev) = AsyncClient::new(opts, 10);
    match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => ack.code == rumqttc::ConnectReturnCode::Success,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_admits_only_provisioned_unrevoked_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, port) = embedded_sqlite(dir.path(), true);
    // Provisioned before the hub starts, as `impeller device add` would.
    let store = impeller_hub::store::Store::open(&cfg.database).await.unwrap();
    let tags = impeller_hub::fleet::parse_tags("site=north,manufacturer=acme").unwrap();
    let secret = store.add_device("p-101", &tags, "gw-small", "test").await.unwrap();
    let other = store.add_device("p-102", &tags, "gw-small", "test").await.unwrap();
    assert!(store.add_device("p-101", &tags, "gw-small", "test").await.is_err(), "ids are unique");
    let hub = Hub::start(&cfg).await.unwrap();
    assert!(connects(port, "p-101", "p-101", &secret).await, "the right secret");
    assert!(!connects(port, "p-101", "p-101", &other).await, "another device's secret");
    assert!(!connects(port, "p-101", "p-101", "").await, "no secret");
    assert!(!connects(port, "p-102", "p-101", &secret).await, "client id of another device");
    assert!(!connects(port, "p-999", "p-999", &secret).await, "unknown device");
    // Revoked (by another process, through the database): refused after the next refresh.
    hub.store.revoke_device("p-101", "test").await.unwrap();
    tokio::time::sleep(impeller_hub::fleet::REFRESH + Duration::from_millis(500)).await;
    assert!(!connects(port, "p-101", "p-101", &secret).await, "revoked");
    assert!(connects(port, "p-102", "p-102", &other).await, "the others still connect");
    let listed = hub.store.devices().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0].revoked_ms.is_some() && listed[1].revoked_ms.is_none());
    assert_eq!(listed[1].tags.get("site").map(String::as_str), Some("north"));
    // No secret is stored in the clear.
    let raw = std::fs::read(dir.path().join("hub.db")).unwrap_or_default();
    let wal = std::fs::read(dir.path().join("hub.db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the secret is in the database file");
    }
}

/// One message of `device` as ingest hands it to the store.
fn incoming(device: &str, seq: u64, ts_ms: i64, kind: &str, body: serde_json::Value) -> impeller_hub::store::Incoming {
    let update = (kind == "events").then(|| serde_json::from_value(body["detail"].clone()).unwrap());
    impeller_hub::store::Incoming {
        device: device.to_string(),
        seq,
        prev: seq - 1,
        ts_ms,
        kind: kind.to_string(),
        body: body.to_string(),
        update,
    }
}

/// What staged rollouts keep: the policy and wave, members, aborts, update reports per
/// deployment with the first and first-active report, and alert activity around them.
async fn rollout_records(url: &str) {
    use impeller_hub::store::{DeploymentInfo, PackageInfo, Store, StoreError};
    let store = Store::open(url).await.unwrap();
    let name = unique("staged");
    let sha = format!("{:0>64x}", impeller_core::rollout::rank(&name, "sha"));
    let package = PackageInfo {
        sha256: sha.clone(),
        size: 1,
        model: "m".into(),
        version: "1".into(),
        release: 1,
        target: "t".into(),
        signed_by: "k".into(),
        uploaded_ms: 1,
    };
    store.put_package(&package, &[], "test").await.unwrap();
    let policy: impeller_core::rollout::Rollout =
        serde_json::from_value(serde_json::json!({"waves": [10, 100], "max_alert_rate_increase": 2.0})).unwrap();
    let d = DeploymentInfo {
        name: name.clone(),
        package_sha256: sha.clone(),
        target_condition: "*".into(),
        priority: 0,
        created_ms: 1000,
        stopped_ms: None,
        rollout: Some(policy.clone()),
        wave: 0,
        wave_started_ms: 1000,
        completed_ms: None,
        aborted_ms: None,
        abort_reason: None,
    };
    store.add_deployment(&d, "test").await.unwrap();
    let find = |all: Vec<DeploymentInfo>| all.into_iter().find(|x| x.name == name).unwrap();
    assert_eq!(find(store.deployments().await.unwrap()), d);
    assert!(d.rolling_out());

    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    store.add_members(&name, &[a.clone(), b.clone()], 0).await.unwrap();
    store.add_members(&name, &[b.clone(), c.clone()], 1).await.unwrap();
    let waves: Vec<(String, usize)> = store
        .members()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.deployment == name)
        .map(|m| (m.device, m.wave))
        .collect();
    assert_eq!(waves.len(), 3);
    assert!(waves.contains(&(b.clone(), 0)), "a device stays in the wave that took it: {waves:?}");

    store.start_wave(&name, 1, "test").await.unwrap();
    let now = find(store.deployments().await.unwrap());
    assert_eq!(now.wave, 1);
    assert!(now.wave_started_ms > 1000);
    store.abort_deployment(&name, "gate failed", "test").await.unwrap();
    let now = find(store.deployments().await.unwrap());
    assert_eq!(now.abort_reason.as_deref(), Some("gate failed"));
    assert!(!now.applies() && !now.rolling_out());
    assert!(matches!(store.abort_deployment(&name, "again", "test").await, Err(StoreError::Exists { .. })));
    assert!(matches!(store.abort_deployment(&unique("none"), "x", "test").await, Err(StoreError::NotFound { .. })));

    // Device `a`: scored 1 h with one alert, took the package, scored 2 h with one alert.
    let agg = |ms: i64| serde_json::json!({"start_ms": 0, "end_ms": ms, "scored": 10, "alarms": 1, "channels": []});
    let alert = serde_json::json!({"any": "alert body"});
    let update = |state: &str, dep: &str| serde_json::json!({"event": "update", "detail": {"deployment": dep, "sha256": sha, "state": state}});
    let batch = vec![
        incoming(&a, 1, 100, "telemetry", agg(3_600_000)),
        incoming(&a, 2, 110, "alerts", alert.clone()),
        incoming(&a, 3, 120, "events", update("downloading", &name)),
        incoming(&a, 4, 130, "events", update("active", &name)),
        incoming(&a, 5, 140, "alerts", alert.clone()),
        incoming(&a, 6, 150, "telemetry", agg(7_200_000)),
        incoming(&a, 7, 160, "events", update("downloading", "other")),
    ];
    let acked = [(a.clone(), 7)].into_iter().collect();
    store.commit(&batch, &acked).await.unwrap();
    // A redelivered older report changes nothing.
    store.commit(&batch[2..3], &acked).await.unwrap();
    let reports: Vec<_> = store.updates().await.unwrap().into_iter().filter(|u| u.device == a).collect();
    assert_eq!(reports.len(), 2, "one row per deployment: {reports:?}");
    let r = reports.iter().find(|u| u.deployment == name).unwrap();
    assert_eq!((r.state.as_str(), r.seq, r.first_seq, r.first_ts_ms, r.active_seq), ("active", 4, 3, 120, Some(4)));
    let after = store.alert_activity(&a, 4, u64::MAX, i64::MIN).await.unwrap();
    assert_eq!((after.alerts, after.scored_ms), (1, 7_200_000));
    let before = store.alert_activity(&a, 0, 3, 0).await.unwrap();
    assert_eq!((before.alerts, before.scored_ms), (1, 3_600_000));
    let too_old = store.alert_activity(&a, 0, 3, 105).await.unwrap();
    assert_eq!((too_old.alerts, too_old.scored_ms), (1, 0), "the window starts at since_ms");
}

on_every_backend!(rollout_records);

fn alert_body(ts_ms: i64) -> serde_json::Value {
    serde_json::json!({
        "model": {"name": "m", "version": "1", "release": 1}, "started_ms": ts_ms, "score": 2.0,
        "threshold": 1.5, "top_features": [["flow_mean", 4.2]], "channels": ["flow"], "window": [],
    })
}

/// The fleet's alerts in time order: by device, by time range, resumed after a cursor, and
/// found past a thousand other alerts (the query filters devices in rounds).
async fn alert_queries(url: &str) {
    use impeller_hub::store::{FleetFilter, Store};
    let store = Store::open(url).await.unwrap();
    let (a, b) = (unique("busy"), unique("quiet"));
    let mut batch: Vec<_> = (1..=1200).map(|i| incoming(&a, i, 10_000 + i as i64, "alerts", alert_body(1))).collect();
    batch.push(incoming(&b, 1, 10_600, "alerts", alert_body(2)));
    batch.push(incoming(&b, 2, 11_300, "alerts", alert_body(3)));
    batch.push(incoming(&b, 3, 11_400, "telemetry", serde_json::json!({"not": "an alert"})));
    let acked = [(a.clone(), 1200), (b.clone(), 3)].into_iter().collect();
    for chunk in batch.chunks(500) {
        store.commit(chunk, &acked).await.unwrap();
    }
    let only = |devices: &[&String]| Some(devices.iter().map(|d| d.to_string()).collect::<Vec<_>>());
    let quiet = store.alerts(&FleetFilter { devices: only(&[&b]), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(
        quiet.iter().map(|x| (x.seq, x.ts_ms, x.started_ms)).collect::<Vec<_>>(),
        [(1, 10_600, 2), (2, 11_300, 3)]
    );
    assert_eq!(quiet[0].top_features, [("flow_mean".to_string(), 4.2)]);

    let both = only(&[&a, &b]);
    let range = FleetFilter {
        devices: both.clone(),
        since_ms: Some(10_599),
        until_ms: Some(10_601),
        limit: 10,
        ..Default::default()
    };
    let got: Vec<(String, u64)> = store.alerts(&range).await.unwrap().into_iter().map(|x| (x.device, x.seq)).collect();
    assert_eq!(got, [(a.clone(), 599), (a.clone(), 600), (b.clone(), 1)], "ordered by time, then device");

    // Telemetry aggregates of one device by time range, for charts.
    let agg = |start: i64| {
        serde_json::json!({"start_ms": start, "end_ms": start + 60_000, "scored": 30, "alarms": 0, "channels": [
            {"name": "flow", "unit": "m3/h", "count": 30, "mean": 10.0, "min": 9.0, "max": 11.0, "std": 0.5, "last": 10.0}]})
    };
    let tele = [incoming(&b, 4, 20_000, "telemetry", agg(20_000)), incoming(&b, 5, 80_000, "telemetry", agg(80_000))];
    store.commit(&tele, &[(b.clone(), 5)].into_iter().collect()).await.unwrap();
    assert_eq!(store.aggregates(&b, 0, 100_000).await.unwrap().len(), 2);
    assert_eq!(store.aggregates(&b, 50_000, 100_000).await.unwrap()[0].start_ms, 80_000);

    let first = store.alerts(&FleetFilter { devices: both.clone(), limit: 700, ..Default::default() }).await.unwrap();
    let last = first.last().unwrap();
    let rest = FleetFilter {
        devices: both,
        after: Some((last.ts_ms, last.device.clone(), last.seq)),
        limit: 1000,
        ..Default::default()
    };
    let rest = store.alerts(&rest).await.unwrap();
    assert_eq!(first.len() + rest.len(), 1202, "every alert once across the two pages");
    assert!(
        first
            .iter()
            .chain(&rest)
            .zip(first.iter().chain(&rest).skip(1))
            .all(|(x, y)| (x.ts_ms, &x.device) <= (y.ts_ms, &y.device))
    );
}

on_every_backend!(alert_queries);

/// `GET /api/v1/alerts?site=…`: the site's devices' alerts, paged with `next_after`; a reader
/// token is enough, none is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_by_site_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, _) = embedded_sqlite(dir.path(), false);
    cfg.http_listen = Some("127.0.0.1:0".parse().unwrap());
    let hub = Hub::start(&cfg).await.unwrap();
    let (_, token) = hub.store.add_token("reader", impeller_hub::auth::Role::Read, "test").await.unwrap();
    for (id, site) in [("n1", "north"), ("n2", "north"), ("s1", "south")] {
        let tags = [("site".to_string(), site.to_string())].into_iter().collect();
        hub.store.add_device(id, &tags, "gw", "test").await.unwrap();
        let batch: Vec<_> = (1..=3).map(|i| incoming(id, i, 1000 * i as i64, "alerts", alert_body(0))).collect();
        hub.store.commit(&batch, &[(id.to_string(), 3)].into_iter().collect()).await.unwrap();
    }
    let client = reqwest::Client::new();
    let base = format!("http://{}/api/v1/alerts", hub.http_addr.unwrap());
    let get = |query: String, auth: bool| {
        let mut req = client.get(format!("{base}?{query}"));
        if auth {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), serde_json::from_slice::<serde_json::Value>(&resp.bytes().await.unwrap()).unwrap())
        }
    };
    let (status, page) = get("site=north&limit=4".into(), true).await;
    assert_eq!(status, 200, "{page}");
    let devices = |p: &serde_json::Value| {
        p["items"].as_array().unwrap().iter().map(|i| i["device"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(devices(&page), ["n1", "n2", "n1", "n2"]);
    let after = page["next_after"].as_str().unwrap().to_string();
    let (_, next) = get(format!("site=north&limit=4&after={after}"), true).await;
    assert_eq!(devices(&next), ["n1", "n2"]);
    assert!(next.get("next_after").is_none(), "{next}");
    let (_, south) = get("site=south&since_ms=2000".into(), true).await;
    assert_eq!(south["items"].as_array().unwrap().len(), 2);
    assert_eq!(get("site=north".into(), false).await.0, 401);
    assert_eq!(get("after=garbage".into(), true).await.0, 422);

    // A chart of n1's flow: ten one-minute aggregates into five points.
    let batch: Vec<_> = (0..10)
        .map(|i| {
            let body = serde_json::json!({"start_ms": i * 60_000, "end_ms": (i + 1) * 60_000, "scored": 30, "alarms": 0,
                "channels": [{"name": "flow", "unit": "m3/h", "count": 30, "mean": i as f64, "min": i as f64 - 1.0,
                              "max": i as f64 + 1.0, "std": 0.5, "last": i as f64}]});
            incoming("n1", 4 + i as u64, i * 60_000, "telemetry", body)
        })
        .collect();
    hub.store.commit(&batch, &[("n1".to_string(), 13)].into_iter().collect()).await.unwrap();
    let chart = |q: &str| {
        let req = client
            .get(format!("http://{}/api/v1/devices/{q}", hub.http_addr.unwrap()))
            .header("authorization", format!("Bearer {token}"));
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), serde_json::from_slice::<serde_json::Value>(&resp.bytes().await.unwrap()).unwrap())
        }
    };
    let (status, series) = chart("n1/telemetry?channel=flow&since_ms=0&until_ms=600000&points=5").await;
    assert_eq!(status, 200, "{series}");
    let points = series["points"].as_array().unwrap();
    assert_eq!(points.len(), 5);
    assert_eq!(
        (points[0]["mean"].as_f64(), points[0]["min"].as_f64(), points[0]["count"].as_u64()),
        (Some(0.5), Some(-1.0), Some(60))
    );
    assert_eq!(points[4]["max"].as_f64(), Some(10.0));
    assert_eq!(chart("nobody/telemetry?channel=flow").await.0, 404);
    assert_eq!(chart("n1/telemetry?channel=flow&points=0").await.0, 422);
    assert_eq!(chart("n1/telemetry?channel=flow&since_ms=5&until_ms=5").await.0, 422);
}

/// A device's sketches are judged against the reference inside the package of the model that
/// made them: the same distribution is stable, a shifted channel is drift and named, a model the
/// hub has no package for and an unreadable body are recorded as such, not retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_judged_against_the_packages_reference() {
    use impeller_core::package::{build, reference_sketch};
    use impeller_core::{Channel, Frame, TrainConfig, detector::DetectorConfig, detector::PcaConfig, train};

    let dir = tempfile::tempdir().unwrap();
    let (hub, token, signer) = api_hub(dir.path(), |_| {}).await;

    // Two channels that move together with a little noise; `offset` shifts the second.
    let frames = |n: usize, seed: u64, offset: f64| -> Vec<Frame> {
        let mut rng = impeller_core::rng::Rng::new(seed);
        (0..n)
            .map(|i| {
                let load = (i as f64 / 50.0).sin();
                let values = vec![10.0 + load + 0.1 * rng.next_f64(), 5.0 + 0.5 * load + 0.1 * rng.next_f64() + offset];
                Frame { ts_ms: 1000 * i as i64, values }
            })
            .collect()
    };
    let channels = [Channel::new("flow", "m3/h"), Channel::new("pressure", "bar")];
    let training = frames(3000, 1, 0.0);
    let model = train(&channels, &training, &TrainConfig::new(DetectorConfig::Pca(PcaConfig::default()))).unwrap();
    let spec = package_spec("drifty", 3);
    let pkg = build(&model, &training, &spec, &signer).unwrap();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/v1/packages", hub.http_addr.unwrap()))
        .header("authorization", format!("Bearer {token}"))
        .body(pkg)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);

    let sketch_msg = |seq: u64, name: &str, f: &[Frame]| {
        let body = serde_json::json!({
            "model": {"name": name, "version": "1", "release": 3}, "start_ms": f[0].ts_ms,
            "end_ms": f[f.len() - 1].ts_ms, "features": model.feature_names(), "sketch": reference_sketch(&model, f),
        });
        incoming("pump-d", seq, 1000 + seq as i64, "sketches", body)
    };
    let mut batch: Vec<_> = (1..=4).map(|i| sketch_msg(i, "drifty", &frames(942, 10 + i, 0.0))).collect();
    // The pressure moves by about four of its standard deviations.
    batch.extend((5..=8).map(|i| sketch_msg(i, "drifty", &frames(942, 10 + i, 1.5))));
    batch.push(sketch_msg(9, "never-uploaded", &frames(942, 30, 0.0)));
    batch.push(incoming("pump-d", 10, 1010, "sketches", serde_json::json!({"not": "a sketch"})));
    hub.store.commit(&batch, &[("pump-d".to_string(), 10)].into_iter().collect()).await.unwrap();

    let until = Instant::now() + Duration::from_secs(20);
    let reports = loop {
        let all = hub
            .store
            .drift_reports(&impeller_hub::store::FleetFilter { limit: 100, ..Default::default() })
            .await
            .unwrap();
        if all.len() == 10 || Instant::now() > until {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut by_seq: Vec<_> = reports.iter().map(|r| (r.seq, r.state.as_str(), r.max_wasserstein)).collect();
    by_seq.sort_by_key(|r| r.0);
    assert_eq!(by_seq.len(), 10, "{by_seq:?}");
    for (seq, state, psi) in &by_seq[..4] {
        assert_eq!(*state, "stable", "sketch {seq}: distance {psi}");
    }
    for (seq, state, _) in &by_seq[4..8] {
        assert_eq!(*state, "drift", "sketch {seq}: {by_seq:?}");
    }
    let shifted = reports.iter().find(|r| r.seq == 5).unwrap();
    assert!(shifted.features[0].feature.starts_with("pressure"), "{:?}", shifted.features);
    assert_eq!((by_seq[8].1, by_seq[9].1), ("no_reference", "unreadable"));
}

/// What the drift monitor keeps, on each backend: unjudged sketches, reports with their
/// features and monitor state, each (device, seq) once.
async fn drift_records(url: &str) {
    use impeller_core::drift::{DriftMonitor, FeatureDrift};
    use impeller_hub::store::{DriftReport, FleetFilter, Store};
    let store = Store::open(url).await.unwrap();
    let device = unique("drifting");
    let batch = vec![
        incoming(&device, 1, 100, "sketches", serde_json::json!({"any": 1})),
        incoming(&device, 2, 200, "sketches", serde_json::json!({"any": 2})),
    ];
    store.commit(&batch, &[(device.clone(), 2)].into_iter().collect()).await.unwrap();
    let ours =
        |all: Vec<(String, i64, String)>| all.into_iter().filter(|s| s.0 == device).map(|s| s.1).collect::<Vec<_>>();
    assert_eq!(ours(store.unjudged_sketches(100_000).await.unwrap()), [1, 2]);
    // Taken in turns: a device later in the alphabet has its first sketch before the
    // earlier device's second, so a limit under a backlog does not starve it.
    let later_device = format!("{device}~");
    let batch = [1u64, 2]
        .map(|seq| incoming(&later_device, seq, 100 * seq as i64, "sketches", serde_json::json!({"any": seq})));
    store.commit(&batch, &[(later_device.clone(), 2)].into_iter().collect()).await.unwrap();
    let pending = store.unjudged_sketches(100_000).await.unwrap();
    let at = |d: &str, seq: i64| pending.iter().position(|s| s.0 == d && s.1 == seq).unwrap();
    assert!(at(&later_device, 1) < at(&device, 2), "{:?}", (at(&later_device, 1), at(&device, 2)));

    let monitor = DriftMonitor { n: 1, sum: 0.5, ..DriftMonitor::default() };
    let report = DriftReport {
        device: device.clone(),
        seq: 1,
        start_ms: 0,
        end_ms: 100,
        model: "m".into(),
        model_version: "1".into(),
        count: 300,
        max_wasserstein: 1.25,
        max_psi: 3.5,
        page_hinkley: 0.5,
        state: "stable".into(),
        features: vec![FeatureDrift { feature: "flow.mean".into(), psi: 3.5, ks: 0.4, wasserstein: 1.25 }],
        monitor: monitor.clone(),
    };
    // The monitor's change of state goes to the audit trail with the report, once: here the
    // same report twice in one pass's transaction.
    let event = || Some(impeller_core::audit::AuditEvent::new(1, "hub", "drift.detected", &device));
    let twice = [(report.clone(), event()), (DriftReport { state: "drift".into(), ..report.clone() }, event())];
    store.put_drifts(&twice).await.unwrap();
    store.put_drifts(&[]).await.unwrap();
    let audited = store
        .audit_records(&impeller_hub::store::AuditFilter {
            subject: Some(device.clone()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audited.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(), ["drift.detected"]);
    assert_eq!(ours(store.unjudged_sketches(100_000).await.unwrap()), [2]);
    // A sketch beyond a gap waits for the gap: judged in order once the prefix is stored.
    let late = incoming(&device, 4, 400, "sketches", serde_json::json!({"any": 4}));
    store.commit(std::slice::from_ref(&late), &[(device.clone(), 2)].into_iter().collect()).await.unwrap();
    assert_eq!(ours(store.unjudged_sketches(100_000).await.unwrap()), [2]);
    let gap = incoming(&device, 3, 300, "telemetry", serde_json::json!({"any": 3}));
    store.commit(&[gap], &[(device.clone(), 4)].into_iter().collect()).await.unwrap();
    assert_eq!(ours(store.unjudged_sketches(100_000).await.unwrap()), [2, 4]);
    assert_eq!(store.drift_monitors().await.unwrap()[&(device.clone(), "m".to_string())].1, monitor);
    // The newest report's monitor is the one kept, whatever order reports are written in.
    let other = unique("other");
    let newer = DriftMonitor { n: 2, sum: 1.5, ..DriftMonitor::default() };
    let newer_report = DriftReport {
        device: other.clone(),
        seq: 2,
        monitor: newer.clone(),
        model_version: "2".into(),
        ..report.clone()
    };
    store.put_drifts(&[(newer_report, None)]).await.unwrap();
    store.put_drifts(&[(DriftReport { device: other.clone(), seq: 1, ..report.clone() }, None)]).await.unwrap();
    let kept = &store.drift_monitors().await.unwrap()[&(other, "m".to_string())];
    assert_eq!((kept.0.as_str(), &kept.1), ("2", &newer));
    let filter = FleetFilter { devices: Some(vec![device.clone()]), limit: 10, ..Default::default() };
    assert_eq!(
        store.drift_reports(&filter).await.unwrap(),
        std::slice::from_ref(&report),
        "stored once, as first written"
    );

    // Drift over time, bucketed in the database: a second model's report in the later half.
    let model = unique("model");
    let later = DriftReport {
        seq: 2,
        end_ms: 200,
        model: model.clone(),
        max_wasserstein: 4.0,
        state: "drift".into(),
        ..report
    };
    store.put_drifts(&[(later, None)]).await.unwrap();
    let buckets = store.drift_over_time(Some(100), Some(201), 2).await.unwrap();
    let ours: Vec<_> = buckets.into_iter().filter(|b| b.model == model).collect();
    let expected = impeller_hub::store::DriftBucket {
        model,
        start_ms: 151,
        end_ms: 201,
        reports: 1,
        devices: 1,
        drifting: 1,
        mean_wasserstein: 4.0,
        min_wasserstein: 4.0,
        max_wasserstein: 4.0,
    };
    assert_eq!(ours, [expected], "buckets of 51 ms from 100");
}

on_every_backend!(drift_records);
