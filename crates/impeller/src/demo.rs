//! `impeller demo`: the lifecycle on one machine, on embedded defaults. A hub (embedded broker,
//! SQLite, package folder), a simulated fleet with a real edge agent per pump (in this process,
//! each with its own outbox on disk, talking MQTT and HTTP to the hub like any other), one
//! model per manufacturer and site trained on the fleet's healthy history, registered with its
//! training data as a dataset, signed, uploaded and rolled out in waves through the API; then
//! faults begin and the hub's alerts are checked against the simulator's ground truth as they
//! arrive. It ends with the lineage from data to devices and the audit trail verified.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use impeller_core::package::{PackageSpec, Signer25519, build};
use impeller_hub::auth::Role;
use impeller_hub::store::{ArtifactStore, AuditStore, FleetStore, now_ms};
use impeller_hub::{Hub, HubConfig};
use impeller_sim::{MANUFACTURERS, Manufacturer, PumpPlan};
use serde_json::json;

use crate::InputError;
use crate::cli::DemoArgs;
use crate::commands::emit;
use crate::fleet::{
    Class, HOUR_MS, outcomes, plan, summarise, train_class, validate_class, write_fleet, write_summary,
};
use crate::progress::{self, say};
use crate::remote::HubClient;

/// Faults begin between these fractions of the live period: after the rollout, with time left
/// to catch the slow ones.
const FAULTS_BETWEEN: (f64, f64) = (0.3, 0.7);
/// The site whose heat wave (drift, not a fault) the retraining policies react to by default.
const DRIFT_SITE: &str = "gulf";

