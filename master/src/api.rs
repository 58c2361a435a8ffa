//! The master's HTTP API: decoding scheduler calls (Mesos v1 JSON), encoding
//! events, and rendering the operator endpoints (`/master/state`,
//! `/metrics/snapshot`, `/metrics`). This is the only module of the master that
//! knows JSON; it performs no I/O.

use std::collections::BTreeMap;

use agora_proto::fb;
use agora_proto::http::{Request, Response};
use agora_proto::mesos::flat_resources;
use agora_proto::mesos::{AgentId, CapabilityType, TaskState};
use agora_proto::resources::Resources;
use agora_proto::scheduler::{Call, CallType, Encoding, Event};
use serde_json::{json, Map, Value as Json};

use crate::core::{Framework, Master, OperatorCall, OperatorReply, ResourceOp, RoleView, Task};

pub const SCHEDULER_PATH: &str = "/api/v1/scheduler";
/// Mesos's v1 operator API.
pub const OPERATOR_PATH: &str = "/api/v1";

/// What a request to the master asks for.
#[derive(Debug)]
pub enum Route {
    /// A SUBSCRIBE call: the connection becomes an event stream, in the
    /// encoding the request accepts.
    Subscribe(Call, Encoding),
    /// Any other scheduler call, with the stream id header if present.
    Call(Call, Option<String>),
    /// An operator call, served by the core.
    Operator(OperatorCall),
    /// A read of the master's state, rendered on the core's shard.
    Render(RenderKind),
    /// Answered on the spot.
    Local(Response),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderKind {
    State,
    MetricsJson,
    MetricsPrometheus,
}

/// Mesos answers errors with plain text bodies.
pub fn error(status: u16, message: impl Into<String>) -> Response {
    Response::text(status, message)
}

fn media_type(v: &str) -> String {
    v.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Routes a request, decoding scheduler calls. Errors come back as `Local`
/// responses with Mesos's status codes and messages.
pub fn route(req: &Request, redirect_to: &str) -> Route {
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", SCHEDULER_PATH) => match decode_call(req) {
            Ok(r) => r,
            Err(resp) => Route::Local(resp),
        },
        (_, SCHEDULER_PATH) => Route::Local(error(405, "Expecting 'POST'")),
        ("POST", OPERATOR_PATH) => match decode_operator(req) {
            Ok(c) => Route::Operator(c),
            Err(resp) => Route::Local(resp),
        },
        (_, OPERATOR_PATH) => Route::Local(error(405, "Expecting 'POST'")),
        ("GET", "/master/state" | "/state" | "/master/state.json" | "/state.json") => Route::Render(RenderKind::State),
        ("GET", "/metrics/snapshot") => Route::Render(RenderKind::MetricsJson),
        ("GET", "/metrics") => Route::Render(RenderKind::MetricsPrometheus),
        ("GET", "/health" | "/master/health") => Route::Local(Response::new(200)),
        ("GET", "/version") => Route::Local(Response::json(
            200,
            serde_json::to_vec(&json!({
                "version": agora_proto::MESOS_API_VERSION,
                "agora_version": agora_proto::AGORA_VERSION,
            }))
            .expect("static JSON"),
        )),
        ("GET", "/master/redirect" | "/redirect") => {
            Route::Local(Response::new(307).header("Location", format!("//{redirect_to}")))
        }
        ("GET", _) => Route::Local(error(404, format!("No endpoint at {}", req.path))),
        _ => Route::Local(error(405, format!("{} is not allowed on {}", req.method, req.path))),
    }
}

/// An operator call in JSON (`POST /api/v1`, Mesos's v1 `master::Call`).
/// Unknown or unsupported types, bad roles and bad weights are errors with
/// Mesos's wording where it has one.
fn decode_operator(req: &Request) -> Result<OperatorCall, Response> {
    json_content_type(req)?;
    let v: Json =
        serde_json::from_slice(&req.body).map_err(|e| error(400, format!("Failed to parse body into JSON: {e}")))?;
    let kind = v
        .get("type")
        .and_then(Json::as_str)
        .ok_or_else(|| error(400, "Failed to validate master::Call: Expecting 'type' to be present"))?;
    match kind {
        "GET_WEIGHTS" => Ok(OperatorCall::GetWeights),
        "GET_ROLES" => Ok(OperatorCall::GetRoles),
        "UPDATE_WEIGHTS" => {
            let infos = v
                .pointer("/update_weights/weight_infos")
                .and_then(Json::as_array)
                .ok_or_else(|| error(400, "Expecting 'update_weights.weight_infos' to be present"))?;
            let mut weights = Vec::with_capacity(infos.len().min(crate::core::MAX_ROLE_UPDATES + 1));
            for w in infos {
                let role = w
                    .get("role")
                    .and_then(Json::as_str)
                    .ok_or_else(|| error(400, "Expecting 'role' to be present in each weight_info"))?;
                let weight = w
                    .get("weight")
                    .and_then(Json::as_f64)
                    .ok_or_else(|| error(400, format!("Expecting a numeric 'weight' for role {role:?}")))?;
                weights.push((role.to_string(), weight));
            }
            OperatorCall::update_weights(weights).map_err(|e| error(e.status, e.message))
        }
        "GET_QUOTA" => Ok(OperatorCall::GetQuota),
        "UPDATE_QUOTA" => {
            let configs = v
                .pointer("/update_quota/quota_configs")
                .and_then(Json::as_array)
                .ok_or_else(|| error(400, "Expecting 'update_quota.quota_configs' to be present"))?;
            let mut quota = Vec::with_capacity(configs.len().min(crate::core::MAX_ROLE_UPDATES + 1));
            for c in configs {
                let role = c
                    .get("role")
                    .and_then(Json::as_str)
                    .ok_or_else(|| error(400, "Expecting 'role' to be present in each quota_config"))?;
                let q = crate::allocator::Quota {
                    guarantees: quota_amounts(role, "guarantees", c.get("guarantees"))?,
                    limits: quota_amounts(role, "limits", c.get("limits"))?,
                };
                quota.push((role.to_string(), q));
            }
            let force = match v.pointer("/update_quota/force") {
                None | Some(Json::Null) => false,
                Some(f) => f.as_bool().ok_or_else(|| error(400, "'update_quota.force' must be a boolean"))?,
            };
            OperatorCall::update_quota(quota, force).map_err(|e| error(e.status, e.message))
        }
        "RESERVE_RESOURCES" | "UNRESERVE_RESOURCES" | "CREATE_VOLUMES" | "DESTROY_VOLUMES" => {
            let (field, list) = match kind {
                "RESERVE_RESOURCES" => ("reserve_resources", "resources"),
                "UNRESERVE_RESOURCES" => ("unreserve_resources", "resources"),
                "CREATE_VOLUMES" => ("create_volumes", "volumes"),
                _ => ("destroy_volumes", "volumes"),
            };
            let body = v.get(field).ok_or_else(|| error(400, format!("Expecting '{field}' to be present")))?;
            let agent_id = body
                .pointer("/agent_id/value")
                .and_then(Json::as_str)
                .ok_or_else(|| error(400, format!("Expecting '{field}.agent_id' to be present")))?;
            let resources: Resources = serde_json::from_value(
                body.get(list)
                    .cloned()
                    .ok_or_else(|| error(400, format!("Expecting '{field}.{list}' to be present")))?,
            )
            .map_err(|e| error(400, format!("Invalid '{field}.{list}': {e}")))?;
            let op = match kind {
                "RESERVE_RESOURCES" => ResourceOp::Reserve(resources),
                "UNRESERVE_RESOURCES" => ResourceOp::Unreserve(resources),
                "CREATE_VOLUMES" => ResourceOp::Create(resources),
                _ => ResourceOp::Destroy(resources),
            };
            Ok(OperatorCall::Operate { agent_id: AgentId::new(agent_id), op })
        }
        other if MESOS_OPERATOR_CALLS.contains(&other) => {
            Err(error(501, format!("the operator call {other} is not supported by this master")))
        }
        other => Err(error(400, format!("Failed to validate master::Call: unknown type {other:?}"))),
    }
}

