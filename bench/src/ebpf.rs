//! Scenario `ebpf`: what the agent's eBPF programs cost on the running
//! kernel. Needs root (it makes cgroups and loads programs); everything it
//! makes is removed when it ends, also on failure.
//!
//! - **Overhead.** A pipe ping-pong between two processes pinned to one CPU,
//!   in a task cgroup: every round trip is two context switches, which is
//!   what the scheduler program runs on. Runs rotate
//!   between nothing loaded, the programs loaded, attached and the task
//!   registered (as the agent runs them), and the same with the kernel's BPF
//!   run-time statistics on (`--ebpf-stats on`), within one invocation. The
//!   overhead is the median over rounds of each round's ratio, which
//!   cancels the drift of a shared machine.
//! - **Registration.** Registering and unregistering 1,000 tasks: with the
//!   cgroup programs attached once at the agent's cgroup, a task is a few
//!   map updates.
//! - **Per-task attachment**, the design not taken: attaching the five
//!   cgroup programs to each of 1,000 cgroups, and detaching them.
//! - **Reading.** One sampling interval's map reads for 1,000 tasks (with
//!   the runs in progress, as the agent reads them), beside the cgroupfs
//!   figures the agent samples for each task as well, and the
//!   self-monitoring figures (`/metrics` computes them per scrape).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agora_agent::cgroups::{Cgroups, Limits, StatFiles, TaskCgroup};
use agora_agent::ebpf::Ebpf;
use anyhow::{bail, Context, Result};
use serde_json::json;

pub struct Opts {
    /// Runs of each configuration in the overhead comparison.
    pub rounds: usize,
    pub round_trips: u64,
    pub tasks: usize,
    pub out: PathBuf,
    pub baseline: Option<PathBuf>,
}

/// Removes the benchmark's cgroups, and whatever is still in them.
struct CleanUp(Cgroups);

impl Drop for CleanUp {
    fn drop(&mut self) {
        self.0.clean_stale();
        self.0.remove();
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(o: &Opts) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the ebpf scenario needs root: it creates cgroups and loads eBPF programs");
    }
    anyhow::ensure!(
        o.rounds >= 1 && o.round_trips >= 1000 && o.tasks >= 1,
        "rounds, round trips and tasks must be positive"
    );
    // About nine cgroup files per task are kept open, as the agent does.
    agora_agent::containerizer::raise_open_file_limit();
    let guard = CleanUp(Cgroups::setup(&format!("agora_bench_{}", std::process::id())).map_err(anyhow::Error::msg)?);
    let cg = &guard.0;
    let identity = cg.identity_dir().context("no v2 cgroup to attach the programs at")?;

    // Overhead.
    let task = cg.create("pingpong", Limits::default()).map_err(anyhow::Error::msg)?;
    let policy = agora_agent::agent::task_policy(&agora_proto::resources::Resources::parse("cpus:1;mem:64")?)
        .map_err(anyhow::Error::msg)?;
    // Nanoseconds per round trip of each configuration: nothing loaded, the
    // programs as the agent runs them by default, and with the kernel's
    // run-time statistics on as well (`--ebpf-stats on`).
    let mut runs: [Vec<f64>; 3] = Default::default();
    // Program name → (runs, ns), from the kernel's BPF run statistics.
    let mut per_program: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    // One unmeasured run first: page cache, CPU frequency.
    pingpong(&task, o.round_trips / 4)?;
    for round in 0..o.rounds {
        // Each configuration takes each place in the order equally often.
        for k in 0..3 {
            let config = (round + k) % 3;
            let ebpf = if config > 0 {
                let mut e = Ebpf::load(&identity, config == 2).map_err(anyhow::Error::msg)?;
                e.register(task.cgroup_id().context("task cgroup id")?, policy).map_err(anyhow::Error::msg)?;
                Some(e)
            } else {
                None
            };
            let ns = pingpong(&task, o.round_trips)?;
            if let Some(e) = &ebpf {
                let counted = e.read(task.cgroup_id().unwrap_or(0)).map(|c| c.rq_count).unwrap_or(0);
                anyhow::ensure!(counted > 0, "the programs were attached but counted no wakeups of the task");
                if e.run_stats() {
                    for p in e.stats().programs.into_iter().filter(|p| p.run_count > 0) {
                        let e = per_program.entry(p.name).or_insert((0u64, 0u64));
                        e.0 += p.run_count;
                        e.1 += p.run_time_ns;
                    }
                }
            }
            drop(ebpf);
            runs[config].push(ns);
        }
    }
    task.destroy(Duration::from_secs(2)).map_err(anyhow::Error::msg)?;
    let medians = runs.clone().map(|r| median(&r));
    // Each round's configurations ran back to back, so the ratio within a
    // round cancels the machine's drift; the median of the ratios is the
    // overhead.
    let overhead = |i: usize| {
        let ratios: Vec<f64> = runs[i].iter().zip(&runs[0]).map(|(w, wo)| w / wo).collect();
        (median(&ratios) - 1.0) * 100.0
    };
    println!(
        "ping-pong round trip ({} rounds of {} round trips; medians, overhead as the median of per-round ratios): \
         {:.0} ns without the programs, {:.0} ns with them ({:+.2}%), {:.0} ns with them and BPF run-time \
         statistics ({:+.2}%)",
        o.rounds,
        o.round_trips,
        medians[0],
        medians[1],
        overhead(1),
        medians[2],
        overhead(2)
    );
    for (name, (runs, ns)) in &per_program {
        println!("  {name}: {runs} runs, {:.0} ns per run", *ns as f64 / *runs as f64);
    }

