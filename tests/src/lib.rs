//! The integration-test harness: starts the real `agora-master` and
//! `agora-agent` binaries on loopback, waits for conditions with timeouts
//! instead of sleeping, and cleans up after itself (processes it started,
//! task cgroups, sandboxes and temp dirs), also after a `kill -9`.
//!
//! The binaries must be built first (`cargo xtask test` does it); they are
//! found next to the test executable, in the cargo target directory, or in
//! `AGORA_BIN_DIR` when set (e.g. daemons built with a sanitizer).

pub mod framework;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agora_proto::http::{Limits, ResponseItem, ResponseParser};
use serde_json::Value;

/// The directory holding the binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AGORA_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which `cargo xtask test` does)",
        p.display()
    );
    p
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether cgroup isolation can run here; prints why not.
pub fn cgroups_available() -> bool {
    if !is_root() {
        eprintln!("note: not root, so agents run with --isolation none");
        return false;
    }
    true
}

/// Returns false (and says why) when the test needs root and we are not.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: needs root for cgroups (CI runs as root)");
    false
}

/// Polls `f` until it is true or `timeout` passes (then panics with `what`).
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n: u64 = rand_u64();
        let p = std::env::temp_dir().join(format!("agora-test-{tag}-{}-{n:x}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b)
}

/// A child process whose output goes to a log file; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, and waits for its first stdout line (the "listening"
    /// line both daemons print).
    fn spawn(name: &str, cmd: Command, log: PathBuf) -> (Proc, String) {
        Proc::try_spawn(name, cmd, log).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<(Proc, String), String> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let logf2 = logf.try_clone().expect("clone log");
        std::thread::spawn(move || {
            let mut logf = logf;
            let mut first = true;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = writeln!(logf, "{line}");
                if first {
                    let _ = tx.send(line);
                    first = false;
                }
            }
        });
        std::thread::spawn(move || {
            let mut logf = logf2;
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = writeln!(logf, "{line}");
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // Let the log threads finish writing.
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "{name} did not start; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
        };
        Ok((Proc { child, name: name.to_string(), log }, line))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we started and have not reaped.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
        // A failing test shows what the daemons said.
        if std::thread::panicking() {
            eprintln!("----- {} log ({}) -----\n{}", self.name, self.log.display(), self.log_text());
        }
    }
}

#[derive(Clone, Debug)]
pub struct MasterOpts {
    pub shards: usize,
    pub extra: Vec<String>,
}

impl Default for MasterOpts {
    fn default() -> Self {
        MasterOpts {
            shards: 2,
            extra: vec![
                "--allocation-interval".into(),
                "100ms".into(),
                "--agent-ping-timeout".into(),
                "200ms".into(),
                "--max-agent-ping-timeouts".into(),
                "5".into(),
            ],
        }
    }
}

pub struct Master {
    pub proc: Option<Proc>,
    pub addr: String,
    pub work_dir: TempDir,
    opts: MasterOpts,
}

impl Master {
    pub fn start(opts: MasterOpts) -> Master {
        let work_dir = TempDir::new("master");
        let mut m = Master { proc: None, addr: String::new(), work_dir, opts };
        m.launch("0");
        m
    }

