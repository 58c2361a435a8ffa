//! The eBPF programs against the running kernel: they load (the verifier
//! accepts them), attach, and count a real process in a real task cgroup.
//! Needs root; skips with a reason otherwise.

use agora_agent::cgroups::{Cgroups, Limits};
use agora_agent::containerizer::{self, LaunchSpec};
use agora_agent::ebpf::Ebpf;
use agora_ebpf_common::{PortRange, TaskPolicy, MAX_PORT_RANGES};
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
}

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
    let name = format!("agora_ebpf_{test}_{}", std::process::id());
    Some(CleanUp {
        cg: Cgroups::setup(&name).expect("cgroups"),
        sandbox: std::env::temp_dir().join(format!("{name}-sandbox")),
    })
}

#[tokio::test]
async fn programs_load_attach_and_count_a_real_task() {
    let Some(guard) = set_up("programs_load_attach_and_count_a_real_task") else { return };
    let cg = &guard.cg;
    let identity = cg.identity_dir().expect("a v2 identity directory");
    let mut ebpf = Ebpf::load(&identity, true).expect("eBPF programs load and attach");
    // sched_switch, ingress, egress, bind4, bind6, tcp_pacing; mark_victim
    // where the kernel has it.
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
