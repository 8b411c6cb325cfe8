//! The OpenAPI 3.1 document of `/api/v1`, served at `/api/v1/openapi.json`. Written by hand
//! beside the handlers (the core's types stay free of API annotations); schemathesis checks
//! every response of a running hub against it (`tests/hub/openapi.rs`).

use serde_json::{Map, Value, json};

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn nullable(kind: &str) -> Value {
    json!({"type": [kind, "null"]})
}

fn nullable_ref(name: &str) -> Value {
    json!({"oneOf": [schema(name), {"type": "null"}]})
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

fn uint() -> Value {
    json!({"type": "integer", "minimum": 0})
}
fn int() -> Value {
    json!({"type": "integer"})
}
fn string() -> Value {
    json!({"type": "string"})
}
fn sha256() -> Value {
    json!({"type": "string", "pattern": "^[0-9a-f]{64}$"})
}

fn json_body(name: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema(name)}}})
}

fn ok(description: &str, name: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema(name)}}})
}

fn page_of(name: &str) -> Value {
    object(&["items"], json!({"items": {"type": "array", "items": schema(name)}, "next_after": string()}))
}

/// An operation: `responses` holds the successes; problems are added for `problems`.
fn op(summary: &str, tag: &str, who: Who, responses: Value, problems: &[u16]) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("summary".into(), json!(summary));
    o.insert("tags".into(), json!([tag]));
    o.insert("security".into(), who.security());
    let mut r = responses.as_object().cloned().unwrap_or_default();
    let mut codes: Vec<u16> = problems.to_vec();
    if !matches!(who, Who::Anyone) {
        codes.extend([401, 403]);
    }
    codes.extend([422, 500]);
    for code in codes {
        r.insert(code.to_string(), json!({"$ref": format!("#/components/responses/Problem{code}")}));
    }
    o.insert("responses".into(), Value::Object(r));
    o
}

#[derive(Clone, Copy)]
enum Who {
    Anyone,
    Operator,
    OperatorOrDevice,
}

impl Who {
    fn security(self) -> Value {
        match self {
            Who::Anyone => json!([]),
            Who::Operator => json!([{"token": []}]),
            Who::OperatorOrDevice => json!([{"token": []}, {"device": []}]),
        }
    }
}

fn with(mut o: Map<String, Value>, key: &str, value: Value) -> Map<String, Value> {
    o.insert(key.into(), value);
    o
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": string()})
}

/// Narrowing by device or by its tags.
fn device_filters() -> Vec<Value> {
    vec![
        json!({"name": "device", "in": "query", "schema": string()}),
        json!({"name": "site", "in": "query", "description": "devices tagged site=…", "schema": string()}),
        json!({"name": "manufacturer", "in": "query", "description": "devices tagged manufacturer=…", "schema": string()}),
    ]
}

/// `params`, then paging.
fn paged(mut params: Vec<Value>) -> Value {
    if let Value::Array(p) = paging() {
        params.extend(p);
    }
    Value::Array(params)
}

/// Query parameters of `GET /alerts` and `GET /drift`: filters, then paging.
fn fleet_filters() -> Value {
    let mut params = device_filters();
    params.extend([
        json!({"name": "since_ms", "in": "query", "description": "from this time (ms since the epoch)", "schema": {"type": "integer"}}),
        json!({"name": "until_ms", "in": "query", "description": "before this time", "schema": {"type": "integer"}}),
    ]);
    paged(params)
}

/// Query parameters of `GET /alert-rates`.
fn alert_rate_filters() -> Value {
    let mut params = device_filters();
    params.push(json!({"name": "state", "in": "query", "schema": {"type": "string", "enum": ["unjudged", "normal", "elevated"]}}));
    paged(params)
}

