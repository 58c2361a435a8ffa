//! Acceptance of per-task eBPF accounting and in-kernel enforcement, with
//! real agents, real processes in real cgroups and the real programs. Needs
//! root (CI runs as root); skips with a reason otherwise.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_proto::mesos::{Reason, TaskState};
use agora_tests::framework::{info, Spec, TestFramework};
use agora_tests::{active_agents, bin, require_root, wait_until, Agent, AgentOpts, Master, MasterOpts};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// These tests measure CPU time, bandwidth and scheduling latency: they take
/// turns, so that one's load does not skew another's figures.
/// Each test has its own runtime, so the lock is tokio's, held across awaits.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

fn agent_opts(resources: &str, extra: &[&str]) -> AgentOpts {
    let mut o = AgentOpts { resources: resources.into(), ..Default::default() };
    o.extra.extend(["--usage-interval", "200ms", "--usage-report-interval", "500ms"].iter().map(|s| s.to_string()));
    o.extra.extend(extra.iter().map(|s| s.to_string()));
    o
}

fn cluster(resources: &str, extra: &[&str]) -> (Master, Agent) {
    let m = Master::start(MasterOpts::default());
    let a = Agent::start(&m.addr, agent_opts(resources, extra));
    wait_until(LONG, "the agent to register", || active_agents(&m.state()) == 1);
    (m, a)
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("statistics have no number {k}: {v}"))
}

/// Waits for a task's statistics to exist (its first sample).
fn stats_of(a: &Agent, task: &str) -> Value {
    let mut last = None;
    wait_until(LONG, "the task's statistics", || {
        last = a.statistics(task).filter(|s| s.get("timestamp").is_some());
        last.is_some()
    });
    last.expect("statistics")
}

