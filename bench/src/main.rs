//! `agora-bench`: load against a real master binary over real TCP.
//!
//! Scenario `launch`: N simulated agents (speaking the real rkyv protocol:
//! hello, registration, pongs, launches, status updates retried until
//! acknowledged) and one framework on the Rust SDK that places M tasks as
//! fast as offers allow. Reports placement throughput and latency from launch
//! to RUNNING and to FINISHED (hdrhistogram), and writes them as JSON under
//! `target/bench/`.
//!
//! The simulated tasks finish at once: this measures the master, the
//! protocol and the framework loop, not process start-up.
//!
//! Scenario `ebpf` (root): the cost of the agent's eBPF programs; see
//! `ebpf.rs`.

mod ebpf;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_proto::mesos::{
    AgentId, CommandInfo, FrameworkId, FrameworkInfo, Source, TaskId, TaskInfo, TaskState, TaskStatus,
};
use agora_proto::resources::Resources;
use agora_proto::wire::{self, AgentInfo, AgentToMaster, FrameDecoder, Hello, MasterToAgent, StatusUpdate, HELLO_LEN};
use agora_sdk::{Driver, DriverEvent};
use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(name = "agora-bench", about = "Load generator for Agora")]
struct Args {
    /// Scenario to run: `launch` or `ebpf`.
    scenario: String,
    /// An existing master; by default one is started (`agora-master` next to this binary).
    #[arg(long)]
    master: Option<String>,
    #[arg(long, default_value_t = 100)]
    agents: usize,
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Shards of the started master.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// A CI-sized run.
    #[arg(long)]
    quick: bool,
    /// `ebpf`: runs of each configuration in the overhead comparison.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// `ebpf`: ping-pong round trips per run.
    #[arg(long, default_value_t = 100_000)]
    round_trips: u64,
    /// `ebpf`: tasks registered, read and attached to.
    #[arg(long, default_value_t = 1_000)]
    ebpf_tasks: usize,
    /// Where results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// Resources of each simulated agent and each task: 100 tasks fit an agent.
const AGENT_RESOURCES: &str = "cpus:32;mem:131072;disk:100000;ports:[31000-32000]";
const TASK_RESOURCES: &str = "cpus:0.32;mem:1024";

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(ebpf::PINGPONG) {
        let n = argv.get(2).and_then(|n| n.parse().ok()).context("round trips")?;
        return ebpf::pingpong_main(n);
    }
    let mut args = Args::parse();
    if args.quick {
        args.agents = args.agents.min(20);
        args.tasks = args.tasks.min(2_000);
        args.rounds = args.rounds.min(6);
        args.round_trips = args.round_trips.min(50_000);
    }
    if args.scenario == "ebpf" {
        return ebpf::run(&ebpf::Opts {
            rounds: args.rounds,
            round_trips: args.round_trips,
            tasks: args.ebpf_tasks,
            out: args.out.clone(),
        });
    }
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    match args.scenario.as_str() {
        "launch" => rt.block_on(launch(&args)),
        other => bail!("unknown scenario {other:?} (known: launch, ebpf)"),
    }
}

/// Many simulated agents need many sockets.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A master started for the run, stopped when dropped.
struct MasterProc {
    child: Child,
    addr: String,
}

