//! Optimistic against pessimistic offers: time-to-placement and fairness.
//!
//! Not a timing benchmark: a simulation of the master's real core
//! (allocator, offers, accepts, rescinds) on a simulated clock, so the
//! figures do not depend on the machine's speed. They vary a little from run
//! to run: the master's maps hash with a per-process seed, which orders some
//! ties. 40 agents of 8 cpus; 8 frameworks
//! in one role, 4 fast (they answer an offer in 10 ms) and 4 slow (1 s);
//! events take 2 ms to reach a framework. Each framework submits 1-cpu
//! tasks at a steady rate; a task runs 5 to 15 s. A framework packs its
//! waiting tasks into each offer and declines what it cannot use (refusing
//! it for 1 s); a task dropped because its offer was lost is tried again.
//!
//! Two loads: 90% of the cluster (time-to-placement), and 150% (every
//! framework wants more than its share: fairness). Each in pessimistic mode
//! and with each allocation also offered to 2 more frameworks.
//!
//! `cargo bench -p agora-master --bench optimistic`

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use agora_master::core::{Action, Config, Input, Master, Now, Subscription};
use agora_proto::mesos::{
    AgentId, CommandInfo, FrameworkId, FrameworkInfo, Offer, OfferId, Source, TaskId, TaskInfo, TaskState, TaskStatus,
};
use agora_proto::resources::Resources;
use agora_proto::scheduler::{Accept, Call, CallType, Decline, Event, Filters, Operation, Subscribe};
use agora_proto::wire::{AgentInfo, AgentToMaster, Checked, MasterToAgent, StatusUpdate};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const AGENTS: u64 = 40;
const AGENT_CPUS: u64 = 8;
const FRAMEWORKS: usize = 8;
const NET_MS: u64 = 2;
const RUN_MS: u64 = 300_000;
/// Placements are counted after the cluster has warmed up.
const WARMUP_MS: u64 = 30_000;
const STREAM: u64 = 1_000_000;

#[derive(Debug)]
enum Ev {
    Submit(usize),
    /// Master events arriving at a framework.
    Deliver(usize, Box<Event>),
    /// A framework answers the offers it holds.
    Respond(usize, Vec<OfferId>),
    Finish {
        conn: u64,
        fw: usize,
        task: TaskId,
    },
    Tick,
}

struct Fw {
    id: FrameworkId,
    stream_id: String,
    latency_ms: u64,
    /// Waiting tasks, with when they were submitted.
    waiting: VecDeque<(TaskId, u64)>,
    submitted_at: HashMap<TaskId, u64>,
    held: HashMap<OfferId, Offer>,
    /// Time-to-placement of each task placed after the warm-up.
    placed: Vec<u64>,
    cpu_ms: u64,
    next_task: u64,
}

struct Sim {
    m: Master,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: HashMap<usize, Ev>,
    fws: Vec<Fw>,
    agents: HashMap<AgentId, u64>,
    rng: SmallRng,
    submit_every_ms: u64,
}

