//! `agora`: run tasks and look at the cluster.
//!
//! - `agora run`: like mesos-execute, runs a command as one or more tasks,
//!   prints their state transitions and exits with the task's exit code.
//! - `agora agents | frameworks | tasks`: tables from the master's state.
//! - `agora top`: a live table of running tasks and what they use.
//! - `agora weights`, `agora quota`: role weights, quota guarantees and
//!   limits.
//! - `agora reserve`, `agora unreserve`, `agora volume`: dynamic
//!   reservations and persistent volumes on agents.

mod top;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use agora_proto::mesos::{CommandInfo, FrameworkInfo, TaskId, TaskInfo, TaskState};
use agora_proto::resources::Resources;
use agora_sdk::{Driver, DriverEvent};
use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "agora", version, about = "Run tasks on an Agora cluster and inspect it")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command as tasks and wait for them (like mesos-execute).
    Run {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        /// Task name (and id, with an index when there are several).
        #[arg(long)]
        name: String,
        /// Shell command to run.
        #[arg(long)]
        command: String,
        /// Resources per task, e.g. `cpus:0.5;mem:64`.
        #[arg(long, default_value = "cpus:0.1;mem:32")]
        resources: String,
        #[arg(long, default_value_t = 1)]
        instances: usize,
        #[arg(long, default_value = "*")]
        role: String,
        /// Environment for the task, `KEY=VALUE`, repeatable.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// The agents the master knows.
    Agents {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        #[arg(long)]
        json: bool,
    },
    /// Role weights: shows them, or sets them with `--set ROLE=WEIGHT`
    /// (repeatable; weight 1 is the default). Also lists the roles.
    Weights {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        #[arg(long = "set", value_name = "ROLE=WEIGHT")]
        set: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Role quota: shows what each role consumes against its guarantees
    /// and limits, sets limits with `--set 'ROLE=cpus:4;mem:8192'` and
    /// guarantees with `--guarantee 'ROLE=cpus:2'` (each repeatable; cpus,
    /// mem, disk, gpus; the other half of the role's quota is kept), and
    /// clears a role's quota with `--clear ROLE`.
    Quota {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        #[arg(long = "set", value_name = "ROLE=LIMITS")]
        set: Vec<String>,
        #[arg(long = "guarantee", value_name = "ROLE=GUARANTEES")]
        guarantee: Vec<String>,
        #[arg(long = "clear", value_name = "ROLE")]
        clear: Vec<String>,
        /// Set guarantees even if they exceed what the cluster has.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Reserves an agent's unreserved resources for a role, dynamically:
    /// `agora reserve --agent ID 'cpus(eng):2;disk(eng, alice):1024'` (the
    /// role in parentheses, optionally with a principal).
    Reserve {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        #[arg(long)]
        agent: String,
        resources: String,
    },
    /// Gives dynamically reserved resources back: the same syntax as
    /// `reserve`.
    Unreserve {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        #[arg(long)]
        agent: String,
        resources: String,
    },
    /// Persistent volumes: list, create or destroy them.
    Volume {
        #[command(subcommand)]
        cmd: VolumeCmd,
    },
    /// The frameworks subscribed to the master.
    Frameworks {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        #[arg(long)]
        json: bool,
    },
    /// Tasks across the cluster.
    Tasks {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        /// Include completed tasks.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// A live table of running tasks across the cluster: CPU, CFS
    /// throttling, run-queue latency p99, memory, network and block IO.
    Top {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        /// Order, largest first (keys c, r, n, i, m change it while running).
        #[arg(long, value_enum, default_value = "cpu")]
        sort: top::SortKey,
        /// Time between refreshes, e.g. `2secs`, `500ms`.
        #[arg(long, default_value = "2secs", value_parser = agora_proto::duration::parse)]
        interval: Duration,
        /// Print one table, measured over one interval, and exit.
        #[arg(long)]
        once: bool,
        /// Print the rows of one table as JSON and exit.
        #[arg(long)]
        json: bool,
        /// Show at most this many tasks.
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// The volumes on every agent.
    List {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        #[arg(long)]
        json: bool,
    },
    /// Creates a volume on disk reserved to a role (reserve it first).
    Create {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        #[arg(long)]
        agent: String,
        #[arg(long)]
        role: String,
        /// The volume's id, unique on the agent.
        #[arg(long)]
        id: String,
        /// Size in MB, taken from the role's reserved disk.
        #[arg(long)]
        size: f64,
        /// Where tasks see it, relative to their sandbox.
        #[arg(long)]
        path: String,
        /// The principal of the reservation the disk is in, if it has one.
        #[arg(long)]
        principal: Option<String>,
        /// The disk is statically reserved (`--resources 'disk(eng):...'`).
        #[arg(long)]
        static_reservation: bool,
        #[arg(long)]
        read_only: bool,
    },
    /// Destroys a volume (its data goes); refused while a task uses it.
    Destroy {
        #[arg(long, default_value = "127.0.0.1:5050")]
        master: String,
        #[arg(long)]
        agent: String,
        #[arg(long)]
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Run { master, name, command, resources, instances, role, env } => {
                run(&master, &name, &command, &resources, instances, &role, &env).await
            }
            Cmd::Agents { master, json } => agents(&master, json).await.map(|_| 0),
            Cmd::Frameworks { master, json } => frameworks(&master, json).await.map(|_| 0),
            Cmd::Weights { master, set, json } => weights(&master, &set, json).await.map(|_| 0),
            Cmd::Quota { master, set, guarantee, clear, force, json } => {
                quota(&master, QuotaUpdate { limits: &set, guarantees: &guarantee, clear: &clear, force }, json)
                    .await
                    .map(|_| 0)
            }
            Cmd::Tasks { master, all, json } => tasks(&master, all, json).await.map(|_| 0),
            Cmd::Reserve { master, agent, resources } => {
                reserve(&master, &agent, &resources, "RESERVE_RESOURCES").await.map(|_| 0)
            }
            Cmd::Unreserve { master, agent, resources } => {
                reserve(&master, &agent, &resources, "UNRESERVE_RESOURCES").await.map(|_| 0)
            }
            Cmd::Volume { cmd } => volume(cmd).await.map(|_| 0),
            Cmd::Top { master, sort, interval, once, json, limit } => {
                top::run(top::Options { master, sort, interval, once, json, limit }).await.map(|_| 0)
            }
        }
    });
    match res {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("agora: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(
    master: &str,
    name: &str,
    command: &str,
    resources: &str,
    instances: usize,
    role: &str,
    env: &[String],
) -> anyhow::Result<i32> {
    anyhow::ensure!(instances >= 1, "--instances must be at least 1");
    let per_task = Resources::parse(resources)?;
    anyhow::ensure!(!per_task.is_empty(), "--resources must not be empty");
    let mut variables = Vec::new();
    for kv in env {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--env takes KEY=VALUE, not {kv:?}"))?;
        variables.push(agora_proto::mesos::EnvVariable { name: k.into(), value: v.into() });
    }
    let info = FrameworkInfo {
        user: std::env::var("USER").unwrap_or_else(|_| "root".into()),
        name: format!("agora-run ({name})"),
        role: Some(role.to_string()),
        capabilities: vec![agora_proto::mesos::Capability {
            kind: agora_proto::mesos::CapabilityType::TaskKillingState,
        }],
        ..Default::default()
    };
    let (driver, mut events) = Driver::start(master, info).await?;
    let ids: Vec<String> =
        if instances == 1 { vec![name.to_string()] } else { (0..instances).map(|i| format!("{name}-{i}")).collect() };
    let mut to_launch: Vec<String> = ids.clone();
    let mut outcome: HashMap<String, (TaskState, Option<i32>)> = HashMap::new();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut waiting_note = Box::pin(tokio::time::sleep(Duration::from_secs(5)));
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = &mut interrupt => {
                eprintln!("Interrupted: killing the tasks");
                let _ = driver.teardown().await;
                return Ok(130);
            }
            _ = &mut waiting_note, if !to_launch.is_empty() => {
                eprintln!("Waiting for offers that fit {per_task} ...");
                continue;
            }
        };
        let Some(ev) = ev else { anyhow::bail!("the driver stopped") };
        let ev = match ev {
            DriverEvent::Subscribed { framework_id } => {
                println!("Subscribed with ID '{framework_id}'");
                continue;
            }
            DriverEvent::Disconnected(why) => anyhow::bail!("lost the master: {why}"),
            DriverEvent::Error(m) => anyhow::bail!("{m}"),
            DriverEvent::Event(e) => e,
        };
        if let Some(offers) = ev.offers {
            for offer in offers.offers {
                let mut available = offer.resources.clone();
                let mut batch = Vec::new();
                while let Some(id) = to_launch.first() {
                    let want = per_task
                        .allocate_to(offer.allocation_info.as_ref().and_then(|a| a.role.as_deref()).unwrap_or(role));
                    if !available.contains(&want) {
                        break;
                    }
                    available.subtract(&want).expect("contained");
                    batch.push(TaskInfo {
                        name: id.clone(),
                        task_id: TaskId::new(id),
                        agent_id: offer.agent_id.clone(),
                        resources: want,
                        command: Some(CommandInfo {
                            value: Some(command.to_string()),
                            environment: (!variables.is_empty())
                                .then(|| agora_proto::mesos::Environment { variables: variables.clone() }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                    to_launch.remove(0);
                }
                if batch.is_empty() {
                    driver.decline(vec![offer.id.clone()], if to_launch.is_empty() { 3600.0 } else { 1.0 }).await?;
                    continue;
                }
                for t in &batch {
                    println!("Launching task '{}' on agent '{}' ({})", t.task_id, offer.agent_id, offer.hostname);
                }
                driver.launch(&offer, batch, 3600.0).await?;
                if to_launch.is_empty() {
                    driver.suppress().await?;
                }
            }
        }
        if let Some(u) = ev.update {
            let s = u.status;
            print!("Received status update {} for task '{}'", s.state, s.task_id);
            if let Some(m) = &s.message {
                print!(": {m}");
            }
            if let Some(r) = s.reason {
                print!(
                    " ({})",
                    serde_json::to_value(r).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
                );
            }
            println!();
            driver.acknowledge(&s).await?;
            if s.state.is_terminal() {
                outcome.insert(s.task_id.value.clone(), (s.state, s.exit_code()));
            }
            if outcome.len() == ids.len() {
                let _ = driver.teardown().await;
                // The first task's code when one failed, 0 when all finished.
                for id in &ids {
                    match outcome[id] {
                        (TaskState::Finished, _) => {}
                        (_, Some(code)) if code != 0 => return Ok(code),
                        _ => return Ok(1),
                    }
                }
                return Ok(0);
            }
        }
    }
}

async fn state(master: &str) -> anyhow::Result<Value> {
    let body = agora_sdk::http::get(master, "/master/state").await?;
    Ok(serde_json::from_slice(&body)?)
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(0.0)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

async fn agents(master: &str, json: bool) -> anyhow::Result<()> {
    let st = state(master).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st["slaves"])?);
        return Ok(());
    }
    let rows = st["slaves"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            vec![
                s(&a["id"]),
                s(&a["hostname"]),
                format!("{}/{}", num(a, &["used_resources", "cpus"]), num(a, &["resources", "cpus"])),
                format!("{}/{}", num(a, &["used_resources", "mem"]), num(a, &["resources", "mem"])),
                s(&a["resources"]["ports"]),
                s(&a["active"]),
            ]
        })
        .collect();
    table(&["ID", "HOSTNAME", "CPUS", "MEM (MB)", "PORTS", "ACTIVE"], rows);
    Ok(())
}

/// An operator call (`POST /api/v1`); the response body.
async fn operator(master: &str, call: &Value) -> anyhow::Result<Vec<u8>> {
    let mut conn = agora_sdk::http::Connection::open(master).await?;
    let (status, body) = conn.post("/api/v1", "application/json", &[], &serde_json::to_vec(call)?).await?;
    if !(200..300).contains(&status) {
        anyhow::bail!("the master refused the call ({status}): {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(body)
}

/// RESERVE_RESOURCES or UNRESERVE_RESOURCES of `text` (Mesos's syntax;
/// every role given is a dynamic reservation).
async fn reserve(master: &str, agent: &str, text: &str, kind: &str) -> anyhow::Result<()> {
    let resources = dynamic(Resources::parse(text)?);
    if resources.iter().any(|r| r.reservation.is_none()) {
        anyhow::bail!("{text:?}: name the role of every resource, e.g. 'cpus(eng):2'");
    }
    let field = kind.to_lowercase();
    let call = serde_json::json!({"type": kind, field: {"agent_id": {"value": agent}, "resources": resources}});
    operator(master, &call).await?;
    println!("{}: {resources} on agent {agent}", if kind == "RESERVE_RESOURCES" { "reserved" } else { "unreserved" });
    Ok(())
}

/// The same resources with every reservation made dynamic.
fn dynamic(r: Resources) -> Resources {
    Resources::from_vec(
        r.into_vec()
            .into_iter()
            .map(|mut x| {
                if let Some(res) = x.reservation.as_mut() {
                    res.kind = agora_proto::resources::ReservationKind::Dynamic;
                }
                x
            })
            .collect(),
    )
}

/// Every volume: (agent id, resource).
async fn volumes(master: &str) -> anyhow::Result<Vec<(String, agora_proto::resources::Resource)>> {
    let state = state(master).await?;
    let mut out = Vec::new();
    for a in state["slaves"].as_array().into_iter().flatten() {
        for list in a["reserved_resources_full"].as_object().into_iter().flat_map(|m| m.values()) {
            let r: Resources = serde_json::from_value(list.clone())?;
            out.extend(r.into_vec().into_iter().filter(|r| r.volume.is_some()).map(|r| (s(&a["id"]), r)));
        }
    }
    Ok(out)
}

async fn volume(cmd: VolumeCmd) -> anyhow::Result<()> {
    match cmd {
        VolumeCmd::List { master, json } => {
            let all = volumes(&master).await?;
            if json {
                let v: Vec<Value> = all.iter().map(|(a, r)| serde_json::json!({"agent_id": a, "volume": r})).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let rows = all
                .iter()
                .map(|(a, r)| {
                    let v = r.volume.as_ref().expect("volumes only");
                    vec![
                        a.clone(),
                        v.id.clone(),
                        r.role().to_string(),
                        r.value.to_string(),
                        v.container_path.clone(),
                        if v.read_only { "ro" } else { "rw" }.to_string(),
                    ]
                })
                .collect();
            table(&["AGENT", "ID", "ROLE", "MB", "PATH", "MODE"], rows);
            Ok(())
        }
        VolumeCmd::Create { master, agent, role, id, size, path, principal, static_reservation, read_only } => {
            let kind = if static_reservation {
                agora_proto::resources::ReservationKind::Static
            } else {
                agora_proto::resources::ReservationKind::Dynamic
            };
            let mut r = agora_proto::resources::Resource::scalar("disk", size).reserved_to(&role, kind);
            if let Some(res) = r.reservation.as_mut() {
                res.principal = principal;
            }
            r.volume = Some(Box::new(agora_proto::resources::Volume {
                id: id.clone(),
                principal: None,
                container_path: path,
                read_only,
            }));
            let volumes = Resources::from_vec(vec![r]);
            let call = serde_json::json!({"type": "CREATE_VOLUMES",
                "create_volumes": {"agent_id": {"value": agent}, "volumes": volumes}});
            operator(&master, &call).await?;
            println!("created volume {id} on agent {agent}");
            Ok(())
        }
        VolumeCmd::Destroy { master, agent, id } => {
            let found = volumes(&master)
                .await?
                .into_iter()
                .find(|(a, r)| a == &agent && r.volume.as_ref().is_some_and(|v| v.id == id));
            let Some((_, r)) = found else { anyhow::bail!("agent {agent} has no volume {id:?}") };
            let volumes = Resources::from_vec(vec![r]);
            let call = serde_json::json!({"type": "DESTROY_VOLUMES",
                "destroy_volumes": {"agent_id": {"value": agent}, "volumes": volumes}});
            operator(&master, &call).await?;
            println!("destroyed volume {id} on agent {agent}");
            Ok(())
        }
    }
}

/// The master's roles (GET_ROLES).
async fn get_roles(master: &str) -> anyhow::Result<Vec<Value>> {
    let body = operator(master, &serde_json::json!({"type": "GET_ROLES"})).await?;
    let roles: Value = serde_json::from_slice(&body)?;
    Ok(roles["get_roles"]["roles"].as_array().cloned().unwrap_or_default())
}

async fn weights(master: &str, set: &[String], json: bool) -> anyhow::Result<()> {
    if !set.is_empty() {
        let mut infos = Vec::new();
        for s in set {
            let (role, w) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("--set {s:?}: expected ROLE=WEIGHT"))?;
            let weight: f64 = w.parse().map_err(|_| anyhow::anyhow!("--set {s:?}: {w:?} is not a number"))?;
            infos.push(serde_json::json!({"role": role, "weight": weight}));
        }
        let call = serde_json::json!({"type": "UPDATE_WEIGHTS", "update_weights": {"weight_infos": infos}});
        operator(master, &call).await?;
    }
    let roles = get_roles(master).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&roles)?);
        return Ok(());
    }
    let rows = roles
        .iter()
        .map(|r| {
            vec![
                s(&r["name"]),
                s(&r["weight"]),
                format!("{:.3}", r["dominant_share"].as_f64().unwrap_or(0.0)),
                allocated_cpus(r).to_string(),
                r["frameworks"].as_array().map(|f| f.len()).unwrap_or(0).to_string(),
            ]
        })
        .collect();
    table(&["ROLE", "WEIGHT", "SHARE", "CPUS", "FRAMEWORKS"], rows);
    Ok(())
}

/// The cpus offered or used in a GET_ROLES role's subtree (its
/// `resources`; its quota's `consumed` also counts unused reservations).
fn allocated_cpus(role: &Value) -> f64 {
    role["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"] == "cpus")
        .filter_map(|r| r["scalar"]["value"].as_f64())
        .sum()
}

const QUOTA_KINDS: [&str; 4] = ["cpus", "mem", "disk", "gpus"];

/// What `agora quota` changes.
struct QuotaUpdate<'a> {
    limits: &'a [String],
    guarantees: &'a [String],
    clear: &'a [String],
    force: bool,
}

/// `ROLE=cpus:N;mem:N...` as a role and Mesos's quota JSON.
fn quota_arg(flag: &str, s: &str) -> anyhow::Result<(String, Value)> {
    let (role, text) =
        s.split_once('=').ok_or_else(|| anyhow::anyhow!("{flag} {s:?}: expected ROLE=cpus:N;mem:N..."))?;
    let parsed = agora_proto::resources::Resources::parse(text).map_err(|e| anyhow::anyhow!("{flag} {s:?}: {e}"))?;
    let mut amounts = serde_json::Map::new();
    for r in parsed.iter() {
        if !QUOTA_KINDS.contains(&r.name.as_str()) {
            anyhow::bail!("{flag} {s:?}: quota applies to cpus, mem, disk and gpus, not {}", r.name);
        }
        amounts.insert(r.name.to_string(), serde_json::json!({"value": parsed.scalar(&r.name).0 as f64 / 1000.0}));
    }
    Ok((role.to_string(), amounts.into()))
}

async fn quota(master: &str, update: QuotaUpdate<'_>, json: bool) -> anyhow::Result<()> {
    if !update.limits.is_empty() || !update.guarantees.is_empty() || !update.clear.is_empty() {
        // An UPDATE_QUOTA replaces a role's whole quota: start from what
        // the master has, so that setting limits keeps the guarantees and
        // the other way round.
        let current: Value =
            serde_json::from_slice(&operator(master, &serde_json::json!({"type": "GET_QUOTA"})).await?)?;
        let mut configs: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
        let mut touched = std::collections::BTreeSet::new();
        for c in current["get_quota"]["status"]["configs"].as_array().cloned().unwrap_or_default() {
            configs.insert(s(&c["role"]), c);
        }
        for (flag, args, field) in
            [("--set", update.limits, "limits"), ("--guarantee", update.guarantees, "guarantees")]
        {
            for a in args {
                let (role, amounts) = quota_arg(flag, a)?;
                let c = configs.entry(role.clone()).or_insert_with(|| serde_json::json!({"role": role}));
                c[field] = amounts;
                touched.insert(role);
            }
        }
        for role in update.clear {
            configs.insert(role.clone(), serde_json::json!({"role": role, "guarantees": {}, "limits": {}}));
            touched.insert(role.clone());
        }
        let configs: Vec<Value> = configs.into_iter().filter(|(r, _)| touched.contains(r)).map(|(_, c)| c).collect();
        let call = serde_json::json!({
            "type": "UPDATE_QUOTA",
            "update_quota": {"force": update.force, "quota_configs": configs},
        });
        operator(master, &call).await?;
    }
    let mut roles = get_roles(master).await?;
    let set = |r: &Value, field: &str| r["quota"][field].as_object().is_some_and(|l| !l.is_empty());
    roles.retain(|r| set(r, "limit") || set(r, "guarantee"));
    if json {
        println!("{}", serde_json::to_string_pretty(&roles)?);
        return Ok(());
    }
    let rows = roles
        .iter()
        .map(|r| {
            let mut row = vec![s(&r["name"])];
            for k in QUOTA_KINDS {
                let used = num(r, &["quota", "consumed", k]);
                let amount = |field: &str| r["quota"][field][k].as_f64().map_or("-".to_string(), |v| v.to_string());
                row.push(format!("{used}/{}/{}", amount("guarantee"), amount("limit")));
            }
            row
        })
        .collect();
    println!("consumed/guarantee/limit per resource ('-': none)");
    table(&["ROLE", "CPUS", "MEM (MB)", "DISK (MB)", "GPUS"], rows);
    Ok(())
}

async fn frameworks(master: &str, json: bool) -> anyhow::Result<()> {
    let st = state(master).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st["frameworks"])?);
        return Ok(());
    }
    let rows = st["frameworks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| {
            let role = if f["roles"].is_array() { s(&f["roles"]) } else { s(&f["role"]) };
            vec![
                s(&f["id"]),
                s(&f["name"]),
                role,
                s(&f["connected"]),
                f["tasks"].as_array().map(|t| t.len()).unwrap_or(0).to_string(),
                num(f, &["used_resources", "cpus"]).to_string(),
                num(f, &["used_resources", "mem"]).to_string(),
            ]
        })
        .collect();
    table(&["ID", "NAME", "ROLE", "CONNECTED", "TASKS", "CPUS", "MEM (MB)"], rows);
    Ok(())
}

async fn tasks(master: &str, all: bool, json: bool) -> anyhow::Result<()> {
    let st = state(master).await?;
    let mut list = Vec::new();
    let mut fws = st["frameworks"].as_array().cloned().unwrap_or_default();
    if all {
        fws.extend(st["completed_frameworks"].as_array().cloned().unwrap_or_default());
    }
    for f in fws {
        for key in ["tasks", "unreachable_tasks"].iter().chain(if all { &["completed_tasks"][..] } else { &[][..] }) {
            list.extend(f[*key].as_array().cloned().unwrap_or_default());
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows = list
        .iter()
        .map(|t| {
            vec![
                s(&t["id"]),
                s(&t["framework_id"]),
                s(&t["state"]),
                s(&t["slave_id"]),
                num(t, &["resources", "cpus"]).to_string(),
                num(t, &["resources", "mem"]).to_string(),
            ]
        })
        .collect();
    table(&["ID", "FRAMEWORK", "STATE", "AGENT", "CPUS", "MEM (MB)"], rows);
    Ok(())
}
