//! The load generator's scenarios run end to end on small numbers and write
//! complete reports. Their figures are not judged here: speed lives in
//! `cargo xtask bench` and docs/benchmarks.md.

use std::process::Command;

use agora_tests::{bin, require_root, TempDir};
use serde_json::Value;

fn report(dir: &TempDir, name: &str) -> Value {
    let text = std::fs::read(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_slice(&text).expect("a JSON report")
}

#[test]
fn launch_scenario_places_every_task() {
    let out = TempDir::new("bench-launch");
    let run = Command::new(bin("agora-bench"))
        .args(["launch", "--agents", "3", "--tasks", "300", "--out"])
        .arg(out.path())
        .output()
        .expect("run agora-bench");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let r = report(&out, "launch.json");
    assert_eq!(r["tasks"], 300);
    assert!(r["tasks_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["launch_to_finished"]["p50_us"].is_number(), "{r}");
}

#[test]
fn ebpf_scenario_measures_and_leaves_nothing_behind() {
    if !require_root("ebpf_scenario_measures_and_leaves_nothing_behind") {
        return;
    }
    let out = TempDir::new("bench-ebpf");
    let run = Command::new(bin("agora-bench"))
        .args(["ebpf", "--rounds", "2", "--round-trips", "5000", "--ebpf-tasks", "50", "--out"])
        .arg(out.path())
        .output()
        .expect("run agora-bench");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let r = report(&out, "ebpf.json");
    let o = &r["overhead"];
    assert_eq!(o["ns_per_round_trip_without"].as_array().unwrap().len(), 2, "{r}");
    assert!(o["median_with_ns"].as_f64().unwrap() > 0.0, "{r}");
    assert!(o["overhead_percent"].as_f64().unwrap().is_finite(), "{r}");
    let programs = o["programs"].as_array().unwrap();
    assert!(programs.iter().any(|p| p["name"] == "sched_switch" && p["runs"].as_u64().unwrap() > 0), "{r}");
    assert_eq!(r["tasks"], 50);
    for k in ["register_ms", "unregister_ms", "read_per_interval_ms", "per_task_attach_ms", "per_task_detach_ms"] {
        assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {r}");
    }
    // Its cgroups are gone (they are named agora_bench_<pid>, below the
    // cgroups this test runs in).
    let mut leftovers = Vec::new();
    find_named(std::path::Path::new("/sys/fs/cgroup"), "agora_bench_", 8, &mut leftovers);
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn find_named(dir: &std::path::Path, prefix: &str, depth: u32, found: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name().to_string_lossy().starts_with(prefix) {
            found.push(e.path());
        } else if depth > 0 {
            find_named(&e.path(), prefix, depth - 1, found);
        }
    }
}
