//! The master's state machine: agents, frameworks, offers and tasks.
//!
//! Sans-IO: the glommio shell feeds it [`Input`]s (agent frames, closed
//! connections), scheduler calls and ticks, each with the current time
//! ([`Now`]), and drains the [`Action`]s it produces (frames to send, events to
//! stream, connections to close, registry writes). It owns the
//! [`Allocator`](crate::allocator::Allocator) and turns its allocations into
//! offers. There are no sockets, clocks, threads or JSON in here, so the whole
//! master can be driven by a test or a simulation.

mod agents;
mod frameworks;
mod operations;
mod optimistic;
mod roles;
mod tasks;

pub use operations::{Conversion, ResourceOp};
pub use roles::{OperatorCall, OperatorReply, RoleView, MAX_ROLE_UPDATES};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use agora_proto::mesos::{
    AgentId, FrameworkId, FrameworkInfo, OfferId, Reason, Source, TaskId, TaskInfo, TaskState, TaskStatus, TimeInfo,
};
use agora_proto::resources::Resources;
use agora_proto::scheduler::Event;
use agora_proto::wire::{AgentInfo, MasterToAgent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::allocator::{self, Allocator};
use crate::registry::RegistryState;

/// Identifies one connection (agent or scheduler stream) across shards; the
/// shell chooses the values, the core only hands them back in actions.
pub type ConnId = u64;

/// The current time, passed in with every input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Now {
    /// Monotonic milliseconds, for deadlines.
    pub mono_ms: u64,
    /// Seconds since the epoch, for timestamps shown to users.
    pub wall_secs: f64,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub master_id: String,
    pub hostname: String,
    /// Packed IPv4 in network order, as `MasterInfo.ip`.
    pub ip: u32,
    pub ip_text: String,
    pub port: u16,
    pub allocation_interval_ms: u64,
    /// Offers not used within this time are rescinded; `None` keeps them.
    pub offer_timeout_ms: Option<u64>,
    /// The shells ping every agent this often and count missed pongs.
    pub agent_ping_timeout_ms: u64,
    pub max_agent_ping_timeouts: u32,
    /// How long agents known from the registry have to re-register after a
    /// master restart before they are marked unreachable.
    pub agent_reregister_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub max_completed_tasks_per_framework: usize,
    pub max_completed_frameworks: usize,
    pub max_unreachable_agents: usize,
    /// Unreachable tasks kept per framework; the oldest go to the completed list.
    pub max_unreachable_tasks_per_framework: usize,
    pub allocator: allocator::Config,
    pub seed: u64,
}

impl Config {
    pub fn for_test() -> Config {
        Config {
            master_id: "m".into(),
            hostname: "localhost".into(),
            ip: u32::from_be_bytes([127, 0, 0, 1]),
            ip_text: "127.0.0.1".into(),
            port: 5050,
            allocation_interval_ms: 1000,
            offer_timeout_ms: None,
            agent_ping_timeout_ms: 15_000,
            max_agent_ping_timeouts: 5,
            agent_reregister_timeout_ms: 600_000,
            heartbeat_interval_ms: 15_000,
            max_completed_tasks_per_framework: 1000,
            max_completed_frameworks: 50,
            max_unreachable_agents: 1000,
            max_unreachable_tasks_per_framework: 1000,
            allocator: allocator::Config::default(),
            seed: 1,
        }
    }

    /// How long a disconnected agent has to come back before it is unreachable.
    pub fn agent_removal_timeout_ms(&self) -> u64 {
        self.agent_ping_timeout_ms.saturating_mul(self.max_agent_ping_timeouts as u64)
    }
}

/// Inputs from connections.
#[derive(Clone, Debug)]
pub enum Input {
    /// A frame from an agent connection, validated once by its shard and
    /// read here in place (pongs never get here; the shard that owns the
    /// connection handles them).
    Agent { conn: ConnId, msg: agora_proto::wire::Checked<agora_proto::wire::AgentToMaster> },
    /// The agent's connection closed.
    AgentClosed { conn: ConnId },
    /// The agent stopped answering pings; its shard closed the connection.
    AgentUnresponsive { conn: ConnId },
    /// A framework's subscription stream closed.
    StreamClosed { stream: ConnId },
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    ToAgent {
        conn: ConnId,
        msg: MasterToAgent,
    },
    CloseAgent {
        conn: ConnId,
    },
    /// One event for one or more streams: the shell encodes it once.
    Event {
        streams: Vec<ConnId>,
        event: Box<Event>,
    },
    CloseStream {
        stream: ConnId,
    },
    Persist(RegistryState),
}