impl MasterProc {
    fn start(shards: usize) -> Result<MasterProc> {
        let exe = std::env::current_exe()?;
        let bin = exe.parent().context("binary dir")?.join("agora-master");
        let mut child = Command::new(&bin)
            .args(["--ip", "127.0.0.1", "--port", "0", "--shards", &shards.to_string()])
            .args(["--allocation-interval", "50ms", "--agent-ping-timeout", "5secs"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {} (build it: cargo build --release --bins)", bin.display()))?;
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let addr = line.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).context("listening line")?;
        Ok(MasterProc { addr: addr.to_string(), child })
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct AgentCounters {
    registered: AtomicU64,
    launched: AtomicU64,
    updates_sent: AtomicU64,
}

async fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> Result<usize> {
    Ok(s.read(buf).await?)
}

/// One simulated agent: registers, answers pings, "runs" each task by
/// reporting RUNNING then FINISHED, each update resent until acknowledged.
async fn sim_agent(master: String, idx: usize, counters: Arc<AgentCounters>) -> Result<()> {
    let addr: SocketAddr = master.parse()?;
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&Hello::new(wire::DEFAULT_MAX_FRAME_BYTES).encode()).await?;
    let mut hello = [0u8; HELLO_LEN];
    s.read_exact(&mut hello).await?;
    Hello::decode(&hello)?;
    let info = AgentInfo {
        hostname: format!("sim-{idx}"),
        port: 0,
        resources: Resources::parse(AGENT_RESOURCES)?,
        attributes: vec![],
        version: "sim".into(),
    };
    s.write_all(&wire::encode(&AgentToMaster::Register { info: Box::new(info) })).await?;
    let mut decoder = FrameDecoder::new(wire::DEFAULT_MAX_FRAME_BYTES);
    let mut buf = vec![0u8; 64 << 10];
    let mut agent_id = None;
    // Per task: updates not yet acknowledged (the head is in flight).
    let mut pending: HashMap<(FrameworkId, TaskId), VecDeque<TaskStatus>> = HashMap::new();
    let mut out = Vec::new();
    let mut seq = 0u64;
    loop {
        let n = read_some(&mut s, &mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        decoder.push(&buf[..n]);
        while let Some(frame) = decoder.next_frame()? {
            match wire::decode::<MasterToAgent>(&frame)? {
                MasterToAgent::Registered { agent_id: id, .. } => {
                    agent_id = Some(id);
                    counters.registered.fetch_add(1, Ordering::Relaxed);
                }
                MasterToAgent::Ping { seq } => out.extend(wire::encode(&AgentToMaster::Pong { seq })),
                MasterToAgent::RunTask { framework, task } => {
                    counters.launched.fetch_add(1, Ordering::Relaxed);
                    let fid = framework.id.clone().context("framework id")?;
                    let mut q = VecDeque::new();
                    for state in [TaskState::Running, TaskState::Finished] {
                        seq += 1;
                        let mut st = TaskStatus::new(task.task_id.clone(), state);
                        st.source = Some(Source::Executor);
                        st.agent_id = agent_id.clone();
                        let mut uuid = [0u8; 16];
                        uuid[..8].copy_from_slice(&seq.to_le_bytes());
                        uuid[8..].copy_from_slice(&(idx as u64).to_le_bytes());
                        st.uuid = Some(uuid.to_vec());
                        q.push_back(st);
                    }
                    let head = q.front().cloned().expect("two updates");
                    out.extend(wire::encode(&AgentToMaster::StatusUpdate(Box::new(StatusUpdate {
                        framework_id: fid.clone(),
                        status: head,
                        latest_state: TaskState::Finished,
                    }))));
                    counters.updates_sent.fetch_add(1, Ordering::Relaxed);
                    pending.insert((fid, task.task_id.clone()), q);
                }
                MasterToAgent::AcknowledgeUpdate { framework_id, task_id, uuid } => {
                    let key = (framework_id, task_id);
                    let Some(q) = pending.get_mut(&key) else { continue };
                    if q.front().and_then(|s| s.uuid.as_deref()) == Some(&uuid[..]) {
                        q.pop_front();
                        if let Some(next) = q.front().cloned() {
                            out.extend(wire::encode(&AgentToMaster::StatusUpdate(Box::new(StatusUpdate {
                                framework_id: key.0.clone(),
                                status: next,
                                latest_state: TaskState::Finished,
                            }))));
                            counters.updates_sent.fetch_add(1, Ordering::Relaxed);
                        } else {
                            pending.remove(&key);
                        }
                    }
                }
                MasterToAgent::KillTask { .. }
                | MasterToAgent::ShutdownFramework { .. }
                | MasterToAgent::CheckpointResources { .. } => {}
                MasterToAgent::Refused { message } => bail!("agent {idx} refused: {message}"),
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
    }
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

async fn launch(args: &Args) -> Result<()> {
    let _master_proc;
    let master = match &args.master {
        Some(m) => m.clone(),
        None => {
            let m = MasterProc::start(args.shards)?;
            let a = m.addr.clone();
            _master_proc = m;
            a
        }
    };
    let counters = Arc::new(AgentCounters::default());
    for i in 0..args.agents {
        let (m, c) = (master.clone(), counters.clone());
        tokio::spawn(async move {
            if let Err(e) = sim_agent(m, i, c).await {
                eprintln!("simulated agent {i}: {e:#}");
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while counters.registered.load(Ordering::Relaxed) < args.agents as u64 {
        if Instant::now() > deadline {
            bail!("only {} of {} agents registered", counters.registered.load(Ordering::Relaxed), args.agents);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("{} simulated agents registered with {master}", args.agents);

    let info = FrameworkInfo { user: "bench".into(), name: "agora-bench launch".into(), ..Default::default() };
    let (driver, mut events) = Driver::start(&master, info).await?;
    let per_task = Resources::parse(TASK_RESOURCES)?;
    let mut next = 0usize;
    let mut launched_at: HashMap<String, Instant> = HashMap::with_capacity(args.tasks);
    let mut to_running = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut to_finished = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut finished = 0usize;
    let start = Instant::now();
    let (ack_tx, mut ack_rx) = mpsc::channel::<TaskStatus>(65_536);
    // Acknowledgements go out from their own task so the event loop keeps up.
    let acker = {
        let d = driver.clone();
        tokio::spawn(async move {
            while let Some(s) = ack_rx.recv().await {
                if let Err(e) = d.acknowledge(&s).await {
                    eprintln!("acknowledge: {e}");
                }
            }
        })
    };
    let mut last_report = Instant::now();
    while finished < args.tasks {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .context("no event from the master for 30 s")?
            .context("the driver stopped")?;
        let DriverEvent::Event(ev) = ev else { continue };
        if let Some(offers) = &ev.offers {
            for offer in &offers.offers {
                let role = offer.allocation_info.as_ref().and_then(|a| a.role.clone()).unwrap_or_else(|| "*".into());
                let want = per_task.allocate_to(&role);
                let mut avail = offer.resources.clone();
                let mut batch = Vec::new();
                while next < args.tasks && avail.contains(&want) {
                    avail.subtract(&want).expect("contained");
                    let id = format!("t{next}");
                    next += 1;
                    launched_at.insert(id.clone(), Instant::now());
                    batch.push(TaskInfo {
                        name: id.clone(),
                        task_id: TaskId::new(&id),
                        agent_id: AgentId::new(offer.agent_id.as_str()),
                        resources: want.clone(),
                        command: Some(CommandInfo::shell("true")),
                        ..Default::default()
                    });
                }
                if batch.is_empty() {
                    driver.decline(vec![offer.id.clone()], 0.0).await?;
                } else {
                    driver.launch(offer, batch, 0.0).await?;
                }
            }
        }
        if let Some(u) = ev.update {
            let s = u.status;
            if let Some(t0) = launched_at.get(s.task_id.as_str()) {
                let us = t0.elapsed().as_micros() as u64;
                match s.state {
                    TaskState::Running => to_running.record(us.max(1))?,
                    TaskState::Finished => {
                        to_finished.record(us.max(1))?;
                        finished += 1;
                    }
                    other => bail!("task {} ended {other}: {:?}", s.task_id, s.message),
                }
            }
            ack_tx.send(s).await?;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  {finished}/{} finished ({:.0} tasks/s)",
                args.tasks,
                finished as f64 / start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let elapsed = start.elapsed();
    drop(ack_tx);
    let _ = acker.await;
    let _ = driver.teardown().await;
    let rate = args.tasks as f64 / elapsed.as_secs_f64();
    println!(
        "scenario launch: {} tasks on {} simulated agents in {:.2} s",
        args.tasks,
        args.agents,
        elapsed.as_secs_f64()
    );
    println!("  placement throughput: {rate:.0} tasks/s");
    for (name, h) in [("launch -> RUNNING", &to_running), ("launch -> FINISHED", &to_finished)] {
        println!(
            "  {name:<20} p50 {:>8} us   p99 {:>8} us   p99.9 {:>8} us",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999)
        );
    }
    std::fs::create_dir_all(&args.out)?;
    let result = serde_json::json!({
        "scenario": "launch",
        "agents": args.agents,
        "tasks": args.tasks,
        "elapsed_secs": elapsed.as_secs_f64(),
        "tasks_per_sec": rate,
        "launch_to_running": percentiles(&to_running),
        "launch_to_finished": percentiles(&to_finished),
        "updates_sent": counters.updates_sent.load(Ordering::Relaxed),
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        },
    });
    let path = args.out.join("launch.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&result)?)?;
    println!("  results: {}", path.display());
    Ok(())
}
