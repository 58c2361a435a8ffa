//! End-to-end: real master and agents on loopback, real processes (in real
//! cgroups when run as root), driven through the Rust SDK.

use std::time::{Duration, Instant};

use agora_proto::mesos::{Capability, CapabilityType, DurationInfo, KillPolicy, Reason, TaskState};
use agora_tests::framework::{info, Spec, TestFramework};
use agora_tests::{active_agents, require_root, wait_until, Agent, AgentOpts, Master, MasterOpts};

const LONG: Duration = Duration::from_secs(60);

fn cluster(n_agents: usize) -> (Master, Vec<Agent>) {
    let m = Master::start(MasterOpts::default());
    let agents: Vec<Agent> = (0..n_agents).map(|_| Agent::start(&m.addr, AgentOpts::default())).collect();
    wait_until(LONG, "agents to register", || active_agents(&m.state()) == n_agents);
    (m, agents)
}

/// Acceptance 1: 200 tasks on 2 agents all finish, every update acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tasks_finish_and_every_update_is_acknowledged() {
    let (m, agents) = cluster(2);
    let mut fw = TestFramework::start(&m.addr, info("two-hundred")).await;
    let specs: Vec<Spec> = (0..200).map(|i| Spec::new(format!("t{i}"), "true", "cpus:0.1;mem:16")).collect();
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    let placed = fw.launch(specs, LONG).await;
    assert_eq!(placed.len(), 200);
    let used: std::collections::HashSet<_> = placed.values().collect();
    assert_eq!(used.len(), 2, "both agents ran tasks");
    fw.wait_terminal(&ids, LONG).await;
    let latest = fw.latest();
    for id in &ids {
        assert_eq!(latest[id].state, TaskState::Finished, "{id}: {:?}", latest[id].message);
        assert_eq!(latest[id].exit_code(), Some(0));
    }
    // Every update (STARTING, RUNNING, FINISHED per task) was acknowledged:
    // the agents drop a task once its last update is, and have none pending.
    for a in &agents {
        wait_until(LONG, "agents to have every update acknowledged", || {
            a.state()["tasks"].as_array().is_some_and(|t| t.is_empty())
        });
    }
    let acks = m.metrics()["master/valid_status_update_acknowledgements"].as_f64().unwrap();
    assert!(acks >= 600.0, "{acks} acknowledgements for 200 tasks");
    let finished = m.metrics()["master/tasks_finished"].as_f64().unwrap();
    assert_eq!(finished, 200.0);
}

