//! The agent's HTTP endpoints: `/health`, `/state`, `/metrics/snapshot`
//! (Mesos's `slave/...` names), `/monitor/statistics` (Mesos's
//! `ResourceStatistics` per task, with the eBPF measurements) and `/metrics`
//! (Prometheus text: per-task series and eBPF self-monitoring). Served on the
//! agent's own io_uring runtime.

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
        ("GET", "/monitor/statistics" | "/monitor/statistics.json") => Response::json(200, statistics(a)),
        ("GET", "/metrics") => {
            Response::new(200).header("Content-Type", "text/plain; version=0.0.4").body(prometheus(a).into_bytes())
        }
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
        "ebpf": a.ebpf_note,
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
    put("agora/ebpf_enabled", a.ebpf.is_some() as u8 as f64);
    for k in ["cpus", "mem", "disk", "gpus"] {
        let (t, u) = (total.scalar(k).as_f64(), used.scalar(k).as_f64());
        put(&format!("slave/{k}_total"), t);
        put(&format!("slave/{k}_used"), u);
        put(&format!("slave/{k}_percent"), if t > 0.0 { u / t } else { 0.0 });
    }
    serde_json::to_vec(&m).expect("numbers serialize")
}

/// `/monitor/statistics`: one entry per task, running or recently ended.
fn statistics(a: &Agent) -> Vec<u8> {
    let mut out = Vec::new();
    for ((fid, tid), t) in &a.tasks {
        out.push(json!({
            "executor_id": tid.value,
            "executor_name": "",
            "framework_id": fid.value,
            "task_id": tid.value,
            "source": t.info.name,
            "state": t.state.name(),
            "statistics": crate::usage::statistics_json(&t.usage, t.info.resources.cpus(), t.info.resources.mem_mb()),
        }));
    }
    for c in &a.completed {
        if c.usage.latest.is_none() {
            continue;
        }
        out.push(json!({
            "executor_id": c.task_id.value,
            "executor_name": "",
            "framework_id": c.framework_id.value,
            "task_id": c.task_id.value,
            "state": c.state.name(),
            "completed": true,
            "statistics": crate::usage::statistics_json(&c.usage, c.cpus_limit, c.mem_limit_mb),
        }));
    }
    serde_json::to_vec(&out).expect("statistics serialize")
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `/metrics`: Prometheus text.
fn prometheus(a: &Agent) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let agent_id = a.agent_id.as_ref().map(|i| i.value.clone()).unwrap_or_default();
    let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
        let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
    };
    gauge(&mut o, "agora_agent_registered", "1 when registered with a master", a.registered as u8 as f64);
    gauge(&mut o, "agora_agent_tasks", "Tasks the agent is running or reporting", a.tasks.len() as f64);
    gauge(
        &mut o,
        "ebpf_enabled",
        "1 when per-task eBPF accounting and enforcement are on",
        a.ebpf.is_some() as u8 as f64,
    );
    if let Some(e) = &a.ebpf {
        let st = e.stats();
        gauge(&mut o, "agora_agent_ebpf_programs_loaded", "eBPF programs loaded", e.programs_loaded() as f64);
        gauge(
            &mut o,
            "agora_agent_ebpf_run_stats_enabled",
            "1 when the agent keeps the kernel's BPF run-time statistics on (--ebpf-stats on)",
            e.run_stats() as u8 as f64,
        );
        let _ = write!(o, "# HELP agora_agent_ebpf_program_runs_total Times each eBPF program ran, counted while the kernel's BPF run-time statistics are on\n# TYPE agora_agent_ebpf_program_runs_total counter\n");
        for p in &st.programs {
            let _ = writeln!(o, "agora_agent_ebpf_program_runs_total{{program=\"{}\"}} {}", esc(&p.name), p.run_count);
        }
        let _ = write!(o, "# HELP agora_agent_ebpf_program_run_seconds_total Time spent in each eBPF program, counted while the kernel's BPF run-time statistics are on\n# TYPE agora_agent_ebpf_program_run_seconds_total counter\n");
        for p in &st.programs {
            let _ = writeln!(
                o,
                "agora_agent_ebpf_program_run_seconds_total{{program=\"{}\"}} {}",
                esc(&p.name),
                p.run_time_ns as f64 / 1e9
            );
        }
        let _ = write!(
            o,
            "# HELP agora_agent_ebpf_map_entries Entries in each eBPF map\n# TYPE agora_agent_ebpf_map_entries gauge\n"
        );
        for m in &st.maps {
            let _ = writeln!(o, "agora_agent_ebpf_map_entries{{map=\"{}\"}} {}", m.name, m.entries);
        }
        let _ = write!(o, "# HELP agora_agent_ebpf_map_max_entries Capacity of each eBPF map\n# TYPE agora_agent_ebpf_map_max_entries gauge\n");
        for m in &st.maps {
            let _ = writeln!(o, "agora_agent_ebpf_map_max_entries{{map=\"{}\"}} {}", m.name, m.max_entries);
        }
        gauge(
            &mut o,
            "agora_agent_ebpf_read_errors_total",
            "Kernel object pointers the eBPF programs found null",
            st.read_errors as f64,
        );
        gauge(
            &mut o,
            "agora_agent_ebpf_registrations_failed_total",
            "Tasks that could not be registered (map full)",
            st.registrations_failed as f64,
        );
    }
    // Per-task series.
    type Get = fn(&crate::usage::Sample) -> Option<f64>;
    let series: [(&str, &str, &str, Get); 17] = [
        (
            "agora_task_cpu_seconds_total",
            "counter",
            "CPU time (eBPF on-CPU time when available, else the cgroup's)",
            |s| s.ebpf.map(|e| e.cpu_ns as f64 / 1e9).or(s.cgroup.cpu_usage_ns.map(|n| n as f64 / 1e9)),
        ),
        ("agora_task_cpu_cgroup_seconds_total", "counter", "CPU time as the cgroup accounts it", |s| {
            s.cgroup.cpu_usage_ns.map(|n| n as f64 / 1e9)
        }),
        ("agora_task_cpu_throttled_seconds_total", "counter", "Time the task was throttled by its CPU limit", |s| {
            s.cgroup.throttled_ns.map(|n| n as f64 / 1e9)
        }),
        ("agora_task_cpu_throttled_periods_total", "counter", "Periods in which the task was throttled", |s| {
            s.cgroup.nr_throttled.map(|n| n as f64)
        }),
        ("agora_task_mem_bytes", "gauge", "Memory used", |s| s.cgroup.mem_usage_bytes.map(|n| n as f64)),
        ("agora_task_mem_peak_bytes", "gauge", "Most memory used", |s| s.cgroup.mem_peak_bytes.map(|n| n as f64)),
        ("agora_task_blkio_read_bytes_total", "counter", "Bytes read from block devices (cgroup io accounting)", |s| {
            s.cgroup.io_read_bytes.map(|n| n as f64)
        }),
        (
            "agora_task_blkio_write_bytes_total",
            "counter",
            "Bytes written to block devices (cgroup io accounting)",
            |s| s.cgroup.io_write_bytes.map(|n| n as f64),
        ),
        ("agora_task_net_rx_bytes_total", "counter", "Network bytes received", |s| {
            s.ebpf.map(|e| e.net_rx_bytes as f64)
        }),
        ("agora_task_net_rx_packets_total", "counter", "Network packets received", |s| {
            s.ebpf.map(|e| e.net_rx_packets as f64)
        }),
        ("agora_task_net_tx_bytes_total", "counter", "Network bytes sent", |s| s.ebpf.map(|e| e.net_tx_bytes as f64)),
        ("agora_task_net_tx_packets_total", "counter", "Network packets sent", |s| {
            s.ebpf.map(|e| e.net_tx_packets as f64)
        }),
        ("agora_task_egress_dropped_packets_total", "counter", "Packets dropped by the egress limit", |s| {
            s.ebpf.map(|e| e.egress_dropped_packets as f64)
        }),
        ("agora_task_bind_denied_total", "counter", "Binds refused because the port is not the task's", |s| {
            s.ebpf.map(|e| e.bind_denied as f64)
        }),
        ("agora_task_oom_kills_total", "counter", "Processes of the task killed by the OOM killer", |s| {
            Some(s.ebpf.map(|e| e.oom_kills).unwrap_or(0).max(s.cgroup.oom_kills.unwrap_or(0)) as f64)
        }),
        ("agora_task_preemptions_total", "counter", "Times the task was preempted, by who took the CPU", |_| None),
        ("agora_task_runq_latency_seconds", "histogram", "Time from wakeup to running", |_| None),
    ];
    let labels = |fid: &str, tid: &str| {
        format!("task_id=\"{}\",framework_id=\"{}\",agent_id=\"{}\"", esc(tid), esc(fid), esc(&agent_id))
    };
    let samples: Vec<(String, &crate::usage::Sample)> = a
        .tasks
        .iter()
        .filter_map(|((f, t), r)| r.usage.latest.as_ref().map(|s| (labels(&f.value, &t.value), s)))
        .collect();
    for (name, kind, help, get) in series {
        let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for (l, s) in &samples {
            match name {
                "agora_task_preemptions_total" => {
                    if let Some(e) = s.ebpf {
                        for (by, n) in [
                            ("self", e.preempted_by_self),
                            ("task", e.preempted_by_task),
                            ("system", e.preempted_by_system),
                        ] {
                            let _ = writeln!(o, "{name}{{{l},by=\"{by}\"}} {n}");
                        }
                    }
                }
                "agora_task_runq_latency_seconds" => {
                    if let Some(e) = s.ebpf {
                        // The last bucket has no upper bound: it is only
                        // in +Inf. Count is the buckets' total, so that it
                        // always equals +Inf.
                        let (bounded, _) = e.rq_hist.split_at(e.rq_hist.len() - 1);
                        let mut cum = 0u64;
                        for (i, n) in bounded.iter().enumerate() {
                            cum += n;
                            let le = agora_ebpf_common::rq_bucket_upper_us(i) as f64 / 1e6;
                            let _ = writeln!(o, "{name}_bucket{{{l},le=\"{le}\"}} {cum}");
                        }
                        let total: u64 = e.rq_hist.iter().sum();
                        let _ = writeln!(o, "{name}_bucket{{{l},le=\"+Inf\"}} {total}");
                        let _ = writeln!(o, "{name}_sum{{{l}}} {}", e.rq_sum_ns as f64 / 1e9);
                        let _ = writeln!(o, "{name}_count{{{l}}} {total}");
                    }
                }
                _ => {
                    if let Some(v) = get(s) {
                        let _ = writeln!(o, "{name}{{{l}}} {v}");
                    }
                }
            }
        }
    }
    o
}