/// A refused scheduler call: the HTTP status and a message for the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError { status: 400, message: m.into() }
    }
    pub fn forbidden(m: impl Into<String>) -> ApiError {
        ApiError { status: 403, message: m.into() }
    }
}

/// The result of a SUBSCRIBE that passed HTTP validation.
#[derive(Clone, Debug, PartialEq)]
pub enum Subscription {
    Accepted {
        framework_id: FrameworkId,
        stream_id: String,
    },
    /// Mesos answers these with 200 and a single ERROR event, then closes.
    Refused {
        message: String,
    },
}

#[derive(Clone, Debug)]
pub struct Stream {
    pub conn: ConnId,
    pub id: String,
}

/// One status a task went through, for `/master/state`.
#[derive(Clone, Debug)]
pub struct StatusRecord {
    pub state: TaskState,
    pub timestamp: f64,
}

#[derive(Clone, Debug)]
pub struct Task {
    pub info: TaskInfo,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub state: TaskState,
    pub role: String,
    pub statuses: Vec<StatusRecord>,
    pub unreachable_time: Option<f64>,
    /// The latest usage its agent reported.
    pub usage: Option<agora_proto::wire::TaskUsage>,
}

/// Bound on the status history kept per task.
const MAX_STATUSES_PER_TASK: usize = 16;

impl Task {
    fn record(&mut self, state: TaskState, timestamp: f64) {
        self.state = state;
        if self.statuses.len() >= MAX_STATUSES_PER_TASK {
            self.statuses.remove(1);
        }
        self.statuses.push(StatusRecord { state, timestamp });
    }
}

#[derive(Clone, Debug)]
pub struct Framework {
    pub id: FrameworkId,
    pub info: FrameworkInfo,
    pub roles: Vec<String>,
    pub stream: Option<Stream>,
    pub registered_time: f64,
    pub reregistered_time: Option<f64>,
    pub unregistered_time: Option<f64>,
    pub failover_deadline_ms: Option<u64>,
    /// Known only from re-registering agents; not yet re-subscribed.
    pub recovered: bool,
    /// Tasks that are not terminal, including unreachable ones.
    pub tasks: HashMap<TaskId, Task>,
    pub completed_tasks: VecDeque<Task>,
    pub offers: HashSet<OfferId>,
}

impl Framework {
    pub fn connected(&self) -> bool {
        self.stream.is_some()
    }

    pub fn partition_aware(&self) -> bool {
        self.info.has_capability(agora_proto::mesos::CapabilityType::PartitionAware)
    }
}

#[derive(Clone, Debug)]
pub struct Agent {
    pub id: AgentId,
    pub info: AgentInfo,
    pub conn: Option<ConnId>,
    pub registered_time: f64,
    pub reregistered_time: Option<f64>,
    /// Set while disconnected: when the agent becomes unreachable.
    pub removal_deadline_ms: Option<u64>,
    pub tasks: HashSet<(FrameworkId, TaskId)>,
    pub offers: HashSet<OfferId>,
    /// Kills asked for while the agent was disconnected, sent when it is back.
    pub pending_kills: HashMap<(FrameworkId, TaskId), Option<agora_proto::mesos::KillPolicy>>,
}

/// An agent known from the registry, expected back after a master restart.
#[derive(Clone, Debug)]
pub struct RecoveredAgent {
    pub hostname: String,
    /// Its dynamic reservations and persistent volumes, as last recorded.
    pub checkpointed: Resources,
    pub deadline_ms: u64,
}

