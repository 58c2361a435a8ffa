//! The master core driven directly, with a simulated clock: no sockets.

use agora_proto::mesos::*;
use agora_proto::resources::Resources;
use agora_proto::scheduler::*;
use agora_proto::wire::{AgentInfo, AgentToMaster, Checked, MasterToAgent, StatusUpdate, TaskReport};

use super::*;

struct Sim {
    m: Master,
    now: Now,
    actions: Vec<Action>,
}

const FW_STREAM: ConnId = 1000;

impl Sim {
    fn new() -> Sim {
        Sim::with(Config::for_test())
    }

    fn with(config: Config) -> Sim {
        let now = Now { mono_ms: 1_000, wall_secs: 1_700_000_000.0 };
        Sim { m: Master::new(config, now), now, actions: Vec::new() }
    }

    /// The last registry snapshot the core asked to write.
    fn last_persisted(&self) -> RegistryState {
        self.actions
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::Persist(r) => Some(r.clone()),
                _ => None,
            })
            .expect("registry written")
    }

    fn advance(&mut self, ms: u64) {
        self.now.mono_ms += ms;
        self.now.wall_secs += ms as f64 / 1000.0;
        self.m.tick(self.now);
        self.flush();
    }

    fn flush(&mut self) {
        let a = self.m.take_actions(self.now);
        self.actions.extend(a);
    }

    fn input(&mut self, i: Input) {
        self.m.step(self.now, i);
        self.flush();
    }

    fn register_agent(&mut self, conn: ConnId, resources: &str) -> AgentId {
        self.input(Input::Agent {
            conn,
            msg: Checked::of(&AgentToMaster::Register { info: Box::new(agent_info(resources)) }),
        });
        self.sent_to_agent(conn)
            .into_iter()
            .find_map(|m| match m {
                MasterToAgent::Registered { agent_id, .. } => Some(agent_id),
                _ => None,
            })
            .expect("agent registered")
    }

    fn subscribe_with(&mut self, stream: ConnId, info: FrameworkInfo) -> (FrameworkId, String) {
        let mut call = Call::new(CallType::Subscribe, info.id.clone());
        call.subscribe = Some(Subscribe { framework_info: info, suppressed_roles: vec![], offer_constraints: None });
        let s = self.m.subscribe(self.now, call, stream);
        self.flush();
        match s {
            Subscription::Accepted { framework_id, stream_id } => (framework_id, stream_id),
            Subscription::Refused { message } => panic!("refused: {message}"),
        }
    }

    fn subscribe(&mut self) -> (FrameworkId, String) {
        self.subscribe_with(FW_STREAM, FrameworkInfo { user: "u".into(), name: "f".into(), ..Default::default() })
    }

    fn call(&mut self, call: Call, stream_id: &str) -> Result<u16, ApiError> {
        let r = self.m.call(self.now, call, Some(stream_id));
        self.flush();
        r
    }

    /// Events sent to `stream` so far, draining them.
    fn events(&mut self, stream: ConnId) -> Vec<Event> {
        let mut out = Vec::new();
        self.actions.retain(|a| match a {
            Action::Event { streams, event } if streams.contains(&stream) => {
                out.push((**event).clone());
                false
            }
            _ => true,
        });
        out
    }

    fn sent_to_agent(&mut self, conn: ConnId) -> Vec<MasterToAgent> {
        let mut out = Vec::new();
        self.actions.retain(|a| match a {
            Action::ToAgent { conn: c, msg } if *c == conn => {
                out.push(msg.clone());
                false
            }
            _ => true,
        });
        out
    }

    fn offers(&mut self, stream: ConnId) -> Vec<Offer> {
        self.events(stream).into_iter().filter_map(|e| e.offers).flat_map(|o| o.offers).collect()
    }

    fn updates(&mut self, stream: ConnId) -> Vec<TaskStatus> {
        self.events(stream).into_iter().filter_map(|e| e.update).map(|u| u.status).collect()
    }

    fn launch(&mut self, fid: &FrameworkId, sid: &str, offer: &Offer, tasks: Vec<TaskInfo>) {
        let mut call = Call::new(CallType::Accept, Some(fid.clone()));
        call.accept = Some(Accept {
            offer_ids: vec![offer.id.clone()],
            operations: vec![Operation::launch(tasks)],
            filters: Some(Filters { refuse_seconds: Some(0.0) }),
        });
        assert_eq!(self.call(call, sid), Ok(202));
    }

    fn agent_update(&mut self, conn: ConnId, fid: &FrameworkId, tid: &str, state: TaskState, uuid: u8) {
        let mut status = TaskStatus::new(TaskId::new(tid), state);
        status.uuid = Some(vec![uuid; 16]);
        status.source = Some(Source::Agent);
        self.input(Input::Agent {
            conn,
            msg: Checked::of(&AgentToMaster::StatusUpdate(Box::new(StatusUpdate {
                framework_id: fid.clone(),
                status,
                latest_state: state,
            }))),
        });
    }
}

fn agent_info(resources: &str) -> AgentInfo {
    AgentInfo {
        hostname: "host".into(),
        port: 5051,
        resources: Resources::parse(resources).unwrap(),
        attributes: vec![],
        version: "test".into(),
    }
}

fn task(id: &str, agent: &AgentId, resources: &str, cmd: &str) -> TaskInfo {
    TaskInfo {
        name: id.into(),
        task_id: TaskId::new(id),
        agent_id: agent.clone(),
        resources: Resources::parse(resources).unwrap(),
        command: Some(CommandInfo::shell(cmd)),
        ..Default::default()
    }
}

#[test]
fn subscribe_then_offer_launch_update_ack() {
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:2;mem:1024");
    let (fid, sid) = s.subscribe();
    let ev = s.events(FW_STREAM);
    assert_eq!(ev[0].kind, EventType::Subscribed);
    assert_eq!(ev[1].kind, EventType::Heartbeat);
    assert_eq!(ev[2].kind, EventType::Offers, "subscription triggers an allocation");
    let offer = ev[2].offers.as_ref().unwrap().offers[0].clone();
    assert_eq!(offer.agent_id, agent);
    assert_eq!(offer.resources.cpus(), 2.0);

    s.launch(&fid, &sid, &offer, vec![task("t1", &agent, "cpus:0.5;mem:64", "true")]);
    let run = s.sent_to_agent(1);
    assert!(matches!(&run[0], MasterToAgent::RunTask { task, .. } if task.task_id.as_str() == "t1"));
    // The rest of the offer came straight back (refuse_seconds 0).
    let again = s.offers(FW_STREAM);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].resources.cpus(), 1.5);

    s.agent_update(1, &fid, "t1", TaskState::Running, 1);
    s.agent_update(1, &fid, "t1", TaskState::Finished, 2);
    let ups = s.updates(FW_STREAM);
    assert_eq!(ups.iter().map(|u| u.state).collect::<Vec<_>>(), vec![TaskState::Running, TaskState::Finished]);
    assert_eq!(ups[1].agent_id.as_ref(), Some(&agent));
    assert!(s.m.frameworks[&fid].tasks.is_empty());
    assert_eq!(s.m.frameworks[&fid].completed_tasks.len(), 1);

    let mut ack = Call::new(CallType::Acknowledge, Some(fid.clone()));
    ack.acknowledge = Some(Acknowledge { agent_id: agent.clone(), task_id: TaskId::new("t1"), uuid: vec![2; 16] });
    assert_eq!(s.call(ack, &sid), Ok(202));
    assert!(matches!(&s.sent_to_agent(1)[0], MasterToAgent::AcknowledgeUpdate { uuid, .. } if uuid == &vec![2u8; 16]));
}

