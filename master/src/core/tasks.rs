//! Tasks: ACCEPT with LAUNCH (validated against the offers), KILL,
//! ACKNOWLEDGE and RECONCILE.

use std::collections::HashSet;

use agora_proto::mesos::{AgentId, FrameworkId, Reason, TaskId, TaskInfo, TaskState};
use agora_proto::resources::Resources;
use agora_proto::scheduler::{
    Accept, Acknowledge, Event, Filters, Kill, Operation, OperationState, OperationStatus, OperationType, Reconcile,
};
use agora_proto::wire::MasterToAgent;

use super::operations::{volume_ids, ResourceOp};
use super::{Master, Now, StatusRecord, Task};

/// `r` with its allocation role, and that role: all of `r` in one role, as
/// given, or the offers' single role when none is given (single-role
/// frameworks may leave allocation_info out; Mesos fills it in). `what`
/// names `r` in errors.
fn allocated(r: Resources, single_role: Option<&str>, what: &str) -> Result<(Resources, String), String> {
    let given: HashSet<Option<&str>> = r.iter().map(|x| x.allocation_role.as_deref()).collect();
    match (given.len(), given.iter().next().copied().flatten(), single_role) {
        (0, _, _) => Err(format!("{what}: none are given")),
        (1, Some(role), _) => {
            let role = role.to_string();
            Ok((r, role))
        }
        (1, None, Some(role)) => Ok((r.allocate_to(role), role.to_string())),
        (1, None, None) => Err(format!("{what} need 'allocation_info' when the offers have more than one role")),
        _ => Err(format!("{what} are allocated to more than one role")),
    }
}

/// Task ids become directory names on the agent.
fn validate_task_id(id: &TaskId) -> Result<(), String> {
    let v = id.as_str();
    if v.is_empty() {
        return Err("Task ID must not be empty".into());
    }
    if v.len() > 255 {
        return Err("Task ID is longer than 255 bytes".into());
    }
    if v == "." || v == ".." || v.contains('/') || v.contains('\0') || v.chars().any(|c| c.is_control()) {
        return Err(format!(
            "Task ID {v:?} contains characters that are not allowed ('/', NUL, control) or is '.'/'..'"
        ));
    }
    Ok(())
}

