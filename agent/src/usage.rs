//! The per-task usage view: what the cgroups account (cgroupfs) and what the
//! eBPF programs measured, sampled on an interval, and its renderings:
//! Mesos's `ResourceStatistics` JSON for `/monitor/statistics`, Prometheus
//! series, and the summary that rides to the master.

use std::time::Instant;

use agora_ebpf_common::{rq_quantile_us, TaskCounters};
use serde_json::{json, Map, Value};

use crate::cgroups::CgroupStats;

/// The resource that asks for an egress limit, in Mbit/s (a scalar).
pub const EGRESS_RESOURCE: &str = "egress_mbps";

/// One sample of a task's usage.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    /// Seconds since the epoch.
    pub timestamp: f64,
    pub cgroup: CgroupStats,
    /// `None` when eBPF accounting is off.
    pub ebpf: Option<TaskCounters>,
}

/// The latest two samples, for rates.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub latest: Option<Sample>,
    pub previous: Option<Sample>,
}

impl Usage {
    pub fn push(&mut self, s: Sample) {
        self.previous = self.latest.take();
        self.latest = Some(s);
    }

    /// Cores used between the last two samples.
    pub fn cpus_used(&self) -> Option<f64> {
        let (a, b) = (self.previous.as_ref()?, self.latest.as_ref()?);
        let dt = b.at.duration_since(a.at).as_secs_f64();
        if dt <= 0.0 {
            return None;
        }
        let ns = |s: &Sample| s.ebpf.map(|e| e.cpu_ns).or(s.cgroup.cpu_usage_ns);
        Some(ns(b)?.saturating_sub(ns(a)?) as f64 / 1e9 / dt)
    }

    /// Bytes per second sent and received between the last two samples.
    pub fn net_rates(&self) -> Option<(f64, f64)> {
        let (a, b) = (self.previous.as_ref()?, self.latest.as_ref()?);
        let (ea, eb) = (a.ebpf?, b.ebpf?);
        let dt = b.at.duration_since(a.at).as_secs_f64();
        if dt <= 0.0 {
            return None;
        }
        Some((
            eb.net_rx_bytes.saturating_sub(ea.net_rx_bytes) as f64 / dt,
            eb.net_tx_bytes.saturating_sub(ea.net_tx_bytes) as f64 / dt,
        ))
    }

    /// Block IO bytes per second (read + write) between the last two samples.
    pub fn io_rate(&self) -> Option<f64> {
        let (a, b) = (self.previous.as_ref()?, self.latest.as_ref()?);
        let dt = b.at.duration_since(a.at).as_secs_f64();
        let total = |s: &Sample| Some(s.cgroup.io_read_bytes? + s.cgroup.io_write_bytes?);
        if dt <= 0.0 {
            return None;
        }
        Some(total(b)?.saturating_sub(total(a)?) as f64 / dt)
    }
}

fn secs(ns: Option<u64>) -> Value {
    ns.map(|n| json!(n as f64 / 1e9)).unwrap_or(Value::Null)
}

fn num(v: Option<u64>) -> Value {
    v.map(|n| json!(n)).unwrap_or(Value::Null)
}

