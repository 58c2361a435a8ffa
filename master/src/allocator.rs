//! The allocator: decides which framework is offered which agent's free
//! resources, by Dominant Resource Fairness across frameworks.
//!
//! It is sans-IO: no sockets, no clocks. Callers tell it about agents,
//! frameworks and resources (`add_*`, `recover`, ...) and ask it to
//! `allocate(now_ms)`; it returns [`Allocation`]s, which the master turns into
//! offers. Time is an argument, so filters expire deterministically, and its
//! only randomness (the agent order of a round) comes from a seeded generator.
//! A large round may run on worker threads it keeps (see *Parallel
//! rounds*); what it grants does not depend on their timing.
//!
//! Shares are computed over the four scalar kinds (`cpus`, `mem`, `disk`,
//! `gpus`) of all active agents. Offered and used resources both count as
//! allocated. Each framework has one or more roles; resources reserved to a
//! role only go to that role.
//!
//! **Hierarchical DRF.** Roles form a tree by their `/`-separated names
//! (`eng`, `eng/dev`). Resources go first to the sibling role with the lowest
//! weighted share (the dominant share of everything allocated in its subtree,
//! divided by its weight, 1 unless set), level by level down the tree, then
//! to the framework with the lowest share within that role. Frameworks
//! subscribed to a role that also has child roles compete with those
//! children as if in a leaf of their own beside them (`eng/.`), with the
//! role's weight.
//!
//! **Offer constraints.** A framework may ask, per role, for the agents
//! whose attributes (or hostname) satisfy any of its groups of constraints
//! (each group all of its constraints); other agents' resources are not
//! offered to it for that role.
//!
//! **Quota limits.** A role with a limit on a share kind is not offered
//! beyond it, counting its whole subtree: what a role is offered is cut down
//! to what is left under its own limit and those of the roles above it.
//! Limits bound offers; resources charged otherwise (`add_used`, tasks an
//! agent reports on re-registering) are counted, not refused.
//!
//! **Quota guarantees.** A role with a guarantee *consumes* what is
//! allocated in its subtree plus its subtree's reservations not allocated
//! yet; its *shortfall* is what its guarantee exceeds that by, per kind. A
//! round first offers to the roles under a guarantee with a shortfall,
//! cut to the least shortfall on the role's path (stage one). Then every
//! role is offered as above (stage two), but unreserved resources are held
//! back for the shortfalls of the top-most guaranteed roles (the
//! *headroom*): a role gets only what is free beyond the headroom, plus
//! what the headroom holds for the top-most guaranteed role on its own
//! path (which goes toward that role's guarantee). Guarantees never exceed
//! limits, and children's guarantees never exceed their parent's (the
//! operator API checks both).
//!
//! **Parallel rounds.** With `Config::workers` above 1, a round over at
//! least twice `Config::min_agents_per_worker` agents is split: its agents
//! in `k` parts of contiguous slots, each offered by its own worker (a
//! thread the allocator keeps for split rounds, started by the first that
//! needs it and ended when the allocator is dropped; the calling thread is
//! one of them, and runs any part the system would not start a thread
//! for). Each worker runs both stages over its part against the figures
//! of the start of the round: it ranks by what roles and frameworks held
//! then plus `k` times what it granted them itself (the other workers are
//! taken to grant about as much meanwhile). Quota stays exact: each
//! role's room under its limit and each guaranteed role's shortfall are
//! split between the parts by what each has free, in whole parts that add
//! up to the whole ([`apportion`]; a shortfall in pieces worth an offer,
//! [`apportion_in`]), and the slack by what each part's free leaves beyond
//! its pieces. A part's stage one goes toward its pieces of the
//! shortfalls, and its stage two holds them back, so no limit is passed,
//! no more goes toward a guarantee than a serial round would give it, and
//! the headroom holds. When a role has a limit or a guarantee, a serial
//! pass (both stages) over the agents with something left then offers
//! what a part's room or piece left unused, but for agents no role at its
//! cpu limit could take.
//!
//! *The fairness bound.* Serial DRF grants a framework only when its share
//! is the least of those that want the resources. So a framework granted
//! something in a round ends it no more than one grant's share `g` ahead
//! of any other that wanted the same offers, beyond the lead it had before
//! the round (if any). With `k` workers, each does the same in its own
//! view, where its grants weigh `k` times; averaged over the workers'
//! views, the bound becomes `k·g` beyond the lead before. (The proof adds
//! shares up, which holds for resources in the cluster's proportions;
//! `parallel_rounds_stay_within_k_grants_of_fair` checks it.) Sibling roles
//! are ranked the same way, by weighted shares.

use std::collections::BTreeSet;
use std::sync::Arc;

use agora_proto::mesos::{AgentId, FrameworkId};
use agora_proto::resources::{Fixed, Name, Resource, Resources};
use rand::rngs::SmallRng;
use rand::Rng;
use rand::SeedableRng;

/// The allocator's maps and sets hash with foldhash, seeded per process: a
/// round hashes role names and slot indices on every grant.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The scalar kinds that make up a dominant share.
pub const SHARE_KINDS: [&str; 4] = ["cpus", "mem", "disk", "gpus"];

/// Sums of the share kinds, in thousandths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scalars(pub [i64; 4]);

impl Scalars {
    /// Each share kind with its amount in the resource's unit (cores, MB).
    pub fn named(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        SHARE_KINDS.iter().zip(self.0).map(|(k, v)| (*k, v as f64 / 1000.0))
    }

    pub fn of(r: &Resources) -> Scalars {
        Scalars::of_where(r, |_| true)
    }

    /// The share kinds of the resources of `r` that `keep` accepts.
    fn of_where(r: &Resources, keep: impl Fn(&Resource) -> bool) -> Scalars {
        let mut s = [0i64; 4];
        for res in r.iter().filter(|x| keep(x)) {
            if let (Some(i), agora_proto::resources::Value::Scalar(v)) = (kind_index(&res.name), &res.value) {
                s[i] += v.0;
            }
        }
        Scalars(s)
    }

    /// The share kinds of `r` per allocation role (unallocated resources
    /// are left out).
    pub fn by_role(r: &Resources) -> Vec<(String, Scalars)> {
        let mut out: Vec<(String, Scalars)> = Vec::new();
        for res in r.iter() {
            let (Some(role), agora_proto::resources::Value::Scalar(v)) = (&res.allocation_role, &res.value) else {
                continue;
            };
            let Some(i) = kind_index(&res.name) else { continue };
            match out.iter_mut().find(|(r, _)| r == role) {
                Some((_, s)) => s.0[i] += v.0,
                None => {
                    let mut s = Scalars::default();
                    s.0[i] = v.0;
                    out.push((role.to_string(), s));
                }
            }
        }
        out
    }

    /// `self + k × o`.
    fn plus_times(mut self, o: Scalars, k: i64) -> Scalars {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += k * b;
        }
        self
    }

    fn plus(mut self, o: Scalars) -> Scalars {
        self.add(o);
        self
    }

    fn add(&mut self, o: Scalars) {
        for i in 0..4 {
            self.0[i] += o.0[i];
        }
    }

    fn sub(&mut self, o: Scalars) {
        for i in 0..4 {
            self.0[i] -= o.0[i];
        }
    }

    fn add_or_sub(&mut self, o: Scalars, add: bool) {
        if add {
            self.add(o)
        } else {
            self.sub(o)
        }
    }

    /// The dominant share of `self` against `total`, in [0, 1] for sane input.
    pub fn dominant_share(&self, total: &Scalars) -> f64 {
        let mut share = 0.0f64;
        for i in 0..4 {
            if total.0[i] > 0 {
                share = share.max(self.0[i] as f64 / total.0[i] as f64);
            }
        }
        share
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Do not offer an agent's leftovers unless they hold at least this many
    /// cpus or this much memory (Mesos's MIN_CPUS / MIN_MEM).
    pub min_offer_cpus: Fixed,
    pub min_offer_mem_mb: Fixed,
    pub seed: u64,
    /// Optimistic offers: each allocation also names up to this many more
    /// frameworks, the next in DRF order that could take the same
    /// resources, to be offered them too (0: pessimistic, one framework
    /// per resource).
    pub optimistic: usize,
    /// Parallel rounds: a round over at least twice
    /// `min_agents_per_worker` agents is split among up to this many
    /// workers (threads), each offering its own part of the agents (see
    /// the module's notes). 1: every round is serial.
    pub workers: usize,
    pub min_agents_per_worker: usize,
    /// Called first on each thread the allocator starts for split rounds
    /// (not on the calling thread, which is one of the workers): the shell's
    /// chance to place it. The master lets it run on every CPU, where it
    /// would otherwise inherit the pinning of the shard that runs the round.
    pub on_worker_start: Option<fn()>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            min_offer_cpus: Fixed(10),
            min_offer_mem_mb: Fixed(32_000),
            seed: 0x5eed,
            optimistic: 0,
            workers: 1,
            min_agents_per_worker: 2048,
            on_worker_start: None,
        }
    }
}

/// What an attribute constraint looks at.
#[derive(Clone, Debug)]
pub enum Selector {
    Hostname,
    Attribute(String),
}

/// What it requires. Text predicates compare an attribute's text (a scalar
/// attribute's value as written); an absent attribute satisfies only
/// `NotExists`, `TextNotEquals` and `TextNotMatches`.
#[derive(Clone, Debug)]
pub enum Predicate {
    Exists,
    NotExists,
    TextEquals(String),
    TextNotEquals(String),
    /// Matches the whole text.
    TextMatches(regex::Regex),
    TextNotMatches(regex::Regex),
}

#[derive(Clone, Debug)]
pub struct AttributeConstraint {
    pub selector: Selector,
    pub predicate: Predicate,
}

/// Groups of constraints: an agent qualifies if it satisfies every
/// constraint of at least one group.
pub type ConstraintGroups = Vec<Vec<AttributeConstraint>>;

impl AttributeConstraint {
    fn holds(&self, hostname: &str, attributes: &[(String, String)]) -> bool {
        let value = match &self.selector {
            Selector::Hostname => Some(hostname),
            Selector::Attribute(name) => attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()),
        };
        match (&self.predicate, value) {
            (Predicate::Exists, v) => v.is_some(),
            (Predicate::NotExists, v) => v.is_none(),
            (Predicate::TextEquals(want), Some(v)) => v == want,
            (Predicate::TextNotEquals(want), v) => v != Some(want.as_str()),
            (Predicate::TextMatches(re), Some(v)) => re.is_match(v),
            (Predicate::TextNotMatches(re), v) => !v.is_some_and(|v| re.is_match(v)),
            (Predicate::TextEquals(_) | Predicate::TextMatches(_), None) => false,
        }
    }
}

/// Amounts per share kind (`SHARE_KINDS` order), in thousandths, where
/// `None` is no amount set: a role's quota guarantees or limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quantities(pub [Option<i64>; 4]);

impl Quantities {
    /// Each share kind that has an amount, with it in the resource's unit.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        SHARE_KINDS.iter().zip(self.0).filter_map(|(k, v)| v.map(|v| (*k, v as f64 / 1000.0)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// A role's quota: what it is guaranteed, and what it is never offered
/// beyond.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    pub guarantees: Quantities,
    pub limits: Quantities,
}

impl Quota {
    pub fn is_empty(&self) -> bool {
        self.guarantees.is_empty() && self.limits.is_empty()
    }
}

/// The index of a share kind in `SHARE_KINDS`.
fn kind_index(name: &str) -> Option<usize> {
    // A match, not a search of SHARE_KINDS: it branches on the length
    // first, and this runs for every resource an allocation round looks at.
    let i = match name {
        "cpus" => 0,
        "mem" => 1,
        "disk" => 2,
        "gpus" => 3,
        _ => return None,
    };
    debug_assert_eq!(SHARE_KINDS[i], name);
    Some(i)
}

/// Resources of one agent allocated to one framework under one role.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub role: String,
    /// Marked as allocated to `role`.
    pub resources: Resources,
    /// Optimistic offers: more (framework, role) pairs to offer the same
    /// resources to, not charged for them. Whoever uses them first takes
    /// the charge over.
    pub also: Vec<(FrameworkId, String)>,
}

#[derive(Clone, Debug)]
struct Filter {
    /// Resources (without allocation markers) the framework refused.
    resources: Resources,
    expires_ms: u64,
}

#[derive(Debug)]
struct AgentSlot {
    id: AgentId,
    hostname: String,
    /// Attributes as text, for offer constraints.
    attributes: Vec<(String, String)>,
    total: Resources,
    /// Everything offered or used, per framework.
    allocated: HashMap<usize, Holding>,
    /// What is not allocated: `total` less everything in `allocated`
    /// (without allocation markers). A round's grants take from it in
    /// place; every other change to `total` or `allocated` works it out
    /// again ([`AgentSlot::refresh_free`]).
    free: Resources,
    /// The share kinds of `free`, set with it ([`AgentSlot::set_free`]; a
    /// round works them out again after each grant).
    free_sums: FreeSums,
    active: bool,
}

/// The share kinds of an agent's free resources: the unreserved ones, and
/// per role those reserved to it. A round reads them for every agent (to
/// pass over those not worth an offer, for a split round's parts' free,
/// and by leaf for what each leaf's role may use) without going through
/// the resources; the headroom reads their sums ([`FreeTotals`]).
#[derive(Debug, Default, PartialEq)]
struct FreeSums {
    unreserved: Scalars,
    reserved: Vec<(Name, Scalars)>,
    /// All of `reserved`, summed: what the agent has free is read without
    /// the list (elsewhere on the heap, so another miss for every agent).
    all_reserved: Scalars,
    /// Whether some of the resources (of any kind) are reserved.
    any_reserved: bool,
}

impl FreeSums {
    fn of(free: &Resources) -> FreeSums {
        let mut sums = FreeSums::default();
        sums.refill(free);
        sums
    }

    /// Works them out again, for `free`, in place (keeping the list).
    fn refill(&mut self, free: &Resources) {
        self.unreserved = Scalars::default();
        self.reserved.clear();
        self.all_reserved = Scalars::default();
        self.any_reserved = free.iter().any(|r| r.reservation.is_some());
        for r in free.iter() {
            let (Some(i), agora_proto::resources::Value::Scalar(v)) = (kind_index(&r.name), &r.value) else {
                continue;
            };
            let s = match &r.reservation {
                None => &mut self.unreserved,
                Some(res) => {
                    self.all_reserved.0[i] += v.0;
                    match self.reserved.iter().position(|(role, _)| *role == res.role) {
                        Some(k) => &mut self.reserved[k].1,
                        None => {
                            self.reserved.push((res.role.clone(), Scalars::default()));
                            &mut self.reserved.last_mut().expect("pushed").1
                        }
                    }
                }
            };
            s.0[i] += v.0;
        }
    }

    /// All of them (as [`Scalars::of`] the free resources).
    fn all(&self) -> Scalars {
        self.unreserved.plus(self.all_reserved)
    }
}

/// What the active agents have free, summed: their [`FreeSums`], kept up
/// to date as those change, so that a round's headroom and guarantees are
/// worked out without a pass over the agents. In a worker of a split round
/// it starts at zero and sums what its part changes, added in when the
/// part ends.
#[derive(Debug, Default)]
struct FreeTotals {
    unreserved: Scalars,
    /// Per role, what is reserved to it.
    reserved: HashMap<String, Scalars>,
}

impl FreeTotals {
    /// Adds (or takes away) one agent's free sums.
    fn bump(&mut self, sums: &FreeSums, add: bool) {
        self.unreserved.add_or_sub(sums.unreserved, add);
        for (role, s) in &sums.reserved {
            bump(&mut self.reserved, role, *s, add);
        }
    }

    /// Adds in what a worker's part changed.
    fn merge(&mut self, part: FreeTotals) {
        self.unreserved.add(part.unreserved);
        for (role, s) in part.reserved {
            bump(&mut self.reserved, &role, s, true);
        }
    }
}

/// What one framework holds on an agent.
#[derive(Debug)]
enum Holding {
    /// These resources, with allocation markers.
    Listed(Resources),
    /// All of the agent's `total`, allocated to a role (by number, see
    /// [`RoleNames`]): what granting a whole idle agent leaves, kept
    /// without a copy of the total (the offer takes the only one). It
    /// becomes `Listed` before it or the total changes.
    Total(u32),
    /// Parts of the agent's `total`, allocated to a role (by number): what
    /// a round's grants of an agent idle at its turn leave, kept without a
    /// copy of the offer. Like `Total`, it becomes `Listed` before it or
    /// the total changes.
    Parts(u32, TotalParts),
}

// A holding is kept per framework on every agent it holds anything on, in
// a map per agent: the variants stay as small as a list's.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Holding>() == 32);

impl Holding {
    /// The holding as resources, given the agent's `total`.
    fn into_resources(self, total: &Resources, names: &RoleNames) -> Resources {
        match self {
            Holding::Listed(r) => r,
            other => other.resources(total, names),
        }
    }

    /// A copy of the holding as resources (see [`Holding::into_resources`]).
    fn resources(&self, total: &Resources, names: &RoleNames) -> Resources {
        match self {
            Holding::Listed(r) => r.clone(),
            Holding::Total(role) => total.allocate_to(names.name(*role)),
            Holding::Parts(role, parts) => parts.resources(total, Some(names.name(*role))),
        }
    }

    /// Turns a `Total` or `Parts` into the `Listed` resources it stands
    /// for.
    fn list(&mut self, total: &Resources, names: &RoleNames) -> &mut Resources {
        if !matches!(self, Holding::Listed(_)) {
            let listed = std::mem::replace(self, Holding::Listed(Resources::new())).into_resources(total, names);
            *self = Holding::Listed(listed);
        }
        match self {
            Holding::Listed(r) => r,
            _ => unreachable!("listed above"),
        }
    }
}

/// Parts of an agent's `total`, by index into it in the order an offer
/// listed them, each all of the resource or that much of a scalar (see
/// [`Holding::Parts`]).
#[derive(Debug)]
struct TotalParts {
    /// Indices into `total`; `u8::MAX` past the last.
    at: [u8; TotalParts::MAX],
    /// Per part, how much of a scalar it is when not all of it; none at all
    /// when every part is all of its resource (the usual grant, which then
    /// allocates nothing).
    amounts: Option<Box<[Option<i64>; TotalParts::MAX]>>,
}

impl TotalParts {
    /// The most parts one names: an agent with more resources is held by
    /// copies (`Holding::Listed`).
    const MAX: usize = 8;

    /// The parts as resources, allocated to `role` (unallocated with
    /// `None`).
    fn resources(&self, total: &Resources, role: Option<&str>) -> Resources {
        let all = total.iter().as_slice();
        let parts = self.at.iter().take_while(|&&i| i != u8::MAX).enumerate();
        Resources::from_distinct(
            parts
                .map(|(p, &i)| {
                    let mut r = all[usize::from(i)].clone();
                    if let (Some(amount), agora_proto::resources::Value::Scalar(v)) =
                        (self.amounts.as_ref().and_then(|a| a[p]), &mut r.value)
                    {
                        v.0 = amount;
                    }
                    r.allocation_role = role.map(Name::from);
                    r
                })
                .collect(),
        )
    }
}

/// Where the available resources of an agent idle at its turn in a round
/// lie in its `total` (at the start, the same resources in the same order),
/// kept as grants take from them: so that a grant's holding names its parts
/// of the total ([`TotalParts`]) rather than copying them.
struct Origin {
    /// By index into the available resources: the index into `total`, and
    /// whether all of that resource is still available.
    at: [(u8, bool); TotalParts::MAX],
    len: usize,
}

impl Origin {
    /// For an agent's available resources `free`, when they are its total
    /// (nobody holds anything on it) and no more than a holding names.
    fn of(slot: &AgentSlot, free: &Resources) -> Option<Origin> {
        if !slot.allocated.is_empty() || free.len() > TotalParts::MAX {
            return None;
        }
        #[cfg(test)]
        assert_eq!(*free, slot.total, "an idle agent's free resources are its total");
        let mut at = [(u8::MAX, false); TotalParts::MAX];
        for (i, a) in at.iter_mut().enumerate().take(free.len()) {
            *a = (i as u8, true);
        }
        Some(Origin { at, len: free.len() })
    }

    /// A grant of `take` of `available` (all of it with `None`), which
    /// these say where lie in the total: what it takes of the total. They
    /// are kept true for what it leaves: the resources taken whole are gone
    /// (the rest keep their order, as [`Resources::take_parts`] keeps it),
    /// those taken in part are no longer all there.
    fn grant(&mut self, available: &Resources, take: Option<&Take>) -> TotalParts {
        let all = available.iter().as_slice();
        let mut parts = TotalParts { at: [u8::MAX; TotalParts::MAX], amounts: None };
        let mut gone = [false; TotalParts::MAX];
        let mut put = |p: usize, k: usize, amount: Option<i64>| {
            let (i, whole) = self.at[k];
            parts.at[p] = i;
            let taken = match (&all[k].value, amount) {
                // Some of a scalar: the rest stays.
                (agora_proto::resources::Value::Scalar(v), Some(t)) if t < v.0 => {
                    self.at[k].1 = false;
                    Some(t)
                }
                // All that is left of a scalar.
                (agora_proto::resources::Value::Scalar(v), _) => {
                    gone[k] = true;
                    (!whole).then_some(v.0)
                }
                _ => {
                    gone[k] = true;
                    None
                }
            };
            if let Some(t) = taken {
                parts.amounts.get_or_insert_with(|| Box::new([None; TotalParts::MAX]))[p] = Some(t);
            }
        };
        match take {
            None => (0..self.len).for_each(|k| put(k, k, None)),
            Some(take) => take.parts.iter().enumerate().for_each(|(p, &(k, amount))| put(p, k, amount)),
        }
        let mut n = 0;
        for (k, gone) in gone.into_iter().enumerate().take(self.len) {
            if !gone {
                self.at[n] = self.at[k];
                n += 1;
            }
        }
        self.len = n;
        parts
    }
}

/// What a grant is of an agent's total (see [`Allocator::charge_grant`]).
enum OfTotal {
    All,
    Parts(TotalParts),
    /// Not known: the grant is held as a copy.
    Unknown,
}

/// Every role frameworks have subscribed with, by number: a holding names
/// its role by number ([`Holding`]). Numbers only grow: a role's lasts as
/// long as the allocator, as any holding may name it. Roles are few; past
/// [`RoleNames::MAX`] (frameworks making up roles without end) new roles
/// get no number, and what is granted to them is held as copies.
#[derive(Clone, Debug, Default)]
struct RoleNames {
    names: Vec<Name>,
    numbers: HashMap<Name, u32>,
}

impl RoleNames {
    const MAX: usize = 1 << 16;

    fn number(&self, role: &str) -> Option<u32> {
        self.numbers.get(role).copied()
    }

    fn name(&self, n: u32) -> &str {
        &self.names[n as usize]
    }

    fn add(&mut self, role: &str) {
        if self.names.len() < RoleNames::MAX && !self.numbers.contains_key(role) {
            let n = u32::try_from(self.names.len()).expect("at most RoleNames::MAX");
            self.names.push(role.into());
            self.numbers.insert(role.into(), n);
        }
    }
}

impl AgentSlot {
    /// Works `free` out again, and its sums, counted in `totals` while the
    /// agent is active.
    fn refresh_free(&mut self, totals: &mut FreeTotals) {
        // Saturating: one resource allocated beyond the total (an agent that
        // came back smaller) must not hide the rest of the agent.
        let mut free = self.total.clone();
        for h in self.allocated.values() {
            match h {
                Holding::Listed(r) => free.subtract_saturating(&r.unallocated()),
                Holding::Total(_) => free = Resources::new(),
                Holding::Parts(_, parts) => free.subtract_saturating(&parts.resources(&self.total, None)),
            }
        }
        if self.active {
            totals.bump(&self.free_sums, false);
        }
        self.free_sums = FreeSums::of(&free);
        self.free = free;
        if self.active {
            totals.bump(&self.free_sums, true);
        }
    }

    /// What framework `f` holds, with allocation markers.
    fn held(&self, f: usize, names: &RoleNames) -> Option<Resources> {
        self.allocated.get(&f).map(|h| h.resources(&self.total, names))
    }

    /// Framework `f`'s holding as a list, to be changed.
    fn listed_mut(&mut self, f: usize, names: &RoleNames) -> Option<&mut Resources> {
        Some(self.allocated.get_mut(&f)?.list(&self.total, names))
    }

    /// Every holding as a list: before the total changes.
    fn list_all(&mut self, names: &RoleNames) {
        for h in self.allocated.values_mut() {
            h.list(&self.total, names);
        }
    }
}

/// Clone only for `Arc::make_mut`, which never copies one: the only other
/// holders are a split round's workers, and nothing changes a framework
/// while they run (see `Allocator::frameworks`).
#[derive(Clone, Debug)]
struct FrameworkSlot {
    id: FrameworkId,
    roles: Vec<String>,
    suppressed: HashSet<String>,
    active: bool,
    allocated: Scalars,
    /// `allocated` per role: a short list (a framework has few roles),
    /// read without hashing when a round ranks the framework and changed
    /// for each framework a split round granted to.
    by_role: ByRole,
    /// Offer constraints per role (none: every agent).
    constraints: std::collections::HashMap<String, ConstraintGroups>,
    filters: HashMap<usize, Vec<Filter>>,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub allocation_runs: u64,
    /// Rounds split among workers (see the module's notes).
    pub parallel_runs: u64,
    pub allocations: u64,
    pub filtered: u64,
}