/// Acceptance 2: exit codes, the memory limit and kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_is_reported_with_task_failed() {
    let (m, _agents) = cluster(1);
    let mut fw = TestFramework::start(&m.addr, info("failures")).await;
    fw.launch(vec![Spec::new("three", "echo bye; exit 3", "cpus:0.1;mem:32")], LONG).await;
    fw.wait_terminal(&["three".into()], LONG).await;
    let s = &fw.latest()["three"];
    assert_eq!(s.state, TaskState::Failed);
    assert_eq!(s.exit_code(), Some(3));
    assert_eq!(s.message.as_deref(), Some("Command exited with status 3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_over_its_memory_limit_fails_with_the_memory_reason() {
    if !require_root("task_over_its_memory_limit_fails_with_the_memory_reason") {
        return;
    }
    let (m, _agents) = cluster(1);
    let mut fw = TestFramework::start(&m.addr, info("oom")).await;
    // `tail` keeps the whole (newline-free) input in memory.
    fw.launch(vec![Spec::new("hog", "head -c 400000000 /dev/zero | tail", "cpus:0.5;mem:64")], LONG).await;
    fw.wait_terminal(&["hog".into()], LONG).await;
    let s = &fw.latest()["hog"];
    assert_eq!(s.state, TaskState::Failed, "{:?}", s.message);
    assert_eq!(s.reason, Some(Reason::ReasonContainerLimitationMemory), "{:?}", s.message);
    assert!(s.message.as_deref().unwrap_or("").contains("Memory limit exceeded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_tasks_end_killed_within_the_grace_period() {
    let (m, agents) = cluster(1);
    let mut fw = TestFramework::start(&m.addr, info("kills")).await;
    let grace = Duration::from_secs(2);
    let policy = KillPolicy { grace_period: Some(DurationInfo { nanoseconds: grace.as_nanos() as i64 }) };
    let mut polite = Spec::new("sleeper", "sleep 1000", "cpus:0.1;mem:32");
    polite.kill_policy = Some(policy);
    // This one ignores SIGTERM: only SIGKILL after the grace period ends it.
    let mut stubborn = Spec::new("stubborn", "trap '' TERM; while true; do sleep 0.05; done", "cpus:0.1;mem:32");
    stubborn.kill_policy = Some(policy);
    fw.launch(vec![polite, stubborn], LONG).await;
    fw.until(LONG, "both running", |f| {
        f.last_state("sleeper") == Some(TaskState::Running) && f.last_state("stubborn") == Some(TaskState::Running)
    })
    .await;
    let pids: Vec<i64> =
        agents[0].state()["tasks"].as_array().unwrap().iter().filter_map(|t| t["pid"].as_i64()).collect();
    assert_eq!(pids.len(), 2);
    let start = Instant::now();
    fw.driver.kill("sleeper".into(), None).await.unwrap();
    fw.driver.kill("stubborn".into(), None).await.unwrap();
    fw.wait_terminal(&["sleeper".into(), "stubborn".into()], LONG).await;
    let elapsed = start.elapsed();
    let latest = fw.latest();
    assert_eq!(latest["sleeper"].state, TaskState::Killed);
    assert_eq!(latest["stubborn"].state, TaskState::Killed);
    assert!(latest["stubborn"].message.as_deref().unwrap_or("").contains("SIGKILL"), "{:?}", latest["stubborn"]);
    // SIGKILL came after the grace period, and not much later.
    assert!(elapsed >= grace, "{elapsed:?}");
    assert!(elapsed < grace + Duration::from_secs(5), "{elapsed:?}");
    for pid in pids {
        // SAFETY: kill(pid, 0) only checks for existence.
        assert_ne!(unsafe { libc::kill(pid as i32, 0) }, 0, "process {pid} still alive");
    }
}

/// Acceptance 3: kill -9 of an agent: LOST for ordinary frameworks,
/// UNREACHABLE for partition-aware ones, within the configured timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill9_makes_tasks_lost_or_unreachable() {
    let (m, mut agents) = cluster(1);
    let mut plain = TestFramework::start(&m.addr, info("plain")).await;
    let mut pa_info = info("partition-aware");
    pa_info.capabilities = vec![Capability { kind: CapabilityType::PartitionAware }];
    let mut aware = TestFramework::start(&m.addr, pa_info).await;
    plain.launch(vec![Spec::new("p", "sleep 1000", "cpus:0.1;mem:32")], LONG).await;
    aware.launch(vec![Spec::new("a", "sleep 1000", "cpus:0.1;mem:32")], LONG).await;
    plain.until(LONG, "p running", |f| f.last_state("p") == Some(TaskState::Running)).await;
    aware.until(LONG, "a running", |f| f.last_state("a") == Some(TaskState::Running)).await;

    let killed = Instant::now();
    agents[0].kill9();
    // Ping timeout 200ms x 5: the agent is gone within about a second.
    plain.until(Duration::from_secs(20), "p lost", |f| f.last_state("p") == Some(TaskState::Lost)).await;
    aware.until(Duration::from_secs(20), "a unreachable", |f| f.last_state("a") == Some(TaskState::Unreachable)).await;
    assert!(killed.elapsed() < Duration::from_secs(10), "{:?}", killed.elapsed());
    let p = &plain.latest()["p"];
    assert_eq!(p.reason, Some(Reason::ReasonAgentRemoved));
    assert!(p.uuid.is_none(), "master-made updates need no acknowledgement");
    assert!(aware.latest()["a"].unreachable_time.is_some());
    let st = m.state();
    assert_eq!(st["slaves"].as_array().unwrap().len(), 0);
    assert_eq!(st["unreachable_slaves"].as_f64(), Some(1.0));
    agents[0].cleanup_leftovers();
}

/// Acceptance 4: the master restarts; agents re-register, their tasks keep
/// running, and the framework re-subscribes and reconciles them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_restart_agents_reregister_tasks_survive_framework_reconciles() {
    let (mut m, agents) = cluster(2);
    let mut fw = TestFramework::start(&m.addr, info("survivor")).await;
    let specs: Vec<Spec> = (0..4).map(|i| Spec::new(format!("s{i}"), "sleep 1000", "cpus:0.1;mem:32")).collect();
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    fw.launch(specs, LONG).await;
    fw.until(LONG, "all running", |f| ids.iter().all(|i| f.last_state(i) == Some(TaskState::Running))).await;
    let pids: Vec<i64> = agents
        .iter()
        .flat_map(|a| a.state()["tasks"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["pid"].as_i64())
        .collect();
    assert_eq!(pids.len(), 4);
    let fid = fw.framework_id.clone();

    m.restart();
    wait_until(LONG, "agents to re-register", || {
        let st = m.state();
        active_agents(&st) == 2 && agora_tests::all_tasks(&st).len() == 4
    });
    // The SDK re-subscribes on its own, with the same framework id.
    fw.until(LONG, "re-subscription", |f| f.subscriptions >= 2).await;
    assert_eq!(fw.driver.framework_id(), Some(fid));
    for pid in &pids {
        // SAFETY: kill(pid, 0) only checks for existence.
        assert_eq!(unsafe { libc::kill(*pid as i32, 0) }, 0, "task process {pid} died with the master");
    }
    let before = fw.updates.len();
    fw.driver.reconcile(vec![]).await.unwrap();
    fw.until(LONG, "reconciliation answers", |f| {
        let recon: Vec<_> =
            f.updates[before..].iter().filter(|u| u.reason == Some(Reason::ReasonReconciliation)).collect();
        ids.iter().all(|i| recon.iter().any(|u| u.task_id.as_str() == i && u.state == TaskState::Running))
    })
    .await;
    // And the framework can still kill them.
    for id in &ids {
        fw.driver.kill(id.as_str().into(), None).await.unwrap();
    }
    fw.until(LONG, "all killed", |f| ids.iter().all(|i| f.last_state(i) == Some(TaskState::Killed))).await;
}

/// An agent stopped with SIGTERM unregisters at once (even with no tasks to
/// wait for): the master removes it without waiting for ping timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_agent_unregisters_at_once() {
    let m =
        Master::start(MasterOpts { extra: vec!["--agent-ping-timeout".into(), "30secs".into()], ..Default::default() });
    let mut agent = Agent::start(&m.addr, AgentOpts::default());
    wait_until(LONG, "agent to register", || active_agents(&m.state()) == 1);
    let status = agent.proc.as_mut().unwrap().stop(Duration::from_secs(10)).expect("agent exited");
    assert!(status.success(), "{status:?}");
    // A plain disconnect would leave it listed for 150 s.
    wait_until(Duration::from_secs(5), "the master to remove the agent", || {
        m.state()["slaves"].as_array().is_some_and(|s| s.is_empty())
    });
    assert_eq!(m.state()["unreachable_slaves"].as_f64(), Some(0.0));
}

/// An agent the master refuses hears why and exits, instead of retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_agent_is_told_why_and_exits() {
    let m = Master::start(MasterOpts::default());
    let mut opts = AgentOpts::default();
    opts.extra.extend(["--hostname".to_string(), String::new()]);
    let mut agent = Agent::start(&m.addr, opts);
    let proc = agent.proc.as_mut().unwrap();
    wait_until(Duration::from_secs(20), "the refused agent to exit", || matches!(proc.child.try_wait(), Ok(Some(_))));
    let status = proc.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let log = agent.log();
    assert!(log.contains("refused") && log.contains("hostname is empty"), "{log}");
}