/// Mesos's `ResourceStatistics`, with the eBPF measurements beside it.
pub fn statistics_json(u: &Usage, cpus_limit: f64, mem_limit_mb: f64) -> Value {
    let mut m = Map::new();
    let Some(s) = &u.latest else { return Value::Object(m) };
    let c = &s.cgroup;
    m.insert("timestamp".into(), json!(s.timestamp));
    m.insert("cpus_limit".into(), json!(cpus_limit));
    m.insert("cpus_user_time_secs".into(), secs(c.cpu_user_ns));
    m.insert("cpus_system_time_secs".into(), secs(c.cpu_system_ns));
    m.insert("cpus_nr_periods".into(), num(c.nr_periods));
    m.insert("cpus_nr_throttled".into(), num(c.nr_throttled));
    m.insert("cpus_throttled_time_secs".into(), secs(c.throttled_ns));
    // The cgroup's own CPU accounting (cpuacct / cpu.stat), in ns precision.
    m.insert("cpus_cgroup_time_secs".into(), secs(c.cpu_usage_ns));
    if let Some(used) = u.cpus_used() {
        m.insert("cpus_used".into(), json!(used));
    }
    m.insert("mem_limit_bytes".into(), json!((mem_limit_mb * 1024.0 * 1024.0) as u64));
    m.insert("mem_total_bytes".into(), num(c.mem_usage_bytes));
    m.insert("mem_rss_bytes".into(), num(c.mem_rss_bytes));
    m.insert("mem_file_bytes".into(), num(c.mem_file_bytes));
    m.insert("mem_peak_bytes".into(), num(c.mem_peak_bytes));
    m.insert("blkio_read_bytes".into(), num(c.io_read_bytes));
    m.insert("blkio_write_bytes".into(), num(c.io_write_bytes));
    m.insert("source".into(), json!(if s.ebpf.is_some() { "ebpf" } else { "cgroupfs" }));
    let oom_cgroup = c.oom_kills.unwrap_or(0);
    match &s.ebpf {
        Some(e) => {
            m.insert("cpus_oncpu_time_secs".into(), json!(e.cpu_ns as f64 / 1e9));
            m.insert("net_rx_bytes".into(), json!(e.net_rx_bytes));
            m.insert("net_rx_packets".into(), json!(e.net_rx_packets));
            m.insert("net_tx_bytes".into(), json!(e.net_tx_bytes));
            m.insert("net_tx_packets".into(), json!(e.net_tx_packets));
            m.insert("net_tx_dropped".into(), json!(e.egress_dropped_packets));
            m.insert("net_tx_egress_dropped_bytes".into(), json!(e.egress_dropped_bytes));
            m.insert("runq_latency_count".into(), json!(e.rq_count));
            if e.rq_count > 0 {
                m.insert("runq_latency_mean_us".into(), json!(e.rq_sum_ns as f64 / e.rq_count as f64 / 1000.0));
            }
            for (name, q) in [("p50", 500), ("p90", 900), ("p99", 990)] {
                if let Some(v) = rq_quantile_us(&e.rq_hist, q) {
                    m.insert(format!("runq_latency_{name}_us"), json!(v));
                }
            }
            m.insert("runq_latency_histogram".into(), json!(e.rq_hist.to_vec()));
            m.insert("preemptions_by_self".into(), json!(e.preempted_by_self));
            m.insert("preemptions_by_task".into(), json!(e.preempted_by_task));
            m.insert("preemptions_by_system".into(), json!(e.preempted_by_system));
            m.insert("bind_denied".into(), json!(e.bind_denied));
            // Either source alone can miss a kill (no mark_victim hook, or
            // a v1 kernel without the oom_kill count): report the larger,
            // and each one too.
            m.insert("oom_kills".into(), json!(e.oom_kills.max(oom_cgroup)));
            m.insert("oom_kills_ebpf".into(), json!(e.oom_kills));
            if let Some(n) = c.oom_kills {
                m.insert("oom_kills_cgroup".into(), json!(n));
            }
        }
        None => {
            m.insert("oom_kills".into(), json!(oom_cgroup));
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_log2_histogram() {
        let mut h = [0u64; agora_ebpf_common::RQ_BUCKETS];
        assert_eq!(rq_quantile_us(&h, 990), None);
        h[2] = 98; // [2, 4) µs
        h[10] = 2; // [512, 1024) µs
        assert_eq!(rq_quantile_us(&h, 500), Some(4));
        assert_eq!(rq_quantile_us(&h, 980), Some(4));
        assert_eq!(rq_quantile_us(&h, 990), Some(1024));
        h[2] = 0;
        assert_eq!(rq_quantile_us(&h, 1), Some(1024), "a low quantile of one bucket is that bucket");
    }

    #[test]
    fn rates_from_two_samples() {
        let t0 = Instant::now();
        let mut e = TaskCounters::ZERO;
        let mut u = Usage::default();
        u.push(Sample { at: t0, timestamp: 0.0, cgroup: CgroupStats::default(), ebpf: Some(e) });
        e.cpu_ns = 500_000_000;
        e.net_tx_bytes = 1_000_000;
        u.push(Sample {
            at: t0 + std::time::Duration::from_secs(1),
            timestamp: 1.0,
            cgroup: CgroupStats::default(),
            ebpf: Some(e),
        });
        assert!((u.cpus_used().unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(u.net_rates().unwrap().1, 1_000_000.0);
        let j = statistics_json(&u, 0.5, 64.0);
        assert_eq!(j["source"], "ebpf");
        assert_eq!(j["net_tx_bytes"], 1_000_000);
        assert_eq!(j["mem_limit_bytes"], 64 * 1024 * 1024);
    }
}