    // Registration, reading, and per-task attachment, on real task cgroups
    // (every controller the agent uses, as the agent makes them).
    let mut tasks = Vec::with_capacity(o.tasks);
    let mut made = Ok(());
    for i in 0..o.tasks {
        match cg.create(&format!("bench-task-{i}"), Limits::default()) {
            Ok(t) => tasks.push(t),
            Err(e) => {
                made = Err(anyhow::anyhow!(e));
                break;
            }
        }
    }
    let result = made.and_then(|()| costs(&identity, &tasks, policy));
    for t in &tasks {
        let _ = t.destroy(Duration::from_secs(1));
    }
    let costs = result?;
    println!(
        "{} tasks: register {:.2} ms, unregister {:.2} ms; reading every task's counters {:.2} ms per interval \
         (median of {} intervals); the cgroupfs figures the agent also samples {:.2} ms with the files kept \
         open, {:.2} ms opening each; self-monitoring figures {:.2} ms per scrape",
        o.tasks,
        costs.register_ms,
        costs.unregister_ms,
        costs.read_ms,
        costs.intervals,
        costs.cgroupfs_kept_ms,
        costs.cgroupfs_ms,
        costs.stats_ms
    );
    println!(
        "per-task attachment (not used): attaching 5 programs to each of {} cgroups {:.1} ms, detaching {:.1} ms",
        o.tasks, costs.attach_ms, costs.detach_ms
    );
    crate::report::write(
        &o.out,
        "ebpf",
        json!({
            "overhead": {
                "round_trips_per_run": o.round_trips,
                "runs_each": o.rounds,
                "ns_per_round_trip_without": runs[0],
                "ns_per_round_trip_with": runs[1],
                "ns_per_round_trip_with_run_stats": runs[2],
                "median_without_ns": medians[0],
                "median_with_ns": medians[1],
                "median_with_run_stats_ns": medians[2],
                "overhead_percent": overhead(1),
                "overhead_with_run_stats_percent": overhead(2),
                "programs": per_program.iter().map(|(n, (runs, ns))| json!({
                    "name": n, "runs": runs, "ns_per_run": *ns as f64 / *runs as f64,
                })).collect::<Vec<_>>(),
            },
            "tasks": o.tasks,
            "register_ms": costs.register_ms,
            "unregister_ms": costs.unregister_ms,
            "read_per_interval_ms": costs.read_ms,
            "cgroupfs_per_interval_ms": costs.cgroupfs_ms,
            "cgroupfs_kept_open_per_interval_ms": costs.cgroupfs_kept_ms,
            "stats_per_scrape_ms": costs.stats_ms,
            "per_task_attach_ms": costs.attach_ms,
            "per_task_detach_ms": costs.detach_ms,
        }),
        o.baseline.as_deref(),
    )?;
    drop(guard);
    Ok(())
}