#[derive(Debug)]
pub struct Allocator {
    config: Config,
    agents: Vec<Option<Box<AgentSlot>>>,
    agent_index: HashMap<AgentId, usize>,
    free_agent_slots: Vec<usize>,
    /// Shared with the workers of a split round (see `run_part`); changed
    /// through `Arc::make_mut`, which copies nothing when none holds them.
    frameworks: Vec<Option<Arc<FrameworkSlot>>>,
    framework_index: HashMap<FrameworkId, usize>,
    free_framework_slots: Vec<usize>,
    /// Sum of active agents' totals.
    total: Scalars,
    /// What active agents have free, summed.
    free_totals: FreeTotals,
    /// What is allocated in each role's subtree (the role and its
    /// descendants), for every role with an allocation or an ancestor of one.
    subtree: HashMap<String, Scalars>,
    /// What is allocated to each role itself.
    direct: HashMap<String, Scalars>,
    /// Role weights; 1 when not set.
    weights: HashMap<String, f64>,
    /// Quota limits per role and share kind, in thousandths.
    limits: HashMap<String, Quantities>,
    /// Quota guarantees per role and share kind, in thousandths.
    guarantees: HashMap<String, Quantities>,
    rng: SmallRng,
    pub stats: Stats,
    /// In a worker of a parallel round: the index of the first agent slot
    /// it holds (`agents` is its part of them; 0 otherwise).
    agent_base: usize,
    /// In a worker of a parallel round: its own grants, and how it ranks.
    part: Option<Box<Part>>,
    /// The threads that run split rounds' parts (none in a worker).
    pool: Pool,
    /// The roles holdings name by number; shared with a split round's
    /// workers, which only read it (frameworks' roles are added before).
    role_names: Arc<RoleNames>,
}

/// A part of a parallel round, ready to run on any thread: its worker
/// (holding the part's slots), the agents to offer, in order, and its part
/// of the guarantees.
struct PartJob {
    worker: Allocator,
    agents: Vec<usize>,
    guarantees: Option<Guarantees>,
    now_ms: u64,
    /// Room for this many offers in its list (the first part's takes the
    /// others' in after).
    room: usize,
}

impl PartJob {
    /// Both stages over the part. Returns the worker, holding the slots and
    /// its grants ([`Part`]), with its allocations. Its hold on the shared
    /// frameworks ends when the calling thread takes the part in.
    fn run(self) -> (Allocator, Vec<Allocation>) {
        let PartJob { mut worker, agents, guarantees, now_ms, room } = self;
        let out = worker.stages(&agents, guarantees, now_ms, room);
        (worker, out)
    }
}

/// What a pool thread hands back for a part: the part, or the panic that
/// ended it (raised again on the calling thread).
type PartDone = std::thread::Result<(Allocator, Vec<Allocation>)>;

/// The threads an allocator keeps for the parts of split rounds: started
/// when a split round first needs them (each first calls
/// `Config::on_worker_start`), waiting for parts between rounds, and
/// ended when the allocator is dropped. Starting threads for every round
/// cost 0.13-0.26 ms before a part could begin.
#[derive(Default)]
struct Pool {
    threads: Vec<PoolThread>,
}

/// A thread of the pool, with one part at most in each direction (a round
/// sends it one and waits for it).
struct PoolThread {
    jobs: std::sync::mpsc::SyncSender<PartJob>,
    done: std::sync::mpsc::Receiver<PartDone>,
    handle: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.threads.len())
    }
}

impl Pool {
    /// Starts threads until there are `n`, or until the system refuses one.
    fn grow(&mut self, n: usize, start: Option<fn()>) {
        while self.threads.len() < n {
            #[cfg(test)]
            if tests::NO_THREADS.with(std::cell::Cell::get) {
                return;
            }
            let (jobs, take) = std::sync::mpsc::sync_channel::<PartJob>(1);
            let (give, done) = std::sync::mpsc::sync_channel::<PartDone>(1);
            let run = move || {
                if let Some(start) = start {
                    start();
                }
                for job in take {
                    let part = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()));
                    if give.send(part).is_err() {
                        break;
                    }
                }
            };
            match std::thread::Builder::new().name("allocation".into()).spawn(run) {
                Ok(handle) => self.threads.push(PoolThread { jobs, done, handle }),
                Err(_) => return,
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for PoolThread { jobs, done, handle } in self.threads.drain(..) {
            // With its list of parts closed, the thread ends.
            drop((jobs, done));
            // A thread's panic was raised on the calling thread already.
            let _ = handle.join();
        }
    }
}

/// One worker's part of a parallel round.
struct PartWork {
    /// Agent slots from `base` on (`slots`), moved out of the allocator
    /// for the round, and those of them to offer, in order.
    base: usize,
    slots: Vec<Option<Box<AgentSlot>>>,
    agents: Vec<usize>,
    /// Its part of the headroom and of the room under each role's limit.
    guarantees: Option<Guarantees>,
    limits: HashMap<String, Quantities>,
}

/// What a worker of a parallel round granted, by framework and role, and
/// by role (its own and its subtree's); its role and framework figures
/// stay those of the start of the round. A worker ranks roles and
/// frameworks by what they held then plus `k` times its own grants to them
/// (the other `k − 1` workers are taken to grant about as much meanwhile).
#[derive(Debug)]
struct Part {
    k: i64,
    /// By framework slot: a short list (a framework has few roles), which
    /// costs nothing for the many a worker grants nothing.
    by_role: Vec<ByRole>,
    direct: HashMap<String, Scalars>,
    subtree: HashMap<String, Scalars>,
    /// The active agents it left with something worth an offer, each
    /// with whether everything usable of it comes with cpus (see
    /// [`Allocator::all_with_cpus`]).
    left: Vec<(usize, bool)>,
}

impl Allocator {
    pub fn new(config: Config) -> Allocator {
        let rng = SmallRng::seed_from_u64(config.seed);
        Allocator {
            config,
            agents: Vec::new(),
            agent_index: HashMap::default(),
            free_agent_slots: Vec::new(),
            frameworks: Vec::new(),
            framework_index: HashMap::default(),
            free_framework_slots: Vec::new(),
            total: Scalars::default(),
            free_totals: FreeTotals::default(),
            subtree: HashMap::default(),
            direct: HashMap::default(),
            weights: HashMap::default(),
            limits: HashMap::default(),
            guarantees: HashMap::default(),
            rng,
            stats: Stats::default(),
            agent_base: 0,
            part: None,
            pool: Pool::default(),
            role_names: Arc::default(),
        }
    }

    /// Starts the threads split rounds run their parts on (see
    /// `Config::workers`), as the first split round would: a running
    /// master has them from its first such round on.
    pub fn start_workers(&mut self) {
        self.pool.grow(self.config.workers.saturating_sub(1), self.config.on_worker_start);
    }

    pub fn total(&self) -> Scalars {
        self.total
    }

    fn agent(&self, id: &AgentId) -> Option<(usize, &AgentSlot)> {
        let idx = *self.agent_index.get(id)?;
        self.agents[idx].as_deref().map(|a| (idx, a))
    }

    fn framework_idx(&self, id: &FrameworkId) -> Option<usize> {
        self.framework_index.get(id).copied()
    }

    /// Adds an active agent with everything it already runs (`used`, per
    /// framework, marked with allocation roles). Frameworks named in `used`
    /// must have been added first; unknown ones are ignored.
    pub fn add_agent(&mut self, id: AgentId, total: Resources, used: &[(FrameworkId, Resources)]) {
        if self.agent_index.contains_key(&id) {
            self.remove_agent(&id);
        }
        let slot = Box::new(AgentSlot {
            id: id.clone(),
            hostname: String::new(),
            attributes: Vec::new(),
            free: Resources::new(),
            free_sums: FreeSums::default(),
            total: total.unallocated(),
            // Room for a few holdings from the start, as an agent that has
            // been offered before has: a round's first grant on it does not
            // have to make the map.
            allocated: HashMap::with_capacity_and_hasher(3, Default::default()),
            active: true,
        });
        let idx = match self.free_agent_slots.pop() {
            Some(i) => {
                self.agents[i] = Some(slot);
                i
            }
            None => {
                self.agents.push(Some(slot));
                self.agents.len() - 1
            }
        };
        self.agent_index.insert(id, idx);
        self.total.add(Scalars::of(&self.agents[idx].as_ref().map(|a| a.total.clone()).unwrap_or_default()));
        for (fw, r) in used {
            if let Some(f) = self.framework_idx(fw) {
                self.charge(f, idx, r);
            }
        }
        if let Some(slot) = self.agents[idx].as_mut() {
            slot.refresh_free(&mut self.free_totals);
        }
    }

    pub fn remove_agent(&mut self, id: &AgentId) {
        let Some(idx) = self.agent_index.remove(id) else { return };
        let Some(slot) = self.agents[idx].take() else { return };
        if slot.active {
            self.total.sub(Scalars::of(&slot.total));
            self.free_totals.bump(&slot.free_sums, false);
        }
        for (f, h) in slot.allocated {
            let r = h.into_resources(&slot.total, &self.role_names);
            if let Some(fw) = self.frameworks[f].as_mut().map(Arc::make_mut) {
                fw.allocated.sub(Scalars::of(&r));
            }
            self.discharge(f, &r);
        }
        // The slot will be reused for another agent: nothing about this one
        // (filters included) may stick to it.
        for fw in self.frameworks.iter_mut().flatten().map(Arc::make_mut) {
            fw.filters.remove(&idx);
        }
        self.free_agent_slots.push(idx);
    }

    /// The agent's hostname and attributes (as text), which offer
    /// constraints look at.
    pub fn set_agent_attributes(&mut self, id: &AgentId, hostname: &str, attributes: Vec<(String, String)>) {
        let Some(&idx) = self.agent_index.get(id) else { return };
        if let Some(a) = self.agents[idx].as_mut() {
            a.hostname = hostname.to_string();
            a.attributes = attributes;
        }
    }

    /// Replaces a framework's offer constraints (per role).
    pub fn set_offer_constraints(
        &mut self,
        id: &FrameworkId,
        constraints: std::collections::HashMap<String, ConstraintGroups>,
    ) {
        if let Some(f) = self.framework_idx(id).and_then(|i| self.frameworks[i].as_mut().map(Arc::make_mut)) {
            f.constraints = constraints;
        }
    }

    /// Whether framework `f` wants agent `a`'s resources for `role`.
    fn wants(&self, f: usize, role: &str, a: usize) -> bool {
        let (Some(fw), Some(agent)) = (self.frameworks[f].as_ref(), self.slot(a)) else { return false };
        match fw.constraints.get(role) {
            None => true,
            Some(groups) => groups.iter().any(|g| g.iter().all(|c| c.holds(&agent.hostname, &agent.attributes))),
        }
    }

    /// Inactive agents are not offered, and do not count toward the total.
    pub fn set_agent_active(&mut self, id: &AgentId, active: bool) {
        let Some(&idx) = self.agent_index.get(id) else { return };
        let Some(a) = self.agents[idx].as_mut() else { return };
        if a.active != active {
            a.active = active;
            self.free_totals.bump(&a.free_sums, active);
            let s = Scalars::of(&a.total);
            if active {
                self.total.add(s)
            } else {
                self.total.sub(s)
            }
        }
    }

    pub fn add_framework(&mut self, id: FrameworkId, roles: Vec<String>, suppressed: &[String]) {
        if roles.iter().any(|r| self.role_names.number(r).is_none()) {
            let names = Arc::make_mut(&mut self.role_names);
            roles.iter().for_each(|r| names.add(r));
        }
        if let Some(idx) = self.framework_idx(&id) {
            // Re-subscription: keep allocations, update roles.
            if let Some(f) = self.frameworks[idx].as_mut().map(Arc::make_mut) {
                f.roles = roles;
                f.suppressed = suppressed.iter().cloned().collect();
                f.active = true;
            }
            return;
        }
        let slot = FrameworkSlot {
            id: id.clone(),
            roles,
            suppressed: suppressed.iter().cloned().collect(),
            active: true,
            allocated: Scalars::default(),
            by_role: ByRole::new(),
            constraints: std::collections::HashMap::new(),
            filters: HashMap::default(),
        };
        let idx = match self.free_framework_slots.pop() {
            Some(i) => {
                self.frameworks[i] = Some(Arc::new(slot));
                i
            }
            None => {
                self.frameworks.push(Some(Arc::new(slot)));
                self.frameworks.len() - 1
            }
        };
        self.framework_index.insert(id, idx);
    }

    /// Removes a framework and everything allocated to it.
    pub fn remove_framework(&mut self, id: &FrameworkId) {
        let Some(idx) = self.framework_index.remove(id) else { return };
        let Some(slot) = self.frameworks[idx].take() else { return };
        for (role, s) in &slot.by_role {
            self.role_add(role.as_str(), *s, false);
        }
        // Every agent is looked at (removing a framework is rare; a grant,
        // which would otherwise note the agent in the framework, is not).
        for agent in self.agents.iter_mut().flatten() {
            if agent.allocated.remove(&idx).is_some() {
                agent.refresh_free(&mut self.free_totals);
            }
        }
        self.free_framework_slots.push(idx);
    }

    /// Inactive (disconnected) frameworks keep their allocations but get no offers.
    pub fn set_framework_active(&mut self, id: &FrameworkId, active: bool) {
        if let Some(idx) = self.framework_idx(id) {
            if let Some(f) = self.frameworks[idx].as_mut().map(Arc::make_mut) {
                f.active = active;
            }
        }
    }

    /// Clears the framework's filters and unsuppresses `roles` (all when empty).
    pub fn revive(&mut self, id: &FrameworkId, roles: &[String]) {
        let Some(idx) = self.framework_idx(id) else { return };
        let Some(f) = self.frameworks[idx].as_mut().map(Arc::make_mut) else { return };
        f.filters.clear();
        if roles.is_empty() {
            f.suppressed.clear();
        } else {
            for r in roles {
                f.suppressed.remove(r);
            }
        }
    }

    /// Stops offers to `roles` (all when empty) until revived.
    pub fn suppress(&mut self, id: &FrameworkId, roles: &[String]) {
        let Some(idx) = self.framework_idx(id) else { return };
        let Some(f) = self.frameworks[idx].as_mut().map(Arc::make_mut) else { return };
        let all = if roles.is_empty() { f.roles.clone() } else { roles.to_vec() };
        f.suppressed.extend(all);
    }

    /// Charges `r` (marked with allocation roles) to framework `f` on agent
    /// `a`. The caller works the agent's `free` out again afterwards.
    fn charge(&mut self, f: usize, a: usize, r: &Resources) {
        self.hold(f, a, Scalars::of(r), Holding::Listed(r.clone()));
        for (role, s) in Scalars::by_role(r) {
            self.account(f, &role, s, true);
        }
    }

    /// Takes `r` (marked with allocation roles) out of framework `f`'s role
    /// figures.
    fn discharge(&mut self, f: usize, r: &Resources) {
        for (role, s) in Scalars::by_role(r) {
            self.account(f, &role, s, false);
        }
    }

    /// `charge` of a grant, but for the role figures (the stage's [`Tree`]
    /// keeps those and hands them over in [`Tree::flush`]): `r` (share
    /// kinds `s`) is all allocated to the role numbered `role` (see
    /// [`RoleNames`]; a role with no number is held as a copy), and `of`
    /// says what it is of the agent's total.
    fn charge_grant(&mut self, f: usize, a: usize, role: Option<u32>, r: &Resources, s: Scalars, of: OfTotal) {
        let holding = match (role, of) {
            (Some(n), OfTotal::All) => Holding::Total(n),
            (Some(n), OfTotal::Parts(parts)) => {
                #[cfg(test)]
                if let Some(slot) = self.slot(a) {
                    let name = Some(self.role_names.name(n));
                    assert_eq!(parts.resources(&slot.total, name), *r, "a holding's parts are the offer");
                }
                Holding::Parts(n, parts)
            }
            _ => Holding::Listed(r.clone()),
        };
        self.hold(f, a, s, holding);
    }

    /// What a stage granted framework `f` under `role` (`s`), counted in
    /// the role figures: the allocator's, or in a worker its own
    /// ([`Part`]; its role figures stay those of the start of the round).
    fn account_granted(&mut self, f: usize, role: &str, s: Scalars) {
        match self.part.as_mut() {
            Some(part) => {
                bump_by_role(&mut part.by_role[f], role, s, true);
                add_to_roles(&mut part.direct, &mut part.subtree, role, s, true);
            }
            None => self.account(f, role, s, true),
        }
    }

    /// Agent slot `a` (in a worker, if it holds it).
    fn slot(&self, a: usize) -> Option<&AgentSlot> {
        self.agents.get(a.wrapping_sub(self.agent_base))?.as_deref()
    }

    /// Records that framework `f` holds more (`more`, whose share kinds
    /// are `s`) on agent `a`.
    fn hold(&mut self, f: usize, a: usize, s: Scalars, more: Holding) {
        let Some(agent) = self.agents.get_mut(a.wrapping_sub(self.agent_base)).and_then(Option::as_mut) else {
            return;
        };
        if self.part.is_none() {
            // A worker counts its grants apart (`Part`).
            let Some(fw) = self.frameworks[f].as_mut().map(Arc::make_mut) else { return };
            fw.allocated.add(s);
        }
        if let std::collections::hash_map::Entry::Vacant(e) = agent.allocated.entry(f) {
            e.insert(more);
            return;
        }
        let more = more.into_resources(&agent.total, &self.role_names);
        if let Some(held) = agent.listed_mut(f, &self.role_names) {
            held.add(&more);
        }
    }

    /// Adds (or takes away) `s`, allocated to framework `f` under `role`,
    /// to the role figures: the framework's per role, and the roles' own
    /// and subtrees'.
    fn account(&mut self, f: usize, role: &str, s: Scalars, add: bool) {
        if let Some(fw) = self.frameworks[f].as_mut().map(Arc::make_mut) {
            bump_by_role(&mut fw.by_role, role, s, add);
        }
        self.role_add(role, s, add);
    }

    fn role_add(&mut self, role: &str, s: Scalars, add: bool) {
        add_to_roles(&mut self.direct, &mut self.subtree, role, s, add);
    }

    /// Sets a role's weight (positive and finite; 1 restores the default).
    pub fn set_weight(&mut self, role: &str, weight: f64) {
        if weight.is_finite() && weight > 0.0 {
            if weight == 1.0 {
                self.weights.remove(role);
            } else {
                self.weights.insert(role.to_string(), weight);
            }
        }
    }