impl Sim {
    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        let key = self.seq as usize;
        self.events.insert(key, ev);
        self.queue.push(Reverse((t, self.seq, key)));
    }

    fn now(&self) -> Now {
        Now { mono_ms: self.now, wall_secs: 1_700_000_000.0 + self.now as f64 / 1000.0 }
    }

    fn actions(&mut self) {
        let now = self.now();
        for a in self.m.take_actions(now) {
            match a {
                Action::Event { streams, event } => {
                    for s in streams {
                        let fw = (s - STREAM) as usize;
                        self.at(self.now + NET_MS, Ev::Deliver(fw, event.clone()));
                    }
                }
                Action::ToAgent { conn, msg: MasterToAgent::RunTask { task, framework } } => {
                    let fw =
                        self.fws.iter().position(|f| Some(&f.id) == framework.id.as_ref()).expect("known framework");
                    let f = &mut self.fws[fw];
                    let submitted = f.submitted_at.remove(&task.task_id).expect("submitted");
                    if submitted >= WARMUP_MS {
                        f.placed.push(self.now - submitted);
                    }
                    let run = self.rng.gen_range(5_000..15_000);
                    f.cpu_ms += run.min(RUN_MS.saturating_sub(self.now));
                    self.at(self.now + run, Ev::Finish { conn, fw, task: task.task_id.clone() });
                }
                _ => {}
            }
        }
    }

    fn call(&mut self, call: Call, fw: usize) {
        let sid = self.fws[fw].stream_id.clone();
        let now = self.now();
        self.m.call(now, call, Some(&sid)).expect("valid call");
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now();
        match ev {
            Ev::Tick => {
                self.m.tick(now);
                self.at(self.now + 100, Ev::Tick);
            }
            Ev::Submit(fw) => {
                let f = &mut self.fws[fw];
                f.next_task += 1;
                let id = TaskId::new(format!("f{fw}-t{}", f.next_task));
                f.waiting.push_back((id.clone(), self.now));
                f.submitted_at.insert(id, self.now);
                let every = self.submit_every_ms;
                self.at(self.now + every, Ev::Submit(fw));
            }
            Ev::Deliver(fw, event) => {
                if let Some(o) = event.offers {
                    let ids: Vec<OfferId> = o.offers.iter().map(|o| o.id.clone()).collect();
                    for o in o.offers {
                        self.fws[fw].held.insert(o.id.clone(), o);
                    }
                    let t = self.now + self.fws[fw].latency_ms;
                    self.at(t, Ev::Respond(fw, ids));
                }
                let f = &mut self.fws[fw];
                if let Some(r) = event.rescind {
                    f.held.remove(&r.offer_id);
                }
                if let Some(u) = event.update {
                    // Dropped or lost on the way: try it again.
                    if matches!(u.status.state, TaskState::Dropped | TaskState::Lost) {
                        let submitted = f.submitted_at.get(&u.status.task_id).copied().unwrap_or(self.now);
                        f.waiting.push_front((u.status.task_id.clone(), submitted));
                    }
                }
            }
            Ev::Respond(fw, ids) => {
                for id in ids {
                    let Some(offer) = self.fws[fw].held.remove(&id) else { continue };
                    let fits = offer.resources.cpus() as usize;
                    let f = &mut self.fws[fw];
                    let n = fits.min(f.waiting.len());
                    let tasks: Vec<TaskInfo> = f
                        .waiting
                        .drain(..n)
                        .map(|(task_id, _)| TaskInfo {
                            name: task_id.value.clone(),
                            task_id,
                            agent_id: offer.agent_id.clone(),
                            resources: Resources::parse("cpus:1;mem:1024").unwrap().allocate_to("*"),
                            command: Some(CommandInfo::shell("true")),
                            ..Default::default()
                        })
                        .collect();
                    let filters = Some(Filters { refuse_seconds: Some(1.0) });
                    let fid = Some(f.id.clone());
                    let call = if tasks.is_empty() {
                        let mut c = Call::new(CallType::Decline, fid);
                        c.decline = Some(Decline { offer_ids: vec![offer.id.clone()], filters });
                        c
                    } else {
                        let mut c = Call::new(CallType::Accept, fid);
                        c.accept = Some(Accept {
                            offer_ids: vec![offer.id.clone()],
                            operations: vec![Operation::launch(tasks)],
                            filters,
                        });
                        c
                    };
                    self.call(call, fw);
                }
            }
            Ev::Finish { conn, fw, task } => {
                let mut status = TaskStatus::new(task, TaskState::Finished);
                status.uuid = Some(vec![7; 16]);
                status.source = Some(Source::Agent);
                let u =
                    StatusUpdate { framework_id: self.fws[fw].id.clone(), status, latest_state: TaskState::Finished };
                self.m.step(now, Input::Agent { conn, msg: Checked::of(&AgentToMaster::StatusUpdate(Box::new(u))) });
            }
        }
        self.actions();
    }
}

struct Outcome {
    fast: Vec<u64>,
    slow: Vec<u64>,
    shares: Vec<f64>,
    lost_races: u64,
    offers: u64,
}