struct Costs {
    register_ms: f64,
    unregister_ms: f64,
    read_ms: f64,
    cgroupfs_ms: f64,
    cgroupfs_kept_ms: f64,
    intervals: usize,
    stats_ms: f64,
    attach_ms: f64,
    detach_ms: f64,
}

fn costs(identity: &Path, tasks: &[TaskCgroup], policy: agora_ebpf_common::TaskPolicy) -> Result<Costs> {
    let ids: Vec<u64> = tasks.iter().map(|t| t.cgroup_id().context("task cgroup id")).collect::<Result<_>>()?;
    let dirs: Vec<PathBuf> = tasks
        .iter()
        .map(|t| t.dirs().into_iter().find(|d| d.starts_with(identity)).context("task's v2 directory"))
        .collect::<Result<_>>()?;
    let mut ebpf = Ebpf::load(identity, false).map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    for &id in &ids {
        ebpf.register(id, policy).map_err(anyhow::Error::msg)?;
    }
    let register_ms = ms(t.elapsed());
    let intervals = 20;
    let (mut reads, mut cgroupfs, mut cgroupfs_kept) = (Vec::new(), Vec::new(), Vec::new());
    let mut files: Vec<StatFiles> = tasks.iter().map(|_| StatFiles::default()).collect();
    for _ in 0..intervals {
        let t = Instant::now();
        let seen = ebpf.read_many(&ids).len();
        reads.push(ms(t.elapsed()));
        anyhow::ensure!(seen == ids.len(), "read {seen} of {} registered tasks", ids.len());
        // Every file opened, read and closed, or kept open as the agent
        // keeps them (the first interval opens them).
        let t = Instant::now();
        let read = tasks.iter().filter(|t| t.stats().mem_limit_bytes.is_some()).count();
        cgroupfs.push(ms(t.elapsed()));
        let t = Instant::now();
        let kept =
            tasks.iter().zip(&mut files).map(|(t, f)| t.stats_from(f)).filter(|s| s.mem_limit_bytes.is_some()).count();
        cgroupfs_kept.push(ms(t.elapsed()));
        anyhow::ensure!(
            read == tasks.len() && kept == tasks.len(),
            "memory limits read for {read} and {kept} (files kept open) of {} tasks",
            tasks.len()
        );
    }
    drop(files);
    // The first interval opened the files.
    let cgroupfs_kept = &cgroupfs_kept[1..];
    let t = Instant::now();
    let stats = ebpf.stats();
    let stats_ms = ms(t.elapsed());
    anyhow::ensure!(
        stats.maps.iter().any(|m| m.name == "POLICY" && m.entries == ids.len() as u64),
        "the policy map should hold every task: {:?}",
        stats.maps
    );
    let t = Instant::now();
    for &id in &ids {
        ebpf.unregister(id);
    }
    let unregister_ms = ms(t.elapsed());
    drop(ebpf);
    let (attach_ms, detach_ms) = per_task_attach(&dirs)?;
    Ok(Costs {
        register_ms,
        unregister_ms,
        read_ms: median(&reads),
        cgroupfs_ms: median(&cgroupfs),
        cgroupfs_kept_ms: median(cgroupfs_kept),
        intervals,
        stats_ms,
        attach_ms,
        detach_ms,
    })
}