/// Quota guarantees or limits in Mesos's JSON: `{"cpus": {"value": 2.5},
/// "mem": ...}`.
fn quota_amounts(role: &str, field: &str, v: Option<&Json>) -> Result<crate::allocator::Quantities, Response> {
    let mut l = crate::allocator::Quantities::default();
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(l) };
    let obj = v.as_object().ok_or_else(|| error(400, format!("'{field}' of role {role:?} must be an object")))?;
    for (name, value) in obj {
        let i = crate::allocator::SHARE_KINDS.iter().position(|k| k == name).ok_or_else(|| {
            error(400, format!("quota {field} apply to cpus, mem, disk and gpus, not {name:?} (role {role:?})"))
        })?;
        let x = value.get("value").and_then(Json::as_f64).filter(|x| x.is_finite() && *x >= 0.0).ok_or_else(|| {
            error(400, format!("the {name} {field} of role {role:?} must be {{\"value\": a non-negative number}}"))
        })?;
        if x > 1e12 {
            return Err(error(400, format!("the {name} {field} of role {role:?} is too large")));
        }
        l.0[i] = Some((x * 1000.0).round() as i64);
    }
    Ok(l)
}

fn amounts_json(l: &crate::allocator::Quantities) -> Json {
    l.named().map(|(k, v)| (k.to_string(), json!({"value": v}))).collect::<Map<_, _>>().into()
}

/// Mesos's v1 `master::Call` types: the ones this master does not serve are
/// 501, anything else 400.
const MESOS_OPERATOR_CALLS: &[&str] = &[
    "GET_HEALTH",
    "GET_FLAGS",
    "GET_VERSION",
    "GET_METRICS",
    "GET_LOGGING_LEVEL",
    "SET_LOGGING_LEVEL",
    "LIST_FILES",
    "READ_FILE",
    "GET_STATE",
    "GET_AGENTS",
    "GET_FRAMEWORKS",
    "GET_EXECUTORS",
    "GET_OPERATIONS",
    "GET_TASKS",
    "GET_ROLES",
    "GET_WEIGHTS",
    "UPDATE_WEIGHTS",
    "GET_MASTER",
    "SUBSCRIBE",
    "RESERVE_RESOURCES",
    "UNRESERVE_RESOURCES",
    "CREATE_VOLUMES",
    "DESTROY_VOLUMES",
    "GROW_VOLUME",
    "SHRINK_VOLUME",
    "GET_MAINTENANCE_STATUS",
    "GET_MAINTENANCE_SCHEDULE",
    "UPDATE_MAINTENANCE_SCHEDULE",
    "START_MAINTENANCE",
    "STOP_MAINTENANCE",
    "DRAIN_AGENT",
    "DEACTIVATE_AGENT",
    "REACTIVATE_AGENT",
    "GET_QUOTA",
    "UPDATE_QUOTA",
    "SET_QUOTA",
    "REMOVE_QUOTA",
    "TEARDOWN",
    "MARK_AGENT_GONE",
];

/// The JSON of an operator call's answer (Mesos's v1 `master::Response`).
pub fn render_operator(reply: &OperatorReply) -> Vec<u8> {
    let v = match reply {
        OperatorReply::Weights(w) => json!({
            "type": "GET_WEIGHTS",
            "get_weights": { "weight_infos": weights_json(w.iter().map(|(r, w)| (r.as_str(), *w))) },
        }),
        OperatorReply::Roles(roles) => json!({
            "type": "GET_ROLES",
            "get_roles": { "roles": roles.iter().map(role_json).collect::<Vec<_>>() },
        }),
        OperatorReply::Quota(quota) => json!({
            "type": "GET_QUOTA",
            "get_quota": { "status": { "configs": quota
                .iter()
                .map(|(role, q)| {
                    json!({"role": role, "guarantees": amounts_json(&q.guarantees), "limits": amounts_json(&q.limits)})
                })
                .collect::<Vec<_>>() } },
        }),
    };
    serde_json::to_vec(&v).expect("JSON values serialize")
}

