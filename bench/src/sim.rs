//! What the load scenarios share: a master started for the run, and
//! simulated agents speaking the real rkyv protocol to it.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_proto::mesos::{FrameworkId, Source, TaskId, TaskState, TaskStatus};
use agora_proto::resources::Resources;
use agora_proto::wire::{self, AgentInfo, AgentToMaster, FrameDecoder, Hello, MasterToAgent, StatusUpdate, HELLO_LEN};
use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Resources of each simulated agent and each task: 100 tasks fit an agent.
pub const AGENT_RESOURCES: &str = "cpus:32;mem:131072;disk:100000;ports:[31000-32000]";
pub const TASK_RESOURCES: &str = "cpus:0.32;mem:1024";

/// Many simulated agents need many sockets, on this side and (inherited) in
/// the master started for the run: the soft limit goes to the hard one, and
/// with CAP_SYS_RESOURCE both go up to what the kernel allows. Returns the
/// limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    let nr_open: u64 =
        std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    // SAFETY: getrlimit/setrlimit with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let want = nr_open.min(1 << 20);
        if want > lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: want, rlim_max: want };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// One of the project's binaries, next to this one (the same build).
pub fn beside_this_binary(name: &str) -> Result<PathBuf> {
    Ok(std::env::current_exe()?.parent().context("binary dir")?.join(name))
}

/// Spawns `cmd`, saying how to build the binary if it is missing.
pub fn spawn_daemon(cmd: &mut Command) -> Result<Child> {
    cmd.spawn().with_context(|| {
        format!("cannot start {} (build it: cargo build --release --bins)", cmd.get_program().to_string_lossy())
    })
}

/// The `host:port` a daemon prints on its first stdout line
/// (`... listening on http://ADDR ...`).
pub fn listening_address(child: &mut Child) -> Result<String> {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line.split("http://").nth(1).and_then(|r| r.split_whitespace().next());
    addr.map(String::from).with_context(|| format!("no listening line, but {line:?}"))
}

/// A daemon started for the run gets SIGTERM if the bench dies first (the
/// bench starts them from its main thread, which lives as long as it does).
pub fn stop_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The last ten lines of a daemon's log, for an error message.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// A master started for the run, stopped when dropped.
pub struct MasterProc {
    child: Child,
    pub addr: String,
}

