//! Agora's eBPF programs: per-task accounting and in-kernel enforcement.
//!
//! Tasks are identified by their v2 cgroup id. The agent registers each task
//! (a `POLICY` entry and a zeroed `COUNTERS` entry) when it starts and removes
//! them when it ends; the programs only read policies and update existing
//! counters, so they never allocate map entries of their own.
//!
//! - `sched_switch` (BTF tracepoint): per run of a task's thread, its on-CPU
//!   time and the run-queue wait before the run, and preemptions by who took
//!   the CPU. The kernel keeps both figures per thread
//!   (`se.sum_exec_runtime`, `sched_info.run_delay`): the program records
//!   both for each task thread when it leaves a CPU (in slots by thread id)
//!   and for the thread switched in (per CPU; a running thread cannot change
//!   CPU), and takes differences. One program, no clock reads and no locks
//!   on the scheduler's hot path.
//! - `ingress`, `egress` (cgroup_skb): network bytes and packets; egress
//!   applies the task's rate limit: congestion notification past half the
//!   burst, drop (with notification) past the burst.
//! - `tcp_pacing` (sock_ops): each TCP socket of a limited task paces itself
//!   at 95% of the task's rate (`SO_MAX_PACING_RATE`, set at connect and
//!   listen, inherited by accepted sockets; pacing counts payload, the limit
//!   counts headers too), so a task with one connection stays under its
//!   limit instead of meeting drops, each of which would stall TCP for a
//!   retransmission timeout. Several connections together can exceed it;
//!   then the egress policy holds the task to its rate.
//! - `bind4`, `bind6` (cgroup sock_addr): binds only to the task's ports.
//! - `mark_victim`: the OOM killer chose one of the task's processes.
//! - `cpu_state_tick` (BTF tracepoint `hrtimer_expire_entry`, as a timer
//!   expires, so at least once a tick on a busy CPU): mends this
//!   CPU's record when it does not show the thread that runs here, or shows
//!   it under a cgroup it has left. A CPU can change threads without a
//!   traced switch (seen on virtualised kernels), and a task's first process
//!   joins the task's cgroup while it runs (between fork and exec): either
//!   way, until the thread's next switch, the agent could not tell that its
//!   run in progress is the task's, and a spinner that keeps its CPU would
//!   look idle for as long.
//!
//! Each program is a thin entry point around a `try_*` function.
//!
//! Counters are per-CPU copies updated with plain adds. A program
//! interrupted on its CPU by another that updates the same copy (a softirq's
//! `ingress` over a task's `egress`) can lose one increment; that is
//! accepted rather than paying for atomic adds on every packet.

#![no_std]
#![no_main]
// The egress limit's compare-and-swap (BPF_CMPXCHG): the target has no
// `Atomic*` types with read-modify-write operations.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use agora_ebpf_common::{
    CpuState, EgressState, KernelOffsets, TaskCounters, TaskPolicy, ThreadSlot, MAX_PORT_RANGES, MAX_TASKS, N_STATS,
    RQ_BUCKETS, STAT_READ_ERRORS, THREAD_SLOTS,
};
use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_NO_PREALLOC, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB, SOL_SOCKET,
        SO_MAX_PACING_RATE,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_setsockopt, bpf_skb_cgroup_id,
    },
    macros::{btf_tracepoint, cgroup_skb, cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, SkBuffContext, SockAddrContext, SockOpsContext},
};

// The task maps are not preallocated: only the agent inserts, so their
// memory follows the tasks registered (a preallocated per-CPU map would hold
// MAX_TASKS entries on every CPU), and a looked-up entry stays valid (RCU)
// even if the agent removes it meanwhile.

#[map]
static COUNTERS: PerCpuHashMap<u64, TaskCounters> = PerCpuHashMap::with_max_entries(MAX_TASKS, BPF_F_NO_PREALLOC);

#[map]
static POLICY: HashMap<u64, TaskPolicy> = HashMap::with_max_entries(MAX_TASKS, BPF_F_NO_PREALLOC);