impl Agent {
    fn new(id: AgentId, info: AgentInfo, conn: Option<ConnId>, now: Now) -> Agent {
        Agent {
            id,
            info,
            conn,
            registered_time: now.wall_secs,
            reregistered_time: None,
            removal_deadline_ms: None,
            tasks: HashSet::new(),
            offers: HashSet::new(),
            pending_kills: HashMap::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct OfferRecord {
    pub id: OfferId,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub role: String,
    pub resources: Resources,
    pub expires_ms: Option<u64>,
    /// Optimistic offers: the offers of the same resources to other
    /// frameworks share a group.
    pub group: Option<u64>,
    /// Whether the allocator counts the resources as this framework's (in
    /// a group, exactly one offer is charged).
    pub charged: bool,
}

/// Counters for `/metrics/snapshot`, named after Mesos's where one exists.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub tasks_terminal: HashMap<TaskState, u64>,
    pub tasks_launched: u64,
    pub valid_status_updates: u64,
    pub invalid_status_updates: u64,
    pub valid_status_update_acknowledgements: u64,
    pub invalid_status_update_acknowledgements: u64,
    pub agent_registrations: u64,
    pub agent_reregistrations: u64,
    pub agent_removals: u64,
    pub agents_unreachable: u64,
    pub framework_subscriptions: u64,
    pub framework_removals: u64,
    pub offers_sent: u64,
    pub offers_declined: u64,
    pub offers_rescinded: u64,
    pub offers_accepted: u64,
    /// Optimistic offers: launches on an offer another framework's ACCEPT
    /// had taken first.
    pub offers_lost_races: u64,
    pub messages_kill_task: u64,
    pub messages_reconcile_tasks: u64,
    pub messages_revive: u64,
    pub messages_suppress: u64,
    pub invalid_calls: u64,
}

/// The master's whole state.
pub struct Master {
    pub config: Config,
    pub start_time: f64,
    pub agents: HashMap<AgentId, Agent>,
    agents_by_conn: HashMap<ConnId, AgentId>,
    /// Agents removed after losing contact, with the time; bounded.
    pub unreachable_agents: VecDeque<(AgentId, f64)>,
    /// Agents that shut down or were otherwise removed for good; bounded.
    pub removed_agents: VecDeque<AgentId>,
    /// Agents the registry knew at start-up that have not re-registered yet,
    /// with the deadline for doing so.
    pub recovered_agents: HashMap<AgentId, RecoveredAgent>,
    /// No disconnected agent's removal is due before this (`u64::MAX`:
    /// none is waiting); it may be early, never late.
    next_agent_removal_ms: u64,
    pub frameworks: HashMap<FrameworkId, Framework>,
    frameworks_by_stream: HashMap<ConnId, FrameworkId>,
    pub completed_frameworks: VecDeque<Framework>,
    pub offers: HashMap<OfferId, OfferRecord>,
    /// Optimistic offers: the offers of each group.
    offer_groups: HashMap<u64, Vec<OfferId>>,
    next_offer_group: u64,
    /// Offers rescinded because another framework used the same resources
    /// first, with the winner (bounded, oldest forgotten first): a launch on
    /// one gets TASK_DROPPED saying so.
    lost_offers: HashMap<OfferId, FrameworkId>,
    lost_order: VecDeque<OfferId>,
    pub allocator: Allocator,
    /// Role weights set by operators (the ones that are not 1), persisted.
    pub weights: BTreeMap<String, f64>,
    /// Role quota set by operators, persisted.
    pub quota: BTreeMap<String, allocator::Quota>,
    pub counters: Counters,
    actions: Vec<Action>,
    alloc_dirty: HashSet<AgentId>,
    alloc_full: bool,
    next_allocation_ms: u64,
    next_heartbeat_ms: u64,
    /// A registry snapshot is due; `persist_now`: with this batch, else
    /// once `next_persist_ms` has come (see `persist_agents`).
    persist_due: bool,
    persist_now: bool,
    next_persist_ms: u64,
    next_framework_seq: u64,
    next_agent_seq: u64,
    next_offer_seq: u64,
    rng: SmallRng,
}

impl Master {
    pub fn new(config: Config, now: Now) -> Master {
        let allocator = Allocator::new(config.allocator.clone());
        let rng = SmallRng::seed_from_u64(config.seed);
        Master {
            start_time: now.wall_secs,
            agents: HashMap::new(),
            agents_by_conn: HashMap::new(),
            unreachable_agents: VecDeque::new(),
            removed_agents: VecDeque::new(),
            recovered_agents: HashMap::new(),
            next_agent_removal_ms: u64::MAX,
            frameworks: HashMap::new(),
            frameworks_by_stream: HashMap::new(),
            completed_frameworks: VecDeque::new(),
            offers: HashMap::new(),
            offer_groups: HashMap::new(),
            next_offer_group: 0,
            lost_offers: HashMap::new(),
            lost_order: VecDeque::new(),
            allocator,
            weights: BTreeMap::new(),
            quota: BTreeMap::new(),
            counters: Counters::default(),
            actions: Vec::new(),
            alloc_dirty: HashSet::new(),
            alloc_full: false,
            next_allocation_ms: now.mono_ms.saturating_add(config.allocation_interval_ms),
            next_heartbeat_ms: now.mono_ms.saturating_add(config.heartbeat_interval_ms),
            persist_due: false,
            persist_now: false,
            next_persist_ms: 0,
            next_framework_seq: 0,
            next_agent_seq: 0,
            next_offer_seq: 0,
            rng,
            config,
        }
    }

    /// Loads what the registry remembers: role weights and quota, and agents admitted
    /// before a restart, which get `agent_reregister_timeout_ms` to come back.
    pub fn recover(&mut self, state: &RegistryState, now: Now) {
        for w in &state.weights {
            if w.weight.is_finite() && w.weight > 0.0 && w.weight != 1.0 {
                self.allocator.set_weight(&w.role, w.weight);
                self.weights.insert(w.role.clone(), w.weight);
            }
        }
        for q in &state.quota {
            let quota = q.quota();
            if !quota.is_empty() {
                self.allocator.set_limits(&q.role, quota.limits);
                self.allocator.set_guarantees(&q.role, quota.guarantees);
                self.quota.insert(q.role.clone(), quota);
            }
        }
        for a in &state.agents {
            self.recovered_agents.insert(
                AgentId::new(&a.id),
                RecoveredAgent {
                    hostname: a.hostname.clone(),
                    checkpointed: a.resources.clone(),
                    deadline_ms: now.mono_ms.saturating_add(self.config.agent_reregister_timeout_ms),
                },
            );
        }
    }

    /// Handles one input.
    pub fn step(&mut self, now: Now, input: Input) {
        match input {
            Input::Agent { conn, msg } => self.agent_message(now, conn, &msg),
            Input::AgentClosed { conn } => self.agent_disconnected(now, conn, false),
            Input::AgentUnresponsive { conn } => self.agent_disconnected(now, conn, true),
            Input::StreamClosed { stream } => self.stream_closed(now, stream),
        }
    }

    /// Fires what is due: agent and framework timeouts, offer expiry,
    /// heartbeats and the periodic allocation.
    pub fn tick(&mut self, now: Now) {
        self.expire_agents(now);
        self.expire_frameworks(now);
        self.expire_offers(now);
        if now.mono_ms >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now.mono_ms + self.config.heartbeat_interval_ms;
            let streams: Vec<ConnId> =
                self.frameworks.values().filter_map(|f| f.stream.as_ref().map(|s| s.conn)).collect();
            if !streams.is_empty() {
                self.actions.push(Action::Event { streams, event: Box::new(Event::heartbeat()) });
            }
        }
        if now.mono_ms >= self.next_allocation_ms {
            self.alloc_full = true;
        }
    }

    /// Runs any allocation that is due and hands over the actions produced
    /// since the last call. The shell calls this after a batch of inputs.
    pub fn take_actions(&mut self, now: Now) -> Vec<Action> {
        self.run_allocation(now);
        self.maybe_persist(now);
        std::mem::take(&mut self.actions)
    }

    fn run_allocation(&mut self, now: Now) {
        let allocations = if self.alloc_full {
            self.alloc_full = false;
            self.alloc_dirty.clear();
            self.next_allocation_ms = now.mono_ms + self.config.allocation_interval_ms;
            self.allocator.allocate(now.mono_ms, None)
        } else if !self.alloc_dirty.is_empty() {
            let dirty: Vec<AgentId> = self.alloc_dirty.drain().collect();
            self.allocator.allocate(now.mono_ms, Some(&dirty))
        } else {
            return;
        };
        if allocations.is_empty() {
            return;
        }
        // One OFFERS event per framework for the whole round.
        let mut per_framework: HashMap<FrameworkId, Vec<agora_proto::mesos::Offer>> = HashMap::new();
        for a in allocations {
            if !self.agents.contains_key(&a.agent_id) || !self.frameworks.contains_key(&a.framework_id) {
                continue;
            }
            // Optimistic offers: the same resources, for each of `also` too,
            // in one group; only the first offer is charged.
            let also: Vec<(FrameworkId, String)> =
                a.also.into_iter().filter(|(f, _)| self.frameworks.contains_key(f)).collect();
            let group = (!also.is_empty()).then(|| {
                self.next_offer_group += 1;
                self.next_offer_group
            });
            let plain = (!also.is_empty()).then(|| a.resources.unallocated());
            let copies = also.into_iter().map(|(f, role)| {
                let r = plain.as_ref().expect("copies come with also").allocate_to(&role);
                (f, role, r, false)
            });
            let offers: Vec<_> = std::iter::once((a.framework_id, a.role, a.resources, true)).chain(copies).collect();
            for (framework_id, role, resources, charged) in offers {
                self.next_offer_seq += 1;
                let id = OfferId::new(format!("{}-O{}", self.config.master_id, self.next_offer_seq));
                let (Some(agent), Some(fw)) =
                    (self.agents.get_mut(&a.agent_id), self.frameworks.get_mut(&framework_id))
                else {
                    continue;
                };
                agent.offers.insert(id.clone());
                fw.offers.insert(id.clone());
                per_framework.entry(framework_id.clone()).or_default().push(agora_proto::mesos::Offer {
                    id: id.clone(),
                    framework_id: framework_id.clone(),
                    agent_id: a.agent_id.clone(),
                    hostname: agent.info.hostname.clone(),
                    resources: resources.clone(),
                    attributes: agent.info.attributes.clone(),
                    executor_ids: Vec::new(),
                    allocation_info: Some(agora_proto::mesos::AllocationInfo { role: Some(role.clone()) }),
                });
                if let Some(g) = group {
                    self.offer_groups.entry(g).or_default().push(id.clone());
                }
                self.offers.insert(
                    id.clone(),
                    OfferRecord {
                        id,
                        framework_id,
                        agent_id: a.agent_id.clone(),
                        role,
                        resources,
                        expires_ms: self.config.offer_timeout_ms.map(|t| now.mono_ms.saturating_add(t)),
                        group,
                        charged,
                    },
                );
            }
        }
        for (fw, offers) in per_framework {
            self.counters.offers_sent += offers.len() as u64;
            self.send(&fw, Event::offers(offers));
        }
    }

    /// Sends an event to a framework if it is connected.
    fn send(&mut self, framework_id: &FrameworkId, event: Event) {
        if let Some(s) = self.frameworks.get(framework_id).and_then(|f| f.stream.as_ref()) {
            self.actions.push(Action::Event { streams: vec![s.conn], event: Box::new(event) });
        }
    }

    fn send_to_agent(&mut self, agent_id: &AgentId, msg: MasterToAgent) -> bool {
        match self.agents.get(agent_id).and_then(|a| a.conn) {
            Some(conn) => {
                self.actions.push(Action::ToAgent { conn, msg });
                true
            }
            None => false,
        }
    }

    /// Removes an offer and gives its resources back to the allocator.
    fn remove_offer(&mut self, id: &OfferId, refuse_ms: u64, now: Now) -> Option<OfferRecord> {
        let o = self.offers.remove(id)?;
        if let Some(a) = self.agents.get_mut(&o.agent_id) {
            a.offers.remove(id);
        }
        if let Some(f) = self.frameworks.get_mut(&o.framework_id) {
            f.offers.remove(id);
        }
        if o.charged {
            self.allocator.recover(&o.framework_id, &o.agent_id, &o.resources, refuse_ms, now.mono_ms);
        } else {
            self.allocator.refuse(&o.framework_id, &o.agent_id, &o.resources, refuse_ms, now.mono_ms);
        }
        self.leave_group(&o);
        Some(o)
    }

    /// Takes an offer back and tells its framework.
    fn rescind_offer(&mut self, id: &OfferId, now: Now) {
        if let Some(o) = self.remove_offer(id, 0, now) {
            self.counters.offers_rescinded += 1;
            self.alloc_dirty.insert(o.agent_id.clone());
            self.send(&o.framework_id, Event::rescind(o.id));
        }
    }

    fn expire_offers(&mut self, now: Now) {
        if self.config.offer_timeout_ms.is_none() {
            return;
        }
        let expired: Vec<OfferId> = self
            .offers
            .values()
            .filter(|o| o.expires_ms.is_some_and(|t| t <= now.mono_ms))
            .map(|o| o.id.clone())
            .collect();
        for id in expired {
            self.rescind_offer(&id, now);
        }
    }

    fn random_uuid(&mut self) -> uuid::Uuid {
        uuid::Builder::from_random_bytes(self.rng.gen()).into_uuid()
    }

    /// A status made up by the master (no uuid: frameworks do not acknowledge it).
    fn master_status(
        &self,
        task_id: &TaskId,
        agent_id: Option<&AgentId>,
        state: TaskState,
        reason: Reason,
        message: impl Into<String>,
        now: Now,
    ) -> TaskStatus {
        let mut s = TaskStatus::new(task_id.clone(), state);
        s.source = Some(Source::Master);
        s.reason = Some(reason);
        s.message = Some(message.into());
        s.agent_id = agent_id.cloned();
        s.timestamp = Some(now.wall_secs);
        s
    }

    fn count_terminal(&mut self, state: TaskState) {
        if state.is_terminal() {
            *self.counters.tasks_terminal.entry(state).or_default() += 1;
        }
    }

    /// Moves a task that became terminal into its framework's completed list
    /// and releases its resources.
    fn complete_task(&mut self, framework_id: &FrameworkId, task_id: &TaskId, now: Now) {
        let Some(fw) = self.frameworks.get_mut(framework_id) else { return };
        let Some(task) = fw.tasks.remove(task_id) else { return };
        if let Some(agent) = self.agents.get_mut(&task.agent_id) {
            agent.tasks.remove(&(framework_id.clone(), task_id.clone()));
            self.allocator.recover(framework_id, &task.agent_id, &task.info.resources, 0, now.mono_ms);
            self.alloc_dirty.insert(task.agent_id.clone());
        }
        if fw.completed_tasks.len() >= self.config.max_completed_tasks_per_framework {
            fw.completed_tasks.pop_front();
        }
        fw.completed_tasks.push_back(task);
    }

    /// Task counts by state, over all frameworks' current tasks.
    pub fn task_state_counts(&self) -> HashMap<TaskState, u64> {
        let mut m = HashMap::new();
        for f in self.frameworks.values() {
            for t in f.tasks.values() {
                *m.entry(t.state).or_default() += 1;
            }
        }
        m
    }

    /// Resources of an agent used by tasks.
    pub fn agent_used(&self, agent: &Agent) -> Resources {
        let mut r = Resources::new();
        for (f, t) in &agent.tasks {
            if let Some(task) = self.frameworks.get(f).and_then(|f| f.tasks.get(t)) {
                r.add(&task.info.resources);
            }
        }
        r
    }

    /// Resources of an agent currently offered.
    pub fn agent_offered(&self, agent: &Agent) -> Resources {
        let mut r = Resources::new();
        for o in &agent.offers {
            if let Some(o) = self.offers.get(o) {
                r.add(&o.resources);
            }
        }
        r
    }

    pub fn framework_used(&self, fw: &Framework) -> Resources {
        let mut r = Resources::new();
        for t in fw.tasks.values() {
            if t.state != TaskState::Unreachable {
                r.add(&t.info.resources);
            }
        }
        r
    }

    pub fn framework_offered(&self, fw: &Framework) -> Resources {
        let mut r = Resources::new();
        for o in &fw.offers {
            if let Some(o) = self.offers.get(o) {
                r.add(&o.resources);
            }
        }
        r
    }

    /// Whether `id` names a framework that was removed.
    pub fn is_removed_framework(&self, id: &str) -> bool {
        self.completed_frameworks.iter().any(|f| f.id.as_str() == id)
    }

    fn unreachable_time(&self, id: &AgentId) -> Option<f64> {
        self.unreachable_agents.iter().find(|(a, _)| a == id).map(|(_, t)| *t)
    }

    fn time_info(secs: f64) -> TimeInfo {
        TimeInfo { nanoseconds: (secs * 1e9) as i64 }
    }
}

#[cfg(test)]
mod tests;
