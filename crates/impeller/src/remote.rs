//! Commands that act on a running hub through its REST API, as any other client would:
//! `impeller package upload`, `impeller device …`, `impeller deploy …`, `impeller alerts` and
//! `impeller drift`.

use std::io::Write;

use anyhow::Context;
use serde_json::{Value, json};

use crate::InputError;
use crate::cli::{AlertRateArgs, ApiArgs, DeployCommand, DeviceCommand, FleetQueryArgs};

/// A hub's API with an operator's token.
#[derive(Debug, Clone)]
pub struct HubClient {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl HubClient {
    /// With `ca_cert`, a hub's certificate chaining to that CA (PEM) is trusted too.
    pub fn new(base: &str, token: &str, ca_cert: Option<&std::path::Path>) -> anyhow::Result<HubClient> {
        let mut client = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).with_context(|| format!("reading the CA certificate {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
            client = client.tls_certs_merge(certs);
        }
        Ok(HubClient {
            client: client.build()?,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// Sends a request; a problem document from the hub becomes an error that quotes it.
    pub async fn call(&self, method: &str, path: &str, body: Option<(Vec<u8>, &str)>) -> anyhow::Result<Value> {
        let bytes = self.raw(method, path, body).await?;
        Ok(if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) })
    }

    /// A GET whose 404 means "there is none".
    pub async fn get_opt(&self, path: &str) -> anyhow::Result<Option<Value>> {
        match self.call("GET", path, None).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.downcast_ref::<HubRefused>().is_some_and(|h| h.status == 404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The body of a successful answer as bytes (a package file).
    pub async fn raw(&self, method: &str, path: &str, body: Option<(Vec<u8>, &str)>) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}/api/v1{path}", self.base);
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.client.request(method, &url).bearer_auth(&self.token);
        if let Some((bytes, content_type)) = body {
            req = req.header("content-type", content_type).body(bytes);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the hub at {url}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.with_context(|| format!("reading the answer from {url}"))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let detail = value["detail"].as_str().unwrap_or("no detail");
        let code = value["code"].as_str().unwrap_or("unknown");
        let message = format!("the hub refused ({status}, {code}): {detail}");
        Err(HubRefused { status: status.as_u16(), message }.into())
    }

    /// POSTs a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call("POST", path, Some((serde_json::to_vec(body)?, "application/json"))).await
    }
}

/// The hub answered with an error status. A client error other than 401 and 403 means what
/// the caller sent was wrong: exit code 3, like other bad input.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HubRefused {
    pub status: u16,
    pub message: String,
}

impl HubRefused {
    pub fn is_input(&self) -> bool {
        (400..500).contains(&self.status) && self.status != 401 && self.status != 403
    }
}

/// The same, for commands that run once and block.
pub(crate) struct Api {
    rt: tokio::runtime::Runtime,
    hub: HubClient,
}

impl Api {
    pub(crate) fn new(args: &ApiArgs) -> anyhow::Result<Api> {
        if args.token.is_empty() {
            return Err(
                InputError("no API token: pass --token or set IMPELLER_TOKEN (impeller token create)".into()).into()
            );
        }
        Ok(Api {
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build()?,
            hub: HubClient::new(&args.hub, &args.token, args.ca_cert.as_deref())?,
        })
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<(Vec<u8>, &str)>) -> anyhow::Result<Value> {
        self.rt.block_on(self.hub.call(method, path, body))
    }

    pub(crate) fn get_opt(&self, path: &str) -> anyhow::Result<Option<Value>> {
        self.rt.block_on(self.hub.get_opt(path))
    }

    pub(crate) fn raw(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        self.rt.block_on(self.hub.raw("GET", path, None))
    }
}

/// `impeller package upload FILE`: prints the package's SHA-256, which deployments name.
pub fn upload(file: &std::path::Path, api: &ApiArgs, json_out: bool) -> anyhow::Result<()> {
    let api = Api::new(api)?;
    let sha = upload_with(&api, file)?;
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{}", json!({ "sha256": sha }))?;
    } else {
        writeln!(out, "{sha}")?;
    }
    Ok(())
}