#[map]
static EGRESS: HashMap<u64, EgressState> = HashMap::with_max_entries(MAX_TASKS, BPF_F_NO_PREALLOC);

#[map]
static THREADS: Array<ThreadSlot> = Array::with_max_entries(THREAD_SLOTS, 0);

/// Field offsets of the running kernel's structures, from its BTF. The
/// agent writes them into this read-only global before loading: the
/// verifier then knows them as constants, so the programs read kernel fields
/// with direct loads (one instruction each) and the verifier checks each
/// offset against the kernel's BTF; wrong offsets fail the load.
#[no_mangle]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    task_sum_exec_runtime: 0,
    task_run_delay: 0,
    has_run_delay: 0,
    task_prev_sum_exec_runtime: 0,
};

#[map]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_STATS, 0);

/// Return values of cgroup_skb programs: pass; pass and tell TCP it met
/// congestion (it shrinks its window without losing data); drop and tell it.
const SKB_PASS: i32 = 1;
const SKB_DROP_CN: i32 = 2;
const SKB_PASS_CN: i32 = 3;
/// How many times a packet tries to move its task's egress clock before it
/// is dropped as losing to the task's packets on other CPUs.
const CAS_TRIES: usize = 8;

#[inline(always)]
fn bump_stat(idx: u32) {
    if let Some(v) = STATS.get_ptr_mut(idx) {
        // SAFETY: a per-CPU array slot, only this CPU writes it now.
        unsafe { *v += 1 };
    }
}

/// The agent-written value of one offset.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a plain read of a read-only global; volatile so that the
        // compiler does not fold the placeholder zero.
        unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS.$field) } as usize
    };
}

/// A field of a kernel object at a BTF-checked offset. The verifier turns
/// the load into one that cannot fault (a bad address reads as zero).
#[inline(always)]
fn field<T: Copy>(base: *const u8, off: usize) -> T {
    // SAFETY: `base` is a kernel object pointer the verifier types from BTF
    // and `off` a constant it checks against that type.
    unsafe { *(base.wrapping_add(off) as *const T) }
}

/// The v2 cgroup id of a task: task->cgroups->dfl_cgrp->kn->id.
#[inline(always)]
fn task_cgroup_id(task: *const u8) -> Option<u64> {
    css_cgroup_id(field(task, offset!(task_cgroups)))
}

/// The v2 cgroup id of a css_set: css->dfl_cgrp->kn->id.
#[inline(always)]
fn css_cgroup_id(css: *const u8) -> Option<u64> {
    let cgrp: *const u8 = if css.is_null() { core::ptr::null() } else { field(css, offset!(css_set_dfl_cgrp)) };
    let kn: *const u8 = if cgrp.is_null() { core::ptr::null() } else { field(cgrp, offset!(cgroup_kn)) };
    if kn.is_null() {
        bump_stat(STAT_READ_ERRORS);
        return None;
    }
    Some(field(kn, offset!(kernfs_node_id)))
}

/// log2 of microseconds, without a count-leading-zeros instruction.
#[inline(always)]
fn bucket(ns: u64) -> usize {
    let mut us = ns / 1000;
    let mut b = 0usize;
    while us > 0 && b < RQ_BUCKETS - 1 {
        us >>= 1;
        b += 1;
    }
    b
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let _ = try_sched_switch(&ctx);
    0
}

