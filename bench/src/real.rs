//! Scenario `real`: N short real processes (`true`, 1,000 by default)
//! launched through one real agent, and the same N jobs through Slurm on
//! the same machine in the same run (`slurm.rs`); reports both times and
//! their ratio.
//!
//! Both get the same room: the agent offers `slots` CPUs and each task takes
//! one; Slurm's node has `slots` CPUs and each job takes one. By default
//! `slots` is N, so neither side queues for room and the figure is the cost
//! of placing, starting and reporting the processes. Agora's side starts
//! its clock at the framework's first offer (the agent registered, as
//! Slurm's node is idle before `sbatch`) and stops it at the last FINISHED.
//! As root the agent isolates each task in its own cgroup with the eBPF
//! accounting on; Slurm's jobs run without cgroups (its cheapest set-up).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agora_proto::mesos::FrameworkInfo;
use agora_proto::resources::Resources;
use agora_sdk::Driver;
use anyhow::{Context, Result};
use serde_json::json;

use crate::launch;
use crate::report::{self, Plot};
use crate::sim::{self, MasterProc};
use crate::slurm::Slurm;
use crate::Args;

/// Each task's (and each Slurm job's) share of the machine.
const TASK_RESOURCES: &str = "cpus:1;mem:32";

/// A directory for this run, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Scratch> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let dir = std::env::temp_dir().join(format!("agora-bench-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `agora-agent` next to this binary, stopped (SIGTERM, as an operator
/// would) when dropped.
struct AgentProc {
    child: Child,
    log: PathBuf,
}

impl AgentProc {
    fn start(master: &str, work_dir: &Path, resources: &str, isolation: &str) -> Result<AgentProc> {
        std::fs::create_dir_all(work_dir)?;
        let log = work_dir.with_extension("log");
        let mut cmd = Command::new(sim::beside_this_binary("agora-agent")?);
        cmd.args(["--master", master, "--ip", "127.0.0.1", "--port", "0", "--resources", resources])
            .args(["--isolation", isolation])
            .arg("--work-dir")
            .arg(work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        sim::stop_with_parent(&mut cmd);
        // Stopped by Drop from here on, whatever fails.
        let mut agent = AgentProc { child: sim::spawn_daemon(&mut cmd)?, log };
        sim::listening_address(&mut agent.child)
            .with_context(|| format!("the agent did not start: {}", agent.log_tail()))?;
        Ok(agent)
    }

    fn log_tail(&self) -> String {
        sim::log_tail(&self.log)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the agent this run started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..500 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes a cgroup directory and the ones below it, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The type of the filesystem holding `dir`: every sandbox is made there,
/// and creating files is much of a launch's cost.
fn filesystem(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return "unknown".into() };
    // SAFETY: statfs on a valid path into a zeroed struct.
    let magic = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut st) != 0 {
            return "unknown".into();
        }
        st.f_type as u64
    };
    match magic {
        0xEF53 => "ext2/3/4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        other => format!("{other:#x}"),
    }
}

/// cgroups (with the eBPF accounting) as root; unprivileged, none.
fn isolation() -> &'static str {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        "cgroups"
    } else {
        "none"
    }
}

