//! The agent's side of the eBPF programs: load once at start, attach once,
//! and keep per-task policy and counters in maps.
//!
//! Tracepoint programs attach globally. The cgroup programs (network
//! counting and egress limits, bind checks) attach once, at the agent's own
//! v2 cgroup directory, and so apply to every task cgroup below it; a task
//! is then registered by putting its cgroup id in the maps. That costs a few
//! map updates per task instead of four program attachments, which is what
//! scales to thousands of tasks.
//!
//! Links are owned by the loaded object: when the agent exits (or this is
//! dropped), every program is detached and unloaded by the kernel.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use agora_ebpf_common::{
    CpuState, EgressState, KernelOffsets, TaskCounters, TaskPolicy, ThreadSlot, MAX_TASKS, STAT_READ_ERRORS,
    THREAD_SLOTS,
};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps};

/// The compiled eBPF object (built by the agent's build script).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agora-ebpf.o"));

/// Programs that must load for eBPF accounting to be on.
const REQUIRED_TRACEPOINTS: [&str; 1] = ["sched_switch"];
/// Programs that are useful but not essential (their kernel hook may be
/// absent), with the tracepoints they attach to.
const OPTIONAL_TRACEPOINTS: [(&str, &str); 2] =
    [("mark_victim", "mark_victim"), ("cpu_state_tick", "hrtimer_expire_entry")];

/// Run statistics of one program (kernel BPF stats, as bpftop shows them).
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// How full a map is.
#[derive(Clone, Debug)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: u64,
    pub max_entries: u64,
}

#[derive(Clone, Debug, Default)]
pub struct EbpfStats {
    pub programs: Vec<ProgramStats>,
    pub maps: Vec<MapFill>,
    /// Kernel memory reads that failed (unexpected structure layouts).
    pub read_errors: u64,
    /// Tasks that could not be registered because a map was full.
    pub registrations_failed: u64,
}

pub struct Ebpf {
    bpf: aya::Ebpf,
    loaded: Vec<&'static str>,
    n_cpus: usize,
    /// Kernel BPF run-time statistics stay enabled while this is open.
    _stats: Option<OwnedFd>,
    registrations_failed: u64,
    /// Whether the kernel's thread ids are this process's (the host's PID
    /// namespace), which adding the runs in progress needs.
    host_pids: bool,
}

/// Whether this process sees the host's PID namespace: `/proc/self/status`
/// lists one PID per namespace level (`NSpid`).
fn in_host_pid_namespace() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("NSpid:")).map(|l| l.split_whitespace().count() == 2))
        .unwrap_or(false)
}

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The error of an insert into a task map: a full map (the kernel's E2BIG)
/// says so plainly.
fn insert_err(what: &str) -> impl FnOnce(aya::maps::MapError) -> String + '_ {
    move |e| match &e {
        aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
            format!("the eBPF task maps are full ({MAX_TASKS} tasks)")
        }
        aya::maps::MapError::SyscallError(s) => format!("{what}: {e} ({})", s.io_error),
        _ => format!("{what}: {e}"),
    }
}

/// Runs a task map insert again while the kernel answers ENOMEM: the maps
/// are not preallocated, and the kernel's per-CPU element caches refill
/// asynchronously, so a burst of registrations can find one empty for a
/// moment. Gives up after about 25 ms.
fn insert_retrying(mut insert: impl FnMut() -> Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    let mut attempt = 0;
    loop {
        match insert() {
            Err(aya::maps::MapError::SyscallError(s))
                if s.io_error.raw_os_error() == Some(libc::ENOMEM) && attempt < 8 =>
            {
                std::thread::sleep(std::time::Duration::from_micros(100 << attempt));
                attempt += 1;
            }
            r => return r,
        }
    }
}