/// A listener outside every task cgroup that counts what it receives.
struct Sink {
    port: u16,
    bytes: Arc<AtomicU64>,
    first_byte: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Sink {
    fn start() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let bytes = Arc::new(AtomicU64::new(0));
        let first_byte = Arc::new(std::sync::Mutex::new(None));
        let (b, fb) = (bytes.clone(), first_byte.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                let (b, fb) = (b.clone(), fb.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        fb.lock().unwrap().get_or_insert_with(Instant::now);
                        b.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Sink { port, bytes, first_byte }
    }

    /// A UDP sink: counts the payload of every datagram it receives.
    fn start_udp() -> Sink {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        let bytes = Arc::new(AtomicU64::new(0));
        let first_byte = Arc::new(std::sync::Mutex::new(None));
        let (b, fb) = (bytes.clone(), first_byte.clone());
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = s.recv(&mut buf) {
                fb.lock().unwrap().get_or_insert_with(Instant::now);
                b.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        Sink { port, bytes, first_byte }
    }

    /// Bits per second received over `window`, starting `skip` after the
    /// first byte (past any initial burst).
    fn rate_mbps(&self, skip: Duration, window: Duration) -> f64 {
        wait_until(LONG, "data to arrive", || self.first_byte.lock().unwrap().is_some());
        let start = self.first_byte.lock().unwrap().expect("first byte") + skip;
        while Instant::now() < start {
            std::thread::sleep(Duration::from_millis(10));
        }
        let b0 = self.bytes.load(Ordering::Relaxed);
        let t0 = Instant::now();
        std::thread::sleep(window);
        let b1 = self.bytes.load(Ordering::Relaxed);
        (b1 - b0) as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e6
    }

    /// Bytes received so far, and the time since the first of them.
    fn total(&self) -> (u64, Duration) {
        let first = self.first_byte.lock().unwrap().expect("first byte");
        (self.bytes.load(Ordering::Relaxed), first.elapsed())
    }
}

/// Acceptance 1: a task spinning one core under `cpus:0.5` measures 0.5
/// cores ±5% from eBPF over 5 s, within 2% of the cgroup's own accounting;
/// and its usage reaches the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_time_matches_the_limit_and_the_cgroup() {
    if !require_root("cpu_time_matches_the_limit_and_the_cgroup") {
        return;
    }
    let _turn = serial().await;
    let (m, a) = cluster("cpus:2;mem:1024;disk:1024;ports:[31000-31999]", &[]);
    assert_eq!(metric(&a, "ebpf_enabled"), 1.0);
    // The kernel's run-time statistics are host-wide and cost every BPF
    // program: off unless asked for.
    assert_eq!(metric(&a, "agora_agent_ebpf_run_stats_enabled"), 0.0);
    let mut fw = TestFramework::start(&m.addr, info("spinner")).await;
    // `free` has a CPU to itself and may run for seconds without being
    // switched out: its usage must count the run in progress.
    fw.launch(
        vec![
            Spec::new("spin", "while :; do :; done", "cpus:0.5;mem:64"),
            Spec::new("free", "while :; do :; done", "cpus:1.5;mem:64"),
        ],
        LONG,
    )
    .await;
    fw.until(LONG, "running", |f| ["spin", "free"].iter().all(|t| f.last_state(t) == Some(TaskState::Running))).await;
    stats_of(&a, "spin");
    std::thread::sleep(Duration::from_secs(1));
    let (s0, u0) = (stats_of(&a, "spin"), stats_of(&a, "free"));
    std::thread::sleep(Duration::from_secs(5));
    let (s1, u1) = (stats_of(&a, "spin"), stats_of(&a, "free"));
    let dt = f(&s1, "timestamp") - f(&s0, "timestamp");
    let ebpf = f(&s1, "cpus_oncpu_time_secs") - f(&s0, "cpus_oncpu_time_secs");
    let cgroup = f(&s1, "cpus_cgroup_time_secs") - f(&s0, "cpus_cgroup_time_secs");
    let cores = ebpf / dt;
    eprintln!("over {dt:.2} s: eBPF {ebpf:.3} s = {cores:.3} cores; cgroup {cgroup:.3} s");
    assert_eq!(s1["source"], "ebpf");
    assert!((cores - 0.5).abs() <= 0.025, "{cores} cores, not 0.5 ±5%");
    assert!((ebpf - cgroup).abs() / cgroup <= 0.02, "eBPF {ebpf} vs cgroup {cgroup}");
    assert!(f(&s1, "cpus_nr_throttled") > 0.0, "the limit throttles a spinner: {s1}");
    let dt = f(&u1, "timestamp") - f(&u0, "timestamp");
    let ebpf = f(&u1, "cpus_oncpu_time_secs") - f(&u0, "cpus_oncpu_time_secs");
    let cgroup = f(&u1, "cpus_cgroup_time_secs") - f(&u0, "cpus_cgroup_time_secs");
    eprintln!("unthrottled, over {dt:.2} s: eBPF {ebpf:.3} s = {:.3} cores; cgroup {cgroup:.3} s", ebpf / dt);
    assert!(ebpf / dt >= 0.8, "an unthrottled spinner used {} cores", ebpf / dt);
    assert!((ebpf - cgroup).abs() / cgroup <= 0.02, "unthrottled: eBPF {ebpf} vs cgroup {cgroup}");
    // Since each task began, too: nothing from its start (its first process
    // joins the cgroup while it runs) is lost.
    for s in [&s1, &u1] {
        let (e, c) = (f(s, "cpus_oncpu_time_secs"), f(s, "cpus_cgroup_time_secs"));
        eprintln!("since the start: eBPF {e:.4} s, cgroup {c:.4} s");
        assert!((e - c).abs() <= 0.02 * c, "in all: eBPF {e} vs cgroup {c}");
    }
    // The usage rode to the master: the framework's usage shows the spinner.
    wait_until(LONG, "usage at the master", || {
        m.state()["frameworks"][0]["usage"]["cpus_used"].as_f64().is_some_and(|c| c > 0.3)
    });
    let prom = String::from_utf8(agora_tests::http(&m.addr, "GET", "/metrics", &[], &[]).2).unwrap();
    assert!(prom.contains("agora_framework_cpus_used{framework_id="), "{prom}");
}

/// Acceptance 2: a task that sends N bytes over loopback reports at least N
/// bytes sent, within the per-packet overhead; an idle task reports about 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_bytes_sent_are_counted() {
    if !require_root("network_bytes_sent_are_counted") {
        return;
    }
    let _turn = serial().await;
    let (m, a) = cluster("cpus:2;mem:1024;disk:1024;ports:[31000-31999]", &[]);
    let sink = Sink::start();
    let n: u64 = 10_000_000;
    let mut fw = TestFramework::start(&m.addr, info("sender")).await;
    // After the sink has everything (it closes when it reads our end), the
    // task prints what its socket put on the wire: payload bytes including
    // retransmissions, and the retransmitted ones (tcp_info's bytes_sent and
    // bytes_retrans, Linux 5.5).
    let send = format!(
        "python3 -c 'import socket,struct\ns=socket.create_connection((\"127.0.0.1\", {}))\ns.sendall(b\"x\" * {n})\ns.shutdown(socket.SHUT_WR)\ns.recv(1)\ni=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)\nprint(*struct.unpack_from(\"<QQ\", i, 200))'",
        sink.port
    );
    fw.launch(
        vec![Spec::new("send", &send, "cpus:0.5;mem:128"), Spec::new("idle", "sleep 3", "cpus:0.1;mem:32")],
        LONG,
    )
    .await;
    fw.wait_terminal(&["send".into(), "idle".into()], LONG).await;
    assert_eq!(fw.last_state("send"), Some(TaskState::Finished), "{:?}", fw.summary());
    wait_until(LONG, "the sink to have everything", || sink.bytes.load(Ordering::Relaxed) == n);
    let s = stats_of(&a, "send");
    let tx = f(&s, "net_tx_bytes");
    let packets = f(&s, "net_tx_packets");
    let out = stdout_of(&a, "send");
    let wire: Vec<f64> = out.split_whitespace().map(|v| v.parse().expect("a number")).collect();
    let [on_wire, retransmitted] = wire[..] else { panic!("the task printed {out:?}") };
    eprintln!(
        "sent {n} bytes ({on_wire} on the wire, {retransmitted} of them again) in {packets} packets; counted {tx}"
    );
    assert!(on_wire >= n as f64, "{out}");
    assert!(tx >= on_wire, "{tx} < {on_wire}");
    // Headers of at most ~100 bytes per packet (IP + TCP with options).
    assert!(tx <= on_wire + 100.0 * packets, "{tx} bytes in {packets} packets for {on_wire}");
    let idle = stats_of(&a, "idle");
    assert!(f(&idle, "net_tx_bytes") < 1000.0 && f(&idle, "net_rx_bytes") < 1000.0, "{idle}");
}

/// Acceptance 3: binding an allocated port succeeds, an unallocated one
/// fails with EPERM and is counted; another task's port is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_are_limited_to_the_tasks_ports() {
    if !require_root("binds_are_limited_to_the_tasks_ports") {
        return;
    }
    let _turn = serial().await;
    let (m, a) = cluster("cpus:2;mem:1024;disk:1024;ports:[31000-31999]", &[]);
    let mut fw = TestFramework::start(&m.addr, info("binder")).await;
    let bind = |port: u16| {
        format!(
            "python3 -c 'import socket,errno,sys\ntry:\n    socket.socket().bind((\"127.0.0.1\", {port})); print(\"bound\")\nexcept OSError as e:\n    print(errno.errorcode[e.errno]); sys.exit(0)'"
        )
    };
    let a_cmd = format!("{} && {}", bind(31000), bind(31001));
    fw.launch(
        vec![
            Spec::new("a", &a_cmd, "cpus:0.1;mem:64;ports:[31000-31000]"),
            Spec::new("b", &bind(31001), "cpus:0.1;mem:64;ports:[31001-31001]"),
        ],
        LONG,
    )
    .await;
    fw.wait_terminal(&["a".into(), "b".into()], LONG).await;
    let out = |t: &str| stdout_of(&a, t);
    assert_eq!(out("a").split_whitespace().collect::<Vec<_>>(), vec!["bound", "EPERM"], "task a");
    assert_eq!(out("b").trim(), "bound", "task b may bind its own port");
    assert_eq!(f(&stats_of(&a, "a"), "bind_denied"), 1.0);
    assert_eq!(f(&stats_of(&a, "b"), "bind_denied"), 0.0);
}

