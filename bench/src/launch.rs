//! Scenario `launch`: M tasks placed as fast as offers allow, by one
//! framework on the Rust SDK, on N simulated agents. Reports placement
//! throughput and the latency from launch to RUNNING and to FINISHED.
//!
//! The simulated tasks finish at once: this measures the master, the
//! protocol and the framework loop, not process start-up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_proto::mesos::{AgentId, CommandInfo, FrameworkInfo, TaskId, TaskInfo, TaskState, TaskStatus};
use agora_proto::resources::Resources;
use agora_sdk::{Driver, DriverEvent};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::report::{self, Plot};
use crate::sim::{self, AgentCounters, MasterProc, SimOpts};
use crate::Args;

pub async fn run(args: &Args) -> Result<()> {
    let n_agents = args.agents.unwrap_or(if args.quick { 20 } else { 100 });
    let n_tasks = args.tasks.unwrap_or(if args.quick { 2_000 } else { 20_000 });
    let master = MasterProc::start(args.shards, &["--allocation-interval", "50ms", "--agent-ping-timeout", "5secs"])?;
    let counters = Arc::new(AgentCounters::default());
    let agents =
        sim::spawn_agents(&master.addr, 0, n_agents, &counters, SimOpts { read_buffer: 64 << 10, note_freed: false });
    sim::wait_registered(&counters, n_agents as u64, Duration::from_secs(120)).await?;
    eprintln!("{} simulated agents registered with {}", n_agents, master.addr);

    let encoding = args.encoding()?;
    let info = FrameworkInfo { user: "bench".into(), name: "agora-bench launch".into(), ..Default::default() };
    let (driver, events) = Driver::start_with(&master.addr, info, encoding).await?;
    let cpu_before = master.cpu_time()?;
    let placed = place(&driver, events, n_tasks, &Resources::parse(sim::TASK_RESOURCES)?, "true").await?;
    let master_cpu = master.cpu_time()?.saturating_sub(cpu_before);
    let cpu_per_task_us = master_cpu.as_secs_f64() * 1e6 / n_tasks as f64;
    let _ = driver.teardown().await;
    drop(agents);
    let rate = n_tasks as f64 / placed.elapsed.as_secs_f64();
    println!(
        "scenario launch: {} tasks on {} simulated agents in {:.2} s ({})",
        n_tasks,
        n_agents,
        placed.elapsed.as_secs_f64(),
        encoding.media_type()
    );
    println!("  placement throughput: {rate:.0} tasks/s");
    println!(
        "  master CPU: {:.0}% of a core, {cpu_per_task_us:.1} us per task",
        100.0 * master_cpu.as_secs_f64() / placed.elapsed.as_secs_f64()
    );
    report::print_percentiles("launch -> RUNNING", &placed.to_running);
    report::print_percentiles("launch -> FINISHED", &placed.to_finished);
    report::plot(
        &args.out.join("launch.svg"),
        &Plot {
            title: &format!("launch: {} tasks on {} simulated agents", n_tasks, n_agents),
            x_label: report::NINES,
            y_label: "latency (ms)",
            log_y: true,
            series: vec![
                ("launch -> RUNNING".into(), report::distribution(&placed.to_running)),
                ("launch -> FINISHED".into(), report::distribution(&placed.to_finished)),
            ],
        },
    )?;
    report::write(
        &args.out,
        "launch",
        json!({
            "encoding": encoding.media_type(),
            "agents": n_agents,
            "tasks": n_tasks,
            "elapsed_secs": placed.elapsed.as_secs_f64(),
            "tasks_per_sec": rate,
            "master_cpu_secs": master_cpu.as_secs_f64(),
            "master_cpu_per_task_us": cpu_per_task_us,
            "launch_to_running": report::percentiles(&placed.to_running),
            "launch_to_finished": report::percentiles(&placed.to_finished),
            "tasks_launched_on_agents": AgentCounters::get(&counters.launched),
            "updates_sent": AgentCounters::get(&counters.updates_sent),
            "errors": AgentCounters::get(&counters.errors) + placed.ack_errors,
        }),
        args.baseline.as_deref(),
    )?;
    Ok(())
}

/// Calls [`place`] makes at once, of each kind (acknowledgements; launches
/// and declines).
const IN_FLIGHT: usize = 512;

/// What [`place`] measured.
pub struct Placed {
    /// From the first offer to the last task's FINISHED.
    pub elapsed: Duration,
    pub to_running: Histogram<u64>,
    pub to_finished: Histogram<u64>,
    /// (seconds since the first offer, tasks finished), about a hundred
    /// points.
    pub progress: Vec<(f64, f64)>,
    pub ack_errors: u64,
}