/// Status updates are resent until acknowledged, and delivered in order: a
/// framework that does not acknowledge RUNNING keeps getting RUNNING (same
/// uuid), and sees FINISHED only after acknowledging it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_resent_until_acknowledged_and_stay_in_order() {
    let (m, _agents) = cluster(1);
    let mut fw = TestFramework::start(&m.addr, info("stubborn-acker")).await;
    fw.auto_ack = false;
    fw.launch(vec![Spec::new("t", "true", "cpus:0.1;mem:16")], LONG).await;
    // STARTING, unacknowledged, arrives again and again (retry 200 ms).
    fw.until(LONG, "STARTING resent", |f| f.updates.iter().filter(|u| u.state == TaskState::Starting).count() >= 3)
        .await;
    let starting: Vec<_> = fw.updates.iter().filter(|u| u.state == TaskState::Starting).collect();
    assert!(starting.windows(2).all(|w| w[0].uuid == w[1].uuid), "a resend carries the same uuid");
    assert!(fw.updates.iter().all(|u| u.state == TaskState::Starting), "nothing overtakes the unacknowledged head");
    // Acknowledge as they come now: RUNNING then FINISHED follow, in order.
    let head = fw.updates[0].clone();
    fw.driver.acknowledge(&head).await.unwrap();
    fw.auto_ack = true;
    fw.until(LONG, "FINISHED", |f| f.last_state("t") == Some(TaskState::Finished)).await;
    let after: Vec<TaskState> = fw.updates.iter().map(|u| u.state).filter(|s| *s != TaskState::Starting).collect();
    let first_finished = after.iter().position(|s| *s == TaskState::Finished).unwrap();
    assert!(after[..first_finished].iter().all(|s| *s == TaskState::Running), "{after:?}");
    assert!(first_finished >= 1, "RUNNING came before FINISHED: {after:?}");
}