/// Simulated time since the fleet's start, as `+2h05m`.
fn sim_clock(ms: i64) -> String {
    let m = ms.max(0) / 60_000;
    format!("+{}h{:02}m", m / 60, m % 60)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn run(mut args: DemoArgs) -> anyhow::Result<()> {
    if args.fleet.site_drifts().is_empty() && !args.no_drift {
        args.fleet.heat_wave = Some(DRIFT_SITE.to_string());
    }
    if !(args.speed >= 1.0 && args.speed <= 10_000.0) {
        return Err(InputError(format!("--speed {}: must be 1 to 10000", args.speed)).into());
    }
    if !(args.train_hours >= 1.0 && args.train_hours <= 24.0 * 60.0) {
        return Err(InputError(format!("--train-hours {}: must be 1 to 1440", args.train_hours)).into());
    }
    let (dir, _temp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            if std::fs::read_dir(d)?.next().is_some() {
                return Err(InputError(format!("--dir {}: must be empty or new", d.display())).into());
            }
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("impeller-demo-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(demo(&args, &dir))
}

async fn demo(args: &DemoArgs, dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    // 1. Keys and hub.
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness from the operating system: {e}"))?;
    let signer = Signer25519::from_secret(secret);
    let public_key = dir.join("ops.public.json");
    std::fs::write(&public_key, signer.public_file().to_json())?;
    // The hub signs the packages its own retraining runs build with the same key.
    let pipeline_key = dir.join("ops.secret.json");
    crate::packages::write_private(&pipeline_key, &signer.secret_file().to_json())?;
    let mqtt_port = match args.mqtt_port {
        Some(p) => p,
        None => free_port()?,
    };
    let cfg = HubConfig {
        database: format!("sqlite:{}", dir.join("hub.db").display()),
        mqtt_listen: Some(format!("127.0.0.1:{mqtt_port}").parse()?),
        device_auth: true,
        http_listen: Some(
            args.http_listen.parse().map_err(|_| InputError(format!("--http-listen {}", args.http_listen)))?,
        ),
        packages_dir: dir.join("packages"),
        trusted_keys: vec![public_key.clone()],
        audit_key: Some(dir.join("audit.secret.json")),
        checkpoint_every: Duration::from_secs(10),
        pipeline_key: Some(pipeline_key),
        retrain_every: Duration::from_secs(1),
        alert_rate_every: Duration::from_secs(1),
        ..Default::default()
    };
    let hub = Hub::start(&cfg).await.context("starting the hub")?;
    let api_base = format!("http://{}", hub.http_addr.context("the hub has no API address")?);
    let (_, token) = hub.store.add_token("demo", Role::Admin, "demo").await?;
    let api = HubClient::new(&api_base, &token, None)?;
    say(format_args!("Impeller demo in {}", dir.display()))?;
    say(format_args!(
        "  hub: MQTT 127.0.0.1:{mqtt_port} (devices authenticate), API {api_base}/api/v1, SQLite, package signing key {}",
        signer.key_id()
    ))?;
    // The dashboard's link carries an operator token (it can record verdicts on alerts).
    let (_, dashboard_token) = hub.store.add_token("dashboard", Role::Operator, "demo").await?;
    let dashboard = format!("{api_base}/#token={dashboard_token}");
    say(format_args!("  dashboard: {dashboard}"))?;

    // 2. The fleet: healthy history for training, then the live period the agents replay.
    let train_ms = (args.train_hours * HOUR_MS as f64) as i64;
    // The simulated clock runs behind the hub's (it reaches the hub's start time as the replay
    // ends), so the windows the hub takes back from its own now, a retraining's recent data,
    // hold the simulated samples.
    let live_ms = (args.hours * HOUR_MS as f64) as i64;
    let fleet = plan(&args.fleet, now_ms() - live_ms, args.hours, FAULTS_BETWEEN)?;
    write_fleet(&fleet, &dir.join("fleet"), fleet.start_ms, fleet.end_ms)?;
    let faulty = fleet.pumps.iter().filter(|p| !p.faults.is_empty()).count();
    say(format_args!(
        "  fleet: {} pumps at {} sites from {} manufacturers; {} will develop a fault (ground truth: {})",
        fleet.pumps.len(),
        impeller_sim::SITES.len(),
        MANUFACTURERS.len(),
        faulty,
        dir.join("fleet/fleet.json").display()
    ))?;

    // 3. One model per class (manufacturer and site): its training data kept as a dataset at the
    // hub, the model registered (version and release from the registry), packaged, signed,
    // uploaded, and made the class's champion.
    let mut packages = Vec::new();
    let mut datasets = Vec::new();
    let classes = Class::all(&fleet, false);
    let bar = progress::bar(classes.len() as u64, "  training {bar:24} {pos}/{len} models  {wide_msg}");
    for class in classes {
        bar.set_message(class.name());
        let m = class.manufacturer;
        let t = Instant::now();
        // The history's last quarter (at most 6 h) is held out: the model's false alarms on it
        // are what the hub's alert-rate monitor holds each device to.
        let holdout_ms = (train_ms / 4).min(6 * HOUR_MS);
        let (model, frames) =
            train_class(&fleet, &class, fleet.start_ms - train_ms, fleet.start_ms - holdout_ms, args.fleet.seed)?;
        let validation = validate_class(&fleet, &class, &model, fleet.start_ms - holdout_ms, fleet.start_ms);
        let metrics = validation.metrics();
        let dataset = keep_dataset(&hub, &cfg, &class.name(), &model, &frames).await?;
        let model_sha = impeller_pipeline::sha256_hex(&model.to_json()?);
        let version = api
            .post_json(
                &format!("/models/{}/versions", class.name()),
                &json!({
                    "run_key": impeller_pipeline::sha256_hex(format!("demo {} {model_sha}", class.name()).as_bytes()),
                    "model_sha256": model_sha, "dataset_sha256": dataset,
                    "code_version": impeller_pipeline::CODE_VERSION, "tags": {"trained_by": "impeller demo"},
                    "metrics": metrics,
                }),
            )
            .await?;
        let (number, release) = (version["version"].as_u64().unwrap_or(1), version["release"].as_u64().unwrap_or(1));
        let created = now_ms();
        let spec = PackageSpec {
            name: class.name(),
            version: number.to_string(),
            release,
            target: target_of(&m),
            created_ms: created,
            expires_ms: created + 30 * 24 * HOUR_MS,
            pipeline_run: Some("demo".into()),
            metrics,
        };
        let bytes = build(&model, &frames, &spec, &signer)?;
        let uploaded = api.call("POST", "/packages", Some((bytes.clone(), "application/octet-stream"))).await?;
        let sha = uploaded["sha256"].as_str().context("upload answer without sha256")?.to_string();
        let finish = json!({"status": "ready", "packages": [{"target": spec.target, "sha256": sha}]});
        api.post_json(&format!("/models/{}/versions/{number}/finish", class.name()), &finish).await?;
        let alias = serde_json::to_vec(&json!({ "version": number }))?;
        api.call("PUT", &format!("/models/{}/aliases/champion", class.name()), Some((alias, "application/json")))
            .await?;
        datasets.push((class.name(), dataset));
        say(format_args!(
            "  trained {} version {number}: PCA on {} channels, {} frames ({} h of {} pumps, the next {} h held out: \
             {} false alarms), {:.1} s; package {} KiB, signed, sha256 {}…",
            spec.name,
            model.channels.len(),
            frames.len(),
            (train_ms - holdout_ms) as f64 / HOUR_MS as f64,
            class.training_pumps(&fleet).len(),
            holdout_ms as f64 / HOUR_MS as f64,
            validation.false_alarms,
            t.elapsed().as_secs_f64(),
            bytes.len() / 1024,
            &sha[..12]
        ))?;
        set_retrain_policy(&api, &class, &target_of(&m), args).await?;
        packages.push((class, sha));
        bar.inc(1);
    }

    // 4. Devices, provisioned through the API, and their agents.
    let mut agents = Vec::new();
    let bar = progress::bar(fleet.pumps.len() as u64, "  provisioning {bar:24} {pos}/{len} devices and agents");
    for p in &fleet.pumps {
        let m = Manufacturer::by_name(&p.manufacturer).context("unknown manufacturer")?;
        let creds = api
            .post_json(
                "/devices",
                &json!({"id": p.id, "tags": {"site": p.site, "manufacturer": m.name, "model": m.model}, "profile": target_of(&m)}),
            )
            .await?;
        let secret = creds["secret"].as_str().context("no secret in the answer")?;
        let config = agent_config(dir, p, &m, mqtt_port, &api_base, secret, &public_key, args.speed)?;
        agents.push(tokio::spawn(impeller_edge::agent::run(config)));
        bar.inc(1);
    }
    progress::done();
    let replay_started = Instant::now();
    say(format_args!(
        "  {} edge agents started, each replaying its pump at {}× real time through its manufacturer's adapter",
        agents.len(),
        args.speed
    ))?;

    // 5. Staged rollouts, one per class.
    let mut deployments = Vec::new();
    for (class, sha) in &packages {
        let dep = format!("{}-v1", class.name());
        let target = class.target_condition();
        api.post_json(
            "/deployments",
            &json!({
                "name": dep, "package_sha256": sha, "target_condition": target,
                "priority": 1,
                "rollout": {"waves": [10, 50, 100], "soak_s": args.soak_s, "max_failed": 0, "max_rolled_back": 0},
            }),
        )
        .await?;
        deployments.push(dep);
    }
    say(format_args!(
        "  {} rollouts (one per manufacturer and site) in waves of 10 %, 50 %, 100 %, {} s soak each",
        deployments.len(),
        args.soak_s
    ))?;

    let first_rollouts = deployments.len();

    // 6. Watch: rollout progress, alerts checked against the truth as they come, and the hub's
    // retraining loop at work.
    let live_wall_s = args.hours * 3600.0 / args.speed;
    let deadline = Instant::now() + Duration::from_secs_f64(live_wall_s + 5.0);
    let mut waves: BTreeMap<String, (String, u64, u64)> = BTreeMap::new();
    let mut last_rollout_line = String::new();
    let mut cursor: Option<String> = None;
    let mut drift_cursor: Option<String> = None;
    let mut drifting: BTreeMap<String, i64> = BTreeMap::new();
    let mut alerts: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let by_id: HashMap<&str, &PumpPlan> = fleet.pumps.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut last_status = Instant::now();
    let mut interrupted = false;
    // The technician's verdicts: confirmed faults, false alarms.
    let mut verdicts = (0usize, 0usize);
    let mut retraining = RetrainWatch::default();
    // The drift asked for (a heat wave by default), its sites, and when it began on the wall
    // clock: every site drift sets in as the faults' window opens.
    let drifts = args.fleet.site_drifts();
    let drift_name = format!("the {}", drifts.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(" and "));
    let drift_sites: Vec<&str> = drifts.iter().map(|(_, site)| *site).collect();
    let drift_onset = (!drifts.is_empty()).then(|| {
        let onset_s = ((args.hours * 3600.0) as u64 as f64 * FAULTS_BETWEEN.0).floor();
        (replay_started + Duration::from_secs_f64(onset_s / args.speed), (onset_s * 1000.0) as i64)
    });
    let stored = || hub.stats.stored.load(std::sync::atomic::Ordering::Relaxed);
    let sim_span = fleet.end_ms - fleet.start_ms;
    let bar = progress::bar(sim_span as u64 / 1000, "  {prefix} {bar:24} {percent:>3}%  {wide_msg}");
    while Instant::now() < deadline {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { interrupted = true; break }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        watch_retraining(&api, &mut deployments, &mut retraining, started).await?;
        watch_rollouts(&api, &deployments, &mut waves, started).await?;
        let (active, _) = running(&api).await?;
        let sim = ((replay_started.elapsed().as_secs_f64() * args.speed * 1000.0) as i64).min(sim_span);
        bar.set_position(sim as u64 / 1000);
        bar.set_prefix(format!("sim {}/{}", sim_clock(sim), sim_clock(sim_span)));
        bar.set_message(format!(
            "{} messages, {} alerts, {active}/{} devices on their model",
            stored(),
            alerts.values().map(Vec::len).sum::<usize>(),
            fleet.pumps.len()
        ));
        let line = rollout_line(&waves, active, fleet.pumps.len());
        if line != last_rollout_line {
            say(format_args!("  [{}] {line}", elapsed(started)))?;
            last_rollout_line = line;
        }
        let page = api.call("GET", &page_after("/alerts", &cursor), None).await?;
        for a in page["items"].as_array().into_iter().flatten() {
            let device = a["device"].as_str().unwrap_or_default();
            let at = a["started_ms"].as_i64().unwrap_or_default();
            cursor = Some(format!("{}/{}/{}", a["ts_ms"], device, a["seq"]));
            let seen = alerts.entry(device.to_string()).or_default();
            seen.push(at);
            let Some(p) = by_id.get(device) else { continue };
            let (verdict, caught) = judge(p, at);
            let technician = technician(&api, p, a, caught, &mut verdicts).await?;
            // A fault keeps alarming; say so once per pump. Every false alarm is news.
            if caught && seen.iter().filter(|&&t| p.faults.iter().any(|f| f.onset_ms <= t)).count() > 1 {
                continue;
            }
            let top = a["top_features"][0][0].as_str().unwrap_or("?");
            say(format_args!(
                "  [{}] sim {} alert on {device} ({}, {}), driven by {top}: {verdict}; {technician}",
                elapsed(started),
                sim_clock(at - fleet.start_ms),
                p.manufacturer,
                p.site
            ))?;
        }
        let page = api.call("GET", &page_after("/drift", &drift_cursor), None).await?;
        for r in page["items"].as_array().into_iter().flatten() {
            let device = r["device"].as_str().unwrap_or_default();
            let end = r["end_ms"].as_i64().unwrap_or_default();
            drift_cursor = Some(format!("{end}/{device}/{}", r["seq"]));
            if r["state"] != "drift" || drifting.contains_key(device) {
                continue;
            }
            drifting.insert(device.to_string(), end);
            let Some(p) = by_id.get(device) else { continue };
            let worst = &r["features"][0];
            say(format_args!(
                "  [{}] sim {} drift on {device} ({}, {}): {} moved {:.1} σ from training, {}",
                elapsed(started),
                sim_clock(end - fleet.start_ms),
                p.manufacturer,
                p.site,
                worst["feature"].as_str().unwrap_or("?"),
                worst["wasserstein"].as_f64().unwrap_or(0.0),
                drift_cause(p, end)
            ))?;
        }
        // Without a bar on screen (a log, a pipe), the same news as a line now and then.
        if !progress::visible() && last_status.elapsed() >= Duration::from_secs(10) {
            last_status = Instant::now();
            say(format_args!(
                "  [{}] sim {} of {}: {} messages stored, {} alerts",
                elapsed(started),
                sim_clock(sim),
                sim_clock(sim_span),
                stored(),
                alerts.values().map(Vec::len).sum::<usize>()
            ))?;
        }
    }
    // A retraining that began late may still be rolling out: give it time to finish.
    progress::spinner("  {spinner} the replay is over; waiting for the last rollouts and messages ({elapsed})");
    let give_up = Instant::now() + Duration::from_secs(90);
    while !interrupted && Instant::now() < give_up && !deployments.iter().all(|d| settled(&waves, d)) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        watch_retraining(&api, &mut deployments, &mut retraining, started).await?;
        watch_rollouts(&api, &deployments, &mut waves, started).await?;
    }
    // The agents may lag behind the replay on a busy machine: wait until what they send stops
    // growing, so the summary judges everything they scored.
    if !interrupted {
        let (mut last, mut still) = (stored(), Instant::now());
        let give_up = Instant::now() + Duration::from_secs(120);
        while still.elapsed() < Duration::from_secs(3) && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if stored() != last {
                (last, still) = (stored(), Instant::now());
            }
        }
        let page = api.call("GET", &page_after("/alerts", &cursor), None).await?;
        for a in page["items"].as_array().into_iter().flatten() {
            let device = a["device"].as_str().unwrap_or_default();
            alerts.entry(device.to_string()).or_default().push(a["started_ms"].as_i64().unwrap_or_default());
        }
    }
    progress::done();
    for a in &agents {
        a.abort();
    }

    // 7. The audit trail: sign what it holds now, then check it as an auditor would, through
    // the API with the hub's public key pinned.
    let audit_signer = impeller_hub::audit_signer(&dir.join("audit.secret.json"))?;
    hub.store.audit_checkpoint(&audit_signer).await?;
    let mut pinned = impeller_core::package::TrustStore::new();
    pinned.add(audit_signer.verifying_key());
    let audit = verify_audit(&api, &pinned).await;

    // 8. Lineage: from every dataset a version was built from (the fleet's history, and the
    // snapshots the hub retrained on) to the devices that run it.
    let mut sources: Vec<String> = Vec::new();
    for (class, _) in &datasets {
        let versions = api.call("GET", &format!("/models/{class}/versions?limit=1000"), None).await?;
        for v in versions["items"].as_array().into_iter().flatten() {
            let d = v["dataset_sha256"].as_str().unwrap_or_default().to_string();
            if !sources.contains(&d) {
                sources.push(d);
            }
        }
    }
    let mut lineage = (0, 0);
    for dataset in &sources {
        let l = api.call("GET", &format!("/lineage/datasets/{dataset}"), None).await?;
        lineage.0 += l["versions"].as_array().map_or(0, Vec::len);
        lineage.1 += l["devices"].as_array().map_or(0, Vec::len);
    }
    let (running_now, not_running) = running(&api).await?;
    let (rates, entered) = (
        api.call("GET", "/alert-rates?limit=1000", None).await?,
        api.call("GET", "/audit?action=alert_rate.elevated&limit=1000", None).await?,
    );
    let items = |v: &serde_json::Value| v["items"].as_array().cloned().unwrap_or_default();
    let rates = alert_rate_line(&items(&rates), &items(&entered), &by_id);
    let (per_version, triggered) = (
        api.call("GET", "/feedback", None).await?,
        api.call("GET", "/audit?action=retrain.triggered&limit=1000", None).await?,
    );
    let precision = precision_line(&items(&per_version), &items(&triggered));
    // The retrainings' timelines, from the drift's onset (or the replay's start without one).
    let (origin, origin_name) = match drift_onset {
        Some((at, sim_ms)) => (at, format!("{drift_name} began at sim {}", sim_clock(sim_ms))),
        None => (replay_started, "the replay began".to_string()),
    };
    let origin_ms = now_ms() - origin.elapsed().as_millis().min(i64::MAX as u128) as i64;
    let mut records = Vec::new();
    for action in TIMELINE_ACTIONS {
        let page = api.call("GET", &format!("/audit?action={action}&since_ms={origin_ms}&limit=1000"), None).await?;
        records.extend(items(&page));
    }
    let timelines = timeline_lines(&records, origin_ms);
    // When each rollout begun since the onset completed (a version rolled out before it, say on
    // feedback, says nothing of how fast the drift was answered).
    let begun: HashSet<&str> =
        records.iter().filter(|r| r["action"] == "deployment.created").filter_map(|r| r["subject"].as_str()).collect();
    let completed_ms: BTreeMap<String, i64> = records
        .iter()
        .filter(|r| r["action"] == "deployment.completed")
        .filter_map(|r| {
            Some((r["subject"].as_str().filter(|s| begun.contains(s))?.to_string(), r["time_ms"].as_i64()?))
        })
        .collect();

    // 9. Summary against the ground truth.
    let results = outcomes(&fleet, &alerts, fleet.start_ms, fleet.end_ms);
    let summary = summarise(&results);
    emit(|out| {
        writeln!(out)?;
        if interrupted {
            writeln!(out, "Stopped early (Ctrl-C); the summary covers what ran.")?;
        }
        writeln!(out, "Summary after {} ({} simulated hours):", elapsed(started), args.hours)?;
        write_summary(out, &summary)?;
        writeln!(out, "{}", rollout_line(&waves, running_now, fleet.pumps.len()))?;
        if !not_running.is_empty() {
            let more = not_running.len().saturating_sub(10);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            writeln!(out, "  not on their model: {}{more}", not_running[..not_running.len().min(10)].join(", "))?;
        }
        let explained = drifting
            .iter()
            .filter(|(d, end)| by_id.get(d.as_str()).is_some_and(|p| !drift_cause(p, **end).starts_with("no cause")))
            .count();
        writeln!(
            out,
            "drift: {} of {} devices flagged ({} with a cause in the ground truth: a fault or a site's drift)",
            drifting.len(),
            fleet.pumps.len(),
            explained
        )?;
        writeln!(out, "{}", class_drift_line(&retraining.farthest))?;
        writeln!(out, "{rates}")?;
        writeln!(out, "{precision}")?;
        writeln!(out, "messages stored at the hub: {}", stored())?;
        writeln!(
            out,
            "technician: {} alerts confirmed as faults, {} marked false alarms (each confirmed pump set aside from \
             its model's drift count)",
            verdicts.0, verdicts.1
        )?;
        writeln!(
            out,
            "registry: {} datasets ({} of the fleet's history, {} snapshots the hub retrained on) built {} versions, \
             which {} devices report running (impeller model lineage)",
            sources.len(),
            datasets.len(),
            sources.len() - datasets.len(),
            lineage.0,
            lineage.1
        )?;
        match &audit {
            Ok(s) => writeln!(
                out,
                "audit trail: {} records, chain intact, {} checkpoints verified with the hub's key{}",
                s.records,
                s.checkpoints_verified,
                match &args.dir {
                    Some(_) => format!(" ({})", dir.join("audit.public.json").display()),
                    None => String::new(),
                }
            )?,
            Err(e) => writeln!(out, "audit trail: BROKEN: {e}")?,
        }
        let aborted = deployments[first_rollouts..]
            .iter()
            .filter(|d| waves.get(*d).is_some_and(|(phase, _, _)| phase == "aborted"))
            .count();
        let onset = drift_onset.map(|(_, sim_ms)| (origin_ms, sim_ms));
        let drift = (!drift_sites.is_empty()).then_some((drift_name.as_str(), drift_sites.as_slice()));
        let line = retrain_line(&deployments[first_rollouts..], &waves, &completed_ms, aborted, onset, drift);
        writeln!(out, "{line}")?;
        if !timelines.is_empty() {
            writeln!(out, "retraining timelines (seconds after {origin_name}; from the audit trail):")?;
            for line in &timelines {
                writeln!(out, "{line}")?;
            }
        }
        Ok(())
    })?;
    if args.stay && !interrupted {
        say(format_args!("The hub stays up for the dashboard: {dashboard} (Ctrl-C to stop)"))?;
        tokio::signal::ctrl_c().await?;
    }
    // A retraining may still be training: it records its version through this runtime, so
    // let it finish before the runtime ends under it.
    if hub.runs.running() {
        say(format_args!("Waiting for the pipeline run in progress to finish (up to 2 min)"))?;
    }
    if !hub.runs.stop(Duration::from_secs(120)).await {
        say(format_args!("The pipeline run in progress did not finish within 2 min; it is cut off"))?;
    }
    if interrupted {
        return Ok(());
    }
    // The first rollouts must complete. A retrained version's rollout must end, complete or
    // aborted: an abort is the devices' trial refusing a version that did worse on them than
    // the model they run, and the rollout rolling them back — the safety net at work, which
    // the timelines show with its reason, not a failure of the system.
    let (first, retrained) = deployments.split_at(first_rollouts);
    let incomplete: Vec<&str> = first.iter().filter(|d| !complete(&waves, d)).map(String::as_str).collect();
    if !incomplete.is_empty() {
        anyhow::bail!("rollouts did not complete: {}", incomplete.join(", "));
    }
    let unsettled: Vec<&str> = retrained.iter().filter(|d| !settled(&waves, d)).map(String::as_str).collect();
    if !unsettled.is_empty() {
        anyhow::bail!("retrained versions' rollouts neither completed nor aborted: {}", unsettled.join(", "));
    }
    if let Err(e) = audit {
        anyhow::bail!("the audit trail does not verify: {e}");
    }
    if !drift_sites.is_empty()
        && !deployments[first_rollouts..].iter().any(|d| at_site(d, &drift_sites) && complete(&waves, d))
    {
        anyhow::bail!("{drift_name} at {} set off no retraining that reached its devices", drift_sites.join(", "));
    }
    if faulty > 0 && summary.classes.iter().all(|c| c.detected == 0) {
        anyhow::bail!("no fault was detected: the models or the uplink are not working");
    }
    Ok(())
}

/// Keeps a class's training frames as a dataset in the hub's datasets folder (one part: the
/// pumps' histories end to end, as the model was trained), recorded and audited; its hash.
async fn keep_dataset(
    hub: &Hub,
    cfg: &HubConfig,
    class: &str,
    model: &impeller_core::Model,
    frames: &[impeller_core::Frame],
) -> anyhow::Result<String> {
    use impeller_pipeline::dataset::{Dataset, Part};
    let part = Part { name: class.to_string(), frames: frames.to_vec(), labels: None };
    let dataset = Dataset::new(model.channels.clone(), vec![part])?;
    let dir = cfg.datasets_dir();
    let source = format!("impeller demo: {class}'s healthy history");
    let (sha, rows) = tokio::task::spawn_blocking(move || {
        let rows = dataset.parts[0].frames.len() as u64;
        dataset.write(&dir, &source).map(|sha| (sha, rows))
    })
    .await??;
    let record = impeller_hub::store::DatasetRecord {
        sha256: sha.clone(),
        selection: json!({"demo_class": class}),
        parts: 1,
        rows,
        created_by: "demo".into(),
        created_ms: now_ms(),
    };
    hub.store.put_dataset(&record).await?;
    Ok(sha)
}

/// Reads the whole audit trail through the API and checks it against the pinned key.
async fn verify_audit(
    api: &HubClient,
    pinned: &impeller_core::package::TrustStore,
) -> anyhow::Result<impeller_core::audit::ChainSummary> {
    let mut verifier = impeller_core::audit::ChainVerifier::new(Some(pinned));
    let mut after = 0u64;
    loop {
        let page = api.call("GET", &format!("/audit?limit=1000&after={after}"), None).await?;
        for item in page["items"].as_array().into_iter().flatten() {
            let record: impeller_core::audit::AuditRecord = serde_json::from_value(item.clone())?;
            verifier.push(&record)?;
            after = record.seq;
        }
        if page["next_after"].is_null() {
            return Ok(verifier.finish());
        }
    }
}

/// The devices whose latest report says their model is active, and the others as
/// `id (state: reason)` (`no report` for a device that has sent none).
async fn running(api: &HubClient) -> anyhow::Result<(usize, Vec<String>)> {
    let mut cursor = None;
    let (mut active, mut others) = (0, Vec::new());
    loop {
        let page = api.call("GET", &page_after("/fleet", &cursor), None).await?;
        for d in page["items"].as_array().into_iter().flatten() {
            match (d["update_state"].as_str(), d["update_reason"].as_str()) {
                (Some("active"), _) => active += 1,
                (state, reason) => others.push(format!(
                    "{} ({}{})",
                    d["id"].as_str().unwrap_or("?"),
                    state.unwrap_or("no report"),
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                )),
            }
        }
        cursor = page["next_after"].as_str().map(String::from);
        if cursor.is_none() {
            return Ok((active, others));
        }
    }
}

/// All rollouts in one line: how many are at which wave, and devices running their model.
fn rollout_line(waves: &BTreeMap<String, (String, u64, u64)>, active: usize, devices: usize) -> String {
    let mut at: BTreeMap<String, usize> = BTreeMap::new();
    for (phase, wave, _) in waves.values() {
        let label = match phase.as_str() {
            "rolling_out" => format!("at wave {wave}"),
            other => other.replace('_', " "),
        };
        *at.entry(label).or_default() += 1;
    }
    let parts: Vec<String> = at.into_iter().map(|(label, n)| format!("{n} {label}")).collect();
    format!("rollouts: {}; {active}/{devices} devices run their model", parts.join(", "))
}

/// The next page of a fleet query after `cursor` (from the start when there is none).
fn page_after(path: &str, cursor: &Option<String>) -> String {
    match cursor {
        Some(c) => format!("{path}?limit=1000&after={c}"),
        None => format!("{path}?limit=1000"),
    }
}

fn elapsed(started: Instant) -> String {
    let s = started.elapsed().as_secs();
    format!("{:02}:{:02}", s / 60, s % 60)
}

/// What an alert at `at_ms` on pump `p` means by the ground truth, and whether it caught a fault.
fn judge(p: &PumpPlan, at_ms: i64) -> (String, bool) {
    let minutes = |ms: i64| ms as f64 / 60_000.0;
    match p.faults.iter().filter(|f| f.onset_ms <= at_ms).max_by_key(|f| f.onset_ms) {
        Some(f) => (format!("{} began {:.0} min earlier, caught", f.kind.name(), minutes(at_ms - f.onset_ms)), true),
        None => match p.faults.first() {
            Some(f) => {
                (format!("false alarm ({} begins {:.0} min later)", f.kind.name(), minutes(f.onset_ms - at_ms)), false)
            }
            None => ("false alarm (this pump stays healthy)".to_string(), false),
        },
    }
}

/// What the ground truth says moved a pump's data by `at_ms`.
fn drift_cause(p: &PumpPlan, at_ms: i64) -> String {
    if let Some(d) = p.drifts.iter().find(|d| d.onset_ms <= at_ms) {
        let what = match d.kind {
            impeller_sim::DriftKind::AmbientShift { delta_c } => format!("the site's ambient moved {delta_c:+} °C"),
            impeller_sim::DriftKind::SensorAgeing { signal, .. } => format!("a {} sensor ageing", signal.channel().0),
            impeller_sim::DriftKind::OperatingPoint { speed_rpm } => format!("a new operating point ({speed_rpm} rpm)"),
        };
        return format!("{what} {:.0} min earlier", (at_ms - d.onset_ms) as f64 / 60_000.0);
    }
    match p.faults.iter().find(|f| f.onset_ms <= at_ms) {
        Some(f) => format!("{} began {:.0} min earlier", f.kind.name(), (at_ms - f.onset_ms) as f64 / 60_000.0),
        None => "no cause in the ground truth".to_string(),
    }
}

/// The hub's alert-rate judgements against the ground truth: the devices it found above their
/// model's validation rate at any time (from the audit trail), which of them had a fault, and
/// where things stand now.
fn alert_rate_line(
    now: &[serde_json::Value],
    entered: &[serde_json::Value],
    by_id: &HashMap<&str, &PumpPlan>,
) -> String {
    let state = |r: &serde_json::Value| r["state"].as_str().unwrap_or_default().to_string();
    let judged = now.iter().filter(|r| state(r) != "unjudged").count();
    let elevated = now.iter().filter(|r| state(r) == "elevated").count();
    let mut devices: Vec<&str> = entered.iter().filter_map(|e| e["subject"].as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    let faulty = devices.iter().filter(|d| by_id.get(**d).is_some_and(|p| !p.faults.is_empty())).count();
    format!(
        "alert rates: {} of {} devices rose above their model's validation false-alarm rate ({faulty} with a fault \
         in the ground truth); now {elevated} elevated, {judged} judged (impeller alert-rates)",
        devices.len(),
        by_id.len()
    )
}

/// Packages are built per device class: a manufacturer's gateways.
/// The site's technician answers each alert as the ground truth says (the demo's stand-in for an
/// inspection): a verdict with a work order through the feedback API. A confirmed fault becomes
/// an incident at the hub, which sets the pump aside when a retraining policy counts drift.
/// What was done, for the narrative.
async fn technician(
    api: &HubClient,
    p: &PumpPlan,
    alert: &serde_json::Value,
    confirmed: bool,
    verdicts: &mut (usize, usize),
) -> anyhow::Result<String> {
    let (device, seq) = (&p.id, &alert["seq"]);
    let work_order = format!("WO-{device}-{seq}");
    let verdict = if confirmed { "confirmed" } else { "false_alarm" };
    api.post_json(&format!("/alerts/{device}/{seq}/feedback"), &json!({"verdict": verdict, "work_order": work_order}))
        .await?;
    Ok(if confirmed {
        verdicts.0 += 1;
        format!("the technician confirms it ({work_order})")
    } else {
        verdicts.1 += 1;
        format!("the technician marks it a false alarm ({work_order})")
    })
}

/// Whether a deployment's rollout has ended, complete or aborted.
fn complete(waves: &BTreeMap<String, (String, u64, u64)>, deployment: &str) -> bool {
    waves.get(deployment).is_some_and(|(phase, _, _)| phase == "complete")
}

fn settled(waves: &BTreeMap<String, (String, u64, u64)>, deployment: &str) -> bool {
    waves.get(deployment).is_some_and(|(phase, _, _)| phase == "complete" || phase == "aborted")
}

/// Follows each deployment's rollout: its phase, wave and active devices.
async fn watch_rollouts(
    api: &HubClient,
    deployments: &[String],
    waves: &mut BTreeMap<String, (String, u64, u64)>,
    started: Instant,
) -> anyhow::Result<()> {
    for dep in deployments {
        if settled(waves, dep) {
            continue;
        }
        let status = api.call("GET", &format!("/deployments/{dep}"), None).await?;
        let phase = status["rollout"]["phase"].as_str().unwrap_or("-").to_string();
        if phase == "aborted" {
            let note = status["rollout"]["note"].as_str().unwrap_or("no reason given");
            say(format_args!("  [{}] {dep} aborted: {note}", elapsed(started)))?;
        }
        let wave = status["rollout"]["wave"].as_u64().unwrap_or(0);
        let active = status["counts"]["active"].as_u64().unwrap_or(0);
        waves.insert(dep.clone(), (phase, wave, active));
    }
    Ok(())
}

/// What the demo follows of the retraining loop: the last note told per model, and the farthest
/// each class's devices stood from their reference as a whole (`class_drift`) in the run.
#[derive(Default)]
struct RetrainWatch {
    notes: BTreeMap<String, String>,
    farthest: BTreeMap<String, (f64, String)>,
}

/// Tells the retraining loop's steps as the hub records them, and adds the deployments it makes
/// for retrained versions to those followed.
async fn watch_retraining(
    api: &HubClient,
    deployments: &mut Vec<String>,
    watch: &mut RetrainWatch,
    started: Instant,
) -> anyhow::Result<()> {
    let policies = api.call("GET", "/policies", None).await?;
    for p in policies["items"].as_array().into_iter().flatten() {
        let model = p["model"].as_str().unwrap_or_default();
        let state = &p["state"];
        if let (Some(d), Some(f)) =
            (state["class_drift"]["distance"].as_f64(), state["class_drift"]["feature"].as_str())
            && watch.farthest.get(model).is_none_or(|(far, _)| d > *far)
        {
            watch.farthest.insert(model.to_string(), (d, f.to_string()));
        }
        let notes = &mut watch.notes;
        let text = match state["stage"].as_str() {
            Some("running") => format!("retraining: {}", state["reason"].as_str().unwrap_or("")),
            _ => state["note"].as_str().unwrap_or_default().to_string(),
        };
        if !text.is_empty() && notes.get(model) != Some(&text) {
            say(format_args!("  [{}] {model} {text}", elapsed(started)))?;
            notes.insert(model.to_string(), text);
        }
    }
    let all = api.call("GET", "/deployments?limit=1000", None).await?;
    for d in all["items"].as_array().into_iter().flatten() {
        let name = d["name"].as_str().unwrap_or_default();
        if !name.is_empty() && !deployments.iter().any(|x| x == name) {
            deployments.push(name.to_string());
        }
    }
    Ok(())
}

/// The summary's line on alert precision from the technician's verdicts: the first versions
/// against the versions the hub retrained, and each retraining that feedback set off (its model's
/// precision before and after).
fn precision_line(per_version: &[serde_json::Value], triggered: &[serde_json::Value]) -> String {
    let count = |v: &serde_json::Value| (v["confirmed"].as_u64().unwrap_or(0), v["false_alarms"].as_u64().unwrap_or(0));
    let share =
        |(c, f): (u64, u64)| if c + f == 0 { "-".to_string() } else { format!("{:.2}", c as f64 / (c + f) as f64) };
    let (mut first, mut later) = ((0, 0), (0, 0));
    for v in per_version {
        let (c, f) = count(v);
        let sum = if v["model_version"] == "1" { &mut first } else { &mut later };
        *sum = (sum.0 + c, sum.1 + f);
    }
    let mut line = format!(
        "alert precision: first versions {} ({} of {} verdicts confirmed), retrained versions {} ({} of {})",
        share(first),
        first.0,
        first.0 + first.1,
        share(later),
        later.0,
        later.0 + later.1
    );
    let by_feedback: Vec<&str> = triggered
        .iter()
        .filter(|r| r["details"]["reason"].as_str().is_some_and(|s| s.starts_with("alert precision")))
        .filter_map(|r| r["subject"].as_str())
        .collect();
    if !by_feedback.is_empty() {
        let changes: Vec<String> = by_feedback
            .iter()
            .map(|model| {
                let of = |first: bool| {
                    per_version
                        .iter()
                        .filter(|v| v["model"] == *model && (v["model_version"] == "1") == first)
                        .map(count)
                        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
                };
                format!("{model} {} → {}", share(of(true)), share(of(false)))
            })
            .collect();
        line.push_str(&format!("; {} retrained on feedback: {}", by_feedback.len(), changes.join(", ")));
    }
    line
}

/// Whether a deployment (`CLASS-SITE-vN`, a class being a manufacturer at a site) is at one of
/// these sites.
fn at_site(deployment: &str, sites: &[&str]) -> bool {
    sites.iter().any(|s| deployment.contains(&format!("-{s}-v")))
}

/// The summary's line on retraining: which versions the hub made and rolled out, at the
/// drift's sites (`drift`: its name, "the heat wave", and sites) or elsewhere, and how long
/// after the drift began (`onset`: wall clock in ms, sim time) each of its sites' versions
/// rolled out since then was active on all its devices —
/// when the hub recorded its rollout complete (`completed_ms`, from the audit trail), not when
/// the demo's loop, busy with a thousand pumps' alerts, next looked (seen 30 s later). What set
/// each off, and why one aborted: the timelines.
fn retrain_line(
    retrained: &[String],
    waves: &BTreeMap<String, (String, u64, u64)>,
    completed_ms: &BTreeMap<String, i64>,
    aborted: usize,
    onset: Option<(i64, i64)>,
    drift: Option<(&str, &[&str])>,
) -> String {
    if retrained.is_empty() {
        return "retraining: none triggered".into();
    }
    let (by_drift, by_faults): (Vec<&String>, Vec<&String>) =
        retrained.iter().partition(|d| drift.is_some_and(|(_, sites)| at_site(d, sites)));
    let done = |ds: &[&String]| ds.iter().filter(|d| complete(waves, d)).count();
    let refused = if aborted > 0 { format!(", {aborted} aborted") } else { String::new() };
    let mut line = format!(
        "retraining: {} versions retrained and rolled out, {} complete{refused}: {} at {}'s site",
        retrained.len(),
        done(&by_drift) + done(&by_faults),
        by_drift.len(),
        drift.map_or("the drift", |(name, _)| name),
    );
    let delays: Vec<f64> =
        by_drift.iter().filter_map(|d| Some((completed_ms.get(*d)? - onset?.0) as f64 / 1000.0)).collect();
    if let (Some(lo), Some(hi), Some((_, sim_ms))) =
        (delays.iter().copied().reduce(f64::min), delays.iter().copied().reduce(f64::max), onset)
    {
        let span = if hi - lo < 0.5 { format!("{lo:.0} s") } else { format!("{lo:.0}–{hi:.0} s") };
        line += &format!(
            " (those rolled out since it began at sim {}: active on all their devices {span} after it)",
            sim_clock(sim_ms)
        );
    }
    if !by_faults.is_empty() {
        let names: Vec<&str> = by_faults.iter().map(|d| d.split("-v").next().unwrap_or(d)).collect();
        line += &format!(", {} elsewhere ({})", by_faults.len(), names.join(", "));
    }
    line
}

/// The summary's line on each class's devices as a whole: the farthest their pooled sketches
/// stood from the reference of the version they ran, and the distance that retrains.
fn class_drift_line(farthest: &BTreeMap<String, (f64, String)>) -> String {
    if farthest.is_empty() {
        return "class drift: no class had enough fresh sketches to pool".into();
    }
    let mut by_distance: Vec<(&String, &(f64, String))> = farthest.iter().collect();
    by_distance.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    let each: Vec<String> = by_distance.iter().map(|(m, (d, f))| format!("{m} {d:.2} ({f})")).collect();
    format!(
        "class drift (the farthest each class's devices, pooled, stood from their reference, in σ; retraining at \
         {CLASS_DRIFT:.2}): {}",
        each.join(", ")
    )
}

/// The audit actions a retraining's timeline is read from.
const TIMELINE_ACTIONS: [&str; 7] = [
    "drift.detected",
    "retrain.triggered",
    "dataset.created",
    "pipeline.run.finished",
    "deployment.created",
    "deployment.completed",
    "deployment.aborted",
];

/// One line per retraining triggered at or after `since_ms`, read from the audit trail's
/// records of [`TIMELINE_ACTIONS`]: seconds from `since_ms` (the drift's onset) to the
/// model's first device in drift, the trigger, the snapshot, the trained version, the rollout's
/// start and its completion (or its abort, and why). Where the time of a drift-triggered
/// retraining goes.
fn timeline_lines(records: &[serde_json::Value], since_ms: i64) -> Vec<String> {
    let at = |r: &serde_json::Value| r["time_ms"].as_i64().unwrap_or(i64::MIN);
    let after = |from: i64, test: &dyn Fn(&serde_json::Value) -> bool| {
        records.iter().filter(|r| at(r) >= from && test(r)).map(at).min()
    };
    let secs = |t: Option<i64>| t.map_or("-".to_string(), |t| format!("+{:.0} s", (t - since_ms) as f64 / 1000.0));
    let mut lines = Vec::new();
    for r in records.iter().filter(|r| r["action"] == "retrain.triggered" && at(r) >= since_ms) {
        let model = r["subject"].as_str().unwrap_or_default();
        let triggered = at(r);
        let actor = format!("retrain:{model}");
        let first_drift = after(since_ms, &|r| r["action"] == "drift.detected" && r["details"]["model"] == model);
        let snapshot = after(triggered, &|r| r["action"] == "dataset.created" && r["actor"] == actor.as_str());
        let trained = after(triggered, &|r| r["action"] == "pipeline.run.finished" && r["subject"] == model);
        // The version's rollouts, one per target: named `{model}-v{version}-{target}`.
        let created = |prefix: &str, r: &serde_json::Value| {
            at(r) >= triggered
                && r["action"] == "deployment.created"
                && r["subject"].as_str().is_some_and(|s| s.starts_with(prefix))
        };
        let first_rollout = records.iter().filter(|r| created(&format!("{model}-v"), r)).min_by_key(|r| at(r));
        let version = first_rollout.and_then(|r| {
            let rest = r["subject"].as_str()?.strip_prefix(&format!("{model}-v"))?;
            Some(format!("{model}-v{}-", rest.split('-').next()?))
        });
        let (rollout, end) = match &version {
            None => (None, "complete -".to_string()),
            Some(prefix) => {
                let ours =
                    |r: &serde_json::Value| r["subject"].as_str().is_some_and(|s| s.starts_with(prefix.as_str()));
                let started = records.iter().filter(|r| created(prefix, r)).count();
                let done: Vec<i64> =
                    records.iter().filter(|r| r["action"] == "deployment.completed" && ours(r)).map(at).collect();
                // A version with packages for several targets completes when its last rollout does.
                let complete = (done.len() >= started).then(|| done.into_iter().max()).flatten();
                let aborted = records.iter().find(|r| r["action"] == "deployment.aborted" && ours(r));
                let end = match aborted {
                    Some(r) => format!(
                        "aborted {} ({})",
                        secs(Some(at(r))),
                        r["details"]["reason"].as_str().unwrap_or("no reason given")
                    ),
                    None => format!("complete {}", secs(complete)),
                };
                (first_rollout.map(at), end)
            }
        };
        lines.push(format!(
            "  {model} ({}): first device in drift {}, triggered {}, snapshot {}, trained {}, rollout {}, {}",
            r["details"]["reason"].as_str().unwrap_or("?"),
            secs(first_drift),
            secs(Some(triggered)),
            secs(snapshot),
            secs(trained),
            secs(rollout),
            end
        ));
    }
    lines
}

/// How far (training σ, worst feature) a class's devices' latest sketches, pooled, must stand
/// from their reference to retrain it. A healthy class is not at zero: the reference spans whole
/// days and a pool is one time of day, so a feature whose spread is mostly the daily swing (the
/// bearing temperature) stands up to √2 σ off at dawn: 1.06 to 1.39 σ in a drift-free run of
/// 1,000 pumps, where a trial at 1.0 retrained every class at the start (docs/BENCHMARKS.md).
const CLASS_DRIFT: f64 = 2.0;

/// How many points of false alarms on the held-out rows a retrained version may add to the
/// champion's, on any pump.
const RETRAIN_MAX_FAR_INCREASE: f64 = 0.05;

/// The share of a retrained version's devices that may refuse it in shadow scoring or roll it
/// back by themselves (keeping their running model) before its rollout aborts: one in twenty,
/// as the holdout gate allows. With none, one pump whose fault was not yet confirmed, where the
/// version alarmed sooner than the running model, aborted a class's rollout (acme-permian at
/// 1,000 pumps: "25.0 % of frames against 4.9 %", a bearing wear under way; docs/BENCHMARKS.md).
const RETRAIN_MAX_REFUSED: f64 = 0.05;

/// Each class's model gets a retraining policy: when half of its devices (those under a
/// confirmed fault set aside) have been in drift for two checks running, or their sketches
/// pooled stand `CLASS_DRIFT` from the reference as long — a site-wide shift, which faults, one
/// pump at a time, do not make; the pool sees it before most pumps do on their own — or when
/// its alerts' precision falls, the hub snapshots
/// their samples over the whole run (confirmed faults left out), trains the same detector on
/// them, and promotes and rolls out the new version by itself (the demo has nobody to approve;
/// a site would say `manual`). The window holds no labelled data: the held-out fifth gives the
/// version its false-alarm rate, held to the champion's on the same rows. Two a day: with one,
/// a retraining on feedback just as the heat wave began used up acme-gulf's day at 1,000 pumps
/// and its heat-wave alarms stayed (docs/BENCHMARKS.md). A rollout completes when every device
/// runs the version (`min_active = 1.0`; the default, nine in ten, would let the summary call a
/// version active on all its devices before the last tenth had it) but those that refused it or
/// rolled it back, [`RETRAIN_MAX_REFUSED`] of them at most.
async fn set_retrain_policy(api: &HubClient, class: &Class, target: &str, args: &DemoArgs) -> anyhow::Result<()> {
    let policy = format!(
        "version = 1\n[triggers]\ndrift_share = 0.5\nclass_drift = {CLASS_DRIFT}\ndrift_rounds = 2\nmin_precision = 0.5\nmin_verdicts = 5\n\
         [data]\ncondition = {}\nhours = {}\n\
         exclude_incidents = true\ninclude_champion_data = true\n[approval]\npromote = \"auto\"\nrollout = \"auto\"\n[budget]\nper_day = 2\n\
         [rollout]\nwaves = [50, 100]\nsoak_s = {}\nmin_active = 1.0\nmax_failed = {RETRAIN_MAX_REFUSED}\nmax_rolled_back = {RETRAIN_MAX_REFUSED}\n",
        toml::Value::String(class.target_condition()),
        args.hours + 1.0,
        args.soak_s
    );
    let profile_file = format!("{target}.toml");
    let mut spec = toml::Table::new();
    spec.insert("version".into(), 1.into());
    spec.insert("model".into(), class.name().into());
    spec.insert("targets".into(), toml::Value::Array(vec![profile_file.clone().into()]));
    // The last fifth of each device's snapshot is held out: the new version's false alarms there
    // are the rate its devices are then held to.
    let data: toml::Table = toml::from_str("dataset = \"set by each retraining\"\ntrain = [\"*\"]\nholdout = 0.2")?;
    spec.insert("data".into(), data.into());
    // Nor may it alarm there, on any pump, much more than the champion: its rollout would only
    // be refused by that pump's own trial.
    spec.insert(
        "gates".into(),
        toml::from_str::<toml::Table>(&format!("max_far_increase = {RETRAIN_MAX_FAR_INCREASE}"))?.into(),
    );
    spec.insert("train".into(), toml::Value::try_from(crate::fleet::class_train_config())?);
    let profile = format!(
        "version = 1\nname = {}\ndescription = \"the demo's gateways\"\narch = \"aarch64\"\nruntime = \"native\"\n\
         storage_bytes = 4194304\nmemory_bytes = 8388608\nlatency_budget_us = 1000\nslowdown = 8.0\n",
        toml::Value::String(target.to_string())
    );
    let body = json!({"policy": policy, "spec": toml::to_string(&spec)?, "profiles": { profile_file: profile }});
    api.call(
        "PUT",
        &format!("/models/{}/policy", class.name()),
        Some((serde_json::to_vec(&body)?, "application/json")),
    )
    .await
    .with_context(|| format!("setting {}'s retraining policy", class.name()))?;
    Ok(())
}

fn target_of(m: &Manufacturer) -> String {
    format!("{}-gateway", m.name)
}

#[allow(clippy::too_many_arguments)]
fn agent_config(
    dir: &Path,
    p: &PumpPlan,
    m: &Manufacturer,
    mqtt_port: u16,
    api: &str,
    secret: &str,
    public_key: &Path,
    speed: f64,
) -> anyhow::Result<impeller_edge::config::Config> {
    let data_dir: PathBuf = dir.join("agents").join(&p.id);
    #[derive(serde::Serialize)]
    struct Section {
        adapter: impeller_core::adapter::AdapterConfig,
    }
    let adapter = toml::to_string(&Section { adapter: m.adapter() })?;
    let quote = |s: String| toml::Value::String(s).to_string();
    let text = format!(
        r#"version = 1
[device]
id = "{id}"
target = "{target}"
data_dir = {data_dir}
[hub]
broker = "mqtt://127.0.0.1:{mqtt_port}"
api = "{api}"
username = "{id}"
password = "{secret}"
ack_timeout_s = 10
[models]
trusted_keys = [{public_key}]
health_window_s = 30
[outbox]
[uplink]
# Half the frames go up for retraining (a site on a thin link keeps the default tenth).
raw_every = 2
[source]
kind = "csv"
path = {csv}
speed = {speed}
rebase_time = false
{adapter}"#,
        id = p.id,
        target = target_of(m),
        data_dir = quote(data_dir.display().to_string()),
        public_key = quote(public_key.display().to_string()),
        csv = quote(dir.join("fleet").join(format!("{}.csv", p.id)).display().to_string()),
    );
    impeller_edge::config::Config::parse(&text, &format!("demo agent {}", p.id)).map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retraining_timeline_runs_from_the_first_drift_to_the_last_rollout_of_its_version() {
        let rec = |t: i64, action: &str, actor: &str, subject: &str, details: serde_json::Value| json!({"time_ms": t, "action": action, "actor": actor, "subject": subject, "details": details});
        let records = [
            rec(500, "drift.detected", "hub", "p-1", json!({"model": "a"})),
            rec(1_500, "drift.detected", "hub", "p-9", json!({"model": "b"})),
            rec(2_000, "drift.detected", "hub", "p-2", json!({"model": "a"})),
            rec(11_000, "retrain.triggered", "hub", "a", json!({"reason": "drift on 9 of 10 devices"})),
            rec(12_000, "dataset.created", "retrain:b", "d0", json!({})),
            rec(13_000, "dataset.created", "retrain:a", "d1", json!({})),
            rec(20_000, "pipeline.run.finished", "retrain:a", "a", json!({})),
            rec(21_000, "deployment.created", "hub", "a-v2-x86", json!({})),
            rec(21_000, "deployment.created", "hub", "a-v2-arm-v7", json!({})),
            rec(40_000, "deployment.completed", "hub", "a-v2-arm-v7", json!({})),
            rec(51_000, "deployment.completed", "hub", "a-v2-x86", json!({})),
            // A later version's rollout is not this retraining's.
            rec(60_000, "deployment.completed", "hub", "a-v3-x86", json!({})),
            rec(70_000, "retrain.triggered", "hub", "b", json!({"reason": "alert precision 0.20"})),
        ];
        assert_eq!(
            timeline_lines(&records, 1_000),
            [
                "  a (drift on 9 of 10 devices): first device in drift +1 s, triggered +10 s, snapshot +12 s, \
                 trained +19 s, rollout +20 s, complete +50 s",
                "  b (alert precision 0.20): first device in drift +0 s, triggered +69 s, snapshot -, trained -, \
                 rollout -, complete -",
            ]
        );
        // A rollout still under way has no completion; an aborted one says why.
        assert!(timeline_lines(&records[..10], 1_000)[0].ends_with("rollout +20 s, complete -"));
        let mut aborted = records[..10].to_vec();
        aborted.push(rec(45_000, "deployment.aborted", "hub", "a-v2-x86", json!({"reason": "1 of 5 rolled back"})));
        assert!(timeline_lines(&aborted, 1_000)[0].ends_with("rollout +20 s, aborted +44 s (1 of 5 rolled back)"));
    }

    #[test]
    fn the_retraining_line_counts_any_site_drift_as_the_drift_not_as_elsewhere() {
        let retrained = ["acme-gulf-v2-x86".to_string(), "kestrel-permian-v3-x86".to_string()];
        let waves: BTreeMap<String, (String, u64, u64)> =
            retrained.iter().map(|d| (d.clone(), ("complete".to_string(), 2, 2))).collect();
        let completed: BTreeMap<String, i64> = [("acme-gulf-v2-x86".to_string(), 70_000)].into();
        let season = Some(("the warming season", &["gulf"][..]));
        assert_eq!(
            retrain_line(&retrained, &waves, &completed, 0, Some((4_000, 6_480_000)), season),
            "retraining: 2 versions retrained and rolled out, 2 complete: 1 at the warming season's site (those \
             rolled out since it began at sim +1h48m: active on all their devices 66 s after it), 1 elsewhere \
             (kestrel-permian)"
        );
        let none = retrain_line(&retrained, &waves, &completed, 0, None, None);
        assert!(none.ends_with("0 at the drift's site, 2 elsewhere (acme-gulf, kestrel-permian)"), "{none}");
    }

    #[test]
    fn the_precision_line_sets_first_versions_against_retrained_ones_and_names_feedback_retrainings() {
        let per_version = [
            json!({"model": "a", "model_version": "1", "confirmed": 1, "false_alarms": 3}),
            json!({"model": "a", "model_version": "2", "confirmed": 4, "false_alarms": 0}),
            json!({"model": "b", "model_version": "1", "confirmed": 2, "false_alarms": 0}),
        ];
        let triggered = [
            json!({"subject": "a", "details": {"reason": "alert precision 0.25 from 4 verdicts is below 0.50"}}),
            json!({"subject": "b", "details": {"reason": "drift on 2 of 2 devices (100 %) for 2 checks in a row"}}),
        ];
        assert_eq!(
            precision_line(&per_version, &triggered),
            "alert precision: first versions 0.50 (3 of 6 verdicts confirmed), retrained versions 1.00 (4 of 4); \
             1 retrained on feedback: a 0.25 → 1.00"
        );
        assert_eq!(
            precision_line(&[], &[]),
            "alert precision: first versions - (0 of 0 verdicts confirmed), retrained versions - (0 of 0)"
        );
    }
}
