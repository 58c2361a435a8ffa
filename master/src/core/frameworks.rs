//! Frameworks: SUBSCRIBE, failover and its timeout, teardown, and the dispatch
//! of every other scheduler call.

use std::collections::{HashMap, HashSet, VecDeque};

use agora_proto::mesos::{CapabilityType, FrameworkId, FrameworkInfo, MasterInfo, TaskState};
use agora_proto::resources::valid_role;
use agora_proto::scheduler::{Call, CallType, Event, Subscribed};
use agora_proto::wire::MasterToAgent;

use super::{Action, ApiError, ConnId, Framework, Master, Now, Stream, Subscription};

/// Mesos's largest accepted failover timeout is what fits a Duration; one
/// year is more than anyone uses and keeps deadline arithmetic safe.
const MAX_FAILOVER_TIMEOUT_SECS: f64 = 365.0 * 24.0 * 3600.0;

impl Master {
    pub fn master_info(&self) -> MasterInfo {
        MasterInfo {
            id: self.config.master_id.clone(),
            ip: self.config.ip,
            port: self.config.port as u32,
            pid: Some(format!("master@{}:{}", self.config.ip_text, self.config.port)),
            hostname: Some(self.config.hostname.clone()),
            version: Some(agora_proto::MESOS_API_VERSION.to_string()),
            address: Some(agora_proto::mesos::Address {
                hostname: Some(self.config.hostname.clone()),
                ip: Some(self.config.ip_text.clone()),
                port: self.config.port as u32,
            }),
        }
    }

    /// Checks a FrameworkInfo and clamps its failover timeout; returns its roles.
    fn validate_framework_info(info: &mut FrameworkInfo) -> Result<Vec<String>, String> {
        if !info.roles.is_empty() && !info.has_capability(CapabilityType::MultiRole) {
            return Err("'FrameworkInfo.roles' requires the MULTI_ROLE capability".into());
        }
        if info.has_capability(CapabilityType::MultiRole) && info.role.is_some() && !info.roles.is_empty() {
            return Err("'FrameworkInfo.role' must not be set together with 'roles'".into());
        }
        let roles = info.effective_roles();
        let mut seen = HashSet::new();
        for r in &roles {
            if !valid_role(r) {
                return Err(format!("role {r:?} is not a valid role name"));
            }
            if !seen.insert(r) {
                return Err(format!("role {r:?} is listed twice"));
            }
        }
        if let Some(t) = info.failover_timeout.as_mut() {
            if t.is_nan() || *t < 0.0 {
                return Err(format!("failover_timeout {t} is not a non-negative number of seconds"));
            }
            *t = t.min(MAX_FAILOVER_TIMEOUT_SECS);
        }
        Ok(roles)
    }