impl Master {
    pub(super) fn accept(&mut self, now: Now, fid: &FrameworkId, accept: Accept) {
        self.counters.offers_accepted += accept.offer_ids.len() as u64;
        let launches: Vec<TaskInfo> = accept
            .operations
            .iter()
            .flat_map(|op| {
                let single = op.launch.iter().flat_map(|l| l.task_infos.iter().cloned());
                let group = op.launch_group.iter().flat_map(|g| g.task_group.tasks.iter().cloned());
                single.chain(group)
            })
            .collect();

        // The offers must exist, belong to this framework, be distinct and be
        // on one connected agent.
        let mut problem = None;
        let mut lost = false;
        let mut seen = HashSet::new();
        let mut agent: Option<AgentId> = None;
        if accept.offer_ids.is_empty() {
            problem = Some("No offers given".to_string());
        }
        for id in &accept.offer_ids {
            if !seen.insert(id.clone()) {
                problem.get_or_insert(format!("Offer {id} appears more than once"));
                continue;
            }
            match self.offers.get(id) {
                None => match self.lost_race(id) {
                    Some(why) if problem.is_none() => {
                        lost = true;
                        problem = Some(why);
                    }
                    _ => {
                        problem.get_or_insert(format!("Offer {id} is no longer valid"));
                    }
                },
                Some(o) if &o.framework_id != fid => {
                    problem.get_or_insert(format!("Offer {id} is not for this framework"));
                }
                Some(o) => match &agent {
                    None => agent = Some(o.agent_id.clone()),
                    Some(a) if a != &o.agent_id => {
                        problem.get_or_insert(format!("Offers are on more than one agent ({a} and {})", o.agent_id));
                    }
                    Some(_) => {}
                },
            }
        }
        if problem.is_none() {
            if let Some(a) = &agent {
                if self.agents.get(a).is_none_or(|a| a.conn.is_none()) {
                    problem = Some(format!("Agent {a} is not connected"));
                }
            }
        }
        if let Some(problem) = problem {
            // Valid offers in the set go back to the allocator; every task is dropped.
            for id in &accept.offer_ids {
                if self.offers.get(id).is_some_and(|o| &o.framework_id == fid) {
                    if let Some(o) = self.remove_offer(id, 0, now) {
                        self.alloc_dirty.insert(o.agent_id);
                    }
                }
            }
            // A launch that lost an optimistic race is dropped: nothing
            // about it was ever started.
            let pa = self.frameworks.get(fid).is_some_and(|f| f.partition_aware());
            let state = if pa || lost { TaskState::Dropped } else { TaskState::Lost };
            if lost {
                self.counters.offers_lost_races += 1;
            }
            for t in launches {
                let status = self.master_status(
                    &t.task_id,
                    Some(&t.agent_id),
                    state,
                    Reason::ReasonInvalidOffers,
                    format!("Task launched with invalid offers: {problem}"),
                    now,
                );
                self.count_terminal(state);
                self.send(fid, Event::update(status));
            }
            return;
        }
        let agent_id = agent.expect("at least one valid offer");
        let refuse_ms = (Filters::refuse_seconds(accept.filters.as_ref()) * 1000.0) as u64;
        // Optimistic offers: this ACCEPT is first, the others lose.
        self.claim_offers(fid, &accept.offer_ids, now);

        // Pool the offers' resources; every launch draws from it.
        let mut pool = Resources::new();
        let mut roles = HashSet::new();
        for id in &accept.offer_ids {
            if let Some(o) = self.offers.remove(id) {
                pool.add(&o.resources);
                roles.insert(o.role.clone());
                self.agents.get_mut(&agent_id).expect("checked connected").offers.remove(id);
                self.frameworks.get_mut(fid).expect("authorized").offers.remove(id);
            }
        }
        let single_role = if roles.len() == 1 { roles.iter().next().cloned() } else { None };

        let mut launched_ids: HashSet<TaskId> = HashSet::new();
        let mut converted = false;
        for op in &accept.operations {
            match op.kind {
                OperationType::Launch => {}
                OperationType::LaunchGroup => {
                    // Task groups need an executor, which Agora does not run.
                    for t in op.launch_group.iter().flat_map(|g| g.task_group.tasks.iter()) {
                        let status = self.master_status(
                            &t.task_id,
                            Some(&agent_id),
                            TaskState::Error,
                            Reason::ReasonTaskGroupInvalid,
                            "LAUNCH_GROUP is not supported: task groups need an executor; launch command tasks",
                            now,
                        );
                        self.count_terminal(TaskState::Error);
                        self.send(fid, Event::update(status));
                    }
                    continue;
                }
                OperationType::Reserve | OperationType::Unreserve | OperationType::Create | OperationType::Destroy => {
                    let result = self.offer_operation(fid, &agent_id, op, &mut pool, single_role.as_deref());
                    match &result {
                        Ok(()) => converted = true,
                        Err(e) => tracing::warn!(framework = %fid, "offer operation {:?} refused: {e}", op.kind),
                    }
                    self.operation_status(fid, &agent_id, op, result);
                    continue;
                }
                other => {
                    let why = format!("offer operation {other:?} is not supported");
                    tracing::warn!(framework = %fid, "{why}; ignored");
                    self.operation_status(fid, &agent_id, op, Err(why));
                    continue;
                }
            }
            for mut task in op.launch.iter().flat_map(|l| l.task_infos.iter().cloned()) {
                match self.validate_task(fid, &agent_id, &mut task, &pool, single_role.as_deref(), &launched_ids) {
                    Ok(role) => {
                        pool.subtract(&task.resources).expect("contained, checked by validate_task");
                        launched_ids.insert(task.task_id.clone());
                        self.launch(now, fid, &agent_id, task, role);
                    }
                    Err(message) => {
                        let status = self.master_status(
                            &task.task_id,
                            Some(&agent_id),
                            TaskState::Error,
                            Reason::ReasonTaskInvalid,
                            message,
                            now,
                        );
                        self.count_terminal(TaskState::Error);
                        self.send(fid, Event::update(status));
                    }
                }
            }
        }
        if converted {
            self.checkpoint(&agent_id);
        }
        // Whatever the framework did not use goes back, filtered for a while.
        if !pool.is_empty() {
            self.allocator.recover(fid, &agent_id, &pool, refuse_ms, now.mono_ms);
            if refuse_ms == 0 {
                self.alloc_dirty.insert(agent_id);
            }
        }
    }

