//! The resource model: scalars, ranges and sets, each carrying a role, a
//! reservation and a revocable marker, with the arithmetic the allocator and the
//! master's validation need, and Mesos's text syntax
//! (`cpus:4;mem:8192;ports:[31000-32000];cpus(eng):2`).
//!
//! Scalars are fixed point with three decimal digits (as Mesos does), so adding and
//! subtracting many `0.1` cpus never drifts.

use std::collections::BTreeSet;
use std::fmt;

/// A resource's name, or a role. Names and roles are short, and every offer
/// and holding copies them: up to 24 bytes are kept inline, so a copy does
/// not allocate.
pub type Name = compact_str::CompactString;

/// The role of resources that are not reserved.
pub const DEFAULT_ROLE: &str = "*";

/// The largest scalar accepted from input (a million terabytes of disk in MB).
/// Far above any machine, far below where sums of thousandths overflow.
pub const MAX_SCALAR: f64 = 1e12;

/// A scalar in thousandths: `Fixed(1500)` is 1.5.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Fixed(pub i64);

impl Fixed {
    pub const ZERO: Fixed = Fixed(0);

    /// Rounds to the nearest thousandth, as Mesos does for scalar values.
    pub fn from_f64(v: f64) -> Fixed {
        Fixed((v * 1000.0).round() as i64)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}", self.as_f64())
        }
    }
}

/// Inclusive, sorted, disjoint and non-adjacent ranges of integers, e.g. ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    /// Builds normalized ranges from any list of inclusive `(begin, end)` pairs.
    /// Pairs with `begin > end` are rejected by the parsers before they get here;
    /// this constructor swaps them rather than lose them.
    pub fn new(mut pairs: Vec<(u64, u64)>) -> Ranges {
        for p in pairs.iter_mut() {
            if p.0 > p.1 {
                *p = (p.1, p.0);
            }
        }
        pairs.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(pairs.len());
        for (b, e) in pairs {
            match out.last_mut() {
                Some(last) if b <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => out.push((b, e)),
            }
        }
        Ranges(out)
    }

    pub fn single(begin: u64, end: u64) -> Ranges {
        Ranges::new(vec![(begin, end)])
    }

    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of integers covered (saturating: `[0, u64::MAX]` is huge, not 0).
    pub fn count(&self) -> u64 {
        self.0.iter().fold(0u64, |acc, (b, e)| acc.saturating_add((e - b).saturating_add(1)))
    }

    pub fn contains(&self, other: &Ranges) -> bool {
        // Both are sorted: walk them together.
        let mut i = 0;
        for &(b, e) in &other.0 {
            while i < self.0.len() && self.0[i].1 < b {
                i += 1;
            }
            match self.0.get(i) {
                Some(&(sb, se)) if sb <= b && e <= se => {}
                _ => return false,
            }
        }
        true
    }

    pub fn contains_value(&self, v: u64) -> bool {
        self.0.iter().any(|&(b, e)| b <= v && v <= e)
    }

    pub fn union(&self, other: &Ranges) -> Ranges {
        let mut all = self.0.clone();
        all.extend_from_slice(&other.0);
        Ranges::new(all)
    }

    pub fn difference(&self, other: &Ranges) -> Ranges {
        let mut out = Vec::with_capacity(self.0.len());
        for &(b, e) in &self.0 {
            let mut cur = b;
            let mut done = false;
            for &(ob, oe) in &other.0 {
                if oe < cur || ob > e {
                    continue;
                }
                if ob > cur {
                    out.push((cur, ob - 1));
                }
                if oe >= e {
                    done = true;
                    break;
                }
                cur = oe + 1;
            }
            if !done {
                out.push((cur, e));
            }
        }
        Ranges::new(out)
    }
}

impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, (b, e)) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{b}-{e}")?;
        }
        write!(f, "]")
    }
}

/// The value of one resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Value {
    Scalar(Fixed),
    Ranges(Ranges),
    Set(BTreeSet<String>),
}

impl Value {
    fn kind(&self) -> u8 {
        match self {
            Value::Scalar(_) => 0,
            Value::Ranges(_) => 1,
            Value::Set(_) => 2,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Value::Scalar(s) => s.0 <= 0,
            Value::Ranges(r) => r.is_empty(),
            Value::Set(s) => s.is_empty(),
        }
    }