fn weights_json<'a>(w: impl Iterator<Item = (&'a str, f64)>) -> Vec<Json> {
    w.map(|(role, weight)| json!({"role": role, "weight": weight})).collect()
}

fn role_json(r: &RoleView) -> Json {
    let resources: Vec<Json> = r
        .allocated
        .named()
        .filter(|(_, v)| *v != 0.0)
        .map(|(k, v)| json!({"name": k, "type": "SCALAR", "scalar": {"value": v}}))
        .collect();
    let named = |a: &crate::allocator::Quantities| -> Map<String, Json> {
        a.named().map(|(k, v)| (k.to_string(), json!(v))).collect()
    };
    let consumed: Map<String, Json> = r.consumed.named().map(|(k, v)| (k.to_string(), json!(v))).collect();
    json!({
        "name": r.name,
        "weight": r.weight,
        "frameworks": r.frameworks.iter().map(|f| json!({"value": f})).collect::<Vec<_>>(),
        "resources": resources,
        "dominant_share": r.dominant_share,
        "quota": {
            "role": r.name,
            "guarantee": named(&r.quota.guarantees),
            "limit": named(&r.quota.limits),
            "consumed": consumed,
        },
    })
}

fn json_content_type(req: &Request) -> Result<(), Response> {
    let ct = req.header("content-type").ok_or_else(|| error(400, "Expecting 'Content-Type' to be present"))?;
    match media_type(ct).as_str() {
        "application/json" => Ok(()),
        "application/x-protobuf" => {
            Err(error(415, "Content-Type application/x-protobuf is not supported; use application/json"))
        }
        other => Err(error(415, format!("Content-Type {other:?} is not supported; use application/json"))),
    }
}

/// A scheduler call in JSON or FlatBuffers, by its `Content-Type`.
fn decode_call(req: &Request) -> Result<Route, Response> {
    let ct = req.header("content-type").ok_or_else(|| error(400, "Expecting 'Content-Type' to be present"))?;
    let encoding = Encoding::from_media_type(ct).ok_or_else(|| {
        error(
            415,
            format!("Content-Type {:?} is not supported; use application/json or {}", media_type(ct), fb::MEDIA_TYPE),
        )
    })?;
    let call: Call = match encoding {
        Encoding::Json => {
            let value: Json = serde_json::from_slice(&req.body)
                .map_err(|e| error(400, format!("Failed to parse body into JSON: {e}")))?;
            serde_json::from_value(value)
                .map_err(|e| error(400, format!("Failed to convert JSON into Call protobuf: {e}")))?
        }
        Encoding::FlatBuffers => fb::decode_call(&req.body).map_err(|e| error(400, e))?,
    };
    call.validate().map_err(|m| error(400, format!("Failed to validate scheduler::Call: {m}")))?;
    let stream_id = req.header("mesos-stream-id").map(str::to_string);
    if call.kind == CallType::Subscribe {
        if stream_id.is_some() {
            return Err(error(400, "Subscribe calls should not include the 'Mesos-Stream-Id' header"));
        }
        // Events in the first encoding the client accepts; in the call's own
        // when it accepts anything (or says nothing).
        let events = match req.header("accept") {
            None => encoding,
            Some(accept) => accept
                .split(',')
                .map(media_type)
                .find_map(|m| match m.as_str() {
                    "*/*" | "application/*" => Some(encoding),
                    m => Encoding::from_media_type(m),
                })
                .ok_or_else(|| {
                    error(406, format!("Accept {accept:?} allows neither application/json nor {}", fb::MEDIA_TYPE))
                })?,
        };
        return Ok(Route::Subscribe(call, events));
    }
    Ok(Route::Call(call, stream_id))
}

/// Encodes an event once, as a RecordIO record in one HTTP chunk.
pub fn encode_event(event: &Event, encoding: Encoding) -> Vec<u8> {
    agora_proto::http::recordio_chunk(&encoding.encode_event(event))
}

fn capabilities(fw: &Framework) -> Json {
    Json::Array(
        fw.info
            .capabilities
            .iter()
            .filter(|c| c.kind != CapabilityType::Other)
            .map(|c| serde_json::to_value(c.kind).unwrap_or(Json::Null))
            .collect(),
    )
}

fn task_json(t: &Task) -> Json {
    let mut v = json!({
        "id": t.info.task_id.value,
        "name": t.info.name,
        "framework_id": t.framework_id.value,
        "executor_id": "",
        "slave_id": t.agent_id.value,
        "agent_id": t.agent_id.value,
        "state": t.state.name(),
        "resources": flat_resources(&t.info.resources),
        "role": t.role,
        "statuses": t.statuses.iter().map(|s| json!({"state": s.state.name(), "timestamp": s.timestamp})).collect::<Vec<_>>(),
    });
    if let Some(l) = &t.info.labels {
        v["labels"] = serde_json::to_value(&l.labels).unwrap_or(Json::Null);
    }
    if let Some(u) = t.unreachable_time {
        v["unreachable_time"] = json!(u);
    }
    if let Some(u) = &t.usage {
        v["statistics"] = usage_json(u);
    }
    v
}

