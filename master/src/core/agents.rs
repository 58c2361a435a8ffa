//! Agents: registration, re-registration (after either side restarts),
//! disconnection, loss, and the status updates they send.

use std::collections::HashSet;

use agora_proto::mesos::{AgentId, FrameworkId, FrameworkInfo, Reason, TaskId, TaskState, TaskStatus};
use agora_proto::resources::{Resources, DEFAULT_ROLE};
use agora_proto::scheduler::Event;
use agora_proto::wire::{
    self, AgentInfo, AgentToMaster, ArchivedAgentToMaster, ArchivedStatusUpdate, ArchivedTaskUsage, Checked,
    MasterToAgent, TaskReport,
};
use rkyv::option::ArchivedOption;
use rkyv::vec::ArchivedVec;

use super::{Action, Agent, ConnId, Master, Now, StatusRecord, Task};
use crate::registry::{RegistryAgent, RegistryState};

impl Master {
    /// A message from an agent, read in place: the frequent ones (status
    /// updates, usage reports) copy out only what the master keeps or
    /// forwards; registrations, rare and kept whole, are deserialized.
    pub(super) fn agent_message(&mut self, now: Now, conn: ConnId, msg: &Checked<AgentToMaster>) {
        match msg.get() {
            ArchivedAgentToMaster::Register { .. } | ArchivedAgentToMaster::Reregister { .. } => match msg.to_owned() {
                Ok(AgentToMaster::Register { info }) => self.register_agent(now, conn, *info),
                Ok(AgentToMaster::Reregister { agent_id, info, tasks, frameworks }) => {
                    self.reregister_agent(now, conn, agent_id, *info, tasks, frameworks)
                }
                Ok(_) => unreachable!("the archive was a registration"),
                Err(e) => self.refuse(conn, format!("Registration could not be read: {e}")),
            },
            ArchivedAgentToMaster::StatusUpdate(u) => self.status_update(now, conn, u),
            // Pongs are answered by the agent's shard; one that gets here is harmless.
            ArchivedAgentToMaster::Pong { .. } => {}
            ArchivedAgentToMaster::Usage { tasks } => self.usage_report(conn, tasks),
            ArchivedAgentToMaster::Unregister { reason } => {
                if let Some(id) = self.agents_by_conn.get(&conn).cloned() {
                    self.remove_agent(now, &id, &format!("Agent shut down: {}", reason.as_str()));
                }
            }
        }
    }

    fn validate_agent_info(info: &AgentInfo) -> Result<(), String> {
        if info.hostname.is_empty() {
            return Err("agent hostname is empty".into());
        }
        if info.resources.is_empty() {
            return Err("agent offers no resources".into());
        }
        if info.resources.iter().any(|r| r.allocation_role.is_some() || r.revocable) {
            return Err("agent resources must not carry allocation or revocable markers".into());
        }
        Ok(())
    }

    fn registered(&self, agent_id: AgentId) -> MasterToAgent {
        MasterToAgent::Registered {
            agent_id,
            master_id: self.config.master_id.clone(),
            ping_interval_ms: self.config.agent_ping_timeout_ms,
            max_missed_pings: self.config.max_agent_ping_timeouts,
        }
    }

    fn refuse(&mut self, conn: ConnId, message: String) {
        self.actions.push(Action::ToAgent { conn, msg: MasterToAgent::Refused { message } });
        self.actions.push(Action::CloseAgent { conn });
    }

    fn register_agent(&mut self, now: Now, conn: ConnId, info: AgentInfo) {
        if let Some(id) = self.agents_by_conn.get(&conn).cloned() {
            // A repeated Register on a registered connection: answer again.
            self.actions.push(Action::ToAgent { conn, msg: self.registered(id) });
            return;
        }
        if let Err(e) = Self::validate_agent_info(&info) {
            return self.refuse(conn, e);
        }
        self.next_agent_seq += 1;
        let id = AgentId::new(format!("{}-S{}", self.config.master_id, self.next_agent_seq));
        self.allocator.add_agent(id.clone(), info.resources.clone(), &[]);
        self.allocator.set_agent_attributes(&id, &info.hostname, attribute_texts(&info));
        self.agents.insert(id.clone(), Agent::new(id.clone(), info, Some(conn), now));
        self.agents_by_conn.insert(conn, id.clone());
        self.counters.agent_registrations += 1;
        self.alloc_dirty.insert(id.clone());
        self.actions.push(Action::ToAgent { conn, msg: self.registered(id) });
        self.persist_agents();
    }