#[test]
fn invalid_launches_get_error_or_dropped() {
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:1;mem:128");
    let (fid, sid) = s.subscribe();
    let offer = s.offers(FW_STREAM).remove(0);
    s.launch(
        &fid,
        &sid,
        &offer,
        vec![
            task("big", &agent, "cpus:4;mem:64", "true"),
            task("ok", &agent, "cpus:0.1;mem:16", "true"),
            task("ok", &agent, "cpus:0.1;mem:16", "true"),
            task("bad/id", &agent, "cpus:0.1;mem:16", "true"),
            task("wrong-agent", &AgentId::new("elsewhere"), "cpus:0.1;mem:16", "true"),
            TaskInfo { executor: Some(ExecutorInfo::default()), ..task("exec", &agent, "cpus:0.1", "x") },
        ],
    );
    let ups = s.updates(FW_STREAM);
    let by_id = |id: &str| ups.iter().filter(|u| u.task_id.as_str() == id).cloned().collect::<Vec<_>>();
    assert_eq!(by_id("big")[0].state, TaskState::Error);
    assert!(by_id("big")[0].message.as_ref().unwrap().contains("more resources"));
    assert_eq!(by_id("ok").len(), 1, "the duplicate is refused, the first launched");
    assert!(by_id("ok")[0].message.as_ref().unwrap().contains("duplicate"));
    assert_eq!(by_id("bad/id")[0].reason, Some(Reason::ReasonTaskInvalid));
    assert_eq!(by_id("wrong-agent")[0].state, TaskState::Error);
    assert!(by_id("exec")[0].message.as_ref().unwrap().contains("executors"));
    assert_eq!(s.m.frameworks[&fid].tasks.len(), 1);

    // A stale offer: TASK_LOST (not partition-aware) with the invalid-offers reason.
    s.launch(&fid, &sid, &offer, vec![task("late", &agent, "cpus:0.1;mem:16", "true")]);
    let ups = s.updates(FW_STREAM);
    assert_eq!(ups[0].state, TaskState::Lost);
    assert_eq!(ups[0].reason, Some(Reason::ReasonInvalidOffers));
    assert!(ups[0].uuid.is_none());
}

#[test]
fn partition_aware_gets_dropped_for_stale_offers() {
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:1;mem:128");
    let (fid, sid) = s.subscribe_with(
        FW_STREAM,
        FrameworkInfo { capabilities: vec![Capability { kind: CapabilityType::PartitionAware }], ..Default::default() },
    );
    let mut stale = s.offers(FW_STREAM).remove(0);
    stale.id = OfferId::new("nope");
    s.launch(&fid, &sid, &stale, vec![task("t", &agent, "cpus:0.1;mem:16", "true")]);
    let ups = s.updates(FW_STREAM);
    assert_eq!(ups[0].state, TaskState::Dropped);
}

#[test]
fn call_errors_have_mesos_status_codes() {
    let mut s = Sim::new();
    let (fid, sid) = s.subscribe();
    let revive = |f: &FrameworkId| Call::new(CallType::Revive, Some(f.clone()));
    assert_eq!(s.m.call(s.now, revive(&fid), None).unwrap_err().status, 400);
    let wrong = s.m.call(s.now, revive(&fid), Some("other")).unwrap_err();
    assert_eq!(wrong.status, 400);
    assert!(wrong.message.contains("didn't match"));
    let unknown = s.call(revive(&FrameworkId::new("nope")), &sid).unwrap_err();
    assert_eq!(unknown.status, 400);
    assert!(unknown.message.contains("cannot be found"));
    let missing = s.call(Call::new(CallType::Accept, Some(fid.clone())), &sid).unwrap_err();
    assert!(missing.message.contains("'accept'"));
    // Disconnected framework: 403.
    s.input(Input::StreamClosed { stream: FW_STREAM });
    let _ = s.subscribe_with(2000, FrameworkInfo { failover_timeout: Some(60.0), ..Default::default() });
    s.input(Input::StreamClosed { stream: 2000 });
    let fid2 = s.m.frameworks.keys().next().cloned().unwrap();
    assert_eq!(s.m.call(s.now, revive(&fid2), Some("x")).unwrap_err().status, 403);
    assert!(s.m.counters.invalid_calls >= 5);
}

#[test]
fn decline_filters_and_revive() {
    let mut s = Sim::new();
    s.register_agent(1, "cpus:1;mem:128");
    let (fid, sid) = s.subscribe();
    let offer = s.offers(FW_STREAM).remove(0);
    let mut d = Call::new(CallType::Decline, Some(fid.clone()));
    d.decline =
        Some(Decline { offer_ids: vec![offer.id.clone()], filters: Some(Filters { refuse_seconds: Some(10.0) }) });
    assert_eq!(s.call(d, &sid), Ok(202));
    s.advance(5_000);
    assert!(s.offers(FW_STREAM).is_empty(), "filtered for 10 s");
    s.advance(6_000);
    assert_eq!(s.offers(FW_STREAM).len(), 1, "offered again after the filter");
    // Suppress stops offers; revive brings them back.
    let offer = s.m.offers.keys().next().cloned().unwrap();
    let mut d = Call::new(CallType::Decline, Some(fid.clone()));
    d.decline = Some(Decline { offer_ids: vec![offer], filters: Some(Filters { refuse_seconds: Some(0.0) }) });
    s.call(Call::new(CallType::Suppress, Some(fid.clone())), &sid).unwrap();
    s.call(d, &sid).unwrap();
    s.advance(2_000);
    assert!(s.offers(FW_STREAM).is_empty(), "suppressed");
    s.call(Call::new(CallType::Revive, Some(fid.clone())), &sid).unwrap();
    assert_eq!(s.offers(FW_STREAM).len(), 1, "revive allocates at once");
}

#[test]
fn offer_timeout_rescinds() {
    let mut c = Config::for_test();
    c.offer_timeout_ms = Some(3_000);
    let mut s = Sim::with(c);
    s.register_agent(1, "cpus:1;mem:128");
    s.subscribe();
    let offer = s.offers(FW_STREAM).remove(0);
    s.advance(3_500);
    let ev = s.events(FW_STREAM);
    let rescind = ev.iter().find_map(|e| e.rescind.as_ref()).expect("rescinded");
    assert_eq!(rescind.offer_id, offer.id);
    assert_eq!(s.m.counters.offers_rescinded, 1);
}

#[test]
fn lost_agent_tasks_become_lost_or_unreachable() {
    for partition_aware in [false, true] {
        let mut c = Config::for_test();
        c.agent_ping_timeout_ms = 1_000;
        c.max_agent_ping_timeouts = 3;
        let mut s = Sim::with(c);
        let agent = s.register_agent(1, "cpus:1;mem:128");
        let caps = if partition_aware { vec![Capability { kind: CapabilityType::PartitionAware }] } else { vec![] };
        let (fid, sid) = s.subscribe_with(FW_STREAM, FrameworkInfo { capabilities: caps, ..Default::default() });
        let offer = s.offers(FW_STREAM).remove(0);
        s.launch(&fid, &sid, &offer, vec![task("t", &agent, "cpus:0.5;mem:64", "sleep 1000")]);
        s.agent_update(1, &fid, "t", TaskState::Running, 1);
        s.updates(FW_STREAM);
        s.input(Input::AgentClosed { conn: 1 });
        s.advance(2_000);
        assert!(s.updates(FW_STREAM).is_empty(), "within the removal timeout");
        s.advance(1_500);
        let ups = s.updates(FW_STREAM);
        let want = if partition_aware { TaskState::Unreachable } else { TaskState::Lost };
        assert_eq!(ups[0].state, want);
        assert_eq!(ups[0].reason, Some(Reason::ReasonAgentRemoved));
        assert_eq!(ups[0].source, Some(Source::Master));
        assert!(ups[0].unreachable_time.is_some());
        assert!(s.m.agents.is_empty());

        // Reconciling a task on the unreachable agent.
        let mut r = Call::new(CallType::Reconcile, Some(fid.clone()));
        r.reconcile = Some(Reconcile {
            tasks: vec![ReconcileTask { task_id: TaskId::new("other"), agent_id: Some(agent.clone()) }],
        });
        s.call(r, &sid).unwrap();
        let ups = s.updates(FW_STREAM);
        assert_eq!(ups[0].state, want);
        assert_eq!(ups[0].reason, Some(Reason::ReasonReconciliation));
    }
}

#[test]
fn each_disconnected_agent_is_removed_at_its_own_deadline() {
    let mut c = Config::for_test();
    c.agent_ping_timeout_ms = 1_000;
    c.max_agent_ping_timeouts = 3;
    let mut s = Sim::with(c);
    let a = s.register_agent(1, "cpus:1;mem:128");
    let b = s.register_agent(2, "cpus:1;mem:128");
    s.input(Input::AgentClosed { conn: 1 });
    s.advance(1_000);
    s.input(Input::AgentClosed { conn: 2 });
    s.advance(1_000);
    // `a` comes back before its deadline, which was the earliest.
    s.input(Input::Agent {
        conn: 3,
        msg: Checked::of(&AgentToMaster::Reregister {
            agent_id: a.clone(),
            info: Box::new(agent_info("cpus:1;mem:128")),
            tasks: vec![],
            frameworks: vec![],
        }),
    });
    s.advance(1_100);
    assert!(s.m.agents.contains_key(&a) && s.m.agents.contains_key(&b), "removed before b's deadline");
    s.advance(1_000);
    assert!(s.m.agents.contains_key(&a), "a reconnected");
    assert!(!s.m.agents.contains_key(&b), "b is past its deadline");
    // Disconnected again, `a` gets a deadline of its own, from now.
    s.input(Input::AgentClosed { conn: 3 });
    s.advance(2_900);
    assert!(s.m.agents.contains_key(&a));
    s.advance(200);
    assert!(!s.m.agents.contains_key(&a));
}

