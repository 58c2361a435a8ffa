//! Types shared by Agora's eBPF programs (`ebpf/programs`) and the agent.
//!
//! Every type is `#[repr(C)]` and `Copy`, uses only fixed-width integers (no
//! `bool`, so there is no implicit padding), and has a compile-time size
//! check, because both sides read the same bytes out of eBPF maps. With the
//! `user` feature they implement `aya::Pod` for the agent.

#![no_std]

/// Log2 buckets of the run-queue latency histogram, in microseconds:
/// bucket 0 is under 1 µs, bucket i covers [2^(i-1), 2^i) µs; the last one
/// holds everything longer.
pub const RQ_BUCKETS: usize = 24;

/// Port ranges a task may bind, at most.
pub const MAX_PORT_RANGES: usize = 16;

/// Map sizes: fixed bounds, set here so both sides agree.
pub const MAX_TASKS: u32 = 16_384;
/// Slots of `ThreadSlot`, indexed by thread id modulo this (a power of
/// two). Threads whose ids share a slot fall back to a baseline taken when
/// the thread was switched in.
pub const THREAD_SLOTS: u32 = 32_768;

/// Indexes of the global statistics array (`STATS`).
/// A kernel object pointer read as null where one was expected.
pub const STAT_READ_ERRORS: u32 = 0;
pub const N_STATS: u32 = 2;

/// Counters of one task, per CPU (the agent sums them); keyed by the task's
/// v2 cgroup id. The agent creates the entry when the task starts and
/// deletes it when the task ends; the programs only update existing entries.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskCounters {
    /// Time on CPU, from context switches.
    pub cpu_ns: u64,
    /// Times the task was switched out while still runnable (preempted),
    /// by who took the CPU: a thread of the same task, another task, or
    /// anything else (the system).
    pub preempted_by_self: u64,
    pub preempted_by_task: u64,
    pub preempted_by_system: u64,
    /// Run-queue latency (wakeup to running): count, sum and histogram.
    pub rq_count: u64,
    pub rq_sum_ns: u64,
    pub rq_hist: [u64; RQ_BUCKETS],
    pub net_rx_bytes: u64,
    pub net_rx_packets: u64,
    pub net_tx_bytes: u64,
    pub net_tx_packets: u64,
    /// Packets the egress limit dropped.
    pub egress_dropped_packets: u64,
    pub egress_dropped_bytes: u64,
    /// bind(2) calls refused because the port is not the task's.
    pub bind_denied: u64,
    /// The kernel's OOM killer chose one of the task's processes.
    pub oom_kills: u64,
}

impl TaskCounters {
    pub const ZERO: TaskCounters = TaskCounters {
        cpu_ns: 0,
        preempted_by_self: 0,
        preempted_by_task: 0,
        preempted_by_system: 0,
        rq_count: 0,
        rq_sum_ns: 0,
        rq_hist: [0; RQ_BUCKETS],
        net_rx_bytes: 0,
        net_rx_packets: 0,
        net_tx_bytes: 0,
        net_tx_packets: 0,
        egress_dropped_packets: 0,
        egress_dropped_bytes: 0,
        bind_denied: 0,
        oom_kills: 0,
    };

    /// Adds another CPU's counters.
    pub fn accumulate(&mut self, o: &TaskCounters) {
        self.cpu_ns += o.cpu_ns;
        self.preempted_by_self += o.preempted_by_self;
        self.preempted_by_task += o.preempted_by_task;
        self.preempted_by_system += o.preempted_by_system;
        self.rq_count += o.rq_count;
        self.rq_sum_ns += o.rq_sum_ns;
        let mut i = 0;
        while i < RQ_BUCKETS {
            self.rq_hist[i] += o.rq_hist[i];
            i += 1;
        }
        self.net_rx_bytes += o.net_rx_bytes;
        self.net_rx_packets += o.net_rx_packets;
        self.net_tx_bytes += o.net_tx_bytes;
        self.net_tx_packets += o.net_tx_packets;
        self.egress_dropped_packets += o.egress_dropped_packets;
        self.egress_dropped_bytes += o.egress_dropped_bytes;
        self.bind_denied += o.bind_denied;
        self.oom_kills += o.oom_kills;
    }
}

const _: () = assert!(core::mem::size_of::<TaskCounters>() == (14 + RQ_BUCKETS) * 8);

/// An inclusive range of ports, in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub begin: u16,
    pub end: u16,
}

const _: () = assert!(core::mem::size_of::<PortRange>() == 4);

/// Policy for one task, keyed by its v2 cgroup id. Its presence marks the
/// cgroup as a task.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskPolicy {
    /// Egress limit; 0 means none.
    pub egress_bytes_per_sec: u64,
    /// How far ahead of the rate a task may send in one burst.
    pub egress_burst_ns: u64,
    /// 1 when binds are restricted to `ports`.
    pub enforce_ports: u32,
    pub n_port_ranges: u32,
    pub ports: [PortRange; MAX_PORT_RANGES],
}

const _: () = assert!(core::mem::size_of::<TaskPolicy>() == 8 + 8 + 4 + 4 + 4 * MAX_PORT_RANGES);

/// The state of a task's egress limit (generic cell rate algorithm): the
/// time at which the task's sending would be back within its rate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EgressState {
    pub tat_ns: u64,
}