fn upload_with(api: &Api, file: &std::path::Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(file).map_err(|e| InputError(format!("{}: {e}", file.display())))?;
    let info = api.call("POST", "/packages", Some((bytes, "application/octet-stream")))?;
    info["sha256"].as_str().map(String::from).context("the hub's answer has no sha256")
}

pub fn deploy(cmd: DeployCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        DeployCommand::Create { name, package, target, priority, rollout, api } => {
            let api = Api::new(&api)?;
            // A SHA-256 names an uploaded package; anything else is a file to upload first.
            let sha = if impeller_core::deploy::valid_sha256(&package) {
                package
            } else {
                upload_with(&api, std::path::Path::new(&package))?
            };
            let mut body =
                json!({"name": name, "package_sha256": sha, "target_condition": target, "priority": priority});
            let staged = !rollout.waves.is_empty();
            if staged {
                body["rollout"] = json!({
                    "waves": rollout.waves,
                    "soak_s": rollout.soak,
                    "min_active": rollout.min_active,
                    "max_failed": rollout.max_failed,
                    "max_rolled_back": rollout.max_rolled_back,
                    "max_alert_rate_increase": rollout.max_alert_rate_increase,
                });
            }
            api.call("POST", "/deployments", Some((serde_json::to_vec(&body)?, "application/json")))?;
            writeln!(out, "deployment {name} created: package {sha}, target {target}, priority {priority}")?;
            if staged {
                let waves: Vec<String> = rollout.waves.iter().map(|w| format!("{w} %")).collect();
                writeln!(out, "rolling out in waves of {}, {} s each", waves.join(", "), rollout.soak)?;
            }
        }
        DeployCommand::List { api, json: as_json } => {
            let api = Api::new(&api)?;
            let page = api.call("GET", "/deployments?limit=1000", None)?;
            if as_json {
                writeln!(out, "{}", page["items"])?;
            } else {
                for d in page["items"].as_array().into_iter().flatten() {
                    let state = if !d["stopped_ms"].is_null() {
                        "stopped"
                    } else if !d["aborted_ms"].is_null() {
                        "aborted"
                    } else if d["rollout"].is_object() && d["completed_ms"].is_null() {
                        "rolling out"
                    } else {
                        "active"
                    };
                    writeln!(
                        out,
                        "{}\t{state}\tpriority {}\t{}\t{}",
                        d["name"].as_str().unwrap_or_default(),
                        d["priority"],
                        d["package_sha256"].as_str().unwrap_or_default(),
                        d["target_condition"].as_str().unwrap_or_default()
                    )?;
                }
            }
        }
        DeployCommand::Status { name, api, json: as_json } => {
            let api = Api::new(&api)?;
            let status = api.call("GET", &format!("/deployments/{name}"), None)?;
            if as_json {
                writeln!(out, "{status}")?;
            } else {
                let counts: Vec<String> =
                    status["counts"].as_object().into_iter().flatten().map(|(k, v)| format!("{k} {v}")).collect();
                writeln!(out, "{name}: {}", if counts.is_empty() { "no devices".into() } else { counts.join(", ") })?;
                let r = &status["rollout"];
                if r.is_object() {
                    let note = r["note"].as_str().map(|n| format!(": {n}")).unwrap_or_default();
                    writeln!(out, "rollout {} at wave {}{note}", r["phase"].as_str().unwrap_or_default(), r["wave"])?;
                    for w in r["waves"].as_array().into_iter().flatten() {
                        let devices = w["devices"].as_array().map_or(0, Vec::len);
                        let percent = w["percent"].as_f64().unwrap_or_default();
                        writeln!(out, "  wave {} ({percent} %): {devices} devices", w["wave"])?;
                    }
                }
                for d in status["devices"].as_array().into_iter().flatten() {
                    let reason = d["reason"].as_str().map(|r| format!("\t{r}")).unwrap_or_default();
                    writeln!(
                        out,
                        "  {}\t{}{reason}",
                        d["device"].as_str().unwrap_or_default(),
                        d["state"].as_str().unwrap_or_default()
                    )?;
                }
            }
        }
        DeployCommand::Stop { name, api } => {
            Api::new(&api)?.call("DELETE", &format!("/deployments/{name}"), None)?;
            writeln!(out, "deployment {name} stopped")?;
        }
        DeployCommand::Abort { name, reason, api } => {
            let body = serde_json::to_vec(&json!({ "reason": reason }))?;
            Api::new(&api)?.call("POST", &format!("/deployments/{name}/abort"), Some((body, "application/json")))?;
            writeln!(out, "deployment {name} aborted; the devices it reached roll back")?;
        }
    }
    Ok(())
}

