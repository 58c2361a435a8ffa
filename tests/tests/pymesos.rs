//! Acceptance 5: the unmodified PyPI `pymesos` driver runs a scheduler that
//! launches 20 command tasks; all finish and it acknowledges their updates.
//!
//! The virtualenv with pymesos is made by `cargo xtask setup` (part of
//! `cargo xtask test`) at `.venv`; `AGORA_PYTHON` may point elsewhere.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use agora_tests::{active_agents, wait_until, Agent, AgentOpts, Master, MasterOpts};

fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("AGORA_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    venv.exists().then_some(venv)
}

#[test]
fn pymesos_scheduler_runs_twenty_tasks() {
    let Some(py) = python() else {
        // In CI the venv must exist: a missing one is a setup bug, not a skip.
        assert!(std::env::var("CI").is_err(), "no pymesos virtualenv in CI; `cargo xtask setup` makes it");
        eprintln!("SKIPPED pymesos_scheduler_runs_twenty_tasks: no .venv with pymesos (run `cargo xtask setup`)");
        return;
    };
    let m = Master::start(MasterOpts::default());
    let _a1 = Agent::start(&m.addr, AgentOpts::default());
    let _a2 = Agent::start(&m.addr, AgentOpts::default());
    wait_until(Duration::from_secs(60), "agents", || active_agents(&m.state()) == 2);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pymesos/scheduler.py");
    let out = Command::new(&py).arg(&script).arg(&m.addr).arg("20").output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pymesos scheduler failed\nstdout: {stdout}\nstderr: {stderr}\nmaster log:\n{}",
        m.log()
    );
    assert!(stdout.contains("finished=20"), "{stdout}");
    // Its implicit acknowledgements reached the master: three updates per task.
    wait_until(Duration::from_secs(30), "pymesos's acknowledgements", || {
        m.metrics()["master/valid_status_update_acknowledgements"].as_f64().unwrap_or(0.0) >= 60.0
    });
    let st = m.state();
    let fw = st["completed_frameworks"].as_array().unwrap().iter().find(|f| f["name"] == "pymesos acceptance").cloned();
    let fw = fw.expect("pymesos tore its framework down on stop()");
    assert_eq!(fw["completed_tasks"].as_array().unwrap().len(), 20);
}