/// A task's latest usage, as its agent reported it.
fn usage_json(u: &agora_proto::wire::TaskUsage) -> Json {
    json!({
        "cpus_used": u.cpus_used,
        "cpus_time_secs": u.cpu_time_secs,
        "cpus_throttled_time_secs": u.throttled_secs,
        "mem_total_bytes": u.mem_bytes,
        "mem_peak_bytes": u.mem_peak_bytes,
        "net_rx_bytes": u.net_rx_bytes,
        "net_tx_bytes": u.net_tx_bytes,
        "net_rx_bytes_per_sec": u.net_rx_bytes_per_sec,
        "net_tx_bytes_per_sec": u.net_tx_bytes_per_sec,
        "blkio_bytes_per_sec": u.io_bytes_per_sec,
        "runq_latency_p99_us": u.runq_p99_us,
        "source": if u.ebpf == 1 { "ebpf" } else { "cgroupfs" },
    })
}

/// A framework's usage: the sum over its running tasks' latest reports.
#[derive(Default)]
struct FrameworkUsage {
    cpus_used: f64,
    mem_bytes: u64,
    net_rx_bytes_per_sec: f64,
    net_tx_bytes_per_sec: f64,
    io_bytes_per_sec: f64,
    reporting_tasks: usize,
}

fn framework_usage(fw: &Framework) -> FrameworkUsage {
    let mut u = FrameworkUsage::default();
    for t in fw.tasks.values() {
        if let Some(r) = &t.usage {
            u.cpus_used += r.cpus_used;
            u.mem_bytes += r.mem_bytes;
            u.net_rx_bytes_per_sec += r.net_rx_bytes_per_sec;
            u.net_tx_bytes_per_sec += r.net_tx_bytes_per_sec;
            u.io_bytes_per_sec += r.io_bytes_per_sec;
            u.reporting_tasks += 1;
        }
    }
    u
}

fn framework_json(m: &Master, fw: &Framework) -> Json {
    let used = m.framework_used(fw);
    let offered = m.framework_offered(fw);
    let mut v = json!({
        "id": fw.id.value,
        "name": fw.info.name,
        "user": fw.info.user,
        "hostname": fw.info.hostname.clone().unwrap_or_default(),
        "webui_url": fw.info.webui_url.clone().unwrap_or_default(),
        "active": fw.connected(),
        "connected": fw.connected(),
        "recovered": fw.recovered,
        "failover_timeout": fw.info.failover_timeout_secs(),
        "checkpoint": fw.info.checkpoint.unwrap_or(false),
        "registered_time": fw.registered_time,
        "capabilities": capabilities(fw),
        "resources": flat_resources(&used.plus(&offered)),
        "used_resources": flat_resources(&used),
        "offered_resources": flat_resources(&offered),
        "tasks": fw.tasks.values().filter(|t| t.state != TaskState::Unreachable).map(task_json).collect::<Vec<_>>(),
        "unreachable_tasks": fw.tasks.values().filter(|t| t.state == TaskState::Unreachable).map(task_json).collect::<Vec<_>>(),
        "completed_tasks": fw.completed_tasks.iter().map(task_json).collect::<Vec<_>>(),
        "offers": fw.offers.iter().filter_map(|o| m.offers.get(o)).map(|o| json!({
            "id": o.id.value,
            "framework_id": o.framework_id.value,
            "slave_id": o.agent_id.value,
            "allocation_info": {"role": o.role},
            "resources": flat_resources(&o.resources),
        })).collect::<Vec<_>>(),
        "executors": [],
    });
    let u = framework_usage(fw);
    v["usage"] = json!({
        "cpus_used": u.cpus_used,
        "mem_total_bytes": u.mem_bytes,
        "net_rx_bytes_per_sec": u.net_rx_bytes_per_sec,
        "net_tx_bytes_per_sec": u.net_tx_bytes_per_sec,
        "blkio_bytes_per_sec": u.io_bytes_per_sec,
        "reporting_tasks": u.reporting_tasks,
    });
    if fw.info.has_capability(CapabilityType::MultiRole) {
        v["roles"] = json!(fw.roles);
    } else {
        v["role"] = json!(fw.roles.first().cloned().unwrap_or_else(|| "*".into()));
    }
    if let Some(p) = &fw.info.principal {
        v["principal"] = json!(p);
    }
    if let Some(t) = fw.reregistered_time {
        v["reregistered_time"] = json!(t);
    }
    if let Some(t) = fw.unregistered_time {
        v["unregistered_time"] = json!(t);
    }
    if let Some(l) = &fw.info.labels {
        v["labels"] = serde_json::to_value(&l.labels).unwrap_or(Json::Null);
    }
    v
}

fn attributes_json(attrs: &[agora_proto::resources::Attribute]) -> Json {
    use agora_proto::resources::AttributeValue;
    let mut m = Map::new();
    for a in attrs {
        let v = match &a.value {
            AttributeValue::Scalar(s) => json!(s.as_f64()),
            other => json!(other.to_string()),
        };
        m.insert(a.name.clone(), v);
    }
    Json::Object(m)
}

