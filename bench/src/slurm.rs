//! A one-node Slurm cluster on loopback, the baseline of the `real`
//! scenario: munged, slurmctld and slurmd from Debian's `slurm-wlm`,
//! configured in a scratch directory with ports of their own, and stopped by
//! PID when dropped. Nothing of the machine's own Slurm or MUNGE set-up
//! (`/etc/slurm`, `/etc/munge`, the default ports) is used or changed.
//!
//! The configuration is Slurm's high-throughput one, to give it its best
//! case: FIFO scheduling (`sched/builtin`) that runs on every event
//! (`sched_min_interval=0`) and at least every second, no accounting, job
//! completion logging, MPI or cgroup plugins, and logs at `error`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::sim::log_tail;

/// How often the queue is read while the jobs run: often enough to time a
/// run of seconds, seldom enough that `squeue` itself does not load
/// slurmctld.
const POLL: Duration = Duration::from_millis(100);

/// The programs the baseline runs.
const PROGRAMS: [&str; 7] = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol"];

pub struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
    /// munged, slurmctld, slurmd: stopped in the reverse order.
    daemons: Vec<(&'static str, Child)>,
}

/// What [`Slurm::run_jobs`] measured.
pub struct SlurmRun {
    /// From `sbatch` to the queue being empty.
    pub elapsed: Duration,
    /// Jobs that ended COMPLETED (exit 0).
    pub completed: usize,
    /// (seconds since `sbatch`, jobs no longer queued), one point per poll.
    pub progress: Vec<(f64, f64)>,
}

/// `prog` on PATH, or in the sbin directories a non-login PATH may lack.
fn find(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// A free loopback port (bound and released: a daemon started at once gets it).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// This machine's short host name, which slurmctld checks its host against.
fn short_hostname() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    ensure!(rc == 0, "gethostname: {}", std::io::Error::last_os_error());
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]);
    let short = name.split('.').next().unwrap_or_default().to_string();
    ensure!(!short.is_empty(), "this machine has no host name");
    Ok(short)
}