    /// SUBSCRIBE, after the HTTP layer checked the call's shape. The caller
    /// has registered `stream` and writes the response head on `Accepted`.
    pub fn subscribe(&mut self, now: Now, call: Call, stream: ConnId) -> Subscription {
        let Some(sub) = call.subscribe else {
            return Subscription::Refused { message: "Expecting 'subscribe' to be present".into() };
        };
        let mut info = sub.framework_info;
        let roles = match Self::validate_framework_info(&mut info) {
            Ok(r) => r,
            Err(message) => return Subscription::Refused { message },
        };
        for r in &sub.suppressed_roles {
            if !roles.contains(r) {
                return Subscription::Refused {
                    message: format!("suppressed role {r:?} is not one of the framework's roles"),
                };
            }
        }
        let constraints = match offer_constraints(sub.offer_constraints.as_ref(), &roles) {
            Ok(c) => c,
            Err(message) => return Subscription::Refused { message },
        };
        let stream_id = self.random_uuid().to_string();
        let framework_id = match info.id.clone() {
            Some(id) if self.is_removed_framework(id.as_str()) => {
                return Subscription::Refused { message: "Framework has been removed".into() };
            }
            Some(id) => {
                if let Some(fw) = self.frameworks.get_mut(&id) {
                    // Failover (or a reconnect): the old stream is replaced.
                    if let Some(old) = fw.stream.take() {
                        self.frameworks_by_stream.remove(&old.conn);
                        self.actions.push(Action::Event {
                            streams: vec![old.conn],
                            event: Box::new(Event::error("Framework failed over")),
                        });
                        self.actions.push(Action::CloseStream { stream: old.conn });
                    }
                    fw.info = info.clone();
                    fw.roles = roles.clone();
                    fw.recovered = false;
                    fw.failover_deadline_ms = None;
                    fw.reregistered_time = Some(now.wall_secs);
                    fw.unregistered_time = None;
                    // Outstanding offers went to the old connection.
                    let offers: Vec<_> = fw.offers.iter().cloned().collect();
                    for o in offers {
                        self.remove_offer(&o, 0, now);
                    }
                } else {
                    // Unknown id: the master restarted and the framework comes back.
                    self.insert_framework(now, id.clone(), info.clone(), roles.clone(), false);
                }
                id
            }
            None => {
                let id = FrameworkId::new(format!("{}-{:04}", self.config.master_id, self.next_framework_seq));
                self.next_framework_seq += 1;
                info.id = Some(id.clone());
                self.insert_framework(now, id.clone(), info.clone(), roles.clone(), false);
                id
            }
        };
        let fw = self.frameworks.get_mut(&framework_id).expect("inserted or found above");
        fw.info.id = Some(framework_id.clone());
        fw.stream = Some(Stream { conn: stream, id: stream_id.clone() });
        self.frameworks_by_stream.insert(stream, framework_id.clone());
        self.allocator.add_framework(framework_id.clone(), roles, &sub.suppressed_roles);
        self.allocator.set_offer_constraints(&framework_id, constraints);
        self.allocator.set_framework_active(&framework_id, true);
        self.counters.framework_subscriptions += 1;
        self.alloc_full = true;
        let subscribed = Event::subscribed(Subscribed {
            framework_id: framework_id.clone(),
            heartbeat_interval_seconds: Some(self.config.heartbeat_interval_ms as f64 / 1000.0),
            master_info: Some(self.master_info()),
        });
        self.actions.push(Action::Event { streams: vec![stream], event: Box::new(subscribed) });
        // Mesos sends the first heartbeat right away.
        self.actions.push(Action::Event { streams: vec![stream], event: Box::new(Event::heartbeat()) });
        Subscription::Accepted { framework_id, stream_id }
    }

    fn insert_framework(
        &mut self,
        now: Now,
        id: FrameworkId,
        mut info: FrameworkInfo,
        roles: Vec<String>,
        recovered: bool,
    ) {
        info.id = Some(id.clone());
        self.frameworks.insert(
            id.clone(),
            Framework {
                id,
                info,
                roles,
                stream: None,
                registered_time: now.wall_secs,
                reregistered_time: None,
                unregistered_time: None,
                failover_deadline_ms: None,
                recovered,
                tasks: HashMap::new(),
                completed_tasks: VecDeque::new(),
                offers: HashSet::new(),
            },
        );
    }

    /// A framework known from a re-registering agent: it gets its failover
    /// timeout, and at least the agents' re-registration window, to come back
    /// after a master restart.
    pub(super) fn recover_framework(&mut self, now: Now, id: FrameworkId, mut info: FrameworkInfo) {
        let roles = Self::validate_framework_info(&mut info).unwrap_or_else(|_| info.effective_roles());
        let timeout_ms = ((info.failover_timeout_secs() * 1000.0) as u64).max(self.config.agent_reregister_timeout_ms);
        self.insert_framework(now, id.clone(), info, roles.clone(), true);
        if let Some(fw) = self.frameworks.get_mut(&id) {
            fw.failover_deadline_ms = Some(now.mono_ms.saturating_add(timeout_ms));
        }
        self.allocator.add_framework(id.clone(), roles, &[]);
        self.allocator.set_framework_active(&id, false);
    }