/// `/master/state`, shaped like Mesos's.
pub fn render_state(m: &Master, flags: &BTreeMap<String, String>) -> Vec<u8> {
    let c = &m.config;
    let pid = format!("master@{}:{}", c.ip_text, c.port);
    let mut agents: Vec<&crate::core::Agent> = m.agents.values().collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    let slaves: Vec<Json> = agents
        .iter()
        .map(|a| {
            let used = m.agent_used(a);
            let offered = m.agent_offered(a);
            let mut reserved: BTreeMap<String, Resources> = BTreeMap::new();
            for r in a.info.resources.iter().filter(|r| r.reservation.is_some()) {
                reserved.entry(r.role().to_string()).or_default().add_one(r.clone());
            }
            let mut v = json!({
                "id": a.id.value,
                "pid": format!("slave(1)@{}:{}", a.info.hostname, a.info.port),
                "hostname": a.info.hostname,
                "port": a.info.port,
                "attributes": attributes_json(&a.info.attributes),
                "registered_time": a.registered_time,
                "resources": flat_resources(&a.info.resources),
                "used_resources": flat_resources(&used),
                "offered_resources": flat_resources(&offered),
                "reserved_resources": reserved.iter().map(|(k, v)| (k.clone(), flat_resources(v))).collect::<Map<_, _>>(),
                "reserved_resources_full": reserved.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>(),
                "unreserved_resources": flat_resources(&a.info.resources.filter(|r| r.reservation.is_none())),
                "active": a.conn.is_some(),
                "deactivated": false,
                "version": a.info.version,
                "capabilities": ["MULTI_ROLE"],
            });
            if let Some(t) = a.reregistered_time {
                v["reregistered_time"] = json!(t);
            }
            v
        })
        .collect();
    let mut fws: Vec<&Framework> = m.frameworks.values().collect();
    fws.sort_by(|a, b| a.id.cmp(&b.id));
    let state = json!({
        "version": agora_proto::MESOS_API_VERSION,
        "agora_version": agora_proto::AGORA_VERSION,
        "id": c.master_id,
        "pid": pid,
        "hostname": c.hostname,
        "start_time": m.start_time,
        "elected_time": m.start_time,
        "activated_slaves": m.agents.values().filter(|a| a.conn.is_some()).count() as f64,
        "deactivated_slaves": m.agents.values().filter(|a| a.conn.is_none()).count() as f64,
        "unreachable_slaves": m.unreachable_agents.len() as f64,
        "leader": pid,
        "leader_info": m.master_info(),
        "capabilities": [],
        "flags": flags,
        "slaves": slaves,
        "recovered_slaves": m.recovered_agents.keys().map(|a| json!({"id": a.value})).collect::<Vec<_>>(),
        "frameworks": fws.iter().map(|f| framework_json(m, f)).collect::<Vec<_>>(),
        "completed_frameworks": m.completed_frameworks.iter().map(|f| framework_json(m, f)).collect::<Vec<_>>(),
        "orphan_tasks": [],
        "unregistered_frameworks": [],
        "roles": m.roles().iter().map(role_json).collect::<Vec<_>>(),
        "weights": weights_json(m.weights.iter().map(|(r, w)| (r.as_str(), *w))),
    });
    serde_json::to_vec(&state).expect("state always serializes")
}

/// Figures the shell measures (not part of the core's state).
#[derive(Clone, Debug, Default)]
pub struct ShellStats {
    pub uptime_secs: f64,
    pub event_queue_messages: u64,
    pub http_requests: u64,
    pub agent_frames_invalid: u64,
    pub streams_dropped_slow: u64,
    pub n_shards: usize,
}

/// `/metrics/snapshot` as an ordered map of Mesos-style names.
pub fn metrics(m: &Master, s: &ShellStats) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        out.insert(k.to_string(), v);
    };
    let c = &m.counters;
    put("master/uptime_secs", s.uptime_secs);
    put("master/elected", 1.0);
    let connected = m.agents.values().filter(|a| a.conn.is_some()).count() as f64;
    put("master/slaves_connected", connected);
    put("master/slaves_disconnected", m.agents.len() as f64 - connected);
    put("master/slaves_active", connected);
    put("master/slaves_inactive", m.agents.len() as f64 - connected);
    put("master/slaves_unreachable", m.unreachable_agents.len() as f64);
    let fc = m.frameworks.values().filter(|f| f.connected()).count() as f64;
    put("master/frameworks_connected", fc);
    put("master/frameworks_disconnected", m.frameworks.len() as f64 - fc);
    put("master/frameworks_active", fc);
    put("master/frameworks_inactive", m.frameworks.len() as f64 - fc);
    put("master/outstanding_offers", m.offers.len() as f64);
    let states = m.task_state_counts();
    for (st, name) in [
        (TaskState::Staging, "staging"),
        (TaskState::Starting, "starting"),
        (TaskState::Running, "running"),
        (TaskState::Killing, "killing"),
        (TaskState::Unreachable, "unreachable"),
    ] {
        put(&format!("master/tasks_{name}"), *states.get(&st).unwrap_or(&0) as f64);
    }
    for (st, name) in [
        (TaskState::Finished, "finished"),
        (TaskState::Failed, "failed"),
        (TaskState::Killed, "killed"),
        (TaskState::Lost, "lost"),
        (TaskState::Error, "error"),
        (TaskState::Dropped, "dropped"),
        (TaskState::Gone, "gone"),
        (TaskState::GoneByOperator, "gone_by_operator"),
    ] {
        put(&format!("master/tasks_{name}"), *c.tasks_terminal.get(&st).unwrap_or(&0) as f64);
    }
    let mut total = Resources::new();
    let mut used = Resources::new();
    for a in m.agents.values().filter(|a| a.conn.is_some()) {
        total.add(&a.info.resources);
        used.add(&m.agent_used(a));
    }
    for k in ["cpus", "gpus", "mem", "disk"] {
        let t = total.scalar(k).as_f64();
        let u = used.scalar(k).as_f64();
        put(&format!("master/{k}_total"), t);
        put(&format!("master/{k}_used"), u);
        put(&format!("master/{k}_percent"), if t > 0.0 { u / t } else { 0.0 });
    }
    put("master/event_queue_messages", s.event_queue_messages as f64);
    put("master/event_queue_http_requests", s.http_requests as f64);
    put("master/valid_status_updates", c.valid_status_updates as f64);
    put("master/invalid_status_updates", c.invalid_status_updates as f64);
    put("master/valid_status_update_acknowledgements", c.valid_status_update_acknowledgements as f64);
    put("master/invalid_status_update_acknowledgements", c.invalid_status_update_acknowledgements as f64);
    put("master/slave_registrations", c.agent_registrations as f64);
    put("master/slave_reregistrations", c.agent_reregistrations as f64);
    put("master/slave_removals", c.agent_removals as f64);
    put("master/slave_unreachable_completed", c.agents_unreachable as f64);
    put("master/messages_register_framework", c.framework_subscriptions as f64);
    put("master/messages_kill_task", c.messages_kill_task as f64);
    put("master/messages_reconcile_tasks", c.messages_reconcile_tasks as f64);
    put("master/messages_revive_offers", c.messages_revive as f64);
    put("master/messages_suppress_offers", c.messages_suppress as f64);
    put("master/messages_decline_offers", c.offers_declined as f64);
    put("master/messages_launch_tasks", c.tasks_launched as f64);
    put("master/invalid_scheduler_calls", c.invalid_calls as f64);
    put("master/offers_sent", c.offers_sent as f64);
    put("master/offers_rescinded", c.offers_rescinded as f64);
    put("master/offers_lost_races", c.offers_lost_races as f64);
    put("master/framework_removals", c.framework_removals as f64);
    put("master/invalid_agent_frames", s.agent_frames_invalid as f64);
    put("master/streams_disconnected_slow", s.streams_dropped_slow as f64);
    put("master/shards", s.n_shards as f64);
    let st = m.allocator.stats;
    put("allocator/mesos/allocation_runs", st.allocation_runs as f64);
    put("allocator/agora/parallel_runs", st.parallel_runs as f64);
    put("allocator/agora/allocations", st.allocations as f64);
    put("allocator/agora/filtered", st.filtered as f64);
    for r in m.roles() {
        out.insert(format!("allocator/roles/{}/shares/dominant", r.name), r.dominant_share);
        out.insert(format!("allocator/roles/{}/weight", r.name), r.weight);
    }
    out
}