/// A URL path segment or query value, percent-encoded (tag values are free text).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `a=b&c=d`, values percent-encoded.
fn query_string(pairs: &[(&str, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect::<Vec<_>>().join("&")
}

/// Follows a list's pages (`limit=1000`, then `after=next_after`) from `path?query`, handing
/// each item to `each`; stops at the first error.
pub(crate) fn each_item(
    api: &Api,
    path: &str,
    query: &[(&str, String)],
    mut each: impl FnMut(Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut after: Option<String> = None;
    loop {
        let mut pairs = query.to_vec();
        pairs.push(("limit", "1000".into()));
        if let Some(a) = after.take() {
            pairs.push(("after", a));
        }
        let mut page = api.call("GET", &format!("{path}?{}", query_string(&pairs)), None)?;
        if let Value::Array(items) = page["items"].take() {
            items.into_iter().try_for_each(&mut each)?;
        }
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return Ok(()),
        }
    }
}

/// Every item of a fleet query (`/alerts`, `/drift`) in the window, keeping the last `limit`.
fn fleet_items(api: &Api, path: &str, q: &FleetQueryArgs) -> anyhow::Result<Vec<Value>> {
    let since = impeller_hub::store::now_ms() - q.since.min(i64::MAX as u64 / 1000) as i64 * 1000;
    let mut pairs = vec![("since_ms", since.to_string())];
    pairs.extend(q.devices.query_pairs());
    let mut items = std::collections::VecDeque::new();
    each_item(api, path, &pairs, |item| {
        items.push_back(item);
        if items.len() > q.limit {
            items.pop_front();
        }
        Ok(())
    })?;
    Ok(items.into())
}

fn utc(ms: &Value) -> String {
    impeller_core::table::format_timestamp(ms.as_i64().unwrap_or_default())
}

/// `impeller alerts`.
pub fn alerts(q: FleetQueryArgs) -> anyhow::Result<()> {
    let api = Api::new(&q.api)?;
    let items = fleet_items(&api, "/alerts", &q)?;
    let mut out = std::io::stdout().lock();
    if q.json {
        writeln!(out, "{}", Value::Array(items))?;
        return Ok(());
    }
    for a in &items {
        writeln!(
            out,
            "{}\t{}\t{} {}\tscore {:.2} (threshold {:.2})\t{}",
            utc(&a["started_ms"]),
            a["device"].as_str().unwrap_or_default(),
            a["model"].as_str().unwrap_or_default(),
            a["model_version"].as_str().unwrap_or_default(),
            a["score"].as_f64().unwrap_or_default(),
            a["threshold"].as_f64().unwrap_or_default(),
            a["top_features"][0][0].as_str().unwrap_or_default()
        )?;
    }
    if items.is_empty() {
        writeln!(out, "no alerts")?;
    }
    Ok(())
}

/// `impeller drift`.
pub fn drift(q: FleetQueryArgs) -> anyhow::Result<()> {
    let api = Api::new(&q.api)?;
    let items = fleet_items(&api, "/drift", &q)?;
    let mut out = std::io::stdout().lock();
    if q.json {
        writeln!(out, "{}", Value::Array(items))?;
        return Ok(());
    }
    for r in &items {
        writeln!(
            out,
            "{}\t{}\t{} {}\t{}\t{:.2} σ\t{}",
            utc(&r["end_ms"]),
            r["device"].as_str().unwrap_or_default(),
            r["model"].as_str().unwrap_or_default(),
            r["model_version"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            r["max_wasserstein"].as_f64().unwrap_or_default(),
            r["features"][0]["feature"].as_str().unwrap_or_default()
        )?;
    }
    if items.is_empty() {
        writeln!(out, "no drift reports")?;
    }
    Ok(())
}

/// `impeller alert-rates`.
pub fn alert_rates(q: AlertRateArgs) -> anyhow::Result<()> {
    let api = Api::new(&q.api)?;
    let mut pairs = q.devices.query_pairs();
    pairs.extend(q.state.clone().map(|s| ("state", s)));
    let mut items = Vec::new();
    each_item(&api, "/alert-rates", &pairs, |r| {
        items.push(r);
        Ok(())
    })?;
    let mut out = std::io::stdout().lock();
    if q.json {
        writeln!(out, "{}", Value::Array(items))?;
        return Ok(());
    }
    for r in &items {
        writeln!(
            out,
            "{}\t{} v{}\t{}\t{} alerts in {:.1} h scored (expected {:.2} at {:.2}/day, p = {:.2e})",
            r["device"].as_str().unwrap_or_default(),
            r["model"].as_str().unwrap_or_default(),
            r["model_version"],
            r["state"].as_str().unwrap_or_default(),
            r["alerts"],
            r["scored_ms"].as_f64().unwrap_or_default() / 3_600_000.0,
            r["expected"].as_f64().unwrap_or_default(),
            r["per_day"].as_f64().unwrap_or_default(),
            r["p_value"].as_f64().unwrap_or_default(),
        )?;
    }
    if items.is_empty() {
        writeln!(out, "no alert rates judged")?;
    }
    Ok(())
}

/// `impeller device …`.
pub fn device(cmd: DeviceCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        DeviceCommand::Add { name, tags, profile, api, json: as_json } => {
            let tags = impeller_hub::fleet::parse_tags(&tags).map_err(|e| InputError(format!("--tags: {e}")))?;
            let api = Api::new(&api)?;
            let body = json!({"id": name, "tags": tags, "profile": profile});
            let creds = api.call("POST", "/devices", Some((serde_json::to_vec(&body)?, "application/json")))?;
            let secret = creds["secret"].as_str().context("the hub's answer has no secret")?;
            if as_json {
                writeln!(out, "{}", json!({ "id": name, "secret": secret }))?;
            } else {
                writeln!(out, "device {name} provisioned")?;
                writeln!(out, "secret: {secret}")?;
                writeln!(out, "shown once: put it in the agent's [hub] password, with username = \"{name}\"")?;
            }
        }
        DeviceCommand::List { api, json: as_json } => {
            let api = Api::new(&api)?;
            let mut devices = Vec::new();
            each_item(&api, "/devices", &[], |d| {
                devices.push(d);
                Ok(())
            })?;
            if as_json {
                writeln!(out, "{}", Value::Array(devices))?;
                return Ok(());
            }
            for d in &devices {
                let tags: Vec<String> = d["tags"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                let state = if d["revoked_ms"].is_null() { "active" } else { "revoked" };
                let desired = d["desired_deployment"].as_str().unwrap_or("-");
                writeln!(
                    out,
                    "{}\t{state}\t{}\t{}\t{desired}",
                    d["id"].as_str().unwrap_or_default(),
                    d["profile"].as_str().unwrap_or_default(),
                    tags.join(",")
                )?;
            }
        }
        DeviceCommand::Revoke { name, api } => {
            let api = Api::new(&api)?;
            api.call("POST", &format!("/devices/{}/revoke", encode(&name)), None)?;
            writeln!(out, "device {name} revoked")?;
        }
    }
    Ok(())
}