impl Ebpf {
    /// Loads and attaches everything; cgroup programs at `cgroup_v2_dir`.
    /// With `run_stats`, the kernel's BPF run-time statistics are turned on
    /// while this lives, so that each program's run count and run time can
    /// be read (as bpftop does). That is host-wide and costs every BPF
    /// program run on the host two clock reads, so it is the operator's
    /// choice (see docs/benchmarks.md for what it costs).
    pub fn load(cgroup_v2_dir: &Path, run_stats: bool) -> Result<Ebpf, String> {
        let offsets: KernelOffsets = crate::btf::Btf::from_sys_fs()?.kernel_offsets()?;
        if offsets.has_run_delay == 0 {
            tracing::warn!("the kernel has no sched_info (CONFIG_SCHED_INFO): run-queue latency is not measured");
        }
        let btf = aya::Btf::from_sys_fs().map_err(err("reading the kernel's BTF"))?;
        let mut bpf = aya::EbpfLoader::new()
            .set_global("KERNEL_OFFSETS", &offsets, true)
            .load(OBJECT)
            .map_err(err("loading the eBPF object"))?;
        let mut loaded = Vec::new();
        let required = REQUIRED_TRACEPOINTS.iter().map(|&name| (name, name, true));
        for (name, tracepoint, required) in required.chain(OPTIONAL_TRACEPOINTS.iter().map(|&(n, t)| (n, t, false))) {
            let res = (|| -> Result<(), String> {
                let p: &mut BtfTracePoint =
                    bpf.program_mut(name).ok_or("missing")?.try_into().map_err(err("program type"))?;
                p.load(tracepoint, &btf).map_err(err("load"))?;
                p.attach().map_err(err("attach"))?;
                Ok(())
            })();
            match res {
                Ok(()) => loaded.push(name),
                Err(e) if required => return Err(format!("program {name}: {e}")),
                Err(e) => tracing::warn!("optional eBPF program {name} not attached: {e}"),
            }
        }
        let dir = File::open(cgroup_v2_dir).map_err(|e| format!("cannot open {}: {e}", cgroup_v2_dir.display()))?;
        // aya attaches with bpf_link on kernels that have it; cgroup links
        // coexist with other programs by nature and take no flags, so the
        // mode must be Single (flags 0) there.
        let mode = CgroupAttachMode::Single;
        for (name, kind) in [("ingress", CgroupSkbAttachType::Ingress), ("egress", CgroupSkbAttachType::Egress)] {
            let p: &mut CgroupSkb =
                bpf.program_mut(name).ok_or("program missing")?.try_into().map_err(err("program type"))?;
            p.load().map_err(err(name))?;
            p.attach(&dir, kind, mode).map_err(err(name))?;
            loaded.push(name);
        }
        for name in ["bind4", "bind6"] {
            let p: &mut CgroupSockAddr =
                bpf.program_mut(name).ok_or("program missing")?.try_into().map_err(err("program type"))?;
            p.load().map_err(err(name))?;
            p.attach(&dir, mode).map_err(err(name))?;
            loaded.push(name);
        }
        {
            let p: &mut SockOps =
                bpf.program_mut("tcp_pacing").ok_or("program missing")?.try_into().map_err(err("program type"))?;
            p.load().map_err(err("tcp_pacing"))?;
            p.attach(&dir, mode).map_err(err("tcp_pacing"))?;
            loaded.push("tcp_pacing");
        }
        let stats = match run_stats.then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime)) {
            None => None,
            Some(Ok(fd)) => Some(fd),
            Some(Err(e)) => {
                tracing::warn!("kernel BPF run statistics unavailable: {e}");
                None
            }
        };
        let n_cpus = aya::util::nr_cpus().map_err(|(_, e)| format!("counting CPUs: {e}"))?;
        let host_pids = in_host_pid_namespace();
        if !host_pids {
            tracing::warn!("not in the host's PID namespace: task CPU time counts runs only once they end");
        }
        Ok(Ebpf { bpf, loaded, n_cpus, _stats: stats, registrations_failed: 0, host_pids })
    }

    /// Whether the kernel's BPF run-time statistics are on at this agent's
    /// request (another tool may also turn them on).
    pub fn run_stats(&self) -> bool {
        self._stats.is_some()
    }

    pub fn programs_loaded(&self) -> usize {
        self.loaded.len()
    }

    /// The names of the programs loaded and attached.
    pub fn programs(&self) -> &[&'static str] {
        &self.loaded
    }

    /// Writes `state` as every CPU's record of what it runs: for tests, what
    /// CPUs that changed threads without a traced switch look like.
    pub fn set_cpu_states(&mut self, state: CpuState) -> Result<(), String> {
        let mut a: PerCpuArray<&mut MapData, CpuState> =
            PerCpuArray::try_from(self.bpf.map_mut("CPU_STATE").ok_or("map CPU_STATE missing")?)
                .map_err(err("CPU_STATE"))?;
        let values = PerCpuValues::try_from(vec![state; self.n_cpus]).map_err(err("CPU_STATE values"))?;
        a.set(0, values, 0).map_err(err("CPU_STATE"))
    }

    fn counters(&mut self) -> Result<PerCpuHashMap<&mut MapData, u64, TaskCounters>, String> {
        PerCpuHashMap::try_from(self.bpf.map_mut("COUNTERS").ok_or("map COUNTERS missing")?).map_err(err("COUNTERS"))
    }

    /// Starts accounting for (and enforcing on) the task in cgroup `id`.
    pub fn register(&mut self, id: u64, policy: TaskPolicy) -> Result<(), String> {
        let res = self.try_register(id, policy);
        if res.is_err() {
            self.registrations_failed += 1;
            self.unregister(id);
        }
        res
    }

    fn try_register(&mut self, id: u64, policy: TaskPolicy) -> Result<(), String> {
        let n_cpus = self.n_cpus;
        let mut counters = self.counters()?;
        insert_retrying(|| {
            let zeros = PerCpuValues::try_from(vec![TaskCounters::ZERO; n_cpus]).map_err(|e| {
                aya::maps::MapError::SyscallError(aya::sys::SyscallError { call: "per-CPU values", io_error: e })
            })?;
            counters.insert(id, zeros, 0)
        })
        .map_err(insert_err("registering the task's counters"))?;
        if policy.egress_bytes_per_sec > 0 {
            let mut eg: HashMap<&mut MapData, u64, EgressState> =
                HashMap::try_from(self.bpf.map_mut("EGRESS").ok_or("map EGRESS missing")?).map_err(err("EGRESS"))?;
            insert_retrying(|| eg.insert(id, EgressState::default(), 0))
                .map_err(insert_err("registering the egress limit"))?;
        }
        let mut pol: HashMap<&mut MapData, u64, TaskPolicy> =
            HashMap::try_from(self.bpf.map_mut("POLICY").ok_or("map POLICY missing")?).map_err(err("POLICY"))?;
        insert_retrying(|| pol.insert(id, policy, 0)).map_err(insert_err("registering the task's policy"))?;
        Ok(())
    }

    /// Stops accounting for cgroup `id` and removes its map entries.
    pub fn unregister(&mut self, id: u64) {
        for name in ["POLICY", "EGRESS"] {
            if let Some(m) = self.bpf.map_mut(name) {
                if name == "POLICY" {
                    if let Ok(mut h) = HashMap::<&mut MapData, u64, TaskPolicy>::try_from(m) {
                        let _ = h.remove(&id);
                    }
                } else if let Ok(mut h) = HashMap::<&mut MapData, u64, EgressState>::try_from(m) {
                    let _ = h.remove(&id);
                }
            }
        }
        match self.counters() {
            Ok(mut c) => {
                let _ = c.remove(&id);
            }
            Err(e) => tracing::warn!("cannot remove the counters of cgroup {id}: {e}"),
        }
    }

    /// What each CPU is running now, as `sched_switch` left it: the thread,
    /// its task's cgroup id (0 when not a task) and its on-CPU time when it
    /// was switched in.
    pub fn running(&self) -> Vec<CpuState> {
        self.bpf
            .map("CPU_STATE")
            .and_then(|m| PerCpuArray::<&MapData, CpuState>::try_from(m).ok())
            .and_then(|a| a.get(&0, 0).ok())
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The counters of the tasks in cgroups `ids` (registered ones only),
    /// their on-CPU time including the runs still in progress: the counters
    /// have a run only once it ends, and a task that keeps a CPU for long
    /// must not look idle meanwhile.
    ///
    /// The counters are read between two looks at what each CPU runs. A run
    /// in progress at the second look is in no counter read before it, so
    /// it is added whole. A run in progress at the first look that ended
    /// before the second may or may not be in the counters: those tasks are
    /// read again, between two new looks (a few attempts; the last is taken
    /// as it is). What is left is a run that both began and ended between
    /// two looks, at most the time the read took.
    pub fn read_many(&self, ids: &[u64]) -> std::collections::HashMap<u64, TaskCounters> {
        const ATTEMPTS: usize = 4;
        let mut out = std::collections::HashMap::with_capacity(ids.len());
        let mut todo = ids.to_vec();
        for attempt in 1..=ATTEMPTS {
            let before = self.running();
            let read: Vec<(u64, Option<TaskCounters>)> = todo.iter().map(|&id| (id, self.read(id))).collect();
            let after = self.running();
            // A copy torn by a switch at that instant: look again.
            if before.iter().chain(&after).any(|c| !c.whole()) && attempt < ATTEMPTS {
                continue;
            }
            let unsure: std::collections::HashSet<u64> = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| b.cgroup_id != 0 && (b.tid, b.sum_exec_runtime) != (a.tid, a.sum_exec_runtime))
                .map(|(b, _)| b.cgroup_id)
                .collect();
            todo.clear();
            for (id, counters) in read {
                let Some(mut c) = counters else { continue };
                if unsure.contains(&id) && attempt < ATTEMPTS {
                    todo.push(id);
                    continue;
                }
                if self.host_pids {
                    c.cpu_ns += runs_in_progress(&after, id, |tid| self.last_out(tid), schedstat_run_time);
                }
                out.insert(id, c);
            }
            if todo.is_empty() {
                break;
            }
        }
        out
    }

    /// A task thread's run time when it last left a CPU, if its slot holds it.
    fn last_out(&self, tid: u32) -> Option<u64> {
        let slots: Array<&MapData, ThreadSlot> = Array::try_from(self.bpf.map("THREADS")?).ok()?;
        let s = slots.get(&(tid & (THREAD_SLOTS - 1)), 0).ok()?;
        (s.tid == tid && s.whole()).then_some(s.sum_exec_runtime)
    }

    /// The task's counters, summed over CPUs; `None` for an unregistered id.
    /// Without the runs in progress; see `read_many`.
    pub fn read(&self, id: u64) -> Option<TaskCounters> {
        // aya 0.13's per-CPU lookup returns zeroed values for a missing key,
        // so registration is checked in the (plain) policy map first.
        let policy: HashMap<&MapData, u64, TaskPolicy> = HashMap::try_from(self.bpf.map("POLICY")?).ok()?;
        policy.get(&id, 0).ok()?;
        let map = self.bpf.map("COUNTERS")?;
        let c: PerCpuHashMap<&MapData, u64, TaskCounters> = PerCpuHashMap::try_from(map).ok()?;
        let per_cpu = c.get(&id, 0).ok()?;
        let mut total = TaskCounters::ZERO;
        for v in per_cpu.iter() {
            total.accumulate(v);
        }
        Some(total)
    }

    fn count_keys<V: aya::Pod>(&self, name: &'static str, max: u32) -> MapFill {
        let entries = self
            .bpf
            .map(name)
            .and_then(|m| HashMap::<&MapData, u64, V>::try_from(m).ok())
            .map(|h| h.keys().count() as u64)
            .unwrap_or(0);
        MapFill { name, entries, max_entries: max as u64 }
    }

    /// Self-monitoring: program run statistics and map fill levels.
    pub fn stats(&self) -> EbpfStats {
        let mut programs = Vec::new();
        for (name, p) in self.bpf.programs() {
            if let Ok(info) = p.info() {
                programs.push(ProgramStats {
                    name: name.to_string(),
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                });
            }
        }
        programs.sort_by(|a, b| a.name.cmp(&b.name));
        let counters = self
            .bpf
            .map("COUNTERS")
            .and_then(|m| PerCpuHashMap::<&MapData, u64, TaskCounters>::try_from(m).ok())
            .map(|h| h.keys().count() as u64)
            .unwrap_or(0);
        let stat = |idx: u32| -> u64 {
            self.bpf
                .map("STATS")
                .and_then(|m| PerCpuArray::<&MapData, u64>::try_from(m).ok())
                .and_then(|a| a.get(&idx, 0).ok())
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        EbpfStats {
            programs,
            maps: vec![
                MapFill { name: "COUNTERS", entries: counters, max_entries: MAX_TASKS as u64 },
                self.count_keys::<TaskPolicy>("POLICY", MAX_TASKS),
                self.count_keys::<EgressState>("EGRESS", MAX_TASKS),
            ],
            read_errors: stat(STAT_READ_ERRORS),
            registrations_failed: self.registrations_failed,
        }
    }
}

