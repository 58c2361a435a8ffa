//! Operator calls about roles: their weights (`GET_WEIGHTS`,
//! `UPDATE_WEIGHTS`) and quota limits (`GET_QUOTA`, `UPDATE_QUOTA`), both
//! persisted in the registry, and the roles view (`GET_ROLES`, also in
//! `/master/state` and the metrics). Typed here; `api` reads and writes
//! their JSON. Operator calls on agents' resources are dispatched from here
//! to `operations`.

use std::collections::BTreeSet;

use agora_proto::mesos::AgentId;

use super::operations::ResourceOp;
use super::{ApiError, Master, Now};
use crate::allocator::{QuotaLimits, Scalars};

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
    /// (role, limits) pairs; no limit on any kind clears the role's quota.
    /// Build with `update_quota`, which checks them.
    UpdateQuota(Vec<(String, QuotaLimits)>),
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
    Quota(Vec<(String, QuotaLimits)>),
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
    pub limits: QuotaLimits,
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
    /// and no limit is negative.
    pub fn update_quota(quota: Vec<(String, QuotaLimits)>) -> Result<OperatorCall, ApiError> {
        distinct(quota.iter().map(|(r, _)| r.as_str()), "UPDATE_QUOTA")?;
        for (role, limits) in &quota {
            if limits.0.iter().flatten().any(|&v| v < 0) {
                return Err(ApiError::bad_request(format!("quota limits of role {role:?} must not be negative")));
            }
        }
        Ok(OperatorCall::UpdateQuota(quota))
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
            OperatorCall::UpdateQuota(updates) => {
                for (role, limits) in updates {
                    self.allocator.set_limits(&role, limits);
                    if limits == QuotaLimits::default() {
                        self.quota.remove(&role);
                    } else {
                        self.quota.insert(role, limits);
                    }
                }
                self.persist();
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
        with_parents
            .into_iter()
            .map(|name| {
                let (allocated, dominant_share) = self.allocator.role_share(&name);
                let mut frameworks: Vec<String> =
                    self.frameworks.values().filter(|f| f.roles.contains(&name)).map(|f| f.id.value.clone()).collect();
                frameworks.sort_unstable();
                RoleView {
                    weight: self.allocator.weight(&name),
                    limits: self.allocator.limits(&name),
                    name,
                    frameworks,
                    allocated,
                    dominant_share,
                }
            })
            .collect()
    }
}