fn try_sched_switch(ctx: &BtfTracePointContext) -> Option<()> {
    // SAFETY: sched_switch(bool preempt, task_struct *prev, task_struct *next,
    // unsigned int prev_state); each argument is a u64 slot of the context.
    let (preempt, prev, next, prev_state): (u64, *const u8, *const u8, u32) =
        unsafe { (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3)) };
    let state = CPU_STATE.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; only this program uses it, under the run
    // queue's lock with interrupts off.
    let state = unsafe { &mut *state };
    let prev_tid: u32 = field(prev, offset!(task_pid));
    // The run that ends now began when `prev` was switched in here, unless
    // the programs were attached since, or the CPU changed threads without
    // a traced switch.
    let seen_in = state.tid == prev_tid && prev_tid != 0;
    // Its cgroup now: the one it had when switched in unless its css_set
    // changed meanwhile (a task's first process joins its cgroup while it
    // runs, between fork and exec).
    let prev_css: *const u8 = field(prev, offset!(task_cgroups));
    let prev_cg = if seen_in && prev_css as usize as u64 == state.css {
        state.cgroup_id
    } else {
        css_cgroup_id(prev_css).unwrap_or(0)
    };
    let next_tid: u32 = field(next, offset!(task_pid));
    let next_css: *const u8 = field(next, offset!(task_cgroups));
    let next_cg = if next_tid == 0 { 0 } else { css_cgroup_id(next_css).unwrap_or(0) };
    if let Some(c) = COUNTERS.get_ptr_mut(&prev_cg) {
        // SAFETY: this CPU's copy of the entry (see the module's note).
        let c = unsafe { &mut *c };
        let ran: u64 = field(prev, offset!(task_sum_exec_runtime));
        let delay: u64 = if offset!(has_run_delay) != 0 { field(prev, offset!(task_run_delay)) } else { 0 };
        let task = prev as usize as u64;
        let slot = THREADS.get_ptr_mut(prev_tid & (THREAD_SLOTS - 1));
        // SAFETY: a slot of the array; another CPU may write it at the same
        // time only for another thread with the same slot, and a copy torn
        // that way fails its check.
        let last = slot.map(|s| unsafe { *s }).filter(|s| s.task == task && s.tid == prev_tid && s.whole());
        // On-CPU time since the thread last left a CPU, which counts a run
        // whose switch-in was not seen; else since it was switched in here.
        let ran_base = match last {
            Some(s) => Some(s.sum_exec_runtime),
            None if seen_in => Some(state.sum_exec_runtime),
            None => None,
        };
        if let Some(base) = ran_base.filter(|&b| ran > b) {
            c.cpu_ns += ran - base;
        }
        if offset!(has_run_delay) != 0 {
            // The wait before this run: the run delay now minus its value
            // when the thread last left a CPU (which counts a wait split by
            // a migration whole), or else when it was switched in here.
            let wait_base = match last {
                Some(s) => Some(s.run_delay),
                None if seen_in => Some(state.run_delay),
                None => None,
            };
            if let Some(base) = wait_base.filter(|&b| delay >= b) {
                let wait = delay - base;
                c.rq_count += 1;
                c.rq_sum_ns += wait;
                let b = bucket(wait);
                if b < RQ_BUCKETS {
                    c.rq_hist[b] += 1;
                }
            }
        }
        if let Some(s) = slot {
            // SAFETY: as above.
            unsafe { *s = ThreadSlot::new(task, prev_tid, ran, delay) };
        }
        // Taken off the CPU while still runnable (or preempted on its way to
        // sleep): preempted. By whom?
        if preempt != 0 || prev_state == 0 {
            if next_cg == prev_cg {
                c.preempted_by_self += 1;
            } else if unsafe { POLICY.get(&next_cg) }.is_some() {
                c.preempted_by_task += 1;
            } else {
                c.preempted_by_system += 1;
            }
        }
    }
    // `next` arrives: its cgroup and its accounting so far. The kernel adds
    // the wait that ends now to its run delay just after this tracepoint.
    let ran: u64 = field(next, offset!(task_sum_exec_runtime));
    let delay: u64 = if offset!(has_run_delay) != 0 { field(next, offset!(task_run_delay)) } else { 0 };
    *state = CpuState::new(next_tid, next_css as usize as u64, next_cg, ran, delay);
    Some(())
}

#[btf_tracepoint(function = "hrtimer_expire_entry")]
pub fn cpu_state_tick(_ctx: BtfTracePointContext) -> u32 {
    let _ = try_cpu_state_tick();
    0
}