/// The on-CPU time of the runs in progress on the CPUs that `after` (from
/// `Ebpf::running`) shows running a thread of cgroup `id`: the thread's run
/// time now (`run_time`, from `/proc/<tid>/schedstat`, which includes the
/// run in progress) minus what the counters have of it, its run time when it
/// was switched in or, if later, when it last left a CPU (`last_out`). A CPU
/// whose thread changed without a traced switch still shows the thread that
/// left until the next timer tick mends it (`cpu_state_tick`), so a thread
/// shown on several CPUs counts once, from its latest switch-in; torn copies
/// are left out.
fn runs_in_progress(
    after: &[CpuState],
    id: u64,
    last_out: impl Fn(u32) -> Option<u64>,
    run_time: impl Fn(u32) -> Option<u64>,
) -> u64 {
    let mut threads: Vec<(u32, u64)> = Vec::new();
    for a in after.iter().filter(|a| a.tid != 0 && a.cgroup_id == id && a.whole()) {
        match threads.iter_mut().find(|(t, _)| *t == a.tid) {
            Some((_, base)) => *base = (*base).max(a.sum_exec_runtime),
            None => threads.push((a.tid, a.sum_exec_runtime)),
        }
    }
    let mut extra = 0;
    for (tid, switched_in) in threads {
        let Some(now) = run_time(tid) else { continue };
        let base = switched_in.max(last_out(tid).unwrap_or(0));
        extra += now.saturating_sub(base);
    }
    extra
}

