//! Task cgroups: one per task, with cpu and memory limits from its resources.
//!
//! Hosts come in two shapes. With the unified (v2) hierarchy holding the
//! controllers, each task gets one cgroup there. On hybrid hosts the
//! controllers live in v1 hierarchies (`cpu`, `cpuacct`, `memory`, `pids`), and
//! each task gets one cgroup in each. Either way every cgroup the agent makes
//! sits below the agent's own cgroup (read from `/proc/self/cgroup`), in a
//! directory named after the agent's work directory, so a restarted agent
//! finds and cleans what a crashed one left behind; nothing outside it is
//! created, moved or limited.
//!
//! Every task also has a v2 cgroup for identity: its inode number is the
//! cgroup id the eBPF programs key their maps by. On v2 hosts that is the
//! task's cgroup itself; on hybrid hosts it is a directory in the unified
//! hierarchy (which holds no controllers there), below the agent's own v2
//! cgroup, that the task joins along with its v1 cgroups.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The v1 controllers a task is placed in on hybrid hosts.
const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "blkio"];
/// The pseudo-controller name of the v2 identity directory on hybrid hosts.
const IDENTITY: &str = "identity";
const CFS_PERIOD_US: u64 = 100_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Controllers in the unified hierarchy.
    V2,
    /// Controllers in per-controller v1 hierarchies.
    V1,
}

/// Limits derived from a task's resources.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    pub cpus: f64,
    pub mem_bytes: Option<u64>,
}

/// The agent's cgroup directories, one per hierarchy it uses.
#[derive(Clone, Debug)]
pub struct Cgroups {
    pub mode: Mode,
    /// (controller, directory) pairs; for V2 a single ("unified", dir).
    bases: Vec<(String, PathBuf)>,
}

/// One task's cgroup directories.
#[derive(Clone, Debug)]
pub struct TaskCgroup {
    pub mode: Mode,
    dirs: Vec<(String, PathBuf)>,
}

/// One cgroup mount: where it is, which part of its hierarchy it shows.
struct Mount {
    point: PathBuf,
    /// The hierarchy path mounted there (`/` unless inside a container).
    root: String,
    fstype: String,
    options: Vec<String>,
}

impl Mount {
    /// The directory of cgroup `path` (as in /proc/self/cgroup) under this mount.
    fn dir_of(&self, path: &str) -> PathBuf {
        let rel = if self.root == "/" { path } else { path.strip_prefix(self.root.as_str()).unwrap_or(path) };
        join_rel(&self.point, rel)
    }
}

fn mountinfo() -> io::Result<Vec<Mount>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        out.push(Mount {
            point: PathBuf::from(pre[4]),
            root: pre[3].to_string(),
            fstype: post[0].to_string(),
            options: post[2].split(',').map(String::from).collect(),
        });
    }
    Ok(out)
}

/// `/proc/self/cgroup`: controller list (empty for v2) → path.
fn own_cgroups() -> io::Result<Vec<(Vec<String>, String)>> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            let ctrls = if ctrls.is_empty() { vec![] } else { ctrls.split(',').map(String::from).collect() };
            Some((ctrls, path.to_string()))
        })
        .collect())
}

fn join_rel(mount: &Path, rel: &str) -> PathBuf {
    mount.join(rel.trim_start_matches('/'))
}

/// The agent's directories in the v1 hierarchies, one per mount, each named
/// by the controllers it serves: co-mounted controllers (`cpu,cpuacct`, as
/// systemd mounts them) share a directory.
fn v1_bases(mounts: &[Mount], own: &[(Vec<String>, String)], name: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let mut bases: Vec<(String, PathBuf)> = Vec::new();
    for ctrl in V1_CONTROLLERS {
        let Some(mnt) = mounts.iter().find(|m| m.fstype == "cgroup" && m.options.iter().any(|x| x == ctrl)) else {
            if ctrl == "cpu" || ctrl == "memory" {
                return Err(format!("the v1 {ctrl} controller is not mounted"));
            }
            continue;
        };
        let Some((_, rel)) = own.iter().find(|(c, _)| c.iter().any(|x| x == ctrl)) else {
            return Err(format!("/proc/self/cgroup has no line for the {ctrl} controller"));
        };
        let dir = mnt.dir_of(rel).join(name);
        match bases.iter_mut().find(|(_, d)| d == &dir) {
            Some((served, _)) => {
                served.push(',');
                served.push_str(ctrl);
            }
            None => bases.push((ctrl.to_string(), dir)),
        }
    }
    Ok(bases)
}