    /// Roles that have something allocated to them.
    pub fn roles_allocated(&self) -> impl Iterator<Item = String> + '_ {
        self.direct.keys().cloned()
    }

    /// Sets (or, with no limit on any kind, clears) a role's quota limits.
    pub fn set_limits(&mut self, role: &str, limits: Quantities) {
        if limits.is_empty() {
            self.limits.remove(role);
        } else {
            self.limits.insert(role.to_string(), limits);
        }
    }

    pub fn limits(&self, role: &str) -> Quantities {
        self.limits.get(role).copied().unwrap_or_default()
    }

    /// Sets (or, with no amount on any kind, clears) a role's quota
    /// guarantees.
    pub fn set_guarantees(&mut self, role: &str, guarantees: Quantities) {
        if guarantees.is_empty() {
            self.guarantees.remove(role);
        } else {
            self.guarantees.insert(role.to_string(), guarantees);
        }
    }

    pub fn guarantees(&self, role: &str) -> Quantities {
        self.guarantees.get(role).copied().unwrap_or_default()
    }

    /// What roles consume of their quota (see the module's notes).
    pub fn consumption(&self) -> Consumption<'_> {
        #[cfg(test)]
        self.check_free_totals();
        Consumption { allocator: self, reserved: &self.free_totals.reserved }
    }

    /// That the free totals are what a pass over the agents sums.
    #[cfg(test)]
    fn check_free_totals(&self) {
        let mut totals = FreeTotals::default();
        for slot in self.agents.iter().flatten().filter(|s| s.active) {
            totals.bump(&slot.free_sums, true);
        }
        assert_eq!(totals.unreserved, self.free_totals.unreserved, "unreserved free totals");
        assert_eq!(totals.reserved, self.free_totals.reserved, "reserved free totals");
    }

    /// Roles whose guarantee is not met (on some kind).
    pub fn short_roles(&self) -> Vec<String> {
        match Guarantees::new(self) {
            Some(g) => g
                .roles
                .into_iter()
                .filter(|r| (0..4).any(|i| r.shortfall(i).is_some_and(|s| s > 0)))
                .map(|r| r.name)
                .collect(),
            None => Vec::new(),
        }
    }

    /// `usable`, cut down so that `role` and the roles above it stay within
    /// their quota limits (only the share kinds are limited). Resources
    /// reserved to the role are kept before unreserved ones (no other role
    /// could use them). Nothing at all when the agent offers cpus and the
    /// role has no room left for them: a role at its cpu limit is not sent
    /// the agent's memory alone. (At its memory limit it may still be sent
    /// cpus: they may join memory it got earlier in the round.)
    fn within_limits(&self, role: &str, usable: &Resources) -> Resources {
        if self.limits.is_empty() {
            return usable.clone();
        }
        within_room(self.room(role), usable, |_| true).copy(usable)
    }

    /// What `role` may still be allocated of each share kind under its own
    /// quota limits and those of the roles above it (`None`: no limit).
    fn room(&self, role: &str) -> [Option<i64>; 4] {
        let path = self.limited_path(role);
        room_left(path.iter().map(|(node, limit)| (*limit, self.subtree_held(node))))
    }

    /// The roles on `role`'s path (itself included) that have quota limits,
    /// with their limits.
    fn limited_path(&self, role: &str) -> Vec<(String, Quantities)> {
        let nodes = role.match_indices('/').map(|(i, _)| &role[..i]).chain(std::iter::once(role));
        nodes.filter_map(|node| self.limits.get(node).map(|l| (node.to_string(), *l))).collect()
    }

    pub fn weight(&self, role: &str) -> f64 {
        self.weights.get(role).copied().unwrap_or(1.0)
    }

    /// What is allocated in a role's subtree, and its weighted dominant share.
    pub fn role_share(&self, role: &str) -> (Scalars, f64) {
        let s = self.subtree.get(role).copied().unwrap_or_default();
        (s, s.dominant_share(&self.total) / self.weight(role))
    }

    /// What a role's subtree holds: in a worker of a parallel round, with
    /// the worker's own grants (see [`Part`]).
    fn subtree_held(&self, role: &str) -> Scalars {
        self.seen(&self.subtree, role, |p| (&p.subtree, 1))
    }

    /// What a role's subtree holds, as this round ranks it.
    fn subtree_seen(&self, role: &str) -> Scalars {
        self.seen(&self.subtree, role, |p| (&p.subtree, p.k))
    }

    /// What is allocated to a role itself, as this round ranks it.
    fn direct_seen(&self, role: &str) -> Scalars {
        self.seen(&self.direct, role, |p| (&p.direct, p.k))
    }

    /// `role`'s figure in `map`, plus, in a worker, `times` its own grants'
    /// figure in the map `own` picks (with `times`).
    fn seen(
        &self,
        map: &HashMap<String, Scalars>,
        role: &str,
        own: impl Fn(&Part) -> (&HashMap<String, Scalars>, i64),
    ) -> Scalars {
        let now = map.get(role).copied().unwrap_or_default();
        match self.part.as_deref().map(own) {
            Some((mine, times)) => now.plus_times(mine.get(role).copied().unwrap_or_default(), times),
            None => now,
        }
    }

    /// What framework `f` holds under `role`, as this round ranks it.
    fn framework_seen(&self, f: usize, role: &str) -> Scalars {
        let held = self.frameworks[f].as_ref().map_or_else(Scalars::default, |fw| of_role(&fw.by_role, role));
        match &self.part {
            Some(p) => held.plus_times(of_role(&p.by_role[f], role), p.k),
            None => held,
        }
    }

    /// An operation changed part of an agent's resources into another form
    /// of the same quantities (a reservation, a volume): `from` leaves its
    /// total and `to` takes its place. When `holder` holds `from` (in an
    /// offer), it holds `to` instead. Shares do not change.
    pub fn convert(&mut self, agent: &AgentId, holder: Option<&FrameworkId>, from: &Resources, to: &Resources) {
        let f = holder.and_then(|h| self.framework_idx(h));
        let Some(&a) = self.agent_index.get(agent) else { return };
        let Some(slot) = self.agents[a].as_mut() else { return };
        slot.list_all(&self.role_names);
        slot.total.subtract_saturating(&from.unallocated());
        slot.total.add(&to.unallocated());
        if let Some(held) = f.and_then(|f| slot.listed_mut(f, &self.role_names)) {
            held.subtract_saturating(from);
            held.add(to);
        }
        slot.refresh_free(&mut self.free_totals);
    }

    /// Marks resources of an agent as used by a framework outside of an offer
    /// (e.g. tasks reported by a re-registering agent).
    pub fn add_used(&mut self, framework: &FrameworkId, agent: &AgentId, r: &Resources) {
        if let (Some(f), Some((a, _))) = (self.framework_idx(framework), self.agent(agent)) {
            self.charge(f, a, r);
            if let Some(slot) = self.agents[a].as_mut() {
                slot.refresh_free(&mut self.free_totals);
            }
        }
    }

    /// Gives resources back: declined or unused offers, finished tasks. With
    /// `refuse_ms`, the framework is not offered these resources of this agent
    /// again before `now_ms + refuse_ms`.
    pub fn recover(&mut self, framework: &FrameworkId, agent: &AgentId, r: &Resources, refuse_ms: u64, now_ms: u64) {
        let Some(f) = self.framework_idx(framework) else { return };
        let Some(&a) = self.agent_index.get(agent) else { return };
        let (Some(fw), Some(slot)) = (self.frameworks[f].as_mut().map(Arc::make_mut), self.agents[a].as_mut()) else {
            return;
        };
        if let Some(held) = slot.listed_mut(f, &self.role_names) {
            // Only give back what the framework actually holds.
            let give = if held.contains(r) { r.clone() } else { intersect(held, r) };
            held.subtract_saturating(&give);
            if held.is_empty() {
                slot.allocated.remove(&f);
            }
            slot.refresh_free(&mut self.free_totals);
            fw.allocated.sub(Scalars::of(&give));
            self.discharge(f, &give);
        }
        self.refuse(framework, agent, r, refuse_ms, now_ms);
    }

    /// The filters of `fw` on `agent` still in force, if any (expired ones
    /// are dropped). One refuses an offer (without allocation markers) that
    /// its resources contain.
    fn drop_expired_filters(fw: &mut FrameworkSlot, agent: usize, now_ms: u64) {
        let Some(filters) = fw.filters.get_mut(&agent) else { return };
        filters.retain(|f| f.expires_ms > now_ms);
        if filters.is_empty() {
            fw.filters.remove(&agent);
        }
    }

    /// Whether share kinds `s` are worth an offer: enough cpus or memory.
    fn offerable(&self, s: Scalars) -> bool {
        s.0[0] >= self.config.min_offer_cpus.0 || s.0[1] >= self.config.min_offer_mem_mb.0
    }

    /// Whether every unsuppressed role of an active framework has no room
    /// left for cpus under its quota limits (or those above it). A role
    /// with a guarantee has none to take toward it then either (limits
    /// bound guarantees).
    fn all_at_cpu_limit(&self) -> bool {
        if self.limits.is_empty() {
            return false;
        }
        let mut seen: HashSet<&str> = HashSet::default();
        self.frameworks.iter().flatten().filter(|f| f.active).all(|f| {
            f.roles
                .iter()
                .filter(|r| !f.suppressed.contains(*r) && seen.insert(r.as_str()))
                .all(|r| self.room(r)[0] == Some(0))
        })
    }

    /// Whether whatever a role may use of an agent with free resources of
    /// `sums` comes with cpus (so that a role at its cpu limit may take none
    /// of it): its unreserved resources have cpus, or are not worth an
    /// offer and each role's reservation there has cpus.
    fn all_with_cpus(&self, sums: &FreeSums) -> bool {
        sums.unreserved.0[0] > 0 || (!self.offerable(sums.unreserved) && sums.reserved.iter().all(|(_, s)| s.0[0] > 0))
    }

    /// Runs one allocation round over every active agent, or over `only` when
    /// given (agents whose resources just changed).
    pub fn allocate(&mut self, now_ms: u64, only: Option<&[AgentId]>) -> Vec<Allocation> {
        self.stats.allocation_runs += 1;
        let mut agents: Vec<usize> = match only {
            Some(ids) => {
                let mut agents: Vec<usize> = ids.iter().filter_map(|id| self.agent_index.get(id).copied()).collect();
                agents.sort_unstable();
                agents.dedup();
                agents
            }
            // The slots in order, without the index's map (larger, and in
            // no order).
            None => (0..self.agents.len()).filter(|&a| self.agents[a].is_some()).collect(),
        };
        let workers = self.config.workers.min(agents.len() / self.config.min_agents_per_worker.max(1));
        if workers > 1 {
            return self.allocate_parallel(&agents, workers, now_ms);
        }
        // Start at a random agent, so that none is always offered first.
        if !agents.is_empty() {
            let start = self.rng.gen_range(0..agents.len());
            agents.rotate_left(start);
        }
        let guarantees = Guarantees::new(self);
        self.stages(&agents, guarantees, now_ms, agents.len())
    }

    /// A parallel round (see the module's notes): `agents` (in slot order)
    /// in `workers` parts of contiguous slots, each offered by its own
    /// worker against what roles and frameworks held at the start, within
    /// its part of each role's room under quota limits, of each shortfall
    /// and of the headroom; then, serially, what quota left of them.
    fn allocate_parallel(&mut self, agents: &[usize], workers: usize, now_ms: u64) -> Vec<Allocation> {
        self.stats.parallel_runs += 1;
        let per = agents.len().div_ceil(workers);
        let mut chunks: Vec<Vec<usize>> = agents.chunks(per).map(<[usize]>::to_vec).collect();
        // Part `i` holds the slots from its first agent's (0 for the first)
        // to the next part's.
        let firsts: Vec<usize> = chunks.iter().enumerate().map(|(i, c)| if i == 0 { 0 } else { c[0] }).collect();
        for c in &mut chunks {
            // Each part starts at a random agent of its own.
            let start = self.rng.gen_range(0..c.len());
            c.rotate_left(start);
        }
        let guarantees = Guarantees::new(self);
        // What each part has free, unreserved and all, to share out the
        // room under limits and the headroom by.
        let (unreserved, all): (Vec<Scalars>, Vec<Scalars>) = chunks
            .iter()
            .map(|c| {
                let slots = c.iter().filter_map(|&a| self.agents[a].as_ref()).filter(|s| s.active);
                slots.fold((Scalars::default(), Scalars::default()), |(u, all), s| {
                    (u.plus(s.free_sums.unreserved), all.plus(s.free_sums.all()))
                })
            })
            .unzip();
        let k = chunks.len();
        let guarantees: Vec<Option<Guarantees>> = match guarantees {
            Some(g) => {
                let grains = [self.config.min_offer_cpus.0, self.config.min_offer_mem_mb.0, 1, 1];
                g.parts(&unreserved, grains).into_iter().map(Some).collect()
            }
            None => (0..k).map(|_| None).collect(),
        };
        let mut limits: Vec<HashMap<String, Quantities>> = (0..k).map(|_| HashMap::default()).collect();
        for (role, l) in &self.limits {
            let used = self.subtree.get(role).copied().unwrap_or_default();
            for (part, q) in limits.iter_mut().zip(part_limits(*l, used, &all)) {
                part.insert(role.clone(), q);
            }
        }
        let mut slots = std::mem::take(&mut self.agents);
        let mut held: Vec<Vec<Option<Box<AgentSlot>>>> =
            firsts[1..].iter().rev().map(|&at| slots.split_off(at)).collect();
        held.push(slots);
        held.reverse();
        let work: Vec<PartWork> = firsts
            .into_iter()
            .zip(held)
            .zip(chunks)
            .zip(guarantees.into_iter().zip(limits))
            .map(|(((base, slots), agents), (guarantees, limits))| PartWork { base, slots, agents, guarantees, limits })
            .collect();
        // Each part's worker is made here, and runs on a thread of the pool
        // (started on the first split round that needs it); the first part,
        // and any part the pool has no thread for (the system's limit on
        // threads), runs on this thread.
        let mut jobs: Vec<PartJob> = work.into_iter().map(|w| self.part_job(w, k, now_ms)).collect();
        // The first part's list of offers takes the others' in: room for
        // one per agent of the round, so that it is not copied to grow.
        jobs[0].room = agents.len();
        self.pool.grow(k - 1, self.config.on_worker_start);
        let pool = std::mem::take(&mut self.pool);
        let first = jobs.remove(0);
        // Each other part: the pool thread it went to, or the part itself.
        let others: Vec<Result<usize, Box<PartJob>>> = jobs
            .into_iter()
            .enumerate()
            .map(|(n, job)| match pool.threads.get(n) {
                Some(t) => t.jobs.send(job).map(|()| n).map_err(|e| Box::new(e.0)),
                None => Err(Box::new(job)),
            })
            .collect();
        let mut done: Vec<(Allocator, Vec<Allocation>)> = Vec::with_capacity(k);
        done.push(first.run());
        for other in others {
            done.push(match other {
                Ok(n) => match pool.threads[n].done.recv() {
                    Ok(Ok(part)) => part,
                    Ok(Err(panic)) => std::panic::resume_unwind(panic),
                    Err(_) => panic!("an allocation thread ended"),
                },
                Err(job) => job.run(),
            });
        }
        self.pool = pool;
        let mut left = Vec::new();
        let mut out: Vec<Allocation> = Vec::new();
        // The workers' grants by framework, all parts' together: each
        // framework is changed once.
        let mut by_framework: Vec<Vec<ByRole>> = Vec::with_capacity(done.len());
        for (mut worker, mut granted) in done {
            // Its hold on the shared frameworks ends here, before they are
            // changed below, and on this thread: the counts stay in this
            // core's cache for the changes, and the part ended without
            // giving up a thousand of them.
            drop(std::mem::take(&mut worker.frameworks));
            if self.agents.is_empty() {
                // The first part: the slots' own vector, with room for all.
                self.agents = std::mem::take(&mut worker.agents);
            } else {
                self.agents.append(&mut worker.agents);
            }
            self.stats.allocations += worker.stats.allocations;
            self.free_totals.merge(std::mem::take(&mut worker.free_totals));
            self.stats.filtered += worker.stats.filtered;
            // Its grants, as `account` would have counted them one by one.
            let part = worker.part.take().expect("a worker");
            by_framework.push(part.by_role);
            left.extend(part.left);
            for (role, s) in part.direct {
                bump(&mut self.direct, &role, s, true);
            }
            for (role, s) in part.subtree {
                bump(&mut self.subtree, &role, s, true);
            }
            if out.is_empty() {
                // The first part's allocations, moved rather than copied.
                std::mem::swap(&mut out, &mut granted);
            }
            out.append(&mut granted);
        }
        for f in 0..self.frameworks.len() {
            // The frameworks lie all over the heap: ask for the next ones'
            // early.
            if let Some(next) = self.frameworks.get(f + 8).and_then(Option::as_deref) {
                prefetch(next);
            }
            if let Some(next) = self.frameworks.get(f + 4).and_then(Option::as_deref) {
                prefetch(next.by_role.as_ptr());
            }
            if by_framework.iter().all(|part| part[f].is_empty()) {
                continue;
            }
            let Some(fw) = self.frameworks[f].as_mut().map(Arc::make_mut) else { continue };
            for (role, s) in by_framework.iter_mut().flat_map(|part| std::mem::take(&mut part[f])) {
                fw.allocated.add(s);
                bump_by_role(&mut fw.by_role, &role, s, true);
            }
        }
        // Without quota, a worker left nothing that another could have
        // offered: who may take an agent does not depend on shares. With
        // it, a part's room may have run out where another's did not.
        if self.limits.is_empty() && self.guarantees.is_empty() {
            return out;
        }
        // When every role that takes part is at its cpu limit, no role may
        // take anything of an agent whose every usable part comes with
        // cpus: such agents are left as they are.
        let blocked = self.all_at_cpu_limit();
        let left: Vec<usize> = left.into_iter().filter(|&(_, cpus)| !(blocked && cpus)).map(|(a, _)| a).collect();
        if !left.is_empty() {
            let first = out.len();
            let guarantees = Guarantees::new(self);
            out.extend(self.stages(&left, guarantees, now_ms, left.len()));
            merge_stages(&mut out, first);
        }
        out
    }

    /// The worker of one of `k` parts of a parallel round (`w`), to run
    /// both stages over it ([`PartJob::run`]).
    fn part_job(&self, w: PartWork, k: usize, now_ms: u64) -> PartJob {
        let PartWork { base, slots, agents, guarantees, limits } = w;
        let worker = Allocator {
            config: self.config.clone(),
            agents: slots,
            agent_index: HashMap::default(),
            free_agent_slots: Vec::new(),
            frameworks: self.frameworks.clone(),
            framework_index: HashMap::default(),
            free_framework_slots: Vec::new(),
            total: self.total,
            free_totals: FreeTotals::default(),
            subtree: self.subtree.clone(),
            direct: self.direct.clone(),
            weights: self.weights.clone(),
            limits,
            guarantees: self.guarantees.clone(),
            rng: SmallRng::seed_from_u64(self.config.seed),
            stats: Stats::default(),
            agent_base: base,
            part: Some(Box::new(Part {
                k: k as i64,
                by_role: self.frameworks.iter().map(|_| Vec::new()).collect(),
                direct: HashMap::default(),
                subtree: HashMap::default(),
                left: Vec::new(),
            })),
            pool: Pool::default(),
            role_names: Arc::clone(&self.role_names),
        };
        let room = agents.len();
        PartJob { worker, agents, guarantees, now_ms, room }
    }

    /// Stage one and stage two of a round over `agents`, in order.
    /// `room`: for how many offers the list is made.
    fn stages(
        &mut self,
        agents: &[usize],
        mut guarantees: Option<Guarantees>,
        now_ms: u64,
        room: usize,
    ) -> Vec<Allocation> {
        let mut offers = Offers { out: Vec::with_capacity(room), ..Offers::default() };
        // One tree for both stages: stage one walks only the roles under a
        // guarantee, and its grants re-rank the tree as a fresh one would
        // be ranked for stage two.
        let mut tree = self.tree();
        if tree.leaves.is_empty() {
            return offers.out;
        }
        tree.rank_all();
        // Stage one: the roles under a guarantee that is not met yet.
        if guarantees.as_ref().is_some_and(Guarantees::any_shortfall) {
            self.offer_agents(&mut tree, agents, now_ms, &mut guarantees, Stage::Guarantees, &mut offers);
        }
        let first = offers.out.len();
        // Stage two: every role, fairly, around the headroom.
        self.offer_agents(&mut tree, agents, now_ms, &mut guarantees, Stage::Fair, &mut offers);
        #[cfg(test)]
        assert_eq!(offers.folds, stage_folds(&offers.out, first), "folds by number are those by ids and names");
        fold(&mut offers.out, first, &offers.folds);
        offers.out
    }

    /// The role tree of the active frameworks' unsuppressed roles.
    fn tree(&self) -> Tree {
        let mut tree = Tree {
            k: self.part.as_ref().map_or(1, |p| p.k),
            total: self.total,
            nodes: Vec::new(),
            leaves: Vec::new(),
            index: HashMap::default(),
            pending: Vec::new(),
        };
        let ahead = |n: usize| self.frameworks.get(n).and_then(Option::as_deref);
        for (idx, f) in self.frameworks.iter().enumerate() {
            // The frameworks lie all over the heap, and so do their lists
            // of roles and figures, and the roles' names: ask for the next
            // ones' early, each as what points to it has come in.
            if let Some(next) = ahead(idx + 8) {
                prefetch(next);
            }
            if let Some(next) = ahead(idx + 4) {
                prefetch(next.roles.as_ptr());
                prefetch(next.by_role.as_ptr());
            }
            if let Some(role) = ahead(idx + 2).and_then(|next| next.roles.first()) {
                prefetch(role.as_ptr());
            }
            let Some(f) = f else { continue };
            if !f.active {
                continue;
            }
            for role in f.roles.iter().filter(|r| !f.suppressed.contains(*r)) {
                tree.add(self, idx, role);
            }
        }
        tree.rank_frameworks();
        tree
    }

    /// Offers `agents`, in order, to the frameworks of `tree`.
    fn offer_agents(
        &mut self,
        tree: &mut Tree,
        agents: &[usize],
        now_ms: u64,
        guarantees: &mut Option<Guarantees>,
        stage: Stage,
        offers: &mut Offers,
    ) {
        let mut looks = Looks {
            rooms: vec![None; tree.leaves.len()],
            grants: 0,
            limited: Limited::default(),
            paths: (0..tree.leaves.len()).map(|_| None).collect(),
            no_cpus: vec![false; tree.leaves.len()],
            open: Vec::new(),
            leaf_nodes: Vec::new(),
            covered: Vec::new(),
            covering: Vec::new(),
            stage,
        };
        looks.open_all(tree, guarantees);
        // Each leaf's role by number, for the holdings.
        let numbers: Vec<Option<u32>> = tree.leaves.iter().map(|l| self.role_names.number(&l.role)).collect();

        // Whether every leaf's role is at its cpu limit (or, in stage one,
        // owes no guarantee): then no role is offered anything of an agent
        // with unreserved cpus free, since those come with any offer and a
        // role with no room for cpus is offered nothing (see
        // [`within_room`]). Worked out once between grants, when an agent
        // (or what a grant left of one) asks, stopping at the first leaf
        // that is not.
        let mut all_blocked: Option<bool> = None;
        // The share kinds of what is left of the agent, by leaf (see
        // [`Shares`]): worked out again for each walk, in place.
        let mut shares = Shares::default();
        // In a worker's stage two (its last), the agents it leaves with
        // something worth an offer, for the pass after the parts.
        let noting = stage == Stage::Fair && self.part.is_some();
        let mut left: Vec<(usize, bool)> = Vec::new();
        // What the grants took, unreserved and by leaf reserved to its role
        // (a leaf takes no other reservations): out of the free totals
        // once the agents are done.
        let mut taken = Scalars::default();
        let mut taken_reserved = vec![Scalars::default(); tree.leaves.len()];
        for (n, &a) in agents.iter().enumerate() {
            // The agents' slots and their resources lie all over the heap:
            // ask for the next ones' early (every line of the next one's
            // free resources), so that they are in cache when their turn
            // comes.
            if let Some(next) = agents.get(n + 2).and_then(|&b| self.slot(b)) {
                prefetch(next);
                prefetch(&next.free_sums);
            }
            if let Some(next) = agents.get(n + 1).and_then(|&b| self.slot(b)) {
                let all = next.free.iter().as_slice();
                let bytes = std::mem::size_of_val(all);
                let at = all.as_ptr().cast::<u8>();
                for line in (0..bytes).step_by(64) {
                    prefetch(at.wrapping_add(line));
                }
            }
            if stage == Stage::Guarantees && !guarantees.as_ref().is_some_and(Guarantees::any_shortfall) {
                // Every guarantee is met: stage one is over.
                break;
            }
            let Some(slot) = self.slot(a) else { continue };
            // As below, with no grant since it was worked out: passed over
            // before the lists of its resources are read.
            if all_blocked == Some(true) && slot.free_sums.unreserved.0[0] > 0 {
                if noting && slot.active {
                    left.push((a, true));
                }
                continue;
            }
            if !slot.active || !self.offerable(slot.free_sums.all()) {
                continue;
            }
            // Grants take from the agent's free resources in place; they go
            // back into the slot, with their sums (worked out again after
            // each grant), when the agent is done.
            let (mut available, mut sums) = self
                .agents
                .get_mut(a.wrapping_sub(self.agent_base))
                .and_then(Option::as_mut)
                .map(|s| (std::mem::take(&mut s.free), std::mem::take(&mut s.free_sums)))
                .unwrap_or_default();
            let mut origin = self.slot(a).and_then(|slot| Origin::of(slot, &available));
            // Walk (framework, role) pairs down the role tree, lowest share
            // first; each gets all of what its role may use. Leftovers
            // reserved to other roles go on to the next. After a grant the
            // shares along its path change: re-rank them, start again.
            while !available.is_empty() {
                // The agent (or what a grant left of it) has unreserved
                // cpus, which come with any offer of it, and no leaf has
                // room for cpus: done.
                if !self.limits.is_empty()
                    && shortcuts()
                    && sums.unreserved.0[0] > 0
                    && *all_blocked.get_or_insert_with(|| looks.all_blocked(self, tree, guarantees))
                {
                    break;
                }
                // What the current leaf's role may take of this agent: worked
                // out once per leaf, and a leaf whose role can take nothing
                // (reserved elsewhere, at its quota limit, held back for
                // guarantees) is skipped whole. `None` when it is all of
                // `available`, as it is for every role when nothing on the
                // agent is reserved and no quota cuts it (nothing copied).
                let whole = guarantees.is_none() && self.limits.is_empty() && !sums.any_reserved;
                // What the current leaf takes, and its share kinds; copied
                // only when a framework's filters on the agent ask, and when
                // it is granted (moved out of `available` then).
                let mut leaf_usable: Option<(Take, Scalars)> = None;
                // The share kinds granted, once a walk ends in a grant.
                let mut granted = Scalars::default();
                let mut leaf_copy: Option<Resources> = None;
                // The share kinds of `available`, by leaf.
                if whole {
                    shares.unreserved = Scalars::default();
                    shares.reserved.clear();
                } else {
                    shares.refill(&sums, |role| tree.leaf_of(role));
                }
                // With nothing unreserved worth an offer, only the leaves
                // with reservations here could be offered anything: when
                // none of them may, the agent is done without a walk.
                if !whole
                    && shortcuts()
                    && !self.offerable(shares.unreserved)
                    && !shares
                        .reserved
                        .iter()
                        .any(|&(l, _)| looks.may_take(self, guarantees, &shares, l, &tree.leaves[l].role).is_some())
                {
                    break;
                }
                // Roles to pass over whole: those whose leaves are all out
                // of cpu room, when the agent has unreserved cpus (which
                // come with any offer of it); and, when nothing unreserved
                // is worth an offer, those with no leaf the agent has
                // reservations for.
                let pass_no_cpus = !whole && shortcuts() && shares.unreserved.0[0] > 0;
                let only_reserved = !whole && shortcuts() && !self.offerable(shares.unreserved);
                let mut try_grant = |v: Visit<'_>| -> bool {
                    let (f, leaf, role) = match v {
                        Visit::Role(n) => {
                            let closed = pass_no_cpus && looks.open[n].0 == 0;
                            return (looks.enters(n) || !shortcuts())
                                && !closed
                                && (!only_reserved || shares.reserved.iter().any(|&(l, _)| tree.above(n, l)));
                        }
                        Visit::Leaf(leaf, role) => (None, leaf, role),
                        Visit::Framework(f, leaf, role) => (Some(f), leaf, role),
                    };
                    let Some(f) = f else {
                        if whole {
                            // Untouched (a whole grant ends the agent), and
                            // found offerable above.
                            leaf_usable = None;
                            return true;
                        }
                        let Some(room) = looks.may_take(self, guarantees, &shares, leaf, role) else {
                            return false;
                        };
                        let mut take =
                            within_room(room.limits, &available, |r| r.reservation.is_none() || r.role() == role);
                        if let Some(cut) = room.cut.as_ref() {
                            take = cut.apply(take, &available, stage);
                        }
                        let s = take.scalars(&available);
                        let worth = !take.is_empty() && self.offerable(s);
                        leaf_usable = Some((take, s));
                        leaf_copy = None;
                        return worth;
                    };
                    if !self.wants(f, role, a) {
                        return false;
                    }
                    let Some(fw) = self.frameworks[f].as_deref() else { return false };
                    if let Some(filters) = fw.filters.get(&a) {
                        let offer = match &leaf_usable {
                            Some((take, _)) => &*leaf_copy.get_or_insert_with(|| take.copy(&available)),
                            None => &available,
                        };
                        if filters.iter().any(|x| x.expires_ms > now_ms && x.resources.contains(offer)) {
                            self.stats.filtered += 1;
                            return false;
                        }
                        // Expired ones go, but not in a worker: its
                        // frameworks are shared.
                        if self.part.is_none() && filters.iter().any(|x| x.expires_ms <= now_ms) {
                            if let Some(fw) = self.frameworks[f].as_mut().map(Arc::make_mut) {
                                Self::drop_expired_filters(fw, a, now_ms);
                            }
                        }
                    }
                    // Granted: the walk ends here, and the next one works
                    // the leaf's share out again.
                    // Everything left, in its order: moved out as it is.
                    let all_left = leaf_usable.as_ref().is_none_or(|(take, _)| take.is_all_of(&available));
                    // All of an agent nobody holds anything on is its total;
                    // of one idle at its turn, parts of it.
                    let of = if all_left && self.slot(a).is_some_and(|s| s.allocated.is_empty()) {
                        OfTotal::All
                    } else if let Some(origin) = origin.as_mut() {
                        let take = leaf_usable.as_ref().filter(|_| !all_left).map(|(take, _)| take);
                        OfTotal::Parts(origin.grant(&available, take))
                    } else {
                        OfTotal::Unknown
                    };
                    let (usable, s) = match leaf_usable.take() {
                        Some((_, s)) if all_left => (std::mem::take(&mut available), s),
                        // Moved out of `available` (what is taken whole) or
                        // split off it (part of a scalar).
                        Some((take, s)) => (available.take_parts(&take.parts), s),
                        // Untouched until now: all of what was free.
                        None => (std::mem::take(&mut available), sums.all()),
                    };
                    // A leaf taken whole has no path: no role has limits or
                    // guarantees.
                    if let Some(path) = looks.paths[leaf].as_ref() {
                        looks.limited.granted(&path.limits, s);
                        if let Some(g) = guarantees.as_mut() {
                            g.granted(&path.guaranteed, &usable);
                        }
                    }
                    let r = usable.into_allocated_to(role);
                    self.charge_grant(f, a, numbers[leaf], &r, s, of);
                    granted = s;
                    self.stats.allocations += 1;
                    let fw = self.frameworks[f].as_ref().expect("charged above");
                    offers.out.push(Allocation {
                        framework_id: fw.id.clone(),
                        agent_id: self.slot(a).expect("slot checked").id.clone(),
                        role: role.to_string(),
                        resources: r,
                        also: Vec::new(),
                    });
                    offers.granted(stage, (a, f, leaf));
                    true
                };
                let Some((leaf, f)) = tree.walk(0, &mut try_grant) else { break };
                let unreserved = sums.unreserved;
                sums.refill(&available);
                let mut unreserved_taken = unreserved;
                unreserved_taken.sub(sums.unreserved);
                taken.add(unreserved_taken);
                taken_reserved[leaf].add(granted);
                taken_reserved[leaf].sub(unreserved_taken);
                looks.grants += 1;
                all_blocked = None;
                tree.rerank(leaf, f, granted);
                #[cfg(test)]
                tree.check(self);
                if self.config.optimistic > 0 {
                    // The copies' rooms read the role figures.
                    tree.flush(self);
                    let last = offers.out.last_mut().expect("granted");
                    last.also = self.also_offer(tree, a, f, &last.resources.unallocated(), now_ms, guarantees.as_ref());
                }
            }
            if noting && !available.is_empty() && self.offerable(sums.all()) {
                left.push((a, self.all_with_cpus(&sums)));
            }
            if let Some(slot) = self.agents.get_mut(a.wrapping_sub(self.agent_base)).and_then(Option::as_mut) {
                (slot.free, slot.free_sums) = (available, sums);
            }
        }
        if let Some(part) = self.part.as_mut().filter(|_| noting) {
            part.left = left;
        }
        self.free_totals.unreserved.sub(taken);
        for (leaf, s) in taken_reserved.into_iter().enumerate().filter(|(_, s)| s.0 != [0; 4]) {
            bump(&mut self.free_totals.reserved, &tree.leaves[leaf].role, s, false);
        }
        tree.flush(self);
    }

    /// Optimistic offers: the next frameworks (up to `config.optimistic`,
    /// other than `winner`) in DRF order that could take all of `granted`
    /// for one of their roles: its reservations are theirs, it is within
    /// their limits and around the headroom, their constraints want the
    /// agent and no filter refuses it.
    fn also_offer(
        &self,
        tree: &Tree,
        a: usize,
        winner: usize,
        granted: &Resources,
        now_ms: u64,
        guarantees: Option<&Guarantees>,
    ) -> Vec<(FrameworkId, String)> {
        let mut picked: Vec<(usize, String)> = Vec::new();
        let fits = |role: &str| {
            let usable = granted.usable_by(role);
            usable.contains(granted)
                && self.within_limits(role, &usable).contains(granted)
                && guarantees.is_none_or(|g| g.cut(role, usable, Stage::Fair).contains(granted))
        };
        tree.walk(0, &mut |v| {
            let (f, role) = match v {
                Visit::Role(_) => return true,
                Visit::Leaf(_, role) => return fits(role),
                Visit::Framework(f, _, role) => (f, role),
            };
            if f == winner || picked.iter().any(|(p, _)| *p == f) || !self.wants(f, role, a) {
                return false;
            }
            let Some(fw) = self.frameworks[f].as_ref() else { return false };
            let refused = fw
                .filters
                .get(&a)
                .is_some_and(|fs| fs.iter().any(|x| x.expires_ms > now_ms && x.resources.contains(granted)));
            if !refused {
                picked.push((f, role.to_string()));
            }
            picked.len() >= self.config.optimistic
        });
        picked.into_iter().filter_map(|(f, role)| self.frameworks[f].as_ref().map(|fw| (fw.id.clone(), role))).collect()
    }

    /// Adds a decline filter without giving anything back: the framework
    /// is not offered these resources of this agent again before
    /// `now_ms + refuse_ms` (for offers it was not charged for).
    pub fn refuse(&mut self, framework: &FrameworkId, agent: &AgentId, r: &Resources, refuse_ms: u64, now_ms: u64) {
        let (Some(f), Some(&a)) = (self.framework_idx(framework), self.agent_index.get(agent)) else { return };
        if refuse_ms == 0 {
            return;
        }
        // Filters hold unallocated resources.
        if let Some(fw) = self.frameworks[f].as_mut().map(Arc::make_mut) {
            fw.filters
                .entry(a)
                .or_default()
                .push(Filter { resources: r.unallocated(), expires_ms: now_ms.saturating_add(refuse_ms) });
        }
    }

    /// The dominant share of a framework (for metrics and tests).
    pub fn share(&self, id: &FrameworkId) -> Option<f64> {
        let f = self.frameworks[self.framework_idx(id)?].as_ref()?;
        Some(f.allocated.dominant_share(&self.total))
    }

    /// What a framework holds on an agent (offered or used).
    pub fn allocated(&self, framework: &FrameworkId, agent: &AgentId) -> Resources {
        let (Some(f), Some((_, slot))) = (self.framework_idx(framework), self.agent(agent)) else {
            return Resources::new();
        };
        slot.held(f, &self.role_names).unwrap_or_default()
    }

    /// Unallocated resources of an agent.
    pub fn available(&self, agent: &AgentId) -> Option<Resources> {
        self.agent(agent).map(|(_, a)| a.free.clone())
    }
}