/// A framework that goes away for longer than its failover timeout is
/// removed, and its tasks are killed on their agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_past_its_failover_timeout_loses_its_tasks() {
    let (m, agents) = cluster(1);
    let mut short = info("short-lived");
    short.failover_timeout = Some(1.0);
    let mut fw = TestFramework::start(&m.addr, short).await;
    let fid = fw.framework_id.clone();
    fw.launch(vec![Spec::new("orphan", "sleep 1000", "cpus:0.1;mem:16")], LONG).await;
    fw.until(LONG, "running", |f| f.last_state("orphan") == Some(TaskState::Running)).await;
    let pid = agents[0].state()["tasks"][0]["pid"].as_i64().expect("pid") as i32;
    // The scheduler disappears without tearing down.
    fw.driver.stop();
    drop(fw);
    wait_until(LONG, "the framework to be removed", || {
        let st = m.state();
        st["frameworks"].as_array().unwrap().is_empty()
            && st["completed_frameworks"].as_array().unwrap().iter().any(|f| f["id"] == fid.value)
    });
    // SAFETY: kill(pid, 0) only checks for existence.
    wait_until(LONG, "the task's process to be killed", || unsafe { libc::kill(pid, 0) } != 0);
    wait_until(LONG, "the agent to forget the task", || agents[0].state()["tasks"].as_array().unwrap().is_empty());
}

/// `agora <subcommand> --master <addr> <args>`.
fn agora_cli(subcommand: &str, addr: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(agora_tests::bin("agora"))
        .args([subcommand, "--master", addr])
        .args(args)
        .output()
        .expect("agora runs")
}

/// A v1 operator call in JSON; the status and body.
fn operator_call(addr: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let (status, _, body) = agora_tests::http(addr, "POST", "/api/v1", &[("Content-Type", "application/json")], body);
    (status, body)
}

