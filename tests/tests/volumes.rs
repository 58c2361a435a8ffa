//! Dynamic reservations and persistent volumes, end to end: real master,
//! real agent, the `agora` CLI and a framework on the scheduler API.

use std::time::Duration;

use agora_proto::mesos::{CommandInfo, TaskId, TaskInfo, TaskState};
use agora_proto::resources::Resources;
use agora_tests::framework::{info, TestFramework};
use agora_tests::{active_agents, require_root, wait_until, Agent, AgentOpts, Master, MasterOpts};

fn agora(args: &[&str]) -> std::process::Output {
    std::process::Command::new(agora_tests::bin("agora")).args(args).output().expect("agora runs")
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn refused(out: std::process::Output, says: &str) {
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(says), "expected {says:?} in: {err}");
}

/// The id of the one active agent.
fn agent_id(m: &Master) -> String {
    wait_until(Duration::from_secs(30), "one active agent", || active_agents(&m.state()) == 1);
    let state = m.state();
    let a = state["slaves"].as_array().unwrap().iter().find(|a| a["active"] == true).cloned().unwrap();
    a["id"].as_str().unwrap().to_string()
}

/// Runs `cmd` as a task that uses volume `v1`, in the next offer of `agent`
/// that holds it, and returns how it ended.
async fn run_on_volume(fw: &mut TestFramework, agent: &str, id: &str, cmd: &str) -> TaskState {
    launch_on_volume(fw, agent, id, cmd).await;
    let ids = [id.to_string()];
    fw.wait_terminal(&ids, Duration::from_secs(30)).await;
    fw.last_state(id).unwrap()
}

async fn launch_on_volume(fw: &mut TestFramework, agent: &str, id: &str, cmd: &str) {
    let holds = |o: &agora_proto::mesos::Offer| {
        o.agent_id.as_str() == agent && o.resources.iter().any(|r| r.volume.as_ref().is_some_and(|v| v.id == "v1"))
    };
    fw.until(Duration::from_secs(30), "an offer with the volume", |f| f.offers.iter().any(holds)).await;
    let offer = fw.offers.iter().find(|o| holds(o)).cloned().expect("an offer with the volume");
    fw.offers.retain(|o| o.id != offer.id);
    let volume = offer.resources.filter(|r| r.volume.is_some());
    let task = TaskInfo {
        name: id.into(),
        task_id: TaskId::new(id),
        agent_id: offer.agent_id.clone(),
        resources: volume.plus(&Resources::parse("cpus:0.1;mem:32").unwrap().allocate_to("eng")),
        command: Some(CommandInfo::shell(cmd)),
        ..Default::default()
    };
    fw.driver.launch(&offer, vec![task], 0.0).await.expect("launch");
}