/// Acceptance 4: a task limited to 10 Mbit/s that sends as fast as it can
/// measures at most 10.5 Mbit/s, whether it sends paced TCP (one connection,
/// which pacing alone holds, or four, whose sum the drop policy holds) or
/// UDP that only the drop policy holds back; an unlimited task on the same
/// agent is not slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_limit_holds_and_spares_others() {
    if !require_root("egress_limit_holds_and_spares_others") {
        return;
    }
    let _turn = serial().await;
    let (m, a) = cluster("cpus:2;mem:1024;disk:1024;ports:[31000-31999];egress_mbps:1000", &[]);
    let (tcp_sink, udp_sink, free_sink, multi_sink) = (Sink::start(), Sink::start_udp(), Sink::start(), Sink::start());
    let tcp = |port: u16| {
        format!(
            "python3 -c 'import socket,time\ns=socket.create_connection((\"127.0.0.1\", {port}))\nd=b\"x\"*65536\nend=time.time()+8\nwhile time.time()<end:\n    s.sendall(d)'"
        )
    };
    // Drops of UDP datagrams surface as ENOBUFS at most; keep sending.
    let udp = format!(
        "python3 -c 'import socket,time\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nd=b\"x\"*1400\nend=time.time()+8\nwhile time.time()<end:\n    try:\n        s.sendto(d, (\"127.0.0.1\", {}))\n    except OSError:\n        pass'",
        udp_sink.port
    );
    // Four connections, each paced to (about) the task's whole limit.
    let multi = format!(
        "python3 -c 'import socket,threading,time\nd=b\"x\"*65536\nend=time.time()+8\ndef send():\n    s=socket.create_connection((\"127.0.0.1\", {}))\n    while time.time()<end:\n        s.sendall(d)\nts=[threading.Thread(target=send) for _ in range(4)]\n[t.start() for t in ts]\n[t.join() for t in ts]'",
        multi_sink.port
    );
    let mut fw = TestFramework::start(&m.addr, info("blasters")).await;
    fw.launch(
        vec![
            Spec::new("tcp", &tcp(tcp_sink.port), "cpus:0.4;mem:128;egress_mbps:10"),
            Spec::new("udp", &udp, "cpus:0.4;mem:128;egress_mbps:10"),
            Spec::new("free", &tcp(free_sink.port), "cpus:0.4;mem:128"),
            Spec::new("multi", &multi, "cpus:0.4;mem:128;egress_mbps:10"),
        ],
        LONG,
    )
    .await;
    // Measure all four over the same seconds, past the first one.
    let (tcp_rate, udp_rate, free_rate, multi_rate) = std::thread::scope(|s| {
        let r = &|sink: &Sink| sink.rate_mbps(Duration::from_secs(1), Duration::from_secs(4));
        let (ht, hu, hf, hm) =
            (s.spawn(|| r(&tcp_sink)), s.spawn(|| r(&udp_sink)), s.spawn(|| r(&free_sink)), s.spawn(|| r(&multi_sink)));
        let rates = (ht.join().unwrap(), hu.join().unwrap(), hf.join().unwrap(), hm.join().unwrap());
        // The sustained rate leaves out the start; over the whole run a
        // limited task may exceed the rate only by the documented burst
        // (768 KiB: TCP's ten unpaced first segments), plus a segment in
        // flight.
        for (name, sink) in [("tcp", &tcp_sink), ("udp", &udp_sink), ("multi", &multi_sink)] {
            let (total, elapsed) = sink.total();
            let allowed = 10e6 / 8.0 * elapsed.as_secs_f64() + (768 << 10) as f64 + 65536.0;
            assert!(
                total as f64 <= allowed,
                "{name}: {total} bytes in {elapsed:?}, more than the rate and burst allow"
            );
        }
        rates
    });
    eprintln!(
        "limited tcp: {tcp_rate:.2} Mbit/s, limited udp: {udp_rate:.2} Mbit/s, limited 4 x tcp: {multi_rate:.2} Mbit/s, unlimited: {free_rate:.1} Mbit/s"
    );
    for (name, rate) in [("tcp", tcp_rate), ("udp", udp_rate), ("multi", multi_rate)] {
        assert!(rate <= 10.5, "{name}: {rate} Mbit/s over a 10 Mbit/s limit");
        assert!(rate >= 5.0, "{name}: {rate} Mbit/s, the limit should still let traffic through");
    }
    assert!(free_rate >= 100.0, "the unlimited task was slowed to {free_rate} Mbit/s");
    // The UDP sender met the drop policy, and the drops are counted.
    let udp_stats = stats_of(&a, "udp");
    assert!(f(&udp_stats, "net_tx_dropped") > 0.0, "{udp_stats}");
    assert_eq!(f(&stats_of(&a, "free"), "net_tx_dropped"), 0.0);
    // One connection is held by pacing alone: the drop policy never acts.
    assert_eq!(f(&stats_of(&a, "tcp"), "net_tx_dropped"), 0.0);
    // Four connections paced to the limit each send more than it: the drop
    // policy holds their sum.
    assert!(f(&stats_of(&a, "multi"), "net_tx_dropped") > 0.0);
    fw.wait_terminal(&["tcp".into(), "udp".into(), "free".into(), "multi".into()], LONG).await;
}