fn paging() -> Value {
    json!([
        {"name": "limit", "in": "query", "description": "1 to 1000, default 100",
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        {"name": "after", "in": "query", "description": "the `next_after` of the previous page", "schema": string()}
    ])
}

fn schemas() -> Value {
    let device_props = json!({
        "id": string(), "tags": {"type": "object", "additionalProperties": string()}, "profile": string(),
        "created_ms": int(), "revoked_ms": nullable("integer"),
    });
    let mut device_view = device_props.as_object().cloned().unwrap_or_default();
    device_view.insert("desired_deployment".into(), nullable("string"));
    device_view.insert("update".into(), nullable_ref("UpdateReport"));
    let mut schemas = json!({
        "Problem": object(&["type", "title", "status", "code", "detail"], json!({
            "type": string(), "title": string(), "status": int(), "detail": string(),
            "code": {"type": "string", "enum": ["unauthorized", "forbidden", "not_found", "method_not_allowed", "conflict",
                     "invalid_request", "package_refused", "payload_too_large", "internal"]},
        })),
        "Health": object(&["status", "version"], json!({"status": string(), "version": string()})),
        "Device": object(&["id", "tags", "profile", "created_ms", "revoked_ms"], device_props),
        "DeviceView": object(&["id", "tags", "profile", "created_ms", "desired_deployment", "update"],
                             Value::Object(device_view)),
        "DevicePage": page_of("DeviceView"),
        "NewDevice": {
            "type": "object", "required": ["id"], "additionalProperties": false,
            "properties": {
                "id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                "tags": {"type": "object", "additionalProperties": string()},
                "profile": string(),
            },
        },
        "NewDeviceCredentials": object(&["id", "secret"], json!({"id": string(), "secret": string()})),
        "UpdateReport": object(
            &["device", "seq", "deployment", "package_sha256", "state", "reason", "running_release", "ts_ms",
              "first_seq", "first_ts_ms", "active_seq"],
            json!({
                "device": string(), "seq": uint(), "deployment": string(), "package_sha256": string(),
                "state": {"type": "string", "enum": ["downloading", "verifying", "shadow", "active", "failed", "rolled_back"]},
                "reason": nullable("string"), "running_release": nullable("integer"), "ts_ms": int(),
                "first_seq": uint(), "first_ts_ms": int(), "active_seq": nullable("integer"),
            })),
        "PackageRef": object(&["sha256", "size", "model", "version", "release"], json!({
            "sha256": sha256(), "size": uint(), "model": string(), "version": string(), "release": uint(),
        })),
        "RollbackRef": object(&["deployment", "sha256", "reason"],
                              json!({"deployment": string(), "sha256": sha256(), "reason": string()})),
        "Desired": object(&["v", "deployment", "package"], json!({
            "v": uint(), "deployment": string(), "package": schema("PackageRef"), "rollback": schema("RollbackRef"),
        })),
        "Assignment": object(&["deployment", "package_sha256", "matched", "reason"], json!({
            "deployment": string(), "package_sha256": string(), "matched": {"type": "array", "items": string()},
            "reason": string(),
        })),
        "DesiredView": object(&["desired", "assignment"],
                              json!({"desired": nullable_ref("Desired"), "assignment": nullable_ref("Assignment")})),
        "Package": object(&["sha256", "size", "model", "version", "release", "target", "signed_by", "uploaded_ms"],
            json!({"sha256": sha256(), "size": uint(), "model": string(), "version": string(), "release": uint(),
                   "target": string(), "signed_by": string(), "uploaded_ms": int()})),
        "PackagePage": page_of("Package"),
        "Rollout": {
            "type": "object", "required": ["waves"], "additionalProperties": false,
            "description": "Cumulative percentages, the last 100; see docs/specs/deployments.md",
            "properties": {
                "waves": {"type": "array", "minItems": 1, "maxItems": 20,
                          "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 100}},
                "soak_s": {"type": "integer", "minimum": 0, "maximum": 2_592_000},
                "min_active": {"type": "number", "minimum": 0, "maximum": 1},
                "max_failed": {"type": "number", "minimum": 0, "maximum": 1},
                "max_rolled_back": {"type": "number", "minimum": 0, "maximum": 1},
                "max_alert_rate_increase": {"type": ["number", "null"], "minimum": 0},
            },
        },
        "NewDeployment": {
            "type": "object", "required": ["name", "package_sha256", "target_condition"],
            "additionalProperties": false,
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                "package_sha256": sha256(),
                "target_condition": {"type": "string", "minLength": 1, "maxLength": 4096,
                                     "description": "e.g. tags.site = 'north' AND profile = 'gw'; * for all"},
                "priority": int(),
                "rollout": nullable_ref("Rollout"),
            },
        },
        "Deployment": object(
            &["name", "package_sha256", "target_condition", "priority", "created_ms", "stopped_ms", "rollout",
              "wave", "wave_started_ms", "completed_ms", "aborted_ms", "abort_reason"],
            json!({
                "name": string(), "package_sha256": string(), "target_condition": string(), "priority": int(),
                "created_ms": int(), "stopped_ms": nullable("integer"), "rollout": nullable_ref("Rollout"),
                "wave": uint(), "wave_started_ms": int(), "completed_ms": nullable("integer"),
                "aborted_ms": nullable("integer"), "abort_reason": nullable("string"),
            })),
        "DeploymentPage": page_of("Deployment"),
        "RolloutStatus": object(&["phase", "wave", "waves", "note"], json!({
            "phase": {"type": "string", "enum": ["rolling_out", "complete", "aborted", "stopped"]},
            "wave": uint(),
            "waves": {"type": "array", "items": object(&["wave", "percent", "devices"], json!({
                "wave": uint(), "percent": {"type": "number"}, "devices": {"type": "array", "items": string()},
            }))},
            "note": nullable("string"),
        })),
        "DeviceStatus": object(&["device", "state", "reason", "running_release"], json!({
            "device": string(), "state": string(), "reason": nullable("string"), "running_release": nullable("integer"),
        })),
        "DeploymentStatus": object(&["deployment", "rollout", "counts", "devices"], json!({
            "deployment": schema("Deployment"), "rollout": nullable_ref("RolloutStatus"),
            "counts": {"type": "object", "additionalProperties": uint()},
            "devices": {"type": "array", "items": schema("DeviceStatus")},
        })),
        "Alert": object(&["device", "seq", "ts_ms", "started_ms", "model", "model_version", "score", "threshold", "top_features",
                          "verdict"], json!({
            "device": string(), "seq": uint(), "ts_ms": {"type": "integer"}, "started_ms": {"type": "integer"},
            "verdict": {"type": ["string", "null"], "enum": ["confirmed", "false_alarm", null]},
            "model": string(), "model_version": string(), "score": {"type": "number"}, "threshold": {"type": "number"},
            "top_features": {"type": "array", "items": {"type": "array", "prefixItems": [string(), {"type": "number"}],
                                                       "minItems": 2, "maxItems": 2}},
        })),
        "AlertPage": page_of("Alert"),
        "FeatureDrift": object(&["feature", "psi", "ks", "wasserstein"], json!({
            "feature": string(), "psi": {"type": "number"}, "ks": {"type": "number"}, "wasserstein": {"type": "number"},
        })),
        "DriftReport": object(&["device", "seq", "start_ms", "end_ms", "model", "model_version", "count",
                                "max_wasserstein", "max_psi", "page_hinkley", "state", "features"], json!({
            "device": string(), "seq": uint(), "start_ms": {"type": "integer"}, "end_ms": {"type": "integer"},
            "model": string(), "model_version": string(), "count": uint(), "max_wasserstein": {"type": "number"},
            "max_psi": {"type": "number"}, "page_hinkley": {"type": "number"},
            "state": {"type": "string", "enum": ["unknown", "stable", "warning", "drift", "no_reference", "unreadable"]},
            "features": {"type": "array", "items": schema("FeatureDrift")},
        })),
        "DriftPage": page_of("DriftReport"),
        "AlertRate": object(&["device", "model", "model_version", "since_seq", "through_seq", "state", "alerts", "scored_ms", "expected",
                              "per_day", "p_value", "window_end_ms", "changed_ms", "judged_ms"], json!({
            "device": string(), "model": string(), "model_version": uint(),
            "since_seq": {"type": "integer", "minimum": 0, "description": "the report that made this version active"},
            "through_seq": {"type": "integer", "minimum": 0, "description": "the last message the judgement read"},
            "state": {"type": "string", "enum": ["unjudged", "normal", "elevated"]},
            "alerts": uint(), "scored_ms": int(),
            "expected": {"type": "number", "description": "alerts expected over scored_ms at per_day"},
            "per_day": {"type": "number", "description": "the version's validation false-alarm rate plus one alarm over the validated time"},
            "p_value": {"type": "number", "description": "chance of at least `alerts` at `expected` (Poisson)"},
            "window_end_ms": int(), "changed_ms": int(), "judged_ms": int(),
        })),
        "AlertRatePage": page_of("AlertRate"),
        "AuditRecord": object(&["seq", "time_ms", "actor", "action", "subject", "artifacts", "details", "prev", "hash"], json!({
            "seq": uint(), "time_ms": {"type": "integer"}, "actor": string(), "action": string(), "subject": string(),
            "artifacts": {"type": "array", "items": string(), "description": "SHA-256 of the artifacts involved"},
            "details": {}, "prev": string(), "hash": string(),
        })),
        "AuditPage": page_of("AuditRecord"),
        "TelemetryPoint": object(&["start_ms", "end_ms", "count", "mean", "min", "max"], json!({
            "start_ms": {"type": "integer"}, "end_ms": {"type": "integer"}, "count": uint(),
            "mean": {"type": "number"}, "min": {"type": "number"}, "max": {"type": "number"},
        })),
        "TelemetrySeries": object(&["device", "channel", "since_ms", "until_ms", "points"], json!({
            "device": string(), "channel": string(), "since_ms": {"type": "integer"}, "until_ms": {"type": "integer"},
            "points": {"type": "array", "items": schema("TelemetryPoint")},
        })),
        "AbortRequest": {"type": "object", "additionalProperties": false,
                         "properties": {"reason": {"type": ["string", "null"], "maxLength": 1000}}},
        "RegisteredModel": object(&["name", "created_ms", "versions", "latest_version", "aliases"], json!({
            "name": string(), "created_ms": int(), "versions": uint(), "latest_version": nullable("integer"),
            "aliases": {"type": "object", "additionalProperties": uint()},
        })),
        "ModelPage": page_of("RegisteredModel"),
        "VersionPackage": {"type": "object", "required": ["target", "sha256"], "additionalProperties": false,
                           "properties": {"target": string(), "sha256": sha256()}},
        "ModelVersion": object(
            &["model", "version", "release", "status", "run_key", "model_sha256", "dataset_sha256", "code_version",
              "parent_version", "metrics", "spec", "gates", "reason", "tags", "packages", "aliases", "created_by",
              "created_ms", "finished_ms"],
            json!({
                "model": string(), "version": uint(), "release": uint(),
                "status": {"type": "string", "enum": ["pending", "ready", "failed"]},
                "run_key": sha256(), "model_sha256": sha256(), "dataset_sha256": sha256(), "code_version": string(),
                "parent_version": nullable("integer"), "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                "spec": {}, "gates": {}, "reason": nullable("string"),
                "tags": {"type": "object", "additionalProperties": string()},
                "packages": {"type": "array", "items": schema("VersionPackage")},
                "aliases": {"type": "array", "items": string()},
                "created_by": string(), "created_ms": int(), "finished_ms": nullable("integer"),
            })),
        "VersionPage": page_of("ModelVersion"),
        "NewModelVersion": {
            "type": "object", "required": ["run_key", "model_sha256", "dataset_sha256", "code_version"],
            "additionalProperties": false,
            "properties": {
                "run_key": sha256(), "model_sha256": sha256(), "dataset_sha256": sha256(),
                "code_version": {"type": "string", "minLength": 1, "maxLength": 200},
                "parent_version": {"type": ["integer", "null"], "minimum": 1},
                "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                "spec": {}, "tags": {"type": "object", "additionalProperties": string()},
            },
        },
        "VersionFinish": {
            "type": "object", "required": ["status"], "additionalProperties": false,
            "properties": {
                "status": {"type": "string", "enum": ["ready", "failed"]},
                "gates": {}, "packages": {"type": "array", "items": schema("VersionPackage")},
                "reason": nullable("string"),
            },
        },
        "AliasTarget": {"type": "object", "required": ["version"], "additionalProperties": false,
                        "properties": {"version": {"type": "integer", "minimum": 1}}},
        "RunningModel": object(&["device", "package_sha256", "model", "version", "dataset_sha256", "run_key", "since_seq"], json!({
            "device": string(), "package_sha256": string(), "model": nullable("string"), "version": nullable("integer"),
            "dataset_sha256": nullable("string"), "run_key": nullable("string"), "since_seq": uint(),
        })),
        "SnapshotRequest": {
            "type": "object", "required": ["condition", "since_ms"], "additionalProperties": false,
            "properties": {
                "condition": {"type": "string", "minLength": 1, "maxLength": 4096,
                              "description": "devices by tags and profile, e.g. tags.site = 'gulf'; * for all"},
                "channels": {"type": "array", "items": string()},
                "since_ms": int(), "until_ms": nullable("integer"), "label_incidents": {"type": "boolean"},
                "exclude_incidents": {"type": "boolean"}, "exclude_after_confirmed_fault": {"type": "boolean"},
                "base_dataset": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$",
                                 "description": "a dataset at the hub whose parts the snapshot carries too"},
            },
        },
        "Channel": object(&["name", "unit"], json!({"name": string(), "unit": string()})),
        "DatasetPart": object(&["name", "file", "rows", "labelled", "anomalous_rows", "first_ts_ms", "last_ts_ms"], json!({
            "name": string(), "file": string(), "rows": uint(), "labelled": {"type": "boolean"}, "anomalous_rows": uint(),
            "first_ts_ms": nullable("integer"), "last_ts_ms": nullable("integer"),
        })),
        "DatasetManifest": object(&["format", "version", "sha256", "channels", "parts", "source"], json!({
            "format": string(), "version": uint(), "sha256": sha256(),
            "channels": {"type": "array", "items": schema("Channel")},
            "parts": {"type": "array", "items": schema("DatasetPart")}, "source": string(),
        })),
        "DatasetRecord": object(&["sha256", "selection", "parts", "rows", "created_by", "created_ms"], json!({
            "sha256": sha256(), "selection": {}, "parts": uint(), "rows": uint(), "created_by": string(), "created_ms": int(),
        })),
        "DatasetPage": page_of("DatasetRecord"),
        "NewIncident": {
            "type": "object", "required": ["device", "start_ms", "end_ms", "kind"], "additionalProperties": false,
            "properties": {"device": string(), "start_ms": int(), "end_ms": int(),
                           "kind": {"type": "string", "minLength": 1, "maxLength": 100}, "note": {"type": "string", "maxLength": 2000}},
        },
        "Incident": object(&["id", "device", "start_ms", "end_ms", "kind", "note", "created_by", "created_ms"], json!({
            "id": int(), "device": string(), "start_ms": int(), "end_ms": int(), "kind": string(), "note": string(),
            "created_by": string(), "created_ms": int(),
        })),
        "IncidentList": object(&["items"], json!({"items": {"type": "array", "items": schema("Incident")}})),
        "RunRequest": {
            "type": "object", "required": ["spec"], "additionalProperties": false,
            "properties": {
                "spec": {"type": "string", "description": "the pipeline spec (TOML); its data is one of this hub's datasets"},
                "profiles": {"type": "object", "additionalProperties": string(),
                             "description": "each target profile the spec names, by that path, as TOML"},
            },
        },
        "StepRecord": object(&["step", "key", "cached", "ms", "detail"], json!({
            "step": string(), "key": nullable("string"), "cached": {"type": "boolean"}, "ms": {"type": "number"}, "detail": string(),
        })),
        "RunView": object(&["id", "model", "state", "step", "steps", "submitted_by", "submitted_ms", "record"], json!({
            "id": string(), "model": string(), "state": {"type": "string", "enum": ["queued", "running", "finished"]},
            "step": nullable("string"), "steps": {"type": "array", "items": schema("StepRecord")},
            "submitted_by": string(), "submitted_ms": int(),
            "record": {"description": "the run record once finished (see docs/specs/pipelines.md), else null"},
        })),
        "RunList": object(&["items"], json!({"items": {"type": "array", "items": schema("RunView")}})),
        "FeedbackRequest": {
            "type": "object", "required": ["verdict"], "additionalProperties": false,
            "properties": {"verdict": {"type": "string", "enum": ["confirmed", "false_alarm"]},
                           "work_order": {"type": "string", "maxLength": 200}, "note": {"type": "string", "maxLength": 2000}},
        },
        "Feedback": object(&["device", "seq", "verdict", "work_order", "note", "model", "model_version", "alert_ts_ms",
                             "incident_id", "created_by", "created_ms"], json!({
            "device": string(), "seq": uint(), "verdict": {"type": "string", "enum": ["confirmed", "false_alarm"]},
            "work_order": string(), "note": string(), "model": string(), "model_version": string(), "alert_ts_ms": int(),
            "incident_id": nullable("integer"), "created_by": string(), "created_ms": int(),
        })),
        "Precision": object(&["model", "model_version", "confirmed", "false_alarms", "precision"], json!({
            "model": string(), "model_version": string(), "confirmed": uint(), "false_alarms": uint(),
            "precision": {"type": "number", "minimum": 0, "maximum": 1},
        })),
        "PrecisionList": object(&["items"], json!({"items": {"type": "array", "items": schema("Precision")}})),
        "PolicyRequest": {
            "type": "object", "required": ["policy", "spec"], "additionalProperties": false,
            "properties": {
                "policy": {"type": "string", "description": "the retraining policy (TOML); see docs/specs/pipelines.md"},
                "spec": {"type": "string", "description": "the pipeline spec each retraining runs (TOML)"},
                "profiles": {"type": "object", "additionalProperties": string()},
            },
        },
        "PolicyView": object(&["model", "policy", "spec", "state", "updated_by", "updated_ms"], json!({
            "model": string(), "policy": string(), "spec": string(),
            "state": {"description": "the loop's state: counters, stage (idle, running, awaiting_promotion, awaiting_rollout), version, run, reason, note, class_drift (the champion's devices pooled, with a class_drift trigger)"},
            "updated_by": string(), "updated_ms": int(),
        })),
        "Approved": object(&["note"], json!({"note": string()})),
        "DatasetLineage": object(&["dataset_sha256", "versions", "devices"], json!({
            "dataset_sha256": sha256(), "versions": {"type": "array", "items": schema("ModelVersion")},
            "devices": {"type": "array", "items": schema("RunningModel")},
        })),
    });
    if let (Value::Object(all), Value::Object(views)) = (&mut schemas, view_schemas()) {
        all.extend(views);
    }
    schemas
}

