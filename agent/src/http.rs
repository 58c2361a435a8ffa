//! The agent's HTTP endpoints: `/health`, `/state` and `/metrics/snapshot`
//! (Mesos's `slave/...` names). Served on the agent's own io_uring runtime.

use std::cell::RefCell;
use std::rc::Rc;

use agora_proto::http::{Limits, RequestParser, Response};
use agora_proto::mesos::{flat_resources, TaskState};
use serde_json::json;
use tokio_uring::net::{TcpListener, TcpStream};

use crate::agent::Agent;

/// Concurrent HTTP connections served; more are closed at once.
const MAX_CONNECTIONS: usize = 1024;

pub async fn serve(listener: TcpListener, agent: Rc<RefCell<Agent>>) {
    let active = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        if active.get() >= MAX_CONNECTIONS {
            continue;
        }
        active.set(active.get() + 1);
        let (agent, active) = (agent.clone(), active.clone());
        tokio_uring::spawn(async move {
            connection(stream, agent).await;
            active.set(active.get() - 1);
        });
    }
}

async fn connection(stream: TcpStream, agent: Rc<RefCell<Agent>>) {
    let mut parser = RequestParser::new(Limits { max_body_bytes: 1 << 20, ..Default::default() });
    loop {
        let req = match parser.next_request() {
            Ok(Some(r)) => r,
            Ok(None) => {
                let (res, buf) = stream.read(Vec::with_capacity(16 << 10)).await;
                match res {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        parser.push(&buf);
                        continue;
                    }
                }
            }
            Err(e) => {
                let _ = stream.write_all(Response::text(e.status(), e.to_string()).encode(false)).await;
                return;
            }
        };
        let resp = route(&req.method, &req.path, &agent.borrow());
        let (res, _) = stream.write_all(resp.encode(req.keep_alive)).await;
        if res.is_err() || !req.keep_alive {
            return;
        }
    }
}

fn route(method: &str, path: &str, a: &Agent) -> Response {
    match (method, path) {
        ("GET", "/health" | "/slave(1)/health") => Response::new(200),
        ("GET", "/state" | "/slave(1)/state" | "/state.json") => Response::json(200, state(a)),
        ("GET", "/metrics/snapshot") => Response::json(200, metrics(a)),
        ("GET", _) => Response::text(404, format!("No endpoint at {path}")),
        _ => Response::text(405, format!("{method} is not allowed on {path}")),
    }
}

fn state(a: &Agent) -> Vec<u8> {
    let tasks: Vec<_> = a
        .tasks
        .iter()
        .map(|((fid, tid), t)| {
            json!({
                "id": tid.value, "framework_id": fid.value, "name": t.info.name,
                "state": t.state.name(), "resources": flat_resources(&t.info.resources),
                "sandbox": t.sandbox.display().to_string(), "pid": t.pid,
                "cgroups": t.cgroup.as_ref().map(|c| c.dirs().iter().map(|d| d.display().to_string()).collect::<Vec<_>>()),
                "unacknowledged_updates": t.pending.len(),
            })
        })
        .collect();
    let completed: Vec<_> = a
        .completed
        .iter()
        .map(|c| json!({"id": c.task_id.value, "framework_id": c.framework_id.value, "state": c.state.name(), "sandbox": c.sandbox.display().to_string()}))
        .collect();
    serde_json::to_vec(&json!({
        "id": a.agent_id.as_ref().map(|i| i.value.clone()),
        "hostname": a.cfg.info.hostname,
        "master_hostname": a.cfg.master,
        "version": agora_proto::MESOS_API_VERSION,
        "agora_version": agora_proto::AGORA_VERSION,
        "registered": a.registered,
        "resources": flat_resources(&a.cfg.info.resources),
        "attributes": a.attributes().iter().map(|x| (x.name.clone(), json!(x.value.to_string()))).collect::<serde_json::Map<_, _>>(),
        "isolation": if a.cgroups.is_some() { "cgroups" } else { "none" },
        "cgroups": a.cgroups.as_ref().map(|c| c.dirs().iter().map(|d| d.display().to_string()).collect::<Vec<_>>()),
        "work_dir": a.cfg.work_dir.display().to_string(),
        "tasks": tasks,
        "completed_tasks": completed,
    }))
    .expect("state serializes")
}

fn metrics(a: &Agent) -> Vec<u8> {
    let c = &a.counters;
    let count = |s: TaskState| a.tasks.values().filter(|t| t.state == s && !t.exited).count() as f64;
    let done = |s: TaskState| *c.tasks_terminal.get(&s).unwrap_or(&0) as f64;
    let total = &a.cfg.info.resources;
    let mut used = agora_proto::resources::Resources::new();
    for t in a.tasks.values().filter(|t| !t.exited) {
        used.add(&t.info.resources);
    }
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: f64| {
        m.insert(k.to_string(), json!(v));
    };
    put("slave/uptime_secs", a.started.elapsed().as_secs_f64());
    put("slave/registered", if a.registered { 1.0 } else { 0.0 });
    put("slave/tasks_staging", count(TaskState::Staging));
    put("slave/tasks_starting", count(TaskState::Starting));
    put("slave/tasks_running", count(TaskState::Running));
    put("slave/tasks_killing", count(TaskState::Killing));
    put("slave/tasks_finished", done(TaskState::Finished));
    put("slave/tasks_failed", done(TaskState::Failed));
    put("slave/tasks_killed", done(TaskState::Killed));
    put("slave/container_launch_errors", c.launch_errors as f64);
    put("slave/valid_status_updates", c.updates_sent as f64);
    put("agora/status_update_retries", c.updates_retried as f64);
    put("agora/status_update_acknowledgements", c.updates_acknowledged as f64);
    put("agora/master_disconnections", c.disconnections as f64);
    for k in ["cpus", "mem", "disk", "gpus"] {
        let (t, u) = (total.scalar(k).as_f64(), used.scalar(k).as_f64());
        put(&format!("slave/{k}_total"), t);
        put(&format!("slave/{k}_used"), u);
        put(&format!("slave/{k}_percent"), if t > 0.0 { u / t } else { 0.0 });
    }
    serde_json::to_vec(&m).expect("numbers serialize")
}