/// Whether a base or task directory named `served` (controllers joined by
/// commas) serves controller `ctrl`.
fn serves(served: &str, ctrl: &str) -> bool {
    served.split(',').any(|c| c == ctrl)
}

/// The directory of the agent's own v2 cgroup, if the unified hierarchy is
/// mounted (on hybrid hosts it holds no controllers but gives cgroup ids).
pub fn own_unified_dir() -> Option<PathBuf> {
    let mounts = mountinfo().ok()?;
    let mnt = mounts.iter().find(|m| m.fstype == "cgroup2")?;
    let own = own_cgroups().ok()?;
    let (_, path) = own.iter().find(|(c, _)| c.is_empty())?;
    Some(mnt.dir_of(path))
}

impl Cgroups {
    /// Finds the hierarchies and creates the agent's directory `name` below
    /// its own cgroup in each.
    pub fn setup(name: &str) -> Result<Cgroups, String> {
        let mounts = mountinfo().map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let own = own_cgroups().map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let v1_memory = mounts.iter().any(|m| m.fstype == "cgroup" && m.options.iter().any(|x| x == "memory"));
        let (mode, bases) = if v1_memory {
            let mut bases = v1_bases(&mounts, &own, name)?;
            if let Some(unified) = own_unified_dir() {
                bases.push((IDENTITY.to_string(), unified.join(name)));
            }
            (Mode::V1, bases)
        } else {
            let mnt = mounts
                .iter()
                .find(|m| m.fstype == "cgroup2")
                .ok_or("neither cgroup v1 controllers nor a cgroup v2 hierarchy is mounted")?;
            let (_, rel) = own.iter().find(|(c, _)| c.is_empty()).ok_or("/proc/self/cgroup has no v2 line")?;
            let own_dir = mnt.dir_of(rel);
            let available = fs::read_to_string(own_dir.join("cgroup.controllers")).unwrap_or_default();
            for c in ["cpu", "memory"] {
                if !available.split_whitespace().any(|x| x == c) {
                    return Err(format!(
                        "the cgroup v2 controller {c} is not available in {}; run the agent in a cgroup with \
                         cpu and memory delegated (e.g. systemd Delegate=yes)",
                        own_dir.display()
                    ));
                }
            }
            (Mode::V2, vec![("unified".to_string(), own_dir.join(name))])
        };
        for (_, dir) in &bases {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        if let Some((_, dir)) = bases.iter().find(|(c, _)| serves(c, "blkio")) {
            activate_blkio_accounting(dir);
        }
        if mode == Mode::V2 {
            let parent = bases[0].1.parent().expect("has a parent").to_path_buf();
            // The agent's cgroup must pass cpu and memory down to ours, and ours
            // to the tasks. A cgroup that holds processes cannot pass
            // controllers down (the "no internal processes" rule), so an agent
            // alone in its cgroup first moves itself into a leaf beside ours.
            if enable_controllers(&parent).is_err() && only_self_in(&parent) {
                let leaf = parent.join(format!("{name}.agent"));
                fs::create_dir_all(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
                write_file(&leaf.join("cgroup.procs"), "0")?;
            }
            for dir in [&parent, &bases[0].1] {
                enable_controllers(dir).map_err(|e| {
                    format!("{e}; run the agent in a delegated cgroup of its own (e.g. systemd Delegate=yes)")
                })?;
            }
        }
        Ok(Cgroups { mode, bases })
    }

    /// The agent's v2 directory, where cgroup eBPF programs attach to reach
    /// every task below it.
    pub fn identity_dir(&self) -> Option<PathBuf> {
        match self.mode {
            Mode::V2 => self.bases.first().map(|(_, d)| d.clone()),
            Mode::V1 => self.bases.iter().find(|(c, _)| serves(c, IDENTITY)).map(|(_, d)| d.clone()),
        }
    }

    /// The agent's directories, for reports and cleanup.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.bases.iter().map(|(_, d)| d.clone()).collect()
    }

    /// Creates a task's cgroup and applies its limits.
    pub fn create(&self, id: &str, limits: Limits) -> Result<TaskCgroup, String> {
        let dirs: Vec<(String, PathBuf)> = self.bases.iter().map(|(c, d)| (c.clone(), d.join(id))).collect();
        let t = TaskCgroup { mode: self.mode.clone(), dirs };
        for (_, d) in &t.dirs {
            fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        if let Err(e) = t.apply(limits) {
            let _ = t.destroy(Duration::from_millis(100));
            return Err(e);
        }
        Ok(t)
    }

    /// Kills and removes task cgroups left by an earlier run of this agent.
    pub fn clean_stale(&self) -> usize {
        let mut n = 0;
        for (c, base) in &self.bases {
            let Ok(entries) = fs::read_dir(base) else { continue };
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let t = TaskCgroup { mode: self.mode.clone(), dirs: vec![(c.clone(), e.path())] };
                    let _ = t.destroy(Duration::from_secs(2));
                    n += 1;
                }
            }
        }
        n
    }

