//! The allocator end to end, with real binaries: role weights on a
//! saturated cluster, and optimistic offers.

use std::time::Duration;

use agora_proto::mesos::{CommandInfo, FrameworkInfo, TaskId, TaskInfo, TaskState};
use agora_proto::resources::Resources;
use agora_tests::framework::{info, TestFramework};
use agora_tests::{active_agents, wait_until, Agent, AgentOpts, Master, MasterOpts};

fn in_role(name: &str, role: &str) -> FrameworkInfo {
    let mut i = info(name);
    i.role = Some(role.into());
    i
}

/// One task of `resources` running `cmd` on `offer`'s agent.
fn task(id: &str, offer: &agora_proto::mesos::Offer, resources: &str, cmd: &str) -> TaskInfo {
    let role = offer.allocation_info.as_ref().and_then(|a| a.role.clone()).unwrap_or_else(|| "*".into());
    TaskInfo {
        name: id.into(),
        task_id: TaskId::new(id),
        agent_id: offer.agent_id.clone(),
        resources: Resources::parse(resources).unwrap().allocate_to(&role),
        command: Some(CommandInfo::shell(cmd)),
        ..Default::default()
    }
}

/// The cpus allocated (offered or used) in each role's subtree, from
/// GET_ROLES.
fn role_cpus(m: &Master, role: &str) -> f64 {
    let (_, _, body) = agora_tests::http(
        &m.addr,
        "POST",
        "/api/v1",
        &[("Content-Type", "application/json")],
        br#"{"type":"GET_ROLES"}"#,
    );
    let v: serde_json::Value = serde_json::from_slice(&body).expect("GET_ROLES answers JSON");
    v["get_roles"]["roles"]
        .as_array()
        .and_then(|roles| roles.iter().find(|r| r["name"] == role))
        .and_then(|r| r["resources"].as_array())
        .map(|rs| rs.iter().filter(|r| r["name"] == "cpus").filter_map(|r| r["scalar"]["value"].as_f64()).sum())
        .unwrap_or(0.0)
}

/// Two frameworks, in roles weighted 1:3 by an operator, each wanting as
/// much as it can get, fill a cluster of real agents with long tasks: the
/// cluster ends up split about 1:3 (within 10%).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_a_saturated_cluster_one_to_three() {
    let m = Master::start(MasterOpts::default());
    let out = std::process::Command::new(agora_tests::bin("agora"))
        .args(["weights", "--master", &m.addr, "--set", "eng=1", "--set", "ops=3"])
        .output()
        .expect("agora runs");
    assert!(out.status.success(), "{out:?}");
    // Both frameworks are there before the cluster is: every agent is
    // shared out between them as it comes.
    let mut eng = TestFramework::start(&m.addr, in_role("eng", "eng")).await;
    let mut ops = TestFramework::start(&m.addr, in_role("ops", "ops")).await;
    let agents: Vec<Agent> = (0..4)
        .map(|_| {
            Agent::start(
                &m.addr,
                AgentOpts { resources: "cpus:4;mem:1024;disk:1024;ports:[31000-31999]".into(), ..Default::default() },
            )
        })
        .collect();
    wait_until(Duration::from_secs(60), "4 agents", || active_agents(&m.state()) == 4);
    // Each framework launches one long task per cpu (and its share of
    // memory) of every offer it gets, until the cluster is full.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut by_framework = [0usize; 2];
    while role_cpus(&m, "eng") + role_cpus(&m, "ops") < 16.0 || by_framework.iter().sum::<usize>() < 16 {
        assert!(tokio::time::Instant::now() < deadline, "the cluster did not fill: {by_framework:?} tasks");
        for (fw, launched) in [&mut eng, &mut ops].into_iter().zip(by_framework.iter_mut()) {
            fw.step(Duration::from_millis(100)).await;
            while let Some(offer) = fw.offers.pop_front() {
                let n = offer.resources.cpus() as usize;
                let tasks: Vec<TaskInfo> = (0..n)
                    .map(|i| task(&format!("t-{}-{i}", offer.id), &offer, "cpus:1;mem:256", "sleep 300"))
                    .collect();
                *launched += tasks.len();
                if tasks.is_empty() {
                    fw.driver.decline(vec![offer.id.clone()], 0.0).await.expect("decline");
                } else {
                    fw.driver.launch(&offer, tasks, 0.0).await.expect("launch");
                }
            }
        }
    }
    let (e, o) = (role_cpus(&m, "eng"), role_cpus(&m, "ops"));
    let ratio = o / e;
    assert!((2.7..=3.3).contains(&ratio), "eng {e} cpus, ops {o} cpus: ratio {ratio}, want 3 ± 10%");
    // Every task launched runs (the split is of tasks, not only of offers).
    for (fw, launched) in [&mut eng, &mut ops].into_iter().zip(by_framework) {
        fw.until(Duration::from_secs(60), "every task running", |f| {
            let latest = f.latest();
            latest.len() == launched && latest.values().all(|s| s.state == TaskState::Running)
        })
        .await;
    }
    assert_eq!(by_framework.iter().sum::<usize>(), 16);
    eng.driver.teardown().await.expect("teardown");
    ops.driver.teardown().await.expect("teardown");
    drop(agents);
}