/// Acceptance 5: three CPU hogs on a 2-core agent wait in the run queue
/// clearly longer than the same work alone, and the preemptions by other
/// tasks are counted. Quotas are above what each uses, so none of the wait
/// is CFS throttling: it is contention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_queue_latency_shows_contention() {
    if !require_root("run_queue_latency_shows_contention") {
        return;
    }
    let _turn = serial().await;
    // Four cpus offered on a 2-core machine: three hogs of 1.0 each fit.
    let (m, a) = cluster("cpus:4;mem:1024;disk:1024;ports:[31000-31999]", &[]);
    let mut fw = TestFramework::start(&m.addr, info("hogs")).await;
    // Work in bursts and sleep briefly (about 0.9 cores): every wakeup
    // must find a CPU.
    let worker = "python3 -c 'import time\nwhile True:\n    end=time.perf_counter()+0.004\n    while time.perf_counter()<end: pass\n    time.sleep(0.0005)'";
    fw.launch(vec![Spec::new("baseline", worker, "cpus:1;mem:64")], LONG).await;
    fw.until(LONG, "baseline running", |f| f.last_state("baseline") == Some(TaskState::Running)).await;
    std::thread::sleep(Duration::from_secs(3));
    let base = stats_of(&a, "baseline");
    fw.driver.kill("baseline".into(), None).await.unwrap();
    fw.until(LONG, "baseline killed", |f| f.last_state("baseline") == Some(TaskState::Killed)).await;
    let hogs: Vec<String> = (0..3).map(|i| format!("hog{i}")).collect();
    fw.launch(hogs.iter().map(|h| Spec::new(h.as_str(), worker, "cpus:1;mem:64")).collect(), LONG).await;
    fw.until(LONG, "hogs running", |f| hogs.iter().all(|h| f.last_state(h) == Some(TaskState::Running))).await;
    std::thread::sleep(Duration::from_secs(4));
    let base_p99 = f(&base, "runq_latency_p99_us");
    eprintln!("baseline: run-queue p99 {base_p99} µs, throttled {}", base["cpus_nr_throttled"]);
    let mut by_task = 0.0;
    for h in &hogs {
        let s = stats_of(&a, h);
        let p99 = f(&s, "runq_latency_p99_us");
        by_task += f(&s, "preemptions_by_task");
        eprintln!(
            "{h}: run-queue p99 {p99} µs, preempted by self/task/system {}/{}/{}, throttled {}",
            s["preemptions_by_self"], s["preemptions_by_task"], s["preemptions_by_system"], s["cpus_nr_throttled"]
        );
        assert!(f(&s, "runq_latency_count") > 100.0, "{s}");
        assert!(p99 >= 4.0 * base_p99 && p99 >= 1000.0, "{h}: p99 {p99} µs vs baseline {base_p99} µs");
    }
    assert!(by_task > 0.0, "no preemptions by other tasks counted");
    check_runq_histogram(&a.metrics_text(), "hog0");
    for h in &hogs {
        fw.driver.kill(h.as_str().into(), None).await.unwrap();
    }
    fw.wait_terminal(&hogs, LONG).await;
}