    /// Carries out a RESERVE, UNRESERVE, CREATE or DESTROY on the pooled
    /// offers' resources, or says why not (and changes nothing).
    fn offer_operation(
        &mut self,
        fid: &FrameworkId,
        agent_id: &AgentId,
        op: &Operation,
        pool: &mut Resources,
        single_role: Option<&str>,
    ) -> Result<(), String> {
        let (field, given) = match op.kind {
            OperationType::Reserve => ("reserve", op.reserve.as_ref().map(|x| &x.resources)),
            OperationType::Unreserve => ("unreserve", op.unreserve.as_ref().map(|x| &x.resources)),
            OperationType::Create => ("create", op.create.as_ref().map(|x| &x.volumes)),
            _ => ("destroy", op.destroy.as_ref().map(|x| &x.volumes)),
        };
        let given = given.ok_or_else(|| format!("{:?} operation without its '{field}' field", op.kind))?;
        let (r, _) = allocated(given.clone(), single_role, "The operation's resources")?;
        let rop = match op.kind {
            OperationType::Reserve => ResourceOp::Reserve(r),
            OperationType::Unreserve => ResourceOp::Unreserve(r),
            OperationType::Create => ResourceOp::Create(r),
            _ => ResourceOp::Destroy(r),
        };
        let principal = self.frameworks[fid].info.principal.clone();
        let c = rop.conversion(principal.as_deref(), &volume_ids(&self.agents[agent_id].info.resources))?;
        if !pool.contains(&c.from) {
            return Err(format!("{} of {} is not possible: the offers hold {}", rop.name(), c.from, pool));
        }
        pool.subtract(&c.from).expect("contained, checked above");
        pool.add(&c.to);
        tracing::info!(framework = %fid, agent = %agent_id, "{}: {} becomes {}", rop.name(), c.from, c.to);
        self.convert(agent_id, Some(fid), &c);
        Ok(())
    }

    /// Tells the framework how an operation with an id ended.
    fn operation_status(&mut self, fid: &FrameworkId, agent_id: &AgentId, op: &Operation, result: Result<(), String>) {
        let Some(id) = op.id.clone() else { return };
        let (state, message) = match result {
            Ok(()) => (OperationState::OperationFinished, None),
            Err(e) => (OperationState::OperationError, Some(e)),
        };
        let status = OperationStatus { operation_id: id, state, message, agent_id: Some(agent_id.clone()) };
        self.send(fid, Event::operation_status(status));
    }