impl Slurm {
    /// Why the baseline cannot run on this machine, if it cannot.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("Slurm's daemons need root (slurmd starts each job as its user)".into());
        }
        PROGRAMS.iter().find(|p| find(p).is_none()).map(|p| {
            format!("{p} is not installed (Debian package slurm-wlm, which `cargo xtask setup` installs as root)")
        })
    }

    /// Starts the daemons in `dir` (which must exist and be empty) for one
    /// node with `slots` CPUs, each job taking one, and waits until the node
    /// is idle.
    pub fn start(dir: &Path, slots: usize, max_jobs: usize) -> Result<Slurm> {
        if let Some(why) = Slurm::unavailable() {
            bail!("{why}");
        }
        let munge = dir.join("munge");
        for d in [&munge, &dir.join("ctld"), &dir.join("spool"), &dir.join("jobs")] {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&munge, std::fs::Permissions::from_mode(0o700))?;
        // A key of this cluster's own; munged wants it unreadable by others.
        let key = munge.join("munge.key");
        let mut bytes = vec![0u8; 1024];
        let mut urandom = std::fs::File::open("/dev/urandom")?;
        std::io::Read::read_exact(&mut urandom, &mut bytes)?;
        std::fs::write(&key, &bytes)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400))?;
        let socket = munge.join("munge.sock");
        let d = |name: &str| dir.join(name).display().to_string();
        let host = short_hostname()?;
        let conf = dir.join("slurm.conf");
        let ctld_port = free_port()?;
        let mut d_port = free_port()?;
        while d_port == ctld_port {
            d_port = free_port()?;
        }
        std::fs::write(
            &conf,
            format!(
                "ClusterName=agorabench\n\
                 SlurmctldHost={host}(127.0.0.1)\n\
                 SlurmctldPort={ctld_port}\n\
                 SlurmdPort={d_port}\n\
                 SlurmUser=root\n\
                 SlurmdUser=root\n\
                 AuthType=auth/munge\n\
                 AuthInfo=socket={socket}\n\
                 CredType=cred/munge\n\
                 StateSaveLocation={ctld}\n\
                 SlurmdSpoolDir={spool}\n\
                 SlurmctldPidFile={ctld_pid}\n\
                 SlurmdPidFile={d_pid}\n\
                 SlurmctldLogFile={ctld_log}\n\
                 SlurmdLogFile={d_log}\n\
                 SlurmctldDebug=error\n\
                 SlurmdDebug=error\n\
                 MailProg=/bin/true\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 MpiDefault=none\n\
                 SchedulerType=sched/builtin\n\
                 SchedulerParameters=sched_interval=1,sched_min_interval=0,default_queue_depth={depth},batch_sched_delay=0\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\n\
                 SlurmdParameters=config_overrides\n\
                 AccountingStorageType=accounting_storage/none\n\
                 JobCompType=jobcomp/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 ReturnToService=2\n\
                 MaxJobCount={max_job_count}\n\
                 MaxArraySize={max_array}\n\
                 NodeName=bench NodeAddr=127.0.0.1 CPUs={slots} State=UNKNOWN\n\
                 PartitionName=bench Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
                socket = socket.display(),
                ctld = d("ctld"),
                spool = d("spool"),
                ctld_pid = d("slurmctld.pid"),
                d_pid = d("slurmd.pid"),
                ctld_log = d("slurmctld.log"),
                d_log = d("slurmd.log"),
                depth = max_jobs + 100,
                max_job_count = (max_jobs * 2).max(10_000),
                max_array = max_jobs + 1,
            ),
        )?;
        let mut slurm = Slurm { dir: dir.to_path_buf(), conf, daemons: Vec::new() };
        let mut munged = Command::new(find("munged").context("munged")?);
        munged
            .arg("--foreground")
            // munged refuses root unless forced; the key and socket are this run's own.
            .arg("--force")
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", munge.join("munged.pid").display()))
            .arg(format!("--log-file={}", munge.join("munged.log").display()))
            .arg(format!("--seed-file={}", munge.join("munged.seed").display()));
        slurm.spawn("munged", munged)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            slurm.check_running()?;
            ensure!(
                Instant::now() < deadline,
                "munged did not create its socket: {}",
                log_tail(&munge.join("munged.log"))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut ctld = Command::new(find("slurmctld").context("slurmctld")?);
        ctld.arg("-D").arg("-c").arg("-f").arg(&slurm.conf);
        slurm.spawn("slurmctld", ctld)?;
        let mut slurmd = Command::new(find("slurmd").context("slurmd")?);
        slurmd.arg("-D").arg("-N").arg("bench").arg("-f").arg(&slurm.conf);
        slurm.spawn("slurmd", slurmd)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            slurm.check_running()?;
            let out = slurm.client("sinfo").args(["-h", "-o", "%t"]).output()?;
            if String::from_utf8_lossy(&out.stdout).trim() == "idle" {
                return Ok(slurm);
            }
            ensure!(
                Instant::now() < deadline,
                "Slurm's node did not become idle in 60 s; slurmctld: {}\nslurmd: {}",
                log_tail(&dir.join("slurmctld.log")),
                log_tail(&dir.join("slurmd.log"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.out")))?;
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).env("SLURM_CONF", &self.conf);
        crate::sim::stop_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("cannot start {name}"))?;
        self.daemons.push((name, child));
        Ok(())
    }

    /// An error naming the daemon that exited, with the end of its output.
    fn check_running(&mut self) -> Result<()> {
        for (name, child) in &mut self.daemons {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited ({status}): {}", log_tail(&self.dir.join(format!("{name}.out"))));
            }
        }
        Ok(())
    }

    /// A Slurm command-line client pointed at this cluster.
    fn client(&self, prog: &str) -> Command {
        let mut cmd = Command::new(find(prog).unwrap_or_else(|| PathBuf::from(prog)));
        cmd.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        cmd
    }

    /// Submits `n` jobs running `true` as one job array (Slurm's own way to
    /// submit many small jobs, one request), and waits until none is
    /// queued, running or completing.
    pub fn run_jobs(&mut self, n: usize, timeout: Duration) -> Result<SlurmRun> {
        ensure!(n > 0, "no jobs to run");
        let start = Instant::now();
        let out = self
            .client("sbatch")
            .arg(format!("--array=0-{}", n - 1))
            .args(["--wrap=true", "--output=/dev/null", "--error=/dev/null", "--parsable", "--chdir"])
            .arg(self.dir.join("jobs"))
            .output()?;
        ensure!(out.status.success(), "sbatch failed: {}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or_default().to_string();
        ensure!(id.parse::<u64>().is_ok(), "sbatch printed no job id: {:?}", String::from_utf8_lossy(&out.stdout));
        let mut progress = vec![(0.0, 0.0)];
        let mut last_report = Instant::now();
        let mut failed_polls = 0;
        loop {
            self.check_running()?;
            let q = self.client("squeue").args(["-h", "-r", "-o", "%i", "-j", &id]).output()?;
            if !q.status.success() {
                // A poll can time out while slurmctld is busy; five in a row fail the run.
                failed_polls += 1;
                ensure!(failed_polls < 5, "squeue failed: {}", String::from_utf8_lossy(&q.stderr));
                std::thread::sleep(POLL);
                continue;
            }
            failed_polls = 0;
            let queued = String::from_utf8_lossy(&q.stdout).lines().filter(|l| !l.trim().is_empty()).count();
            let at = start.elapsed();
            progress.push((at.as_secs_f64(), n.saturating_sub(queued) as f64));
            if queued == 0 {
                break;
            }
            ensure!(at < timeout, "{queued} of {n} Slurm jobs still queued after {} s", timeout.as_secs());
            if last_report.elapsed() > Duration::from_secs(2) {
                eprintln!("  slurm: {}/{n} done", n - queued.min(n));
                last_report = Instant::now();
            }
            std::thread::sleep(POLL);
        }
        let elapsed = start.elapsed();
        let jobs = self.client("scontrol").args(["-o", "show", "job", &id]).output()?;
        ensure!(jobs.status.success(), "scontrol failed: {}", String::from_utf8_lossy(&jobs.stderr));
        let text = String::from_utf8_lossy(&jobs.stdout);
        let completed = text.lines().filter(|l| l.contains("JobState=COMPLETED")).count();
        Ok(SlurmRun { elapsed, completed, progress })
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.daemons.pop() {
            // SAFETY: kill(2) on a daemon this run started.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever a job or its step left running (only after an error:
        // every job has ended when `run_jobs` returns) works in this run's
        // directory.
        let root = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            if std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&root)) {
                // SAFETY: kill(2) on a process working in this run's own directory.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}