/// The task's run-queue histogram in `/metrics` is a valid Prometheus
/// histogram: cumulative buckets with finite, increasing bounds (the last
/// one 2^22 µs), then `+Inf` equal to the count, which covers the samples.
fn check_runq_histogram(text: &str, task: &str) {
    let name = "agora_task_runq_latency_seconds";
    let series: Vec<&str> =
        text.lines().filter(|l| l.starts_with(name) && l.contains(&format!("task_id=\"{task}\""))).collect();
    let value = |l: &str| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    let mut bounds = Vec::new();
    let mut cums = Vec::new();
    for l in series.iter().filter(|l| l.starts_with(&format!("{name}_bucket"))) {
        let le = l.split("le=\"").nth(1).and_then(|r| r.split('"').next()).expect("le label");
        bounds.push(le.to_string());
        cums.push(value(l));
    }
    assert_eq!(bounds.last().map(String::as_str), Some("+Inf"), "{series:?}");
    let finite: Vec<f64> = bounds[..bounds.len() - 1].iter().map(|b| b.parse().unwrap()).collect();
    assert!(finite.windows(2).all(|w| w[0] < w[1]), "bounds not increasing: {finite:?}");
    assert_eq!(finite.last().copied(), Some(4.194304), "{finite:?}");
    assert!(cums.windows(2).all(|w| w[0] <= w[1]), "buckets not cumulative: {cums:?}");
    let count = series.iter().find(|l| l.starts_with(&format!("{name}_count"))).map(|l| value(l)).expect("count");
    assert_eq!(cums.last().copied(), Some(count), "+Inf differs from the count");
    assert!(count > 100.0, "{count}");
}

/// A finished task's stdout. The agent lists a task as completed once its
/// terminal update is acknowledged, which can come just after the framework
/// saw the update.
fn stdout_of(a: &Agent, task: &str) -> String {
    let mut sandbox = None;
    wait_until(LONG, "the task among the agent's completed tasks", || {
        sandbox = a.state()["completed_tasks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == task).and_then(|c| c["sandbox"].as_str().map(String::from)));
        sandbox.is_some()
    });
    let sandbox = sandbox.expect("waited for above");
    std::fs::read_to_string(std::path::Path::new(&sandbox).join("stdout")).unwrap_or_default()
}

/// The agent's descriptors open on files under `dir`.
fn open_files_under(agent_pid: u32, dir: &std::path::Path) -> usize {
    std::fs::read_dir(format!("/proc/{agent_pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)))
        .count()
}

/// The agent keeps a running task's cgroup files open between samples and
/// closes them when the task ends; it raises its own open-file limit for
/// them, and tasks start with the limit the agent was started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_files_stay_open_while_the_task_runs() {
    if !require_root("cgroup_files_stay_open_while_the_task_runs") {
        return;
    }
    let _turn = serial().await;
    // The agent starts with a soft limit below its hard one (the tests take
    // turns, so no other test starts a process meanwhile).
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with valid pointers.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let soft = 1024.min(lim.rlim_max);
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &libc::rlimit { rlim_cur: soft, rlim_max: lim.rlim_max }) };
    let started = std::panic::catch_unwind(|| cluster("cpus:2;mem:1024;disk:1024;ports:[31000-31999]", &[]));
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let (m, a) = started.expect("the cluster starts");
    let pid = a.proc.as_ref().expect("agent").child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let agent_soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("Max open files");
    assert_eq!(agent_soft, lim.rlim_max, "the agent raises its soft limit to the hard one");

    let mut fw = TestFramework::start(&m.addr, info("files")).await;
    fw.launch(vec![Spec::new("t", "ulimit -Sn; sleep 1000", "cpus:0.1;mem:64")], LONG).await;
    fw.until(LONG, "running", |f| f.last_state("t") == Some(TaskState::Running)).await;
    stats_of(&a, "t");
    let task_dirs: Vec<std::path::PathBuf> = a
        .cgroup_dirs()
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()))
        .collect();
    let open: usize = task_dirs.iter().map(|d| open_files_under(pid, d)).sum();
    assert!(open >= 5, "{open} of the task's cgroup files are open: {task_dirs:?}");
    fw.driver.kill("t".into(), None).await.unwrap();
    fw.wait_terminal(&["t".into()], LONG).await;
    assert_eq!(stdout_of(&a, "t").trim(), soft.to_string(), "the task's soft limit");
    wait_until(Duration::from_secs(5), "the task's cgroup files to be closed", || {
        task_dirs.iter().map(|d| open_files_under(pid, d)).sum::<usize>() == 0
    });
}