/// Adds (or takes away) `s`, allocated to `role`, to the role's own figure
/// in `direct` and to its subtree's and those above it in `subtree`.
fn add_to_roles(
    direct: &mut HashMap<String, Scalars>,
    subtree: &mut HashMap<String, Scalars>,
    role: &str,
    s: Scalars,
    add: bool,
) {
    bump(direct, role, s, add);
    for (i, _) in role.match_indices('/') {
        bump(subtree, &role[..i], s, add);
    }
    bump(subtree, role, s, add);
}

/// Share kinds by role, in a short list.
type ByRole = Vec<(Name, Scalars)>;

/// What `list` holds for `role`.
fn of_role(list: &ByRole, role: &str) -> Scalars {
    list.iter().find(|(r, _)| r == role).map(|(_, s)| *s).unwrap_or_default()
}

/// As [`bump`], for a short list.
fn bump_by_role(list: &mut ByRole, role: &str, s: Scalars, add: bool) {
    let k = match list.iter().position(|(r, _)| r == role) {
        Some(k) => k,
        None => {
            list.push((role.into(), Scalars::default()));
            list.len() - 1
        }
    };
    let e = &mut list[k].1;
    e.add_or_sub(s, add);
    if e.0 == [0; 4] {
        list.swap_remove(k);
    }
}

/// Adds (or takes away) `s` to `map[key]`; an entry that comes to zero is
/// removed. The key is copied only when it is new.
fn bump(map: &mut HashMap<String, Scalars>, key: &str, s: Scalars, add: bool) {
    let e = match map.get_mut(key) {
        Some(e) => e,
        None => map.entry(key.to_string()).or_default(),
    };
    e.add_or_sub(s, add);
    if e.0 == [0; 4] {
        map.remove(key);
    }
}

/// Folds each stage-two allocation into the stage-one allocation of the
/// same framework, agent and role (from `out[..first]`), if any: one offer
/// for both.
fn merge_stages(out: &mut Vec<Allocation>, first: usize) {
    fold(out, first, &stage_folds(out, first));
}

/// A round's allocations, and what to fold together as they are made: a
/// grant in stage two to the framework and leaf (so role) that stage one
/// granted something on the same agent goes into the same offer (as
/// [`merge_stages`] finds after a split round, but by number, not by ids
/// and names).
#[derive(Default)]
struct Offers {
    out: Vec<Allocation>,
    /// Stage one's first allocation of each (agent, framework, leaf), by
    /// index into `out`.
    firsts: HashMap<(usize, usize, usize), usize>,
    /// (earlier, later) indices into `out`, in the order of the later.
    folds: Vec<(usize, usize)>,
}

impl Offers {
    /// The last allocation in `out` was of agent, framework and leaf `key`
    /// in `stage`.
    fn granted(&mut self, stage: Stage, key: (usize, usize, usize)) {
        let last = self.out.len() - 1;
        match stage {
            Stage::Guarantees => {
                self.firsts.entry(key).or_insert(last);
            }
            Stage::Fair => {
                if let Some(&first) = self.firsts.get(&key) {
                    self.folds.push((first, last));
                }
            }
        }
    }
}

/// Which of `out[first..]` [`merge_stages`] folds into which of
/// `out[..first]`: (earlier, later) indices, in the order of the later.
fn stage_folds(out: &[Allocation], first: usize) -> Vec<(usize, usize)> {
    // Each later allocation merges into the first earlier one of the same
    // framework and role on the same agent (most have none). The smaller
    // side is indexed: after a split round's parts, the pass over what
    // they left grants little against all that came before.
    fn key(x: &Allocation) -> (&str, &str, &str) {
        (x.agent_id.as_str(), x.framework_id.as_str(), x.role.as_str())
    }
    if first <= out.len() - first {
        let mut earlier: HashMap<(&str, &str, &str), usize> = HashMap::default();
        for (i, x) in out[..first].iter().enumerate() {
            earlier.entry(key(x)).or_insert(i);
        }
        (first..out.len()).filter_map(|j| earlier.get(&key(&out[j])).map(|&i| (i, j))).collect()
    } else {
        let mut later: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::default();
        for (j, x) in out.iter().enumerate().skip(first) {
            later.entry(key(x)).or_default().push(j);
        }
        let mut merges = Vec::new();
        for (i, x) in out[..first].iter().enumerate() {
            // Taken by the first earlier one.
            if let Some(js) = later.remove(&key(x)) {
                merges.extend(js.into_iter().map(|j| (i, j)));
            }
        }
        merges.sort_unstable_by_key(|&(_, j)| j);
        merges
    }
}

/// Folds each `out[j]` into `out[i]` for the (i, j) of `merges` (`i` below
/// `first`, `j` from it on, in order of `j`), and drops the `out[j]`.
fn fold(out: &mut Vec<Allocation>, first: usize, merges: &[(usize, usize)]) {
    if merges.is_empty() {
        return;
    }
    let (one, two) = out.split_at_mut(first);
    for &(i, j) in merges {
        let x = &two[j - first];
        one[i].resources.add(&x.resources);
        // Optimistic copies must be able to take all of it.
        one[i].also.retain(|p| x.also.contains(p));
    }
    let mut merged = merges.iter().map(|&(_, j)| j).peekable();
    let mut j = 0;
    out.retain(|_| {
        let keep = merged.next_if_eq(&j).is_none();
        j += 1;
        keep
    });
}

/// What roles consume of their quota: what their subtrees hold, and what
/// is reserved to them and free (the allocator's free totals).
pub struct Consumption<'a> {
    allocator: &'a Allocator,
    /// Unallocated reservations by role.
    reserved: &'a HashMap<String, Scalars>,
}

impl Consumption<'_> {
    /// Allocated in `role`'s subtree, plus its subtree's unallocated
    /// reservations.
    pub fn of(&self, role: &str) -> Scalars {
        let mut consumed = self.allocator.subtree.get(role).copied().unwrap_or_default();
        for (r, s) in self.reserved {
            if on_path(role, r) {
                consumed.add(*s);
            }
        }
        consumed
    }
}

/// The stages of an allocation round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Toward unmet guarantees only.
    Guarantees,
    /// Every role, around the headroom.
    Fair,
}

/// Whether `role` is `ancestor` or below it.
pub fn on_path(ancestor: &str, role: &str) -> bool {
    role.strip_prefix(ancestor).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

struct GuaranteedRole {
    name: String,
    guarantee: Quantities,
    /// Allocated in its subtree, plus its subtree's unallocated
    /// reservations.
    consumed: Scalars,
    /// No role above it has a guarantee.
    top: bool,
}

impl GuaranteedRole {
    fn shortfall(&self, i: usize) -> Option<i64> {
        self.guarantee.0[i].map(|g| (g - self.consumed.0[i]).max(0))
    }
}

/// The quota guarantees of one allocation round: what each guaranteed role
/// consumes, and what is free to hold back for them.
struct Guarantees {
    roles: Vec<GuaranteedRole>,
    /// Unreserved, unallocated share kinds on active agents.
    free: Scalars,
    /// Per kind, what is free beyond the headroom (see
    /// [`Guarantees::slack`]), kept up to date by [`Guarantees::granted`].
    slack: [i64; 4],
    /// Per kind, added to what is free beyond the shortfalls to make the
    /// slack: 0 but in a worker of a parallel round (see
    /// [`Guarantees::parts`]).
    adjust: [i64; 4],
}

impl Guarantees {
    /// The round's figures, or `None` when no role has a guarantee: from
    /// the allocator's free totals, without a pass over the agents.
    fn new(a: &Allocator) -> Option<Guarantees> {
        if a.guarantees.is_empty() {
            return None;
        }
        let free = a.free_totals.unreserved;
        let consumption = a.consumption();
        let roles = a
            .guarantees
            .iter()
            .map(|(name, guarantee)| {
                let consumed = consumption.of(name);
                let top = !name.match_indices('/').any(|(i, _)| a.guarantees.contains_key(&name[..i]));
                GuaranteedRole { name: name.clone(), guarantee: *guarantee, consumed, top }
            })
            .collect();
        let mut g = Guarantees { roles, free, slack: [0; 4], adjust: [0; 4] };
        g.slack = g.slack();
        Some(g)
    }

    /// The parts of a parallel round, one per worker whose agents have
    /// `free` of unreserved resources free: each shortfall split by those,
    /// and the slack by what each part's free leaves beyond its shortfalls
    /// (see [`apportion`]). The parts add up to the whole
    /// exactly: stage one grants no more toward a guarantee than the whole
    /// round would, and the parts together grant no more beyond the
    /// headroom than its slack. Each part has only its own free.
    ///
    /// A shortfall is split in whole `grains` per kind (the least worth an
    /// offer; see [`apportion_in`]): a part given less than that of the
    /// headroom could offer none of it, and its slack would go to others.
    fn parts(&self, free: &[Scalars], grains: [i64; 4]) -> Vec<Guarantees> {
        let mut parts: Vec<Guarantees> = free
            .iter()
            .map(|&f| Guarantees {
                roles: Vec::with_capacity(self.roles.len()),
                free: f,
                slack: [0; 4],
                adjust: [0; 4],
            })
            .collect();
        // Per kind, what each part has free: the weights of every split.
        let weights: [Vec<i64>; 4] = std::array::from_fn(|i| free.iter().map(|f| f.0[i]).collect());
        for r in &self.roles {
            let mut guarantee = vec![r.guarantee; free.len()];
            for (i, weights) in weights.iter().enumerate() {
                let Some(short) = r.shortfall(i) else { continue };
                for (g, s) in guarantee.iter_mut().zip(apportion_in(short, weights, grains[i])) {
                    g.0[i] = Some(r.consumed.0[i] + s);
                }
            }
            for (part, guarantee) in parts.iter_mut().zip(guarantee) {
                part.roles.push(GuaranteedRole { name: r.name.clone(), guarantee, consumed: r.consumed, top: r.top });
            }
        }
        for (i, free) in weights.iter().enumerate() {
            // The slack by what each part's own free and shortfalls leave
            // (those add up to the whole's but where a part holds more of
            // the headroom than it has free), made its part of the slack;
            // grants move it as they move the whole's.
            let mut own: Vec<i64> = parts.iter().map(|p| p.beyond_shortfalls()[i].max(0)).collect();
            if own.iter().all(|&o| o == 0) {
                // Nothing beyond the pieces anywhere (the whole's free may
                // count agents outside the round): by free, as a whole.
                own.clone_from(free);
            }
            for (part, slack) in parts.iter_mut().zip(apportion(self.slack[i], &own)) {
                part.adjust[i] = slack - part.beyond_shortfalls()[i];
            }
        }
        for part in &mut parts {
            part.slack = part.slack();
        }
        parts
    }

    fn any_shortfall(&self) -> bool {
        self.roles.iter().any(|g| (0..4).any(|i| g.shortfall(i).is_some_and(|s| s > 0)))
    }

    /// Whether a role whose [`Guarantees::path`] is `path` may take
    /// something toward a guarantee.
    fn owes(&self, path: &[usize]) -> bool {
        self.need_on(path).iter().any(|n| n.is_some_and(|n| n > 0))
    }

    /// Whether a guaranteed role is on `role`'s path.
    fn covers(&self, role: &str) -> bool {
        self.roles.iter().any(|g| on_path(&g.name, role))
    }

    /// The guaranteed roles on `role`'s path, by index.
    fn path(&self, role: &str) -> Vec<usize> {
        (0..self.roles.len()).filter(|&g| on_path(&self.roles[g].name, role)).collect()
    }

    /// Per kind, what a role whose [`Guarantees::path`] is `path` may still
    /// take toward guarantees: the least shortfall among the guaranteed
    /// roles on its path that guarantee the kind (`None` where none does).
    fn need_on(&self, path: &[usize]) -> [Option<i64>; 4] {
        let mut need = [None; 4];
        for g in path.iter().map(|&g| &self.roles[g]) {
            for (i, n) in need.iter_mut().enumerate() {
                if let Some(s) = g.shortfall(i) {
                    *n = Some(n.map_or(s, |n: i64| n.min(s)));
                }
            }
        }
        need
    }

    /// Per kind, what the headroom holds for the top-most guaranteed role on
    /// a role's path (its shortfall), if there is one; `path` is the role's
    /// [`Guarantees::path`].
    fn held_for(&self, path: &[usize]) -> [Option<i64>; 4] {
        let mut held = [None; 4];
        if let Some(g) = path.iter().map(|&g| &self.roles[g]).find(|g| g.top) {
            for (i, h) in held.iter_mut().enumerate() {
                *h = g.shortfall(i);
            }
        }
        held
    }

    /// Per kind, what is free beyond the headroom (the top-most guaranteed
    /// roles' shortfalls), with a worker's adjustment.
    fn slack(&self) -> [i64; 4] {
        let beyond = self.beyond_shortfalls();
        std::array::from_fn(|i| (beyond[i] + self.adjust[i]).max(0))
    }

    /// Per kind, what is free less the top-most guaranteed roles'
    /// shortfalls (below 0 when they are more).
    fn beyond_shortfalls(&self) -> [i64; 4] {
        let mut beyond = self.free.0;
        for g in self.roles.iter().filter(|g| g.top) {
            for (i, s) in beyond.iter_mut().enumerate() {
                *s -= g.shortfall(i).unwrap_or(0);
            }
        }
        beyond
    }

    /// What `role` may take of `usable` in `stage`. Reserved resources are
    /// already counted as consumed and are never held back. Unreserved share
    /// kinds are cut: in stage one, a guaranteed kind to the role's need and
    /// the others to the slack, and something must go toward a guarantee;
    /// in stage two, each kind to the slack plus what the headroom holds for
    /// the top-most guaranteed role on the role's path (taking it goes
    /// toward that role's guarantee, whether or not a guarantee further
    /// down the path is met already). When the
    /// agent has cpus free but the role gets no room for them, no
    /// unreserved resources are offered at all (memory alone is of no use
    /// without cpus).
    fn cut(&self, role: &str, mut usable: Resources, stage: Stage) -> Resources {
        let take = self.room(&self.path(role), stage).apply(Take::all(&usable), &usable, stage);
        usable.take_parts(&take.parts)
    }

    /// What a role whose [`Guarantees::path`] is `path` may take in
    /// `stage`, per kind (see [`Guarantees::cut`]).
    fn room(&self, path: &[usize], stage: Stage) -> CutRoom {
        let need = self.need_on(path);
        let slack = self.slack;
        let held = self.held_for(path);
        let mut room = [0i64; 4];
        for (i, r) in room.iter_mut().enumerate() {
            *r = match (stage, need[i]) {
                (Stage::Guarantees, Some(n)) => n,
                (Stage::Guarantees, None) => slack[i],
                (Stage::Fair, _) => slack[i] + held[i].unwrap_or(0),
            };
        }
        CutRoom { room, need }
    }

    /// `r` was granted to a role whose [`Guarantees::path`] is `path`: its
    /// unreserved share kinds are no longer free, and count toward the
    /// guarantees on the role's path.
    fn granted(&mut self, path: &[usize], r: &Resources) {
        let plain = Scalars::of_where(r, |x| x.reservation.is_none());
        if plain.0 == [0; 4] {
            return;
        }
        self.free.sub(plain);
        for &g in path {
            self.roles[g].consumed.add(plain);
        }
        self.slack = self.slack();
    }
}

/// The resources of `from` that `keep` accepts, cut down to `room` (see
/// [`Allocator::within_limits`]).
fn within_room(mut room: [Option<i64>; 4], from: &Resources, keep: impl Fn(&Resource) -> bool) -> Take {
    let usable = || from.iter().enumerate().filter(|(_, r)| keep(r));
    let mut parts = Vec::with_capacity(from.len());
    if room.iter().all(Option::is_none) {
        parts.extend(usable().map(|(i, _)| (i, None)));
        return Take { parts };
    }
    if room[0] == Some(0) && usable().any(|(_, r)| is_cpus(r)) {
        return Take::default();
    }
    let reserved_first =
        usable().filter(|(_, r)| r.reservation.is_some()).chain(usable().filter(|(_, r)| r.reservation.is_none()));
    for (k, r) in reserved_first {
        let mut take = None;
        if let (Some(i), agora_proto::resources::Value::Scalar(v)) = (kind_index(&r.name), &r.value) {
            if let Some(left) = room[i].as_mut() {
                let t = v.0.min(*left);
                *left -= t;
                if t == 0 {
                    continue;
                }
                take = Some(t);
            }
        }
        parts.push((k, take));
    }
    Take { parts }
}

/// What a role takes of an agent's available resources, before anything
/// is copied: by index into them, all of a resource or (`Some`) that much
/// of a scalar, in the order an offer of them lists them (see
/// [`Resources::take_parts`], which moves them out).
#[derive(Default)]
struct Take {
    parts: Vec<(usize, Option<i64>)>,
}

impl Take {
    /// All of `from`, in its order.
    fn all(from: &Resources) -> Take {
        Take { parts: (0..from.len()).map(|i| (i, None)).collect() }
    }

    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Whether it takes all of `from`, whole, in its order (what
    /// [`Resources::take_parts`] would then give is `from` itself).
    fn is_all_of(&self, from: &Resources) -> bool {
        self.parts.len() == from.len()
            && self.of(from).enumerate().all(|(k, (i, r, v))| {
                // A scalar taken whole, or a resource of another kind
                // (always taken whole).
                i == k
                    && match (&r.value, v) {
                        (agora_proto::resources::Value::Scalar(x), Some(v)) => v == x.0,
                        _ => true,
                    }
            })
    }

    /// Each part of `from` taken, and what is taken of it when it is a
    /// scalar.
    fn of<'a>(&'a self, from: &'a Resources) -> impl Iterator<Item = (usize, &'a Resource, Option<i64>)> + 'a {
        let all = from.iter().as_slice();
        self.parts.iter().map(move |&(i, t)| {
            let r = &all[i];
            let v = match &r.value {
                agora_proto::resources::Value::Scalar(v) => Some(t.map_or(v.0, |t| t.min(v.0))),
                _ => None,
            };
            (i, r, v)
        })
    }

    /// The share kinds taken of `from`.
    fn scalars(&self, from: &Resources) -> Scalars {
        let mut s = Scalars::default();
        for (_, r, v) in self.of(from) {
            if let (Some(k), Some(v)) = (kind_index(&r.name), v) {
                s.0[k] += v;
            }
        }
        s
    }

    /// A copy of what is taken of `from` (which stays as it is).
    fn copy(&self, from: &Resources) -> Resources {
        // Parts of normalized resources, values only made smaller: no two
        // alike.
        Resources::from_distinct(
            self.of(from)
                .map(|(_, r, v)| {
                    let mut r = r.clone();
                    if let (Some(v), agora_proto::resources::Value::Scalar(x)) = (v, &mut r.value) {
                        x.0 = v;
                    }
                    r
                })
                .collect(),
        )
    }
}

/// Whether `r` is some cpus.
fn is_cpus(r: &Resource) -> bool {
    r.name == "cpus" && matches!(r.value, agora_proto::resources::Value::Scalar(v) if v.0 > 0)
}

/// The share kinds of an agent's available resources: the unreserved ones,
/// and those reserved to each role that is a leaf of the round's tree (by
/// leaf, so that looking a leaf up compares no names).
#[derive(Default)]
struct Shares {
    unreserved: Scalars,
    reserved: Vec<(usize, Scalars)>,
}

impl Shares {
    /// Works them out again (in place) from the sums of the resources;
    /// `leaf_of` finds a role's leaf, and resources reserved to a role that
    /// has none are left out (no leaf may use them).
    fn refill(&mut self, sums: &FreeSums, leaf_of: impl Fn(&str) -> Option<usize>) {
        self.unreserved = sums.unreserved;
        self.reserved.clear();
        self.reserved.extend(sums.reserved.iter().filter_map(|(role, s)| leaf_of(role).map(|l| (l, *s))));
    }

    /// What `leaf`'s role may use (as [`Resources::usable_by`]): the share
    /// kinds reserved to it, and the unreserved ones.
    fn usable_by(&self, leaf: usize) -> (Scalars, Scalars) {
        let reserved = self.reserved.iter().find(|&&(l, _)| l == leaf).map(|(_, s)| *s).unwrap_or_default();
        (reserved, self.unreserved)
    }
}

/// A role's room in one stage of a round, between two grants.
#[derive(Clone, Copy)]
struct CutRoom {
    /// Per kind, what the role may take of unreserved resources.
    room: [i64; 4],
    /// Per kind, what the role may still take toward guarantees.
    need: [Option<i64>; 4],
}

