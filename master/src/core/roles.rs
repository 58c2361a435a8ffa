//! Operator calls about roles: their weights (`GET_WEIGHTS`,
//! `UPDATE_WEIGHTS`) and quota (`GET_QUOTA`, `UPDATE_QUOTA`), both
//! persisted in the registry, and the roles view (`GET_ROLES`, also in
//! `/master/state` and the metrics). Typed here; `api` reads and writes
//! their JSON. Operator calls on agents' resources are dispatched from here
//! to `operations`.

use std::collections::{BTreeMap, BTreeSet};

use agora_proto::mesos::AgentId;

use super::operations::ResourceOp;
use super::{ApiError, Master, Now};
use crate::allocator::{on_path, Quota, Scalars, SHARE_KINDS};

/// Weights are kept within these bounds (a share divided by a weight must
/// stay a sane number).
pub const MIN_WEIGHT: f64 = 1e-6;
pub const MAX_WEIGHT: f64 = 1e6;

/// At most this many roles in one UPDATE_WEIGHTS or UPDATE_QUOTA.
pub const MAX_ROLE_UPDATES: usize = 1024;

/// An operator call (`POST /api/v1`) this master serves.
#[derive(Clone, Debug, PartialEq)]
pub enum OperatorCall {
    GetWeights,
    /// (role, weight) pairs; build with `update_weights`, which checks them.
    UpdateWeights(Vec<(String, f64)>),
    GetRoles,
    GetQuota,
    /// (role, quota) pairs; an empty quota clears the role's. Build with
    /// `update_quota`, which checks each on its own; the master checks them
    /// against the other roles' and, unless `force`, the cluster's size.
    UpdateQuota {
        quota: Vec<(String, Quota)>,
        force: bool,
    },
    /// RESERVE_RESOURCES, UNRESERVE_RESOURCES, CREATE_VOLUMES and
    /// DESTROY_VOLUMES: an operation on an agent's unallocated resources.
    Operate {
        agent_id: AgentId,
        op: ResourceOp,
    },
}

/// What an operator call answers, when it answers more than "done".
#[derive(Clone, Debug, PartialEq)]
pub enum OperatorReply {
    Weights(Vec<(String, f64)>),
    Roles(Vec<RoleView>),
    Quota(Vec<(String, Quota)>),
}

/// A role as operators see it.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleView {
    pub name: String,
    pub weight: f64,
    /// Frameworks subscribed to exactly this role.
    pub frameworks: Vec<String>,
    /// Allocated (offered or used) in the role's subtree.
    pub allocated: Scalars,
    /// The subtree's dominant share divided by the weight.
    pub dominant_share: f64,
    pub quota: Quota,
    /// What counts against the quota: `allocated`, plus the subtree's
    /// reservations not allocated.
    pub consumed: Scalars,
}

/// Whether an operator may give `role` a weight or quota: a valid role
/// other than `*`.
fn configurable(role: &str) -> Result<(), ApiError> {
    if !agora_proto::resources::valid_role(role) || role == "*" {
        return Err(ApiError::bad_request(format!("{role:?} is not a role that can have a weight or quota")));
    }
    Ok(())
}

/// At most `MAX_ROLE_UPDATES` entries, each role once.
fn distinct<'a>(roles: impl ExactSizeIterator<Item = &'a str>, call: &str) -> Result<(), ApiError> {
    if roles.len() > MAX_ROLE_UPDATES {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ROLE_UPDATES} roles in one {call}, not {}",
            roles.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for role in roles {
        configurable(role)?;
        if !seen.insert(role) {
            return Err(ApiError::bad_request(format!("role {role:?} is given twice")));
        }
    }
    Ok(())
}