    /// Removes the agent's directories (they must be empty of tasks).
    pub fn remove(&self) {
        for (_, d) in &self.bases {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Enables cpu and memory (and pids, when available) for `dir`'s children.
fn enable_controllers(dir: &Path) -> Result<(), String> {
    let ctl = dir.join("cgroup.subtree_control");
    let cur = fs::read_to_string(&ctl).unwrap_or_default();
    // pids and io are optional: without io, tasks have no block IO figures.
    for c in ["cpu", "memory", "pids", "io"] {
        if cur.split_whitespace().any(|x| x == c) {
            continue;
        }
        if let Err(e) = fs::write(&ctl, format!("+{c}")) {
            if c == "cpu" || c == "memory" {
                return Err(format!("cannot enable the {c} controller in {}: {e}", ctl.display()));
            }
        }
    }
    Ok(())
}

/// Makes v1 blkio count bytes per cgroup. The kernel keeps
/// `blkio.throttle.io_service_bytes` only for devices where blk-throttle has
/// been configured; a rule without a limit (`MAJ:MIN 0`) in the agent's own
/// blkio cgroup turns it on for every disk, and limits nothing. Devices that
/// refuse (no request queue) are skipped. Returns how many were turned on.
fn activate_blkio_accounting(dir: &Path) -> usize {
    let rule = dir.join("blkio.throttle.read_bps_device");
    let Ok(disks) = fs::read_dir("/sys/block") else { return 0 };
    let mut n = 0;
    for d in disks.flatten() {
        let Ok(dev) = fs::read_to_string(d.path().join("dev")) else { continue };
        if fs::write(&rule, format!("{} 0", dev.trim())).is_ok() {
            n += 1;
        }
    }
    tracing::debug!(devices = n, "blkio accounting on");
    n
}

/// Whether the agent is the only process in cgroup `dir`.
fn only_self_in(dir: &Path) -> bool {
    let me = std::process::id().to_string();
    fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|t| t.lines().all(|l| l.trim() == me))
}

fn write_file(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

/// How a sample reads a cgroup file: by path, to its text.
type Read<'a> = dyn FnMut(&Path) -> Option<String> + 'a;

fn read_text(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// The cgroup files a task's samples read, kept open between samples: on
/// the machines measured, reading an open cgroup file again (from offset 0,
/// where the kernel regenerates it) costs a tenth of opening, reading and
/// closing it (docs/benchmarks.md). About nine descriptors per task; a file
/// that cannot be kept open (the descriptor limit reached) is read by path
/// instead, as is every file of `StatFiles::unkept()`.
#[derive(Debug, Default)]
pub struct StatFiles {
    files: Vec<(PathBuf, Kept)>,
    unkept: bool,
}

#[derive(Debug)]
enum Kept {
    Open(fs::File),
    Missing,
    ByPath,
}

impl StatFiles {
    /// Reads every file by path, keeping nothing open.
    pub fn unkept() -> StatFiles {
        StatFiles { files: Vec::new(), unkept: true }
    }

    /// Descriptors kept open.
    pub fn open_files(&self) -> usize {
        self.files.iter().filter(|(_, k)| matches!(k, Kept::Open(_))).count()
    }

    fn read(&mut self, path: &Path) -> Option<String> {
        use std::os::unix::fs::FileExt;
        if self.unkept {
            return read_text(path);
        }
        let i = match self.files.iter().position(|(p, _)| p == path) {
            Some(i) => i,
            None => {
                let kept = match fs::File::open(path) {
                    Ok(f) => Kept::Open(f),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Kept::Missing,
                    Err(_) => Kept::ByPath,
                };
                self.files.push((path.to_path_buf(), kept));
                self.files.len() - 1
            }
        };
        match &self.files[i].1 {
            Kept::Missing => None,
            Kept::ByPath => read_text(path),
            Kept::Open(f) => {
                let mut buf = vec![0u8; 4096];
                let mut len = 0;
                loop {
                    if len == buf.len() {
                        buf.resize(len * 2, 0);
                    }
                    let want = buf.len() - len;
                    match f.read_at(&mut buf[len..], len as u64) {
                        Ok(n) => {
                            len += n;
                            // The kernel fills what it can: a short read
                            // is the end.
                            if n < want {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return None,
                    }
                }
                buf.truncate(len);
                String::from_utf8(buf).ok()
            }
        }
    }
}

fn read_u64(rd: &mut Read, path: &Path) -> Option<u64> {
    rd(path)?.trim().parse().ok()
}

/// A flat-keyed cgroup file (`key value` lines), read once.
struct Keyed(String);

impl Keyed {
    fn read(rd: &mut Read, path: &Path) -> Keyed {
        Keyed(rd(path).unwrap_or_default())
    }

    fn get(&self, key: &str) -> Option<u64> {
        self.0.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
    }
}

impl TaskCgroup {
    fn dir(&self, ctrl: &str) -> Option<&Path> {
        match self.mode {
            Mode::V2 => self.dirs.first().map(|(_, d)| d.as_path()),
            Mode::V1 => self.dirs.iter().find(|(c, _)| serves(c, ctrl)).map(|(_, d)| d.as_path()),
        }
    }

    fn apply(&self, l: Limits) -> Result<(), String> {
        let quota_us = if l.cpus > 0.0 { Some(((l.cpus * CFS_PERIOD_US as f64) as u64).max(1000)) } else { None };
        match self.mode {
            Mode::V1 => {
                if let Some(d) = self.dir("cpu") {
                    let shares = ((l.cpus * 1024.0) as u64).max(2);
                    write_file(&d.join("cpu.shares"), &shares.to_string())?;
                    write_file(&d.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                    if let Some(q) = quota_us {
                        write_file(&d.join("cpu.cfs_quota_us"), &q.to_string())?;
                    }
                }
                if let (Some(d), Some(m)) = (self.dir("memory"), l.mem_bytes) {
                    write_file(&d.join("memory.limit_in_bytes"), &m.to_string())?;
                    // Without swap accounting the file is absent; with it, the
                    // task must not escape its limit into swap.
                    let memsw = d.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write_file(&memsw, &m.to_string())?;
                    }
                }
            }
            Mode::V2 => {
                let d = self.dir("unified").expect("one dir");
                let weight = ((l.cpus * 100.0) as u64).clamp(1, 10_000);
                write_file(&d.join("cpu.weight"), &weight.to_string())?;
                if let Some(q) = quota_us {
                    write_file(&d.join("cpu.max"), &format!("{q} {CFS_PERIOD_US}"))?;
                }
                if let Some(m) = l.mem_bytes {
                    write_file(&d.join("memory.max"), &m.to_string())?;
                    let _ = fs::write(d.join("memory.swap.max"), "0");
                    let _ = fs::write(d.join("memory.oom.group"), "1");
                }
            }
        }
        Ok(())
    }

    /// Opens every `cgroup.procs`, so that a child can join with `write(fd,
    /// "0")` between clone and exec (no allocation there).
    pub fn procs_files(&self) -> Result<Vec<fs::File>, String> {
        self.dirs
            .iter()
            .map(|(_, d)| {
                let p = d.join("cgroup.procs");
                fs::OpenOptions::new().write(true).open(&p).map_err(|e| format!("cannot open {}: {e}", p.display()))
            })
            .collect()
    }

    pub fn procs_fds(files: &[fs::File]) -> Vec<RawFd> {
        files.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Processes in the task's cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for (_, d) in &self.dirs {
            if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Sends `sig` to every process in the cgroup.
    pub fn signal_all(&self, sig: i32) {
        for pid in self.pids() {
            // SAFETY: kill(2) on a pid read from the task's own cgroup.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// Whether the kernel's OOM killer fired in this cgroup.
    pub fn oom_killed(&self) -> bool {
        match self.mode {
            Mode::V1 => self
                .dir("memory")
                .and_then(|d| Keyed::read(&mut read_text, &d.join("memory.oom_control")).get("oom_kill")),
            Mode::V2 => {
                self.dir("unified").and_then(|d| Keyed::read(&mut read_text, &d.join("memory.events")).get("oom_kill"))
            }
        }
        .is_some_and(|n| n > 0)
    }

    /// The most memory the task used, in bytes.
    pub fn memory_peak_bytes(&self) -> Option<u64> {
        match self.mode {
            Mode::V1 => self.dir("memory").and_then(|d| read_u64(&mut read_text, &d.join("memory.max_usage_in_bytes"))),
            Mode::V2 => self.dir("unified").and_then(|d| read_u64(&mut read_text, &d.join("memory.peak"))),
        }
    }

    pub fn memory_limit_bytes(&self) -> Option<u64> {
        match self.mode {
            Mode::V1 => self.dir("memory").and_then(|d| read_u64(&mut read_text, &d.join("memory.limit_in_bytes"))),
            Mode::V2 => self.dir("unified").and_then(|d| read_u64(&mut read_text, &d.join("memory.max"))),
        }
    }

    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The task's v2 cgroup id (the inode of its v2 directory), which the
    /// eBPF programs see.
    pub fn cgroup_id(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let dir = match self.mode {
            Mode::V2 => self.dirs.first().map(|(_, d)| d),
            Mode::V1 => self.dirs.iter().find(|(c, _)| serves(c, IDENTITY)).map(|(_, d)| d),
        }?;
        fs::metadata(dir).ok().map(|m| m.ino())
    }

    /// What the cgroups account for the task.
    pub fn stats(&self) -> CgroupStats {
        self.stats_from(&mut StatFiles::unkept())
    }

    /// The same, read through `files`, which keeps them open between samples.
    pub fn stats_from(&self, files: &mut StatFiles) -> CgroupStats {
        let mut rd = |p: &Path| files.read(p);
        let mut s = CgroupStats::default();
        match self.mode {
            Mode::V1 => {
                if let Some(d) = self.dir("cpuacct") {
                    s.cpu_usage_ns = read_u64(&mut rd, &d.join("cpuacct.usage"));
                    // USER_HZ ticks; 100 per second on Linux.
                    let st = Keyed::read(&mut rd, &d.join("cpuacct.stat"));
                    s.cpu_user_ns = st.get("user").map(|t| t * 10_000_000);
                    s.cpu_system_ns = st.get("system").map(|t| t * 10_000_000);
                }
                if let Some(d) = self.dir("cpu") {
                    let st = Keyed::read(&mut rd, &d.join("cpu.stat"));
                    s.nr_periods = st.get("nr_periods");
                    s.nr_throttled = st.get("nr_throttled");
                    s.throttled_ns = st.get("throttled_time");
                }
                if let Some(d) = self.dir("memory") {
                    s.mem_usage_bytes = read_u64(&mut rd, &d.join("memory.usage_in_bytes"));
                    s.mem_peak_bytes = read_u64(&mut rd, &d.join("memory.max_usage_in_bytes"));
                    s.mem_limit_bytes = read_u64(&mut rd, &d.join("memory.limit_in_bytes"));
                    let st = Keyed::read(&mut rd, &d.join("memory.stat"));
                    s.mem_rss_bytes = st.get("total_rss").or_else(|| st.get("rss"));
                    s.mem_file_bytes = st.get("total_cache").or_else(|| st.get("cache"));
                    s.oom_kills = Keyed::read(&mut rd, &d.join("memory.oom_control")).get("oom_kill");
                }
                if let Some(d) = self.dir("blkio") {
                    let (r, w) = blkio_v1(&mut rd, &d.join("blkio.throttle.io_service_bytes"));
                    s.io_read_bytes = r;
                    s.io_write_bytes = w;
                }
            }
            Mode::V2 => {
                if let Some(d) = self.dir("unified") {
                    let st = Keyed::read(&mut rd, &d.join("cpu.stat"));
                    s.cpu_usage_ns = st.get("usage_usec").map(|u| u * 1000);
                    s.cpu_user_ns = st.get("user_usec").map(|u| u * 1000);
                    s.cpu_system_ns = st.get("system_usec").map(|u| u * 1000);
                    s.nr_periods = st.get("nr_periods");
                    s.nr_throttled = st.get("nr_throttled");
                    s.throttled_ns = st.get("throttled_usec").map(|u| u * 1000);
                    s.mem_usage_bytes = read_u64(&mut rd, &d.join("memory.current"));
                    s.mem_peak_bytes = read_u64(&mut rd, &d.join("memory.peak"));
                    s.mem_limit_bytes = read_u64(&mut rd, &d.join("memory.max"));
                    let ms = Keyed::read(&mut rd, &d.join("memory.stat"));
                    s.mem_rss_bytes = ms.get("anon");
                    s.mem_file_bytes = ms.get("file");
                    s.oom_kills = Keyed::read(&mut rd, &d.join("memory.events")).get("oom_kill");
                    let (r, w) = io_v2(&mut rd, &d.join("io.stat"));
                    s.io_read_bytes = r;
                    s.io_write_bytes = w;
                }
            }
        }
        s
    }

    /// Kills whatever is left and removes the directories, waiting up to
    /// `timeout` for the processes to go.
    pub fn destroy(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.signal_all(libc::SIGKILL);
            let mut left = Vec::new();
            for (_, d) in &self.dirs {
                if d.exists() && fs::remove_dir(d).is_err() {
                    left.push(d.clone());
                }
            }
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("cgroups still busy: {left:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What a task's cgroups account; `None` where the file is absent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CgroupStats {
    pub cpu_usage_ns: Option<u64>,
    pub cpu_user_ns: Option<u64>,
    pub cpu_system_ns: Option<u64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_ns: Option<u64>,
    pub mem_usage_bytes: Option<u64>,
    pub mem_peak_bytes: Option<u64>,
    pub mem_limit_bytes: Option<u64>,
    pub mem_rss_bytes: Option<u64>,
    pub mem_file_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
}

/// v1 `blkio.throttle.io_service_bytes`: `MAJ:MIN Read N` lines, summed.
fn blkio_v1(rd: &mut Read, path: &Path) -> (Option<u64>, Option<u64>) {
    let Some(text) = rd(path) else { return (None, None) };
    let (mut r, mut w) = (0u64, 0u64);
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 3 {
            let n: u64 = f[2].parse().unwrap_or(0);
            match f[1] {
                "Read" => r += n,
                "Write" => w += n,
                _ => {}
            }
        }
    }
    (Some(r), Some(w))
}

/// v2 `io.stat`: `MAJ:MIN rbytes=N wbytes=N ...` lines, summed.
fn io_v2(rd: &mut Read, path: &Path) -> (Option<u64>, Option<u64>) {
    let Some(text) = rd(path) else { return (None, None) };
    let (mut r, mut w) = (0u64, 0u64);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            r += v.parse().unwrap_or(0);
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            w += v.parse().unwrap_or(0);
        }
    }
    (Some(r), Some(w))
}

/// Writes "0" to each fd: moves the calling process into those cgroups.
/// Async-signal-safe, for use between clone and exec.
///
/// # Safety
/// The fds must be open `cgroup.procs` files.
pub unsafe fn join_fds(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: writing a static buffer to an fd the caller vouches for.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A best-effort note of the agent's cgroup directories in its work dir, for
/// operators and test cleanup.
pub fn record(work_dir: &Path, cg: &Cgroups) {
    if let Ok(mut f) = fs::File::create(work_dir.join("cgroups")) {
        for d in cg.dirs() {
            let _ = writeln!(f, "{}", d.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(point: &str, root: &str, options: &[&str]) -> Mount {
        Mount {
            point: point.into(),
            root: root.into(),
            fstype: "cgroup".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn own(lines: &[(&[&str], &str)]) -> Vec<(Vec<String>, String)> {
        lines.iter().map(|(c, p)| (c.iter().map(|s| s.to_string()).collect(), p.to_string())).collect()
    }

    #[test]
    fn co_mounted_controllers_share_one_directory_named_by_both() {
        let mounts = [
            mount("/sys/fs/cgroup/cpu,cpuacct", "/", &["rw", "cpu", "cpuacct"]),
            mount("/sys/fs/cgroup/memory", "/", &["rw", "memory"]),
            mount("/sys/fs/cgroup/pids", "/", &["rw", "pids"]),
        ];
        let own = own(&[(&["cpu", "cpuacct"], "/svc"), (&["memory"], "/svc"), (&["pids"], "/")]);
        let bases = v1_bases(&mounts, &own, "agora_x").unwrap();
        assert_eq!(
            bases,
            vec![
                ("cpu,cpuacct".to_string(), PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/svc/agora_x")),
                ("memory".to_string(), PathBuf::from("/sys/fs/cgroup/memory/svc/agora_x")),
                ("pids".to_string(), PathBuf::from("/sys/fs/cgroup/pids/agora_x")),
            ]
        );
        // Lookups by either controller find the shared directory.
        assert!(serves(&bases[0].0, "cpu") && serves(&bases[0].0, "cpuacct"));
        assert!(!serves(&bases[0].0, "cpuset") && !serves(&bases[1].0, "mem"));
    }

    #[test]
    fn separately_mounted_controllers_get_a_directory_each() {
        let mounts = [
            mount("/sys/fs/cgroup/cpu", "/", &["rw", "cpu"]),
            mount("/sys/fs/cgroup/cpuacct", "/", &["rw", "cpuacct"]),
            mount("/sys/fs/cgroup/memory", "/", &["rw", "memory"]),
            mount("/sys/fs/cgroup/blkio", "/", &["rw", "blkio"]),
        ];
        let own = own(&[(&["cpu"], "/"), (&["cpuacct"], "/"), (&["memory"], "/"), (&["blkio"], "/")]);
        let bases = v1_bases(&mounts, &own, "a").unwrap();
        let names: Vec<&str> = bases.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["cpu", "cpuacct", "memory", "blkio"]);
    }

    #[test]
    fn kept_files_are_read_whole_and_afresh_each_time() {
        let dir = std::env::temp_dir().join(format!("agora-statfiles-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (small, big, missing) = (dir.join("small"), dir.join("big"), dir.join("missing"));
        fs::write(&small, "1\n").unwrap();
        let long: String = (0..2000).map(|i| format!("key{i} {i}\n")).collect();
        fs::write(&big, &long).unwrap();
        let mut files = StatFiles::default();
        assert_eq!(files.read(&small).as_deref(), Some("1\n"));
        assert_eq!(files.read(&big).as_deref(), Some(long.as_str()), "longer than the first buffer");
        assert_eq!(files.read(&missing), None);
        assert_eq!(files.open_files(), 2);
        // Rewritten in place: the next read sees the new content, through
        // the same descriptor.
        fs::OpenOptions::new().write(true).truncate(true).open(&small).unwrap().write_all(b"22\n").unwrap();
        assert_eq!(files.read(&small).as_deref(), Some("22\n"));
        assert_eq!(files.open_files(), 2);
        let mut unkept = StatFiles::unkept();
        assert_eq!(unkept.read(&small).as_deref(), Some("22\n"));
        assert_eq!(unkept.open_files(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_required_controller_is_a_clear_error() {
        let mounts = [mount("/sys/fs/cgroup/memory", "/", &["memory"])];
        let own = own(&[(&["memory"], "/")]);
        assert_eq!(v1_bases(&mounts, &own, "a").unwrap_err(), "the v1 cpu controller is not mounted");
        let mounts = [mount("/c", "/", &["cpu"]), mount("/m", "/", &["memory"])];
        let own = self::own(&[(&["memory"], "/")]);
        assert_eq!(v1_bases(&mounts, &own, "a").unwrap_err(), "/proc/self/cgroup has no line for the cpu controller");
    }
}