fn try_cpu_state_tick() -> Option<()> {
    // SAFETY: no arguments; the thread this CPU was running when the
    // interrupt came.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    if task.is_null() {
        return None;
    }
    let state = CPU_STATE.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot. The scheduler does not run in a timer's
    // interrupt or softirq, so no switch comes in the middle of this, and
    // `sched_switch` runs with interrupts off, so this does not come in the
    // middle of it. (A nested run of this program is skipped by the kernel.)
    let state = unsafe { &mut *state };
    let tid: u32 = field(task, offset!(task_pid));
    let css: *const u8 = field(task, offset!(task_cgroups));
    if state.tid == tid && state.css == css as usize as u64 {
        return None;
    }
    let cg = if tid == 0 { 0 } else { css_cgroup_id(css).unwrap_or(0) };
    // The run's start: as recorded if its switch-in was seen (only the
    // cgroup changed), else the run time the scheduler noted when it picked
    // the thread (the fair class notes it; a real-time thread's is from its
    // last fair run, but `sched_switch` and the agent go by the thread's
    // own slot, written when it last left a CPU, where it has one).
    // Both read first: one load from either pointer fails verification.
    let (recorded, picked): (u64, u64) = (state.sum_exec_runtime, field(task, offset!(task_prev_sum_exec_runtime)));
    let start = if state.tid == tid { recorded } else { picked };
    let delay: u64 = if offset!(has_run_delay) != 0 { field(task, offset!(task_run_delay)) } else { 0 };
    *state = CpuState::new(tid, css as usize as u64, cg, start, delay);
    Some(())
}

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim(ctx: BtfTracePointContext) -> u32 {
    let _ = try_mark_victim(&ctx);
    0
}

fn try_mark_victim(ctx: &BtfTracePointContext) -> Option<()> {
    // SAFETY: mark_victim(task_struct *task, ...).
    let task: *const u8 = unsafe { ctx.arg(0) };
    let cg = task_cgroup_id(task)?;
    let c = COUNTERS.get_ptr_mut(&cg)?;
    // SAFETY: this CPU's copy of the entry.
    unsafe { (*c).oom_kills += 1 };
    Some(())
}

#[inline(always)]
fn skb_cgroup(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the context's own skb.
    unsafe { bpf_skb_cgroup_id(ctx.skb.skb as *mut __sk_buff) }
}

#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    let cg = skb_cgroup(&ctx);
    if let Some(c) = COUNTERS.get_ptr_mut(&cg) {
        // SAFETY: this CPU's copy of the entry.
        let c = unsafe { &mut *c };
        c.net_rx_bytes += ctx.len() as u64;
        c.net_rx_packets += 1;
    }
    SKB_PASS
}

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    try_egress(&ctx).unwrap_or(SKB_PASS)
}

fn try_egress(ctx: &SkBuffContext) -> Option<i32> {
    let cg = skb_cgroup(ctx);
    let c = COUNTERS.get_ptr_mut(&cg)?;
    // SAFETY: this CPU's copy of the entry.
    let c = unsafe { &mut *c };
    let len = ctx.len() as u64;
    // SAFETY: a value read from the map.
    if let Some(p) = unsafe { POLICY.get(&cg) } {
        if p.egress_bytes_per_sec > 0 {
            if let Some(st) = EGRESS.get_ptr_mut(&cg) {
                // Generic cell rate algorithm: each packet moves the
                // theoretical arrival time on by its transmission time at the
                // allowed rate; a packet that would put it more than the burst
                // ahead of now is dropped. Packets of one task leave on every
                // CPU at once, so the move is a compare-and-swap: a plain
                // read and write would let two packets both pass on one
                // packet's cost, and past the limit each such pair lets a
                // whole segment through unpaid.
                // SAFETY: no preconditions.
                let now = unsafe { bpf_ktime_get_ns() };
                let cost = len * 1_000_000_000 / p.egress_bytes_per_sec;
                // SAFETY: the map's entry for this task, which lives while
                // the program runs.
                let tat_ptr = unsafe { core::ptr::addr_of_mut!((*st).tat_ns) };
                // SAFETY: as above.
                let mut tat = unsafe { core::ptr::read_volatile(tat_ptr) };
                let mut passed = None;
                // A bounded number of tries (the verifier wants a bound);
                // a packet that loses every race is dropped, which errs on
                // the side of the limit.
                for _ in 0..CAS_TRIES {
                    let start = if tat > now { tat } else { now };
                    if start + cost > now + p.egress_burst_ns {
                        break;
                    }
                    // SAFETY: an aligned u64 in the map's value.
                    let (seen, swapped) = unsafe {
                        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::Relaxed }>(
                            tat_ptr,
                            tat,
                            start + cost,
                        )
                    };
                    if swapped {
                        passed = Some(start + cost);
                        break;
                    }
                    tat = seen;
                }
                let Some(new_tat) = passed else {
                    c.egress_dropped_packets += 1;
                    c.egress_dropped_bytes += len;
                    return Some(SKB_DROP_CN);
                };
                c.net_tx_bytes += len;
                c.net_tx_packets += 1;
                // Past half the burst: ask TCP to slow down before anything
                // has to be dropped.
                if new_tat > now + p.egress_burst_ns / 2 {
                    return Some(SKB_PASS_CN);
                }
                return Some(SKB_PASS);
            }
        }
    }
    c.net_tx_bytes += len;
    c.net_tx_packets += 1;
    Some(SKB_PASS)
}