    /// Checks one task of a LAUNCH against the pooled offers. On success the
    /// task's resources carry their allocation role, which is returned.
    fn validate_task(
        &self,
        fid: &FrameworkId,
        agent_id: &AgentId,
        task: &mut TaskInfo,
        pool: &Resources,
        single_role: Option<&str>,
        launched: &HashSet<TaskId>,
    ) -> Result<String, String> {
        validate_task_id(&task.task_id)?;
        let fw = &self.frameworks[fid];
        if fw.tasks.contains_key(&task.task_id) || launched.contains(&task.task_id) {
            return Err(format!("Task has duplicate ID: {}", task.task_id));
        }
        if &task.agent_id != agent_id {
            return Err(format!(
                "Task uses agent ID {} which does not match the offer's agent {agent_id}",
                task.agent_id
            ));
        }
        if task.executor.is_some() {
            return Err("Custom executors are not supported; launch a command task (TaskInfo.command)".into());
        }
        let Some(cmd) = task.command.as_ref() else {
            return Err("Task has neither 'command' nor 'executor'".into());
        };
        if cmd.value.as_deref().unwrap_or("").is_empty() {
            return Err("Task's 'command.value' is empty".into());
        }
        if let Some(c) = &task.container {
            let images = c.mesos.as_ref().is_some_and(|m| m.image.is_some());
            if c.kind.as_deref().is_some_and(|k| k != "MESOS") || images {
                return Err(
                    "Containers with images (Docker or Mesos) are not supported; tasks run as processes in cgroups"
                        .into(),
                );
            }
        }
        if let Some(grace) = task.kill_policy.and_then(|k| k.grace_period) {
            if grace.nanoseconds < 0 {
                return Err("kill_policy.grace_period must not be negative".into());
            }
        }
        if task.resources.is_empty() {
            return Err("Task uses no resources".into());
        }
        if task.resources.cpus() <= 0.0 && task.resources.mem_mb() <= 0.0 {
            return Err("Task must use some cpus or mem".into());
        }
        let (resources, role) = allocated(std::mem::take(&mut task.resources), single_role, "Task resources")?;
        task.resources = resources;
        if !pool.contains(&task.resources) {
            return Err(format!(
                "Task uses more resources ({}) than available in the offers ({})",
                task.resources, pool
            ));
        }
        Ok(role)
    }

    fn launch(&mut self, now: Now, fid: &FrameworkId, agent_id: &AgentId, task: TaskInfo, role: String) {
        self.counters.tasks_launched += 1;
        let fw = self.frameworks.get_mut(fid).expect("authorized");
        let framework = fw.info.clone();
        fw.tasks.insert(
            task.task_id.clone(),
            Task {
                info: task.clone(),
                framework_id: fid.clone(),
                agent_id: agent_id.clone(),
                state: TaskState::Staging,
                role,
                statuses: vec![StatusRecord { state: TaskState::Staging, timestamp: now.wall_secs }],
                unreachable_time: None,
                usage: None,
            },
        );
        self.agents.get_mut(agent_id).expect("connected").tasks.insert((fid.clone(), task.task_id.clone()));
        self.send_to_agent(agent_id, MasterToAgent::RunTask { framework: Box::new(framework), task: Box::new(task) });
    }

    pub(super) fn kill(&mut self, now: Now, fid: &FrameworkId, kill: Kill) {
        self.counters.messages_kill_task += 1;
        let task = self.frameworks[fid].tasks.get(&kill.task_id).map(|t| (t.agent_id.clone(), t.state));
        match task {
            Some((agent_id, state)) if state != TaskState::Unreachable => {
                let policy = kill
                    .kill_policy
                    .or_else(|| self.frameworks[fid].tasks.get(&kill.task_id).and_then(|t| t.info.kill_policy));
                let sent = self.send_to_agent(
                    &agent_id,
                    MasterToAgent::KillTask {
                        framework_id: fid.clone(),
                        task_id: kill.task_id.clone(),
                        kill_policy: policy,
                    },
                );
                if !sent {
                    // The agent is away: the kill goes out when it re-registers.
                    if let Some(a) = self.agents.get_mut(&agent_id) {
                        a.pending_kills.insert((fid.clone(), kill.task_id), policy);
                    }
                }
            }
            Some(_) => {
                // Unreachable: nothing can reach it; say where it stands.
                let t = &self.frameworks[fid].tasks[&kill.task_id];
                let mut s = self.reconciled(t, now);
                s.message = Some("Cannot kill the task: its agent is unreachable".into());
                self.send(fid, Event::update(s));
            }
            None => {
                // Unknown task: answer with what explicit reconciliation says.
                self.reconcile(
                    now,
                    fid,
                    Reconcile {
                        tasks: vec![agora_proto::scheduler::ReconcileTask {
                            task_id: kill.task_id,
                            agent_id: kill.agent_id,
                        }],
                    },
                );
            }
        }
    }