#[test]
fn unresponsive_agent_is_unreachable_at_once() {
    let mut s = Sim::new();
    s.register_agent(1, "cpus:1;mem:128");
    s.input(Input::AgentUnresponsive { conn: 1 });
    assert!(s.m.agents.is_empty());
    assert_eq!(s.m.unreachable_agents.len(), 1);
}

#[test]
fn framework_failover_and_timeout() {
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:1;mem:128");
    let (fid, sid) = s.subscribe_with(FW_STREAM, FrameworkInfo { failover_timeout: Some(10.0), ..Default::default() });
    let offer = s.offers(FW_STREAM).remove(0);
    s.launch(&fid, &sid, &offer, vec![task("t", &agent, "cpus:0.5;mem:64", "sleep 1000")]);
    s.sent_to_agent(1);
    s.input(Input::StreamClosed { stream: FW_STREAM });
    s.advance(5_000);
    assert!(s.m.frameworks.contains_key(&fid), "kept during failover timeout");
    // Re-subscribe with the id: resumes with a new stream id.
    let (fid2, sid2) = s.subscribe_with(
        2000,
        FrameworkInfo { id: Some(fid.clone()), failover_timeout: Some(10.0), ..Default::default() },
    );
    assert_eq!(fid2, fid);
    assert_ne!(sid2, sid);
    assert_eq!(s.m.frameworks[&fid].tasks.len(), 1);
    // Disconnect again and let the timeout pass: tasks are killed.
    s.input(Input::StreamClosed { stream: 2000 });
    s.advance(11_000);
    assert!(!s.m.frameworks.contains_key(&fid));
    assert!(s.sent_to_agent(1).iter().any(|m| matches!(m, MasterToAgent::ShutdownFramework { .. })));
    // It cannot come back.
    let mut call = Call::new(CallType::Subscribe, Some(fid.clone()));
    call.subscribe = Some(Subscribe {
        framework_info: FrameworkInfo { id: Some(fid.clone()), ..Default::default() },
        suppressed_roles: vec![],
        offer_constraints: None,
    });
    assert!(matches!(s.m.subscribe(s.now, call, 3000), Subscription::Refused { .. }));
}

#[test]
fn resubscribe_on_live_stream_fails_over_old_stream() {
    let mut s = Sim::new();
    let (fid, _) = s.subscribe_with(FW_STREAM, FrameworkInfo { failover_timeout: Some(10.0), ..Default::default() });
    s.events(FW_STREAM);
    s.subscribe_with(2000, FrameworkInfo { id: Some(fid), failover_timeout: Some(10.0), ..Default::default() });
    let old = s.events(FW_STREAM);
    assert_eq!(old[0].kind, EventType::Error);
    assert!(s.actions.contains(&Action::CloseStream { stream: FW_STREAM }));
}

#[test]
fn teardown_kills_tasks() {
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:1;mem:128");
    let (fid, sid) = s.subscribe();
    let offer = s.offers(FW_STREAM).remove(0);
    s.launch(&fid, &sid, &offer, vec![task("t", &agent, "cpus:0.5;mem:64", "sleep 1000")]);
    s.sent_to_agent(1);
    assert_eq!(s.call(Call::new(CallType::Teardown, Some(fid.clone())), &sid), Ok(202));
    assert!(s
        .sent_to_agent(1)
        .iter()
        .any(|m| matches!(m, MasterToAgent::ShutdownFramework { framework_id } if framework_id == &fid)));
    assert!(s.actions.contains(&Action::CloseStream { stream: FW_STREAM }));
    assert_eq!(s.m.allocator.available(&agent).unwrap().cpus(), 1.0, "resources released");
}

#[test]
fn master_restart_agent_reregisters_and_framework_reconciles() {
    // First master: agent registers, a task runs.
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:1;mem:128");
    let (fid, sid) = s.subscribe_with(FW_STREAM, FrameworkInfo { failover_timeout: Some(60.0), ..Default::default() });
    let offer = s.offers(FW_STREAM).remove(0);
    let t = task("t", &agent, "cpus:0.5;mem:64", "sleep 1000");
    s.launch(&fid, &sid, &offer, vec![t.clone()]);
    let registry = s.last_persisted();
    let fw_info = s.m.frameworks[&fid].info.clone();
    let launched = match &s.sent_to_agent(1)[0] {
        MasterToAgent::RunTask { task, .. } => (**task).clone(),
        m => panic!("{m:?}"),
    };

    // A new master with the registry.
    let mut s2 = Sim::new();
    s2.m.recover(&registry, s2.now);
    assert!(s2.m.recovered_agents.contains_key(&agent));
    s2.input(Input::Agent {
        conn: 7,
        msg: Checked::of(&AgentToMaster::Reregister {
            agent_id: agent.clone(),
            info: Box::new(agent_info("cpus:1;mem:128")),
            tasks: vec![TaskReport { framework_id: fid.clone(), task: launched, state: TaskState::Running }],
            frameworks: vec![fw_info.clone()],
        }),
    });
    assert!(matches!(&s2.sent_to_agent(7)[0], MasterToAgent::Registered { agent_id, .. } if agent_id == &agent));
    assert!(s2.m.frameworks[&fid].recovered);
    // The framework re-subscribes and reconciles.
    let (fid2, sid2) = s2.subscribe_with(5000, fw_info);
    assert_eq!(fid2, fid);
    // The task's resources are in use: only the rest of the agent is offered.
    let offered: f64 = s2.offers(5000).iter().map(|o| o.resources.cpus()).sum();
    assert_eq!(offered, 0.5);
    s2.call(Call { reconcile: Some(Reconcile::default()), ..Call::new(CallType::Reconcile, Some(fid.clone())) }, &sid2)
        .unwrap();
    let ups = s2.updates(5000);
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].state, TaskState::Running);
    assert_eq!(ups[0].reason, Some(Reason::ReasonReconciliation));
}

