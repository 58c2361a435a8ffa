//! `agora-master`: parses flags, binds the port, and hands over to the shards.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use agora_master::{allocator, core, shard};
use agora_proto::duration;
use clap::Parser;

/// mimalloc: an allocation round and offer handling make and free many
/// small buffers; glibc's allocator took about twice as long on the
/// allocation benchmark (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "agora-master",
    version,
    about = "Agora's master: pools agents' resources and offers them to frameworks"
)]
struct Args {
    /// Address to listen on (agents and HTTP share the port).
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// Port to listen on; 0 picks a free one (printed at start).
    #[arg(long, default_value_t = 5050)]
    port: u16,
    /// Hostname advertised to frameworks; defaults to the IP.
    #[arg(long)]
    hostname: Option<String>,
    /// Executors (one per core); defaults to every online CPU.
    #[arg(long)]
    shards: Option<usize>,
    /// Directory for the registry (admitted agents, role weights and quota).
    /// Without it the registry
    /// lives in memory and is lost on restart.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    #[arg(long, default_value = "1secs", value_parser = duration::parse)]
    allocation_interval: std::time::Duration,
    /// Optimistic offers: offer each agent's resources to this many more
    /// frameworks besides the one DRF picks (the next in DRF order). The
    /// first to use them wins; the others' offers are rescinded and their
    /// later launches on them get TASK_DROPPED. 0 (the default) is
    /// pessimistic: each resource is offered to one framework at a time.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    optimistic_offers: u16,
    /// Threads a large allocation round is split among (a round over at
    /// least `--allocation-min-agents-per-worker` agents per thread): each
    /// offers its own part of the agents, and shares stay within a bound of
    /// serial DRF's (see docs/benchmarks.md). Defaults to the number of
    /// shards (at most 256); 1 keeps every round serial.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    allocation_workers: Option<u16>,
    /// The fewest agents per thread for a round to be split: below it,
    /// starting threads costs more than it saves.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    allocation_min_agents_per_worker: u32,
    /// Rescind offers not used within this time; "0" never rescinds.
    #[arg(long, default_value = "0", value_parser = duration::parse)]
    offer_timeout: std::time::Duration,
    /// Each agent is pinged this often; a missed pong counts as a timeout.
    #[arg(long, default_value = "15secs", value_parser = duration::parse)]
    agent_ping_timeout: std::time::Duration,
    /// Missed pings (or, once disconnected, ping periods) before an agent is
    /// unreachable.
    #[arg(long, default_value_t = 5)]
    max_agent_ping_timeouts: u32,
    /// After a restart, how long agents from the registry have to come back.
    #[arg(long, default_value = "10mins", value_parser = duration::parse)]
    agent_reregister_timeout: std::time::Duration,
    #[arg(long, default_value = "15secs", value_parser = duration::parse)]
    heartbeat_interval: std::time::Duration,
    #[arg(long, default_value_t = wire_default_max_frame())]
    max_frame_bytes: u32,
    /// Largest HTTP request body accepted.
    #[arg(long, default_value_t = 8 << 20)]
    max_request_bytes: usize,
    /// Events queued for a framework before it is disconnected as too slow.
    /// `--max-stream-bytes` is what bounds the memory; this bounds the
    /// queue's own entries (16 bytes each). It is high enough for a burst of
    /// task updates: 10,000 launches at once make 20,000 updates.
    #[arg(long, default_value_t = 65_536)]
    max_stream_queue: usize,
    /// Bytes of events queued for a framework before it is disconnected as
    /// too slow (one event larger than this is still sent to a stream with
    /// nothing queued).
    #[arg(long, default_value_t = 16 << 20)]
    max_stream_bytes: usize,
    #[arg(long, default_value_t = 1000)]
    max_completed_tasks_per_framework: usize,
    #[arg(long, default_value_t = 100_000)]
    max_connections_per_shard: usize,
    /// How long to wait for a fixed port that is still in use (e.g. by a
    /// master that just exited) before giving up.
    #[arg(long, default_value = "10secs", value_parser = duration::parse)]
    port_wait: std::time::Duration,
}

fn wire_default_max_frame() -> u32 {
    agora_proto::wire::DEFAULT_MAX_FRAME_BYTES
}

/// The CPUs the process may run on, as it started (before the shards pin
/// their threads).
static CPUS: std::sync::OnceLock<libc::cpu_set_t> = std::sync::OnceLock::new();

/// Notes the calling thread's CPUs as the process's ([`CPUS`]); call before
/// any thread is pinned.
fn remember_cpus() {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_getaffinity fills
    // it for the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0 {
        let _ = CPUS.set(set);
    } else {
        tracing::warn!(
            "cannot read the CPUs this process may use ({}): allocation worker threads stay on shard 0's CPU",
            std::io::Error::last_os_error()
        );
    }
}

