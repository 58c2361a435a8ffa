//! The eBPF programs against the running kernel: they load (the verifier
//! accepts them), attach, and count a real process in a real task cgroup.
//! Needs root; skips with a reason otherwise.

use agora_agent::cgroups::{Cgroups, Limits};
use agora_agent::containerizer::{self, LaunchSpec};
use agora_agent::ebpf::Ebpf;
use agora_ebpf_common::{CpuState, PortRange, TaskPolicy, MAX_PORT_RANGES};
use agora_proto::mesos::CommandInfo;

fn policy(ports: &[(u16, u16)]) -> TaskPolicy {
    let mut p = TaskPolicy {
        egress_bytes_per_sec: 0,
        egress_burst_ns: 0,
        enforce_ports: 1,
        n_port_ranges: ports.len() as u32,
        ports: [PortRange::default(); MAX_PORT_RANGES],
    };
    for (i, &(begin, end)) in ports.iter().enumerate() {
        p.ports[i] = PortRange { begin, end };
    }
    p
}

/// Removes the test's cgroups (killing what is left in them) and its
/// sandbox, even when an assertion fails.
struct CleanUp {
    cg: Cgroups,
    sandbox: std::path::PathBuf,
    /// Held until the test is cleaned up: these tests run one at a time
    /// (see [`ONE_AT_A_TIME`]).
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// The tests here measure tasks on the machine's CPUs (one assumes its
/// spinner has a CPU to itself but for a few interruptions), so they take
/// turns rather than run beside each other's tasks and programs: run
/// together on two CPUs, the stale-record test failed about one run in two.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Drop for CleanUp {
    fn drop(&mut self) {
        self.cg.clean_stale();
        self.cg.remove();
        let _ = std::fs::remove_dir_all(&self.sandbox);
    }
}

/// Agent-like cgroups for test `test`, or `None` (said why) without root.
fn set_up(test: &str) -> Option<CleanUp> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root");
        return None;
    }
    // A test that failed still hands the turn on.
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let name = format!("agora_ebpf_{test}_{}", std::process::id());
    Some(CleanUp {
        cg: Cgroups::setup(&name).expect("cgroups"),
        sandbox: std::env::temp_dir().join(format!("{name}-sandbox")),
        _turn: turn,
    })
}