/// Offsets into kernel structures, read by the agent from the kernel's BTF
/// (the programs have no CO-RE), so that a task's cgroup id, thread id and
/// the scheduler's own per-thread accounting can be read from a
/// `task_struct` pointer. The agent sets them as a read-only global of the
/// programs before loading them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `task_struct.se.sum_exec_runtime`: the thread's on-CPU time, ns.
    pub task_sum_exec_runtime: u32,
    /// `task_struct.sched_info.run_delay`: the thread's time waiting on a
    /// run queue, ns (`CONFIG_SCHED_INFO`).
    pub task_run_delay: u32,
    /// 1 when the kernel has `sched_info` (run-queue latency can be known).
    pub has_run_delay: u32,
    /// `task_struct.se.prev_sum_exec_runtime`: the thread's on-CPU time
    /// when its current run began (the scheduler sets it when it picks the
    /// thread), ns.
    pub task_prev_sum_exec_runtime: u32,
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 36);

/// Per-CPU scheduler state: the thread switched in on this CPU, its
/// `css_set` (`task->cgroups`: a thread that changes cgroup while it runs
/// gets a new one), its task's cgroup id (0 when not a task) and its
/// accounting at that moment, so that when it leaves the CPU its run is the
/// difference. The agent reads it too, to add the runs still in progress to
/// its samples; `check` tells it a copy torn by a concurrent switch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuState {
    pub tid: u32,
    pub check: u32,
    pub css: u64,
    pub cgroup_id: u64,
    pub sum_exec_runtime: u64,
    pub run_delay: u64,
}

/// A fold of a record's words, to tell a torn copy from a whole one.
#[inline(always)]
pub fn check_of(words: [u64; 4], tid: u32) -> u32 {
    let x = words[0] ^ words[1].rotate_left(16) ^ words[2].rotate_left(32) ^ words[3].rotate_left(48) ^ tid as u64;
    (x ^ (x >> 32)) as u32 ^ 0x9e37_79b9
}

impl CpuState {
    #[inline(always)]
    pub fn new(tid: u32, css: u64, cgroup_id: u64, sum_exec_runtime: u64, run_delay: u64) -> CpuState {
        // Pointers stay out of the fold: the verifier allows no arithmetic
        // on them.
        let check = check_of([cgroup_id, sum_exec_runtime, run_delay, 0], tid);
        CpuState { tid, check, css, cgroup_id, sum_exec_runtime, run_delay }
    }

    /// Whether this copy is one record, not parts of two.
    pub fn whole(&self) -> bool {
        self.check == check_of([self.cgroup_id, self.sum_exec_runtime, self.run_delay, 0], self.tid)
    }
}

const _: () = assert!(core::mem::size_of::<CpuState>() == 40);

/// A task thread's accounting when it last left a CPU, in a slot chosen by
/// its thread id. Its next run-queue wait is the run delay's difference,
/// even when the wait was split by a migration; its on-CPU time since is
/// the run time's difference, even for a run whose start the programs did
/// not see (a CPU can change threads without a traced switch: some
/// virtualised kernels do). The thread id and task pointer tell a reused
/// thread id, or another thread sharing the slot, from the thread that left
/// it.
/// `check` tells a copy torn by two CPUs writing the slot at once (threads
/// whose ids share it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadSlot {
    pub task: u64,
    pub run_delay: u64,
    pub sum_exec_runtime: u64,
    pub tid: u32,
    pub check: u32,
}

impl ThreadSlot {
    #[inline(always)]
    pub fn new(task: u64, tid: u32, sum_exec_runtime: u64, run_delay: u64) -> ThreadSlot {
        // The task pointer stays out of the fold (no arithmetic on pointers
        // in the verifier); threads sharing a slot have different ids.
        let check = check_of([run_delay, sum_exec_runtime, 0, 0], tid);
        ThreadSlot { task, run_delay, sum_exec_runtime, tid, check }
    }

    /// Whether this copy is one record, not parts of two.
    #[inline(always)]
    pub fn whole(&self) -> bool {
        self.check == check_of([self.run_delay, self.sum_exec_runtime, 0, 0], self.tid)
    }
}

const _: () = assert!(core::mem::size_of::<ThreadSlot>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, made of integers only, with no
    // padding (checked by the size assertions above).
    unsafe impl aya::Pod for super::TaskCounters {}
    unsafe impl aya::Pod for super::PortRange {}
    unsafe impl aya::Pod for super::TaskPolicy {}
    unsafe impl aya::Pod for super::EgressState {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::CpuState {}
    unsafe impl aya::Pod for super::ThreadSlot {}
}

/// The histogram bucket of a latency in nanoseconds.
pub fn rq_bucket(ns: u64) -> usize {
    let us = ns / 1000;
    if us == 0 {
        return 0;
    }
    let b = 64 - us.leading_zeros() as usize;
    if b >= RQ_BUCKETS {
        RQ_BUCKETS - 1
    } else {
        b
    }
}

/// The upper bound, in microseconds, of histogram bucket `i`.
pub fn rq_bucket_upper_us(i: usize) -> u64 {
    if i == 0 {
        1
    } else {
        1u64 << i
    }
}

/// The quantile `per_mille`/1000 of a run-queue histogram (any slice of
/// bucket counts), in microseconds: the upper bound of the bucket it falls
/// in. `None` for an empty histogram.
pub fn rq_quantile_us(hist: &[u64], per_mille: u64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let target = total.saturating_mul(per_mille).div_ceil(1000).max(1);
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= target {
            return Some(rq_bucket_upper_us(i));
        }
    }
    Some(rq_bucket_upper_us(hist.len().saturating_sub(1)))
}