impl CutRoom {
    /// `usable` (taken of `from`), cut to the room (see
    /// [`Guarantees::cut`]): the parts reserved first, then the unreserved.
    fn apply(&self, usable: Take, from: &Resources, stage: Stage) -> Take {
        let (mut room, need) = (self.room, self.need);
        // Most often everything fits: nothing to cut.
        let mut plain = [0i64; 4];
        for (_, r, v) in usable.of(from).filter(|(_, r, _)| r.reservation.is_none()) {
            if let (Some(i), Some(v)) = (kind_index(&r.name), v) {
                plain[i] += v;
            }
        }
        if (0..4).all(|i| plain[i] <= room[i]) {
            let toward = (0..4).any(|i| plain[i] > 0 && need[i].is_some_and(|n| n > 0));
            return match stage {
                Stage::Guarantees if !toward => Take::default(),
                _ => usable,
            };
        }
        let mut reserved = Vec::with_capacity(usable.parts.len());
        let mut unreserved = Vec::new();
        let mut toward = false;
        let mut starved = false;
        for ((k, r, v), &part) in usable.of(from).zip(&usable.parts) {
            if r.reservation.is_some() {
                reserved.push(part);
                continue;
            }
            if let (Some(i), Some(v)) = (kind_index(&r.name), v) {
                let take = v.min(room[i]);
                room[i] -= take;
                if take == 0 {
                    starved |= i == 0 && v > 0;
                    continue;
                }
                toward |= need[i].is_some_and(|n| n > 0);
                unreserved.push((k, Some(take)));
            } else {
                unreserved.push(part);
            }
        }
        if stage == Stage::Guarantees && !toward {
            return Take::default();
        }
        if !starved {
            reserved.append(&mut unreserved);
        }
        Take { parts: reserved }
    }
}

/// The parts of a role's quota limit in a parallel round, one per worker:
/// what its subtree holds (`used`) plus, per kind, a part of the room left
/// by what each worker's agents have free (`free`, see [`apportion`]). The
/// parts' rooms add up to the role's.
fn part_limits(limit: Quantities, used: Scalars, free: &[Scalars]) -> Vec<Quantities> {
    let mut parts = vec![Quantities::default(); free.len()];
    for i in 0..4 {
        let Some(l) = limit.0[i] else { continue };
        let weights: Vec<i64> = free.iter().map(|f| f.0[i]).collect();
        for (q, room) in parts.iter_mut().zip(apportion((l - used.0[i]).max(0), &weights)) {
            q.0[i] = Some(used.0[i] + room);
        }
    }
    parts
}

/// `total` (at least 0) in whole parts by `weights`, which add up to it
/// exactly: each its share rounded down, and what rounding left one by one
/// to the largest remainders (first index on a tie). All 0 when no weight
/// is positive.
fn apportion(total: i64, weights: &[i64]) -> Vec<i64> {
    let w: Vec<i128> = weights.iter().map(|&w| w.max(0) as i128).collect();
    let sum: i128 = w.iter().sum();
    if sum == 0 || total <= 0 {
        return vec![0; w.len()];
    }
    let mut parts: Vec<i64> = w.iter().map(|&w| (total as i128 * w / sum) as i64).collect();
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by_key(|&k| (std::cmp::Reverse(total as i128 * w[k] % sum), k));
    let left = total - parts.iter().sum::<i64>();
    for &k in order.iter().take(left as usize) {
        parts[k] += 1;
    }
    parts
}

/// [`apportion`] for what a part must be able to offer: each part's share
/// rounded down to whole `grain`s (or all of its weight, when the share
/// would take that much); what that leaves to the parts with room (most
/// room first), each as long as its share ends at least a grain or all it
/// has; and what is still left (beyond what the weights hold, or what only
/// a share smaller than a grain could take) to the part with the largest
/// weight. So no part but that one is given a share that is neither 0, at
/// least a grain, nor all it has, or more than it has.
fn apportion_in(total: i64, weights: &[i64], grain: i64) -> Vec<i64> {
    let grain = grain.max(1);
    let w: Vec<i64> = weights.iter().map(|&w| w.max(0)).collect();
    let mut parts: Vec<i64> =
        apportion(total, &w).into_iter().zip(&w).map(|(p, &w)| if p >= w { w } else { p / grain * grain }).collect();
    let mut left = total.max(0) - parts.iter().sum::<i64>();
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by_key(|&k| (std::cmp::Reverse(w[k] - parts[k]), k));
    for k in order {
        let more = left.min(w[k] - parts[k]);
        if more > 0 && parts[k] + more >= grain.min(w[k]) {
            parts[k] += more;
            left -= more;
        }
    }
    if let Some(k) = (0..w.len()).max_by_key(|&k| (w[k], std::cmp::Reverse(k))) {
        parts[k] += left;
    }
    parts
}

/// Per kind, the least room left under `limits`, each a role's limits
/// (`None` where it sets none) and what its subtree holds.
fn room_left(limits: impl Iterator<Item = (Quantities, Scalars)>) -> [Option<i64>; 4] {
    let mut room: [Option<i64>; 4] = [None; 4];
    for (limit, used) in limits {
        for ((room, l), used) in room.iter_mut().zip(limit.0).zip(used.0) {
            if let Some(l) = l {
                let left = (l - used).max(0);
                *room = Some(room.map_or(left, |r| r.min(left)));
            }
        }
    }
    room
}

/// The roles with quota limits met in one stage of a round, and what their
/// subtrees hold, kept up to date by the stage's grants: a leaf's room is
/// worked out from them without looking roles up by name.
#[derive(Default)]
struct Limited {
    names: Vec<String>,
    limits: Vec<Quantities>,
    used: Vec<Scalars>,
}

impl Limited {
    /// The roles on `role`'s path (itself included) that have quota
    /// limits, by index here. A role's figure is read from the allocator
    /// when it is first found: before anything under it is granted in the
    /// stage (a leaf's path is found before it is offered anything), so
    /// what the stage's tree has not handed over yet is not missed.
    fn path(&mut self, a: &Allocator, role: &str) -> Vec<usize> {
        let mut path = Vec::new();
        for (node, limits) in a.limited_path(role) {
            let i = match self.names.iter().position(|n| *n == node) {
                Some(i) => i,
                None => {
                    self.used.push(a.subtree_held(&node));
                    self.names.push(node);
                    self.limits.push(limits);
                    self.names.len() - 1
                }
            };
            path.push(i);
        }
        path
    }

    /// The room left under the limits of the roles on `path` (as
    /// [`Allocator::room`]).
    fn room(&self, path: &[usize]) -> [Option<i64>; 4] {
        room_left(path.iter().map(|&i| (self.limits[i], self.used[i])))
    }

    /// `s` was granted to a role whose [`Limited::path`] is `path`.
    fn granted(&mut self, path: &[usize], s: Scalars) {
        for &i in path {
            self.used[i].add(s);
        }
    }
}

/// What one stage of a round knows of its leaves between grants: each
/// leaf's limited and guaranteed roles (found once), its room (worked out
/// once between two grants) and the limited roles' figures.
struct Looks {
    /// Each leaf's room, with the count of grants when it was worked out:
    /// it holds until the next grant.
    rooms: Vec<Option<(u64, LeafRoom)>>,
    /// The stage's grants so far (see `rooms`).
    grants: u64,
    limited: Limited,
    paths: Vec<Option<LeafPath>>,
    /// Leaves found with no room for cpus under their limits. What the
    /// limited roles hold only grows in a stage, so that lasts to its end:
    /// such a leaf is offered nothing of an agent with cpus its role could
    /// use (see [`within_room`]), and is passed over without its room.
    no_cpus: Vec<bool>,
    /// By node of the tree: how many leaves below it are not in `no_cpus`
    /// (a walk passes over a role whose leaves all are, whole), and its
    /// parent.
    open: Vec<(u32, usize)>,
    /// Each leaf's node.
    leaf_nodes: Vec<usize>,
    /// In stage one, by node of the tree: how many leaves below it are
    /// under a guarantee not found met yet (the stage passes over a role
    /// with none).
    covered: Vec<u32>,
    /// In stage one, by leaf: whether it counts in `covered`.
    covering: Vec<bool>,
    stage: Stage,
}

impl Looks {
    /// Whether `leaf` (of `role`) takes part in the stage: in stage one,
    /// only if a guarantee on its path is short.
    fn owed(&mut self, a: &Allocator, guarantees: &Option<Guarantees>, leaf: usize, role: &str) -> bool {
        let path = self.paths[leaf].get_or_insert_with(|| LeafPath::of(a, &mut self.limited, guarantees, role));
        if self.stage == Stage::Fair {
            return true;
        }
        let owed = guarantees.as_ref().is_some_and(|g| g.owes(&path.guaranteed));
        if !owed && self.covering[leaf] {
            // Guarantees are only met further within a stage: the leaf owes
            // nothing to its end, and no longer counts as covered.
            self.covering[leaf] = false;
            let mut n = self.leaf_nodes[leaf];
            loop {
                self.covered[n] -= 1;
                if n == 0 {
                    break;
                }
                n = self.open[n].1;
            }
        }
        owed
    }

    /// Whether every leaf's role is at its cpu limit (or, in stage one, owes
    /// no guarantee), stopping at the first that is not.
    fn all_blocked(&mut self, a: &Allocator, tree: &Tree, guarantees: &Option<Guarantees>) -> bool {
        (0..tree.leaves.len()).all(|l| {
            let role = &tree.leaves[l].role;
            if !self.owed(a, guarantees, l, role) || self.no_cpus[l] {
                return true;
            }
            self.room(guarantees, l).limits[0] == Some(0)
        })
    }

    /// `leaf`'s room under quota limits and around the headroom (it changes
    /// only with a grant); its path must have been found ([`Looks::owed`]).
    fn room(&mut self, guarantees: &Option<Guarantees>, leaf: usize) -> LeafRoom {
        let path = self.paths[leaf].as_ref().expect("path found first");
        let room = match self.rooms[leaf] {
            Some((n, room)) if n == self.grants => room,
            _ => {
                let room = LeafRoom::of(&self.limited, guarantees, path, self.stage);
                self.rooms[leaf] = Some((self.grants, room));
                room
            }
        };
        if room.limits[0] == Some(0) && !self.no_cpus[leaf] {
            self.no_cpus[leaf] = true;
            let mut n = self.leaf_nodes[leaf];
            loop {
                self.open[n].0 -= 1;
                if n == 0 {
                    break;
                }
                n = self.open[n].1;
            }
        }
        room
    }

    /// Counts every leaf of `tree` as open (see `open`) and, in stage
    /// one, those under a guarantee (see `covered`).
    fn open_all(&mut self, tree: &Tree, guarantees: &Option<Guarantees>) {
        self.open = tree.nodes.iter().map(|n| (0, n.parent)).collect();
        self.leaf_nodes = tree.leaves.iter().map(|l| l.node).collect();
        let guarantees = guarantees.as_ref().filter(|_| self.stage == Stage::Guarantees);
        self.covered = vec![0; if guarantees.is_some() { tree.nodes.len() } else { 0 }];
        self.covering = vec![false; tree.leaves.len()];
        for (l, &(mut n)) in self.leaf_nodes.iter().enumerate() {
            let covered = guarantees.is_some_and(|g| g.covers(&tree.leaves[l].role));
            self.covering[l] = covered;
            loop {
                self.open[n].0 += 1;
                if covered {
                    self.covered[n] += 1;
                }
                if n == 0 {
                    break;
                }
                n = self.open[n].1;
            }
        }
    }

    /// Whether a walk enters the role of node `n` at all: in stage one,
    /// only a role with a leaf under a guarantee not found met.
    fn enters(&self, n: usize) -> bool {
        self.stage == Stage::Fair || self.covered[n] > 0
    }

    /// The walk's first look at `leaf` (of `role`), on sums only: its room,
    /// when what its role may use of the agent (`shares`) could still be
    /// worth an offer within it. The cuts only take away: a role that could
    /// not take an offer's worth out of everything it may use gets nothing,
    /// and is skipped before anything is copied.
    fn may_take(
        &mut self,
        a: &Allocator,
        guarantees: &Option<Guarantees>,
        shares: &Shares,
        leaf: usize,
        role: &str,
    ) -> Option<LeafRoom> {
        if !self.owed(a, guarantees, leaf, role) {
            return None;
        }
        let (reserved, unreserved) = shares.usable_by(leaf);
        if !a.offerable(reserved.plus(unreserved)) {
            return None;
        }
        if !shortcuts() {
            return Some(self.room(guarantees, leaf));
        }
        if self.no_cpus[leaf] && reserved.0[0] + unreserved.0[0] > 0 {
            return None;
        }
        let room = self.room(guarantees, leaf);
        a.offerable(room.most(reserved, unreserved)).then_some(room)
    }
}

/// Whether the walk may pass over, on sums alone, what it would find
/// nothing in (always, but in a test that compares rounds with and without;
/// see `tests::NO_SHORTCUTS`).
fn shortcuts() -> bool {
    #[cfg(test)]
    if tests::NO_SHORTCUTS.with(std::cell::Cell::get) {
        return false;
    }
    true
}

/// The roles above a leaf (its own included) that its room depends on.
struct LeafPath {
    /// Those with quota limits (see [`Limited::path`]).
    limits: Vec<usize>,
    /// Those with guarantees (see [`Guarantees::path`]).
    guaranteed: Vec<usize>,
}

impl LeafPath {
    fn of(a: &Allocator, limited: &mut Limited, guarantees: &Option<Guarantees>, role: &str) -> LeafPath {
        LeafPath {
            limits: limited.path(a, role),
            guaranteed: guarantees.as_ref().map(|g| g.path(role)).unwrap_or_default(),
        }
    }
}

/// A leaf's room in one stage of a round, between two grants: under quota
/// limits (see [`Allocator::room`]) and around the headroom.
#[derive(Clone, Copy)]
struct LeafRoom {
    limits: [Option<i64>; 4],
    cut: Option<CutRoom>,
}

impl LeafRoom {
    fn of(limited: &Limited, guarantees: &Option<Guarantees>, path: &LeafPath, stage: Stage) -> LeafRoom {
        LeafRoom {
            limits: limited.room(&path.limits),
            cut: guarantees.as_ref().map(|g| g.room(&path.guaranteed, stage)),
        }
    }

    /// No less, per kind, than what [`within_room`] and then
    /// [`CutRoom::apply`] leave of resources whose share kinds are
    /// `reserved` (to the role) and `unreserved`: a role for which this is
    /// not worth an offer gets nothing, and is skipped without a copy.
    /// Exact but for two of the cut's rules, which only take more away:
    /// starving (applied here only where it is certain, with no room at all
    /// for unreserved cpus), and stage one going toward a guarantee.
    fn most(&self, reserved: Scalars, unreserved: Scalars) -> Scalars {
        let (mut r, mut u) = (reserved, unreserved);
        if self.limits[0] == Some(0) && r.0[0] + u.0[0] > 0 {
            return Scalars::default();
        }
        for i in 0..4 {
            if let Some(l) = self.limits[i] {
                r.0[i] = r.0[i].min(l);
                u.0[i] = u.0[i].min(l - r.0[i]);
            }
        }
        if let Some(cut) = &self.cut {
            if cut.room[0] == 0 && u.0[0] > 0 {
                u = Scalars::default();
            } else {
                for i in 0..4 {
                    u.0[i] = u.0[i].min(cut.room[i]);
                }
            }
        }
        r.plus(u)
    }
}

/// The part of `a` also in `b`, per resource kind (for recovering what a
/// framework can give back when a request overlaps only partly).
fn intersect(a: &Resources, b: &Resources) -> Resources {
    let mut out = Resources::new();
    for x in a.iter() {
        for y in b.iter() {
            if x.name != y.name || x.reservation != y.reservation || x.allocation_role != y.allocation_role {
                continue;
            }
            use agora_proto::resources::Value;
            let v = match (&x.value, &y.value) {
                (Value::Scalar(p), Value::Scalar(q)) => Value::Scalar(Fixed(p.0.min(q.0))),
                (Value::Ranges(p), Value::Ranges(q)) => Value::Ranges(p.difference(&p.difference(q))),
                (Value::Set(p), Value::Set(q)) => Value::Set(p.intersection(q).cloned().collect()),
                _ => continue,
            };
            let mut r = x.clone();
            r.value = v;
            out.add_one(r);
        }
    }
    out
}

/// The role tree of one stage of a round, in the order resources are
/// offered: each role node's items (child roles, and the leaf of frameworks
/// subscribed to the role itself) by weighted share, each leaf's frameworks
/// by their share within the role. A grant changes shares along one path
/// only, which `rerank` updates: O(log frameworks + depth × siblings) per
/// grant, plus the walk to the first framework that takes the resources.
///
/// The tree is also the stage's ledger of role figures: each node, leaf and
/// framework keeps what it holds as ranked (taken from the allocator's
/// figures when the tree is built, plus `k` times each grant), with its
/// weight, so that ranking looks nothing up by name; what was granted
/// goes into the allocator's figures once per framework and role, when
/// the stage is done ([`Tree::flush`]). Until then the allocator's role
/// figures are those of the start of the stage.
struct Tree {
    /// `nodes[0]` is the root, above the top-level roles.
    nodes: Vec<RoleNode>,
    leaves: Vec<Leaf>,
    index: HashMap<String, usize>,
    /// What a grant weighs in the ranking: 1, or `k` in a worker of a split
    /// round (see [`Part`]).
    k: i64,
    total: Scalars,
    /// The (leaf, framework) pairs granted something not yet handed over.
    pending: Vec<(usize, usize)>,
}

struct RoleNode {
    parent: usize,
    items: Vec<(u64, Item)>,
    leaf: Option<usize>,
    weight: f64,
    /// What its subtree holds, as ranked.
    held: Scalars,
}