#[tokio::test]
async fn programs_load_attach_and_count_a_real_task() {
    let Some(guard) = set_up("programs_load_attach_and_count_a_real_task") else { return };
    let cg = &guard.cg;
    let identity = cg.identity_dir().expect("a v2 identity directory");
    let mut ebpf = Ebpf::load(&identity, true).expect("eBPF programs load and attach");
    // sched_switch, ingress, egress, bind4, bind6, tcp_pacing; mark_victim
    // and cpu_state_tick where the kernel has their hooks.
    assert!(ebpf.programs_loaded() >= 6, "{}", ebpf.programs_loaded());

    let sandbox = guard.sandbox.clone();
    // Spin for a second, then bind an allowed and a forbidden port.
    let script = r#"
import socket, time
end = time.time() + 1.0
while time.time() < end:
    pass
ok = socket.socket(); ok.bind(("127.0.0.1", 40007)); ok.close()
try:
    bad = socket.socket(); bad.bind(("127.0.0.1", 40008)); print("bound")
except PermissionError:
    print("denied")
"#;
    let spec = LaunchSpec {
        container_id: "t1".into(),
        sandbox: sandbox.clone(),
        command: CommandInfo {
            value: Some("python3".into()),
            shell: Some(false),
            arguments: vec!["python3".into(), "-c".into(), script.into()],
            ..Default::default()
        },
        env: vec![],
        mounts: vec![],
        limits: Limits { cpus: 0.0, mem_bytes: None },
    };
    // The task's cgroup exists and is registered before the process runs.
    let task_cg = containerizer::prepare(&spec, cg).expect("task cgroup");
    let id = task_cg.cgroup_id().expect("cgroup id");
    ebpf.register(id, policy(&[(40007, 40007)])).expect("register");
    let c = containerizer::launch(&spec, Some(task_cg)).expect("launch");
    let cgroup = c.cgroup.clone().expect("task cgroup");
    let status = c.child.wait().await.expect("wait");
    assert!(status.success(), "{status:?}");
    let out = std::fs::read_to_string(sandbox.join("stdout")).unwrap();
    assert_eq!(out.trim(), "denied", "stderr: {}", std::fs::read_to_string(sandbox.join("stderr")).unwrap_or_default());

    let counters = ebpf.read(id).expect("counters");
    let cgroup_ns = cgroup.stats().cpu_usage_ns.expect("cpuacct");
    let ebpf_s = counters.cpu_ns as f64 / 1e9;
    let cg_s = cgroup_ns as f64 / 1e9;
    eprintln!("on-CPU: eBPF {ebpf_s:.3} s, cgroup {cg_s:.3} s; bind denied {}", counters.bind_denied);
    assert!(ebpf_s > 0.8, "the task spun for a second: {ebpf_s}");
    assert!((ebpf_s - cg_s).abs() / cg_s < 0.05, "eBPF {ebpf_s} vs cgroup {cg_s}");
    assert_eq!(counters.bind_denied, 1);
    let stats = ebpf.stats();
    assert!(stats.programs.iter().any(|p| p.name == "sched_switch" && p.run_count > 0), "{stats:?}");

    ebpf.unregister(id);
    assert!(ebpf.read(id).is_none(), "map entries are removed");
    assert!(ebpf.stats().maps.iter().all(|m| m.entries == 0), "{:?}", ebpf.stats().maps);
    containerizer::cleanup(c.pid, Some(&cgroup));
    drop(ebpf);
    let dirs = cg.dirs();
    drop(guard);
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

/// A CPU can change threads without a traced switch (virtualised kernels
/// do), leaving its record on a thread that no longer runs there: the run in
/// progress of the thread that does would then be counted for nobody until
/// it leaves the CPU, which a spinner may not do for seconds. The record is
/// mended within a tick: here each CPU's record is overwritten as such a
/// switch would leave it, while a task spins.
#[tokio::test]
async fn a_cpu_record_left_by_an_untraced_switch_is_mended() {
    let Some(guard) = set_up("a_cpu_record_left_by_an_untraced_switch_is_mended") else { return };
    let identity = guard.cg.identity_dir().expect("a v2 identity directory");
    let mut ebpf = Ebpf::load(&identity, false).expect("eBPF programs load and attach");
    if !ebpf.programs().contains(&"cpu_state_tick") {
        eprintln!("SKIPPED a_cpu_record_left_by_an_untraced_switch_is_mended: no hrtimer_expire_entry hook");
        return;
    }
    let spec = LaunchSpec {
        container_id: "t1".into(),
        sandbox: guard.sandbox.clone(),
        command: CommandInfo { value: Some("while :; do :; done".into()), ..Default::default() },
        env: vec![],
        mounts: vec![],
        limits: Limits { cpus: 0.0, mem_bytes: None },
    };
    let task_cg = containerizer::prepare(&spec, &guard.cg).expect("task cgroup");
    let id = task_cg.cgroup_id().expect("cgroup id");
    ebpf.register(id, policy(&[])).expect("register");
    let c = containerizer::launch(&spec, Some(task_cg)).expect("launch");
    let cgroup = c.cgroup.clone().expect("task cgroup");
    let spinner = c.pid as u32;
    let shown = |ebpf: &Ebpf| ebpf.running().into_iter().find(|s| s.whole() && s.tid == spinner);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // A thread that is not running (the test process's main thread, which
    // waits for the tests), as a switch not traced would leave a record.
    let stale = CpuState::new(std::process::id(), 0, 1, 0, 0);
    let mut waits = Vec::new();
    for _ in 0..20 {
        ebpf.set_cpu_states(stale).expect("write the CPU records");
        let start = std::time::Instant::now();
        // The spinner has a CPU to itself but for a few interruptions: it is
        // shown again within a tick of the write, under its cgroup.
        let s = loop {
            if let Some(s) = shown(&ebpf) {
                break s;
            }
            assert!(start.elapsed() < std::time::Duration::from_millis(500), "the spinner's CPU record stays stale");
            std::thread::sleep(std::time::Duration::from_micros(500));
        };
        waits.push(start.elapsed());
        assert_eq!(s.cgroup_id, id, "{s:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Mended with the run's true start: the run in progress counts whole.
    let counters = ebpf.read_many(&[id]).remove(&id).expect("counters");
    let cgroup_ns = cgroup.stats().cpu_usage_ns.expect("cpu.stat");
    containerizer::cleanup(c.pid, Some(&cgroup));
    ebpf.unregister(id);
    let (e, cg) = (counters.cpu_ns as f64 / 1e9, cgroup_ns as f64 / 1e9);
    eprintln!("mended within {:?} at most; eBPF {e:.3} s, cgroup {cg:.3} s", waits.iter().max());
    assert!(cg > 0.3, "the spinner ran for most of the test: {cg}");
    assert!((e - cg).abs() / cg < 0.05, "eBPF {e} vs cgroup {cg}");
    drop(ebpf);
    drop(guard);
}

/// The task maps have a fixed bound: registering past it fails with a clear
/// error, is counted, and leaves the registered tasks as they were.
#[tokio::test]
async fn a_full_map_refuses_registration_and_counts_it() {
    let Some(guard) = set_up("a_full_map_refuses_registration_and_counts_it") else { return };
    let identity = guard.cg.identity_dir().expect("a v2 identity directory");
    let mut ebpf = Ebpf::load(&identity, false).expect("eBPF programs load and attach");
    // Ids that no cgroup has: registration only fills the maps.
    let ids = (1u64 << 62)..(1u64 << 62) + agora_ebpf_common::MAX_TASKS as u64;
    for id in ids.clone() {
        ebpf.register(id, policy(&[])).expect("room for MAX_TASKS tasks");
    }
    let err = ebpf.register(7, policy(&[])).expect_err("the map is full");
    assert_eq!(err, "the eBPF task maps are full (16384 tasks)");
    let stats = ebpf.stats();
    assert_eq!(stats.registrations_failed, 1);
    let policy_fill = stats.maps.iter().find(|m| m.name == "POLICY").expect("POLICY");
    assert_eq!((policy_fill.entries, policy_fill.max_entries), (agora_ebpf_common::MAX_TASKS as u64, 16384));
    assert!(ebpf.read(ids.start).is_some(), "earlier registrations are untouched");
    assert!(ebpf.read(7).is_none(), "a failed registration leaves nothing behind");
    for id in ids {
        ebpf.unregister(id);
    }
    assert!(ebpf.stats().maps.iter().all(|m| m.entries == 0));
}