/// Acceptance: a task writes a file on a volume and exits; the next task
/// using the volume reads it; so does one after the agent restarts. The
/// reservation and volume survive a master SIGKILLed right after the calls
/// returned. A volume in use cannot be destroyed; DESTROY removes its data.
/// Bad operations are refused with the reason and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_volume_outlives_tasks_and_restarts() {
    if !require_root("persistent_volume_outlives_tasks_and_restarts") {
        return;
    }
    let mut m = Master::start(MasterOpts::default());
    let master = m.addr.clone();
    let opts = AgentOpts { resources: "cpus:2;mem:1024;disk:2048;ports:[31000-31099]".into(), ..Default::default() };
    let mut agent = Agent::start(&m.addr, opts);
    let id = agent_id(&m);

    // Bad operations first: each is refused and nothing changes.
    refused(agora(&["reserve", "--master", &master, "--agent", &id, "disk(eng):4096"]), "409");
    refused(agora(&["reserve", "--master", &master, "--agent", "nope", "disk(eng):1"]), "No agent found");
    refused(agora(&["reserve", "--master", &master, "--agent", &id, "disk:1"]), "name the role");
    refused(agora(&["unreserve", "--master", &master, "--agent", &id, "disk(eng):1"]), "not on the agent");
    let create = |size: &str, vid: &str| {
        agora(&[
            "volume", "create", "--master", &master, "--agent", &id, "--role", "eng", "--id", vid, "--size", size,
            "--path", "data",
        ])
    };
    refused(create("64", "v1"), "not on the agent");
    let (status, _, body) = agora_tests::http(
        &master,
        "POST",
        "/api/v1",
        &[("Content-Type", "application/json")],
        format!(
            r#"{{"type":"CREATE_VOLUMES","create_volumes":{{"agent_id":{{"value":"{id}"}},"volumes":[
            {{"name":"disk","type":"SCALAR","scalar":{{"value":64}},
              "disk":{{"persistence":{{"id":"v0"}},"volume":{{"container_path":"data","mode":"RW"}}}}}}]}}}}"#
        )
        .as_bytes(),
    );
    assert_eq!(status, 400, "CREATE on unreserved disk");
    assert!(String::from_utf8_lossy(&body).contains("reserved disk"));
    let state = m.state();
    assert!(state["slaves"][0]["reserved_resources_full"].as_object().unwrap().is_empty(), "{state}");

    ok(agora(&["reserve", "--master", &master, "--agent", &id, "disk(eng, ops-team):256;cpus(eng):0.5"]));
    refused(create("512", "v1"), "not on the agent");
    ok(agora(&[
        "volume",
        "create",
        "--master",
        &master,
        "--agent",
        &id,
        "--role",
        "eng",
        "--id",
        "v1",
        "--size",
        "128",
        "--path",
        "data",
        "--principal",
        "ops-team",
    ]));
    let volume_dir = agent.work_dir.path().canonicalize().unwrap().join("volumes/roles/eng/v1");
    wait_until(Duration::from_secs(10), "the volume directory", || volume_dir.is_dir());

    // SIGKILL right after: the registry has it, and so does the agent.
    m.restart();
    wait_until(Duration::from_secs(30), "the agent to re-register", || active_agents(&m.state()) == 1);
    let listed = ok(agora(&["volume", "list", "--master", &master]));
    assert!(
        listed.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == [&id, "v1", "eng", "128", "data", "rw"]),
        "{listed}"
    );
    let reserved = &m.state()["slaves"][0]["reserved_resources"]["eng"];
    assert_eq!((reserved["cpus"].as_f64(), reserved["disk"].as_f64()), (Some(0.5), Some(256.0)), "{reserved}");

    let mut eng = info("eng");
    eng.role = Some("eng".into());
    let mut fw = TestFramework::start(&master, eng).await;
    assert_eq!(
        run_on_volume(&mut fw, &id, "write", "echo kept > data/f").await,
        TaskState::Finished,
        "{:?}",
        fw.summary()
    );
    assert_eq!(std::fs::read_to_string(volume_dir.join("f")).unwrap(), "kept\n");
    let read = "test \"$(cat data/f)\" = kept";
    assert_eq!(run_on_volume(&mut fw, &id, "read", read).await, TaskState::Finished, "{:?}", fw.summary());
    // The bind mount lived in the task's own mount namespace only.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(volume_dir.to_str().unwrap()), "{mounts}");

    // The agent restarts (a new agent id); the volume and its data stay.
    agent.restart();
    let id = {
        let old = id.clone();
        wait_until(Duration::from_secs(30), "the restarted agent", || {
            let s = m.state();
            s["slaves"].as_array().unwrap().iter().any(|a| a["active"] == true && a["id"] != old.as_str())
        });
        agent_id(&m)
    };
    assert_eq!(run_on_volume(&mut fw, &id, "read-again", read).await, TaskState::Finished, "{:?}", fw.summary());

    // In use, it cannot be destroyed.
    launch_on_volume(&mut fw, &id, "holder", "sleep 60").await;
    fw.until(Duration::from_secs(30), "holder running", |f| f.last_state("holder") == Some(TaskState::Running)).await;
    let destroy = || agora(&["volume", "destroy", "--master", &master, "--agent", &id, "--id", "v1"]);
    refused(destroy(), "in use by task holder");
    assert!(volume_dir.join("f").exists());
    fw.driver.kill(TaskId::new("holder"), None).await.expect("kill");
    fw.wait_terminal(&["holder".to_string()], Duration::from_secs(30)).await;
    ok(destroy());
    wait_until(Duration::from_secs(10), "the volume's data to go", || !volume_dir.exists());
    ok(agora(&["unreserve", "--master", &master, "--agent", &id, "disk(eng, ops-team):256;cpus(eng):0.5"]));
    let state = m.state();
    let a = state["slaves"].as_array().unwrap().iter().find(|a| a["id"] == id.as_str()).cloned().unwrap();
    assert!(a["reserved_resources_full"].as_object().unwrap().is_empty(), "{a}");
    fw.driver.teardown().await.ok();
}

/// An agent whose kept reservations and volumes no longer fit the
/// resources it is started with refuses to start, and says why.
#[test]
fn agent_refuses_checkpointed_resources_that_no_longer_fit() {
    let dir = agora_tests::TempDir::new("agent-checkpoint");
    std::fs::create_dir_all(dir.path().join("meta")).unwrap();
    let kept = r#"[{"name":"disk","type":"SCALAR","scalar":{"value":512},
        "reservations":[{"type":"DYNAMIC","role":"eng"}]}]"#;
    std::fs::write(dir.path().join("meta/resources.json"), kept).unwrap();
    let out = std::process::Command::new(agora_tests::bin("agora-agent"))
        .args(["--master", "127.0.0.1:1", "--ip", "127.0.0.1", "--port", "0", "--isolation", "none"])
        .args(["--ebpf", "off", "--resources", "cpus:1;mem:64;disk:100", "--work-dir"])
        .arg(dir.path())
        .output()
        .expect("agent runs");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no longer fit this agent's resources"), "{err}");
}