    fn add(&mut self, other: &Value) {
        match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => a.0 = a.0.saturating_add(b.0),
            (Value::Ranges(a), Value::Ranges(b)) => *a = a.union(b),
            (Value::Set(a), Value::Set(b)) => a.extend(b.iter().cloned()),
            _ => unreachable!("values of different kinds are never merged"),
        }
    }

    fn contains(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => a.0 >= b.0,
            (Value::Ranges(a), Value::Ranges(b)) => a.contains(b),
            (Value::Set(a), Value::Set(b)) => b.is_subset(a),
            _ => false,
        }
    }

    fn subtract(&mut self, other: &Value) {
        match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => a.0 = a.0.saturating_sub(b.0),
            (Value::Ranges(a), Value::Ranges(b)) => *a = a.difference(b),
            (Value::Set(a), Value::Set(b)) => a.retain(|x| !b.contains(x)),
            _ => unreachable!("values of different kinds are never merged"),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Scalar(s) => write!(f, "{s}"),
            Value::Ranges(r) => write!(f, "{r}"),
            Value::Set(s) => {
                write!(f, "{{")?;
                for (i, x) in s.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

/// Whether a reservation came from the agent's flags or from an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum ReservationKind {
    Static,
    Dynamic,
}

/// How resources are reserved for a role.
#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Reservation {
    pub kind: ReservationKind,
    pub role: Name,
    pub principal: Option<String>,
    pub labels: Vec<(String, String)>,
}

/// A persistent volume made on reserved disk: `id` names it on its agent,
/// `container_path` is where tasks that use it see it (relative to their
/// sandbox), and it outlives every task that uses it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Volume {
    pub id: String,
    pub principal: Option<String>,
    pub container_path: String,
    pub read_only: bool,
}

/// One resource: a name, a value, and what may use it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Resource {
    pub name: Name,
    pub value: Value,
    /// `None` means unreserved (role `*`). Boxed, as `volume` is: most
    /// resources have neither, and a `Resource` is copied into every offer
    /// and holding, so it is kept small (104 bytes rather than 248).
    pub reservation: Option<Box<Reservation>>,
    /// Revocable resources may be taken back (oversubscription).
    pub revocable: bool,
    /// The role these resources are allocated to, once offered.
    pub allocation_role: Option<Name>,
    /// Set on `disk` that holds a persistent volume.
    pub volume: Option<Box<Volume>>,
}

// The size the notes above state (and ARCHITECTURE.md): adding to
// `Resource` makes every offer and holding bigger.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Resource>() == 104);

impl Resource {
    pub fn scalar(name: &str, v: f64) -> Resource {
        Resource {
            name: name.into(),
            value: Value::Scalar(Fixed::from_f64(v)),
            reservation: None,
            revocable: false,
            allocation_role: None,
            volume: None,
        }
    }

    pub fn ranges(name: &str, r: Ranges) -> Resource {
        Resource {
            name: name.into(),
            value: Value::Ranges(r),
            reservation: None,
            revocable: false,
            allocation_role: None,
            volume: None,
        }
    }

    /// The role this resource is reserved for, or `*`.
    pub fn role(&self) -> &str {
        self.reservation.as_ref().map(|r| r.role.as_str()).unwrap_or(DEFAULT_ROLE)
    }

    pub fn reserved_to(mut self, role: &str, kind: ReservationKind) -> Resource {
        self.reservation = Some(Box::new(Reservation { kind, role: role.into(), principal: None, labels: Vec::new() }));
        self
    }

    /// Whether the agent must keep this resource's form across restarts: a
    /// dynamic reservation or a persistent volume (Mesos's "checkpointed
    /// resources").
    pub fn is_checkpointed(&self) -> bool {
        self.volume.is_some() || self.reservation.as_ref().is_some_and(|r| r.kind == ReservationKind::Dynamic)
    }

    /// What this resource was before operations changed it: without its
    /// volume, and unreserved if dynamically reserved. Static reservations
    /// stay (they come from the agent's flags).
    pub fn base(&self) -> Resource {
        let mut r = self.clone();
        r.volume = None;
        if r.reservation.as_ref().is_some_and(|x| x.kind == ReservationKind::Dynamic) {
            r.reservation = None;
        }
        r
    }