pub fn render_metrics_json(m: &Master, s: &ShellStats) -> Vec<u8> {
    serde_json::to_vec(&metrics(m, s)).expect("numbers serialize")
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The same figures in Prometheus's text format (`master/tasks_running`
/// becomes `agora_master_tasks_running`), plus usage per framework.
pub fn render_metrics_prometheus(m: &Master, s: &ShellStats) -> Vec<u8> {
    let mut out = String::new();
    for (k, v) in metrics(m, s).into_iter().filter(|(k, _)| !k.starts_with("allocator/roles/")) {
        let name: String =
            format!("agora_{k}").chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        out.push_str(&format!("# TYPE {name} gauge\n{name} {v}\n"));
    }
    let roles = m.roles();
    type RoleGetter = fn(&RoleView) -> f64;
    let role_series: [(&str, &str, RoleGetter); 2] = [
        ("agora_role_dominant_share", "The role's dominant share of the cluster, divided by its weight", |r| {
            r.dominant_share
        }),
        ("agora_role_weight", "The role's weight in hierarchical DRF", |r| r.weight),
    ];
    for (name, help, get) in role_series {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for r in &roles {
            out.push_str(&format!("{name}{{role=\"{}\"}} {}\n", label(&r.name), get(r)));
        }
    }
    // Consumed against quota, per resource (cpus in cores, mem and disk in MB).
    type KindGetter = fn(&RoleView, usize) -> Option<i64>;
    let kind_series: [(&str, &str, KindGetter); 4] = [
        ("agora_role_allocated", "Offered or used in the role's subtree", |r, i| Some(r.allocated.0[i])),
        (
            "agora_role_quota_consumed",
            "Counted against the role's quota: allocated, and reserved unallocated",
            |r, i| Some(r.consumed.0[i]),
        ),
        ("agora_role_quota_guarantee", "The role's quota guarantee", |r, i| r.quota.guarantees.0[i]),
        ("agora_role_quota_limit", "The role's quota limit", |r, i| r.quota.limits.0[i]),
    ];
    for (name, help, get) in kind_series {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for r in &roles {
            for (i, kind) in crate::allocator::SHARE_KINDS.iter().enumerate() {
                if let Some(v) = get(r, i) {
                    let role = label(&r.name);
                    out.push_str(&format!("{name}{{role=\"{role}\",resource=\"{kind}\"}} {}\n", v as f64 / 1000.0));
                }
            }
        }
    }
    let mut fws: Vec<&Framework> = m.frameworks.values().collect();
    fws.sort_by(|a, b| a.id.cmp(&b.id));
    let usage: Vec<(String, FrameworkUsage)> = fws
        .iter()
        .map(|f| {
            (
                format!("framework_id=\"{}\",framework=\"{}\"", label(&f.id.value), label(&f.info.name)),
                framework_usage(f),
            )
        })
        .collect();
    type Getter = fn(&FrameworkUsage) -> f64;
    let series: [(&str, &str, Getter); 5] = [
        ("agora_framework_cpus_used", "Cores used by the framework's tasks", |u| u.cpus_used),
        ("agora_framework_mem_bytes", "Memory used by the framework's tasks", |u| u.mem_bytes as f64),
        ("agora_framework_net_rx_bytes_per_second", "Network bytes received per second", |u| u.net_rx_bytes_per_sec),
        ("agora_framework_net_tx_bytes_per_second", "Network bytes sent per second", |u| u.net_tx_bytes_per_sec),
        ("agora_framework_blkio_bytes_per_second", "Block IO bytes per second", |u| u.io_bytes_per_sec),
    ];
    for (name, help, get) in series {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, u) in &usage {
            out.push_str(&format!("{name}{{{labels}}} {}\n", get(u)));
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_proto::http::{Limits, RequestParser};

    fn req(raw: &str) -> Request {
        let mut p = RequestParser::new(Limits::default());
        p.push(raw.as_bytes());
        p.next_request().unwrap().unwrap()
    }

    fn post(body: &str, headers: &str) -> Request {
        req(&format!("POST /api/v1/scheduler HTTP/1.1\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len()))
    }

    fn status(r: Route) -> (u16, String) {
        match r {
            Route::Local(resp) => (resp.status, String::from_utf8(resp.body).unwrap()),
            other => panic!("{other:?}"),
        }
    }

    fn post_bytes(body: &[u8], headers: &str) -> Request {
        let mut raw =
            format!("POST /api/v1/scheduler HTTP/1.1\r\n{headers}Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        raw.extend_from_slice(body);
        let mut p = RequestParser::new(Limits::default());
        p.push(&raw);
        p.next_request().unwrap().unwrap()
    }

    #[test]
    fn flatbuffers_calls_and_the_events_encoding_a_subscription_accepts() {
        let fbct = "Content-Type: application/x-flatbuffers\r\n";
        let sub: Call =
            serde_json::from_str(r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"u","name":"n"}}}"#)
                .unwrap();
        let bytes = fb::encode_call(&sub);
        let json = serde_json::to_vec(&sub).unwrap();
        let jsct = "Content-Type: application/json\r\n";
        // Events follow Accept, else the call's own encoding.
        for (body, headers, want) in [
            (&bytes, fbct.to_string(), Encoding::FlatBuffers),
            (&bytes, format!("{fbct}Accept: */*\r\n"), Encoding::FlatBuffers),
            (&bytes, format!("{fbct}Accept: application/json\r\n"), Encoding::Json),
            (&json, format!("{jsct}Accept: application/x-flatbuffers\r\n"), Encoding::FlatBuffers),
            (&json, format!("{jsct}Accept: text/html, application/x-flatbuffers;q=0.9\r\n"), Encoding::FlatBuffers),
            (&json, jsct.to_string(), Encoding::Json),
        ] {
            match route(&post_bytes(body, &headers), "h:1") {
                Route::Subscribe(c, e) => {
                    assert_eq!(c, sub);
                    assert_eq!(e, want, "{headers}");
                }
                other => panic!("{headers}: {other:?}"),
            }
        }
        let (s, m) = status(route(&post_bytes(&bytes, &format!("{fbct}Accept: text/html\r\n")), "h:1"));
        assert_eq!(s, 406, "{m}");
        // A bad buffer: 400 and what was wrong.
        let (s, m) = status(route(&post_bytes(&bytes[..bytes.len() / 2], fbct), "h:1"));
        assert_eq!(s, 400);
        assert!(m.starts_with("invalid FlatBuffers Call"), "{m}");
        // A FlatBuffers call is validated like a JSON one.
        let teardown = fb::encode_call(&Call::new(CallType::Teardown, None));
        let (s, m) = status(route(&post_bytes(&teardown, fbct), "h:1"));
        assert_eq!(
            (s, m.as_str()),
            (400, "Failed to validate scheduler::Call: Expecting 'framework_id' to be present")
        );
        let mut decline = Call::new(CallType::Decline, Some("f".into()));
        decline.decline = Some(Default::default());
        match route(&post_bytes(&fb::encode_call(&decline), &format!("{fbct}Mesos-Stream-Id: s\r\n")), "h:1") {
            Route::Call(c, Some(sid)) => assert_eq!((c, sid.as_str()), (decline, "s")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn call_decoding_errors() {
        let ct = "Content-Type: application/json\r\n";
        assert_eq!(status(route(&post("{}", ""), "h:1")).0, 400);
        assert_eq!(status(route(&post("{}", "Content-Type: application/x-protobuf\r\n"), "h:1")).0, 415);
        let (s, m) = status(route(&post("{not json", ct), "h:1"));
        assert_eq!(s, 400);
        assert!(m.starts_with("Failed to parse body into JSON"), "{m}");
        let (s, m) = status(route(&post(r#"{"type":"NOPE"}"#, ct), "h:1"));
        assert_eq!(s, 400);
        assert!(m.starts_with("Failed to convert JSON"), "{m}");
        let (s, m) = status(route(&post(r#"{"type":"DECLINE","framework_id":{"value":"f"}}"#, ct), "h:1"));
        assert_eq!(s, 400);
        assert!(m.contains("'decline'"), "{m}");
        let sub = r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"u","name":"n"}}}"#;
        assert_eq!(status(route(&post(sub, &format!("{ct}Mesos-Stream-Id: x\r\n")), "h:1")).0, 400);
        assert_eq!(status(route(&post(sub, &format!("{ct}Accept: text/html\r\n")), "h:1")).0, 406);
        assert!(matches!(
            route(&post(sub, &format!("{ct}Accept: application/json\r\n")), "h:1"),
            Route::Subscribe(_, Encoding::Json)
        ));
        assert!(matches!(
            route(&post(r#"{"type":"REVIVE","framework_id":{"value":"f"}}"#, &format!("{ct}Mesos-Stream-Id: s\r\n")), "h:1"),
            Route::Call(_, Some(ref s)) if s == "s"
        ));
    }

    #[test]
    fn operator_api_calls() {
        let op = |body: &str, ct: &str| {
            route(&req(&format!("POST /api/v1 HTTP/1.1\r\n{ct}Content-Length: {}\r\n\r\n{body}", body.len())), "h:1")
        };
        let ct = "Content-Type: application/json\r\n";
        assert!(matches!(op(r#"{"type":"GET_WEIGHTS"}"#, ct), Route::Operator(crate::core::OperatorCall::GetWeights)));
        let update = r#"{"type":"UPDATE_WEIGHTS","update_weights":{"weight_infos":[{"role":"eng/dev","weight":2.5}]}}"#;
        assert!(matches!(
            op(update, ct),
            Route::Operator(crate::core::OperatorCall::UpdateWeights(ref w)) if w == &[("eng/dev".to_string(), 2.5)]
        ));
        assert_eq!(status(op(r#"{"type":"GET_WEIGHTS"}"#, "")).0, 400);
        assert_eq!(status(op(r#"{"type":"GET_WEIGHTS"}"#, "Content-Type: text/plain\r\n")).0, 415);
        assert_eq!(status(op("{nope", ct)).0, 400);
        assert_eq!(status(op(r#"{"kind":"GET_WEIGHTS"}"#, ct)).0, 400);
        assert_eq!(status(op(r#"{"type":"GET_AGENTS"}"#, ct)).0, 501);
        assert_eq!(status(op(r#"{"type":"MAKE_COFFEE"}"#, ct)).0, 400);
        let (s, m) = status(op(
            r#"{"type":"UPDATE_WEIGHTS","update_weights":{"weight_infos":[{"role":"eng","weight":"heavy"}]}}"#,
            ct,
        ));
        assert_eq!(s, 400);
        assert!(m.contains("numeric 'weight'"), "{m}");
        assert_eq!(status(route(&req("GET /api/v1 HTTP/1.1\r\n\r\n"), "h:1")).0, 405);
        let quota = r#"{"type":"UPDATE_QUOTA","update_quota":{"force":true,"quota_configs":[{"role":"eng","guarantees":{"cpus":{"value":1}},"limits":{"cpus":{"value":2.5},"mem":{"value":1024}}}]}}"#;
        let want = crate::allocator::Quota {
            guarantees: crate::allocator::Quantities([Some(1000), None, None, None]),
            limits: crate::allocator::Quantities([Some(2500), Some(1_024_000), None, None]),
        };
        assert!(matches!(
            op(quota, ct),
            Route::Operator(crate::core::OperatorCall::UpdateQuota { ref quota, force: true })
                if quota == &[("eng".to_string(), want)]
        ));
        for (bad, says) in [
            (
                r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"eng","limits":{"ports":{"value":2}}}]}}"#,
                "not \"ports\"",
            ),
            (
                r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"eng","limits":{"cpus":{"value":-1}}}]}}"#,
                "non-negative",
            ),
            (
                r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"eng","guarantees":{"cpus":{"value":3}},"limits":{"cpus":{"value":2}}}]}}"#,
                "exceeds its limit",
            ),
            (
                r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"eng","guarantees":{"gpus":{"value":"1"}}}]}}"#,
                "gpus guarantees of role",
            ),
            (
                r#"{"type":"UPDATE_QUOTA","update_quota":{"force":"yes","quota_configs":[]}}"#,
                "'update_quota.force' must be a boolean",
            ),
            (r#"{"type":"UPDATE_QUOTA"}"#, "quota_configs"),
            (r#"{"type":"RESERVE_RESOURCES"}"#, "'reserve_resources'"),
            (r#"{"type":"RESERVE_RESOURCES","reserve_resources":{"resources":[]}}"#, "agent_id"),
            (r#"{"type":"CREATE_VOLUMES","create_volumes":{"agent_id":{"value":"a"}}}"#, "create_volumes.volumes"),
            (
                r#"{"type":"DESTROY_VOLUMES","destroy_volumes":{"agent_id":{"value":"a"},"volumes":[{"name":"disk"}]}}"#,
                "Invalid 'destroy_volumes.volumes'",
            ),
            (
                r#"{"type":"CREATE_VOLUMES","create_volumes":{"agent_id":{"value":"a"},"volumes":[{"name":"disk","type":"SCALAR","scalar":{"value":1},"disk":{"persistence":{"id":"v"}}}]}}"#,
                "needs 'disk.volume'",
            ),
        ] {
            let (s, m) = status(op(bad, ct));
            assert_eq!(s, 400, "{bad}");
            assert!(m.contains(says), "{bad}: {m}");
        }
    }

    #[test]
    fn operations_on_agents_decode() {
        let body = r#"{"type":"RESERVE_RESOURCES","reserve_resources":{"agent_id":{"value":"S1"},"resources":[
            {"name":"cpus","type":"SCALAR","scalar":{"value":2},
             "reservations":[{"type":"DYNAMIC","role":"eng","principal":"alice","labels":{"labels":[{"key":"k","value":"v"}]}}]}]}}"#;
        let r = route(
            &req(&format!(
                "POST /api/v1 HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )),
            "h:1",
        );
        let Route::Operator(OperatorCall::Operate { agent_id, op: ResourceOp::Reserve(res) }) = r else {
            panic!("not a RESERVE")
        };
        assert_eq!(agent_id.as_str(), "S1");
        let reservation = res.iter().next().unwrap().reservation.clone().unwrap();
        assert_eq!(reservation.kind, agora_proto::resources::ReservationKind::Dynamic);
        assert_eq!((reservation.role.as_str(), reservation.principal.as_deref()), ("eng", Some("alice")));
        assert_eq!(reservation.labels, vec![("k".to_string(), "v".to_string())]);
        assert_eq!(OperatorCall::Operate { agent_id, op: ResourceOp::Reserve(res) }.done_status(), 202);
    }

    #[test]
    fn operator_routes() {
        assert!(matches!(route(&req("GET /master/state HTTP/1.1\r\n\r\n"), "h:1"), Route::Render(RenderKind::State)));
        assert_eq!(status(route(&req("GET /health HTTP/1.1\r\n\r\n"), "h:1")).0, 200);
        let (s, body) = status(route(&req("GET /version HTTP/1.1\r\n\r\n"), "h:1"));
        assert_eq!(s, 200);
        assert!(body.contains("\"version\":\"1.11.0\""));
        assert_eq!(status(route(&req("GET /nope HTTP/1.1\r\n\r\n"), "h:1")).0, 404);
        assert_eq!(status(route(&req("GET /api/v1/scheduler HTTP/1.1\r\n\r\n"), "h:1")).0, 405);
    }

    #[test]
    fn flat_resources_like_mesos() {
        let r = Resources::parse("cpus:1.5;mem:64;ports:[31000-31001,31005-31005];cpus(eng):1").unwrap();
        let v = flat_resources(&r);
        assert_eq!(v["cpus"], 2.5);
        assert_eq!(v["disk"], 0.0);
        assert_eq!(v["ports"], "[31000-31001, 31005-31005]");
    }
}