/// Run first on each allocation worker thread: started from shard 0's
/// thread, it would inherit that shard's pinning to one CPU, and the split
/// round would run on one CPU after all. It may run on any of the
/// process's CPUs instead.
fn unpin_allocation_worker() {
    if let Some(set) = CPUS.get() {
        // SAFETY: a valid set, for the calling thread. On failure the
        // worker keeps its CPU: slower, not wrong.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    }
}

/// glommio needs some locked memory for its rings; say so clearly instead
/// of failing obscurely.
fn check_memlock() -> anyhow::Result<()> {
    const NEED: u64 = 512 << 10;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) != 0 {
            return Ok(());
        }
        if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < NEED {
            let want = libc::rlimit { rlim_cur: NEED.min(lim.rlim_max), rlim_max: lim.rlim_max };
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &want);
            libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim);
        }
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < NEED {
        anyhow::bail!(
            "the locked-memory limit is {} KiB; agora-master needs at least {} KiB for io_uring. \
             Raise it (ulimit -l {} or LimitMEMLOCK= in a unit file) or run as root.",
            lim.rlim_cur >> 10,
            NEED >> 10,
            NEED >> 10
        );
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AGORA_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("agora-master: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    check_memlock()?;
    remember_cpus();
    let n_shards = args.shards.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    anyhow::ensure!((1..=1024).contains(&n_shards), "--shards must be between 1 and 1024");
    let (fds, addr) = shard::bind_listeners(SocketAddr::new(args.ip, args.port), n_shards, args.port_wait)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", args.ip, args.port))?;
    let ip_text = addr.ip().to_string();
    let ip = match addr.ip() {
        IpAddr::V4(v4) => u32::from_ne_bytes(v4.octets()),
        IpAddr::V6(_) => 0,
    };
    let master_id = uuid::Uuid::new_v4().to_string();
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    let mut flags = BTreeMap::new();
    flags.insert("allocation_interval".into(), format!("{:?}", args.allocation_interval));
    flags.insert("offer_timeout".into(), format!("{:?}", args.offer_timeout));
    flags.insert("optimistic_offers".into(), args.optimistic_offers.to_string());
    flags.insert("agent_ping_timeout".into(), format!("{:?}", args.agent_ping_timeout));
    flags.insert("max_agent_ping_timeouts".into(), args.max_agent_ping_timeouts.to_string());
    flags.insert("heartbeat_interval".into(), format!("{:?}", args.heartbeat_interval));
    flags.insert("shards".into(), n_shards.to_string());
    let allocation_workers = args.allocation_workers.map_or(n_shards.min(256), usize::from);
    flags.insert("allocation_workers".into(), allocation_workers.to_string());
    flags.insert("allocation_min_agents_per_worker".into(), args.allocation_min_agents_per_worker.to_string());
    flags.insert("work_dir".into(), args.work_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
    let core = core::Config {
        master_id,
        hostname: args.hostname.clone().unwrap_or_else(|| ip_text.clone()),
        ip,
        ip_text: ip_text.clone(),
        port: addr.port(),
        allocation_interval_ms: ms(args.allocation_interval).max(1),
        offer_timeout_ms: (args.offer_timeout.as_millis() > 0).then(|| ms(args.offer_timeout)),
        agent_ping_timeout_ms: ms(args.agent_ping_timeout).max(1),
        max_agent_ping_timeouts: args.max_agent_ping_timeouts.max(1),
        agent_reregister_timeout_ms: ms(args.agent_reregister_timeout),
        heartbeat_interval_ms: ms(args.heartbeat_interval).max(1),
        max_completed_tasks_per_framework: args.max_completed_tasks_per_framework,
        max_completed_frameworks: 50,
        max_unreachable_agents: 10_000,
        max_unreachable_tasks_per_framework: 1000,
        allocator: allocator::Config {
            seed: rand::random(),
            optimistic: args.optimistic_offers as usize,
            workers: allocation_workers,
            min_agents_per_worker: args.allocation_min_agents_per_worker as usize,
            on_worker_start: Some(unpin_allocation_worker),
            ..Default::default()
        },
        seed: rand::random(),
    };
    let tick_ms = (core.allocation_interval_ms / 4).clamp(5, 100);
    let cfg = shard::ShellConfig {
        n_shards,
        core,
        registry_path: args.work_dir.map(|d| d.join("registry.json")),
        max_frame_bytes: args.max_frame_bytes,
        http_limits: agora_proto::http::Limits { max_body_bytes: args.max_request_bytes, ..Default::default() },
        max_stream_queue: args.max_stream_queue,
        max_stream_bytes: args.max_stream_bytes,
        max_agent_queue: 16_384,
        core_queue: 65_536,
        mesh_queue: 16_384,
        max_connections_per_shard: args.max_connections_per_shard,
        tick_ms,
        flags,
    };
    // Tests and scripts read this line to find the port.
    println!("agora-master listening on http://{addr} (shards: {n_shards})");
    std::io::stdout().flush()?;
    shard::run(cfg, fds)
}

#[cfg(test)]
mod tests {
    /// How many CPUs the calling thread may run on.
    fn cpus_of_this_thread() -> u32 {
        // SAFETY: as in `remember_cpus`.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }, 0);
        unsafe { libc::CPU_COUNT(&set) as u32 }
    }

    #[test]
    fn an_allocation_worker_started_from_a_pinned_thread_may_run_on_every_cpu() {
        super::remember_cpus();
        let all = cpus_of_this_thread();
        if all < 2 {
            eprintln!("skipped: this process may run on one CPU only");
            return;
        }
        std::thread::spawn(move || {
            // Pinned to one CPU, as a shard's thread is.
            // SAFETY: a set holding one CPU this process may use.
            let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            let first = (0..libc::CPU_SETSIZE as usize)
                .find(|&c| unsafe { libc::CPU_ISSET(c, super::CPUS.get().expect("remembered")) })
                .expect("a CPU");
            unsafe { libc::CPU_SET(first, &mut one) };
            assert_eq!(unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) }, 0);
            assert_eq!(cpus_of_this_thread(), 1);
            let inherited = std::thread::spawn(cpus_of_this_thread).join().unwrap();
            assert_eq!(inherited, 1, "a thread starts with its parent's CPUs");
            let unpinned = std::thread::spawn(|| {
                super::unpin_allocation_worker();
                cpus_of_this_thread()
            });
            assert_eq!(unpinned.join().unwrap(), all);
        })
        .join()
        .unwrap();
    }
}