    fn reregister_agent(
        &mut self,
        now: Now,
        conn: ConnId,
        agent_id: AgentId,
        info: AgentInfo,
        reports: Vec<TaskReport>,
        frameworks: Vec<FrameworkInfo>,
    ) {
        if let Err(e) = Self::validate_agent_info(&info) {
            return self.refuse(conn, e);
        }
        if self.removed_agents.contains(&agent_id) {
            return self.refuse(conn, format!("agent {agent_id} was removed; restart it with a clean work directory"));
        }
        if let Some(other) = self.agents_by_conn.get(&conn) {
            if other != &agent_id {
                return self.refuse(conn, format!("connection is already registered as agent {other}"));
            }
        }
        self.counters.agent_reregistrations += 1;
        // The master's record of the agent's reservations and volumes wins
        // over the agent's: an operation the agent missed is sent again.
        let recorded = match self.agents.get(&agent_id) {
            Some(a) => Some(a.info.resources.checkpointed()),
            None => self.recovered_agents.get(&agent_id).map(|r| r.checkpointed.clone()),
        };
        let mut info = info;
        let resend = recorded.and_then(|recorded| reconcile_checkpointed(&agent_id, &info.resources, recorded));
        if let Some(total) = &resend {
            info.resources = total.clone();
        }
        self.recovered_agents.remove(&agent_id);
        let was_unreachable = self.unreachable_agents.iter().position(|(a, _)| a == &agent_id);
        if let Some(pos) = was_unreachable {
            self.unreachable_agents.remove(pos);
        }

        // Frameworks the agent runs tasks for that this master does not know
        // (it restarted): recover them, waiting for them to re-subscribe.
        for info in frameworks {
            let Some(fid) = info.id.clone() else { continue };
            if self.frameworks.contains_key(&fid) || self.is_removed_framework(fid.as_str()) {
                continue;
            }
            self.recover_framework(now, fid, info);
        }

        // Replace any previous connection of this agent.
        let previous_conn = self.agents.get(&agent_id).and_then(|a| a.conn);
        if let Some(old) = previous_conn {
            if old != conn {
                self.agents_by_conn.remove(&old);
                self.actions.push(Action::CloseAgent { conn: old });
            }
        }
        let known = self.agents.contains_key(&agent_id);
        if known {
            // Offers made before the reconnection are void.
            let offers: Vec<_> = self.agents[&agent_id].offers.iter().cloned().collect();
            for o in offers {
                self.rescind_offer(&o, now);
            }
        }
        let reported: HashSet<(FrameworkId, agora_proto::mesos::TaskId)> =
            reports.iter().map(|r| (r.framework_id.clone(), r.task.task_id.clone())).collect();

        // Tasks the master believes are on the agent but the agent does not
        // report were lost in transit (e.g. a launch sent on the old connection).
        if known {
            let missing: Vec<(FrameworkId, agora_proto::mesos::TaskId)> =
                self.agents[&agent_id].tasks.iter().filter(|k| !reported.contains(*k)).cloned().collect();
            for (fid, tid) in missing {
                let pa = self.frameworks.get(&fid).is_some_and(|f| f.partition_aware());
                let state = if pa { TaskState::Gone } else { TaskState::Lost };
                let status = self.master_status(
                    &tid,
                    Some(&agent_id),
                    state,
                    Reason::ReasonAgentReregistered,
                    "Task was not found on the re-registered agent",
                    now,
                );
                self.apply_master_status(now, &fid, status);
            }
        }

        // (Re)build the agent and its allocation from what it reports.
        let agent = self
            .agents
            .entry(agent_id.clone())
            .or_insert_with(|| Agent::new(agent_id.clone(), info.clone(), None, now));
        agent.info = info.clone();
        agent.conn = Some(conn);
        agent.reregistered_time = Some(now.wall_secs);
        agent.removal_deadline_ms = None;
        agent.tasks.clear();
        self.agents_by_conn.insert(conn, agent_id.clone());
        self.allocator.add_agent(agent_id.clone(), info.resources.clone(), &[]);
        self.allocator.set_agent_attributes(&agent_id, &info.hostname, attribute_texts(&info));

        for report in reports {
            let fid = report.framework_id.clone();
            let tid = report.task.task_id.clone();
            let framework_gone = self.is_removed_framework(fid.as_str()) || !self.frameworks.contains_key(&fid);
            // A task the master already declared lost (its framework was not
            // partition-aware) or whose framework is gone must not keep running.
            let declared_lost = self.frameworks.get(&fid).is_some_and(|f| {
                !f.tasks.contains_key(&tid) && f.completed_tasks.iter().any(|t| t.info.task_id == tid)
            });
            if framework_gone || declared_lost {
                let msg = if framework_gone {
                    MasterToAgent::ShutdownFramework { framework_id: fid.clone() }
                } else {
                    MasterToAgent::KillTask { framework_id: fid.clone(), task_id: tid.clone(), kill_policy: None }
                };
                self.actions.push(Action::ToAgent { conn, msg });
                continue;
            }
            let fw = self.frameworks.get_mut(&fid).expect("checked above");
            let known = fw.tasks.contains_key(&tid);
            if report.state.is_terminal() && !known {
                // Ended while the master was away and unknown to it; its
                // status update is on its way and is forwarded as is.
                continue;
            }
            let role = report
                .task
                .resources
                .iter()
                .find_map(|r| r.allocation_role.as_deref().map(str::to_string))
                .unwrap_or_else(|| fw.roles.first().cloned().unwrap_or_else(|| DEFAULT_ROLE.to_string()));
            let was_unreachable_task = fw.tasks.get(&tid).is_some_and(|t| t.state == TaskState::Unreachable);
            let task = fw.tasks.entry(tid.clone()).or_insert_with(|| {
                // Allocated to its role, so that the role figures (and
                // quota) count it and recovering it later gives back what
                // was charged.
                let mut info = report.task.clone();
                if info.resources.iter().all(|r| r.allocation_role.is_none()) {
                    info.resources = info.resources.allocate_to(&role);
                }
                Task {
                    info,
                    framework_id: fid.clone(),
                    agent_id: agent_id.clone(),
                    state: report.state,
                    role,
                    statuses: vec![StatusRecord { state: report.state, timestamp: now.wall_secs }],
                    unreachable_time: None,
                    usage: None,
                }
            });
            // A task that ended while the agent was away keeps its state (and
            // its resources) until its terminal update arrives and completes it.
            if task.state != report.state && !report.state.is_terminal() {
                task.record(report.state, now.wall_secs);
            }
            task.unreachable_time = None;
            let resources = task.info.resources.clone();
            let partition_aware = fw.partition_aware();
            self.agents.get_mut(&agent_id).expect("inserted above").tasks.insert((fid.clone(), tid.clone()));
            self.allocator.add_used(&fid, &agent_id, &resources);
            if was_unreachable_task && partition_aware {
                let status = self.master_status(
                    &tid,
                    Some(&agent_id),
                    report.state,
                    Reason::ReasonAgentReregistered,
                    "Agent re-registered",
                    now,
                );
                self.send(&fid, Event::update(status));
            }
        }
        self.alloc_dirty.insert(agent_id.clone());
        self.actions.push(Action::ToAgent { conn, msg: self.registered(agent_id.clone()) });
        if resend.is_some() {
            let resources = info.resources.checkpointed();
            self.actions.push(Action::ToAgent { conn, msg: MasterToAgent::CheckpointResources { resources } });
        }
        let kills: Vec<_> =
            self.agents.get_mut(&agent_id).map(|a| a.pending_kills.drain().collect()).unwrap_or_default();
        for ((fid, tid), kill_policy) in kills {
            if self.agents[&agent_id].tasks.contains(&(fid.clone(), tid.clone())) {
                self.actions.push(Action::ToAgent {
                    conn,
                    msg: MasterToAgent::KillTask { framework_id: fid, task_id: tid, kill_policy },
                });
            }
        }
        self.persist_agents();
    }