/// Block IO and memory come from the task's cgroup: a task that writes and
/// reads back 32 MiB with direct IO reports at least that much, one that
/// holds 96 MiB reports it as resident and peak memory, an idle task about
/// nothing; user CPU time follows the work done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_io_and_memory_are_the_tasks_own() {
    if !require_root("block_io_and_memory_are_the_tasks_own") {
        return;
    }
    // The sandboxes are under the temporary directory: direct IO needs it on
    // a block device.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let tmp = std::ffi::CString::new(std::env::temp_dir().into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid path and a buffer of the right type.
    if unsafe { libc::statfs(tmp.as_ptr(), &mut fs) } == 0 && fs.f_type == libc::TMPFS_MAGIC {
        eprintln!("block_io_and_memory_are_the_tasks_own: skipped, the temporary directory is on tmpfs (no block IO)");
        return;
    }
    let _turn = serial().await;
    let (m, a) = cluster("cpus:2;mem:1024;disk:1024;ports:[31000-31999]", &[]);
    let mut fw = TestFramework::start(&m.addr, info("io")).await;
    let io = "dd if=/dev/zero of=data bs=1M count=32 oflag=direct status=none && \
              dd if=data of=/dev/null bs=1M iflag=direct status=none && sleep 1000";
    let mem =
        "python3 -c 'import time\nb=bytearray(96<<20)\nfor i in range(0, len(b), 4096): b[i]=1\ntime.sleep(1000)'";
    fw.launch(
        vec![
            Spec::new("io", io, "cpus:0.5;mem:128"),
            Spec::new("mem", mem, "cpus:0.5;mem:256"),
            Spec::new("idle", "sleep 1000", "cpus:0.1;mem:32"),
        ],
        LONG,
    )
    .await;
    let mib = (1u64 << 20) as f64;
    wait_until(LONG, "the IO task's 32 MiB written and read", || {
        a.statistics("io").is_some_and(|s| {
            s["blkio_write_bytes"].as_f64().unwrap_or(0.0) >= 32.0 * mib
                && s["blkio_read_bytes"].as_f64().unwrap_or(0.0) >= 32.0 * mib
        })
    });
    wait_until(LONG, "the memory task's 96 MiB", || {
        a.statistics("mem").is_some_and(|s| s["mem_rss_bytes"].as_f64().unwrap_or(0.0) >= 96.0 * mib)
    });
    let (io, mem, idle) = (stats_of(&a, "io"), stats_of(&a, "mem"), stats_of(&a, "idle"));
    eprintln!("io: {io}\nmem: {mem}\nidle: {idle}");
    // Nothing else is counted to them: their own figures stay near what
    // they did.
    assert!(f(&io, "blkio_write_bytes") < 40.0 * mib, "{io}");
    assert!(f(&mem, "mem_peak_bytes") >= 96.0 * mib && f(&mem, "mem_total_bytes") < 160.0 * mib, "{mem}");
    assert!(f(&mem, "blkio_write_bytes") < mib, "{mem}");
    assert!(f(&idle, "blkio_read_bytes") + f(&idle, "blkio_write_bytes") < mib, "{idle}");
    assert!(f(&idle, "mem_rss_bytes") < 8.0 * mib, "{idle}");
    assert!(f(&idle, "cpus_user_time_secs") < 0.1, "{idle}");
    assert!(f(&mem, "cpus_user_time_secs") + f(&mem, "cpus_system_time_secs") > 0.0, "{mem}");
    for t in ["io", "mem", "idle"] {
        fw.driver.kill(t.into(), None).await.unwrap();
    }
    fw.wait_terminal(&["io".into(), "mem".into(), "idle".into()], LONG).await;
}

/// Acceptance 6: an OOM-killed task is FAILED with the memory reason and the
/// OOM event is in its statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_is_visible_in_the_statistics() {
    if !require_root("oom_kill_is_visible_in_the_statistics") {
        return;
    }
    let _turn = serial().await;
    let (m, a) = cluster("cpus:2;mem:1024;disk:1024;ports:[31000-31999]", &[]);
    let mut fw = TestFramework::start(&m.addr, info("oom")).await;
    fw.launch(vec![Spec::new("hog", "head -c 400000000 /dev/zero | tail", "cpus:0.5;mem:64")], LONG).await;
    fw.wait_terminal(&["hog".into()], LONG).await;
    let s = &fw.latest()["hog"];
    assert_eq!(s.state, TaskState::Failed);
    assert_eq!(s.reason, Some(Reason::ReasonContainerLimitationMemory));
    let st = stats_of(&a, "hog");
    assert!(f(&st, "oom_kills") >= 1.0, "{st}");
    let text = a.metrics_text();
    assert!(text.contains("agora_task_oom_kills_total"));
    // The eBPF count on its own, where the kernel has the mark_victim hook.
    if text.contains("program=\"mark_victim\"") {
        assert!(f(&st, "oom_kills_ebpf") >= 1.0, "{st}");
    } else {
        eprintln!("oom_kill_is_visible_in_the_statistics: no mark_victim program; the eBPF count is not checked");
    }
}

/// Acceptance 7: with eBPF disabled the agent still runs tasks and reports
/// cgroup-based usage, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ebpf_the_agent_falls_back_to_cgroups() {
    if !require_root("without_ebpf_the_agent_falls_back_to_cgroups") {
        return;
    }
    let _turn = serial().await;
    let (m, a) = cluster("cpus:2;mem:1024;disk:1024;ports:[31000-31999]", &["--ebpf", "off"]);
    assert!(a.log().contains("eBPF accounting is off (disabled with --ebpf off)"), "{}", a.log());
    assert!(a.metrics_text().contains("ebpf_enabled 0"));
    let mut fw = TestFramework::start(&m.addr, info("fallback")).await;
    fw.launch(vec![Spec::new("spin", "timeout 3 sh -c 'while :; do :; done'; true", "cpus:0.5;mem:64")], LONG).await;
    fw.until(LONG, "running", |f| f.last_state("spin") == Some(TaskState::Running)).await;
    std::thread::sleep(Duration::from_secs(2));
    let s = stats_of(&a, "spin");
    assert_eq!(s["source"], "cgroupfs");
    assert!(f(&s, "cpus_cgroup_time_secs") > 0.3, "{s}");
    assert!(s.get("net_tx_bytes").is_none(), "no per-task network numbers without eBPF: {s}");
    fw.wait_terminal(&["spin".into()], LONG).await;
    assert_eq!(fw.last_state("spin"), Some(TaskState::Finished));
}