    /// Checks that a non-SUBSCRIBE call comes from the subscribed framework on
    /// its current stream, with Mesos's status codes.
    fn authorize_call(&self, call: &Call, stream_id: Option<&str>) -> Result<FrameworkId, ApiError> {
        let fid =
            call.framework_id.clone().ok_or_else(|| ApiError::bad_request("Expecting 'framework_id' to be present"))?;
        let Some(fw) = self.frameworks.get(&fid) else {
            return Err(ApiError::bad_request(format!("Framework {fid} cannot be found")));
        };
        let Some(stream) = fw.stream.as_ref() else {
            return Err(ApiError::forbidden(format!("Framework {fid} is not subscribed")));
        };
        match stream_id {
            None => Err(ApiError::bad_request("All non-subscribe calls should include the 'Mesos-Stream-Id' header")),
            Some(s) if s != stream.id => Err(ApiError::bad_request(format!(
                "The stream ID '{s}' included in this request didn't match the stream ID currently associated with framework ID {fid}"
            ))),
            Some(_) => Ok(fid),
        }
    }

    /// Every call but SUBSCRIBE. `Ok(200)` or `Ok(202)` is the HTTP status to
    /// answer with.
    pub fn call(&mut self, now: Now, call: Call, stream_id: Option<&str>) -> Result<u16, ApiError> {
        let res = self.dispatch(now, call, stream_id);
        if res.is_err() {
            self.counters.invalid_calls += 1;
        }
        res
    }

    fn dispatch(&mut self, now: Now, call: Call, stream_id: Option<&str>) -> Result<u16, ApiError> {
        call.validate().map_err(|m| ApiError::bad_request(format!("Failed to validate scheduler::Call: {m}")))?;
        if call.kind == CallType::Subscribe {
            return Err(ApiError::bad_request("SUBSCRIBE must be sent on its own connection"));
        }
        let fid = self.authorize_call(&call, stream_id)?;
        match call.kind {
            CallType::Teardown => {
                self.remove_framework(now, &fid, "Framework tore itself down");
            }
            CallType::Accept => self.accept(now, &fid, call.accept.expect("validated")),
            CallType::Decline => {
                let d = call.decline.expect("validated");
                let refuse_ms = (agora_proto::scheduler::Filters::refuse_seconds(d.filters.as_ref()) * 1000.0) as u64;
                for id in d.offer_ids {
                    if self.offers.get(&id).is_some_and(|o| o.framework_id == fid) {
                        self.counters.offers_declined += 1;
                        self.remove_offer(&id, refuse_ms, now);
                    }
                }
            }
            CallType::Revive => {
                let roles = call.revive.map(|r| r.roles).unwrap_or_default();
                self.check_roles(&fid, &roles)?;
                self.counters.messages_revive += 1;
                self.allocator.revive(&fid, &roles);
                self.alloc_full = true;
            }
            CallType::Suppress => {
                let roles = call.suppress.map(|r| r.roles).unwrap_or_default();
                self.check_roles(&fid, &roles)?;
                self.counters.messages_suppress += 1;
                self.allocator.suppress(&fid, &roles);
            }
            CallType::Kill => self.kill(now, &fid, call.kill.expect("validated")),
            CallType::Acknowledge => self.acknowledge(&fid, call.acknowledge.expect("validated")),
            CallType::Reconcile => self.reconcile(now, &fid, call.reconcile.expect("validated")),
            CallType::UpdateFramework => {
                let mut u = call.update_framework.expect("validated");
                if u.framework_info.id.as_ref() != Some(&fid) {
                    return Err(ApiError::bad_request(
                        "'update_framework.framework_info.id' must match 'framework_id'",
                    ));
                }
                let roles = Self::validate_framework_info(&mut u.framework_info).map_err(ApiError::bad_request)?;
                let constraints =
                    offer_constraints(u.offer_constraints.as_ref(), &roles).map_err(ApiError::bad_request)?;
                let fw = self.frameworks.get_mut(&fid).expect("authorized");
                fw.info = u.framework_info;
                fw.roles = roles.clone();
                self.allocator.add_framework(fid.clone(), roles, &u.suppressed_roles);
                self.allocator.set_offer_constraints(&fid, constraints);
                self.alloc_full = true;
                return Ok(200);
            }
            // No custom executors, inverse offers or operation feedback yet:
            // these are accepted and have nothing to act on, as in a Mesos
            // cluster without executors or maintenance.
            CallType::Shutdown
            | CallType::Message
            | CallType::Request
            | CallType::AcceptInverseOffers
            | CallType::DeclineInverseOffers
            | CallType::AcknowledgeOperationStatus
            | CallType::ReconcileOperations => {}
            CallType::Subscribe | CallType::Unknown => unreachable!("rejected above"),
        }
        Ok(202)
    }