    /// Usage of an agent's tasks: kept on each task (only tasks of that agent).
    fn usage_report(&mut self, conn: ConnId, tasks: &ArchivedVec<ArchivedTaskUsage>) {
        let Some(agent_id) = self.agents_by_conn.get(&conn) else { return };
        for u in tasks.iter() {
            let (fid, tid) = (u.framework_id.value.as_str(), u.task_id.value.as_str());
            if let Some(t) = self.frameworks.get_mut(fid).and_then(|f| f.tasks.get_mut(tid)) {
                if t.agent_id == *agent_id {
                    if let Ok(usage) = wire::owned(u) {
                        t.usage = Some(usage);
                    }
                }
            }
        }
    }

    /// A status update from an agent: record it and forward it.
    fn status_update(&mut self, now: Now, conn: ConnId, u: &ArchivedStatusUpdate) {
        let Some(agent_id) = self.agents_by_conn.get(&conn).cloned() else {
            self.counters.invalid_status_updates += 1;
            return;
        };
        let fid = u.framework_id.value.as_str();
        let tid = u.status.task_id.value.as_str();
        if self.is_removed_framework(fid) {
            // Nobody will acknowledge it: tell the agent to stop.
            self.counters.invalid_status_updates += 1;
            let framework_id = FrameworkId::new(fid);
            if let ArchivedOption::Some(uuid) = &u.status.uuid {
                self.actions.push(Action::ToAgent {
                    conn,
                    msg: MasterToAgent::AcknowledgeUpdate {
                        framework_id: framework_id.clone(),
                        task_id: TaskId::new(tid),
                        uuid: uuid.to_vec(),
                    },
                });
            }
            self.actions.push(Action::ToAgent { conn, msg: MasterToAgent::ShutdownFramework { framework_id } });
            return;
        }
        // The status is copied out once, to be forwarded; the rest is read
        // in place.
        let (Ok(mut status), Ok(latest)) = (wire::owned::<_, TaskStatus>(&u.status), wire::owned(&u.latest_state))
        else {
            self.counters.invalid_status_updates += 1;
            return;
        };
        let Some(fw) = self.frameworks.get_mut(fid) else {
            // Unknown framework, perhaps about to re-subscribe: the agent retries.
            self.counters.invalid_status_updates += 1;
            return;
        };
        self.counters.valid_status_updates += 1;
        let fid = fw.id.clone();
        let mut became_terminal = false;
        if let Some(task) = fw.tasks.get_mut(tid) {
            if task.agent_id == agent_id && task.state != latest {
                task.record(latest, status.timestamp.unwrap_or(now.wall_secs));
                became_terminal = latest.is_terminal();
            }
        }
        status.agent_id = Some(agent_id);
        if became_terminal {
            self.count_terminal(latest);
            self.complete_task(&fid, &status.task_id, now);
        }
        self.send(&fid, Event::update(status));
    }

