//! Agora's eBPF programs: per-task accounting and in-kernel enforcement.
//!
//! Tasks are identified by their v2 cgroup id. The agent registers each task
//! (a `POLICY` entry and a zeroed `COUNTERS` entry) when it starts and removes
//! them when it ends; the programs only read policies and update existing
//! counters, so they never allocate map entries of their own except for
//! wakeup timestamps, which are bounded and counted when full.
//!
//! - `sched_switch` (BTF tracepoint): on-CPU time, preemptions by who took
//!   the CPU, and run-queue latency of the task switched in: from its wakeup,
//!   or from when it was switched out still runnable (preempted or
//!   throttled).
//! - `sched_wakeup`, `sched_wakeup_new`: when a task's thread became runnable.
//! - `ingress`, `egress` (cgroup_skb): network bytes and packets; egress
//!   applies the task's rate limit: congestion notification past half the
//!   burst, drop (with notification) past the burst.
//! - `tcp_pacing` (sock_ops): TCP sockets of a limited task pace themselves at
//!   its rate (`SO_MAX_PACING_RATE`, set at connect and listen, inherited by
//!   accepted sockets), so TCP rarely meets the egress drops, each of which
//!   would stall it for a retransmission timeout.
//! - `bind4`, `bind6` (cgroup sock_addr): binds only to the task's ports.
//! - `mark_victim`: the OOM killer chose one of the task's processes.
//!
//! Each program is a thin entry point around a `try_*` function.

#![no_std]
#![no_main]

use agora_ebpf_common::{
    CpuState, EgressState, KernelOffsets, TaskCounters, TaskPolicy, MAX_PORT_RANGES, MAX_TASKS, MAX_WAKEUPS,
    N_STATS, RQ_BUCKETS, STAT_READ_ERRORS, STAT_WAKEUPS_FULL,
};
use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB, SOL_SOCKET, SO_MAX_PACING_RATE,
    },
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_setsockopt, bpf_skb_cgroup_id},
    macros::{btf_tracepoint, cgroup_skb, cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, SkBuffContext, SockAddrContext, SockOpsContext},
};

#[map]
static COUNTERS: PerCpuHashMap<u64, TaskCounters> = PerCpuHashMap::with_max_entries(MAX_TASKS, 0);

#[map]
static POLICY: HashMap<u64, TaskPolicy> = HashMap::with_max_entries(MAX_TASKS, 0);

#[map]
static EGRESS: HashMap<u64, EgressState> = HashMap::with_max_entries(MAX_TASKS, 0);

/// Thread id -> when it was woken (only threads of tasks).
#[map]
static WAKEUPS: HashMap<u32, u64> = HashMap::with_max_entries(MAX_WAKEUPS, 0);

#[map]
static OFFSETS: Array<KernelOffsets> = Array::with_max_entries(1, 0);

#[map]
static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_STATS, 0);

/// Return values of cgroup_skb programs: pass; pass and tell TCP it met
/// congestion (it shrinks its window without losing data); drop and tell it.
const SKB_PASS: i32 = 1;
const SKB_DROP_CN: i32 = 2;
const SKB_PASS_CN: i32 = 3;

#[inline(always)]
fn bump_stat(idx: u32) {
    if let Some(v) = STATS.get_ptr_mut(idx) {
        // SAFETY: a per-CPU array slot, only this CPU writes it now.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn read<T>(base: *const u8, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error.
    match unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            bump_stat(STAT_READ_ERRORS);
            None
        }
    }
}

/// The v2 cgroup id of a task: task->cgroups->dfl_cgrp->kn->id.
#[inline(always)]
fn task_cgroup_id(task: *const u8, o: &KernelOffsets) -> Option<u64> {
    let css: *const u8 = read(task, o.task_cgroups)?;
    let cgrp: *const u8 = read(css, o.css_set_dfl_cgrp)?;
    let kn: *const u8 = read(cgrp, o.cgroup_kn)?;
    read(kn, o.kernfs_node_id)
}

