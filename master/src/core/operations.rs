//! Operations that change an agent's resources rather than use them:
//! RESERVE and UNRESERVE (dynamic reservations), CREATE and DESTROY
//! (persistent volumes). Frameworks run them on offered resources (in an
//! ACCEPT, in order with their launches); operators run them on unallocated
//! resources (`RESERVE_RESOURCES`, `UNRESERVE_RESOURCES`, `CREATE_VOLUMES`,
//! `DESTROY_VOLUMES`).
//!
//! Each one is a conversion: some resources leave the agent's total and
//! others of the same quantity take their place. The master applies it to
//! its view of the agent and to the allocator, then sends the agent the
//! whole set of its reservations and volumes (`CheckpointResources`), which
//! the agent keeps across restarts; the registry keeps it across master
//! restarts.

use std::collections::HashSet;

use agora_proto::mesos::{AgentId, FrameworkId};
use agora_proto::resources::{valid_container_path, valid_volume_id, ReservationKind, Resource, Resources};
use agora_proto::wire::MasterToAgent;

use super::{ApiError, Master, Now};

/// One operation on an agent's resources.
#[derive(Clone, Debug, PartialEq)]
pub enum ResourceOp {
    Reserve(Resources),
    Unreserve(Resources),
    Create(Resources),
    Destroy(Resources),
}

/// What an operation changes: `from` leaves the agent's total and `to`
/// takes its place (the same quantities, in another form).
#[derive(Clone, Debug, PartialEq)]
pub struct Conversion {
    pub from: Resources,
    pub to: Resources,
}

impl ResourceOp {
    pub fn name(&self) -> &'static str {
        match self {
            ResourceOp::Reserve(_) => "RESERVE",
            ResourceOp::Unreserve(_) => "UNRESERVE",
            ResourceOp::Create(_) => "CREATE",
            ResourceOp::Destroy(_) => "DESTROY",
        }
    }

    /// Checks the operation on its own and works out its conversion.
    /// `principal` is the caller's (a framework's), filled into reservations
    /// and volumes that name none; one that names another is refused.
    /// `volume_ids` are the ids of the agent's volumes.
    pub fn conversion(&self, principal: Option<&str>, volume_ids: &HashSet<String>) -> Result<Conversion, String> {
        let given = match self {
            ResourceOp::Reserve(r) | ResourceOp::Unreserve(r) | ResourceOp::Create(r) | ResourceOp::Destroy(r) => r,
        };
        if given.is_empty() {
            return Err(format!("{} names no resources", self.name()));
        }
        let mut from = Resources::new();
        let mut to = Resources::new();
        let mut new_ids = HashSet::new();
        for r in given {
            if r.revocable {
                return Err(format!("{}: revocable resources cannot be reserved or hold volumes ({r})", self.name()));
            }
            let mut r = r.clone();
            match self {
                ResourceOp::Reserve(_) => {
                    let Some(res) = r.reservation.as_mut().filter(|x| x.kind == ReservationKind::Dynamic) else {
                        return Err(format!("RESERVE needs resources with a dynamic reservation, not {r}"));
                    };
                    fill_principal(&mut res.principal, principal, "reservation")?;
                    if r.allocation_role.as_ref().is_some_and(|a| *a != res.role) {
                        return Err(format!(
                            "RESERVE of {r}: resources allocated to role {:?} can only be reserved to it",
                            r.allocation_role.as_deref().unwrap_or_default()
                        ));
                    }
                    if r.volume.is_some() {
                        return Err(format!("RESERVE of {r}: a reservation cannot also create a volume"));
                    }
                    from.add_one(r.base());
                    to.add_one(r);
                }
                ResourceOp::Unreserve(_) => {
                    if !r.reservation.as_ref().is_some_and(|x| x.kind == ReservationKind::Dynamic) {
                        return Err(format!("UNRESERVE of {r}: only dynamic reservations can be unreserved"));
                    }
                    if r.volume.is_some() {
                        return Err(format!("UNRESERVE of {r}: destroy the persistent volume first"));
                    }
                    to.add_one(r.base());
                    from.add_one(r);
                }
                ResourceOp::Create(_) => {
                    if r.name != "disk" || r.reservation.is_none() {
                        return Err(format!("CREATE of {r}: a persistent volume is made on reserved disk"));
                    }
                    let Some(v) = r.volume.as_mut() else {
                        return Err(format!("CREATE of {r}: the resource has no 'disk.persistence' and 'disk.volume'"));
                    };
                    if !valid_volume_id(&v.id) {
                        return Err(format!(
                            "CREATE: volume id {:?} must be 1 to 255 letters, digits, '-', '_' or '.', and not '.' \
                             or '..'",
                            v.id
                        ));
                    }
                    if !valid_container_path(&v.container_path) {
                        return Err(format!(
                            "CREATE: container_path {:?} of volume {} must be a relative path without '.' or '..'",
                            v.container_path, v.id
                        ));
                    }
                    if volume_ids.contains(&v.id) || !new_ids.insert(v.id.clone()) {
                        return Err(format!("CREATE: a volume with id {:?} already exists on the agent", v.id));
                    }
                    fill_principal(&mut v.principal, principal, "volume")?;
                    let mut plain = r.clone();
                    plain.volume = None;
                    from.add_one(plain);
                    to.add_one(r);
                }
                ResourceOp::Destroy(_) => {
                    if r.volume.is_none() {
                        return Err(format!("DESTROY of {r}: the resource is not a persistent volume"));
                    }
                    let mut plain = r.clone();
                    plain.volume = None;
                    from.add_one(r);
                    to.add_one(plain);
                }
            }
        }
        Ok(Conversion { from, to })
    }
}