/// A thread's run time so far, including the run in progress.
fn schedstat_run_time(tid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_cpu(tid: u32, cgroup_id: u64, sum: u64) -> CpuState {
        CpuState::new(tid, 0xffff_8880_0000_0000 + tid as u64, cgroup_id, sum, 0)
    }

    #[test]
    fn runs_in_progress_count_each_thread_once_from_what_the_counters_lack() {
        let run_time = |tid: u32| {
            Some(match tid {
                10 => 5_000,
                11 => 9_000,
                _ => return None,
            })
        };
        // Thread 10 of task 7 runs on CPU 0 since run time 1000: 4000 more.
        let after = [on_cpu(10, 7, 1_000), on_cpu(20, 8, 0)];
        assert_eq!(runs_in_progress(&after, 7, |_| None, run_time), 4_000);
        // Other tasks, the idle thread and unknown threads add nothing.
        assert_eq!(runs_in_progress(&after, 9, |_| None, run_time), 0);
        assert_eq!(runs_in_progress(&[on_cpu(0, 7, 0)], 7, |_| None, run_time), 0);
        // A stale CPU still shows thread 10 from an earlier switch-in; it
        // counts once, from the latest.
        let after = [on_cpu(10, 7, 1_000), on_cpu(10, 7, 3_000), on_cpu(11, 7, 8_000)];
        assert_eq!(runs_in_progress(&after, 7, |_| None, run_time), 2_000 + 1_000);
        // It left a CPU since (its slot says at 4500): only what came after.
        assert_eq!(runs_in_progress(&after, 7, |t| (t == 10).then_some(4_500), run_time), 500 + 1_000);
        // A torn copy is left out.
        let mut torn = on_cpu(11, 7, 8_000);
        torn.sum_exec_runtime = 0;
        assert!(!torn.whole());
        assert_eq!(runs_in_progress(&[torn], 7, |_| None, run_time), 0);
    }
}