/// Kernel ids of the loaded eBPF programs and maps that carry the names of
/// the agent's (names are cut to 15 characters by the kernel).
fn our_bpf_objects() -> (std::collections::BTreeSet<u32>, std::collections::BTreeSet<u32>) {
    const PROGRAMS: [&str; 8] =
        ["sched_switch", "mark_victim", "cpu_state_tick", "ingress", "egress", "bind4", "bind6", "tcp_pacing"];
    const MAPS: [&str; 5] = ["COUNTERS", "POLICY", "EGRESS", "CPU_STATE", "STATS"];
    let programs = aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str().is_some_and(|n| PROGRAMS.contains(&n)))
        .map(|p| p.id())
        .collect();
    let maps = aya::maps::loaded_maps()
        .flatten()
        .filter(|m| m.name_as_str().is_some_and(|n| MAPS.contains(&n)))
        .map(|m| m.id())
        .collect();
    (programs, maps)
}

/// One series of the agent's metrics, e.g. `ebpf_enabled` or
/// `agora_agent_ebpf_map_entries{map="POLICY"}`.
fn metric(a: &Agent, series: &str) -> f64 {
    let key = format!("{series} ");
    let text = a.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the metrics:\n{text}"))
}

fn map_entries(a: &Agent, map: &str) -> f64 {
    metric(a, &format!("agora_agent_ebpf_map_entries{{map=\"{map}\"}}"))
}

/// Acceptance 8: a task's map entries go when it ends; after the agent stops,
/// none of its programs, attachments, maps or task cgroups remain. On the
/// way, the agent's self-monitoring (run with `--ebpf-stats on`) shows its
/// programs, their runs and run time, and its maps' fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_stop_leaves_nothing_behind() {
    if !require_root("agent_stop_leaves_nothing_behind") {
        return;
    }
    let _turn = serial().await;
    let (programs_before, maps_before) = our_bpf_objects();
    let (m, mut a) = cluster("cpus:2;mem:1024;disk:1024;ports:[31000-31999];egress_mbps:100", &["--ebpf-stats", "on"]);
    let (programs, maps) = our_bpf_objects();
    let programs: Vec<u32> = programs.difference(&programs_before).copied().collect();
    let maps: Vec<u32> = maps.difference(&maps_before).copied().collect();
    // sched_switch, ingress, egress, bind4, bind6 and pacing at least;
    // mark_victim and cpu_state_tick where the kernel has their hooks.
    assert!(programs.len() >= 6, "the agent's programs are not all loaded: {programs:?}");
    assert!(maps.len() >= 5, "the agent's maps are not all there: {maps:?}");
    assert_eq!(metric(&a, "agora_agent_ebpf_programs_loaded"), programs.len() as f64);
    assert_eq!(metric(&a, "agora_agent_ebpf_run_stats_enabled"), 1.0);
    assert_eq!(metric(&a, "agora_agent_ebpf_map_max_entries{map=\"POLICY\"}"), 16384.0);

    // A task that ends: its entries go.
    let mut fw = TestFramework::start(&m.addr, info("cleanup")).await;
    fw.launch(vec![Spec::new("short", "sleep 2", "cpus:0.1;mem:64;ports:[31000-31000];egress_mbps:10")], LONG).await;
    fw.until(LONG, "running", |f| f.last_state("short") == Some(TaskState::Running)).await;
    for map in ["POLICY", "COUNTERS", "EGRESS"] {
        assert_eq!(map_entries(&a, map), 1.0, "{map} while the task runs");
    }
    fw.wait_terminal(&["short".into()], LONG).await;
    // The registration goes once the task's cgroup is removed, just after
    // the task is reported finished.
    wait_until(Duration::from_secs(5), "the ended task's map entries to go", || {
        ["POLICY", "COUNTERS", "EGRESS"].iter().all(|map| map_entries(&a, map) == 0.0)
    });
    let runs = metric(&a, "agora_agent_ebpf_program_runs_total{program=\"sched_switch\"}");
    let secs = metric(&a, "agora_agent_ebpf_program_run_seconds_total{program=\"sched_switch\"}");
    assert!(runs > 0.0 && secs > 0.0, "sched_switch ran {runs} times in {secs} s");

    // A task still running when the agent stops.
    fw.launch(vec![Spec::new("long", "sleep 1000", "cpus:0.1;mem:64;egress_mbps:10")], LONG).await;
    fw.until(LONG, "running", |f| f.last_state("long") == Some(TaskState::Running)).await;
    let dirs = a.cgroup_dirs();
    assert!(!dirs.is_empty());
    let task_dirs: Vec<_> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()))
        .collect();
    assert!(!task_dirs.is_empty(), "the running task has cgroups under {dirs:?}");
    let status = a.proc.as_mut().expect("agent").stop(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "the agent exits cleanly on SIGTERM: {status:?}");

    for d in task_dirs.iter().chain(&dirs) {
        assert!(!d.exists(), "{} remains after the agent stopped", d.display());
    }
    // The kernel frees programs and maps once their last reference goes
    // (the links closed with the agent); that can lag the exit briefly.
    wait_until(Duration::from_secs(10), "the agent's programs and maps to be freed", || {
        let (p, m) = our_bpf_objects();
        programs.iter().all(|id| !p.contains(id)) && maps.iter().all(|id| !m.contains(id))
    });
    let links: Vec<u32> = aya::programs::loaded_links().flatten().map(|l| l.prog_id).collect();
    assert!(programs.iter().all(|id| !links.contains(id)), "links to the agent's programs remain: {links:?}");
}