    fn launch(&mut self, port: &str) {
        let mut cmd = Command::new(bin("agora-master"));
        cmd.args(["--ip", "127.0.0.1", "--port", port, "--shards", &self.opts.shards.to_string()])
            .arg("--work-dir")
            .arg(self.work_dir.path())
            .args(&self.opts.extra);
        let (proc, line) = Proc::spawn("agora-master", cmd, self.work_dir.path().join("master.log"));
        let addr = line.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).expect("listening line");
        self.addr = addr.to_string();
        self.proc = Some(proc);
    }

    /// Stops the master (SIGKILL) and starts it again on the same port with
    /// the same work dir (registry).
    pub fn restart(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        let port = self.addr.rsplit(':').next().expect("port").to_string();
        // The port may linger for a moment; retry.
        for attempt in 0..50 {
            let mut cmd = Command::new(bin("agora-master"));
            cmd.args(["--ip", "127.0.0.1", "--port", &port, "--shards", &self.opts.shards.to_string()])
                .arg("--work-dir")
                .arg(self.work_dir.path())
                .args(&self.opts.extra);
            let log = self.work_dir.path().join(format!("master-{attempt}.log"));
            match Proc::try_spawn("agora-master", cmd, log) {
                Ok((proc, _)) => {
                    self.proc = Some(proc);
                    return;
                }
                Err(e) if attempt == 49 => panic!("the master did not restart on port {port}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn state(&self) -> Value {
        get_json(&self.addr, "/master/state")
    }

    pub fn metrics(&self) -> Value {
        get_json(&self.addr, "/metrics/snapshot")
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
pub struct AgentOpts {
    pub resources: String,
    pub attributes: Option<String>,
    pub extra: Vec<String>,
}

impl Default for AgentOpts {
    fn default() -> Self {
        AgentOpts {
            resources: "cpus:2;mem:1024;disk:1024;ports:[31000-31999]".into(),
            attributes: None,
            extra: vec!["--kill-grace-period".into(), "1secs".into(), "--status-update-retry".into(), "200ms".into()],
        }
    }
}

pub struct Agent {
    pub proc: Option<Proc>,
    pub http: String,
    pub work_dir: TempDir,
    master: String,
    opts: AgentOpts,
}

impl Agent {
    pub fn start(master: &str, opts: AgentOpts) -> Agent {
        let work_dir = TempDir::new("agent");
        let (proc, http) = Agent::spawn(master, &opts, &work_dir);
        Agent { proc: Some(proc), http, work_dir, master: master.to_string(), opts }
    }

    /// Stops the agent (SIGTERM, as an operator would) and starts it again
    /// on the same work directory.
    pub fn restart(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
        let (proc, http) = Agent::spawn(&self.master, &self.opts, &self.work_dir);
        self.proc = Some(proc);
        self.http = http;
    }

    fn spawn(master: &str, opts: &AgentOpts, work_dir: &TempDir) -> (Proc, String) {
        let mut cmd = Command::new(bin("agora-agent"));
        cmd.args(["--master", master, "--ip", "127.0.0.1", "--port", "0", "--resources", &opts.resources])
            .arg("--work-dir")
            .arg(work_dir.path())
            .args(&opts.extra);
        if let Some(a) = &opts.attributes {
            cmd.args(["--attributes", a]);
        }
        if !cgroups_available() {
            cmd.args(["--isolation", "none"]);
        }
        let (proc, line) = Proc::spawn("agora-agent", cmd, work_dir.path().join("agent.log"));
        let http = line.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).expect("listening line");
        (proc, http.to_string())
    }

    pub fn state(&self) -> Value {
        get_json(&self.http, "/state")
    }

    /// The `/monitor/statistics` entry of a task (running or just ended).
    pub fn statistics(&self, task_id: &str) -> Option<Value> {
        let all = get_json(&self.http, "/monitor/statistics");
        all.as_array()?.iter().find(|e| e["task_id"] == task_id).map(|e| e["statistics"].clone())
    }

    /// The agent's Prometheus text.
    pub fn metrics_text(&self) -> String {
        let (status, _, body) = http(&self.http, "GET", "/metrics", &[], &[]);
        assert_eq!(status, 200);
        String::from_utf8(body).expect("utf-8")
    }

    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill9();
        }
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }

    /// The agent's cgroup directories, as it recorded them.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_to_string(self.work_dir.path().join("cgroups"))
            .unwrap_or_default()
            .lines()
            .map(PathBuf::from)
            .collect()
    }

    /// Kills every process whose working directory is in this agent's work
    /// dir (its tasks, orphaned by a kill -9) and removes its cgroups.
    pub fn cleanup_leftovers(&self) {
        let root = self.work_dir.path().canonicalize().unwrap_or_else(|_| self.work_dir.path().to_path_buf());
        for _ in 0..3 {
            if let Ok(entries) = std::fs::read_dir("/proc") {
                for e in entries.flatten() {
                    let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
                    if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
                        if cwd.starts_with(&root) {
                            // SAFETY: kill(2) on a process running in our own temp dir.
                            unsafe {
                                libc::kill(pid, libc::SIGKILL);
                            }
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for dir in self.cgroup_dirs() {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        remove_cgroup(&e.path());
                    }
                }
            }
            remove_cgroup(&dir);
        }
    }
}

fn remove_cgroup(dir: &Path) {
    for _ in 0..100 {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on a process in a cgroup this test's agent made.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if !dir.exists() || std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
        self.cleanup_leftovers();
    }
}

/// Blocking HTTP GET on loopback; the status and body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut h = headers.to_vec();
    h.push(("Connection", "close"));
    s.write_all(&agora_proto::http::request(method, addr, path, &h, body)).expect("write");
    let mut p = ResponseParser::new(Limits { max_body_bytes: 256 << 20, ..Default::default() });
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        while let Some(item) = p.next_item().expect("valid HTTP") {
            if let ResponseItem::Body(b) = item {
                out.extend_from_slice(&b);
            }
        }
        if p.is_done() {
            break;
        }
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("{method} {path} to {addr}: read failed: {e}"),
        };
        if n == 0 {
            if let Ok(Some(ResponseItem::Body(b))) = p.eof() {
                out.extend_from_slice(&b);
            }
            break;
        }
        p.push(&buf[..n]);
    }
    let head =
        p.head().unwrap_or_else(|| panic!("{method} {path} to {addr}: connection closed without a response")).clone();
    (head.status, head.headers, out)
}

pub fn get_json(addr: &str, path: &str) -> Value {
    let (status, _, body) = http(addr, "GET", path, &[], &[]);
    assert_eq!(status, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("JSON")
}

/// Every task of every framework (current and completed) in a master state.
pub fn all_tasks(state: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for key in ["frameworks", "completed_frameworks"] {
        for f in state[key].as_array().cloned().unwrap_or_default() {
            for tk in ["tasks", "unreachable_tasks", "completed_tasks"] {
                out.extend(f[tk].as_array().cloned().unwrap_or_default());
            }
        }
    }
    out
}

/// Number of agents the master shows as active.
pub fn active_agents(state: &Value) -> usize {
    state["slaves"].as_array().map(|a| a.iter().filter(|s| s["active"] == true).count()).unwrap_or(0)
}