    pub(super) fn acknowledge(&mut self, fid: &FrameworkId, ack: Acknowledge) {
        let Some(agent) = self.agents.get(&ack.agent_id) else {
            self.counters.invalid_status_update_acknowledgements += 1;
            return;
        };
        let Some(conn) = agent.conn else {
            // The agent will resend the update once it is back.
            self.counters.invalid_status_update_acknowledgements += 1;
            return;
        };
        self.counters.valid_status_update_acknowledgements += 1;
        self.actions.push(super::Action::ToAgent {
            conn,
            msg: MasterToAgent::AcknowledgeUpdate { framework_id: fid.clone(), task_id: ack.task_id, uuid: ack.uuid },
        });
    }

    /// RECONCILE: implicit (no tasks) reports every task the master knows for
    /// the framework; explicit reports each named task, following Mesos's rules
    /// for tasks whose agent is unreachable, recovering or unknown.
    pub(super) fn reconcile(&mut self, now: Now, fid: &FrameworkId, r: Reconcile) {
        self.counters.messages_reconcile_tasks += 1;
        let fw = &self.frameworks[fid];
        let pa = fw.partition_aware();
        let mut statuses = Vec::new();
        if r.tasks.is_empty() {
            for t in fw.tasks.values() {
                statuses.push(self.reconciled(t, now));
            }
        } else {
            for rt in &r.tasks {
                if let Some(t) = fw.tasks.get(&rt.task_id) {
                    statuses.push(self.reconciled(t, now));
                    continue;
                }
                if let Some(t) = fw.completed_tasks.iter().rev().find(|t| t.info.task_id == rt.task_id) {
                    statuses.push(self.reconciled(t, now));
                    continue;
                }
                let agent = rt.agent_id.as_ref();
                let recovering = match agent {
                    Some(a) => self.recovered_agents.contains_key(a),
                    None => !self.recovered_agents.is_empty(),
                };
                if recovering {
                    // The agent may still come back with the task: say nothing yet.
                    continue;
                }
                let (state, message, unreachable) = match agent {
                    Some(a) if self.agents.contains_key(a) => (
                        if pa { TaskState::Gone } else { TaskState::Lost },
                        "Reconciliation: Task is unknown to the agent",
                        None,
                    ),
                    Some(a) if self.unreachable_time(a).is_some() => (
                        if pa { TaskState::Unreachable } else { TaskState::Lost },
                        "Reconciliation: Task is unreachable",
                        self.unreachable_time(a),
                    ),
                    Some(a) if self.removed_agents.contains(a) => (
                        if pa { TaskState::GoneByOperator } else { TaskState::Lost },
                        "Reconciliation: Task is gone",
                        None,
                    ),
                    _ => {
                        (if pa { TaskState::Unknown } else { TaskState::Lost }, "Reconciliation: Task is unknown", None)
                    }
                };
                let mut s = self.master_status(&rt.task_id, agent, state, Reason::ReasonReconciliation, message, now);
                s.unreachable_time = unreachable.map(Self::time_info);
                statuses.push(s);
            }
        }
        for s in statuses {
            self.send(fid, Event::update(s));
        }
    }

    fn reconciled(&self, t: &Task, now: Now) -> agora_proto::mesos::TaskStatus {
        let mut s = self.master_status(
            &t.info.task_id,
            Some(&t.agent_id),
            t.state,
            Reason::ReasonReconciliation,
            "Reconciliation: Latest task state",
            now,
        );
        s.unreachable_time = t.unreachable_time.map(Self::time_info);
        s
    }
}