    /// Two resources merge when everything but the value matches.
    fn same_kind(&self, other: &Resource) -> bool {
        self.name == other.name
            && self.value.kind() == other.value.kind()
            && self.reservation == other.reservation
            && self.revocable == other.revocable
            && self.allocation_role == other.allocation_role
            && self.volume == other.volume
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(r) = &self.reservation {
            match &r.principal {
                Some(p) => write!(f, "({}, {})", r.role, p)?,
                None => write!(f, "({})", r.role)?,
            }
        }
        if let Some(v) = &self.volume {
            write!(f, "[{}:{}]", v.id, v.container_path)?;
        }
        if self.revocable {
            write!(f, "{{REV}}")?;
        }
        write!(f, ":{}", self.value)
    }
}

/// A normalized bag of resources: like resources are merged, empty ones dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Resources(Vec<Resource>);

/// Why a subtraction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not contained in {1}")]
pub struct NotContained(pub String, pub String);

impl Resources {
    pub fn new() -> Resources {
        Resources(Vec::new())
    }

    pub fn from_vec(v: Vec<Resource>) -> Resources {
        let mut r = Resources::new();
        for x in v {
            r.add_one(x);
        }
        r
    }

    /// Resources of which no two are alike and none is empty, such as
    /// those of a `Resources` with some values made smaller: nothing needs
    /// merging, so nothing is compared (checked in debug builds).
    pub fn from_distinct(v: Vec<Resource>) -> Resources {
        debug_assert!(v.iter().all(|r| !r.value.is_empty()), "an empty resource");
        debug_assert!(v.iter().enumerate().all(|(i, r)| v[..i].iter().all(|x| !x.same_kind(r))), "resources alike");
        Resources(v)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Resource> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn into_vec(self) -> Vec<Resource> {
        self.0
    }

    pub fn add_one(&mut self, r: Resource) {
        if r.value.is_empty() {
            return;
        }
        match self.0.iter_mut().find(|x| x.same_kind(&r)) {
            Some(x) => x.value.add(&r.value),
            None => self.0.push(r),
        }
    }

    pub fn add(&mut self, other: &Resources) {
        for r in &other.0 {
            self.add_one(r.clone());
        }
    }

    pub fn plus(&self, other: &Resources) -> Resources {
        let mut out = self.clone();
        out.add(other);
        out
    }

    pub fn contains_one(&self, r: &Resource) -> bool {
        if r.value.is_empty() {
            return true;
        }
        self.0.iter().any(|x| x.same_kind(r) && x.value.contains(&r.value))
    }

    /// Whether every resource of `other` is in `self`, role and reservation included.
    pub fn contains(&self, other: &Resources) -> bool {
        other.0.iter().all(|r| self.contains_one(r))
    }

    /// Removes `other`, or refuses (and changes nothing) when it is not contained.
    pub fn subtract(&mut self, other: &Resources) -> Result<(), NotContained> {
        if !self.contains(other) {
            return Err(NotContained(other.to_string(), self.to_string()));
        }
        for r in &other.0 {
            if let Some(x) = self.0.iter_mut().find(|x| x.same_kind(r)) {
                x.value.subtract(&r.value);
            }
        }
        self.0.retain(|x| !x.value.is_empty());
        Ok(())
    }

    /// Moves out the resources at the indices of `parts`, in the order of
    /// `parts`: all of one, or of a scalar the amount given (its fixed-point
    /// units), which stays behind less that amount. What is taken whole is
    /// moved, not copied. Indices must be distinct and in range, and amounts
    /// positive; an amount no smaller than the scalar takes all of it, and
    /// one given for a resource that is not a scalar is ignored (all of it
    /// is taken).
    pub fn take_parts(&mut self, parts: &[(usize, Option<i64>)]) -> Resources {
        debug_assert!(
            parts.iter().enumerate().all(|(k, &(i, _))| parts[..k].iter().all(|&(j, _)| j != i)),
            "parts taken twice"
        );
        let mut taken = Vec::with_capacity(parts.len());
        let mut moved = false;
        for &(i, amount) in parts {
            let r = &mut self.0[i];
            match (amount, &mut r.value) {
                (Some(t), Value::Scalar(v)) if t < v.0 => {
                    debug_assert!(t > 0, "an empty part");
                    v.0 -= t;
                    let mut part = r.clone();
                    part.value = Value::Scalar(Fixed(t));
                    taken.push(part);
                }
                _ => {
                    // Moved out whole: an empty scalar stands in its place
                    // (so that no other index moves) until the empties are
                    // dropped below, which keeps the order of what stays.
                    let empty = Resource {
                        name: Name::default(),
                        value: Value::Scalar(Fixed(0)),
                        reservation: None,
                        revocable: false,
                        allocation_role: None,
                        volume: None,
                    };
                    taken.push(std::mem::replace(r, empty));
                    moved = true;
                }
            }
        }
        if moved {
            self.0.retain(|r| !r.value.is_empty());
        }
        Resources(taken)
    }

    /// Removes as much of `other` as is present, ignoring what is not.
    pub fn subtract_saturating(&mut self, other: &Resources) {
        for r in &other.0 {
            if let Some(x) = self.0.iter_mut().find(|x| x.same_kind(r)) {
                match (&mut x.value, &r.value) {
                    (Value::Scalar(a), Value::Scalar(b)) => a.0 = (a.0 - b.0).max(0),
                    (v, o) => v.subtract(o),
                }
            }
        }
        self.0.retain(|x| !x.value.is_empty());
    }

    pub fn minus(&self, other: &Resources) -> Result<Resources, NotContained> {
        let mut out = self.clone();
        out.subtract(other)?;
        Ok(out)
    }

    /// The same resources, all marked as reserved to `role` (or unreserved when
    /// `role` is `*`), with allocation and revocable markers kept.
    pub fn flatten(&self, role: &str) -> Resources {
        let mut out = Resources::new();
        for r in &self.0 {
            let mut r = r.clone();
            r.reservation = if role == DEFAULT_ROLE {
                None
            } else {
                Some(Box::new(Reservation {
                    kind: ReservationKind::Static,
                    role: role.into(),
                    principal: None,
                    labels: Vec::new(),
                }))
            };
            out.add_one(r);
        }
        out
    }

    /// The same resources with no reservation, allocation or revocable marker:
    /// what they amount to, whoever may use them.
    pub fn to_unreserved_quantities(&self) -> Resources {
        let mut out = Resources::new();
        for r in &self.0 {
            let mut r = r.clone();
            r.reservation = None;
            r.allocation_role = None;
            r.revocable = false;
            r.volume = None;
            out.add_one(r);
        }
        out
    }

    /// Marks every resource as allocated to `role`.
    pub fn allocate_to(&self, role: &str) -> Resources {
        let mut out = Resources::new();
        for r in &self.0 {
            let mut r = r.clone();
            r.allocation_role = Some(role.into());
            out.add_one(r);
        }
        out
    }

    /// [`Resources::allocate_to`], reusing `self`'s memory when nothing in
    /// it is allocated yet.
    pub fn into_allocated_to(mut self, role: &str) -> Resources {
        if self.0.iter().any(|r| r.allocation_role.is_some()) {
            return self.allocate_to(role);
        }
        // Normalized and unallocated: marking every resource alike merges
        // nothing.
        for r in &mut self.0 {
            r.allocation_role = Some(role.into());
        }
        self
    }

    /// Drops the allocation markers.
    pub fn unallocated(&self) -> Resources {
        let mut out = Resources::new();
        for r in &self.0 {
            let mut r = r.clone();
            r.allocation_role = None;
            out.add_one(r);
        }
        out
    }

    /// The dynamically reserved resources and persistent volumes.
    pub fn checkpointed(&self) -> Resources {
        self.filter(Resource::is_checkpointed)
    }

    /// Each resource as it was before operations changed it ([`Resource::base`]).
    pub fn base(&self) -> Resources {
        Resources::from_vec(self.0.iter().map(Resource::base).collect())
    }

    /// An agent's total: `base` (what its flags give) with `checkpointed`
    /// (reservations and volumes made by operations) carved out of it, or
    /// why they do not fit.
    pub fn with_checkpointed(base: &Resources, checkpointed: &Resources) -> Result<Resources, NotContained> {
        let mut total = base.minus(&checkpointed.base())?;
        total.add(checkpointed);
        Ok(total)
    }

    /// What `self` (an agent's total) was before operations: the inverse of
    /// [`Resources::with_checkpointed`].
    pub fn without_checkpointed(&self) -> Resources {
        let checkpointed = self.checkpointed();
        let mut out = self.filter(|r| !r.is_checkpointed());
        out.add(&checkpointed.base());
        out
    }

    /// The resources usable by `role`: unreserved ones and those reserved to it.
    pub fn usable_by(&self, role: &str) -> Resources {
        Resources(self.0.iter().filter(|r| r.reservation.is_none() || r.role() == role).cloned().collect())
    }

    pub fn filter(&self, f: impl Fn(&Resource) -> bool) -> Resources {
        Resources(self.0.iter().filter(|r| f(r)).cloned().collect())
    }

    /// Sum of the scalar named `name` across roles and markers.
    pub fn scalar(&self, name: &str) -> Fixed {
        Fixed(
            self.0
                .iter()
                .filter(|r| r.name == name)
                .map(|r| match r.value {
                    Value::Scalar(s) => s.0,
                    _ => 0,
                })
                .sum(),
        )
    }

    pub fn cpus(&self) -> f64 {
        self.scalar("cpus").as_f64()
    }

    pub fn mem_mb(&self) -> f64 {
        self.scalar("mem").as_f64()
    }

    pub fn disk_mb(&self) -> f64 {
        self.scalar("disk").as_f64()
    }

    pub fn gpus(&self) -> f64 {
        self.scalar("gpus").as_f64()
    }

    /// Union of the ranges named `name` across roles and markers.
    pub fn ranges(&self, name: &str) -> Ranges {
        let mut out = Ranges::default();
        for r in &self.0 {
            if let (true, Value::Ranges(x)) = (r.name == name, &r.value) {
                out = out.union(x);
            }
        }
        out
    }

    pub fn ports(&self) -> Ranges {
        self.ranges("ports")
    }

    /// Parses Mesos's text syntax: `name(role[,principal]):value` items separated
    /// by `;`, where a value is a number, `[b-e,...]` ranges or `{a,b}` a set.
    /// Resources given with a role in the text are statically reserved to it.
    pub fn parse(text: &str) -> Result<Resources, ParseError> {
        let mut out = Resources::new();
        for item in split_top_level(text, ';') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            out.add_one(parse_item(item)?);
        }
        Ok(out)
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "{{}}");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a Resources {
    type Item = &'a Resource;
    type IntoIter = std::slice::Iter<'a, Resource>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A malformed resource or attribute string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid resource text {text:?}: {why}")]
pub struct ParseError {
    pub text: String,
    pub why: String,
}

fn perr(text: &str, why: impl Into<String>) -> ParseError {
    ParseError { text: text.to_string(), why: why.into() }
}

/// Splits on `sep` outside of `[]`, `{}` and `()`.
pub(crate) fn split_top_level(text: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '[' | '{' | '(' => depth += 1,
            ']' | '}' | ')' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

fn parse_item(item: &str) -> Result<Resource, ParseError> {
    let colon = find_top_level(item, ':').ok_or_else(|| perr(item, "expected name:value"))?;
    let (head, value) = (item[..colon].trim(), item[colon + 1..].trim());
    let (name, reservation) = match head.find('(') {
        Some(open) => {
            if !head.ends_with(')') {
                return Err(perr(item, "unclosed '(' in role"));
            }
            let inner = &head[open + 1..head.len() - 1];
            let mut parts = inner.splitn(2, ',');
            let role = parts.next().unwrap_or("").trim();
            let principal = parts.next().map(|p| p.trim().to_string());
            if !valid_role(role) {
                return Err(perr(item, format!("invalid role {role:?}")));
            }
            let reservation = if role == DEFAULT_ROLE {
                None
            } else {
                Some(Reservation { kind: ReservationKind::Static, role: role.into(), principal, labels: Vec::new() })
            };
            (head[..open].trim(), reservation)
        }
        None => (head, None),
    };
    if !valid_name(name) {
        return Err(perr(item, format!("invalid resource name {name:?}")));
    }
    let value = parse_value(value).map_err(|why| perr(item, why))?;
    if let Value::Scalar(s) = &value {
        if s.0 < 0 {
            return Err(perr(item, "negative scalar"));
        }
    }
    Ok(Resource {
        name: name.into(),
        value,
        reservation: reservation.map(Box::new),
        revocable: false,
        allocation_role: None,
        volume: None,
    })
}

fn find_top_level(text: &str, sep: char) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in text.char_indices() {
        match c {
            '[' | '{' | '(' => depth += 1,
            ']' | '}' | ')' => depth -= 1,
            c if c == sep && depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// A role name: `*`, or `/`-separated path components without `.`/`..`, spaces
/// or leading `-`, as Mesos requires.
pub fn valid_role(role: &str) -> bool {
    if role == DEFAULT_ROLE {
        return true;
    }
    !role.is_empty()
        && !role.starts_with('/')
        && !role.ends_with('/')
        && role.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && !c.starts_with('-')
                && c.chars().all(|ch| ch.is_ascii_graphic() && ch != '*' && ch != '(' && ch != ')')
        })
}

/// A volume id is one file name: letters, digits, `-`, `_` and `.`, not
/// `.` or `..`, at most 255 bytes (the master checks this too).
pub fn valid_volume_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A container path is relative to the sandbox, without `.` or `..`
/// components (tasks have no image whose root an absolute path could name).
pub fn valid_container_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 4096
        && !p.starts_with('/')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

pub(crate) fn parse_value(value: &str) -> Result<Value, String> {
    if let Some(inner) = value.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("unclosed '['")?;
        let mut pairs = Vec::new();
        for part in inner.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (b, e) = match part.split_once('-') {
                Some((b, e)) => (b.trim(), e.trim()),
                None => (part, part),
            };
            let b: u64 = b.parse().map_err(|_| format!("invalid range bound {b:?}"))?;
            let e: u64 = e.parse().map_err(|_| format!("invalid range bound {e:?}"))?;
            if b > e {
                return Err(format!("range {b}-{e} is reversed"));
            }
            pairs.push((b, e));
        }
        Ok(Value::Ranges(Ranges::new(pairs)))
    } else if let Some(inner) = value.strip_prefix('{') {
        let inner = inner.strip_suffix('}').ok_or("unclosed '{'")?;
        Ok(Value::Set(inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()))
    } else {
        let v: f64 = value.parse().map_err(|_| format!("invalid scalar {value:?}"))?;
        if !v.is_finite() || v.abs() > MAX_SCALAR {
            return Err(format!("invalid scalar {value:?}: must be a number of at most {MAX_SCALAR}"));
        }
        Ok(Value::Scalar(Fixed::from_f64(v)))
    }
}

/// An agent attribute, e.g. `rack:r1`, `zone:z1`, `level:3`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Attribute {
    pub name: String,
    pub value: AttributeValue,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum AttributeValue {
    Text(String),
    Scalar(Fixed),
    Ranges(Ranges),
    Set(BTreeSet<String>),
}

impl fmt::Display for AttributeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttributeValue::Text(t) => write!(f, "{t}"),
            AttributeValue::Scalar(s) => write!(f, "{s}"),
            AttributeValue::Ranges(r) => write!(f, "{r}"),
            AttributeValue::Set(s) => write!(f, "{}", Value::Set(s.clone())),
        }
    }
}