/// Role weights set by an operator (`agora weights --set`, the v1 operator
/// API underneath) survive a master killed with SIGKILL right after the
/// call returned (it is answered once the registry is on disk), and show in
/// GET_WEIGHTS, `/master/state` and `/metrics`. Bad weights are refused
/// with a clear error.
#[test]
fn operator_weights_are_durable_and_shown() {
    let mut m = Master::start(MasterOpts::default());
    let agora = |addr: &str, args: &[&str]| agora_cli("weights", addr, args);
    let out = agora(&m.addr, &["--set", "eng=3", "--set", "eng/dev=0.5"]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().any(|l| l.split_whitespace().take(2).eq(["eng", "3.0"])), "{table}");
    // SIGKILL at once: the call was answered, so the weights are on disk.
    m.restart();

    let bad = agora(&m.addr, &["--set", "eng=0"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("weights must be positive"), "{bad:?}");
    let bad = agora(&m.addr, &["--set", "*=2"]);
    assert!(!bad.status.success(), "{bad:?}");

    let (status, body) = operator_call(&m.addr, br#"{"type":"GET_WEIGHTS"}"#);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let expected = serde_json::json!([{"role": "eng", "weight": 3.0}, {"role": "eng/dev", "weight": 0.5}]);
    assert_eq!(v["get_weights"]["weight_infos"], expected);
    assert_eq!(m.state()["weights"], expected);
    let eng = m.state()["roles"].as_array().unwrap().iter().find(|r| r["name"] == "eng").cloned().expect("eng");
    assert_eq!(eng["weight"], 3.0);
    let (_, _, metrics) = agora_tests::http(&m.addr, "GET", "/metrics", &[], &[]);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("agora_role_weight{role=\"eng\"} 3\n"), "{metrics}");
}

/// A quota limit and guarantee set with `agora quota` survive a SIGKILL
/// right after the call returned; the limit caps what the role is offered
/// (on a real agent with more to give); both show in `agora quota` against
/// what the role consumes and in `/metrics`. A guarantee beyond the cluster
/// needs `--force`, and one above the limit is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_quota_caps_offers_and_is_durable() {
    let mut m = Master::start(MasterOpts::default());
    let quota = |addr: &str, args: &[&str]| agora_cli("quota", addr, args);
    let out = quota(&m.addr, &["--set", "eng=cpus:0.5;mem:100"]);
    assert!(out.status.success(), "{out:?}");
    // No agent yet: any guarantee exceeds the cluster, unless forced.
    let out = quota(&m.addr, &["--guarantee", "eng=cpus:0.25"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("force"), "{out:?}");
    let out = quota(&m.addr, &["--guarantee", "eng=cpus:0.25", "--force"]);
    assert!(out.status.success(), "{out:?}");
    // SIGKILL at once: the calls were answered, so the quota is on disk.
    m.restart();
    let json = String::from_utf8(quota(&m.addr, &["--json"]).stdout).unwrap();
    let roles: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(roles[0]["quota"]["limit"], serde_json::json!({"cpus": 0.5, "mem": 100.0}), "{json}");
    assert_eq!(roles[0]["quota"]["guarantee"], serde_json::json!({"cpus": 0.25}), "{json}");

    let bad = quota(&m.addr, &["--set", "eng=ports:[1-2]"]);
    assert!(!bad.status.success(), "{bad:?}");
    let bad = quota(&m.addr, &["--guarantee", "eng=cpus:1", "--force"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("exceeds its limit"), "{bad:?}");
    let (status, body) = operator_call(
        &m.addr,
        br#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"eng","guarantees":{"cpus":{"value":-1}}}]}}"#,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    let _agent = Agent::start(&m.addr, AgentOpts::default());
    wait_until(Duration::from_secs(30), "the agent to register", || active_agents(&m.state()) == 1);
    let mut eng = info("eng");
    eng.role = Some("eng".into());
    let mut fw = TestFramework::start(&m.addr, eng).await;
    fw.until(Duration::from_secs(30), "an offer", |f| !f.offers.is_empty()).await;
    let offered = &fw.offers[0].resources;
    assert_eq!((offered.cpus(), offered.mem_mb()), (0.5, 100.0), "the offer is cut to the quota: {offered}");
    let table = String::from_utf8(quota(&m.addr, &[]).stdout).unwrap();
    assert!(
        table.lines().any(|l| l.starts_with("eng ") && l.contains("0.5/0.25/0.5") && l.contains("100/-/100")),
        "{table}"
    );
    let (_, _, metrics) = agora_tests::http(&m.addr, "GET", "/metrics", &[], &[]);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("agora_role_quota_limit{role=\"eng\",resource=\"cpus\"} 0.5\n"), "{metrics}");
    assert!(metrics.contains("agora_role_quota_guarantee{role=\"eng\",resource=\"cpus\"} 0.25\n"), "{metrics}");
    assert!(metrics.contains("agora_role_quota_consumed{role=\"eng\",resource=\"cpus\"} 0.5\n"), "{metrics}");
    assert!(metrics.contains("agora_role_allocated{role=\"eng\",resource=\"mem\"} 100\n"), "{metrics}");
    // Cleared, it is gone.
    assert!(quota(&m.addr, &["--clear", "eng"]).status.success());
    let json = String::from_utf8(quota(&m.addr, &["--json"]).stdout).unwrap();
    assert_eq!(json.trim(), "[]");
}

/// A framework speaking JSON and one speaking FlatBuffers share a master:
/// both are offered resources, launch tasks and see them finish; the master
/// shows both, and their streams say which encoding they carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_flatbuffers_frameworks_share_a_master() {
    use agora_sdk::Encoding;
    let (m, _agents) = cluster(1);
    let mut json = TestFramework::start_with(&m.addr, info("json"), Encoding::Json).await;
    let mut flat = TestFramework::start_with(&m.addr, info("flat"), Encoding::FlatBuffers).await;
    for (fw, name) in [(&mut json, "json"), (&mut flat, "flat")] {
        let specs: Vec<Spec> = (0..5).map(|i| Spec::new(format!("{name}{i}"), "true", "cpus:0.1;mem:16")).collect();
        let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
        assert_eq!(fw.launch(specs, LONG).await.len(), 5, "{name}");
        fw.wait_terminal(&ids, LONG).await;
        for id in &ids {
            assert_eq!(fw.last_state(id), Some(TaskState::Finished), "{id}");
        }
    }
    let state = m.state();
    let names: Vec<&str> = state["frameworks"].as_array().unwrap().iter().filter_map(|f| f["name"].as_str()).collect();
    assert!(names.contains(&"json") && names.contains(&"flat"), "{names:?}");

    // The SDK refuses a stream whose Content-Type is not the encoding it
    // asked for.
    for (media, call) in [
        ("application/json", agora_sdk::Encoding::Json),
        ("application/x-flatbuffers", agora_sdk::Encoding::FlatBuffers),
    ] {
        let mut sub = agora_proto::scheduler::Call::new(agora_proto::scheduler::CallType::Subscribe, None);
        sub.subscribe = Some(agora_proto::scheduler::Subscribe {
            framework_info: info("probe"),
            suppressed_roles: vec![],
            offer_constraints: None,
        });
        let stream = agora_sdk::http::subscribe(&m.addr, &sub, call).await.expect("subscribes");
        assert!(!stream.stream_id.is_empty(), "{media}");
    }
}

/// The SDK pipelines calls made at once on its one call connection: each
/// caller gets the answer to its own call, errors included, whatever the
/// order they are written in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_get_their_own_answer() {
    use agora_proto::scheduler::{Call, CallType, Roles};
    let m = Master::start(MasterOpts::default());
    let (driver, _events) = agora_sdk::Driver::start(&m.addr, info("pipelined")).await.expect("subscribes");
    let calls: Vec<_> = (0..400)
        .map(|i| {
            let d = driver.clone();
            tokio::spawn(async move {
                let mut c = Call::new(CallType::Suppress, None);
                // Every other call names a role the framework does not have,
                // each a different one, and is refused with its name.
                let roles = if i % 2 == 0 { vec![] } else { vec![format!("nope{i}")] };
                c.suppress = Some(Roles { roles });
                (i, d.call(c).await)
            })
        })
        .collect();
    for c in calls {
        let (i, res) = c.await.expect("the call's task");
        if i % 2 == 0 {
            res.unwrap_or_else(|e| panic!("call {i}: {e}"));
        } else {
            match res {
                Err(agora_sdk::Error::Status { status: 400, message }) => {
                    assert!(message.contains(&format!("\"nope{i}\"")), "call {i} got another call's answer: {message}")
                }
                other => panic!("call {i}: {other:?}"),
            }
        }
    }
}