/// Schemas of the views the dashboard reads (`api::views`).
fn view_schemas() -> Value {
    json!({
        "FleetRow": object(&["id", "tags", "profile", "revoked", "last_contact_ms", "data_through_ms", "model",
                             "model_version", "release", "registry_version", "update_state", "update_reason",
                             "drift_state", "alert_rate", "alerts", "last_alert_ms"], json!({
            "id": string(), "tags": {"type": "object", "additionalProperties": string()}, "profile": string(),
            "revoked": {"type": "boolean"},
            "last_contact_ms": {"type": ["integer", "null"], "description": "the hub's time of the last message"},
            "data_through_ms": {"type": ["integer", "null"], "description": "the time of the newest message the acknowledged stream reaches"},
            "model": nullable("string"), "model_version": nullable("string"), "release": nullable("integer"),
            "registry_version": nullable("integer"), "update_state": nullable("string"), "update_reason": nullable("string"),
            "drift_state": nullable("string"),
            "alert_rate": {"type": ["string", "null"], "enum": ["unjudged", "normal", "elevated", null],
                           "description": "the alert-rate monitor's state for the version the device runs"},
            "alerts": uint(), "last_alert_ms": nullable("integer"),
        })),
        "FleetPage": page_of("FleetRow"),
        "PolicyList": object(&["items"], json!({"items": {"type": "array", "items": schema("PolicyView")}})),
        "ChannelSeries": object(&["name", "unit", "points"], json!({
            "name": string(), "unit": string(), "points": {"type": "array", "items": schema("TelemetryPoint")},
        })),
        "DeviceSeries": object(&["device", "since_ms", "until_ms", "channels", "score", "threshold"], json!({
            "device": string(), "since_ms": int(), "until_ms": int(),
            "channels": {"type": "array", "items": schema("ChannelSeries")},
            "score": {"type": "array", "items": schema("TelemetryPoint")}, "threshold": nullable("number"),
        })),
        "AlertDetail": object(&["device", "seq", "ts_ms", "alert", "feedback"], json!({
            "device": string(), "seq": uint(), "ts_ms": int(),
            "alert": object(&["model", "started_ms", "score", "threshold", "top_features", "channels", "window"], json!({
                "model": object(&["name", "version", "release"], json!({"name": string(), "version": string(), "release": uint()})),
                "started_ms": int(), "score": {"type": "number"}, "threshold": {"type": "number"},
                "top_features": {"type": "array", "items": {"type": "array", "prefixItems": [string(), {"type": "number"}],
                                                           "minItems": 2, "maxItems": 2}},
                "channels": {"type": "array", "items": string()},
                "window": {"type": "array", "items": object(&["ts_ms", "values"], json!({
                    "ts_ms": int(), "values": {"type": "array", "items": {"type": ["number", "null"]}},
                }))},
            })),
            "feedback": nullable_ref("Feedback"),
        })),
        "SketchDetail": object(&["device", "seq", "model", "model_version", "start_ms", "end_ms", "low", "width", "features"], json!({
            "device": string(), "seq": uint(), "model": string(), "model_version": string(), "start_ms": int(),
            "end_ms": int(), "low": {"type": "number"}, "width": {"type": "number"},
            "features": {"type": ["array", "null"], "items": object(&["feature", "reference", "current"], json!({
                "feature": string(), "reference": {"type": "array", "items": uint()},
                "current": {"type": "array", "items": uint()},
            }))},
        })),
        "DriftFleet": object(&["warn_sigma", "alarm_sigma", "buckets"], json!({
            "warn_sigma": {"type": "number"}, "alarm_sigma": {"type": "number"},
            "buckets": {"type": "array", "items": object(&["model", "start_ms", "end_ms", "reports", "devices", "drifting",
                                                           "mean_wasserstein", "min_wasserstein", "max_wasserstein"], json!({
                "model": string(), "start_ms": int(), "end_ms": int(), "reports": uint(), "devices": uint(),
                "drifting": uint(), "mean_wasserstein": {"type": "number"}, "min_wasserstein": {"type": "number"},
                "max_wasserstein": {"type": "number"},
            }))},
        })),
        "AuditStatus": object(&["intact", "problem", "records", "last_seq", "checkpoints_verified", "last_verified_seq",
                                "audit_key", "checked_ms"], json!({
            "intact": {"type": "boolean"}, "problem": nullable("string"), "records": uint(), "last_seq": nullable("integer"),
            "checkpoints_verified": uint(), "last_verified_seq": nullable("integer"), "audit_key": nullable("string"),
            "checked_ms": int(),
        })),
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut problems = Map::new();
    for (code, why) in [
        (401, "no or wrong credentials"),
        (403, "the caller may not do this"),
        (404, "no such resource"),
        (409, "it exists already, or has ended"),
        (413, "the package is larger than the hub accepts"),
        (422, "the request is invalid, or the package was refused"),
        (500, "the hub failed; the detail is in its log"),
    ] {
        problems.insert(
            format!("Problem{code}"),
            json!({"description": why, "content": {"application/problem+json": {"schema": schema("Problem")}}}),
        );
    }
    let id = path_param("id", "device id");
    let sha = json!({"name": "sha256", "in": "path", "required": true, "schema": sha256()});
    let name = path_param("name", "deployment name");
    let model = path_param("name", "registered model name");
    let version = json!({"name": "version", "in": "path", "required": true, "description": "version number",
                         "schema": {"type": "integer", "minimum": 1}});
    let no_content = json!({"204": {"description": "done"}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Impeller hub API",
            "version": "1",
            "description": "Fleet, packages and deployments of an Impeller hub. Errors are RFC 9457 problem \
                documents with a `code` from a closed set. Operators send `Authorization: Bearer imp_…` \
                (impeller token create); devices send HTTP Basic with their id and secret.",
        },
        "servers": [{"url": "/"}],
        "paths": {
            "/api/v1/health": {"get": op("Liveness and version", "hub", Who::Anyone, json!({"200": ok("up", "Health")}), &[])},
            "/api/v1/openapi.json": {"get": op("This document", "hub", Who::Anyone,
                json!({"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}), &[])},
            "/api/v1/devices": {
                "get": with(op("List devices", "devices", Who::Operator, json!({"200": ok("a page", "DevicePage")}), &[]),
                            "parameters", paging()),
                "post": with(op("Provision a device; its secret is shown once", "devices", Who::Operator,
                                json!({"201": ok("provisioned", "NewDeviceCredentials")}), &[409]),
                             "requestBody", json_body("NewDevice")),
            },
            "/api/v1/devices/{id}": {
                "parameters": [id.clone()],
                "get": op("One device (a device may read itself)", "devices", Who::OperatorOrDevice,
                          json!({"200": ok("the device", "DeviceView")}), &[404]),
            },
            "/api/v1/devices/{id}/revoke": {
                "parameters": [id.clone()],
                "post": op("Revoke a device: refused by the broker and the API from now on", "devices", Who::Operator,
                           no_content.clone(), &[404]),
            },
            "/api/v1/devices/{id}/desired": {
                "parameters": [id.clone()],
                "get": op("What the device should run, and why", "devices", Who::OperatorOrDevice,
                          json!({"200": ok("desired state", "DesiredView")}), &[404]),
            },
            "/api/v1/devices/{id}/telemetry": {
                "parameters": [id.clone()],
                "get": with(op("One channel over a time range, downsampled for a chart", "devices", Who::Operator,
                               json!({"200": ok("the series", "TelemetrySeries")}), &[404]),
                            "parameters", json!([
                                {"name": "channel", "in": "query", "required": true, "schema": string()},
                                {"name": "since_ms", "in": "query", "description": "default: a day before until_ms",
                                 "schema": {"type": "integer"}},
                                {"name": "until_ms", "in": "query", "description": "default: now", "schema": {"type": "integer"}},
                                {"name": "points", "in": "query", "description": "1 to 2000, default 200",
                                 "schema": {"type": "integer", "minimum": 1, "maximum": 2000}},
                            ])),
            },
            "/api/v1/packages": {
                "get": with(op("List packages", "packages", Who::Operator, json!({"200": ok("a page", "PackagePage")}), &[]),
                            "parameters", paging()),
                "post": with(op("Upload a signed package (checked against the hub's trusted keys)", "packages",
                                Who::Operator, json!({"201": ok("stored", "Package")}), &[413]),
                             "requestBody", json!({"required": true, "content": {"application/octet-stream":
                                 {"schema": {"type": "string", "format": "binary"}}}})),
            },
            "/api/v1/packages/{sha256}": {
                "parameters": [sha.clone()],
                "get": op("One package", "packages", Who::Operator, json!({"200": ok("the package", "Package")}), &[404]),
            },
            "/api/v1/packages/{sha256}/content": {
                "parameters": [sha.clone()],
                "get": op("The package file; range requests; ETag is its SHA-256", "packages", Who::OperatorOrDevice,
                    json!({
                        "200": {"description": "the file", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                        "206": {"description": "the requested range", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                        "304": {"description": "not modified"},
                        "416": {"description": "the range is outside the file"},
                    }), &[404]),
            },
            "/api/v1/deployments": {
                "get": with(op("List deployments", "deployments", Who::Operator,
                               json!({"200": ok("a page", "DeploymentPage")}), &[]), "parameters", paging()),
                "post": with(op("Create a deployment, optionally as a staged rollout", "deployments", Who::Operator,
                                json!({"201": ok("created", "Deployment")}), &[404, 409]),
                             "requestBody", json_body("NewDeployment")),
            },
            "/api/v1/deployments/{name}": {
                "parameters": [name.clone()],
                "get": op("A deployment: each device's state, counts, waves", "deployments", Who::Operator,
                          json!({"200": ok("status", "DeploymentStatus")}), &[404]),
                "delete": op("Stop a deployment: its devices fall back to what applies below it", "deployments",
                             Who::Operator, no_content.clone(), &[404]),
            },
            "/api/v1/deployments/{name}/abort": {
                "parameters": [name.clone()],
                "post": with(op("Abort a deployment and roll back the devices its rollout took", "deployments",
                                Who::Operator, no_content, &[404, 409]),
                             "requestBody", json!({"required": false, "content": {"application/json": {"schema": schema("AbortRequest")}}})),
            },
            "/api/v1/alerts": {
                "get": with(op("The fleet's alerts in time order, by device, site or manufacturer", "alerts",
                               Who::Operator, json!({"200": ok("a page", "AlertPage")}), &[]),
                            "parameters", fleet_filters()),
            },
            "/api/v1/drift": {
                "get": with(op("Drift of each sketch against its package's reference, with the device's monitor state",
                               "drift", Who::Operator, json!({"200": ok("a page", "DriftPage")}), &[]),
                            "parameters", fleet_filters()),
            },
            "/api/v1/alert-rates": {
                "get": with(op("Each device's alert rate over a sliding window of its clock against its model version's \
                                validation false-alarm rate, as last judged", "alerts", Who::Operator,
                               json!({"200": ok("a page, by device id", "AlertRatePage")}), &[]),
                            "parameters", alert_rate_filters()),
            },
            "/api/v1/models": {
                "get": with(op("Registered models with their aliases", "registry", Who::Operator,
                               json!({"200": ok("a page", "ModelPage")}), &[]), "parameters", paging()),
            },
            "/api/v1/models/{name}": {
                "parameters": [model.clone()],
                "get": op("One registered model", "registry", Who::Operator, json!({"200": ok("the model", "RegisteredModel")}), &[404]),
            },
            "/api/v1/models/{name}/versions": {
                "parameters": [model.clone()],
                "get": with(op("Versions, oldest first", "registry", Who::Operator, json!({"200": ok("a page", "VersionPage")}), &[]),
                            "parameters", json!([
                                {"name": "run_key", "in": "query", "description": "only the version this pipeline run registered", "schema": string()},
                                {"name": "limit", "in": "query", "description": "1 to 1000, default 100",
                                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                                {"name": "after", "in": "query", "description": "a version number (the `next_after` of the previous page)",
                                 "schema": {"type": "integer", "minimum": 1}},
                            ])),
                "post": with(op("Register a version as pending, with the next version number and release", "registry",
                                Who::Operator, json!({"201": ok("registered", "ModelVersion")}), &[]),
                             "requestBody", json_body("NewModelVersion")),
            },
            "/api/v1/models/{name}/versions/{version}": {
                "parameters": [model.clone(), version.clone()],
                "get": op("One version: status, lineage, metrics, gates, packages", "registry", Who::Operator,
                          json!({"200": ok("the version", "ModelVersion")}), &[404]),
            },
            "/api/v1/models/{name}/versions/{version}/finish": {
                "parameters": [model.clone(), version.clone()],
                "post": with(op("Settle a pending version as ready (with its uploaded packages) or failed", "registry",
                                Who::Operator, json!({"200": ok("settled", "ModelVersion")}), &[404, 409]),
                             "requestBody", json_body("VersionFinish")),
            },
            "/api/v1/models/{name}/aliases/{alias}": {
                "parameters": [model.clone(), path_param("alias", "e.g. champion, challenger")],
                "get": op("The version an alias points at", "registry", Who::Operator,
                          json!({"200": ok("the version", "ModelVersion")}), &[404]),
                "put": with(op("Point an alias at a ready version", "registry", Who::Operator,
                               json!({"204": {"description": "done"}}), &[404, 409]),
                            "requestBody", json_body("AliasTarget")),
                "delete": op("Remove an alias", "registry", Who::Operator, json!({"204": {"description": "done"}}), &[404]),
            },
            "/api/v1/models/{name}/policy": {
                "parameters": [model.clone()],
                "get": op("The model's retraining policy and the loop's state", "registry", Who::Operator,
                          json!({"200": ok("the policy", "PolicyView")}), &[404]),
                "put": with(op("Set the model's retraining policy (checked first; the state starts afresh)", "registry",
                               Who::Operator, json!({"204": {"description": "set"}}), &[]),
                            "requestBody", json_body("PolicyRequest")),
                "delete": op("Remove the model's retraining policy", "registry", Who::Operator,
                             json!({"204": {"description": "removed"}}), &[404]),
            },
            "/api/v1/models/{name}/policy/approve": {
                "parameters": [model.clone()],
                "post": op("Approve the step a retraining awaits: promotion, or rollout", "registry", Who::Operator,
                           json!({"200": ok("what was done", "Approved")}), &[404, 409]),
            },
            "/api/v1/lineage/datasets/{sha256}": {
                "parameters": [sha.clone()],
                "get": op("The versions a dataset built and the devices that run one of them", "registry", Who::Operator,
                          json!({"200": ok("lineage", "DatasetLineage")}), &[]),
            },
            "/api/v1/lineage/devices/{id}": {
                "parameters": [id.clone()],
                "get": op("What a device runs and the data that built it", "registry", Who::Operator,
                          json!({"200": ok("lineage", "RunningModel")}), &[404]),
            },
            "/api/v1/datasets": {
                "get": with(op("Dataset snapshots made on this hub", "datasets", Who::Operator,
                               json!({"200": ok("a page", "DatasetPage")}), &[]), "parameters", paging()),
                "post": with(op("Snapshot the samples of the matching devices over a time range as a Parquet dataset",
                                "datasets", Who::Operator, json!({"201": ok("made (or found)", "DatasetManifest")}), &[404]),
                             "requestBody", json_body("SnapshotRequest")),
            },
            "/api/v1/datasets/{sha256}": {
                "parameters": [sha.clone()],
                "get": op("A dataset's manifest: channels and parts", "datasets", Who::Operator,
                          json!({"200": ok("the manifest", "DatasetManifest")}), &[404]),
            },
            "/api/v1/datasets/{sha256}/files/{file}": {
                "parameters": [sha.clone(), path_param("file", "dataset.json or a part's file")],
                "get": op("One of the dataset's files", "datasets", Who::Operator, json!({
                    "200": {"description": "the file", "content": {
                        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
                        "application/json": {}}},
                }), &[404]),
            },
            "/api/v1/incidents": {
                "get": with(op("Labelled incidents overlapping a time range", "datasets", Who::Operator,
                               json!({"200": ok("incidents", "IncidentList")}), &[]),
                            "parameters", json!([
                                {"name": "device", "in": "query", "schema": string()},
                                {"name": "since_ms", "in": "query", "schema": {"type": "integer"}},
                                {"name": "until_ms", "in": "query", "schema": {"type": "integer"}},
                            ])),
                "post": with(op("Record an incident: a stretch of a device's time with a label", "datasets", Who::Operator,
                                json!({"201": ok("recorded", "Incident")}), &[404]),
                             "requestBody", json_body("NewIncident")),
            },
            "/api/v1/runs": {
                "get": op("Pipeline runs submitted since the hub started, newest first", "datasets", Who::Operator,
                          json!({"200": ok("runs", "RunList")}), &[]),
                "post": with(op("Queue a pipeline run on the hub (signed with its pipeline key)", "datasets", Who::Operator,
                                json!({"202": ok("queued", "RunView")}), &[409]),
                             "requestBody", json_body("RunRequest")),
            },
            "/api/v1/runs/{id}": {
                "parameters": [path_param("id", "run id")],
                "get": op("A run: its state, the step running, the steps done, the record once finished", "datasets",
                          Who::Operator, json!({"200": ok("the run", "RunView")}), &[404]),
            },
            "/api/v1/alerts/{device}/{seq}/feedback": {
                "parameters": [path_param("device", "device id"),
                               {"name": "seq", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0}}],
                "post": with(op("A technician's verdict on an alert (replaces an earlier one); a confirmed fault becomes an incident",
                                "alerts", Who::Operator, json!({"200": ok("recorded", "Feedback")}), &[404]),
                             "requestBody", json_body("FeedbackRequest")),
            },
            "/api/v1/feedback": {
                "get": with(op("Alert precision per model version, from the verdicts given", "alerts", Who::Operator,
                               json!({"200": ok("precision", "PrecisionList")}), &[]),
                            "parameters", json!([{"name": "model", "in": "query", "schema": string()}])),
            },
            "/api/v1/policies": {
                "get": op("Every model's retraining policy and the loop's state", "registry", Who::Operator,
                          json!({"200": ok("the policies", "PolicyList")}), &[]),
            },
            "/api/v1/fleet": {
                "get": with(op("Every device with its last contact, model, rollout state, drift state and alerts", "devices",
                               Who::Operator, json!({"200": ok("a page, by device id", "FleetPage")}), &[]),
                            "parameters", paging()),
            },
            "/api/v1/devices/{id}/series": {
                "parameters": [id.clone()],
                "get": with(op("Every channel and the anomaly score of a device over its newest aggregates, downsampled",
                               "devices", Who::Operator, json!({"200": ok("the series", "DeviceSeries")}), &[404]),
                            "parameters", json!([
                                {"name": "last", "in": "query", "description": "the newest this many aggregates, 1 to 10000, default 1440",
                                 "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                                {"name": "points", "in": "query", "description": "1 to 2000, default 200",
                                 "schema": {"type": "integer", "minimum": 1, "maximum": 2000}},
                            ])),
            },
            "/api/v1/alerts/{device}/{seq}": {
                "parameters": [path_param("device", "device id"),
                               {"name": "seq", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0}}],
                "get": op("One alert with the readings around it and the verdict on it", "alerts", Who::Operator,
                          json!({"200": ok("the alert", "AlertDetail")}), &[404]),
            },
            "/api/v1/drift/fleet": {
                "get": with(op("Drift over time per model across its devices: reports in equal buckets of the devices' \
                                clock, how many devices reported and were in drift, the worst-feature distance's mean, \
                                min and max", "drift", Who::Operator,
                               json!({"200": ok("the buckets", "DriftFleet")}), &[]),
                            "parameters", json!([
                                {"name": "since_ms", "in": "query", "schema": {"type": "integer"}},
                                {"name": "until_ms", "in": "query", "schema": {"type": "integer"}},
                                {"name": "points", "in": "query", "description": "1 to 500, default 60",
                                 "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                            ])),
            },
            "/api/v1/drift/{device}/{seq}": {
                "parameters": [path_param("device", "device id"),
                               {"name": "seq", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0}}],
                "get": op("A drift sketch's histograms beside its package's reference", "drift", Who::Operator,
                          json!({"200": ok("the histograms", "SketchDetail")}), &[404]),
            },
            "/api/v1/audit/status": {
                "get": op("The hub's own verification of its audit trail (chain and signed checkpoints)", "audit",
                          Who::Operator, json!({"200": ok("the status", "AuditStatus")}), &[]),
            },
            "/api/v1/metrics": {
                "get": op("Ingestion's counters and its histograms of a batch's time in the database and of a \
                           publish's from its arrival to its acknowledgement, in Prometheus' text format (0.0.4); \
                           scrape with a read-only token", "hub", Who::Operator,
                          json!({"200": {"description": "the metrics",
                                         "content": {"text/plain": {"schema": string()}}}}), &[]),
            },
            "/api/v1/events": {
                "get": with(op("Server-sent events for live pages: `hello` first, then `audit` (each new audit record's \
                                seq, time_ms, actor, action and subject; the event id is the seq, and `Last-Event-ID` \
                                resumes after it) and `ingest` (messages this hub stored: total and new), checked \
                                every second; a comment every 15 s when idle. The stream does not end.",
                               "audit", Who::Operator,
                               json!({"200": {"description": "the stream",
                                              "content": {"text/event-stream": {"schema": string()}}}}), &[]),
                            "parameters", json!([
                                {"name": "Last-Event-ID", "in": "header", "description": "the last audit seq received",
                                 "schema": string()},
                            ])),
            },
            "/api/v1/audit": {
                "get": with(op("The audit trail in chain order; verify it with `impeller audit verify`",
                               "audit", Who::Operator, json!({"200": ok("a page", "AuditPage")}), &[]),
                            "parameters", json!([
                                {"name": "action", "in": "query", "description": "one action, or a prefix ending in `.`", "schema": string()},
                                {"name": "subject", "in": "query", "schema": string()},
                                {"name": "since_ms", "in": "query", "description": "recorded from this time", "schema": {"type": "integer"}},
                                {"name": "limit", "in": "query", "description": "1 to 1000, default 100",
                                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                                {"name": "after", "in": "query", "description": "the `next_after` of the previous page (a sequence number)",
                                 "schema": {"type": "integer", "minimum": 0}},
                            ])),
            },
        },
        "components": {
            "schemas": schemas(),
            "responses": problems,
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer", "description": "an operator's API token"},
                "device": {"type": "http", "scheme": "basic", "description": "a device's id and secret"},
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let mut rest = text.as_str();
        let mut seen = 0;
        while let Some(i) = rest.find("\"$ref\":\"#/components/") {
            rest = &rest[i + 21..];
            let end = rest.find('"').unwrap_or(rest.len());
            let path: Vec<&str> = rest[..end].split('/').collect();
            assert!(doc["components"][path[0]][path[1]].is_object(), "dangling $ref to {path:?}");
            seen += 1;
        }
        assert!(seen > 30, "only {seen} references");
    }
}