impl OperatorCall {
    /// The HTTP status of a call that changed something, once durable: 202
    /// for operations on agents (as Mesos answers them), 200 otherwise.
    pub fn done_status(&self) -> u16 {
        match self {
            OperatorCall::Operate { .. } => 202,
            _ => 200,
        }
    }
    /// An UPDATE_WEIGHTS, if every role can have a weight (valid, not `*`,
    /// given once) and every weight is positive and finite.
    pub fn update_weights(weights: Vec<(String, f64)>) -> Result<OperatorCall, ApiError> {
        distinct(weights.iter().map(|(r, _)| r.as_str()), "UPDATE_WEIGHTS")?;
        for (role, weight) in &weights {
            if !(MIN_WEIGHT..=MAX_WEIGHT).contains(weight) {
                return Err(ApiError::bad_request(format!(
                    "Invalid weight '{weight}' for role {role:?}: weights must be positive, from {MIN_WEIGHT} to {MAX_WEIGHT}"
                )));
            }
        }
        Ok(OperatorCall::UpdateWeights(weights))
    }

    /// An UPDATE_QUOTA, if every role can have a quota and is given once,
    /// no amount is negative, and no guarantee exceeds its limit.
    pub fn update_quota(quota: Vec<(String, Quota)>, force: bool) -> Result<OperatorCall, ApiError> {
        distinct(quota.iter().map(|(r, _)| r.as_str()), "UPDATE_QUOTA")?;
        for (role, q) in &quota {
            if q.limits.0.iter().chain(&q.guarantees.0).flatten().any(|&v| v < 0) {
                return Err(ApiError::bad_request(format!("quota of role {role:?} must not be negative")));
            }
            for (i, kind) in SHARE_KINDS.iter().enumerate() {
                if let (Some(g), Some(l)) = (q.guarantees.0[i], q.limits.0[i]) {
                    if g > l {
                        return Err(ApiError::bad_request(format!(
                            "the {kind} guarantee of role {role:?} ({}) exceeds its limit ({})",
                            g as f64 / 1000.0,
                            l as f64 / 1000.0
                        )));
                    }
                }
            }
        }
        Ok(OperatorCall::UpdateQuota { quota, force })
    }
}

impl Master {
    /// Serves an operator call: its answer, if it has one beyond "done".
    pub fn operator(&mut self, now: Now, call: OperatorCall) -> Result<Option<OperatorReply>, ApiError> {
        match call {
            OperatorCall::Operate { agent_id, op } => {
                self.operate(now, &agent_id, op)?;
                Ok(None)
            }
            OperatorCall::GetWeights => {
                Ok(Some(OperatorReply::Weights(self.weights.iter().map(|(r, w)| (r.clone(), *w)).collect())))
            }
            OperatorCall::GetRoles => Ok(Some(OperatorReply::Roles(self.roles()))),
            OperatorCall::GetQuota => {
                Ok(Some(OperatorReply::Quota(self.quota.iter().map(|(r, l)| (r.clone(), *l)).collect())))
            }
            OperatorCall::UpdateQuota { quota: updates, force } => {
                let mut after = self.quota.clone();
                for (role, q) in &updates {
                    if q.is_empty() {
                        after.remove(role);
                    } else {
                        after.insert(role.clone(), *q);
                    }
                }
                check_guarantees(&after)?;
                if !force {
                    self.check_capacity(&after)?;
                }
                let raised = updates.iter().any(|(role, q)| {
                    let before = self.quota.get(role).map(|q| q.guarantees).unwrap_or_default();
                    (0..4).any(|i| q.guarantees.0[i].unwrap_or(0) > before.0[i].unwrap_or(0))
                });
                for (role, q) in updates {
                    self.allocator.set_limits(&role, q.limits);
                    self.allocator.set_guarantees(&role, q.guarantees);
                }
                self.quota = after;
                self.persist();
                if raised {
                    self.rescind_for_guarantees(now);
                }
                self.alloc_full = true;
                Ok(None)
            }
            OperatorCall::UpdateWeights(updates) => {
                for (role, weight) in updates {
                    self.allocator.set_weight(&role, weight);
                    if weight == 1.0 {
                        self.weights.remove(&role);
                    } else {
                        self.weights.insert(role, weight);
                    }
                }
                self.persist();
                // New weights change who goes first: a full round next.
                self.alloc_full = true;
                Ok(None)
            }
        }
    }

