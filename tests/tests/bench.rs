//! The load generator's scenarios run end to end on small numbers and write
//! complete reports. Their figures are not judged here: speed lives in
//! `cargo xtask bench` and docs/benchmarks.md.

use std::process::Command;

use agora_tests::{bin, is_root, require_root, TempDir};
use serde_json::Value;

fn report(dir: &TempDir, name: &str) -> Value {
    let text = std::fs::read(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_slice(&text).expect("a JSON report")
}

/// Runs a scenario with `args` and returns its report, after checking what
/// every report must be: the machine and revision named, a plot beside it,
/// no errors anywhere, and every latency summary non-empty and in order.
fn run_scenario(scenario: &str, args: &[&str]) -> Value {
    let out = TempDir::new(&format!("bench-{scenario}"));
    let run = Command::new(bin("agora-bench"))
        .arg(scenario)
        .args(args)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run agora-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let r = report(&out, &format!("{scenario}.json"));
    assert_eq!(r["scenario"], scenario);
    assert!(r["machine"]["cpus"].as_u64().unwrap() > 0, "{r}");
    assert!(!r["machine"]["kernel"].as_str().unwrap().is_empty(), "{r}");
    assert!(!r["git_revision"].as_str().unwrap().is_empty(), "{r}");
    let svg = std::fs::read_to_string(out.path().join(format!("{scenario}.svg"))).expect("a plot");
    assert!(svg.contains("<svg") && svg.contains("polyline"), "the plot has no lines");
    sane("", &r);
    // A baseline run prints each figure's ratio to the earlier report.
    let again = Command::new(bin("agora-bench"))
        .arg(scenario)
        .args(args)
        .arg("--out")
        .arg(out.path().join("again"))
        .arg("--baseline")
        .arg(out.path().join(format!("{scenario}.json")))
        .output()
        .expect("run agora-bench");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let text = String::from_utf8_lossy(&again.stdout);
    // The size of the run is the same both times: at least one ratio of 1.
    assert!(text.contains("against the baseline") && text.contains("1.000x"), "{text}");
    r
}

/// No errors, and every latency summary has samples in order.
fn sane(path: &str, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(e) = m.get("errors") {
                assert_eq!(e.as_u64(), Some(0), "errors at {path}: {v}");
            }
            if m.contains_key("p50_us") {
                let get = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{path}.{k}: {v}"));
                assert!(get("count") > 0, "no samples at {path}: {v}");
                assert!(get("p50_us") <= get("p99_us"), "{path}: {v}");
                assert!(get("p99_us") <= get("p999_us"), "{path}: {v}");
                assert!(get("p999_us") <= get("max_us"), "{path}: {v}");
                assert!(get("p50_us") > 0, "{path}: {v}");
            }
            for (k, v) in m {
                sane(&format!("{path}.{k}"), v);
            }
        }
        Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| sane(&format!("{path}[{i}]"), v)),
        Value::Number(n) => assert!(n.as_f64().is_some_and(f64::is_finite), "{path}: {n}"),
        _ => {}
    }
}

#[test]
fn launch_scenario_places_every_task() {
    let r = run_scenario("launch", &["--agents", "3", "--tasks", "300"]);
    assert_eq!(r["tasks"], 300);
    assert_eq!(r["tasks_launched_on_agents"], 300, "{r}");
    assert_eq!(r["launch_to_finished"]["count"], 300, "{r}");
    assert!(r["tasks_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    // The master's own CPU time over the placement is measured.
    assert!(r["master_cpu_per_task_us"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn steady_scenario_measures_the_master_per_agent() {
    let r = run_scenario("steady", &["--quick", "--sizes", "200,600"]);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{r}");
    for run in runs {
        let n = run["agents"].as_f64().unwrap();
        // The master itself counts every agent.
        assert_eq!(run["master_agents_active"].as_f64(), Some(n), "{r}");
        // Pinged every second over the window, and every ping answered.
        assert!(run["pongs"].as_f64().unwrap() >= n, "{r}");
        assert!(run["rss_kib"].as_u64().unwrap() > run["idle_rss_kib"].as_u64().unwrap(), "{r}");
        let per_agent = run["rss_per_agent_kib"].as_f64().unwrap();
        assert!(per_agent > 0.0, "{r}");
        // About 30 KiB in a debug build at these sizes (15 KiB in release at
        // 10,000 agents); a queue reserving its bound per agent made it 540.
        // AddressSanitizer's shadow and quarantine make RSS meaningless.
        if std::env::var_os("ASAN_OPTIONS").is_none() {
            assert!(per_agent < 128.0, "the master holds {per_agent} KiB per agent: {r}");
        } else {
            eprintln!("not checking memory per agent under AddressSanitizer");
        }
        assert!(run["cpu_percent"].as_f64().unwrap() >= 0.0, "{r}");
    }
}

#[test]
fn fanout_scenario_times_offers_in_both_encodings() {
    let r = run_scenario("fanout", &["--quick", "--agents", "60", "--frameworks", "4"]);
    for encoding in ["json", "flatbuffers"] {
        let e = &r[encoding];
        assert_eq!(e["single"]["count"], e["single_tasks"], "{r}");
        // Every agent timed in every burst round.
        let rounds = e["burst_round_ms"].as_array().unwrap().len() as u64;
        assert_eq!(e["burst"]["count"].as_u64(), Some(60 * rounds), "{r}");
        // The master sent at least every offer the frameworks got.
        assert!(e["master_offers_sent"].as_f64().unwrap() >= e["offers_received"].as_f64().unwrap(), "{r}");
    }
    assert!(r["p99_json_over_flatbuffers"]["burst"].as_f64().unwrap() > 0.0, "{r}");
}

/// Processes whose command line names `needle` (this run's agent and
/// Slurm daemons name their scratch directory).
fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

fn scratch_dirs(prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

#[test]
fn real_scenario_runs_true_through_an_agent_and_through_slurm() {
    let before = scratch_dirs("agora-bench-real-");
    let r = run_scenario("real", &["--quick"]);
    assert_eq!(r["tasks"], 100, "{r}");
    // Every task ran and FINISHED (a task ending otherwise fails the run).
    assert_eq!(r["agora"]["launch_to_finished"]["count"], 100, "{r}");
    assert!(r["agora"]["tasks_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    if is_root() {
        // As root the agent isolates each task, and Slurm (installed by
        // `cargo xtask setup`) runs the same jobs.
        assert_eq!(r["agora"]["isolation"], "cgroups", "{r}");
        assert!(r.get("slurm_skipped").is_none(), "the Slurm baseline did not run: {r}");
        assert_eq!(r["slurm"]["completed"], 100, "{r}");
        assert!(r["slurm_secs_over_agora_secs"].as_f64().unwrap() > 0.0, "{r}");
    } else {
        eprintln!("SKIPPED the Slurm half (needs root): {}", r["slurm_skipped"]);
        assert!(r["slurm_skipped"].is_string(), "{r}");
    }
    // The agent, the Slurm daemons and the jobs are gone, and so is the
    // run's scratch directory.
    let left = processes_naming("agora-bench-real-");
    assert!(left.is_empty(), "left running: {left:?}");
    let new: Vec<_> = scratch_dirs("agora-bench-real-").into_iter().filter(|d| !before.contains(d)).collect();
    assert!(new.is_empty(), "left behind: {new:?}");
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
    sane("", &r);
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