/// Runs `n_tasks` shell commands `command`, each with `per_task`, on the
/// offers `driver` receives, as many per offer as fit; returns when every
/// one has FINISHED. A task that ends otherwise is an error.
pub async fn place(
    driver: &Driver,
    mut events: mpsc::Receiver<DriverEvent>,
    n_tasks: usize,
    per_task: &Resources,
    command: &str,
) -> Result<Placed> {
    let mut next = 0usize;
    let mut launched_at: HashMap<String, Instant> = HashMap::with_capacity(n_tasks);
    let mut to_running = report::histogram();
    let mut to_finished = report::histogram();
    let mut progress = vec![(0.0, 0.0)];
    let mut finished = 0usize;
    let mut start: Option<Instant> = None;
    let (ack_tx, mut ack_rx) = mpsc::channel::<TaskStatus>(65_536);
    // Acknowledgements go out from their own task so the event loop keeps
    // up, many at once (the driver pipelines them on its connection).
    let acker = {
        let d = driver.clone();
        tokio::spawn(async move {
            let mut failed = 0u64;
            let mut in_flight = JoinSet::new();
            while let Some(s) = ack_rx.recv().await {
                while in_flight.len() >= IN_FLIGHT {
                    failed += in_flight.join_next().await.map_or(0, |r| r.unwrap_or(1));
                }
                let d = d.clone();
                in_flight.spawn(async move {
                    d.acknowledge(&s).await.map_or_else(
                        |e| {
                            eprintln!("acknowledge: {e}");
                            1
                        },
                        |()| 0,
                    )
                });
            }
            while let Some(r) = in_flight.join_next().await {
                failed += r.unwrap_or(1);
            }
            failed
        })
    };
    // Launches and declines, also many at once.
    let mut calls: JoinSet<Result<(), agora_sdk::Error>> = JoinSet::new();
    let mut last_report = Instant::now();
    while finished < n_tasks {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .context("no event from the master for 30 s")?
            .context("the driver stopped")?;
        let DriverEvent::Event(ev) = ev else { continue };
        if let Some(offers) = &ev.offers {
            start.get_or_insert_with(Instant::now);
            for offer in &offers.offers {
                let role = offer.allocation_info.as_ref().and_then(|a| a.role.clone()).unwrap_or_else(|| "*".into());
                let want = per_task.allocate_to(&role);
                let mut avail = offer.resources.clone();
                let mut batch = Vec::new();
                while next < n_tasks && avail.contains(&want) {
                    avail.subtract(&want).expect("contained");
                    let id = format!("t{next}");
                    next += 1;
                    launched_at.insert(id.clone(), Instant::now());
                    batch.push(TaskInfo {
                        name: id.clone(),
                        task_id: TaskId::new(&id),
                        agent_id: AgentId::new(offer.agent_id.as_str()),
                        resources: want.clone(),
                        command: Some(CommandInfo::shell(command)),
                        ..Default::default()
                    });
                }
                while calls.len() >= IN_FLIGHT {
                    calls.join_next().await.expect("not empty")??;
                }
                let (d, offer) = (driver.clone(), offer.clone());
                calls.spawn(async move {
                    if batch.is_empty() {
                        d.decline(vec![offer.id.clone()], 0.0).await
                    } else {
                        d.launch(&offer, batch, 0.0).await
                    }
                });
            }
        }
        while let Some(r) = calls.try_join_next() {
            r??;
        }
        if let Some(u) = ev.update {
            let s = u.status;
            if let Some(t0) = launched_at.get(s.task_id.as_str()) {
                let us = t0.elapsed().as_micros() as u64;
                match s.state {
                    TaskState::Starting => {}
                    TaskState::Running => to_running.record(us.max(1))?,
                    TaskState::Finished => {
                        to_finished.record(us.max(1))?;
                        finished += 1;
                        if finished.is_multiple_of((n_tasks / 100).max(1)) || finished == n_tasks {
                            let at = start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
                            progress.push((at, finished as f64));
                        }
                    }
                    other => bail!("task {} ended {other}: {:?}", s.task_id, s.message),
                }
            }
            ack_tx.send(s).await?;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            let secs = start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
            eprintln!("  {finished}/{n_tasks} finished ({:.0} tasks/s)", finished as f64 / secs.max(1e-9));
            last_report = Instant::now();
        }
    }
    let elapsed = start.map(|s| s.elapsed()).unwrap_or_default();
    while let Some(r) = calls.join_next().await {
        r??;
    }
    drop(ack_tx);
    let ack_errors = acker.await.unwrap_or(1);
    Ok(Placed { elapsed, to_running, to_finished, progress, ack_errors })
}
