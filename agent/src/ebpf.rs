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

use agora_ebpf_common::{EgressState, KernelOffsets, TaskCounters, TaskPolicy, MAX_TASKS, STAT_READ_ERRORS};
use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps};

/// The compiled eBPF object (built by the agent's build script).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agora-ebpf.o"));

/// Programs that must load for eBPF accounting to be on.
const REQUIRED_TRACEPOINTS: [&str; 1] = ["sched_switch"];
/// Programs that are useful but not essential (their kernel hook may be absent).
const OPTIONAL_TRACEPOINTS: [&str; 1] = ["mark_victim"];

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
}

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
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
        for name in REQUIRED_TRACEPOINTS.iter().chain(OPTIONAL_TRACEPOINTS.iter()) {
            let required = REQUIRED_TRACEPOINTS.contains(name);
            let res = (|| -> Result<(), String> {
                let p: &mut BtfTracePoint =
                    bpf.program_mut(name).ok_or("missing")?.try_into().map_err(err("program type"))?;
                p.load(name, &btf).map_err(err("load"))?;
                p.attach().map_err(err("attach"))?;
                Ok(())
            })();
            match res {
                Ok(()) => loaded.push(*name),
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
        Ok(Ebpf { bpf, loaded, n_cpus, _stats: stats, registrations_failed: 0 })
    }

    /// Whether the kernel's BPF run-time statistics are on at this agent's
    /// request (another tool may also turn them on).
    pub fn run_stats(&self) -> bool {
        self._stats.is_some()
    }

    pub fn programs_loaded(&self) -> usize {
        self.loaded.len()
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
        let zeros = PerCpuValues::try_from(vec![TaskCounters::ZERO; self.n_cpus]).map_err(err("per-CPU values"))?;
        self.counters()?.insert(id, zeros, 0).map_err(err("registering the task's counters (map full?)"))?;
        if policy.egress_bytes_per_sec > 0 {
            let mut eg: HashMap<&mut MapData, u64, EgressState> =
                HashMap::try_from(self.bpf.map_mut("EGRESS").ok_or("map EGRESS missing")?).map_err(err("EGRESS"))?;
            eg.insert(id, EgressState::default(), 0).map_err(err("registering the egress limit"))?;
        }
        let mut pol: HashMap<&mut MapData, u64, TaskPolicy> =
            HashMap::try_from(self.bpf.map_mut("POLICY").ok_or("map POLICY missing")?).map_err(err("POLICY"))?;
        pol.insert(id, policy, 0).map_err(err("registering the task's policy"))?;
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

    /// The task's counters, summed over CPUs; `None` for an unregistered id.
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