fn run(optimistic: usize, load: f64) -> Outcome {
    let mut config = Config::for_test();
    config.allocator.optimistic = optimistic;
    let mut m = Master::new(config, Now { mono_ms: 0, wall_secs: 1_700_000_000.0 });
    let mut fws = Vec::new();
    for i in 0..FRAMEWORKS {
        let info = FrameworkInfo { user: "u".into(), name: format!("f{i}"), ..Default::default() };
        let mut call = Call::new(CallType::Subscribe, None);
        call.subscribe = Some(Subscribe { framework_info: info, suppressed_roles: vec![], offer_constraints: None });
        let Subscription::Accepted { framework_id, stream_id } =
            m.subscribe(Now { mono_ms: 0, wall_secs: 1_700_000_000.0 }, call, STREAM + i as u64)
        else {
            panic!("subscribed")
        };
        fws.push(Fw {
            id: framework_id,
            stream_id,
            latency_ms: if i % 2 == 0 { 10 } else { 1_000 },
            waiting: VecDeque::new(),
            submitted_at: HashMap::new(),
            held: HashMap::new(),
            placed: Vec::new(),
            cpu_ms: 0,
            next_task: 0,
        });
    }
    // Tasks last 10 s on average: to keep `load` of the cluster busy, all
    // frameworks together submit load × cpus / 10 s tasks a second.
    let per_second = load * (AGENTS * AGENT_CPUS) as f64 / 10.0;
    let submit_every_ms = (1000.0 * FRAMEWORKS as f64 / per_second) as u64;
    let mut sim = Sim {
        m,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: HashMap::new(),
        fws,
        agents: HashMap::new(),
        rng: SmallRng::seed_from_u64(7),
        submit_every_ms,
    };
    sim.actions();
    for conn in 0..AGENTS {
        let info = AgentInfo {
            hostname: format!("h{conn}"),
            port: 5051,
            resources: Resources::parse(&format!("cpus:{AGENT_CPUS};mem:{}", AGENT_CPUS * 1024)).unwrap(),
            attributes: vec![],
            version: "sim".into(),
        };
        let now = sim.now();
        sim.m.step(now, Input::Agent { conn, msg: Checked::of(&AgentToMaster::Register { info: Box::new(info) }) });
        for a in sim.m.take_actions(now) {
            if let Action::ToAgent { msg: MasterToAgent::Registered { agent_id, .. }, .. } = a {
                sim.agents.insert(agent_id, conn);
            } else if let Action::Event { streams, event } = a {
                for s in streams {
                    sim.at(NET_MS, Ev::Deliver((s - STREAM) as usize, event.clone()));
                }
            }
        }
    }
    for fw in 0..FRAMEWORKS {
        sim.at(fw as u64 * 7, Ev::Submit(fw));
    }
    sim.at(100, Ev::Tick);
    while let Some(Reverse((t, _, key))) = sim.queue.pop() {
        if t > RUN_MS {
            break;
        }
        sim.now = t;
        let ev = sim.events.remove(&key).expect("queued");
        sim.handle(ev);
    }
    let total: u64 = sim.fws.iter().map(|f| f.cpu_ms).sum();
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for f in &sim.fws {
        if f.latency_ms < 100 { &mut fast } else { &mut slow }.extend(&f.placed);
    }
    fast.sort_unstable();
    slow.sort_unstable();
    Outcome {
        fast,
        slow,
        shares: sim.fws.iter().map(|f| f.cpu_ms as f64 / total.max(1) as f64).collect(),
        lost_races: sim.m.counters.offers_lost_races,
        offers: sim.m.counters.offers_sent,
    }
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    if quick {
        return;
    }
    println!("| load | mode | fast: mean / p50 / p99 ms | slow: mean / p50 / p99 ms | cpu-time share fast / slow | Jain index | lost races | offers |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for load in [0.9, 1.5] {
        for (mode, n) in [("pessimistic", 0), ("optimistic (+2)", 2)] {
            let o = run(n, load);
            let fast_share: f64 = o.shares.iter().step_by(2).sum();
            let slow_share: f64 = o.shares.iter().skip(1).step_by(2).sum();
            let sum: f64 = o.shares.iter().sum();
            let sq: f64 = o.shares.iter().map(|s| s * s).sum();
            let jain = sum * sum / (o.shares.len() as f64 * sq);
            println!(
                "| {:.0}% | {mode} | {:.0} / {} / {} | {:.0} / {} / {} | {:.2} / {:.2} | {:.3} | {} | {} |",
                load * 100.0,
                mean(&o.fast),
                pct(&o.fast, 0.5),
                pct(&o.fast, 0.99),
                mean(&o.slow),
                pct(&o.slow, 0.5),
                pct(&o.slow, 0.99),
                fast_share,
                slow_share,
                jain,
                o.lost_races,
                o.offers,
            );
        }
    }
}