fn fill_principal(slot: &mut Option<String>, caller: Option<&str>, what: &str) -> Result<(), String> {
    match (slot.as_deref(), caller) {
        (Some(p), Some(c)) if p != c => {
            Err(format!("the {what}'s principal {p:?} is not the caller's principal {c:?}"))
        }
        (None, Some(c)) => {
            *slot = Some(c.to_string());
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The ids of the persistent volumes among `resources`.
pub fn volume_ids(resources: &Resources) -> HashSet<String> {
    resources.iter().filter_map(|r| r.volume.as_ref().map(|v| v.id.clone())).collect()
}

impl Master {
    /// Applies `c` to the agent's resources and to the allocator. `holder`
    /// is the framework whose offer the resources were in, if any.
    pub(super) fn convert(&mut self, agent_id: &AgentId, holder: Option<&FrameworkId>, c: &Conversion) {
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.info.resources.subtract_saturating(&c.from.unallocated());
            a.info.resources.add(&c.to.unallocated());
        }
        self.allocator.convert(agent_id, holder, &c.from, &c.to);
    }

    /// Sends the agent all of its reservations and volumes, and records them
    /// in the registry.
    pub(super) fn checkpoint(&mut self, agent_id: &AgentId) {
        if let Some(a) = self.agents.get(agent_id) {
            let resources = a.info.resources.checkpointed();
            self.send_to_agent(agent_id, MasterToAgent::CheckpointResources { resources });
        }
        self.persist();
    }

    /// An operator's operation on an agent's unallocated resources. Offers
    /// on the agent are rescinded when they hold what it needs.
    pub(super) fn operate(&mut self, now: Now, agent_id: &AgentId, op: ResourceOp) -> Result<(), ApiError> {
        let conflict = |m: String| ApiError { status: 409, message: m };
        let Some(agent) = self.agents.get(agent_id) else {
            return Err(ApiError { status: 404, message: format!("No agent found with ID {agent_id}") });
        };
        if agent.conn.is_none() {
            return Err(conflict(format!("Agent {agent_id} is not connected; try again once it is back")));
        }
        let c = op.conversion(None, &volume_ids(&agent.info.resources)).map_err(ApiError::bad_request)?;
        if let ResourceOp::Destroy(volumes) = &op {
            let ids = volume_ids(volumes);
            if let Some((task, id)) = self.volume_users(agent_id).into_iter().find(|(_, id)| ids.contains(id)) {
                return Err(conflict(format!(
                    "Volume {id} is in use by task {task}; it can be destroyed once no task uses it"
                )));
            }
        }
        let available = |m: &Master| m.allocator.available(agent_id).unwrap_or_default();
        if !available(self).contains(&c.from) {
            // Offers may hold it: take them back, then look again.
            let offers: Vec<_> = self.agents[agent_id].offers.iter().cloned().collect();
            for o in offers {
                self.rescind_offer(&o, now);
            }
            if !available(self).contains(&c.from) {
                let total = &self.agents[agent_id].info.resources;
                let why = if total.contains(&c.from) { "in use by tasks" } else { "not on the agent" };
                return Err(conflict(format!(
                    "{} cannot be carried out: {} is {why} (unallocated: {})",
                    op.name(),
                    c.from,
                    available(self)
                )));
            }
        }
        tracing::info!(agent = %agent_id, "operator {}: {} becomes {}", op.name(), c.from, c.to);
        self.convert(agent_id, None, &c);
        self.checkpoint(agent_id);
        self.alloc_dirty.insert(agent_id.clone());
        Ok(())
    }

    /// (task, volume id) for each volume a live task on the agent uses.
    fn volume_users(&self, agent_id: &AgentId) -> Vec<(String, String)> {
        let Some(a) = self.agents.get(agent_id) else { return Vec::new() };
        a.tasks
            .iter()
            .filter_map(|(fid, tid)| self.frameworks.get(fid)?.tasks.get(tid))
            .filter(|t| !t.state.is_terminal())
            .flat_map(|t| {
                t.info
                    .resources
                    .iter()
                    .filter_map(|r: &Resource| Some((t.info.task_id.value.clone(), r.volume.as_ref()?.id.clone())))
            })
            .collect()
    }
}