    fn check_roles(&self, fid: &FrameworkId, roles: &[String]) -> Result<(), ApiError> {
        let fw = &self.frameworks[fid];
        for r in roles {
            if !fw.roles.contains(r) {
                return Err(ApiError::bad_request(format!("role {r:?} is not one of the framework's roles")));
            }
        }
        Ok(())
    }

    /// The subscription stream closed: keep the framework and its tasks for
    /// its failover timeout.
    pub(super) fn stream_closed(&mut self, now: Now, stream: ConnId) {
        let Some(fid) = self.frameworks_by_stream.remove(&stream) else { return };
        let Some(fw) = self.frameworks.get_mut(&fid) else { return };
        if fw.stream.as_ref().map(|s| s.conn) != Some(stream) {
            return;
        }
        fw.stream = None;
        fw.unregistered_time = Some(now.wall_secs);
        let timeout_ms = (fw.info.failover_timeout_secs() * 1000.0) as u64;
        fw.failover_deadline_ms = Some(now.mono_ms.saturating_add(timeout_ms));
        let offers: Vec<_> = fw.offers.iter().cloned().collect();
        self.allocator.set_framework_active(&fid, false);
        for o in offers {
            if let Some(rec) = self.remove_offer(&o, 0, now) {
                self.alloc_dirty.insert(rec.agent_id);
            }
        }
        if timeout_ms == 0 {
            self.remove_framework(now, &fid, "Framework disconnected with no failover timeout");
        }
    }

    pub(super) fn expire_frameworks(&mut self, now: Now) {
        let due: Vec<FrameworkId> = self
            .frameworks
            .values()
            .filter(|f| f.stream.is_none() && f.failover_deadline_ms.is_some_and(|d| d <= now.mono_ms))
            .map(|f| f.id.clone())
            .collect();
        for id in due {
            self.remove_framework(now, &id, "Framework failover timeout");
        }
    }

    /// Removes a framework: its tasks are killed on their agents, its offers
    /// and allocations released, and it moves to the completed list.
    pub(super) fn remove_framework(&mut self, now: Now, fid: &FrameworkId, why: &str) {
        let Some(mut fw) = self.frameworks.remove(fid) else { return };
        self.counters.framework_removals += 1;
        if let Some(s) = fw.stream.take() {
            self.frameworks_by_stream.remove(&s.conn);
            self.actions.push(Action::CloseStream { stream: s.conn });
        }
        for o in std::mem::take(&mut fw.offers) {
            if let Some(rec) = self.offers.remove(&o) {
                if let Some(a) = self.agents.get_mut(&rec.agent_id) {
                    a.offers.remove(&o);
                }
                // Its charge goes with the framework; another offer of the
                // same resources takes it over.
                self.leave_group(&rec);
            }
        }
        let mut agents = HashSet::new();
        for (tid, mut task) in std::mem::take(&mut fw.tasks) {
            if let Some(a) = self.agents.get_mut(&task.agent_id) {
                a.tasks.remove(&(fid.clone(), tid.clone()));
                agents.insert(task.agent_id.clone());
            }
            task.record(TaskState::Killed, now.wall_secs);
            *self.counters.tasks_terminal.entry(TaskState::Killed).or_default() += 1;
            if fw.completed_tasks.len() >= self.config.max_completed_tasks_per_framework {
                fw.completed_tasks.pop_front();
            }
            fw.completed_tasks.push_back(task);
        }
        for a in agents {
            self.send_to_agent(&a, MasterToAgent::ShutdownFramework { framework_id: fid.clone() });
            self.alloc_dirty.insert(a);
        }
        tracing::info!(framework = %fid, "removing framework: {why}");
        self.allocator.remove_framework(fid);
        fw.unregistered_time.get_or_insert(now.wall_secs);
        if self.completed_frameworks.len() >= self.config.max_completed_frameworks {
            self.completed_frameworks.pop_front();
        }
        self.completed_frameworks.push_back(fw);
    }
}