/// Split allocation rounds in the real master (`--allocation-workers 2`,
/// any round over two agents or more split): a framework that comes to a
/// cluster of four agents is offered each of them once, by a split round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_rounds_offer_every_agent_once() {
    let mut opts = MasterOpts::default();
    opts.extra.extend(["--allocation-workers", "2", "--allocation-min-agents-per-worker", "1"].map(String::from));
    let m = Master::start(opts);
    let agents: Vec<Agent> = (0..4).map(|_| Agent::start(&m.addr, AgentOpts::default())).collect();
    wait_until(Duration::from_secs(60), "4 agents", || active_agents(&m.state()) == 4);
    let mut a = TestFramework::start(&m.addr, info("a")).await;
    a.until(Duration::from_secs(30), "4 offers", |f| f.offers.len() >= 4).await;
    // Nothing more comes: each agent was offered once.
    a.step(Duration::from_millis(500)).await;
    let mut offered: Vec<&str> = a.offers.iter().map(|o| o.agent_id.value.as_str()).collect();
    assert_eq!(offered.len(), 4, "{:?}", a.offers);
    offered.sort_unstable();
    offered.dedup();
    assert_eq!(offered.len(), 4, "{:?}", a.offers);
    let metrics = m.metrics();
    assert!(metrics["allocator/agora/parallel_runs"].as_f64().unwrap_or(0.0) >= 1.0, "{metrics}");
    a.driver.teardown().await.expect("teardown");
    drop(agents);
}

/// Optimistic offers (`--optimistic-offers 1`): two frameworks are offered
/// the same resources and both launch on them. Exactly one launch runs;
/// the other gets TASK_DROPPED saying another framework took the offer
/// first, and its offer is rescinded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_offers_one_launch_wins_the_other_is_dropped() {
    let mut opts = MasterOpts::default();
    opts.extra.extend(["--optimistic-offers".to_string(), "1".to_string()]);
    let m = Master::start(opts);
    let mut a = TestFramework::start(&m.addr, info("a")).await;
    let mut b = TestFramework::start(&m.addr, info("b")).await;
    let _agent = Agent::start(&m.addr, AgentOpts::default());
    a.until(Duration::from_secs(30), "an offer", |f| !f.offers.is_empty()).await;
    b.until(Duration::from_secs(30), "an offer", |f| !f.offers.is_empty()).await;
    let (oa, ob) = (a.offers.pop_front().unwrap(), b.offers.pop_front().unwrap());
    assert_eq!(oa.agent_id, ob.agent_id);
    assert_eq!(oa.resources, ob.resources, "the same resources");
    // Both take all of the agent's cpus, at once.
    let (ra, rb) = tokio::join!(
        a.driver.launch(&oa, vec![task("ta", &oa, "cpus:2;mem:256", "sleep 300")], 0.0),
        b.driver.launch(&ob, vec![task("tb", &ob, "cpus:2;mem:256", "sleep 300")], 0.0),
    );
    ra.expect("launch");
    rb.expect("launch");
    let decided =
        |f: &TestFramework, t: &str| matches!(f.last_state(t), Some(TaskState::Running) | Some(TaskState::Dropped));
    a.until(Duration::from_secs(30), "task ta decided", |f| decided(f, "ta")).await;
    b.until(Duration::from_secs(30), "task tb decided", |f| decided(f, "tb")).await;
    let states = [a.last_state("ta").unwrap(), b.last_state("tb").unwrap()];
    assert_eq!(states.iter().filter(|s| **s == TaskState::Running).count(), 1, "exactly one launch runs: {states:?}");
    let (loser, task_id) = if states[0] == TaskState::Dropped { (&a, "ta") } else { (&b, "tb") };
    let dropped = loser.latest()[task_id].clone();
    assert_eq!(dropped.state, TaskState::Dropped);
    assert!(dropped.message.as_deref().unwrap_or("").contains("taken by framework"), "{dropped:?}");
    let (_, _, metrics) = agora_tests::http(&m.addr, "GET", "/metrics/snapshot", &[], &[]);
    let metrics: serde_json::Value = serde_json::from_slice(&metrics).unwrap();
    assert_eq!(metrics["master/offers_lost_races"], 1.0, "{metrics}");
    a.driver.teardown().await.expect("teardown");
    b.driver.teardown().await.expect("teardown");
}
