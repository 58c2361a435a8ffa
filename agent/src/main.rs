//! `agora-agent`: detects resources, sets up cgroups, serves HTTP, connects
//! to the master and runs the event loop.

use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use agora_agent::agent::{self, Agent, Ev, Isolation};
use agora_agent::{cgroups, link, resources, volumes};
use agora_proto::duration;
use agora_proto::resources::Resources;
use agora_proto::wire::AgentInfo;
use clap::Parser;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(name = "agora-agent", version, about = "Agora's agent: runs tasks for the master")]
struct Args {
    /// The master, as host:port.
    #[arg(long)]
    master: String,
    /// Sandboxes and agent state live here.
    #[arg(long, default_value = "/var/lib/agora/agent")]
    work_dir: PathBuf,
    /// Resources to offer, in Mesos's syntax (e.g. `cpus:4;mem:8192;ports:[31000-32000]`)
    /// or as a JSON array; each name given replaces the detected one.
    #[arg(long)]
    resources: Option<String>,
    /// Attributes, e.g. `rack:r1;zone:z1`.
    #[arg(long)]
    attributes: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// Address of the agent's own HTTP endpoints.
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Port of the agent's own HTTP endpoints; 0 picks a free one.
    #[arg(long, default_value_t = 5051)]
    port: u16,
    /// `cgroups` (default) or `none` (no limits; for unprivileged runs).
    #[arg(long, default_value = "cgroups", value_parser = ["cgroups", "none"])]
    isolation: String,
    /// Time between SIGTERM and SIGKILL when a task is killed.
    #[arg(long, default_value = "3secs", value_parser = duration::parse)]
    kill_grace_period: Duration,
    /// First resend of an unacknowledged status update; doubles up to the max.
    #[arg(long, default_value = "1secs", value_parser = duration::parse)]
    status_update_retry: Duration,
    #[arg(long, default_value = "60secs", value_parser = duration::parse)]
    status_update_retry_max: Duration,
    /// Longest wait between attempts to reach the master.
    #[arg(long, default_value = "5secs", value_parser = duration::parse)]
    registration_backoff_max: Duration,
    #[arg(long, default_value_t = agora_proto::wire::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: u32,
    /// `on` (default): per-task accounting and enforcement with eBPF, falling
    /// back to cgroupfs accounting (and no port or egress enforcement) when
    /// the kernel or privileges do not allow it; `off`: always the fallback.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    ebpf: String,
    /// `on`: turn on the kernel's BPF run-time statistics (host-wide) for
    /// per-program run counts and times in /metrics; each BPF program run on
    /// the host then costs two clock reads more. `off` (default).
    #[arg(long, default_value = "off", value_parser = ["on", "off"])]
    ebpf_stats: String,
    /// How often each task's usage is sampled.
    #[arg(long, default_value = "1secs", value_parser = duration::parse)]
    usage_interval: Duration,
    /// How often usage summaries are sent to the master.
    #[arg(long, default_value = "5secs", value_parser = duration::parse)]
    usage_report_interval: Duration,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AGORA_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let code = match tokio_uring::builder().entries(256).start(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agora-agent: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// A stable name for the agent's cgroup directory, from its work dir, so a
/// restarted agent finds what an earlier run left.
fn cgroup_name(work_dir: &std::path::Path) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in work_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    format!("agora_agent_{h:016x}")
}

async fn run(args: Args) -> anyhow::Result<i32> {
    if let Some(n) = agora_agent::containerizer::raise_open_file_limit() {
        tracing::debug!(limit = n, "open files");
    }
    std::fs::create_dir_all(&args.work_dir)
        .map_err(|e| anyhow::anyhow!("cannot create work dir {}: {e}", args.work_dir.display()))?;
    let work_dir = args.work_dir.canonicalize()?;
    let detected = resources::detect(&work_dir);
    let offered = match &args.resources {
        Some(text) => resources::merge(&detected, &resources::parse_flag(text).map_err(anyhow::Error::msg)?),
        None => detected,
    };
    resources::validate(&offered).map_err(anyhow::Error::msg)?;
    let attributes = match &args.attributes {
        Some(text) => agora_proto::resources::parse_attributes(text)?,
        None => Vec::new(),
    };
    // `cgroups` or `none` (checked by the parser).
    let isolation = if args.isolation == "none" { Isolation::None } else { Isolation::Cgroups };
    let cg = match isolation {
        Isolation::Cgroups => {
            let cg = cgroups::Cgroups::setup(&cgroup_name(&work_dir)).map_err(|e| {
                anyhow::anyhow!(
                    "cannot set up cgroups: {e}. Run as root, or pass --isolation none to run without limits"
                )
            })?;
            let stale = cg.clean_stale();
            if stale > 0 {
                tracing::warn!("removed {stale} task cgroups left by an earlier run of this agent");
            }
            cgroups::record(&work_dir, &cg);
            tracing::info!(mode = ?cg.mode, dirs = ?cg.dirs(), "task cgroups");
            Some(cg)
        }
        Isolation::None => {
            tracing::warn!("isolation is off: tasks run without cpu or memory limits");
            None
        }
    };
    // Both flags are `on` or `off` (checked by the parser).
    let run_stats = args.ebpf_stats == "on";
    // eBPF accounting, or why not; the agent runs either way.
    let ebpf = match (args.ebpf == "on", cg.as_ref().and_then(|c| c.identity_dir())) {
        (false, _) => Err("disabled with --ebpf off".to_string()),
        (true, None) => Err("tasks have no v2 cgroup (isolation off, or no unified hierarchy)".to_string()),
        (true, Some(dir)) => agora_agent::ebpf::Ebpf::load(&dir, run_stats),
    };
    match &ebpf {
        Ok(e) => tracing::info!(programs = e.programs_loaded(), "eBPF accounting and enforcement on"),
        Err(why) => tracing::warn!(
            "eBPF accounting is off ({why}); using cgroupfs accounting, with ports and egress limits not enforced"
        ),
    }

    let listener = tokio_uring::net::TcpListener::bind(SocketAddr::new(args.ip, args.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", args.ip, args.port))?;
    let http_addr = listener.local_addr()?;
    let hostname = args.hostname.clone().unwrap_or_else(|| args.ip.to_string());
    // Reservations and volumes an earlier run was told of are offered again.
    let checkpointed = volumes::load(&work_dir).map_err(anyhow::Error::msg)?;
    let total = Resources::with_checkpointed(&offered, &checkpointed).map_err(|e| {
        anyhow::anyhow!(
            "the reservations and volumes kept in {} no longer fit this agent's resources ({e}); \
             start it with the resources it had, or with a clean work directory",
            work_dir.display()
        )
    })?;
    for problem in volumes::sync(&work_dir, &Resources::new(), &checkpointed, &[]) {
        tracing::warn!("{problem}");
    }
    let info = AgentInfo {
        hostname,
        port: http_addr.port() as u32,
        resources: total,
        attributes,
        version: agora_proto::AGORA_VERSION.to_string(),
    };
    let (tx, rx) = mpsc::channel::<Ev>(65_536);
    let cfg = agent::Config {
        master: args.master.clone(),
        work_dir: work_dir.clone(),
        info,
        base_resources: offered,
        isolation,
        kill_grace: args.kill_grace_period,
        status_retry_min: args.status_update_retry,
        status_retry_max: args.status_update_retry_max.max(args.status_update_retry),
        max_completed_tasks: 1000,
        usage_report_interval: args.usage_report_interval,
    };
    let agent = Rc::new(RefCell::new(Agent::new(cfg, cg, ebpf, tx.clone())));
    tokio_uring::spawn(agora_agent::http::serve(listener, agent.clone()));

    // The link's events go into the main queue.
    let (ltx, mut lrx) = mpsc::channel(1024);
    tokio_uring::spawn(link::run(
        link::LinkConfig {
            master: args.master.clone(),
            max_frame_bytes: args.max_frame_bytes,
            backoff_min: Duration::from_millis(100),
            backoff_max: args.registration_backoff_max,
            initial_timeout: Duration::from_secs(30),
        },
        ltx,
    ));
    {
        let tx = tx.clone();
        tokio_uring::spawn(async move {
            while let Some(e) = lrx.recv().await {
                if tx.send(Ev::Link(e)).await.is_err() {
                    return;
                }
            }
        });
    }
    {
        let tx = tx.clone();
        tokio_uring::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if tx.send(Ev::Tick).await.is_err() {
                    return;
                }
            }
        });
    }
    {
        let tx = tx.clone();
        let every = args.usage_interval.max(Duration::from_millis(50));
        tokio_uring::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if tx.send(Ev::Sample).await.is_err() {
                    return;
                }
            }
        });
    }
    {
        let tx = tx.clone();
        tokio_uring::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let _ = tx.send(Ev::Shutdown(format!("received {name}"))).await;
        });
    }
    println!("agora-agent listening on http://{http_addr} (master: {})", args.master);
    std::io::stdout().flush()?;
    tracing::info!(resources = %agent.borrow().cfg.info.resources, "agent started");
    Ok(agent::run_loop(agent, rx).await)
}