    /// The agent's connection is gone: stop offering it, and give it until
    /// the removal timeout to come back (or mark it unreachable at once when
    /// its shard saw it stop answering pings).
    pub(super) fn agent_disconnected(&mut self, now: Now, conn: ConnId, unresponsive: bool) {
        let Some(id) = self.agents_by_conn.remove(&conn) else { return };
        if unresponsive {
            self.mark_unreachable(now, &id);
            return;
        }
        let Some(agent) = self.agents.get_mut(&id) else { return };
        agent.conn = None;
        let deadline = now.mono_ms.saturating_add(self.config.agent_removal_timeout_ms());
        agent.removal_deadline_ms = Some(deadline);
        self.next_agent_removal_ms = self.next_agent_removal_ms.min(deadline);
        self.allocator.set_agent_active(&id, false);
        let offers: Vec<_> = agent.offers.iter().cloned().collect();
        for o in offers {
            self.rescind_offer(&o, now);
        }
    }

    pub(super) fn expire_agents(&mut self, now: Now) {
        // Every agent is looked at only once a disconnected agent's removal
        // may be due, not on every tick: with tens of thousands connected,
        // the look costs more than anything else a tick does.
        if now.mono_ms >= self.next_agent_removal_ms {
            let mut due = Vec::new();
            let mut next = u64::MAX;
            for a in self.agents.values().filter(|a| a.conn.is_none()) {
                match a.removal_deadline_ms {
                    Some(d) if d <= now.mono_ms => due.push(a.id.clone()),
                    Some(d) => next = next.min(d),
                    None => {}
                }
            }
            self.next_agent_removal_ms = next;
            for id in due {
                self.mark_unreachable(now, &id);
            }
        }
        let recovered_due: Vec<AgentId> = self
            .recovered_agents
            .iter()
            .filter(|(_, r)| r.deadline_ms <= now.mono_ms)
            .map(|(a, _)| a.clone())
            .collect();
        for id in recovered_due {
            self.recovered_agents.remove(&id);
            self.push_unreachable(id, now.wall_secs);
        }
    }