/// Parses `name:value;...` attributes: numbers are scalars, `[..]` ranges,
/// `{..}` sets, anything else text.
pub fn parse_attributes(text: &str) -> Result<Vec<Attribute>, ParseError> {
    let mut out: Vec<Attribute> = Vec::new();
    for item in split_top_level(text, ';') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (name, value) = item.split_once(':').ok_or_else(|| perr(item, "expected name:value"))?;
        let (name, value) = (name.trim(), value.trim());
        if !valid_name(name) {
            return Err(perr(item, format!("invalid attribute name {name:?}")));
        }
        if out.iter().any(|a| a.name == name) {
            return Err(perr(item, format!("duplicate attribute {name:?}")));
        }
        let value = if value.starts_with('[') || value.starts_with('{') {
            match parse_value(value).map_err(|why| perr(item, why))? {
                Value::Ranges(r) => AttributeValue::Ranges(r),
                Value::Set(s) => AttributeValue::Set(s),
                Value::Scalar(s) => AttributeValue::Scalar(s),
            }
        } else if let Ok(v) = value.parse::<f64>() {
            if !v.is_finite() {
                return Err(perr(item, "invalid scalar"));
            }
            AttributeValue::Scalar(Fixed::from_f64(v))
        } else if value.is_empty() {
            return Err(perr(item, "empty attribute value"));
        } else {
            AttributeValue::Text(value.to_string())
        };
        out.push(Attribute { name: name.to_string(), value });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_mesos_text() {
        let r = Resources::parse("cpus:4;mem:8192;ports:[31000-32000];cpus(eng):2").unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r.cpus(), 6.0);
        assert_eq!(r.mem_mb(), 8192.0);
        assert_eq!(r.ports(), Ranges::single(31000, 32000));
        assert_eq!(r.usable_by("eng").cpus(), 6.0);
        assert_eq!(r.usable_by("other").cpus(), 4.0);
        let eng = r.filter(|x| x.role() == "eng");
        assert_eq!(eng.to_string(), "cpus(eng):2");
    }

    #[test]
    fn names_and_roles_are_copied_without_allocating() {
        let r = Resources::parse("cpus(eng/dev/batch-jobs-1):2").unwrap().allocate_to("eng/dev/batch-jobs-1");
        let copy = r.clone();
        let c = copy.iter().next().unwrap();
        assert!(!c.name.is_heap_allocated());
        assert!(!c.allocation_role.as_ref().unwrap().is_heap_allocated());
        assert!(!c.reservation.as_ref().unwrap().role.is_heap_allocated());
    }

    #[test]
    fn take_parts_moves_out_whole_and_splits_scalars() {
        let mut r = Resources::parse("cpus:4;mem:8192;ports:[31000-32000];cpus(eng):2").unwrap();
        let before = r.clone();
        // In the order asked: the reservation, half the memory, the ports
        // (whole: they are not a scalar).
        let taken = r.take_parts(&[(3, None), (1, Some(Fixed::from_f64(4096.0).0)), (2, Some(1))]);
        assert_eq!(taken.to_string(), "cpus(eng):2; mem:4096; ports:[31000-32000]");
        assert_eq!(r.to_string(), "cpus:4; mem:4096");
        let mut back = r.clone();
        back.add(&taken);
        assert!(back.contains(&before) && before.contains(&back));
        // An amount no smaller than the scalar takes all of it.
        let all = r.take_parts(&[(0, Some(Fixed::from_f64(5.0).0))]);
        assert_eq!((all.to_string().as_str(), r.to_string().as_str()), ("cpus:4", "mem:4096"));
        assert!(r.take_parts(&[]).is_empty());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn parses_principal_sets_and_whitespace() {
        let r = Resources::parse(" cpus(eng, alice):1.5 ; gpus_models:{a100, h100};ports:[1-2,5-6]").unwrap();
        let cpu = r.iter().find(|x| x.name == "cpus").unwrap();
        assert_eq!(cpu.reservation.as_ref().unwrap().principal.as_deref(), Some("alice"));
        assert_eq!(r.ports().count(), 4);
        assert!(matches!(&r.iter().find(|x| x.name == "gpus_models").unwrap().value, Value::Set(s) if s.len() == 2));
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "cpus",
            "cpus:abc",
            "cpus:-1",
            "ports:[5-1]",
            "ports:[1-",
            "cpus(:1",
            "(eng):1",
            "cpus(a b):1",
            "cpus:inf",
            "cpus:1e300",
        ] {
            assert!(Resources::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn fixed_point_does_not_drift() {
        let mut total = Resources::parse("cpus:1").unwrap();
        let tenth = Resources::parse("cpus:0.1").unwrap();
        for _ in 0..10 {
            total.subtract(&tenth).unwrap();
        }
        assert!(total.is_empty(), "{total}");
    }

    #[test]
    fn subtract_refuses_what_is_not_there() {
        let mut r = Resources::parse("cpus:1;ports:[10-20]").unwrap();
        let before = r.clone();
        assert!(r.subtract(&Resources::parse("cpus:2").unwrap()).is_err());
        assert!(r.subtract(&Resources::parse("ports:[19-21]").unwrap()).is_err());
        assert!(r.subtract(&Resources::parse("cpus(eng):1").unwrap()).is_err());
        assert_eq!(r, before);
        r.subtract(&Resources::parse("ports:[12-13]").unwrap()).unwrap();
        assert_eq!(r.ports().to_string(), "[10-11, 14-20]");
    }

    #[test]
    fn attributes() {
        let a = parse_attributes("rack:r1;zone:z1;level:3;ids:[1-3];tags:{a,b}").unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!(a[0].value, AttributeValue::Text("r1".into()));
        assert_eq!(a[2].value, AttributeValue::Scalar(Fixed(3000)));
        assert!(parse_attributes("rack:r1;rack:r2").is_err());
        assert!(parse_attributes("rack").is_err());
    }

    #[test]
    fn roles() {
        for ok in ["*", "eng", "eng/dev", "a.b", "x-y"] {
            assert!(valid_role(ok), "{ok}");
        }
        for bad in ["", "/eng", "eng/", "eng//dev", "..", "eng/.", "-x", "a b", "a*"] {
            assert!(!valid_role(bad), "{bad}");
        }
    }

    #[test]
    fn volume_ids_and_container_paths() {
        for ok in ["v1", "db-0.data", "a_b"] {
            assert!(valid_volume_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(256)] {
            assert!(!valid_volume_id(bad), "{bad}");
        }
        for ok in ["data", "a/b/c", "x.y"] {
            assert!(valid_container_path(ok), "{ok}");
        }
        for bad in ["", "/abs", "a/../b", "./a", "a//b", "a/"] {
            assert!(!valid_container_path(bad), "{bad}");
        }
    }

    fn arb_ranges() -> impl Strategy<Value = Ranges> {
        prop::collection::vec((0u64..200, 0u64..20), 0..6)
            .prop_map(|v| Ranges::new(v.into_iter().map(|(b, l)| (b, b + l)).collect()))
    }

    fn arb_resources() -> impl Strategy<Value = Resources> {
        let role = prop::sample::select(vec!["*", "eng", "ops"]);
        let scalar =
            (prop::sample::select(vec!["cpus", "mem", "disk", "gpus"]), 0i64..10_000, role.clone(), any::<bool>())
                .prop_map(|(n, v, role, rev)| {
                    let mut r = Resource::scalar(n, 0.0);
                    r.value = Value::Scalar(Fixed(v));
                    r.revocable = rev;
                    if role != "*" {
                        r = r.reserved_to(role, ReservationKind::Static);
                    }
                    r
                });
        let ports = (arb_ranges(), role).prop_map(|(rg, role)| {
            let r = Resource::ranges("ports", rg);
            if role != "*" {
                r.reserved_to(role, ReservationKind::Dynamic)
            } else {
                r
            }
        });
        prop::collection::vec(prop_oneof![scalar, ports], 0..8).prop_map(Resources::from_vec)
    }

    proptest! {
        #[test]
        fn add_then_subtract_is_identity(a in arb_resources(), b in arb_resources()) {
            let sum = a.plus(&b);
            prop_assert!(sum.contains(&a));
            prop_assert!(sum.contains(&b));
            let back = sum.minus(&b).unwrap();
            // Ranges may overlap between a and b, so compare what is contained.
            prop_assert!(a.contains(&back));
        }

        #[test]
        fn add_is_commutative(a in arb_resources(), b in arb_resources()) {
            let ab = a.plus(&b);
            let ba = b.plus(&a);
            prop_assert!(ab.contains(&ba) && ba.contains(&ab));
        }

        #[test]
        fn scalars_add_exactly(a in arb_resources(), b in arb_resources()) {
            let sum = a.plus(&b);
            for n in ["cpus", "mem", "disk", "gpus"] {
                prop_assert_eq!(sum.scalar(n).0, a.scalar(n).0 + b.scalar(n).0);
            }
        }

        #[test]
        fn subtract_never_goes_negative_and_refusal_changes_nothing(a in arb_resources(), b in arb_resources()) {
            let mut x = a.clone();
            match x.subtract(&b) {
                Ok(()) => {
                    for r in x.iter() {
                        if let Value::Scalar(s) = r.value { prop_assert!(s.0 > 0); }
                    }
                    prop_assert!(a.contains(&x));
                }
                Err(_) => prop_assert_eq!(x, a),
            }
        }

        #[test]
        fn flatten_preserves_quantities(a in arb_resources()) {
            let f = a.flatten("eng");
            for n in ["cpus", "mem", "disk", "gpus"] {
                prop_assert_eq!(f.scalar(n), a.scalar(n));
            }
            prop_assert_eq!(f.ports(), a.ports());
            prop_assert!(f.iter().all(|r| r.role() == "eng"));
            prop_assert!(a.flatten("*").iter().all(|r| r.reservation.is_none()));
        }

        #[test]
        fn text_round_trips(a in arb_resources()) {
            // Revocable markers have no text form; the rest round-trips.
            let plain = a.filter(|r| !r.revocable);
            let text = plain.to_string().replace("; ", ";");
            if !plain.is_empty() {
                let back = Resources::parse(&text).unwrap();
                // Dynamic reservations print like static ones.
                let as_static = |r: &Resources| Resources::from_vec(r.iter().cloned().map(|mut x| {
                    if let Some(res) = x.reservation.as_mut() { res.kind = ReservationKind::Static; }
                    x
                }).collect());
                prop_assert_eq!(back, as_static(&plain));
            }
        }

        #[test]
        fn ranges_difference_and_union(a in arb_ranges(), b in arb_ranges()) {
            let d = a.difference(&b);
            prop_assert!(a.contains(&d));
            for &(x, y) in d.as_slice() {
                for v in x..=y { prop_assert!(!b.contains_value(v)); }
            }
            prop_assert_eq!(d.union(&b), a.union(&b));
        }
    }
}