#[inline(always)]
fn offsets() -> Option<&'static KernelOffsets> {
    let o = OFFSETS.get(0)?;
    if o.ready == 0 {
        return None;
    }
    Some(o)
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
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let state = CPU_STATE.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array.
    let last = unsafe { core::mem::replace(&mut (*state).last_switch_ns, now) };
    let o = offsets()?;
    // SAFETY: sched_switch(bool preempt, task_struct *prev, task_struct *next,
    // unsigned int prev_state).
    let (next, prev_state): (*const u8, u32) = unsafe { (ctx.arg(2), ctx.arg(3)) };
    // The switch happens in the context of the task leaving the CPU.
    // SAFETY: no preconditions.
    let prev_cg = unsafe { bpf_get_current_cgroup_id() };
    let next_cg = task_cgroup_id(next, o).unwrap_or(0);
    if let Some(c) = COUNTERS.get_ptr_mut(&prev_cg) {
        // SAFETY: this CPU's copy of the entry.
        let c = unsafe { &mut *c };
        if last != 0 && now > last {
            c.cpu_ns += now - last;
        }
        // Still runnable when switched out: preempted. By whom?
        if prev_state == 0 {
            if next_cg == prev_cg {
                c.preempted_by_self += 1;
            } else if unsafe { POLICY.get(&next_cg) }.is_some() {
                c.preempted_by_task += 1;
            } else {
                c.preempted_by_system += 1;
            }
            // It waits in the run queue from now until it runs again (like
            // a wakeup); that wait includes any CFS throttling, which the
            // agent reports beside it.
            // SAFETY: no preconditions.
            let tid = unsafe { bpf_get_current_pid_tgid() } as u32;
            if WAKEUPS.insert(&tid, &now, 0).is_err() {
                bump_stat(STAT_WAKEUPS_FULL);
            }
        }
    }
    let c = COUNTERS.get_ptr_mut(&next_cg)?;
    let pid: u32 = read(next, o.task_pid)?;
    // SAFETY: a value copied out of the map.
    let woken = unsafe { WAKEUPS.get(&pid) }.copied()?;
    let _ = WAKEUPS.remove(&pid);
    if now > woken {
        let lat = now - woken;
        // SAFETY: this CPU's copy of the entry.
        let c = unsafe { &mut *c };
        c.rq_count += 1;
        c.rq_sum_ns += lat;
        let b = bucket(lat);
        if b < RQ_BUCKETS {
            c.rq_hist[b] += 1;
        }
    }
    Some(())
}

#[inline(always)]
fn record_wakeup(ctx: &BtfTracePointContext) -> Option<()> {
    let o = offsets()?;
    // SAFETY: sched_wakeup(task_struct *p) / sched_wakeup_new(task_struct *p).
    let p: *const u8 = unsafe { ctx.arg(0) };
    let cg = task_cgroup_id(p, o)?;
    // Only threads of tasks are timed.
    unsafe { POLICY.get(&cg) }?;
    let pid: u32 = read(p, o.task_pid)?;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if WAKEUPS.insert(&pid, &now, 0).is_err() {
        bump_stat(STAT_WAKEUPS_FULL);
    }
    Some(())
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    let _ = record_wakeup(&ctx);
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    let _ = record_wakeup(&ctx);
    0
}

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim(ctx: BtfTracePointContext) -> u32 {
    let _ = try_mark_victim(&ctx);
    0
}

fn try_mark_victim(ctx: &BtfTracePointContext) -> Option<()> {
    let o = offsets()?;
    // SAFETY: mark_victim(task_struct *task, ...).
    let task: *const u8 = unsafe { ctx.arg(0) };
    let cg = task_cgroup_id(task, o)?;
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
                // ahead of now is dropped. The update is not atomic (the BPF
                // target has no compare-and-swap in Rust): packets leaving on
                // two CPUs at the same instant can both pass. Paced TCP stays
                // below the limit and is not affected.
                // SAFETY: no preconditions.
                let now = unsafe { bpf_ktime_get_ns() };
                let cost = len * 1_000_000_000 / p.egress_bytes_per_sec;
                // SAFETY: the map's entry for this task.
                let tat = unsafe { (*st).tat_ns };
                let start = if tat > now { tat } else { now };
                if start + cost > now + p.egress_burst_ns {
                    c.egress_dropped_packets += 1;
                    c.egress_dropped_bytes += len;
                    return Some(SKB_DROP_CN);
                }
                // SAFETY: as above.
                unsafe { (*st).tat_ns = start + cost };
                c.net_tx_bytes += len;
                c.net_tx_packets += 1;
                // Past half the burst: ask TCP to slow down before anything
                // has to be dropped.
                if start + cost > now + p.egress_burst_ns / 2 {
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
                // The kernel takes this option from BPF as a 32-bit int of
                // bytes per second; u32::MAX would mean "unlimited".
                let mut rate: u32 = if p.egress_bytes_per_sec >= u32::MAX as u64 {
                    u32::MAX - 1
                } else {
                    p.egress_bytes_per_sec as u32
                };
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
    // SAFETY: the verifier rejects programs that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}