pub async fn run(args: &Args) -> Result<()> {
    let n = args.tasks.unwrap_or(if args.quick { 100 } else { 1_000 });
    anyhow::ensure!(n > 0, "--tasks must be at least 1");
    let slots = args.slots.unwrap_or(n).max(1);
    let scratch = Scratch::new("real")?;
    let isolation = isolation();
    let encoding = args.encoding()?;

    // Agora: a master with its defaults and one real agent.
    let master = MasterProc::start(args.shards, &[])?;
    let agent = AgentProc::start(
        &master.addr,
        &scratch.path("agent"),
        &format!("cpus:{slots};mem:{};disk:1024", slots * 32),
        isolation,
    )?;
    let info = FrameworkInfo { user: "bench".into(), name: "agora-bench real".into(), ..Default::default() };
    let (driver, events) = Driver::start_with(&master.addr, info, encoding).await?;
    let placed = launch::place(&driver, events, n, &Resources::parse(TASK_RESOURCES)?, "true")
        .await
        .with_context(|| format!("agent log: {}", agent.log_tail()))?;
    let _ = driver.teardown().await;
    drop(agent);
    drop(master);
    // The agent records the cgroups it made; once it has stopped, none is left.
    let cgroups_left: Vec<String> = std::fs::read_to_string(scratch.path("agent").join("cgroups"))
        .unwrap_or_default()
        .lines()
        .filter(|d| Path::new(d).exists())
        .map(String::from)
        .collect();
    if !cgroups_left.is_empty() {
        eprintln!("the agent left cgroups behind (counted as errors, and removed): {cgroups_left:?}");
        cgroups_left.iter().for_each(|d| remove_cgroup_tree(Path::new(d)));
    }
    let agora_secs = placed.elapsed.as_secs_f64();
    let fs = filesystem(&scratch.0);
    println!(
        "scenario real: {n} `true` tasks, {slots} at a time at most, through one agent (isolation {isolation}, \
         sandboxes on {fs}, {})",
        encoding.media_type()
    );
    println!("  agora: {agora_secs:.3} s ({:.0} tasks/s)", n as f64 / agora_secs);
    report::print_percentiles("launch -> RUNNING", &placed.to_running);
    report::print_percentiles("launch -> FINISHED", &placed.to_finished);
    let mut figures = json!({
        "tasks": n,
        "slots": slots,
        "agora": {
            "isolation": isolation,
            "work_dir": scratch.path("agent").display().to_string(),
            "work_dir_filesystem": fs,
            "encoding": encoding.media_type(),
            "elapsed_secs": agora_secs,
            "tasks_per_sec": n as f64 / agora_secs,
            "launch_to_running": report::percentiles(&placed.to_running),
            "launch_to_finished": report::percentiles(&placed.to_finished),
            "errors": placed.ack_errors + cgroups_left.len() as u64,
        },
    });
    let mut series = vec![("Agora, one agent".to_string(), placed.progress.clone())];

    // Slurm: the same jobs on a one-node cluster of its own.
    match Slurm::unavailable() {
        Some(why) => {
            println!("  slurm: SKIPPED: {why}");
            figures["slurm_skipped"] = json!(why);
        }
        None => {
            let dir = scratch.path("slurm");
            std::fs::create_dir_all(&dir)?;
            let run = Slurm::start(&dir, slots, n).and_then(|mut slurm| {
                eprintln!("slurm: one node with {slots} CPUs is idle; submitting {n} jobs");
                slurm.run_jobs(n, Duration::from_secs(600 + n as u64))
            });
            // Agora's figures are kept when Slurm fails; the run still fails.
            let run = match run {
                Ok(run) => run,
                Err(e) => {
                    println!("  slurm: FAILED: {e:#}");
                    figures["slurm"] = json!({ "failed": format!("{e:#}"), "errors": 1 });
                    report::write(&args.out, "real", figures, args.baseline.as_deref())?;
                    return Err(e.context("the Slurm baseline failed"));
                }
            };
            let slurm_secs = run.elapsed.as_secs_f64();
            let ratio = slurm_secs / agora_secs;
            println!(
                "  slurm: {slurm_secs:.3} s ({:.0} jobs/s), {} of {n} COMPLETED",
                n as f64 / slurm_secs,
                run.completed
            );
            println!("  Agora is {ratio:.1}x as fast as Slurm");
            figures["slurm"] = json!({
                "elapsed_secs": slurm_secs,
                "jobs_per_sec": n as f64 / slurm_secs,
                "completed": run.completed,
                "errors": n - run.completed.min(n),
            });
            figures["slurm_secs_over_agora_secs"] = json!(ratio);
            series.push(("Slurm, one node".to_string(), run.progress));
        }
    }
    report::plot(
        &args.out.join("real.svg"),
        &Plot {
            title: &format!("real: {n} `true` processes on one machine"),
            x_label: "seconds since submission",
            y_label: "finished",
            log_y: false,
            series,
        },
    )?;
    report::write(&args.out, "real", figures, args.baseline.as_deref())?;
    Ok(())
}