    /// Every role with a weight, a framework or an allocation, and the
    /// roles above them, by name.
    pub fn roles(&self) -> Vec<RoleView> {
        let mut names: BTreeSet<String> = self.weights.keys().chain(self.quota.keys()).cloned().collect();
        for f in self.frameworks.values() {
            names.extend(f.roles.iter().cloned());
        }
        names.extend(self.allocator.roles_allocated());
        let with_parents: BTreeSet<String> = names
            .iter()
            .flat_map(|r| r.match_indices('/').map(|(i, _)| r[..i].to_string()).chain(std::iter::once(r.clone())))
            .collect();
        let consumption = self.allocator.consumption();
        with_parents
            .into_iter()
            .map(|name| {
                let (allocated, dominant_share) = self.allocator.role_share(&name);
                let mut frameworks: Vec<String> =
                    self.frameworks.values().filter(|f| f.roles.contains(&name)).map(|f| f.id.value.clone()).collect();
                frameworks.sort_unstable();
                RoleView {
                    weight: self.allocator.weight(&name),
                    quota: self.quota.get(&name).copied().unwrap_or_default(),
                    consumed: consumption.of(&name),
                    name,
                    frameworks,
                    allocated,
                    dominant_share,
                }
            })
            .collect()
    }

    /// Unless forced, the top-most guarantees must fit in the cluster as it
    /// is (as Mesos's capacity check).
    fn check_capacity(&self, quota: &BTreeMap<String, Quota>) -> Result<(), ApiError> {
        let total = self.allocator.total();
        let mut sum = [0i64; 4];
        for (role, q) in quota {
            if nearest_guaranteed_ancestor(quota, role).is_none() {
                for (s, g) in sum.iter_mut().zip(q.guarantees.0) {
                    *s += g.unwrap_or(0);
                }
            }
        }
        for (i, kind) in SHARE_KINDS.iter().enumerate() {
            if sum[i] > total.0[i] {
                return Err(ApiError {
                    status: 409,
                    message: format!(
                        "quota guarantees of {} {kind} exceed the cluster's {} (set 'force' to set them anyway)",
                        sum[i] as f64 / 1000.0,
                        total.0[i] as f64 / 1000.0
                    ),
                });
            }
        }
        Ok(())
    }

    /// Guarantees went up: offers outstanding to roles that no unmet
    /// guarantee covers are taken back, so that the next round can meet it.
    fn rescind_for_guarantees(&mut self, now: Now) {
        let short = self.allocator.short_roles();
        if short.is_empty() {
            return;
        }
        let ids: Vec<_> =
            self.offers.values().filter(|o| !short.iter().any(|r| on_path(r, &o.role))).map(|o| o.id.clone()).collect();
        for id in ids {
            self.rescind_offer(&id, now);
        }
    }
}

/// The closest role above `role` that has a guarantee.
fn nearest_guaranteed_ancestor<'a>(quota: &BTreeMap<String, Quota>, role: &'a str) -> Option<&'a str> {
    role.match_indices('/')
        .rev()
        .map(|(i, _)| &role[..i])
        .find(|p| quota.get(*p).is_some_and(|q| !q.guarantees.is_empty()))
}

/// Guarantees nest: what the roles right below a guaranteed role (the
/// nearest guaranteed roles under it) are guaranteed, together, must not
/// exceed what it is guaranteed, kind by kind (an unset kind is 0). One
/// pass: each role adds to its nearest guaranteed ancestor.
fn check_guarantees(quota: &BTreeMap<String, Quota>) -> Result<(), ApiError> {
    let mut sums: BTreeMap<&str, [i64; 4]> = BTreeMap::new();
    for (child, cq) in quota.iter().filter(|(_, q)| !q.guarantees.is_empty()) {
        if let Some(parent) = nearest_guaranteed_ancestor(quota, child) {
            let sum = sums.entry(parent).or_default();
            for (s, g) in sum.iter_mut().zip(cq.guarantees.0) {
                *s += g.unwrap_or(0);
            }
        }
    }
    for (parent, sum) in sums {
        let pq = &quota[parent];
        for (i, kind) in SHARE_KINDS.iter().enumerate() {
            let own = pq.guarantees.0[i].unwrap_or(0);
            if sum[i] > own {
                return Err(ApiError::bad_request(format!(
                    "the roles under {parent:?} are guaranteed {} {kind} together, more than its own {}",
                    sum[i] as f64 / 1000.0,
                    own as f64 / 1000.0
                )));
            }
        }
    }
    Ok(())
}