/// What [`Tree::walk`] asks about, in order: whether to enter a role
/// (by node) or a leaf (of a role), and whether a framework of a leaf takes
/// what is offered.
#[derive(Clone, Copy)]
enum Visit<'a> {
    Role(usize),
    Leaf(usize, &'a str),
    Framework(usize, usize, &'a str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Role(usize),
    Leaf(usize),
}

struct Leaf {
    role: String,
    node: usize,
    frameworks: Ranking,
    members: HashMap<usize, Member>,
    /// Frameworks added, not yet ranked ([`Tree::rank_frameworks`]).
    joining: Vec<(usize, Member)>,
    weight: f64,
    /// What the role itself holds, as ranked.
    held: Scalars,
}

/// A leaf's frameworks in order of their keys (shares, then slots): a
/// sorted list while there are few, where moving one after a grant shifts
/// a few entries; a B-tree when there are many, where it would shift
/// thousands.
enum Ranking {
    Few(Vec<(u64, usize)>),
    Many(BTreeSet<(u64, usize)>),
}

enum RankingIter<'a> {
    Few(std::slice::Iter<'a, (u64, usize)>),
    Many(std::collections::btree_set::Iter<'a, (u64, usize)>),
}

impl Iterator for RankingIter<'_> {
    type Item = (u64, usize);

    #[inline]
    fn next(&mut self) -> Option<(u64, usize)> {
        match self {
            RankingIter::Few(i) => i.next().copied(),
            RankingIter::Many(i) => i.next().copied(),
        }
    }
}

/// Up to this many frameworks, a leaf ranks them in a sorted list.
const FEW_FRAMEWORKS: usize = 64;

impl Default for Ranking {
    fn default() -> Ranking {
        Ranking::Few(Vec::new())
    }
}

impl Ranking {
    fn of(mut keys: Vec<(u64, usize)>) -> Ranking {
        if keys.len() <= FEW_FRAMEWORKS {
            keys.sort_unstable();
            Ranking::Few(keys)
        } else {
            Ranking::Many(keys.into_iter().collect())
        }
    }

    fn len(&self) -> usize {
        match self {
            Ranking::Few(v) => v.len(),
            Ranking::Many(b) => b.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// In order.
    #[inline]
    fn iter(&self) -> RankingIter<'_> {
        match self {
            Ranking::Few(v) => RankingIter::Few(v.iter()),
            Ranking::Many(b) => RankingIter::Many(b.iter()),
        }
    }

    /// The entry `(old, f)` takes key `new`.
    fn rekey(&mut self, (old, f): (u64, usize), new: u64) {
        match self {
            Ranking::Few(v) => {
                let at = v.binary_search(&(old, f)).expect("ranked");
                let to = v.partition_point(|&x| x < (new, f));
                if to > at {
                    v[at..to].rotate_left(1);
                    v[to - 1] = (new, f);
                } else {
                    v[to..=at].rotate_right(1);
                    v[to] = (new, f);
                }
            }
            Ranking::Many(b) => {
                b.remove(&(old, f));
                b.insert((new, f));
            }
        }
    }
}

/// A framework in a leaf.
struct Member {
    key: u64,
    /// What it holds under the leaf's role, as ranked.
    held: Scalars,
    /// What the stage granted it there, not yet handed over.
    granted: Scalars,
}

impl Tree {
    fn node(&mut self, a: &Allocator, name: &str) -> usize {
        if self.nodes.is_empty() {
            self.nodes.push(RoleNode {
                parent: 0,
                items: Vec::new(),
                leaf: None,
                weight: 1.0,
                held: Scalars::default(),
            });
        }
        if let Some(&n) = self.index.get(name) {
            return n;
        }
        let parent = match name.rfind('/') {
            Some(i) => self.node(a, &name[..i]),
            None => 0,
        };
        let n = self.nodes.len();
        self.nodes.push(RoleNode {
            parent,
            items: Vec::new(),
            leaf: None,
            weight: a.weight(name),
            held: a.subtree_seen(name),
        });
        self.nodes[parent].items.push((0, Item::Role(n)));
        self.index.insert(name.to_string(), n);
        n
    }

    /// The leaf of `role`, if it has one.
    fn leaf_of(&self, role: &str) -> Option<usize> {
        self.index.get(role).and_then(|&n| self.nodes[n].leaf)
    }

    /// Framework `f` takes part for `role`.
    fn add(&mut self, a: &Allocator, f: usize, role: &str) {
        let n = self.node(a, role);
        let l = match self.nodes[n].leaf {
            Some(l) => l,
            None => {
                let l = self.leaves.len();
                self.leaves.push(Leaf {
                    role: role.to_string(),
                    node: n,
                    frameworks: Ranking::default(),
                    members: HashMap::default(),
                    joining: Vec::new(),
                    weight: a.weight(role),
                    held: a.direct_seen(role),
                });
                self.nodes[n].leaf = Some(l);
                self.nodes[n].items.push((0, Item::Leaf(l)));
                l
            }
        };
        let held = a.framework_seen(f, role);
        let key = share_key(held.dominant_share(&self.total));
        self.leaves[l].joining.push((f, Member { key, held, granted: Scalars::default() }));
    }

    /// Ranks the frameworks that joined each leaf ([`Tree::add`]) all at
    /// once: a set built from a sorted list, and a map sized once, cost less
    /// than as many inserts one by one (building a tree of 1,000 frameworks
    /// took about 0.4 ms that way, 0.25 ms this way).
    fn rank_frameworks(&mut self) {
        for leaf in &mut self.leaves {
            let joining = std::mem::take(&mut leaf.joining);
            debug_assert!(leaf.frameworks.is_empty(), "ranked once");
            leaf.frameworks = Ranking::of(joining.iter().map(|&(f, ref m)| (m.key, f)).collect());
            leaf.members.reserve(joining.len());
            leaf.members.extend(joining);
        }
    }

    /// A role's place among its siblings: its weighted dominant share.
    fn item_key(&self, item: Item) -> u64 {
        let (held, weight) = match item {
            Item::Role(n) => (self.nodes[n].held, self.nodes[n].weight),
            Item::Leaf(l) => (self.leaves[l].held, self.leaves[l].weight),
        };
        share_key(held.dominant_share(&self.total) / weight)
    }

    fn rank_all(&mut self) {
        for n in 0..self.nodes.len() {
            let mut items = std::mem::take(&mut self.nodes[n].items);
            for (k, item) in items.iter_mut() {
                *k = self.item_key(*item);
            }
            items.sort_unstable();
            self.nodes[n].items = items;
        }
    }

    /// The first (leaf, framework) in order for which
    /// `grant(Visit::Framework(..))` succeeds, entering only the roles and
    /// the leaves for which `grant(Visit::Role(..))` and
    /// `grant(Visit::Leaf(..))` do.
    fn walk(&self, n: usize, grant: &mut dyn FnMut(Visit<'_>) -> bool) -> Option<(usize, usize)> {
        for &(_, item) in &self.nodes[n].items {
            match item {
                Item::Role(c) => {
                    if !grant(Visit::Role(c)) {
                        continue;
                    }
                    if let Some(hit) = self.walk(c, grant) {
                        return Some(hit);
                    }
                }
                Item::Leaf(l) => {
                    let leaf = &self.leaves[l];
                    if !grant(Visit::Leaf(l, &leaf.role)) {
                        continue;
                    }
                    for (_, f) in leaf.frameworks.iter() {
                        if grant(Visit::Framework(f, l, &leaf.role)) {
                            return Some((l, f));
                        }
                    }
                }
            }
        }
        None
    }

    /// Whether node `n` is on the path from leaf `l`'s node to the root.
    fn above(&self, n: usize, l: usize) -> bool {
        let mut m = self.leaves[l].node;
        loop {
            if m == n {
                return true;
            }
            if m == 0 {
                return false;
            }
            m = self.nodes[m].parent;
        }
    }

    /// Framework `f` in leaf `l` was granted `s`: its share, the leaf's and
    /// those of the roles above it changed.
    fn rerank(&mut self, l: usize, f: usize, s: Scalars) {
        let (k, total) = (self.k, self.total);
        let ranked = Scalars::default().plus_times(s, k);
        let leaf = &mut self.leaves[l];
        leaf.held.add(ranked);
        let m = leaf.members.get_mut(&f).expect("a framework of the leaf");
        if m.granted == Scalars::default() {
            self.pending.push((l, f));
        }
        m.held.add(ranked);
        m.granted.add(s);
        let new = share_key(m.held.dominant_share(&total));
        leaf.frameworks.rekey((m.key, f), new);
        m.key = new;
        let mut n = leaf.node;
        while n != 0 {
            self.nodes[n].held.add(ranked);
            n = self.nodes[n].parent;
        }
        let mut item = Item::Leaf(l);
        let mut n = self.leaves[l].node;
        loop {
            let key = self.item_key(item);
            let items = &mut self.nodes[n].items;
            if let Some(mut i) = items.iter().position(|(_, x)| *x == item) {
                // Only this key changed: move it to its place.
                items[i].0 = key;
                while i > 0 && items[i] < items[i - 1] {
                    items.swap(i, i - 1);
                    i -= 1;
                }
                while i + 1 < items.len() && items[i + 1] < items[i] {
                    items.swap(i, i + 1);
                    i += 1;
                }
            }
            if n == 0 {
                break;
            }
            item = Item::Role(n);
            n = self.nodes[n].parent;
        }
    }

    /// Hands what the stage granted over to the allocator's role figures,
    /// once per framework and role.
    fn flush(&mut self, a: &mut Allocator) {
        for (l, f) in self.pending.drain(..) {
            let leaf = &mut self.leaves[l];
            if let Some(m) = leaf.members.get_mut(&f) {
                a.account_granted(f, &leaf.role, std::mem::take(&mut m.granted));
            }
        }
    }

    /// In tests: the incremental re-ranking leaves exactly what ranking
    /// everything afresh would, and what the tree holds is the allocator's
    /// figures plus `k` times what it has not handed over.
    #[cfg(test)]
    fn check(&self, a: &Allocator) {
        for (n, node) in self.nodes.iter().enumerate() {
            for &(key, item) in &node.items {
                assert_eq!(key, self.item_key(item), "stale key of {item:?} under node {n}");
            }
            assert!(node.items.windows(2).all(|w| w[0] <= w[1]), "node {n} out of order");
        }
        let mut under = vec![Scalars::default(); self.nodes.len()];
        for leaf in &self.leaves {
            assert_eq!(leaf.frameworks.len(), leaf.members.len());
            let mut pending = Scalars::default();
            assert!(leaf.frameworks.iter().is_sorted(), "{:?} out of order", leaf.role);
            for (key, f) in leaf.frameworks.iter() {
                let m = &leaf.members[&f];
                assert_eq!(key, m.key);
                assert_eq!(key, share_key(m.held.dominant_share(&self.total)), "stale key of framework {f}");
                assert_eq!(m.held, a.framework_seen(f, &leaf.role).plus_times(m.granted, self.k), "framework {f}");
                pending.add(m.granted);
            }
            assert_eq!(leaf.held, a.direct_seen(&leaf.role).plus_times(pending, self.k), "{:?}", leaf.role);
            let mut n = leaf.node;
            while n != 0 {
                under[n].add(pending);
                n = self.nodes[n].parent;
            }
        }
        for (name, &n) in &self.index {
            let held = a.subtree_seen(name).plus_times(under[n], self.k);
            assert_eq!(self.nodes[n].held, held, "{name:?}");
        }
    }
}

/// Asks the CPU to start loading the cache line at `p` (a hint: nothing is
/// read, and no address faults).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the intrinsic needs SSE, which every x86_64 CPU has; a
    // prefetch reads nothing and cannot fault, whatever `p` is. (Newer
    // toolchains declare it safe to call.)
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Orders shares as integers so that ties are broken by slot index.
fn share_key(share: f64) -> u64 {
    (share.clamp(0.0, 1e6) * 1e12) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(s: &str) -> Resources {
        Resources::parse(s).unwrap()
    }

    /// A small data-driven harness: agents and frameworks in, allocations out
    /// as `framework -> agent: resources` lines, sorted.
    struct Check {
        a: Allocator,
    }

    impl Check {
        fn new(agents: &[(&str, &str)], frameworks: &[(&str, &[&str])]) -> Check {
            let mut a = Allocator::new(Config::default());
            for (id, r) in agents {
                a.add_agent(AgentId::new(*id), res(r), &[]);
            }
            for (id, roles) in frameworks {
                a.add_framework(FrameworkId::new(*id), roles.iter().map(|s| s.to_string()).collect(), &[]);
            }
            Check { a }
        }

        fn run(&mut self, now: u64) -> Vec<String> {
            let mut v: Vec<String> = self
                .a
                .allocate(now, None)
                .into_iter()
                .map(|x| format!("{} -> {}: {}", x.framework_id, x.agent_id, x.resources.unallocated()))
                .collect();
            v.sort();
            v
        }
    }

    /// Rounds split among up to `workers` workers, however few the agents.
    fn parallel(workers: usize) -> Config {
        Config { workers, min_agents_per_worker: 1, ..Config::default() }
    }

    /// `n` identical agents named a0.. .
    fn agents(n: usize) -> Vec<(String, &'static str)> {
        (0..n).map(|i| (format!("a{i}"), "cpus:1;mem:100")).collect()
    }

    fn count(out: &[String], f: &str) -> usize {
        out.iter().filter(|l| l.starts_with(&format!("{f} ->"))).count()
    }

    #[test]
    fn sibling_roles_share_first_then_frameworks_within_a_role() {
        let agents = agents(12);
        let agents: Vec<(&str, &str)> = agents.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        // Three frameworks in `eng`, one in `ops`: the roles split the cluster,
        // then `eng`'s half is split among its three.
        let mut c = Check::new(&agents, &[("e1", &["eng"]), ("e2", &["eng"]), ("e3", &["eng"]), ("o1", &["ops"])]);
        let out = c.run(0);
        assert_eq!(count(&out, "o1"), 6, "{out:?}");
        for f in ["e1", "e2", "e3"] {
            assert_eq!(count(&out, f), 2, "{out:?}");
        }
        let (_, eng) = c.a.role_share("eng");
        let (_, ops) = c.a.role_share("ops");
        assert!((eng - 0.5).abs() < 1e-9 && (ops - 0.5).abs() < 1e-9, "{eng} {ops}");
    }

    #[test]
    fn weights_split_siblings_in_proportion() {
        let agents = agents(12);
        let agents: Vec<(&str, &str)> = agents.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        let mut c = Check::new(&agents, &[("e1", &["eng"]), ("o1", &["ops"])]);
        c.a.set_weight("eng", 3.0);
        let out = c.run(0);
        assert_eq!((count(&out, "e1"), count(&out, "o1")), (9, 3), "{out:?}");
        assert_eq!(c.a.weight("eng"), 3.0);
        assert_eq!(c.a.weight("ops"), 1.0);
        // Nonsense weights are ignored.
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            c.a.set_weight("ops", w);
            assert_eq!(c.a.weight("ops"), 1.0);
        }
    }

    #[test]
    fn the_tree_is_fair_level_by_level() {
        let agents = agents(16);
        let agents: Vec<(&str, &str)> = agents.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        // `eng` and `ops` halve the cluster; within `eng`, `eng/dev`,
        // `eng/ci` and a framework of `eng` itself (its own leaf) take a
        // third each of eng's half... as near as 8 agents allow.
        let mut c = Check::new(
            &agents,
            &[("dev", &["eng/dev"]), ("ci", &["eng/ci"]), ("lead", &["eng"]), ("o1", &["ops"]), ("o2", &["ops"])],
        );
        let out = c.run(0);
        assert_eq!(count(&out, "o1") + count(&out, "o2"), 8, "{out:?}");
        assert_eq!((count(&out, "o1"), count(&out, "o2")), (4, 4), "{out:?}");
        let eng: Vec<usize> = ["dev", "ci", "lead"].iter().map(|f| count(&out, f)).collect();
        assert_eq!(eng.iter().sum::<usize>(), 8, "{out:?}");
        assert!(eng.iter().all(|&n| (2..=3).contains(&n)), "{eng:?}");
        // The subtree of `eng` holds what its children and own leaf hold.
        let (eng_total, _) = c.a.role_share("eng");
        let parts: i64 = ["eng/dev", "eng/ci"].iter().map(|r| c.a.role_share(r).0 .0[0]).sum::<i64>()
            + c.a.direct.get("eng").map(|s| s.0[0]).unwrap_or(0);
        assert_eq!(eng_total.0[0], parts);
    }

    #[test]
    fn offer_constraints_choose_agents_per_role() {
        let mut c = Check::new(
            &[("a1", "cpus:1;mem:100"), ("a2", "cpus:1;mem:100"), ("a3", "cpus:1;mem:100")],
            &[("picky", &["eng"]), ("any", &["ops"])],
        );
        let attrs = |zone: Option<&str>| zone.map(|z| vec![("zone".to_string(), z.to_string())]).unwrap_or_default();
        c.a.set_agent_attributes(&AgentId::new("a1"), "h1", attrs(Some("z1")));
        c.a.set_agent_attributes(&AgentId::new("a2"), "h2", attrs(Some("z2")));
        c.a.set_agent_attributes(&AgentId::new("a3"), "h3", attrs(None));
        let z1 = AttributeConstraint {
            selector: Selector::Attribute("zone".into()),
            predicate: Predicate::TextEquals("z1".into()),
        };
        c.a.set_offer_constraints(&FrameworkId::new("picky"), [("eng".to_string(), vec![vec![z1]])].into());
        let out = c.run(0);
        assert!(out.contains(&"picky -> a1: cpus:1; mem:100".to_string()), "{out:?}");
        assert_eq!(count(&out, "picky"), 1, "{out:?}");
        assert_eq!(count(&out, "any"), 2, "{out:?}");
        // Predicates on present and absent attributes, and the hostname.
        let holds = |p: Predicate, host: &str, zone: Option<&str>| {
            let sel = if matches!(p, Predicate::TextMatches(_)) {
                Selector::Hostname
            } else {
                Selector::Attribute("zone".into())
            };
            AttributeConstraint { selector: sel, predicate: p }.holds(host, &attrs(zone))
        };
        assert!(holds(Predicate::Exists, "h", Some("z1")) && !holds(Predicate::Exists, "h", None));
        assert!(holds(Predicate::NotExists, "h", None) && !holds(Predicate::NotExists, "h", Some("z1")));
        assert!(holds(Predicate::TextNotEquals("z1".into()), "h", None));
        assert!(!holds(Predicate::TextNotEquals("z1".into()), "h", Some("z1")));
        assert!(!holds(Predicate::TextEquals("z1".into()), "h", None));
        let re = regex::Regex::new("^(?:web-[0-9]+)$").unwrap();
        assert!(holds(Predicate::TextMatches(re.clone()), "web-12", None));
        assert!(!holds(Predicate::TextMatches(re), "web-12x", None));
    }

    #[test]
    fn quota_limits_cap_a_role_and_its_subtree() {
        let agents = agents(10);
        let agents: Vec<(&str, &str)> = agents.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        let mut c = Check::new(&agents, &[("dev", &["eng/dev"]), ("ci", &["eng/ci"]), ("o1", &["ops"])]);
        // eng (both children together) at most 2.5 cpus; ops at most 300 MB
        // (and 3 cpus: a role limited only on memory may still take cpus).
        c.a.set_limits("eng", Quantities([Some(2500), None, None, None]));
        c.a.set_limits("ops", Quantities([Some(3000), Some(300_000), None, None]));
        c.run(0);
        let (eng, _) = c.a.role_share("eng");
        let (ops, _) = c.a.role_share("ops");
        assert_eq!(eng.0[0], 2500, "eng gets up to its limit, a part of an agent included");
        assert_eq!(ops.0[1], 300_000, "ops up to its memory limit");
        // A role at its cpu limit gets no memory-only offers: eng holds the
        // memory of the three agents whose cpus it got, no more.
        assert_eq!(eng.0[1], 300_000, "{eng:?}");
        // Agents are left, but nothing more for them, however long we go on.
        assert!(c.a.total().0[0] - eng.0[0] - ops.0[0] >= 3000);
        assert!(c.run(1).is_empty());
        assert_eq!(c.a.role_share("eng").0 .0[0], 2500);
        // Raising the limit lets eng grow; clearing it removes the cap.
        c.a.set_limits("eng", Quantities([Some(3000), None, None, None]));
        c.run(2);
        assert_eq!(c.a.role_share("eng").0 .0[0], 3000);
        c.a.set_limits("eng", Quantities::default());
        assert_eq!(c.a.limits("eng"), Quantities::default());
        c.run(3);
        assert!(c.a.role_share("eng").0 .0[0] > 3000);
    }

    #[test]
    fn quota_keeps_a_roles_reserved_resources_before_unreserved_ones() {
        let mut c = Check::new(&[("a1", "cpus:1;cpus(eng):2;mem:100")], &[("e", &["eng"]), ("o", &["ops"])]);
        c.a.set_limits("eng", Quantities([Some(1000), None, None, None]));
        let out = c.a.allocate(0, None);
        let eng = out.iter().find(|x| x.role == "eng").expect("eng offered");
        let reserved: Resources = eng.resources.filter(|r| r.reservation.is_some());
        assert_eq!(reserved.scalar("cpus").0, 1000, "{}", eng.resources);
        assert_eq!(eng.resources.scalar("cpus").0, 1000, "{}", eng.resources);
        let ops = out.iter().find(|x| x.role == "ops").expect("the unreserved cpu goes to ops");
        assert_eq!(ops.resources.scalar("cpus").0, 1000);
    }

    fn cpus(n: i64) -> Quantities {
        Quantities([Some(n * 1000), None, None, None])
    }

    fn held(c: &Check, role: &str) -> i64 {
        c.a.role_share(role).0 .0[0] / 1000
    }

    #[test]
    fn guarantees_come_before_weights() {
        let agents = agents(10);
        let agents: Vec<(&str, &str)> = agents.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        // By weight, ops would take 9 of the 10 agents; eng is guaranteed 4.
        let mut c = Check::new(&agents, &[("e", &["eng"]), ("o", &["ops"])]);
        c.a.set_weight("ops", 9.0);
        c.a.set_guarantees("eng", cpus(4));
        let out = c.run(0);
        assert_eq!((count(&out, "e"), count(&out, "o")), (4, 6), "{out:?}");
        // Without the guarantee, the weights decide.
        let mut c = Check::new(&agents, &[("e", &["eng"]), ("o", &["ops"])]);
        c.a.set_weight("ops", 9.0);
        let out = c.run(0);
        assert_eq!((count(&out, "e"), count(&out, "o")), (1, 9), "{out:?}");
    }

    #[test]
    fn headroom_is_held_back_for_a_guarantee_nobody_uses_yet() {
        let agents = agents(10);
        let agents: Vec<(&str, &str)> = agents.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        let mut c = Check::new(&agents, &[("o", &["ops"])]);
        c.a.set_guarantees("eng", cpus(4));
        // eng has no framework yet: ops gets all but eng's 4, however
        // many rounds go by.
        assert_eq!(count(&c.run(0), "o"), 6);
        assert!(c.run(1).is_empty());
        // A framework of eng/dev comes: the guarantee of eng covers it.
        c.a.add_framework(FrameworkId::new("d"), vec!["eng/dev".into()], &[]);
        assert_eq!(count(&c.run(2), "d"), 4);
        assert_eq!(c.a.short_roles(), Vec::<String>::new());
        // Part of a guarantee: an agent is cut to what is still owed, and
        // the rest stays free beyond it.
        let mut c = Check::new(&[("a1", "cpus:4;mem:400")], &[("d", &["eng/dev"]), ("o", &["ops"])]);
        c.a.set_guarantees("eng", cpus(1));
        c.a.set_weight("ops", 100.0);
        let out = c.run(0);
        assert_eq!(held(&c, "eng"), 1, "{out:?}");
        assert_eq!(held(&c, "ops"), 3, "{out:?}");
        // What a framework gets in both stages is one offer.
        let mut c = Check::new(&[("a1", "cpus:4;mem:400")], &[("d", &["eng/dev"])]);
        c.a.set_guarantees("eng", cpus(1));
        assert_eq!(c.run(0), vec!["d -> a1: cpus:4; mem:400"]);
    }

    #[test]
    fn free_totals_follow_every_change_to_the_agents() {
        let mut a = Allocator::new(parallel(2));
        a.set_guarantees("eng", cpus(3));
        a.add_framework(FrameworkId::new("e"), vec!["eng".into()], &[]);
        a.add_framework(FrameworkId::new("o"), vec!["ops".into()], &[]);
        let id = |i: usize| AgentId::new(format!("a{i}"));
        for i in 0..6 {
            let text = if i % 2 == 0 { "cpus:4;mem:400;cpus(eng):2;mem(eng):100" } else { "cpus:4;mem:400" };
            a.add_agent(id(i), res(text), &[]);
        }
        a.check_free_totals();
        assert_eq!(a.free_totals.unreserved.0[0], 24_000);
        assert_eq!(a.free_totals.reserved["eng"].0[0], 6_000);
        let used = res("cpus:1;mem:10").allocate_to("ops");
        a.add_used(&FrameworkId::new("o"), &id(1), &used);
        a.check_free_totals();
        assert_eq!(a.free_totals.unreserved.0[0], 23_000);
        a.set_agent_active(&id(2), false);
        a.check_free_totals();
        assert_eq!(a.free_totals.reserved["eng"].0[0], 4_000);
        let to = Resources::from_vec(vec![agora_proto::resources::Resource::scalar("cpus", 1.0)
            .reserved_to("ops", agora_proto::resources::ReservationKind::Dynamic)]);
        a.convert(&id(3), None, &res("cpus:1"), &to);
        a.check_free_totals();
        assert_eq!(a.free_totals.reserved["ops"].0[0], 1_000);
        // A split round (its parts' changes added in), then a serial one.
        let out = a.allocate(0, None);
        assert!(a.stats.parallel_runs > 0 && !out.is_empty());
        a.check_free_totals();
        assert_eq!(a.free_totals.unreserved, Scalars::default());
        a.set_agent_active(&id(2), true);
        a.check_free_totals();
        assert!(!a.allocate(0, Some(&[id(2)])).is_empty());
        a.check_free_totals();
        for x in &out {
            a.recover(&x.framework_id, &x.agent_id, &x.resources, 0, 0);
            a.check_free_totals();
        }
        a.remove_framework(&FrameworkId::new("e"));
        a.check_free_totals();
        a.remove_agent(&id(0));
        a.check_free_totals();
        // Added again under the same id: the old one's sums go first.
        a.add_agent(id(4), res("cpus:8;mem:800"), &[]);
        a.check_free_totals();
        // Only a2's reservation is left, free again with its holder gone.
        assert_eq!(a.free_totals.reserved["eng"].0[0], 2_000);
    }

    #[test]
    fn unallocated_reservations_count_toward_a_guarantee() {
        // eng has 2 cpus reserved and a guarantee of 3: only 1 more cpu is
        // held back for it.
        let mut c = Check::new(&[("a1", "cpus(eng):2;mem(eng):200"), ("a2", "cpus:4;mem:400")], &[("o", &["ops"])]);
        c.a.set_guarantees("eng", cpus(3));
        c.run(0);
        assert_eq!(held(&c, "ops"), 3);
        let consumption = c.a.consumption();
        assert_eq!(consumption.of("eng").0[0], 2000);
        assert_eq!(consumption.of("ops").0[0], 3000);
        assert_eq!(c.a.short_roles(), vec!["eng".to_string()]);
        // Nothing for ops on the reserved agent either.
        assert!(c.run(1).is_empty());
    }

    #[test]
    fn a_parents_guarantee_is_met_through_a_child_whose_own_is_met() {
        let agents = agents(10);
        let agents: Vec<(&str, &str)> = agents.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        let mut c = Check::new(&agents, &[("d", &["eng/dev"]), ("o", &["ops"])]);
        c.a.set_weight("ops", 100.0);
        c.a.set_guarantees("eng", cpus(5));
        c.a.set_guarantees("eng/dev", cpus(2));
        let out = c.run(0);
        // dev's own guarantee bounds what stage one gives it (2); eng's
        // other 3, held back as headroom, go to dev in stage two: they count
        // toward eng's guarantee. ops gets the rest.
        assert_eq!(count(&out, "d"), 5, "{out:?}");
        assert_eq!(count(&out, "o"), 5, "{out:?}");
        assert!(c.a.short_roles().is_empty());
    }

    #[test]
    fn optimistic_copies_go_to_the_next_frameworks_that_can_take_all_of_it() {
        let mut c = Check::new(
            &[("a1", "cpus:1;mem:100"), ("a2", "cpus(eng):1;mem(eng):100")],
            &[("e1", &["eng"]), ("e2", &["eng"]), ("o", &["ops"])],
        );
        c.a.config.optimistic = 2;
        // e2 refused a1 a while ago.
        c.a.recover(&FrameworkId::new("e2"), &AgentId::new("a1"), &res("cpus:1;mem:100"), 60_000, 0);
        let out = c.a.allocate(1, None);
        assert_eq!(out.len(), 2, "{out:?}");
        for x in &out {
            let mut named: Vec<&str> = x.also.iter().map(|(f, _)| f.value.as_str()).collect();
            named.push(x.framework_id.value.as_str());
            named.sort_unstable();
            match x.agent_id.value.as_str() {
                // Unreserved: everyone but the framework that refused it.
                "a1" => assert_eq!(named, ["e1", "o"], "{x:?}"),
                // Reserved to eng: only eng's frameworks.
                _ => assert_eq!(named, ["e1", "e2"], "{x:?}"),
            }
            assert!(!x.also.iter().any(|(f, _)| f == &x.framework_id));
        }
        // Pessimistic: no copies.
        c.a.config.optimistic = 0;
        for x in &out {
            c.a.recover(&x.framework_id, &x.agent_id, &x.resources, 0, 2);
        }
        assert!(c.a.allocate(3, None).iter().all(|x| x.also.is_empty()));
    }

    #[test]
    fn role_figures_follow_recover_and_removal() {
        let mut c = Check::new(&[("a1", "cpus:2;mem:100"), ("a2", "cpus:2;mem:100")], &[("d", &["eng/dev"])]);
        assert_eq!(c.run(0).len(), 2);
        assert_eq!(c.a.role_share("eng").0 .0[0], 4000);
        let held = c.a.allocated(&FrameworkId::new("d"), &AgentId::new("a1"));
        c.a.recover(&FrameworkId::new("d"), &AgentId::new("a1"), &held, 0, 0);
        assert_eq!(c.a.role_share("eng").0 .0[0], 2000);
        assert_eq!(c.a.role_share("eng/dev").0 .0[0], 2000);
        c.a.remove_agent(&AgentId::new("a2"));
        assert!(c.a.subtree.is_empty() && c.a.direct.is_empty(), "{:?} {:?}", c.a.subtree, c.a.direct);
        assert_eq!(c.run(0).len(), 1);
        c.a.remove_framework(&FrameworkId::new("d"));
        assert!(c.a.subtree.is_empty() && c.a.direct.is_empty(), "{:?} {:?}", c.a.subtree, c.a.direct);
    }

    proptest::proptest! {
        /// Random role trees, weights and clusters: every round re-ranks
        /// incrementally what a full ranking would give (checked after
        /// every grant, with the tree's figures), and the role figures
        /// always add up.
        #[test]
        fn ranking_and_role_figures_stay_consistent(
            roles in proptest::collection::vec(0usize..6, 1..8),
            weights in proptest::collection::vec(1u32..5, 6),
            agents in 1usize..12,
            rounds in 1usize..4,
            workers in 1usize..4,
        ) {
            const TREE: [&str; 6] = ["a", "a/b", "a/c", "b", "b/x/y", "c"];
            let mut a = Allocator::new(parallel(workers));
            for (i, w) in weights.iter().enumerate() {
                a.set_weight(TREE[i], *w as f64);
            }
            for (f, r) in roles.iter().enumerate() {
                a.add_framework(FrameworkId::new(format!("f{f}")), vec![TREE[*r].to_string()], &[]);
            }
            for i in 0..agents {
                a.add_agent(AgentId::new(format!("a{i}")), res(&format!("cpus:{};mem:{}", 1 + i % 3, 100 * (1 + i % 2))), &[]);
            }
            for round in 0..rounds {
                let out = a.allocate(round as u64, None);
                // Give some back, to move shares both ways.
                for x in out.iter().step_by(2) {
                    a.recover(&x.framework_id, &x.agent_id, &x.resources, 0, round as u64);
                }
            }
            let mut direct_sum = Scalars::default();
            for s in a.direct.values() {
                direct_sum.add(*s);
            }
            let mut fw_sum = Scalars::default();
            for f in a.frameworks.iter().flatten() {
                fw_sum.add(f.allocated);
            }
            proptest::prop_assert_eq!(direct_sum, fw_sum);
            for (role, s) in &a.subtree {
                let mut under = Scalars::default();
                for (r, d) in &a.direct {
                    if r == role || r.starts_with(&format!("{role}/")) {
                        under.add(*d);
                    }
                }
                proptest::prop_assert_eq!(*s, under, "subtree of {}", role);
            }
        }

        /// Random clusters with static and dynamic reservations (some made
        /// between rounds, as RESERVE does), quota limits and frameworks in
        /// a role tree: reserved resources go only to their role, no role's
        /// subtree passes a limit, and no agent has more allocated than it
        /// has.
        #[test]
        fn offers_respect_reservations_limits_and_agents(
            roles in proptest::collection::vec(0usize..6, 1..8),
            limited in proptest::collection::vec((0usize..6, 0u32..6), 0..3),
            agents in proptest::collection::vec((1u32..4, 0usize..7, 0u32..3), 1..10),
            reserves in proptest::collection::vec((0usize..10, 0usize..6), 0..4),
            rounds in 1usize..4,
            workers in 1usize..4,
            optimistic in 0usize..2,
        ) {
            const TREE: [&str; 6] = ["a", "a/b", "a/c", "b", "b/x/y", "c"];
            let mut a = Allocator::new(Config { optimistic, ..parallel(workers) });
            let mut limits: HashMap<&str, i64> = HashMap::default();
            for (r, cpus) in &limited {
                a.set_limits(TREE[*r], Quantities([Some(*cpus as i64 * 1000), None, None, None]));
                limits.insert(TREE[*r], *cpus as i64 * 1000);
            }
            for (f, r) in roles.iter().enumerate() {
                a.add_framework(FrameworkId::new(format!("f{f}")), vec![TREE[*r].to_string()], &[]);
            }
            for (i, (cpus, role, reserved)) in agents.iter().enumerate() {
                // Role index 6: nothing reserved.
                let text = match TREE.get(*role) {
                    Some(r) if *reserved > 0 => format!("cpus:{cpus};mem:100;cpus({r}):{reserved};mem({r}):50"),
                    _ => format!("cpus:{cpus};mem:100"),
                };
                a.add_agent(AgentId::new(format!("a{i}")), res(&text), &[]);
            }
            for round in 0..rounds {
                for (agent, role) in &reserves {
                    let id = AgentId::new(format!("a{}", agent % agents.len()));
                    let from = res("cpus:1");
                    if a.available(&id).is_some_and(|av| av.contains(&from)) {
                        let to = Resources::from_vec(vec![
                            agora_proto::resources::Resource::scalar("cpus", 1.0)
                                .reserved_to(TREE[*role], agora_proto::resources::ReservationKind::Dynamic),
                        ]);
                        a.convert(&id, None, &from, &to);
                    }
                }
                // Odd rounds over every other agent only, as after events.
                let some: Vec<AgentId> = (0..agents.len()).step_by(2).map(|i| AgentId::new(format!("a{i}"))).collect();
                let out = a.allocate(round as u64, (round % 2 == 1).then_some(some.as_slice()));
                for x in &out {
                    for r in x.resources.iter() {
                        if let Some(res) = &r.reservation {
                            proptest::prop_assert_eq!(&res.role, &x.role, "{} offered to {}", r, x.role);
                        }
                    }
                }
                for (role, limit) in &limits {
                    let held = a.subtree.get(*role).map(|s| s.0[0]).unwrap_or(0);
                    proptest::prop_assert!(held <= *limit, "{} holds {} cpus, limit {}", role, held, limit);
                }
                for slot in a.agents.iter().flatten() {
                    let mut sum = Resources::new();
                    for f in slot.allocated.keys() {
                        sum.add(&slot.held(*f, &a.role_names).expect("held").unallocated());
                    }
                    proptest::prop_assert!(slot.total.contains(&sum), "{} of {}", sum, slot.total);
                    // What a round took from `free` in place is what
                    // working it out afresh gives.
                    let mut free = slot.total.clone();
                    free.subtract(&sum).expect("contained");
                    proptest::prop_assert_eq!(&slot.free, &free);
                    proptest::prop_assert_eq!(&slot.free_sums, &FreeSums::of(&free));
                }
                // And the free totals, what the agents' sums add up to.
                a.check_free_totals();
                for x in out.iter().step_by(2) {
                    a.recover(&x.framework_id, &x.agent_id, &x.resources, 0, round as u64);
                }
            }
        }

        /// Random guarantees on a role tree (children's within their
        /// parent's, the top-most within the cluster's unreserved cpus),
        /// frameworks in some roles, agents with reservations: after every
        /// round the headroom holds (unreserved free cpus cover the top-most
        /// roles' shortfalls), and a top-most guaranteed role with a
        /// framework under it has its guarantee.
        #[test]
        fn guarantees_are_met_and_headroom_holds(
            roles in proptest::collection::vec(0usize..6, 1..8),
            guaranteed in proptest::collection::vec((0usize..6, 0u32..4), 0..4),
            agents in proptest::collection::vec((1u32..4, 0usize..7), 1..10),
            rounds in 1usize..4,
            workers in 1usize..4,
        ) {
            const TREE: [&str; 6] = ["a", "a/b", "a/c", "b", "b/x/y", "c"];
            let mut a = Allocator::new(parallel(workers));
            let mut unreserved = 0i64;
            for (i, (cpus, role)) in agents.iter().enumerate() {
                let text = match TREE.get(*role) {
                    Some(r) => format!("cpus:{cpus};mem:100;cpus({r}):1;mem({r}):50"),
                    None => format!("cpus:{cpus};mem:100"),
                };
                unreserved += *cpus as i64 * 1000;
                a.add_agent(AgentId::new(format!("a{i}")), res(&text), &[]);
            }
            // Guarantees that nest and fit: each is at most what is left of
            // its nearest guaranteed ancestor's (or the cluster's).
            let mut set: HashMap<&str, i64> = HashMap::default();
            for (r, cpus) in &guaranteed {
                let role = TREE[*r];
                if set.contains_key(role) || set.keys().any(|g| on_path(role, g)) {
                    continue;
                }
                let parent = set.keys().filter(|g| on_path(g, role)).max_by_key(|g| g.len()).copied();
                let under = |p: Option<&str>| -> i64 {
                    set.iter().filter(|(g, _)| match p {
                        Some(p) => on_path(p, g) && **g != p && !set.keys().any(|m| *m != p && **g != *m && on_path(p, m) && on_path(m, g)),
                        None => !set.keys().any(|m| *m != **g && on_path(m, g)),
                    }).map(|(_, v)| *v).sum()
                };
                let room = match parent {
                    Some(p) => set[p] - under(Some(p)),
                    None => unreserved - under(None),
                };
                let g = (*cpus as i64 * 1000).min(room);
                if g > 0 {
                    set.insert(role, g);
                    a.set_guarantees(role, Quantities([Some(g), None, None, None]));
                }
            }
            for (f, r) in roles.iter().enumerate() {
                a.add_framework(FrameworkId::new(format!("f{f}")), vec![TREE[*r].to_string()], &[]);
            }
            for round in 0..rounds {
                let out = a.allocate(round as u64, None);
                let g = Guarantees::new(&a);
                if let Some(g) = &g {
                    let owed: i64 = g.roles.iter().filter(|r| r.top).map(|r| r.shortfall(0).unwrap_or(0)).sum();
                    proptest::prop_assert!(g.free.0[0] >= owed, "free {} < owed {}", g.free.0[0], owed);
                    for r in g.roles.iter().filter(|r| r.top) {
                        let demand = roles.iter().any(|f| on_path(&r.name, TREE[*f]));
                        if demand {
                            proptest::prop_assert_eq!(r.shortfall(0), Some(0), "{} is owed", r.name);
                        }
                    }
                }
                for x in out.iter().step_by(2) {
                    a.recover(&x.framework_id, &x.agent_id, &x.resources, 0, round as u64);
                }
            }
        }

        /// The walk passes over, on sums alone, agents and leaves it would
        /// find nothing in (every leaf at its cpu limit, a leaf whose room
        /// could not hold an offer, reservations no leaf may take, roles
        /// whose leaves are all at their cpu limits or have no
        /// reservations where nothing else is left): rounds
        /// with those shortcuts and without them make the same offers, in
        /// the same order, under random limits, guarantees and
        /// reservations.
        #[test]
        fn passing_over_on_sums_changes_no_offer(
            roles in proptest::collection::vec(0usize..6, 1..8),
            limited in proptest::collection::vec((0usize..6, 0u32..6), 0..3),
            guaranteed in proptest::collection::vec((0usize..6, 0u32..4), 0..3),
            agents in proptest::collection::vec((0u32..8, 0usize..7, 0u32..3), 1..10),
            rounds in 1usize..4,
        ) {
            const TREE: [&str; 6] = ["a", "a/b", "a/c", "b", "b/x/y", "c"];
            let build = || {
                let mut a = Allocator::new(Config::default());
                for (r, cpus) in &limited {
                    a.set_limits(TREE[*r], Quantities([Some(*cpus as i64 * 1000), None, None, None]));
                }
                for (r, cpus) in &guaranteed {
                    a.set_guarantees(TREE[*r], Quantities([Some(*cpus as i64 * 1000), None, None, None]));
                }
                for (f, r) in roles.iter().enumerate() {
                    a.add_framework(FrameworkId::new(format!("f{f}")), vec![TREE[*r].to_string()], &[]);
                }
                // Halves of cpus, so that what is left under a limit can
                // be less than one; none, so that memory (or what is
                // reserved) comes without unreserved cpus.
                for (i, (halves, role, reserved)) in agents.iter().enumerate() {
                    let cpus = match halves {
                        0 => String::new(),
                        h => format!("cpus:{};", *h as f64 / 2.0),
                    };
                    let text = match TREE.get(*role) {
                        Some(r) if *reserved > 0 => format!("{cpus}mem:100;cpus({r}):{reserved};mem({r}):50"),
                        _ => format!("{cpus}mem:100"),
                    };
                    a.add_agent(AgentId::new(format!("a{i}")), res(&text), &[]);
                }
                a
            };
            let (mut with, mut without) = (build(), build());
            let show = |out: &[Allocation]| -> Vec<String> {
                out.iter().map(|x| format!("{} {} {} {}", x.framework_id, x.agent_id, x.role, x.resources)).collect()
            };
            // Set for one round, and unset however it ends.
            struct Without;
            impl Drop for Without {
                fn drop(&mut self) {
                    NO_SHORTCUTS.with(|n| n.set(false));
                }
            }
            for round in 0..rounds {
                let a = with.allocate(round as u64, None);
                let b = {
                    NO_SHORTCUTS.with(|n| n.set(true));
                    let _unset = Without;
                    without.allocate(round as u64, None)
                };
                proptest::prop_assert_eq!(show(&a), show(&b));
                for (x, y) in a.iter().zip(&b).step_by(2) {
                    with.recover(&x.framework_id, &x.agent_id, &x.resources, 0, round as u64);
                    without.recover(&y.framework_id, &y.agent_id, &y.resources, 0, round as u64);
                }
            }
        }

        /// A leaf's ranking, a sorted list or a B-tree by its size, keeps
        /// its frameworks in order of their keys as they change: it matches
        /// a sorted set put through the same changes.
        #[test]
        fn a_ranking_stays_in_order_as_keys_change(
            keys in proptest::collection::vec(0u64..50, 0..150),
            changes in proptest::collection::vec((0usize..150, 0u64..60), 0..300),
        ) {
            let entries: Vec<(u64, usize)> = keys.iter().copied().zip(0..).collect();
            let mut ranking = Ranking::of(entries.clone());
            proptest::prop_assert_eq!(matches!(ranking, Ranking::Few(_)), keys.len() <= FEW_FRAMEWORKS);
            let mut model: BTreeSet<(u64, usize)> = entries.iter().copied().collect();
            let mut key_of: Vec<u64> = keys.clone();
            for (f, new) in changes {
                if f >= key_of.len() {
                    continue;
                }
                ranking.rekey((key_of[f], f), new);
                model.remove(&(key_of[f], f));
                model.insert((new, f));
                key_of[f] = new;
                proptest::prop_assert_eq!(ranking.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            }
            proptest::prop_assert_eq!(ranking.len(), keys.len());
        }

        /// A split round leaves nothing that a serial round would offer
        /// right after it: the serial pass after the workers offers all that
        /// a part's room left unused, and passes over only agents no role
        /// may take anything of. Random limits, guarantees, reservations,
        /// suppressed roles and agents with and without unreserved cpus.
        #[test]
        fn a_split_round_leaves_nothing_a_serial_round_would_offer(
            roles in proptest::collection::vec((0usize..6, proptest::bool::weighted(0.2)), 1..8),
            limited in proptest::collection::vec((0usize..6, 0u32..8, proptest::option::of(0u32..4)), 0..4),
            guaranteed in proptest::collection::vec((0usize..6, 0u32..4), 0..3),
            agents in proptest::collection::vec(
                ((0u32..6, proptest::bool::weighted(0.8)), (0usize..7, 0u32..3), 0usize..8),
                2..16,
            ),
            workers in 2usize..4,
        ) {
            const TREE: [&str; 6] = ["a", "a/b", "a/c", "b", "b/x/y", "c"];
            let mut a = Allocator::new(parallel(workers));
            for (r, cpus, mem) in &limited {
                let mem = mem.map(|m| m as i64 * 100_000);
                a.set_limits(TREE[*r], Quantities([Some(*cpus as i64 * 1000), mem, None, None]));
            }
            for (r, cpus) in &guaranteed {
                a.set_guarantees(TREE[*r], Quantities([Some(*cpus as i64 * 1000), None, None, None]));
            }
            for (f, (r, suppressed)) in roles.iter().enumerate() {
                let suppressed: &[String] = if *suppressed { &[TREE[*r].to_string()] } else { &[] };
                a.add_framework(FrameworkId::new(format!("f{f}")), vec![TREE[*r].to_string()], suppressed);
            }
            // Unreserved cpus (or none) and memory (or none); cpus and
            // memory reserved to one role (or none); memory alone
            // reserved to another (or none).
            for (i, ((cpus, mem), (role, reserved), other)) in agents.iter().enumerate() {
                let mut parts = Vec::new();
                if *cpus > 0 {
                    parts.push(format!("cpus:{cpus}"));
                }
                if *mem {
                    parts.push("mem:100".to_string());
                }
                if let Some(r) = TREE.get(*role) {
                    if *reserved > 0 {
                        parts.push(format!("cpus({r}):{reserved};mem({r}):50"));
                    }
                }
                if let Some(r) = TREE.get(*other).filter(|r| Some(*r) != TREE.get(*role)) {
                    parts.push(format!("mem({r}):50"));
                }
                if parts.is_empty() {
                    parts.push("mem:100".to_string());
                }
                a.add_agent(AgentId::new(format!("a{i}")), res(&parts.join(";")), &[]);
            }
            a.allocate(0, None);
            proptest::prop_assert_eq!(a.stats.parallel_runs, 1);
            a.config.workers = 1;
            let more = a.allocate(0, None);
            proptest::prop_assert!(more.is_empty(), "{:?}", more.iter().map(|x| format!("{} {} {}", x.framework_id, x.agent_id, x.resources)).collect::<Vec<_>>());
        }

        /// Steady demand from one framework per sibling role, on many small
        /// agents: the weighted dominant shares end up equal, within what
        /// one agent weighs.
        #[test]
        fn shares_converge_to_weights(weights in proptest::collection::vec(1u32..5, 2..4)) {
            let mut a = Allocator::new(Config::default());
            let n = 120;
            for i in 0..n {
                a.add_agent(AgentId::new(format!("a{i}")), res("cpus:1;mem:100"), &[]);
            }
            for (i, w) in weights.iter().enumerate() {
                a.set_weight(&format!("r{i}"), *w as f64);
                a.add_framework(FrameworkId::new(format!("f{i}")), vec![format!("r{i}")], &[]);
            }
            a.allocate(0, None);
            let shares: Vec<f64> = (0..weights.len()).map(|i| a.role_share(&format!("r{i}")).1).collect();
            let (lo, hi) = shares.iter().fold((f64::MAX, 0f64), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
            // One agent is 1/n of the cluster; weighted, at most 1/n per role.
            proptest::prop_assert!(hi - lo <= 1.0 / n as f64 + 1e-9, "{:?} with weights {:?}", shares, weights);
        }

        /// The fairness bound of parallel rounds (see the module's notes):
        /// frameworks of one role that take anything, on agents and with
        /// starting holdings all in the cluster's proportions (so that
        /// shares add up), split among `k` workers. After the round, a
        /// framework granted something is ahead of any other by no more
        /// than it was before (if it was) plus `k` times the largest
        /// grant's share. With one worker this is serial DRF's bound.
        #[test]
        fn parallel_rounds_stay_within_k_grants_of_fair(
            held in proptest::collection::vec(0u32..24, 2..12),
            sizes in proptest::collection::vec(1u32..5, 4..64),
            workers in 1usize..4,
        ) {
            let mut a = Allocator::new(parallel(workers));
            let used: u32 = held.iter().sum();
            if used > 0 {
                a.add_agent(AgentId::new("used"), res(&format!("cpus:{used};mem:{}", used * 100)), &[]);
            }
            for (i, c) in sizes.iter().enumerate() {
                a.add_agent(AgentId::new(format!("a{i}")), res(&format!("cpus:{c};mem:{}", c * 100)), &[]);
            }
            for (f, h) in held.iter().enumerate() {
                let id = FrameworkId::new(format!("f{f}"));
                a.add_framework(id.clone(), vec!["*".into()], &[]);
                if *h > 0 {
                    let r = res(&format!("cpus:{h};mem:{}", h * 100)).allocate_to("*");
                    a.add_used(&id, &AgentId::new("used"), &r);
                }
            }
            let before: Vec<f64> = (0..held.len()).map(|f| a.share(&FrameworkId::new(format!("f{f}"))).unwrap()).collect();
            let out = a.allocate(0, None);
            let agents = sizes.len() + usize::from(used > 0);
            proptest::prop_assert_eq!(a.stats.parallel_runs, u64::from(workers.min(agents) > 1));
            // Every agent went to someone.
            proptest::prop_assert_eq!(out.len(), sizes.len());
            let total = a.total();
            let largest = out.iter().map(|x| Scalars::of(&x.resources).dominant_share(&total)).fold(0.0, f64::max);
            // The parts a round is split into (see `allocate_parallel`).
            let k = agents.div_ceil(agents.div_ceil(workers)) as f64;
            let after: Vec<f64> = (0..held.len()).map(|f| a.share(&FrameworkId::new(format!("f{f}"))).unwrap()).collect();
            for f in 0..held.len() {
                if after[f] == before[f] {
                    continue;
                }
                for h in 0..held.len() {
                    let bound = (before[f] - before[h]).max(0.0) + k * largest;
                    proptest::prop_assert!(
                        after[f] - after[h] <= bound + 1e-9,
                        "f{} ends {} ahead of f{} (bound {}): before {:?}, after {:?}",
                        f, after[f] - after[h], h, bound, before, after
                    );
                }
            }
        }
    }

    #[test]
    fn the_parts_of_the_headroom_add_up_to_the_whole() {
        // Two top-most roles each short of one thousandth of a cpu, three
        // parts with one each free: rounding puts both shortfalls in the
        // first part, beyond what it has free.
        let role = |name: &str| GuaranteedRole {
            name: name.into(),
            guarantee: Quantities([Some(1), None, None, None]),
            consumed: Scalars::default(),
            top: true,
        };
        let mut whole = Guarantees {
            roles: vec![role("a"), role("b")],
            free: Scalars([3, 0, 0, 0]),
            slack: [0; 4],
            adjust: [0; 4],
        };
        whole.slack = whole.slack();
        assert_eq!(whole.slack[0], 1);
        let parts = whole.parts(&[Scalars([1, 0, 0, 0]); 3], [1; 4]);
        let short: Vec<i64> = parts.iter().map(|p| p.roles.iter().map(|r| r.shortfall(0).unwrap()).sum()).collect();
        assert_eq!(short.iter().sum::<i64>(), 2, "{short:?}");
        // The parts' slack adds up to the whole's (1), split by what each
        // part's own free and shortfalls leave (0, 1 and 1, which add up
        // to more).
        assert_eq!(parts.iter().map(|p| p.slack[0]).sum::<i64>(), 1);
        assert_eq!(apportion(7, &[1, 2, 4]), [1, 2, 4]);
        assert_eq!(apportion(5, &[1, 1, 0]), [3, 2, 0]);
        assert_eq!(apportion(5, &[0, 0]), [0, 0]);
    }

    #[test]
    fn a_shortfall_is_split_in_pieces_worth_an_offer() {
        // A role short of 0.2 cpus, three parts with 3, 1 and 0.119 cpus
        // free: by free alone the last would hold 0.006 cpus of the
        // headroom, less than an offer, and a role with a guarantee met
        // further down its path would end the round short of it.
        // Role `b` short of 0.2 cpus, with `free` cpus free in all.
        let short = |free: i64| {
            let mut g = Guarantees {
                roles: vec![GuaranteedRole {
                    name: "b".into(),
                    guarantee: Quantities([Some(3000), None, None, None]),
                    consumed: Scalars([2800, 0, 0, 0]),
                    top: true,
                }],
                free: Scalars([free, 0, 0, 0]),
                slack: [0; 4],
                adjust: [0; 4],
            };
            g.slack = g.slack();
            g
        };
        let whole = short(4119);
        let free = [Scalars([3000, 0, 0, 0]), Scalars([1000, 0, 0, 0]), Scalars([119, 0, 0, 0])];
        let held =
            |parts: &[Guarantees]| -> Vec<i64> { parts.iter().map(|p| p.roles[0].shortfall(0).unwrap()).collect() };
        assert_eq!(held(&whole.parts(&free, [1; 4])), [146, 48, 6]);
        assert_eq!(held(&whole.parts(&free, [10, 32_000, 1, 1])), [160, 40, 0]);
        assert_eq!(apportion_in(200, &[3000, 1000, 119], 10), [160, 40, 0]);
        // A round over some agents only: the whole's free counts others, and
        // the parts have nothing beyond their pieces. The slack is still
        // split whole, by what the parts have free.
        let some = short(5000);
        let parts = some.parts(&[Scalars([100, 0, 0, 0]), Scalars([100, 0, 0, 0])], [10, 32_000, 1, 1]);
        assert_eq!(held(&parts), [100, 100]);
        assert_eq!(parts.iter().map(|p| p.slack[0]).sum::<i64>(), some.slack[0]);
        assert_eq!(some.slack[0], 4800);
        // No share beyond what a part has while another has room; beyond
        // all that is free, or where nothing is, to the largest.
        assert_eq!(apportion_in(200, &[100, 100, 9], 10), [100, 100, 0]);
        assert_eq!(apportion_in(205, &[100, 100, 9], 10), [100, 96, 9]);
        assert_eq!(apportion_in(210, &[105, 105], 10), [105, 105]);
        assert_eq!(apportion_in(300, &[105, 105], 10), [195, 105]);
        assert_eq!(apportion_in(5, &[0, 0], 10), [5, 0]);
    }

    proptest::proptest! {
        /// The pieces add up to the total, and each part but the one with
        /// the largest weight gets nothing, at least a grain, or all it
        /// has, and no more than it has.
        #[test]
        fn pieces_worth_an_offer_add_up_and_fit(
            total in 0i64..5000,
            weights in proptest::collection::vec(0i64..3000, 1..5),
            grain in 1i64..100,
        ) {
            let parts = apportion_in(total, &weights, grain);
            proptest::prop_assert_eq!(parts.iter().sum::<i64>(), total);
            let largest = (0..weights.len()).max_by_key(|&k| (weights[k], std::cmp::Reverse(k))).unwrap();
            for (k, (&p, &w)) in parts.iter().zip(&weights).enumerate() {
                proptest::prop_assert!(p >= 0);
                if k != largest {
                    proptest::prop_assert!(p == 0 || p >= grain || p == w, "{:?} of {:?}", parts, weights);
                    proptest::prop_assert!(p <= w, "{:?} of {:?}", parts, weights);
                }
            }
        }
    }

    std::thread_local! {
        /// Set in a test: a split round started on this thread is refused
        /// every thread, as when the system's limit on threads is reached.
        pub(super) static NO_THREADS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        /// Set in a test: rounds on this thread pass nothing over on sums
        /// alone (see [`shortcuts`]).
        pub(super) static NO_SHORTCUTS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn a_split_round_refused_threads_runs_every_part_on_the_calling_thread() {
        let mut c = Check::new(
            &[("a0", "cpus:1;mem:100"), ("a1", "cpus:2;mem:100"), ("a2", "cpus:3;mem:100"), ("a3", "cpus:4;mem:100")],
            &[("f", &["r"]), ("g", &["r"])],
        );
        fn started() {
            panic!("a thread was started for split rounds");
        }
        c.a.config = Config { on_worker_start: Some(started), ..parallel(2) };
        c.a.set_limits("r", cpus(6));
        NO_THREADS.with(|n| n.set(true));
        let out = c.run(0);
        NO_THREADS.with(|n| n.set(false));
        assert_eq!(c.a.stats.parallel_runs, 1);
        // Every part ran: within the limit, both frameworks got offers.
        assert_eq!(c.a.role_share("r").0 .0[0], 6000, "{out:?}");
        assert!(out.iter().any(|l| l.starts_with("f ")) && out.iter().any(|l| l.starts_with("g ")), "{out:?}");
    }

    #[test]
    fn each_thread_kept_for_split_rounds_calls_the_start_hook_once() {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        fn started() {
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let agents = agents(9);
        let agents: Vec<(&str, &str)> = agents.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        let mut c = Check::new(&agents, &[("f", &["*"])]);
        c.a.config = Config { on_worker_start: Some(started), ..parallel(3) };
        assert_eq!(c.run(0).len(), 9);
        // Three parts: the calling thread and two started for split rounds.
        assert_eq!(c.a.stats.parallel_runs, 1);
        assert_eq!(STARTED.load(std::sync::atomic::Ordering::Relaxed), 2);
        // The workers' hold on the shared frameworks ended with the round:
        // changing one copies nothing.
        assert!(c.a.frameworks.iter().flatten().all(|f| Arc::strong_count(f) == 1));
        // The next split round, once everything is given back, runs on the
        // same two threads.
        let f = FrameworkId::new("f");
        for i in 0..9 {
            let a = AgentId::new(format!("a{i}"));
            let held = c.a.allocated(&f, &a);
            c.a.recover(&f, &a, &held, 0, 0);
        }
        assert_eq!(c.run(1).len(), 9);
        assert_eq!(c.a.stats.parallel_runs, 2);
        assert_eq!(STARTED.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(c.a.pool.threads.len(), 2);
    }

    #[test]
    fn a_parallel_round_offers_the_room_under_a_limit_that_one_part_could_not_use() {
        // Two parts of two agents; the first part's are reserved to a role
        // nobody is in. Half of r's room under its limit goes to each part.
        let mut c = Check::new(
            &[
                ("a0", "cpus(x):1;mem(x):100"),
                ("a1", "cpus(x):1;mem(x):100"),
                ("a2", "cpus:1;mem:100"),
                ("a3", "cpus:1;mem:100"),
            ],
            &[("f", &["r"])],
        );
        c.a.config = parallel(2);
        c.a.set_limits("r", cpus(2));
        // The second part offers one cpu, at its part of the room; the
        // serial pass after the workers offers the room the first part
        // could not use.
        let out = c.run(0);
        assert_eq!(out, vec!["f -> a2: cpus:1; mem:100", "f -> a3: cpus:1; mem:100"]);
        assert_eq!(c.a.role_share("r").0 .0[0], 2000);
        assert!(c.run(1).is_empty());
    }

    #[test]
    fn a_split_round_meets_a_guarantee_in_pieces_one_per_part() {
        // g is guaranteed 6 cpus; o, ten times its weight, would otherwise
        // take nearly everything. Each of two parts (two agents each) goes
        // toward half of g's shortfall in its stage one; stage two gives o
        // the rest.
        let agents =
            [("a0", "cpus:4;mem:400"), ("a1", "cpus:4;mem:400"), ("a2", "cpus:4;mem:400"), ("a3", "cpus:4;mem:400")];
        let mut c = Check::new(&agents, &[("g1", &["g"]), ("o1", &["o"])]);
        c.a.config = parallel(2);
        c.a.set_weight("o", 10.0);
        c.a.set_guarantees("g", cpus(6));
        let out = c.run(0);
        assert_eq!(c.a.stats.parallel_runs, 1);
        let g: Vec<&String> = out.iter().filter(|l| l.starts_with("g1")).collect();
        assert_eq!(g.len(), 2, "{out:?}");
        // Three cpus of an agent in each part (memory is not guaranteed:
        // all of it comes along).
        assert!(g.iter().all(|l| l.ends_with(": cpus:3; mem:400")), "{out:?}");
        let in_first_part = |l: &str| l.starts_with("g1 -> a0:") || l.starts_with("g1 -> a1:");
        assert_ne!(in_first_part(g[0]), in_first_part(g[1]), "{out:?}");
        assert_eq!(c.a.role_share("g").0 .0[0], 6000);
        assert_eq!(c.a.role_share("o").0 .0[0], 10_000);
        // Nothing is left that a serial round would offer.
        c.a.config = Config::default();
        assert!(c.run(1).is_empty());
    }

    #[test]
    fn a_split_round_over_some_agents_counts_the_others_free_for_the_headroom() {
        // g (no framework yet) is guaranteed 4 cpus; a4 and a5, outside the
        // round, have them free. So the headroom holds nothing back of the
        // four agents in the round, split or not.
        let agents = agents(6);
        let agents: Vec<(&str, &str)> = agents.iter().map(|(a, _)| (a.as_str(), "cpus:2;mem:200")).collect();
        for workers in [1, 2] {
            let mut c = Check::new(&agents, &[("o1", &["o"])]);
            c.a.config = parallel(workers);
            c.a.set_guarantees("g", cpus(4));
            let round: Vec<AgentId> = (0..4).map(|i| AgentId::new(format!("a{i}"))).collect();
            let out = c.a.allocate(0, Some(&round));
            assert_eq!(c.a.stats.parallel_runs, u64::from(workers > 1));
            assert_eq!(out.len(), 4, "{workers} workers: {out:?}");
            assert_eq!(c.a.role_share("o").0 .0[0], 8000);
        }
    }

    #[test]
    fn the_pass_after_a_split_round_offers_every_agent_a_part_passed_over_at_its_limit() {
        // As in a_parallel_round_offers_the_room_under_a_limit_that_one_
        // part_could_not_use, with four agents a part. The second part
        // reaches its half of r's room after two agents; it passes over the
        // third after a walk and the fourth before any (every leaf blocked,
        // no grant since). The pass after the workers offers both.
        let (x, free) = ("cpus(x):1;mem(x):100", "cpus:1;mem:100");
        let agents =
            [("a0", x), ("a1", x), ("a2", x), ("a3", x), ("a4", free), ("a5", free), ("a6", free), ("a7", free)];
        let mut c = Check::new(&agents, &[("f", &["r"])]);
        c.a.config = parallel(2);
        c.a.set_limits("r", cpus(4));
        let out = c.run(0);
        assert_eq!(
            out,
            vec![
                "f -> a4: cpus:1; mem:100",
                "f -> a5: cpus:1; mem:100",
                "f -> a6: cpus:1; mem:100",
                "f -> a7: cpus:1; mem:100"
            ]
        );
        assert!(c.run(1).is_empty());
    }

    #[test]
    fn the_pass_after_a_split_round_offers_what_needs_no_cpus_of_roles_at_their_cpu_limit() {
        // Both roles are at their cpu limit (none). The first part's agents
        // have memory reserved to r, beside cpus and memory reserved to s;
        // the second part's, only what is reserved to s. r's room under its
        // memory limit is split by the parts' free memory, so the first
        // part's is too small for either agent's 50 MB; the pass after the
        // workers offers them both within the whole room.
        let mut c = Check::new(
            &[
                ("a0", "cpus(s):1;mem(s):100;mem(r):50"),
                ("a1", "cpus(s):1;mem(s):100;mem(r):50"),
                ("a2", "cpus(s):1;mem(s):1000"),
                ("a3", "cpus(s):1;mem(s):1000"),
            ],
            &[("f", &["r"]), ("g", &["s"])],
        );
        c.a.config = parallel(2);
        c.a.set_limits("r", Quantities([Some(0), Some(100_000), None, None]));
        c.a.set_limits("s", cpus(0));
        let out = c.run(0);
        assert_eq!(c.a.stats.parallel_runs, 1);
        assert_eq!(out, vec!["f -> a0: mem(r):50", "f -> a1: mem(r):50"]);
        assert!(c.run(1).is_empty());
    }

    #[test]
    fn one_framework_gets_every_agent() {
        let mut c = Check::new(&[("a1", "cpus:2;mem:1024"), ("a2", "cpus:4;mem:2048")], &[("f1", &["*"])]);
        assert_eq!(c.run(0), vec!["f1 -> a1: cpus:2; mem:1024", "f1 -> a2: cpus:4; mem:2048"]);
        // Everything is allocated now: nothing more to offer.
        assert!(c.run(1).is_empty());
    }

    #[test]
    fn drf_spreads_agents_across_frameworks() {
        let agents: Vec<(String, &str)> = (0..10).map(|i| (format!("a{i}"), "cpus:1;mem:100")).collect();
        let agents: Vec<(&str, &str)> = agents.iter().map(|(a, r)| (a.as_str(), *r)).collect();
        let mut c = Check::new(&agents, &[("f1", &["*"]), ("f2", &["*"])]);
        let out = c.run(0);
        assert_eq!(out.len(), 10);
        let f1 = out.iter().filter(|l| l.starts_with("f1")).count();
        assert_eq!(f1, 5, "{out:?}");
    }

    #[test]
    fn lowest_dominant_share_goes_first() {
        let mut c =
            Check::new(&[("a1", "cpus:10;mem:1000"), ("a2", "cpus:10;mem:1000")], &[("f1", &["*"]), ("f2", &["*"])]);
        // f1 already uses most of a1.
        c.a.add_used(&FrameworkId::new("f1"), &AgentId::new("a1"), &res("cpus:8;mem:100").allocate_to("*"));
        // Whichever agent comes first goes to f2 (share 0); the other agent then
        // goes to whichever framework has the lower share at that point, which
        // is never f2 again (its share is at least 0.45 by then, f1's is 0.4).
        let out = c.run(0);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out.iter().filter(|l| l.starts_with("f1")).count(), 1, "{out:?}");
        assert_eq!(out.iter().filter(|l| l.starts_with("f2")).count(), 1, "{out:?}");
    }

    #[test]
    fn decline_filter_holds_until_expiry_and_revive_clears() {
        let mut c = Check::new(&[("a1", "cpus:1;mem:100")], &[("f1", &["*"])]);
        let first = c.a.allocate(0, None);
        assert_eq!(first.len(), 1);
        let f1 = FrameworkId::new("f1");
        let a1 = AgentId::new("a1");
        c.a.recover(&f1, &a1, &first[0].resources, 5_000, 1_000);
        assert!(c.run(2_000).is_empty(), "filtered");
        assert_eq!(c.run(6_001).len(), 1, "filter expired");
        let again = c.a.allocated(&f1, &a1);
        c.a.recover(&f1, &a1, &again, 60_000, 7_000);
        assert!(c.run(8_000).is_empty());
        c.a.revive(&f1, &[]);
        assert_eq!(c.run(8_001).len(), 1, "revive clears filters");
    }

    #[test]
    fn filter_does_not_block_more_resources() {
        let mut c = Check::new(&[("a1", "cpus:2;mem:200")], &[("f1", &["*"])]);
        let f1 = FrameworkId::new("f1");
        let a1 = AgentId::new("a1");
        c.a.add_used(&f1, &a1, &res("cpus:1;mem:100").allocate_to("*"));
        let offer = c.a.allocate(0, None);
        assert_eq!(offer.len(), 1);
        c.a.recover(&f1, &a1, &offer[0].resources, 60_000, 0);
        assert!(c.run(1).is_empty());
        // The task finishes: more is free than was refused, so it is offered.
        c.a.recover(&f1, &a1, &res("cpus:1;mem:100").allocate_to("*"), 0, 2);
        assert_eq!(c.run(3), vec!["f1 -> a1: cpus:2; mem:200"]);
    }

    #[test]
    fn suppress_and_inactive() {
        let mut c = Check::new(&[("a1", "cpus:1;mem:100")], &[("f1", &["*"]), ("f2", &["*"])]);
        c.a.suppress(&FrameworkId::new("f1"), &[]);
        c.a.set_framework_active(&FrameworkId::new("f2"), false);
        assert!(c.run(0).is_empty());
        c.a.revive(&FrameworkId::new("f1"), &[]);
        assert_eq!(c.run(1), vec!["f1 -> a1: cpus:1; mem:100"]);
        c.a.set_agent_active(&AgentId::new("a1"), false);
        c.a.remove_framework(&FrameworkId::new("f1"));
        c.a.set_framework_active(&FrameworkId::new("f2"), true);
        assert!(c.run(2).is_empty(), "inactive agent");
        c.a.set_agent_active(&AgentId::new("a1"), true);
        assert_eq!(c.run(3), vec!["f2 -> a1: cpus:1; mem:100"]);
    }

    #[test]
    fn reserved_resources_only_go_to_their_role() {
        let mut c =
            Check::new(&[("a1", "cpus:1;mem:100;cpus(eng):2;mem(eng):200")], &[("ops", &["ops"]), ("eng", &["eng"])]);
        let out = c.run(0);
        let eng = out.iter().find(|l| l.starts_with("eng")).unwrap();
        let ops = out.iter().find(|l| l.starts_with("ops"));
        // Whoever goes first, the eng-reserved part never reaches ops.
        if let Some(ops) = ops {
            assert!(!ops.contains("(eng)"), "{ops}");
        }
        assert!(eng.contains("cpus(eng):2"), "{eng}");
    }

    #[test]
    fn scraps_are_not_offered() {
        let mut c = Check::new(&[("a1", "cpus:1;mem:100")], &[("f1", &["*"])]);
        c.a.add_used(&FrameworkId::new("f1"), &AgentId::new("a1"), &res("cpus:0.995;mem:90").allocate_to("*"));
        assert!(c.run(0).is_empty());
    }

    #[test]
    fn filters_do_not_outlive_their_agent() {
        let mut c = Check::new(&[("a1", "cpus:1;mem:100")], &[("f1", &["*"])]);
        let f1 = FrameworkId::new("f1");
        let first = c.a.allocate(0, None);
        c.a.recover(&f1, &AgentId::new("a1"), &first[0].resources, 3_600_000, 0);
        c.a.remove_agent(&AgentId::new("a1"));
        // A new agent takes the freed slot: it is offered.
        c.a.add_agent(AgentId::new("a2"), res("cpus:1;mem:100"), &[]);
        assert_eq!(c.run(1), vec!["f1 -> a2: cpus:1; mem:100"]);
    }

    #[test]
    fn removing_agent_releases_shares() {
        let mut c = Check::new(&[("a1", "cpus:1;mem:100"), ("a2", "cpus:1;mem:100")], &[("f1", &["*"])]);
        c.run(0);
        assert_eq!(c.a.share(&FrameworkId::new("f1")), Some(1.0));
        c.a.remove_agent(&AgentId::new("a1"));
        assert_eq!(c.a.share(&FrameworkId::new("f1")), Some(1.0));
        assert_eq!(c.a.total().0[0], 1000);
    }

    #[test]
    fn partial_recover_only_returns_what_is_held() {
        let mut c = Check::new(&[("a1", "cpus:2;mem:200")], &[("f1", &["*"])]);
        let f1 = FrameworkId::new("f1");
        let a1 = AgentId::new("a1");
        c.a.add_used(&f1, &a1, &res("cpus:1;mem:100").allocate_to("*"));
        c.a.recover(&f1, &a1, &res("cpus:5;mem:100").allocate_to("*"), 0, 0);
        assert_eq!(c.a.available(&a1).unwrap().cpus(), 2.0);
        assert!(c.a.allocated(&f1, &a1).is_empty());
    }

    #[test]
    fn a_whole_agent_is_held_without_a_copy_and_behaves_as_listed() {
        let mut c = Check::new(&[("a1", "cpus:4;mem:1024;ports:[1-10]")], &[("f1", &["eng"]), ("f2", &["eng"])]);
        let (f1, f2, a1) = (FrameworkId::new("f1"), FrameworkId::new("f2"), AgentId::new("a1"));
        let out = c.a.allocate(0, None);
        assert_eq!(out.len(), 1);
        let (holder, other) = if out[0].framework_id == f1 { (&f1, &f2) } else { (&f2, &f1) };
        let slot = c.a.agents[0].as_ref().unwrap();
        assert!(
            matches!(slot.allocated.values().next(), Some(&Holding::Total(role)) if c.a.role_names.name(role) == "eng")
        );
        assert_eq!(c.a.allocated(holder, &a1), out[0].resources);
        assert_eq!(c.a.available(&a1), Some(Resources::new()));
        assert_eq!(c.a.share(holder), Some(1.0));

        // An operation in the offer: a cpu reserved, the total changed.
        let reserved = Resources::from_vec(vec![agora_proto::resources::Resource::scalar("cpus", 1.0)
            .reserved_to("eng", agora_proto::resources::ReservationKind::Dynamic)]);
        c.a.convert(&a1, Some(holder), &res("cpus:1").allocate_to("eng"), &reserved.allocate_to("eng"));
        let mut held = res("cpus:3;mem:1024;ports:[1-10]").allocate_to("eng");
        held.add(&reserved.allocate_to("eng"));
        assert_eq!(c.a.allocated(holder, &a1), held);
        assert_eq!(c.a.available(&a1), Some(Resources::new()));

        // Part of it given back: only that part is free again.
        c.a.recover(holder, &a1, &res("cpus:2;ports:[1-5]").allocate_to("eng"), 0, 0);
        assert_eq!(c.a.available(&a1), Some(res("cpus:2;ports:[1-5]")));
        assert_eq!(c.a.allocated(other, &a1), Resources::new());

        // The agent's removal gives the rest back.
        c.a.remove_agent(&a1);
        assert_eq!(c.a.share(holder), Some(0.0));
        assert!(c.a.roles_allocated().next().is_none());
    }

    #[test]
    fn an_agent_taken_all_under_a_limit_is_held_without_a_copy() {
        // With quota in force every grant plans its take (here all of the
        // cpus, within the limit); one that takes all of an idle agent is
        // still held as its total.
        let mut c = Check::new(&[("a1", "cpus:4;mem:1024;ports:[1-10]")], &[("f1", &["eng"])]);
        c.a.set_limits("eng", Quantities([Some(8000), None, None, None]));
        let out = c.a.allocate(0, None);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].resources, res("cpus:4;mem:1024;ports:[1-10]").allocate_to("eng"));
        let slot = c.a.agents[0].as_ref().unwrap();
        assert!(
            matches!(slot.allocated.values().next(), Some(&Holding::Total(role)) if c.a.role_names.name(role) == "eng")
        );
        assert_eq!(c.a.allocated(&FrameworkId::new("f1"), &AgentId::new("a1")), out[0].resources);
        assert_eq!(c.a.available(&AgentId::new("a1")), Some(Resources::new()));
    }

    #[test]
    fn grants_of_an_idle_agent_are_held_as_parts_of_its_total_and_behave_as_listed() {
        // eng starts ahead (it uses all of a2), so ops is offered first:
        // under its limit, 3 of a1's 4 cpus (a scalar in part), its memory
        // and ports. eng then gets the cpu left and its reservation.
        let mut c = Check::new(
            &[("a1", "cpus:4;mem:1024;ports:[1-10];cpus(eng):2"), ("a2", "cpus:1;mem:10")],
            &[("f1", &["ops"]), ("f2", &["eng"])],
        );
        let (f1, f2, a1) = (FrameworkId::new("f1"), FrameworkId::new("f2"), AgentId::new("a1"));
        c.a.add_used(&f2, &AgentId::new("a2"), &res("cpus:1;mem:10").allocate_to("eng"));
        c.a.set_limits("ops", Quantities([Some(3000), None, None, None]));
        let out = c.a.allocate(0, None);
        let shown: Vec<String> =
            out.iter().map(|x| format!("{} {} {} {}", x.framework_id, x.agent_id, x.role, x.resources)).collect();
        assert_eq!(shown, ["f1 a1 ops cpus:3; mem:1024; ports:[1-10]", "f2 a1 eng cpus:1; cpus(eng):2"]);
        assert_eq!(out[1].resources, res("cpus:1;cpus(eng):2").allocate_to("eng"));
        let slot = c.a.agents[0].as_ref().unwrap();
        for f in [0, 1] {
            assert!(matches!(slot.allocated.get(&f), Some(Holding::Parts(..))), "{:?}", slot.allocated.get(&f));
        }
        assert_eq!(c.a.allocated(&f1, &a1), out[0].resources);
        assert_eq!(c.a.allocated(&f2, &a1), out[1].resources);
        assert_eq!(c.a.available(&a1), Some(Resources::new()));

        // Part of it given back: only that part is free again.
        c.a.recover(&f1, &a1, &res("cpus:1;ports:[1-5]").allocate_to("ops"), 0, 0);
        assert_eq!(c.a.available(&a1), Some(res("cpus:1;ports:[1-5]")));
        assert_eq!(c.a.allocated(&f1, &a1), res("cpus:2;mem:1024;ports:[6-10]").allocate_to("ops"));
        assert_eq!(c.a.allocated(&f2, &a1), out[1].resources);

        // The agent's removal gives the rest back: eng holds what it used
        // on a2 only.
        c.a.remove_agent(&a1);
        assert_eq!(c.a.share(&f1), Some(0.0));
        assert_eq!(c.a.subtree_held("eng").0[..2], [1000, 10_000]);
    }

    #[test]
    fn roles_past_the_numbered_ones_are_held_as_copies() {
        let mut c = Check::new(&[("a1", "cpus:4;mem:1024")], &[]);
        let names = Arc::make_mut(&mut c.a.role_names);
        for i in 0..RoleNames::MAX + 10 {
            names.add(&format!("r{i}"));
        }
        assert_eq!(names.names.len(), RoleNames::MAX);
        assert_eq!(names.number(&format!("r{}", RoleNames::MAX)), None);
        // A framework of a role with no number is granted the agent whole
        // all the same, held as a copy.
        let late = format!("r{}", RoleNames::MAX + 1);
        let f = FrameworkId::new("f");
        c.a.add_framework(f.clone(), vec![late.clone()], &[]);
        assert_eq!(c.a.role_names.number(&late), None);
        let out = c.a.allocate(0, None);
        assert_eq!(out.len(), 1);
        let slot = c.a.agents[0].as_ref().unwrap();
        assert!(matches!(slot.allocated.values().next(), Some(Holding::Listed(_))));
        assert_eq!(c.a.allocated(&f, &AgentId::new("a1")), res("cpus:4;mem:1024").allocate_to(&late));
        c.a.recover(&f, &AgentId::new("a1"), &out[0].resources, 0, 0);
        assert_eq!(c.a.available(&AgentId::new("a1")), Some(res("cpus:4;mem:1024")));
    }

    #[test]
    fn merging_stages_folds_later_allocations_into_the_first_alike_whichever_side_is_smaller() {
        let alloc = |f: &str, agent: &str, role: &str, r: &str| Allocation {
            framework_id: FrameworkId::new(f),
            agent_id: AgentId::new(agent),
            role: role.into(),
            resources: res(r).allocate_to(role),
            also: Vec::new(),
        };
        let show = |out: &[Allocation]| -> Vec<String> {
            out.iter().map(|x| format!("{} {} {} {}", x.framework_id, x.agent_id, x.role, x.resources)).collect()
        };
        let earlier = [
            alloc("g", "a2", "r", "cpus:7"),
            alloc("f", "a1", "r", "cpus:1"),
            alloc("f", "a1", "r", "mem:1"),
            alloc("g", "a1", "r", "cpus:2"),
            alloc("f", "a2", "s", "cpus:3"),
        ];
        let later = [
            alloc("f", "a1", "r", "mem:10"),
            alloc("f", "a2", "r", "cpus:4"),
            alloc("f", "a1", "r", "disk:5"),
            alloc("g", "a2", "r", "cpus:6"),
        ];
        // Each later one into the first earlier one alike; the rest kept,
        // in order.
        let expected = [
            "g a2 r cpus:13",
            "f a1 r cpus:1; mem:10; disk:5",
            "f a1 r mem:1",
            "g a1 r cpus:2",
            "f a2 s cpus:3",
            "f a2 r cpus:4",
        ];
        // Allocations on other agents make one side or the other the
        // smaller: the earlier (5 against 10: it is indexed), then the later
        // (11 against 4).
        let padding = |n: usize| (0..n).map(|i| alloc("h", &format!("b{i}"), "r", "cpus:1")).collect::<Vec<_>>();
        for (before, after) in [(0, 6), (6, 0)] {
            let mut out: Vec<Allocation> = padding(before);
            out.extend(earlier.iter().cloned());
            out.extend(later.iter().cloned());
            out.extend(padding(after).into_iter().map(|mut x| {
                x.agent_id = AgentId::new(format!("c{}", x.agent_id));
                x
            }));
            merge_stages(&mut out, before + earlier.len());
            let shown = show(&out);
            assert_eq!(shown.len(), before + expected.len() + after, "padded by {before} and {after}");
            assert_eq!(shown[before..before + expected.len()], expected, "padded by {before} and {after}");
        }
    }

    #[test]
    fn a_take_is_all_only_of_everything_whole_in_order() {
        let from = res("cpus:4;mem:1024;ports:[1-10]");
        let cpus = Fixed::from_f64(4.0).0;
        assert!(Take { parts: vec![(0, None), (1, None), (2, None)] }.is_all_of(&from));
        // A scalar's whole amount, and an amount given for ranges (taken whole).
        assert!(Take { parts: vec![(0, Some(cpus)), (1, None), (2, Some(1))] }.is_all_of(&from));
        // Part of a scalar, a resource left out, or another order.
        assert!(!Take { parts: vec![(0, Some(cpus - 1)), (1, None), (2, None)] }.is_all_of(&from));
        assert!(!Take { parts: vec![(0, None), (1, None)] }.is_all_of(&from));
        assert!(!Take { parts: vec![(1, None), (0, None), (2, None)] }.is_all_of(&from));
    }
}