#[test]
fn reconcile_unknown_agent_and_recovering_agent() {
    let mut s = Sim::new();
    let (fid, sid) = s.subscribe();
    let rc = |agent: &str| Call {
        reconcile: Some(Reconcile {
            tasks: vec![ReconcileTask { task_id: TaskId::new("x"), agent_id: Some(AgentId::new(agent)) }],
        }),
        ..Call::new(CallType::Reconcile, Some(fid.clone()))
    };
    s.call(rc("nowhere"), &sid).unwrap();
    assert_eq!(s.updates(FW_STREAM)[0].state, TaskState::Lost);
    s.m.recover(
        &RegistryState {
            agents: vec![crate::registry::RegistryAgent {
                id: "back".into(),
                hostname: "h".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        s.now,
    );
    s.call(rc("back"), &sid).unwrap();
    assert!(s.updates(FW_STREAM).is_empty(), "no answer while the agent may still come back");
    s.advance(Config::for_test().agent_reregister_timeout_ms + 1);
    s.call(rc("back"), &sid).unwrap();
    assert_eq!(s.updates(FW_STREAM)[0].state, TaskState::Lost);
}

#[test]
fn kill_known_and_unknown() {
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:1;mem:128");
    let (fid, sid) = s.subscribe();
    let offer = s.offers(FW_STREAM).remove(0);
    s.launch(&fid, &sid, &offer, vec![task("t", &agent, "cpus:0.5;mem:64", "sleep 1000")]);
    s.sent_to_agent(1);
    let kill = |t: &str| Call {
        kill: Some(Kill { task_id: TaskId::new(t), agent_id: None, kill_policy: None }),
        ..Call::new(CallType::Kill, Some(fid.clone()))
    };
    s.call(kill("t"), &sid).unwrap();
    assert!(matches!(&s.sent_to_agent(1)[0], MasterToAgent::KillTask { task_id, .. } if task_id.as_str() == "t"));
    s.call(kill("ghost"), &sid).unwrap();
    let ups = s.updates(FW_STREAM);
    assert_eq!(ups[0].state, TaskState::Lost);
    assert_eq!(ups[0].reason, Some(Reason::ReasonReconciliation));
}

#[test]
fn heartbeats_on_interval() {
    let mut s = Sim::new();
    s.subscribe();
    s.events(FW_STREAM);
    s.advance(15_000);
    assert!(s.events(FW_STREAM).iter().any(|e| e.kind == EventType::Heartbeat));
}

#[test]
fn bad_agent_registration_is_refused() {
    let mut s = Sim::new();
    let mut info = agent_info("cpus:1");
    info.hostname.clear();
    s.input(Input::Agent { conn: 9, msg: Checked::of(&AgentToMaster::Register { info: Box::new(info) }) });
    assert!(matches!(&s.sent_to_agent(9)[0], MasterToAgent::Refused { .. }));
    assert!(s.actions.contains(&Action::CloseAgent { conn: 9 }));
    assert!(s.m.agents.is_empty());
}

#[test]
fn invalid_subscriptions_are_refused() {
    let mut s = Sim::new();
    for info in [
        FrameworkInfo { roles: vec!["a".into()], ..Default::default() },
        FrameworkInfo { role: Some("/bad".into()), ..Default::default() },
        FrameworkInfo { failover_timeout: Some(-1.0), ..Default::default() },
    ] {
        let mut call = Call::new(CallType::Subscribe, None);
        call.subscribe = Some(Subscribe { framework_info: info, suppressed_roles: vec![], offer_constraints: None });
        assert!(matches!(s.m.subscribe(s.now, call, 1), Subscription::Refused { .. }));
    }
    assert!(s.m.frameworks.is_empty());
}

fn reregister(s: &mut Sim, conn: ConnId, agent: &AgentId, fw: &FrameworkInfo, reports: Vec<(&TaskInfo, TaskState)>) {
    s.input(Input::Agent {
        conn,
        msg: Checked::of(&AgentToMaster::Reregister {
            agent_id: agent.clone(),
            info: Box::new(agent_info("cpus:1;mem:128")),
            tasks: reports
                .into_iter()
                .map(|(t, state)| TaskReport { framework_id: fw.id.clone().unwrap(), task: t.clone(), state })
                .collect(),
            frameworks: vec![fw.clone()],
        }),
    });
}

/// The task that ended while the agent was away keeps its resources until its
/// update arrives; then exactly its share is released.
#[test]
fn task_finished_during_disconnection_releases_only_its_resources() {
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:1;mem:128");
    let (fid, sid) = s.subscribe_with(FW_STREAM, FrameworkInfo { failover_timeout: Some(60.0), ..Default::default() });
    let offer = s.offers(FW_STREAM).remove(0);
    let t1 = task("t1", &agent, "cpus:0.5;mem:64", "sleep 1");
    let t2 = task("t2", &agent, "cpus:0.5;mem:64", "sleep 1000");
    s.launch(&fid, &sid, &offer, vec![t1.clone(), t2.clone()]);
    let launched: Vec<TaskInfo> = s
        .sent_to_agent(1)
        .into_iter()
        .filter_map(|m| match m {
            MasterToAgent::RunTask { task, .. } => Some(*task),
            _ => None,
        })
        .collect();
    let fw = s.m.frameworks[&fid].info.clone();
    // The framework is away (so nothing is offered and the allocator's view
    // shows directly), and the agent reconnects.
    s.input(Input::StreamClosed { stream: FW_STREAM });
    s.input(Input::AgentClosed { conn: 1 });
    reregister(&mut s, 2, &agent, &fw, vec![(&launched[0], TaskState::Finished), (&launched[1], TaskState::Running)]);
    assert_eq!(s.m.allocator.available(&agent).unwrap().cpus(), 0.0, "both tasks still hold their cpus");
    s.agent_update(2, &fid, "t1", TaskState::Finished, 9);
    assert_eq!(s.m.allocator.available(&agent).unwrap().cpus(), 0.5, "t1's half released, t2's kept");
    assert!(s.m.frameworks[&fid].tasks.contains_key(&TaskId::new("t2")));
}

#[test]
fn kill_while_agent_is_away_is_sent_when_it_is_back() {
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:1;mem:128");
    let (fid, sid) = s.subscribe_with(FW_STREAM, FrameworkInfo { failover_timeout: Some(60.0), ..Default::default() });
    let offer = s.offers(FW_STREAM).remove(0);
    s.launch(&fid, &sid, &offer, vec![task("t", &agent, "cpus:0.5;mem:64", "sleep 1000")]);
    let launched = match s.sent_to_agent(1).pop() {
        Some(MasterToAgent::RunTask { task, .. }) => *task,
        m => panic!("{m:?}"),
    };
    s.input(Input::AgentClosed { conn: 1 });
    let kill = Call {
        kill: Some(Kill { task_id: TaskId::new("t"), agent_id: None, kill_policy: None }),
        ..Call::new(CallType::Kill, Some(fid.clone()))
    };
    s.call(kill, &sid).unwrap();
    let fw = s.m.frameworks[&fid].info.clone();
    reregister(&mut s, 2, &agent, &fw, vec![(&launched, TaskState::Running)]);
    let msgs = s.sent_to_agent(2);
    assert!(
        msgs.iter().any(|m| matches!(m, MasterToAgent::KillTask { task_id, .. } if task_id.as_str() == "t")),
        "{msgs:?}"
    );
}

#[test]
fn absurd_failover_timeouts_are_clamped() {
    let mut s = Sim::new();
    let (fid, sid) = s.subscribe_with(FW_STREAM, FrameworkInfo { failover_timeout: Some(1e300), ..Default::default() });
    let mut info = s.m.frameworks[&fid].info.clone();
    assert!(info.failover_timeout.unwrap() <= 365.0 * 86400.0);
    info.failover_timeout = Some(f64::INFINITY);
    let up = Call {
        update_framework: Some(UpdateFramework {
            framework_info: info,
            suppressed_roles: vec![],
            offer_constraints: None,
        }),
        ..Call::new(CallType::UpdateFramework, Some(fid.clone()))
    };
    assert_eq!(s.call(up, &sid), Ok(200));
    s.input(Input::StreamClosed { stream: FW_STREAM });
    s.advance(1_000);
    assert!(s.m.frameworks.contains_key(&fid), "not removed by a wrapped deadline");
}

#[test]
fn registry_keeps_agents_still_expected_back() {
    let mut s = Sim::new();
    s.m.recover(
        &RegistryState {
            agents: vec![crate::registry::RegistryAgent {
                id: "old".into(),
                hostname: "h".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        s.now,
    );
    s.register_agent(1, "cpus:1;mem:128");
    let reg = s.last_persisted();
    assert_eq!(reg.agents.len(), 2, "{reg:?}");
    assert!(reg.agents.iter().any(|a| a.id == "old"));
}

#[test]
fn kill_of_unreachable_task_gets_an_answer_and_launch_group_an_error() {
    let mut c = Config::for_test();
    c.agent_ping_timeout_ms = 100;
    c.max_agent_ping_timeouts = 1;
    let mut s = Sim::with(c);
    let agent = s.register_agent(1, "cpus:1;mem:128");
    let (fid, sid) = s.subscribe_with(
        FW_STREAM,
        FrameworkInfo { capabilities: vec![Capability { kind: CapabilityType::PartitionAware }], ..Default::default() },
    );
    let offer = s.offers(FW_STREAM).remove(0);
    let group = Operation {
        kind: OperationType::LaunchGroup,
        launch: None,
        launch_group: Some(LaunchGroup {
            task_group: TaskGroup { tasks: vec![task("g", &agent, "cpus:0.1;mem:16", "true")] },
        }),
        ..Default::default()
    };
    let accept = Call {
        accept: Some(Accept {
            offer_ids: vec![offer.id.clone()],
            operations: vec![Operation::launch(vec![task("t", &agent, "cpus:0.5;mem:64", "sleep 1000")]), group],
            filters: None,
        }),
        ..Call::new(CallType::Accept, Some(fid.clone()))
    };
    s.call(accept, &sid).unwrap();
    let ups = s.updates(FW_STREAM);
    let g = ups.iter().find(|u| u.task_id.as_str() == "g").expect("the group task is answered");
    assert_eq!(g.state, TaskState::Error);
    s.input(Input::AgentUnresponsive { conn: 1 });
    s.updates(FW_STREAM);
    let kill = Call {
        kill: Some(Kill { task_id: TaskId::new("t"), agent_id: None, kill_policy: None }),
        ..Call::new(CallType::Kill, Some(fid.clone()))
    };
    s.call(kill, &sid).unwrap();
    let ups = s.updates(FW_STREAM);
    assert_eq!(ups[0].state, TaskState::Unreachable);
    assert!(ups[0].message.as_deref().unwrap().contains("unreachable"));
}

#[test]
fn lost_agent_offers_are_rescinded() {
    let mut s = Sim::new();
    s.register_agent(1, "cpus:1;mem:128");
    s.subscribe();
    let offer = s.offers(FW_STREAM).remove(0);
    s.input(Input::AgentUnresponsive { conn: 1 });
    let ev = s.events(FW_STREAM);
    assert!(ev.iter().any(|e| e.rescind.as_ref().is_some_and(|r| r.offer_id == offer.id)), "{ev:?}");
    assert!(ev.iter().any(|e| e.kind == EventType::Failure));
    assert!(s.m.offers.is_empty());
}

#[test]
fn launching_on_another_frameworks_offer_is_refused() {
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:1;mem:128");
    let (_f1, _) = s.subscribe();
    let theirs = s.offers(FW_STREAM).remove(0);
    let (f2, sid2) = s.subscribe_with(2000, FrameworkInfo::default());
    s.launch(&f2, &sid2, &theirs, vec![task("sneaky", &agent, "cpus:0.1;mem:16", "true")]);
    let ups = s.updates(2000);
    assert_eq!(ups[0].state, TaskState::Lost);
    assert!(ups[0].message.as_deref().unwrap().contains("not for this framework"));
    // The owner's offer is untouched.
    assert!(s.m.offers.contains_key(&theirs.id));
    assert!(s.sent_to_agent(1).iter().all(|m| !matches!(m, MasterToAgent::RunTask { .. })));
}

/// UPDATE_WEIGHTS: a role weighted 3 is offered three times what its
/// sibling is; the weights are persisted, come back with the registry, and
/// show in GET_WEIGHTS and GET_ROLES. Bad weights are refused.
#[test]
fn role_weights_split_offers_and_survive_a_restart() {
    let mut s = Sim::new();
    let update = |role: &str, weight: f64| OperatorCall::update_weights(vec![(role.to_string(), weight)]);
    let call = update("eng", 3.0).unwrap();
    assert_eq!(s.m.operator(s.now, call).unwrap(), None);
    for bad in [
        update("eng", 0.0),
        update("eng", -2.0),
        update("eng", f64::NAN),
        update("eng", 5e-324),
        update("eng", 1e9),
        update("*", 2.0),
        update("/x", 2.0),
    ] {
        assert_eq!(bad.unwrap_err().status, 400);
    }
    let twice = OperatorCall::update_weights(vec![("a".into(), 2.0), ("a".into(), 3.0)]);
    assert!(twice.unwrap_err().message.contains("twice"));
    // Both frameworks are there before the agents come, one by one.
    let role = |r: &str| FrameworkInfo { role: Some(r.into()), ..Default::default() };
    s.subscribe_with(FW_STREAM, role("eng"));
    s.subscribe_with(FW_STREAM + 1, role("ops"));
    for i in 0..8 {
        s.register_agent(i + 1, "cpus:1;mem:128");
    }
    let (eng, ops) = (s.offers(FW_STREAM).len(), s.offers(FW_STREAM + 1).len());
    assert_eq!((eng, ops), (6, 2));

    let registry = s.last_persisted();
    assert_eq!(registry.weights, vec![crate::registry::RegistryWeight { role: "eng".into(), weight: 3.0 }]);
    let mut fresh = Sim::new();
    fresh.m.recover(&registry, fresh.now);
    assert_eq!(fresh.m.allocator.weight("eng"), 3.0);
    let weights = fresh.m.operator(fresh.now, OperatorCall::GetWeights).unwrap();
    assert_eq!(weights, Some(OperatorReply::Weights(vec![("eng".into(), 3.0)])));

    let Some(OperatorReply::Roles(roles)) = s.m.operator(s.now, OperatorCall::GetRoles).unwrap() else {
        panic!("roles")
    };
    let eng = roles.iter().find(|r| r.name == "eng").expect("eng");
    assert_eq!((eng.weight, eng.frameworks.len(), eng.allocated.0[0]), (3.0, 1, 6000));
    assert!((eng.dominant_share - 0.75 / 3.0).abs() < 1e-9, "{eng:?}");
    // Back to 1: no longer persisted.
    let call = update("eng", 1.0).unwrap();
    s.m.operator(s.now, call).unwrap();
    s.flush();
    assert!(s.last_persisted().weights.is_empty());
}

/// UPDATE_QUOTA limits what a role is offered, is persisted and comes back
/// with the registry; a limit of nothing clears it.
#[test]
fn quota_limits_offers_and_survives_a_restart() {
    use crate::allocator::{Quantities, Quota};
    let mut s = Sim::new();
    let limits = Quantities([Some(1500), None, None, None]);
    let quota = Quota { limits, ..Quota::default() };
    let call = OperatorCall::update_quota(vec![("eng".into(), quota)], false).unwrap();
    assert_eq!(s.m.operator(s.now, call).unwrap(), None);
    assert_eq!(OperatorCall::update_quota(vec![("*".into(), quota)], false).unwrap_err().status, 400);
    let negative = Quota { limits: Quantities([Some(-1), None, None, None]), ..Quota::default() };
    assert_eq!(OperatorCall::update_quota(vec![("eng".into(), negative)], false).unwrap_err().status, 400);
    s.subscribe_with(FW_STREAM, FrameworkInfo { role: Some("eng".into()), ..Default::default() });
    for i in 0..3 {
        s.register_agent(i + 1, "cpus:1;mem:128");
    }
    let cpus: f64 = s.offers(FW_STREAM).iter().map(|o| o.resources.cpus()).sum();
    assert_eq!(cpus, 1.5);
    let registry = s.last_persisted();
    let mut fresh = Sim::new();
    fresh.m.recover(&registry, fresh.now);
    assert_eq!(fresh.m.allocator.limits("eng"), limits);
    assert_eq!(
        fresh.m.operator(fresh.now, OperatorCall::GetQuota).unwrap(),
        Some(OperatorReply::Quota(vec![("eng".into(), quota)]))
    );
    let clear = OperatorCall::update_quota(vec![("eng".into(), Quota::default())], false).unwrap();
    s.m.operator(s.now, clear).unwrap();
    s.flush();
    assert!(s.last_persisted().quota.is_empty());
    assert_eq!(s.m.allocator.limits("eng"), Quantities::default());
}

/// With allocation workers, a full round over enough agents is split
/// between them: each agent is still offered once, a role's limit holds
/// across the parts, and the metrics count the split rounds.
#[test]
fn parallel_rounds_offer_each_agent_once_within_quota() {
    use crate::allocator::{Quantities, Quota};
    let mut config = Config::for_test();
    config.allocator.workers = 2;
    config.allocator.min_agents_per_worker = 4;
    let mut s = Sim::with(config);
    let quota = Quota { limits: Quantities([Some(5000), None, None, None]), ..Quota::default() };
    let call = OperatorCall::update_quota(vec![("eng".into(), quota)], false).unwrap();
    s.m.operator(s.now, call).unwrap();
    for i in 0..16 {
        s.register_agent(i + 1, "cpus:1;mem:128");
    }
    // Each subscription runs a full round over the 16 agents.
    s.subscribe_with(FW_STREAM, FrameworkInfo { role: Some("eng".into()), ..Default::default() });
    let eng = s.offers(FW_STREAM);
    assert_eq!(eng.iter().map(|o| o.resources.cpus()).sum::<f64>(), 5.0, "{eng:?}");
    s.subscribe_with(FW_STREAM + 1, FrameworkInfo { role: Some("ops".into()), ..Default::default() });
    let ops = s.offers(FW_STREAM + 1);
    assert_eq!(ops.iter().map(|o| o.resources.cpus()).sum::<f64>(), 11.0, "{ops:?}");
    let mut agents: Vec<&AgentId> = eng.iter().chain(&ops).map(|o| &o.agent_id).collect();
    agents.sort_unstable_by_key(|a| a.as_str());
    agents.dedup();
    assert_eq!(agents.len(), 16);
    assert_eq!(s.m.allocator.stats.parallel_runs, 2);
}

/// UPDATE_QUOTA with guarantees: they must nest and (unless forced) fit
/// the cluster; raising one takes back offers of other roles, and the
/// headroom is held back until the role's framework comes; they show in
/// GET_ROLES and come back with the registry.
#[test]
fn quota_guarantees_hold_back_headroom_and_survive_a_restart() {
    use crate::allocator::{Quantities, Quota};
    let mut s = Sim::new();
    let role = |r: &str| FrameworkInfo { role: Some(r.into()), ..Default::default() };
    s.subscribe_with(FW_STREAM + 1, role("ops"));
    for i in 0..8 {
        s.register_agent(i + 1, "cpus:1;mem:128");
    }
    assert_eq!(s.offers(FW_STREAM + 1).len(), 8);
    let guarantee =
        |cpus: i64| Quota { guarantees: Quantities([Some(cpus * 1000), None, None, None]), ..Quota::default() };
    let update = |s: &mut Sim, quota: Vec<(&str, Quota)>, force: bool| {
        let quota = quota.into_iter().map(|(r, q)| (r.to_string(), q)).collect();
        let r = OperatorCall::update_quota(quota, force).and_then(|call| s.m.operator(s.now, call));
        s.flush();
        r
    };
    // More than the cluster has: refused unless forced.
    let err = update(&mut s, vec![("eng", guarantee(9))], false).unwrap_err();
    assert_eq!(err.status, 409, "{err:?}");
    assert!(err.message.contains("force"), "{err:?}");
    // A guarantee above its limit, and children above their parent.
    let over = Quota { limits: Quantities([Some(1000), None, None, None]), ..guarantee(2) };
    assert_eq!(update(&mut s, vec![("eng", over)], false).unwrap_err().status, 400);
    let err = update(&mut s, vec![("eng", guarantee(3)), ("eng/dev", guarantee(2)), ("eng/ci", guarantee(2))], false)
        .unwrap_err();
    assert!(err.message.contains("more than its own"), "{err:?}");
    // The nearest guaranteed role above counts, across roles without one.
    let err = update(&mut s, vec![("eng", guarantee(3)), ("eng/a/b", guarantee(4))], false).unwrap_err();
    assert!(err.message.contains("more than its own"), "{err:?}");
    // Nothing was changed by the refused calls, and ops still holds its
    // offers.
    assert!(s.m.quota.is_empty());
    assert!(s.events(FW_STREAM + 1).iter().all(|e| e.rescind.is_none()));

    update(&mut s, vec![("eng", guarantee(3)), ("eng/dev", guarantee(2))], false).unwrap();
    // ops's outstanding offers were taken back, and it is offered again
    // all but eng's 3 cpus.
    let ev = s.events(FW_STREAM + 1);
    assert_eq!(ev.iter().filter(|e| e.rescind.is_some()).count(), 8, "{ev:?}");
    let cpus: f64 =
        ev.iter().filter_map(|e| e.offers.as_ref()).flat_map(|o| &o.offers).map(|o| o.resources.cpus()).sum();
    assert_eq!(cpus, 5.0);
    s.advance(10_000);
    assert!(s.offers(FW_STREAM + 1).is_empty(), "the headroom stays free");
    // eng's framework (in eng/dev) comes, and gets the guarantee.
    s.subscribe_with(FW_STREAM, role("eng/dev"));
    let cpus: f64 = s.offers(FW_STREAM).iter().map(|o| o.resources.cpus()).sum();
    // eng/dev's own guarantee (2) bounds what it gets first; the third cpu
    // held back for eng goes to it too, toward eng's guarantee.
    assert_eq!(cpus, 3.0);
    let Some(OperatorReply::Roles(roles)) = s.m.operator(s.now, OperatorCall::GetRoles).unwrap() else {
        panic!("roles")
    };
    let eng = roles.iter().find(|r| r.name == "eng").expect("eng");
    assert_eq!(eng.quota, guarantee(3));
    assert_eq!(eng.consumed.0[0], 3000);

    // Forced, a guarantee beyond the cluster is taken.
    update(&mut s, vec![("big", guarantee(100))], true).unwrap();
    let registry = s.last_persisted();
    let mut fresh = Sim::new();
    fresh.m.recover(&registry, fresh.now);
    assert_eq!(fresh.m.allocator.guarantees("eng"), guarantee(3).guarantees);
    assert_eq!(fresh.m.allocator.guarantees("eng/dev"), guarantee(2).guarantees);
    assert_eq!(fresh.m.allocator.guarantees("big"), guarantee(100).guarantees);
    assert_eq!(fresh.m.quota, s.m.quota);
}

/// Offer constraints from a SUBSCRIBE in Mesos's JSON: a framework that
/// wants `zone` z1 (or a host named `special`) is offered only those
/// agents; bad constraints refuse the subscription with the reason.
#[test]
fn offer_constraints_pick_the_agents_a_framework_is_offered() {
    let mut s = Sim::new();
    let subscribe = |s: &mut Sim, stream: ConnId, constraints: serde_json::Value| {
        let sub: Subscribe = serde_json::from_value(serde_json::json!({
            "framework_info": {"user": "u", "name": "n", "roles": ["eng"], "capabilities": [{"type": "MULTI_ROLE"}]},
            "offer_constraints": constraints,
        }))
        .expect("Mesos JSON");
        let mut call = Call::new(CallType::Subscribe, None);
        call.subscribe = Some(sub);
        let r = s.m.subscribe(s.now, call, stream);
        s.flush();
        r
    };
    let z1_or_special = serde_json::json!({"role_constraints": {"eng": {"groups": [
        {"attribute_constraints": [{"selector": {"attribute_name": "zone"}, "predicate": {"text_equals": {"value": "z1"}}}]},
        {"attribute_constraints": [{"selector": {"pseudoattribute_type": "HOSTNAME"}, "predicate": {"text_matches": {"regex": "spec.*"}}}]}
    ]}}});
    assert!(matches!(subscribe(&mut s, FW_STREAM, z1_or_special), Subscription::Accepted { .. }));
    for (i, (host, zone)) in
        [("h1", Some("z1")), ("h2", Some("z2")), ("special", None), ("h4", None)].iter().enumerate()
    {
        let mut info = agent_info("cpus:1;mem:128");
        info.hostname = host.to_string();
        if let Some(z) = zone {
            info.attributes = agora_proto::resources::parse_attributes(&format!("zone:{z}")).unwrap();
        }
        s.input(Input::Agent {
            conn: 10 + i as u64,
            msg: Checked::of(&AgentToMaster::Register { info: Box::new(info) }),
        });
    }
    s.advance(s.m.config.allocation_interval_ms);
    let hosts: Vec<String> = s.offers(FW_STREAM).into_iter().map(|o| o.hostname).collect();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert!(hosts.contains(&"h1".to_string()) && hosts.contains(&"special".to_string()), "{hosts:?}");

    for (bad, says) in [
        (serde_json::json!({"role_constraints": {"ops": {"groups": []}}}), "not one of the framework's roles"),
        (
            serde_json::json!({"role_constraints": {"eng": {"groups": [{"attribute_constraints": [
                {"selector": {"attribute_name": "zone"}, "predicate": {"text_matches": {"regex": "("}}}]}]}}}),
            "invalid offer constraint regex",
        ),
        (
            serde_json::json!({"role_constraints": {"eng": {"groups": [{"attribute_constraints": [
                {"selector": {"attribute_name": "zone"}, "predicate": {"text_matches": {"regex": "a)|(b"}}}]}]}}}),
            "invalid offer constraint regex",
        ),
        (
            serde_json::json!({"role_constraints": {"eng": {"groups": [{"attribute_constraints": [
                {"selector": {"attribute_name": "zone"}, "predicate": {}}]}]}}}),
            "exactly one predicate",
        ),
        (
            serde_json::json!({"role_constraints": {"eng": {"groups": [{"attribute_constraints": [
                {"selector": {"pseudoattribute_type": "REGION"}, "predicate": {"exists": {}}}]}]}}}),
            "REGION",
        ),
    ] {
        match subscribe(&mut s, FW_STREAM + 1, bad.clone()) {
            Subscription::Refused { message } => assert!(message.contains(says), "{bad}: {message}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

/// `text` (Mesos's syntax), with every reservation made dynamic.
fn dynamic(text: &str) -> Resources {
    Resources::from_vec(
        Resources::parse(text)
            .unwrap()
            .into_vec()
            .into_iter()
            .map(|mut r| {
                if let Some(x) = r.reservation.as_mut() {
                    x.kind = agora_proto::resources::ReservationKind::Dynamic;
                }
                r
            })
            .collect(),
    )
}

/// `size` MB of disk dynamically reserved to `role`, holding volume `id`.
fn volume(role: &str, size: u32, id: &str) -> Resources {
    let mut r = dynamic(&format!("disk({role}):{size}")).into_vec().remove(0);
    r.volume = Some(Box::new(agora_proto::resources::Volume {
        id: id.into(),
        principal: None,
        container_path: "data".into(),
        read_only: false,
    }));
    Resources::from_vec(vec![r])
}

fn checkpoints(msgs: &[MasterToAgent]) -> Vec<Resources> {
    msgs.iter()
        .filter_map(|m| match m {
            MasterToAgent::CheckpointResources { resources } => Some(resources.clone()),
            _ => None,
        })
        .collect()
}

/// A framework reserves part of an offer and launches on the reservation
/// in the same ACCEPT; the reservation is offered only to its role, kept by
/// the agent and the registry, and an UNRESERVE gives it back to everyone.
#[test]
fn offer_operations_reserve_then_launch_and_unreserve() {
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:2;mem:256");
    let eng = FrameworkInfo { role: Some("eng".into()), principal: Some("alice".into()), ..Default::default() };
    let (fid, sid) = s.subscribe_with(FW_STREAM, eng);
    let offer = s.offers(FW_STREAM).remove(0);
    // `ops` comes while `eng` holds the whole agent.
    let ops = FrameworkInfo { role: Some("ops".into()), ..Default::default() };
    s.subscribe_with(FW_STREAM + 1, ops);
    let reserved = dynamic("cpus(eng):1;mem(eng):64");
    let mut reserve = Operation::reserve(reserved.clone());
    reserve.id = Some(OperationId { value: "r1".into() });
    let mut bad = Operation::reserve(dynamic("cpus(eng):5"));
    bad.id = Some(OperationId { value: "r2".into() });
    let mut t_res = dynamic("cpus(eng):1;mem(eng):64").into_vec();
    for r in t_res.iter_mut() {
        r.reservation.as_mut().unwrap().principal = Some("alice".into());
    }
    let t = TaskInfo {
        resources: Resources::from_vec(t_res).allocate_to("eng"),
        ..task("t1", &agent, "cpus:1", "sleep 100")
    };
    let mut call = Call::new(CallType::Accept, Some(fid.clone()));
    call.accept = Some(Accept {
        offer_ids: vec![offer.id.clone()],
        operations: vec![reserve, bad, Operation::launch(vec![t])],
        filters: Some(Filters { refuse_seconds: Some(0.0) }),
    });
    assert_eq!(s.call(call, &sid), Ok(202));
    let statuses: Vec<OperationStatus> =
        s.events(FW_STREAM).into_iter().filter_map(|e| e.update_operation_status.map(|u| u.status)).collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert_eq!(statuses[0].state, OperationState::OperationFinished);
    assert_eq!(statuses[1].state, OperationState::OperationError);
    assert!(statuses[1].message.as_deref().unwrap().contains("not possible"), "{statuses:?}");
    let sent = s.sent_to_agent(1);
    assert!(sent.iter().any(|m| matches!(m, MasterToAgent::RunTask { .. })), "{sent:?}");
    let kept = checkpoints(&sent);
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].cpus(), kept[0].mem_mb()), (1.0, 64.0));
    assert!(kept[0].iter().all(|r| r.reservation.as_ref().unwrap().principal.as_deref() == Some("alice")));
    let a = &s.m.agents[&agent].info.resources;
    assert_eq!((a.cpus(), a.checkpointed().cpus()), (2.0, 1.0), "{a}");
    assert_eq!(s.last_persisted().agents[0].resources, kept[0]);

    // The task ends: its reserved resources go to `eng` only.
    s.agent_update(1, &fid, "t1", TaskState::Finished, 1);
    s.advance(2_000);
    let ops_offers = s.offers(FW_STREAM + 1);
    assert!(!ops_offers.is_empty());
    for o in ops_offers {
        assert!(o.resources.iter().all(|r| r.reservation.is_none()), "ops is offered {}", o.resources);
    }
    let eng_offers = s.offers(FW_STREAM);
    let held: Resources = eng_offers.iter().fold(Resources::new(), |acc, o| acc.plus(&o.resources));
    assert_eq!(held.checkpointed().cpus(), 1.0, "{held}");

    // UNRESERVE in an offer that holds it.
    let offer = eng_offers.iter().find(|o| !o.resources.checkpointed().is_empty()).unwrap();
    let mut call = Call::new(CallType::Accept, Some(fid.clone()));
    call.accept = Some(Accept {
        offer_ids: vec![offer.id.clone()],
        operations: vec![Operation::unreserve(offer.resources.checkpointed())],
        filters: Some(Filters { refuse_seconds: Some(0.0) }),
    });
    assert_eq!(s.call(call, &sid), Ok(202));
    assert_eq!(checkpoints(&s.sent_to_agent(1)), vec![Resources::new()]);
    assert!(s.m.agents[&agent].info.resources.checkpointed().is_empty());
    assert_eq!(s.m.agents[&agent].info.resources.cpus(), 2.0);
}

/// The operator endpoints: reserve, create a volume, refuse what cannot be
/// done (and change nothing), keep it all across a master restart, refuse
/// to destroy a volume in use, then destroy and unreserve.
#[test]
fn operator_reservations_and_volumes() {
    let mut s = Sim::new();
    let agent = s.register_agent(1, "cpus:2;mem:256;disk:1024");
    s.sent_to_agent(1);
    let op = |s: &mut Sim, op: ResourceOp| {
        let r = s.m.operator(s.now, OperatorCall::Operate { agent_id: agent.clone(), op });
        s.flush();
        r.map_err(|e| (e.status, e.message))
    };
    assert_eq!(op(&mut s, ResourceOp::Reserve(dynamic("disk(eng):512;cpus(eng):1"))), Ok(None));
    assert_eq!(checkpoints(&s.sent_to_agent(1)).len(), 1);
    let before = s.m.agents[&agent].info.resources.clone();

    // Refused, and nothing changes.
    let refused: Vec<(ResourceOp, u16, &str)> = vec![
        (ResourceOp::Reserve(dynamic("disk(eng):1024")), 409, "not on the agent"),
        (ResourceOp::Reserve(Resources::parse("cpus(eng):0.5").unwrap()), 400, "dynamic reservation"),
        (ResourceOp::Reserve(Resources::new()), 400, "names no resources"),
        (ResourceOp::Unreserve(dynamic("disk(ops):10")), 409, "not on the agent"),
        (ResourceOp::Unreserve(Resources::parse("cpus:1").unwrap()), 400, "only dynamic"),
        (ResourceOp::Create(volume("eng", 1024, "v1")), 409, "not on the agent"),
        (ResourceOp::Create(Resources::parse("disk:128").unwrap()), 400, "reserved disk"),
        (ResourceOp::Destroy(volume("eng", 128, "nope")), 409, "not on the agent"),
    ];
    for (bad, status, says) in refused {
        let name = bad.name();
        let (got, message) = op(&mut s, bad).unwrap_err();
        assert_eq!(got, status, "{name}: {message}");
        assert!(message.contains(says), "{name}: {message}");
        assert_eq!(s.m.agents[&agent].info.resources, before);
        assert!(checkpoints(&s.sent_to_agent(1)).is_empty());
    }
    let mut unsafe_id = volume("eng", 128, "../x");
    assert_eq!(op(&mut s, ResourceOp::Create(unsafe_id.clone())).unwrap_err().0, 400);
    unsafe_id = volume("eng", 128, "v1");
    let mut r = unsafe_id.into_vec();
    r[0].volume.as_mut().unwrap().container_path = "/etc".into();
    assert_eq!(op(&mut s, ResourceOp::Create(Resources::from_vec(r))).unwrap_err().0, 400);
    let unknown = s.m.operator(
        s.now,
        OperatorCall::Operate { agent_id: AgentId::new("nope"), op: ResourceOp::Reserve(dynamic("cpus(eng):1")) },
    );
    assert_eq!(unknown.unwrap_err().status, 404);

    assert_eq!(op(&mut s, ResourceOp::Create(volume("eng", 128, "v1"))), Ok(None));
    assert_eq!(op(&mut s, ResourceOp::Create(volume("eng", 128, "v1"))).unwrap_err().0, 400, "same id twice");
    let kept = checkpoints(&s.sent_to_agent(1)).pop().unwrap();
    assert_eq!(kept.disk_mb(), 512.0);
    assert_eq!(kept.iter().filter(|r| r.volume.is_some()).count(), 1);

    // A new master from the registry; the agent comes back without the
    // volume (it missed the message): it is sent again.
    let registry = s.last_persisted();
    let mut s2 = Sim::new();
    s2.m.recover(&registry, s2.now);
    s2.input(Input::Agent {
        conn: 7,
        msg: Checked::of(&AgentToMaster::Reregister {
            agent_id: agent.clone(),
            info: Box::new(agent_info("cpus:2;mem:256;disk:1024")),
            tasks: vec![],
            frameworks: vec![],
        }),
    });
    assert_eq!(checkpoints(&s2.sent_to_agent(7)), vec![kept.clone()]);
    assert_eq!(s2.m.agents[&agent].info.resources.checkpointed(), kept);
    let mut s = s2;

    // A framework of `eng` is offered the volume and uses it.
    let (fid, sid) = s.subscribe_with(FW_STREAM, FrameworkInfo { role: Some("eng".into()), ..Default::default() });
    let offer = s.offers(FW_STREAM).remove(0);
    let vol = offer.resources.filter(|r| r.volume.is_some());
    assert_eq!(vol.disk_mb(), 128.0, "{}", offer.resources);
    let t = TaskInfo {
        resources: vol.plus(&Resources::parse("cpus:0.5;mem:32").unwrap().allocate_to("eng")),
        ..task("t1", &agent, "cpus:1", "echo hi > data/f")
    };
    s.launch(&fid, &sid, &offer, vec![t]);
    let agent_id = agent.clone();
    let op = |s: &mut Sim, op: ResourceOp| {
        let r = s.m.operator(s.now, OperatorCall::Operate { agent_id: agent_id.clone(), op });
        s.flush();
        r.map_err(|e| (e.status, e.message))
    };
    let (status, message) = op(&mut s, ResourceOp::Destroy(volume("eng", 128, "v1"))).unwrap_err();
    assert_eq!(status, 409);
    assert!(message.contains("in use by task t1"), "{message}");
    s.agent_update(7, &fid, "t1", TaskState::Finished, 1);
    assert_eq!(op(&mut s, ResourceOp::Destroy(volume("eng", 128, "v1"))), Ok(None));
    assert_eq!(op(&mut s, ResourceOp::Unreserve(dynamic("disk(eng):512;cpus(eng):1"))), Ok(None));
    assert_eq!(checkpoints(&s.sent_to_agent(7)).pop(), Some(Resources::new()));
    assert!(s.last_persisted().agents[0].resources.is_empty());
    assert_eq!(s.m.agents[&agent].info.resources, Resources::parse("cpus:2;mem:256;disk:1024").unwrap());
}

/// Optimistic offers: two frameworks are offered the same resources. The
/// first ACCEPT wins whichever of the two offers it names (the charge moves
/// to it); the other offer is rescinded, and a launch on it gets
/// TASK_DROPPED saying why. Only one framework is ever charged.
/// A master with `--optimistic-offers 1`, frameworks `a` (on FW_STREAM)
/// and `b` (FW_STREAM + 1), then one agent (conn 1), which both are
/// offered.
fn optimistic_pair() -> (Sim, (FrameworkId, String), (FrameworkId, String), AgentId) {
    let mut config = Config::for_test();
    config.allocator.optimistic = 1;
    let mut s = Sim::with(config);
    let info = |n: &str| FrameworkInfo { user: "u".into(), name: n.into(), ..Default::default() };
    let a = s.subscribe_with(FW_STREAM, info("a"));
    let b = s.subscribe_with(FW_STREAM + 1, info("b"));
    let agent = s.register_agent(1, "cpus:2;mem:256");
    (s, a, b, agent)
}

#[test]
fn optimistic_offers_first_accept_wins() {
    for winner_is_charged in [true, false] {
        let (mut s, a, b, agent) = optimistic_pair();
        let (oa, ob) = (s.offers(FW_STREAM), s.offers(FW_STREAM + 1));
        assert_eq!((oa.len(), ob.len()), (1, 1), "both are offered the agent");
        assert_eq!(oa[0].resources, ob[0].resources.unallocated().allocate_to("*"));
        let charged: Vec<bool> = [&oa[0], &ob[0]].iter().map(|o| s.m.offers[&o.id].charged).collect();
        assert_eq!(charged.iter().filter(|c| **c).count(), 1, "exactly one offer is charged");
        // Pick the winner: the charged offer's framework, or the other.
        let a_first = charged[0] == winner_is_charged;
        let ((wf, wsid), wstream, wo, (lf, lsid), lstream, lo) = if a_first {
            (a, FW_STREAM, &oa[0], b, FW_STREAM + 1, &ob[0])
        } else {
            (b, FW_STREAM + 1, &ob[0], a, FW_STREAM, &oa[0])
        };
        s.launch(&wf, &wsid, wo, vec![task("win", &agent, "cpus:1;mem:128", "true")]);
        let run: Vec<_> = s.sent_to_agent(1);
        assert!(matches!(&run[..], [MasterToAgent::RunTask { task, .. }] if task.task_id.as_str() == "win"), "{run:?}");
        let ev = s.events(lstream);
        assert!(ev.iter().any(|e| e.rescind.as_ref().is_some_and(|r| r.offer_id == lo.id)), "{ev:?}");
        // What the winner left went back and was offered again at once.
        let again: Vec<Offer> =
            ev.into_iter().chain(s.events(wstream)).filter_map(|e| e.offers).flat_map(|o| o.offers).collect();
        // The loser launches anyway: dropped, with the reason.
        s.launch(&lf, &lsid, lo, vec![task("lose", &agent, "cpus:1;mem:128", "true")]);
        let up = s.updates(lstream);
        assert_eq!(up.len(), 1, "{up:?}");
        assert_eq!(up[0].state, TaskState::Dropped);
        assert!(up[0].message.as_deref().unwrap_or("").contains("taken by framework"), "{:?}", up[0]);
        assert!(s.sent_to_agent(1).iter().all(|m| !matches!(m, MasterToAgent::RunTask { .. })));
        assert_eq!(s.m.counters.offers_lost_races, 1);
        // Each framework is charged for exactly its task and its charged
        // offers, never more than the agent has.
        for (f, task_cpus) in [(&wf, 1.0), (&lf, 0.0)] {
            let offered: f64 = again
                .iter()
                .filter(|o| &o.framework_id == f && s.m.offers[&o.id].charged)
                .map(|o| o.resources.cpus())
                .sum();
            assert_eq!(s.m.allocator.allocated(f, &agent).cpus(), task_cpus + offered, "{f}");
        }
        assert!(s.m.allocator.available(&agent).unwrap().cpus() >= 0.0);
        assert_eq!(
            s.m.allocator.allocated(&wf, &agent).cpus() + s.m.allocator.allocated(&lf, &agent).cpus(),
            2.0 - s.m.allocator.available(&agent).unwrap().cpus()
        );
    }
}

/// Optimistic offers: when the charged offer is declined, the other
/// offer of the group takes the charge, so the resources are not offered
/// a third time while it is outstanding; declining that one frees them.
#[test]
fn optimistic_offers_hand_the_charge_over_on_decline() {
    let (mut s, a, b, agent) = optimistic_pair();
    let offers = [s.offers(FW_STREAM).remove(0), s.offers(FW_STREAM + 1).remove(0)];
    let fws = [a, b];
    let first = offers.iter().position(|o| s.m.offers[&o.id].charged).expect("one charged");
    let other = 1 - first;
    let decline = |s: &mut Sim, i: usize| {
        let mut call = Call::new(CallType::Decline, Some(fws[i].0.clone()));
        call.decline = Some(Decline {
            offer_ids: vec![offers[i].id.clone()],
            filters: Some(Filters { refuse_seconds: Some(0.0) }),
        });
        assert_eq!(s.call(call, &fws[i].1), Ok(202));
    };
    decline(&mut s, first);
    assert!(s.m.offers[&offers[other].id].charged, "the charge moved");
    assert_eq!(s.m.allocator.allocated(&fws[other].0, &agent).cpus(), 2.0);
    s.advance(2_000);
    assert!(s.offers(FW_STREAM).is_empty() && s.offers(FW_STREAM + 1).is_empty(), "nothing free to offer");
    decline(&mut s, other);
    assert!(s.m.allocator.allocated(&fws[other].0, &agent).is_empty());
    s.advance(2_000);
    let again = s.offers(FW_STREAM).len() + s.offers(FW_STREAM + 1).len();
    assert_eq!(again, 2, "offered to both again");
}