    fn push_unreachable(&mut self, id: AgentId, time: f64) {
        if self.unreachable_agents.len() >= self.config.max_unreachable_agents {
            if let Some((old, _)) = self.unreachable_agents.pop_front() {
                self.forget_unreachable_tasks(|t| t.agent_id == old);
            }
        }
        self.unreachable_agents.push_back((id, time));
    }

    /// Moves unreachable tasks matching `f` to their frameworks' completed
    /// lists: their agent is forgotten, so they will never be heard of again.
    fn forget_unreachable_tasks(&mut self, f: impl Fn(&super::Task) -> bool) {
        let max = self.config.max_completed_tasks_per_framework;
        for fw in self.frameworks.values_mut() {
            let ids: Vec<_> = fw
                .tasks
                .values()
                .filter(|t| t.state == TaskState::Unreachable && f(t))
                .map(|t| t.info.task_id.clone())
                .collect();
            for id in ids {
                if let Some(t) = fw.tasks.remove(&id) {
                    if fw.completed_tasks.len() >= max {
                        fw.completed_tasks.pop_front();
                    }
                    fw.completed_tasks.push_back(t);
                }
            }
        }
    }

    /// Keeps at most `max_unreachable_tasks_per_framework` unreachable tasks
    /// per framework, dropping those unreachable the longest.
    fn cap_unreachable_tasks(&mut self, fid: &FrameworkId) {
        let max = self.config.max_unreachable_tasks_per_framework;
        let Some(fw) = self.frameworks.get(fid) else { return };
        let mut unreachable: Vec<(f64, agora_proto::mesos::TaskId)> = fw
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Unreachable)
            .map(|t| (t.unreachable_time.unwrap_or(0.0), t.info.task_id.clone()))
            .collect();
        if unreachable.len() <= max {
            return;
        }
        unreachable.sort_by(|a, b| a.0.total_cmp(&b.0));
        let drop: std::collections::HashSet<_> =
            unreachable[..unreachable.len() - max].iter().map(|(_, id)| id.clone()).collect();
        self.forget_unreachable_tasks(|t| &t.framework_id == fid && drop.contains(&t.info.task_id));
    }

    /// The agent is unreachable: partition-aware frameworks see its tasks as
    /// TASK_UNREACHABLE (they may come back), others as TASK_LOST.
    fn mark_unreachable(&mut self, now: Now, id: &AgentId) {
        self.counters.agents_unreachable += 1;
        self.take_agent_out(now, id, "Agent is unreachable", true);
        self.push_unreachable(id.clone(), now.wall_secs);
    }

    /// The agent left for good (it shut down).
    fn remove_agent(&mut self, now: Now, id: &AgentId, why: &str) {
        self.take_agent_out(now, id, why, false);
        if self.removed_agents.len() >= self.config.max_unreachable_agents {
            self.removed_agents.pop_front();
        }
        self.removed_agents.push_back(id.clone());
    }

    fn take_agent_out(&mut self, now: Now, id: &AgentId, why: &str, unreachable: bool) {
        let Some(agent) = self.agents.get(id) else { return };
        let conn = agent.conn;
        let offers: Vec<_> = agent.offers.iter().cloned().collect();
        let tasks: Vec<_> = agent.tasks.iter().cloned().collect();
        self.counters.agent_removals += 1;
        if let Some(conn) = conn {
            self.agents_by_conn.remove(&conn);
            self.actions.push(Action::CloseAgent { conn });
        }
        for o in offers {
            self.rescind_offer(&o, now);
        }
        for (fid, tid) in tasks {
            let pa = self.frameworks.get(&fid).is_some_and(|f| f.partition_aware());
            let state = match (pa, unreachable) {
                (true, true) => TaskState::Unreachable,
                (true, false) => TaskState::Gone,
                (false, _) => TaskState::Lost,
            };
            let mut status = self.master_status(&tid, Some(id), state, Reason::ReasonAgentRemoved, why, now);
            status.unreachable_time = unreachable.then(|| Self::time_info(now.wall_secs));
            self.apply_master_status(now, &fid, status);
        }
        self.agents.remove(id);
        self.allocator.remove_agent(id);
        self.alloc_full = true;
        let streams: Vec<ConnId> = self.frameworks.values().filter_map(|f| f.stream.as_ref().map(|s| s.conn)).collect();
        if !streams.is_empty() {
            self.actions.push(Action::Event { streams, event: Box::new(Event::failure(id.clone())) });
        }
        self.persist_agents();
    }

    /// Applies a state the master decided (agent loss, reconciliation of a
    /// missing task) to a task and tells its framework.
    pub(super) fn apply_master_status(&mut self, now: Now, fid: &FrameworkId, status: agora_proto::mesos::TaskStatus) {
        let tid = status.task_id.clone();
        let state = status.state;
        if let Some(task) = self.frameworks.get_mut(fid).and_then(|f| f.tasks.get_mut(&tid)) {
            task.record(state, now.wall_secs);
            if state == TaskState::Unreachable {
                task.unreachable_time = Some(now.wall_secs);
                // The agent is gone from the allocator; nothing to release.
                if let Some(agent) = self.agents.get_mut(&task.agent_id) {
                    agent.tasks.remove(&(fid.clone(), tid.clone()));
                }
            }
        }
        if state.is_terminal() {
            self.count_terminal(state);
            self.complete_task(fid, &tid, now);
        }
        if state == TaskState::Unreachable {
            self.cap_unreachable_tasks(fid);
        }
        self.send(fid, Event::update(status));
    }

    /// An operator changed what the registry holds: a snapshot goes out with
    /// this batch's actions.
    pub(super) fn persist(&mut self) {
        self.persist_due = true;
        self.persist_now = true;
    }

    /// Agents came or went: a snapshot goes out once the last one is old
    /// enough. A snapshot costs O(agents), so while thousands of agents
    /// register one after another it is taken at most every millisecond per
    /// hundred agents (a second at 100,000), not once per agent. An agent
    /// admitted in that window and not yet written is admitted again if
    /// the master fails over before the write.
    pub(super) fn persist_agents(&mut self) {
        self.persist_due = true;
    }

    /// The snapshot, if one is due.
    pub(super) fn maybe_persist(&mut self, now: Now) {
        if self.persist_due && (self.persist_now || now.mono_ms >= self.next_persist_ms) {
            self.persist_due = false;
            self.persist_now = false;
            self.next_persist_ms = now.mono_ms + (self.agents.len() / 100) as u64;
            self.snapshot_registry();
        }
    }

    /// The registry's view: the agents admitted, role weights and quota.
    fn snapshot_registry(&mut self) {
        // Agents still expected back from before a restart stay admitted.
        let mut agents: Vec<RegistryAgent> = self
            .agents
            .values()
            .map(|a| RegistryAgent {
                id: a.id.value.clone(),
                hostname: a.info.hostname.clone(),
                resources: a.info.resources.checkpointed(),
            })
            .chain(self.recovered_agents.iter().map(|(id, r)| RegistryAgent {
                id: id.value.clone(),
                hostname: r.hostname.clone(),
                resources: r.checkpointed.clone(),
            }))
            .collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        let weights = self
            .weights
            .iter()
            .map(|(role, &weight)| crate::registry::RegistryWeight { role: role.clone(), weight })
            .collect();
        let quota = self.quota.iter().map(|(role, l)| crate::registry::RegistryQuota::new(role, l)).collect();
        self.actions.retain(|a| !matches!(a, Action::Persist(_)));
        self.actions.push(Action::Persist(RegistryState { agents, weights, quota }));
    }
}

/// A re-registering agent's total with the master's record of its
/// reservations and volumes, when that differs from what the agent reports
/// and fits it; `None` keeps the agent's report.
fn reconcile_checkpointed(agent_id: &AgentId, reported: &Resources, recorded: Resources) -> Option<Resources> {
    let theirs = reported.checkpointed();
    if theirs.contains(&recorded) && recorded.contains(&theirs) {
        return None;
    }
    match Resources::with_checkpointed(&reported.without_checkpointed(), &recorded) {
        Ok(total) => {
            tracing::info!(agent = %agent_id, "the agent reports reservations and volumes {theirs}; the master's are {recorded}, sent again");
            Some(total)
        }
        Err(e) => {
            tracing::warn!(agent = %agent_id, "the master's reservations and volumes for the agent no longer fit it ({e}); keeping the agent's");
            None
        }
    }
}

/// An agent's attributes as (name, value as written), for offer constraints.
fn attribute_texts(info: &AgentInfo) -> Vec<(String, String)> {
    info.attributes.iter().map(|a| (a.name.clone(), a.value.to_string())).collect()
}