/// Attaches the cgroup programs to every directory, as a per-task design
/// would at each launch, then detaches them; the times of each.
fn per_task_attach(dirs: &[PathBuf]) -> Result<(f64, f64)> {
    use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps};
    let mut bpf = aya::Ebpf::load(agora_agent::ebpf::OBJECT)?;
    for name in ["ingress", "egress"] {
        let p: &mut CgroupSkb = bpf.program_mut(name).context("program")?.try_into()?;
        p.load()?;
    }
    for name in ["bind4", "bind6"] {
        let p: &mut CgroupSockAddr = bpf.program_mut(name).context("program")?.try_into()?;
        p.load()?;
    }
    let p: &mut SockOps = bpf.program_mut("tcp_pacing").context("program")?.try_into()?;
    p.load()?;
    let mode = CgroupAttachMode::Single;
    let mut skb = Vec::new();
    let mut addr = Vec::new();
    let mut ops = Vec::new();
    let t = Instant::now();
    for d in dirs {
        let f = File::open(d)?;
        for (name, kind) in [("ingress", CgroupSkbAttachType::Ingress), ("egress", CgroupSkbAttachType::Egress)] {
            let p: &mut CgroupSkb = bpf.program_mut(name).context("program")?.try_into()?;
            skb.push((name, p.attach(&f, kind, mode)?));
        }
        for name in ["bind4", "bind6"] {
            let p: &mut CgroupSockAddr = bpf.program_mut(name).context("program")?.try_into()?;
            addr.push((name, p.attach(&f, mode)?));
        }
        let p: &mut SockOps = bpf.program_mut("tcp_pacing").context("program")?.try_into()?;
        ops.push(p.attach(&f, mode)?);
    }
    let attach_ms = ms(t.elapsed());
    let t = Instant::now();
    for (name, link) in skb {
        let p: &mut CgroupSkb = bpf.program_mut(name).context("program")?.try_into()?;
        p.detach(link)?;
    }
    for (name, link) in addr {
        let p: &mut CgroupSockAddr = bpf.program_mut(name).context("program")?.try_into()?;
        p.detach(link)?;
    }
    for link in ops {
        let p: &mut SockOps = bpf.program_mut("tcp_pacing").context("program")?.try_into()?;
        p.detach(link)?;
    }
    Ok((attach_ms, ms(t.elapsed())))
}

/// Runs the ping-pong in `task`'s cgroup; nanoseconds per round trip.
fn pingpong(task: &TaskCgroup, round_trips: u64) -> Result<f64> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([PINGPONG, &round_trips.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    // Into the cgroup before it starts: it waits for a line on stdin.
    for mut f in task.procs_files().map_err(anyhow::Error::msg)? {
        write!(f, "{}", child.id())?;
    }
    writeln!(child.stdin.take().context("stdin")?, "go")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "the ping-pong exited with {status}");
    line.trim().parse::<f64>().with_context(|| format!("ping-pong printed {line:?}"))
}

/// The hidden argument that makes this binary the ping-pong.
pub const PINGPONG: &str = "__pingpong";

/// The ping-pong process: waits for a line on stdin, pins itself to CPU 0,
/// forks an echo peer, and prints nanoseconds per round trip.
pub fn pingpong_main(round_trips: u64) -> Result<()> {
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    // SAFETY: plain system calls on descriptors and a cpu_set_t we own; the
    // forked child only reads, writes and exits (async-signal-safe).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
        let (mut ping, mut pong) = ([0i32; 2], [0i32; 2]);
        if libc::pipe(ping.as_mut_ptr()) != 0 || libc::pipe(pong.as_mut_ptr()) != 0 {
            bail!("pipe: {}", std::io::Error::last_os_error());
        }
        let pid = libc::fork();
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        let mut b = [0u8; 1];
        if pid == 0 {
            libc::close(ping[1]);
            libc::close(pong[0]);
            while libc::read(ping[0], b.as_mut_ptr().cast(), 1) == 1 {
                if libc::write(pong[1], b.as_ptr().cast(), 1) != 1 {
                    break;
                }
            }
            libc::_exit(0);
        }
        libc::close(ping[0]);
        libc::close(pong[1]);
        let trip = |b: &mut [u8; 1]| {
            libc::write(ping[1], b.as_ptr().cast(), 1) == 1 && libc::read(pong[0], b.as_mut_ptr().cast(), 1) == 1
        };
        for _ in 0..round_trips / 10 {
            if !trip(&mut b) {
                bail!("the echo peer went away");
            }
        }
        let t = Instant::now();
        for _ in 0..round_trips {
            if !trip(&mut b) {
                bail!("the echo peer went away");
            }
        }
        let ns = t.elapsed().as_nanos() as f64 / round_trips as f64;
        libc::close(ping[1]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        println!("{ns}");
    }
    Ok(())
}