/// At most this many attribute constraints in a framework's offer
/// constraints, and this many bytes of regular expressions in all of them;
/// each regex compiles to at most `REGEX_SIZE_LIMIT` bytes, with a lazy
/// DFA cache of as much.
pub const MAX_OFFER_CONSTRAINTS: usize = 1024;
pub const MAX_CONSTRAINT_REGEX_BYTES: usize = 16 << 10;
const REGEX_SIZE_LIMIT: usize = 64 << 10;

/// Checks and compiles a framework's offer constraints: roles must be the
/// framework's, each constraint has exactly one selector and one predicate.
fn offer_constraints(
    c: Option<&agora_proto::scheduler::OfferConstraints>,
    roles: &[String],
) -> Result<HashMap<String, crate::allocator::ConstraintGroups>, String> {
    use crate::allocator::{AttributeConstraint, Predicate, Selector};
    let mut out = HashMap::new();
    let Some(c) = c else { return Ok(out) };
    let (mut count, mut regex_bytes) = (0, 0);
    for (role, rc) in &c.role_constraints {
        if !roles.contains(role) {
            return Err(format!("offer constraints for role {role:?}, which is not one of the framework's roles"));
        }
        let mut groups = Vec::with_capacity(rc.groups.len());
        for g in &rc.groups {
            if g.attribute_constraints.is_empty() {
                return Err(format!("an empty group of offer constraints for role {role:?}"));
            }
            let mut group = Vec::with_capacity(g.attribute_constraints.len());
            for a in &g.attribute_constraints {
                count += 1;
                if count > MAX_OFFER_CONSTRAINTS {
                    return Err(format!("more than {MAX_OFFER_CONSTRAINTS} offer constraints"));
                }
                let selector = match (&a.selector.pseudoattribute_type, &a.selector.attribute_name) {
                    (Some(p), None) if p == "HOSTNAME" => Selector::Hostname,
                    (Some(p), None) => return Err(format!("pseudoattribute {p:?} is not supported (HOSTNAME is)")),
                    (None, Some(n)) if !n.is_empty() => Selector::Attribute(n.clone()),
                    _ => return Err("each offer constraint needs exactly one selector".into()),
                };
                let p = &a.predicate;
                let mut regex = |r: &str| -> Result<regex::Regex, String> {
                    regex_bytes += r.len();
                    if regex_bytes > MAX_CONSTRAINT_REGEX_BYTES {
                        return Err(format!("offer constraints' regexes are over {MAX_CONSTRAINT_REGEX_BYTES} bytes"));
                    }
                    let build = |pattern: &str| {
                        regex::RegexBuilder::new(pattern)
                            .size_limit(REGEX_SIZE_LIMIT)
                            .dfa_size_limit(REGEX_SIZE_LIMIT)
                            .build()
                            .map_err(|e| format!("invalid offer constraint regex {r:?}: {e}"))
                    };
                    // Whole on its own first, so that wrapping it for a full
                    // match cannot change what it means (`a)|(b`).
                    build(r)?;
                    build(&format!("^(?:{r})$"))
                };
                let given = [
                    p.exists.is_some(),
                    p.not_exists.is_some(),
                    p.text_equals.is_some(),
                    p.text_not_equals.is_some(),
                    p.text_matches.is_some(),
                    p.text_not_matches.is_some(),
                ];
                if given.iter().filter(|g| **g).count() != 1 {
                    return Err("each offer constraint needs exactly one predicate".into());
                }
                let predicate = if p.exists.is_some() {
                    Predicate::Exists
                } else if p.not_exists.is_some() {
                    Predicate::NotExists
                } else if let Some(t) = &p.text_equals {
                    Predicate::TextEquals(t.value.clone())
                } else if let Some(t) = &p.text_not_equals {
                    Predicate::TextNotEquals(t.value.clone())
                } else if let Some(t) = &p.text_matches {
                    Predicate::TextMatches(regex(&t.regex)?)
                } else if let Some(t) = &p.text_not_matches {
                    Predicate::TextNotMatches(regex(&t.regex)?)
                } else {
                    unreachable!("one predicate is given")
                };
                group.push(AttributeConstraint { selector, predicate });
            }
            groups.push(group);
        }
        if !groups.is_empty() {
            out.insert(role.clone(), groups);
        }
    }
    Ok(out)
}