impl MasterProc {
    /// `agora-master` next to this binary, on a loopback port, with `extra`
    /// flags after the defaults (a later flag wins).
    pub fn start(shards: usize, extra: &[&str]) -> Result<MasterProc> {
        let mut cmd = Command::new(beside_this_binary("agora-master")?);
        cmd.args(["--ip", "127.0.0.1", "--port", "0", "--shards", &shards.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = spawn_daemon(&mut cmd)?;
        // The master is killed when dropped; until then, by hand.
        match listening_address(&mut child) {
            Ok(addr) => Ok(MasterProc { addr, child }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .context("VmRSS in /proc/PID/status")
    }

    /// User and system CPU time used so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // The fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f
            .get(11)
            .and_then(|u| u.parse().ok())
            .zip(f.get(12).and_then(|s| s.parse().ok()))
            .map(|(u, s): (u64, u64)| u + s)
            .context("utime and stime")?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
    }

    /// A figure from the master's `/metrics/snapshot`.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let body = agora_sdk::http::get(&self.addr, "/metrics/snapshot").await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        v[name].as_f64().with_context(|| format!("no {name} in /metrics/snapshot"))
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
pub struct AgentCounters {
    pub registered: AtomicU64,
    pub pongs: AtomicU64,
    pub launched: AtomicU64,
    pub updates_sent: AtomicU64,
    /// Simulated agents that failed (each also printed).
    pub errors: AtomicU64,
    /// With `SimOpts::note_freed`: when each agent last reported a task
    /// finished (the first update of a task says its latest state is
    /// FINISHED), by agent id.
    pub freed_at: std::sync::Mutex<HashMap<String, Instant>>,
}

impl AgentCounters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy)]
pub struct SimOpts {
    /// Bytes read from the socket at once.
    pub read_buffer: usize,
    /// Note in `AgentCounters::freed_at` when a task is reported finished.
    pub note_freed: bool,
}

/// Starts `n` simulated agents (numbered from `first`), at most `parallel`
/// connecting at once so that the master's accept queue does not overflow.
/// Each connects from its own loopback address per 16,384 agents, because
/// one source address has fewer ephemeral ports than the largest runs have
/// agents.
pub fn spawn_agents(master: &str, first: usize, n: usize, counters: &Arc<AgentCounters>, opts: SimOpts) -> Agents {
    let addr: SocketAddr = master.parse().expect("the master's address");
    let connecting = Arc::new(tokio::sync::Semaphore::new(256));
    let handles = (first..first + n)
        .map(|i| {
            let (c, sem) = (counters.clone(), connecting.clone());
            tokio::spawn(async move {
                let res = async {
                    let s = {
                        let _permit = sem.acquire().await?;
                        connect(addr, i).await?
                    };
                    sim_agent(s, i, &c, opts).await
                }
                .await;
                if let Err(e) = res {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("simulated agent {i}: {e:#}");
                }
            })
        })
        .collect();
    Agents(handles)
}

/// Running simulated agents; they stop when this is dropped (before the
/// master is, so that none reports the master going away as an error).
pub struct Agents(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Agents {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

async fn connect(master: SocketAddr, idx: usize) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if master.ip().is_loopback() {
        // The port is chosen at connect, by the whole 4-tuple: binding with
        // port 0 would search the address's ports on every bind.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a valid int.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("IP_BIND_ADDRESS_NO_PORT");
        }
        let block = (idx / 16_384) as u8;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 1, block, 1), 0)))?;
    }
    let s = socket.connect(master).await.with_context(|| format!("connect to {master}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Waits until `target` agents registered, printing progress every two
/// seconds; fails past `limit` or when an agent failed.
pub async fn wait_registered(counters: &AgentCounters, target: u64, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut last = Instant::now();
    loop {
        let n = AgentCounters::get(&counters.registered);
        if n >= target {
            return Ok(start.elapsed());
        }
        let errors = AgentCounters::get(&counters.errors);
        if errors > 0 {
            bail!("{errors} simulated agents failed ({n} of {target} registered)");
        }
        if start.elapsed() > limit {
            bail!("only {n} of {target} agents registered in {limit:?}");
        }
        if last.elapsed() > Duration::from_secs(2) {
            eprintln!("  {n}/{target} agents registered");
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One simulated agent: registers, answers pings, "runs" each task by
/// reporting RUNNING then FINISHED, each update resent until acknowledged.
async fn sim_agent(mut s: TcpStream, idx: usize, counters: &AgentCounters, opts: SimOpts) -> Result<()> {
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
    let mut buf = vec![0u8; opts.read_buffer];
    let mut agent_id = None;
    // Per task: updates not yet acknowledged (the head is in flight).
    let mut pending: HashMap<(FrameworkId, TaskId), VecDeque<TaskStatus>> = HashMap::new();
    let mut out = Vec::new();
    let mut seq = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("the master closed the connection");
        }
        decoder.push(&buf[..n]);
        while let Some(frame) = decoder.next_frame()? {
            match wire::decode::<MasterToAgent>(&frame)? {
                MasterToAgent::Registered { agent_id: id, .. } => {
                    agent_id = Some(id);
                    counters.registered.fetch_add(1, Ordering::Relaxed);
                }
                MasterToAgent::Ping { seq } => {
                    out.extend(wire::encode(&AgentToMaster::Pong { seq }));
                    counters.pongs.fetch_add(1, Ordering::Relaxed);
                }
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
                    // Its first update already says the task's latest state
                    // is FINISHED: the master frees its resources on it.
                    if opts.note_freed {
                        if let Some(id) = &agent_id {
                            let mut freed = counters.freed_at.lock().expect("not poisoned");
                            freed.insert(id.as_str().to_string(), Instant::now());
                        }
                    }
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