/// `agora top --once` on a cluster: each order puts the task that uses the
/// most of it first, with figures that match what the task does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_orders_tasks_by_what_they_use() {
    if !require_root("top_orders_tasks_by_what_they_use") {
        return;
    }
    let _turn = serial().await;
    let (m, _a) = cluster("cpus:2;mem:1024;disk:1024;ports:[31000-31999]", &[]);
    let sink = Sink::start();
    let mut fw = TestFramework::start(&m.addr, info("top")).await;
    let net = format!(
        "python3 -c 'import socket,time\ns=socket.create_connection((\"127.0.0.1\", {}))\nd=b\"x\"*65536\nwhile True:\n    s.sendall(d); time.sleep(0.01)'",
        sink.port
    );
    fw.launch(
        vec![
            Spec::new("spin", "while :; do :; done", "cpus:0.5;mem:64"),
            Spec::new("net", &net, "cpus:0.2;mem:64"),
            Spec::new(
                "io",
                "while :; do dd if=/dev/zero of=f bs=1M count=8 oflag=direct 2>/dev/null; sleep 0.05; done",
                "cpus:0.2;mem:64",
            ),
            Spec::new("idle", "sleep 1000", "cpus:0.1;mem:64"),
        ],
        LONG,
    )
    .await;
    for t in ["spin", "net", "io", "idle"] {
        fw.until(LONG, "running", |f| f.last_state(t) == Some(TaskState::Running)).await;
    }
    std::thread::sleep(Duration::from_secs(1));
    let top = |args: &[&str]| -> std::process::Output {
        let out = std::process::Command::new(bin("agora"))
            .args(["top", "--master", &m.addr, "--once", "--interval", "2secs"])
            .args(args)
            .output()
            .expect("run agora top");
        assert!(out.status.success(), "agora top {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let rows = |sort: &str| -> Vec<Value> {
        let out = top(&["--json", "--sort", sort]);
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON rows").as_array().cloned().expect("an array")
    };
    let order = |rows: &[Value]| rows.iter().map(|r| r["task_id"].as_str().unwrap().to_string()).collect::<Vec<_>>();

    let by_cpu = rows("cpu");
    assert_eq!(by_cpu.len(), 4, "{by_cpu:?}");
    assert_eq!(order(&by_cpu)[0], "spin", "{by_cpu:?}");
    let spin = &by_cpu[0];
    let cores = spin["cpus_used"].as_f64().unwrap();
    assert!((0.4..=0.6).contains(&cores), "spin uses {cores} cores under a 0.5 limit");
    assert!(spin["throttled_share"].as_f64().unwrap() > 0.5, "a spinner at its limit is throttled: {spin}");
    assert_eq!(spin["framework"], "top");
    assert_eq!(spin["agent"], "127.0.0.1");

    let by_net = rows("net");
    assert_eq!(order(&by_net)[0], "net", "{by_net:?}");
    let tx = by_net[0]["net_tx_bytes_per_sec"].as_f64().unwrap();
    assert!(tx > 1e6, "net sends about 6 MB/s, top says {tx} B/s");

    let by_io = rows("io");
    assert_eq!(order(&by_io)[0], "io", "{by_io:?}");
    let io = by_io[0]["io_bytes_per_sec"].as_f64().unwrap();
    assert!(io > 1e6, "io writes about 100 MB/s, top says {io} B/s");

    let by_mem = rows("mem");
    assert_eq!(by_mem.len(), 4);
    let by_runq = rows("runq");
    assert!(by_runq.iter().any(|r| r["runq_latency_p99_us"].is_u64()), "{by_runq:?}");

    // The table people read.
    let text = String::from_utf8(top(&["--sort", "cpu", "--limit", "2"]).stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("agora top: 1 agents, 2 tasks, by cpu"), "{text}");
    assert!(lines[1].starts_with("TASK") && lines[1].contains("RUNQ P99"), "{text}");
    assert!(lines[2].starts_with("spin "), "{text}");
    assert_eq!(lines.len(), 4, "{text}");

    // A master that is not there: a clear error, not a hang.
    let out = std::process::Command::new(bin("agora"))
        .args(["top", "--master", "127.0.0.1:1", "--once"])
        .output()
        .expect("run agora top");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("agora:"), "{out:?}");
}