/// 1 allows the bind, 0 fails it with EPERM.
#[inline(always)]
fn check_bind(ctx: &SockAddrContext) -> i32 {
    // SAFETY: no preconditions.
    let cg = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a value read from the map.
    let Some(p) = (unsafe { POLICY.get(&cg) }) else { return 1 };
    if p.enforce_ports == 0 {
        return 1;
    }
    // SAFETY: the context's own sock_addr; user_port is in network order.
    let port = u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16);
    // Port 0 asks the kernel for an ephemeral port: not a choice of port.
    if port == 0 {
        return 1;
    }
    let mut i = 0;
    while i < MAX_PORT_RANGES {
        if i as u32 >= p.n_port_ranges {
            break;
        }
        let r = p.ports[i];
        if port >= r.begin && port <= r.end {
            return 1;
        }
        i += 1;
    }
    if let Some(c) = COUNTERS.get_ptr_mut(&cg) {
        // SAFETY: this CPU's copy of the entry.
        unsafe { (*c).bind_denied += 1 };
    }
    0
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    check_bind(&ctx)
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    check_bind(&ctx)
}

/// Sets the pacing rate of a limited task's TCP sockets. Connect and listen
/// run in the task's own context, so the current cgroup is the task's.
#[sock_ops]
pub fn tcp_pacing(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB || op == BPF_SOCK_OPS_TCP_LISTEN_CB {
        // SAFETY: no preconditions.
        let cg = unsafe { bpf_get_current_cgroup_id() };
        // SAFETY: a value read from the map.
        if let Some(p) = unsafe { POLICY.get(&cg) } {
            if p.egress_bytes_per_sec > 0 {
                // 95%: pacing counts payload, the limit counts IP and TCP
                // headers too (about 3.6% more at a 1500-byte MTU). The
                // kernel takes this option from BPF as a 32-bit int of bytes
                // per second; u32::MAX would mean "unlimited".
                let paced = p.egress_bytes_per_sec / 100 * 95;
                let mut rate: u32 = if paced >= u32::MAX as u64 { u32::MAX - 1 } else { paced as u32 };
                // SAFETY: the context's own socket; optval points at a u32.
                unsafe {
                    bpf_setsockopt(
                        ctx.ops as *mut _,
                        SOL_SOCKET as i32,
                        SO_MAX_PACING_RATE as i32,
                        &mut rate as *mut u32 as *mut _,
                        4,
                    );
                }
            }
        }
    }
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: no path in these programs can panic: indexes are checked
    // against their bounds before use and arithmetic does not overflow-check
    // in the release profile they are built with. (A reachable panic would
    // be undefined behaviour here; an infinite loop instead would be refused
    // by the verifier.)
    unsafe { core::hint::unreachable_unchecked() }
}
