//! Mesos v1 common types (`mesos.proto`'s `mesos.v1` package), in the JSON shape
//! Mesos clients send and expect: the same snake_case field names, enums as
//! their Mesos names, `bytes` as base64. The same structs are archived with rkyv
//! on the master↔agent wire, so a task's description crosses the cluster in one
//! form.
//!
//! Only the fields Agora acts on are modelled; unknown input fields are ignored,
//! as Mesos's own JSON parser does.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::resources::{
    Attribute, AttributeValue, Fixed, Name, Ranges, Reservation, ReservationKind, Resource, Resources, Value, Volume,
    DEFAULT_ROLE,
};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
            Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[rkyv(derive(Debug, PartialEq, Eq, Hash))]
        pub struct $name {
            pub value: String,
        }

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                $name { value: value.into() }
            }

            pub fn as_str(&self) -> &str {
                &self.value
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.value)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name::new(s)
            }
        }

        /// Maps keyed by the id are looked up by a `&str` (an archived
        /// message's, for one), without making an id first.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.value
            }
        }
    };
}

id_type!(
    /// Assigned by the master when a framework first subscribes.
    FrameworkId
);
id_type!(
    /// Assigned by the master when an agent first registers.
    AgentId
);
id_type!(
    /// Unique per offer, assigned by the master.
    OfferId
);
id_type!(
    /// Chosen by the framework; unique within the framework.
    TaskId
);
id_type!(
    /// Chosen by the framework for custom executors (not supported yet).
    ExecutorId
);

/// serde helpers for the encodings Mesos's JSON uses.
pub mod json {
    use super::*;

    /// `bytes` fields are base64 strings.
    pub mod base64_opt {
        use base64::Engine;

        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            let s: Option<String> = Option::deserialize(d)?;
            match s {
                None => Ok(None),
                Some(s) => base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map(Some)
                    .map_err(|e| D::Error::custom(format!("invalid base64: {e}"))),
            }
        }
    }

    /// 64-bit integers arrive as JSON numbers (Mesos) or strings (protobuf's
    /// canonical JSON mapping); accept both.
    pub fn i64_any<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            N(i64),
            F(f64),
            S(String),
        }
        match Any::deserialize(d)? {
            Any::N(n) => Ok(n),
            Any::F(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Ok(f as i64),
            Any::F(f) => Err(D::Error::custom(format!("expected an integer, got {f}"))),
            Any::S(s) => s.parse().map_err(|_| D::Error::custom(format!("expected an integer, got {s:?}"))),
        }
    }

    pub fn u64_any<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v = i64_any(d)?;
        u64::try_from(v).map_err(|_| D::Error::custom(format!("expected a non-negative integer, got {v}")))
    }
}

/// `Labels`: free-form key/value pairs.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Labels {
    #[serde(default)]
    pub labels: Vec<Label>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Label {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|l| l.key == key).and_then(|l| l.value.as_deref())
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Labels {
        self.labels.push(Label { key: key.to_string(), value: Some(value.into()) });
        self
    }
}

/// `DurationInfo`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct DurationInfo {
    #[serde(deserialize_with = "json::i64_any")]
    pub nanoseconds: i64,
}

/// `TimeInfo`: nanoseconds since the epoch.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct TimeInfo {
    #[serde(deserialize_with = "json::i64_any")]
    pub nanoseconds: i64,
}

/// `KillPolicy`: how long the agent waits between SIGTERM and SIGKILL.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct KillPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<DurationInfo>,
}

/// `FrameworkInfo.Capability.Type`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[rkyv(derive(Debug, PartialEq))]
pub enum CapabilityType {
    Unknown,
    RevocableResources,
    TaskKillingState,
    GpuResources,
    SharedResources,
    PartitionAware,
    MultiRole,
    ReservationRefinement,
    RegionAware,
    /// A capability this master does not know; kept so that input with newer
    /// capabilities is not rejected.
    #[serde(other)]
    Other,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Capability {
    #[serde(rename = "type")]
    pub kind: CapabilityType,
}

/// `FrameworkInfo`: what a framework says about itself at SUBSCRIBE.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct FrameworkInfo {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<FrameworkId>,
    /// Seconds the master keeps a disconnected framework's tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webui_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<Capability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
}

impl FrameworkInfo {
    pub fn has_capability(&self, c: CapabilityType) -> bool {
        self.capabilities.iter().any(|x| x.kind == c)
    }

    /// The roles the framework subscribes with: `roles` for MULTI_ROLE
    /// frameworks, otherwise `role`, otherwise `*`.
    pub fn effective_roles(&self) -> Vec<String> {
        if self.has_capability(CapabilityType::MultiRole) && !self.roles.is_empty() {
            self.roles.clone()
        } else {
            vec![self.role.clone().unwrap_or_else(|| DEFAULT_ROLE.to_string())]
        }
    }

    pub fn failover_timeout_secs(&self) -> f64 {
        self.failover_timeout.unwrap_or(0.0)
    }
}

/// `CommandInfo.URI`: accepted and passed to the agent, which does not fetch yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct CommandUri {
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct EnvVariable {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Environment {
    #[serde(default)]
    pub variables: Vec<EnvVariable>,
}

/// `CommandInfo`: what to run. With `shell` (the default) `value` runs under
/// `/bin/sh -c`; otherwise `value` is the program and `arguments` its argv.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct CommandInfo {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<CommandUri>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl CommandInfo {
    pub fn shell(cmd: impl Into<String>) -> CommandInfo {
        CommandInfo { value: Some(cmd.into()), ..Default::default() }
    }
}

/// The parts of `ExecutorInfo` the master reads: only command tasks are
/// supported, so a task that names an executor is refused with a reason.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct ExecutorInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<ExecutorId>,
}

/// The parts of `ContainerInfo` the master reads: Agora runs tasks as plain
/// processes in cgroups, so an image or a Docker container is refused.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct ContainerInfo {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesos: Option<MesosContainerInfo>,
}

#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct MesosContainerInfo {
    /// Present when the task asks for a container image.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "present")]
    pub image: Option<bool>,
}

/// Records only whether a JSON value was present.
mod present {
    use super::*;
    pub fn serialize<S: Serializer>(_v: &Option<bool>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_none()
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Some(true))
    }
}

/// `TaskInfo`: one task a framework launches.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct TaskInfo {
    #[serde(default)]
    pub name: String,
    pub task_id: TaskId,
    pub agent_id: AgentId,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_policy: Option<KillPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json::base64_opt")]
    pub data: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_time: Option<DurationInfo>,
}

/// `TaskState`, with Mesos's names.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum TaskState {
    #[serde(rename = "TASK_STAGING")]
    Staging,
    #[serde(rename = "TASK_STARTING")]
    Starting,
    #[serde(rename = "TASK_RUNNING")]
    Running,
    #[serde(rename = "TASK_KILLING")]
    Killing,
    #[serde(rename = "TASK_FINISHED")]
    Finished,
    #[serde(rename = "TASK_FAILED")]
    Failed,
    #[serde(rename = "TASK_KILLED")]
    Killed,
    #[serde(rename = "TASK_ERROR")]
    Error,
    #[serde(rename = "TASK_LOST")]
    Lost,
    #[serde(rename = "TASK_DROPPED")]
    Dropped,
    #[serde(rename = "TASK_UNREACHABLE")]
    Unreachable,
    #[serde(rename = "TASK_GONE")]
    Gone,
    #[serde(rename = "TASK_GONE_BY_OPERATOR")]
    GoneByOperator,
    #[serde(rename = "TASK_UNKNOWN")]
    Unknown,
}

impl TaskState {
    pub const ALL: [TaskState; 14] = [
        TaskState::Staging,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Killing,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Killed,
        TaskState::Error,
        TaskState::Lost,
        TaskState::Dropped,
        TaskState::Unreachable,
        TaskState::Gone,
        TaskState::GoneByOperator,
        TaskState::Unknown,
    ];

    /// A terminal task never changes state again and holds no resources.
    /// (`TASK_UNREACHABLE` is not terminal: the agent may come back.)
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished
                | TaskState::Failed
                | TaskState::Killed
                | TaskState::Error
                | TaskState::Lost
                | TaskState::Dropped
                | TaskState::Gone
                | TaskState::GoneByOperator
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            TaskState::Staging => "TASK_STAGING",
            TaskState::Starting => "TASK_STARTING",
            TaskState::Running => "TASK_RUNNING",
            TaskState::Killing => "TASK_KILLING",
            TaskState::Finished => "TASK_FINISHED",
            TaskState::Failed => "TASK_FAILED",
            TaskState::Killed => "TASK_KILLED",
            TaskState::Error => "TASK_ERROR",
            TaskState::Lost => "TASK_LOST",
            TaskState::Dropped => "TASK_DROPPED",
            TaskState::Unreachable => "TASK_UNREACHABLE",
            TaskState::Gone => "TASK_GONE",
            TaskState::GoneByOperator => "TASK_GONE_BY_OPERATOR",
            TaskState::Unknown => "TASK_UNKNOWN",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `TaskStatus.Source`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub enum Source {
    #[serde(rename = "SOURCE_MASTER")]
    Master,
    #[serde(rename = "SOURCE_AGENT")]
    Agent,
    #[serde(rename = "SOURCE_EXECUTOR")]
    Executor,
}

/// `TaskStatus.Reason`, with Mesos's names. Unknown names from clients are kept
/// as `Other` rather than rejected.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[rkyv(derive(Debug))]
pub enum Reason {
    ReasonCommandExecutorFailed,
    ReasonContainerLaunchFailed,
    ReasonContainerLimitationDisk,
    ReasonContainerLimitationMemory,
    ReasonContainerPreempted,
    ReasonContainerUpdateFailed,
    ReasonMaxCompletionTimeReached,
    ReasonExecutorRegistrationTimeout,
    ReasonExecutorReregistrationTimeout,
    ReasonExecutorTerminated,
    ReasonExecutorUnregistered,
    ReasonFrameworkRemoved,
    ReasonGcError,
    ReasonInvalidFrameworkid,
    ReasonInvalidOffers,
    ReasonIoSwitchboardExited,
    ReasonMasterDisconnected,
    ReasonReconciliation,
    ReasonResourcesUnknown,
    ReasonAgentDisconnected,
    ReasonAgentDrained,
    ReasonAgentRemoved,
    ReasonAgentRemovedByOperator,
    ReasonAgentReregistered,
    ReasonAgentRestarted,
    ReasonAgentUnknown,
    ReasonTaskCheckStatusUpdated,
    ReasonTaskHealthCheckStatusUpdated,
    ReasonTaskGroupInvalid,
    ReasonTaskGroupUnauthorized,
    ReasonTaskInvalid,
    ReasonTaskKilledDuringLaunch,
    ReasonTaskUnauthorized,
    ReasonTaskUnknown,
    ReasonContainerLimitation,
    ReasonContainerLimitationEphemeralStorage,
    ReasonSlaveDisconnected,
    ReasonSlaveRemoved,
    ReasonSlaveRestarted,
    ReasonSlaveUnknown,
    #[serde(other)]
    Other,
}

/// `TaskStatus`: one state change of a task. `uuid` is set on updates that
/// must be acknowledged; updates the master makes up (reconciliation, agent
/// loss) carry none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct TaskStatus {
    pub task_id: TaskId,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json::base64_opt")]
    pub data: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<ExecutorId>,
    /// Seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json::base64_opt")]
    pub uuid: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Agora puts a task's exit code here under [`EXIT_CODE_LABEL`]: Mesos's
    /// `TaskStatus` has no field for it, and labels are what every Mesos client
    /// already passes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_time: Option<TimeInfo>,
}

/// The status label that carries a finished or failed command's exit code.
pub const EXIT_CODE_LABEL: &str = "agora.exit_code";

impl TaskStatus {
    pub fn new(task_id: TaskId, state: TaskState) -> TaskStatus {
        TaskStatus {
            task_id,
            state,
            message: None,
            source: None,
            reason: None,
            data: None,
            agent_id: None,
            executor_id: None,
            timestamp: None,
            uuid: None,
            healthy: None,
            labels: None,
            unreachable_time: None,
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.labels.as_ref()?.get(EXIT_CODE_LABEL)?.parse().ok()
    }

    pub fn with_exit_code(mut self, code: i32) -> TaskStatus {
        self.labels = Some(self.labels.take().unwrap_or_default().with(EXIT_CODE_LABEL, code.to_string()));
        self
    }
}

/// `Offer.AllocationInfo`.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct AllocationInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// `Address` of a master or agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub port: u32,
}

/// `MasterInfo`, as sent in SUBSCRIBED and published for leader discovery.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MasterInfo {
    pub id: String,
    /// IPv4 address in network order packed in a u32, as Mesos does.
    pub ip: u32,
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
}

/// `Offer`: resources of one agent offered to one framework. (Archived with
/// rkyv only to compare encodings in the benches.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Offer {
    pub id: OfferId,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub hostname: String,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executor_ids: Vec<ExecutorId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_info: Option<AllocationInfo>,
}

/// Resources as Mesos's endpoints show them: `{"cpus": 1.0, "ports": "[..]"}`.
pub fn flat_resources(r: &Resources) -> serde_json::Value {
    use serde_json::{json, Map, Value as Json};
    let mut m = Map::new();
    for k in ["cpus", "gpus", "mem", "disk"] {
        m.insert(k.into(), json!(0.0));
    }
    let mut ranges: std::collections::BTreeMap<String, Resources> = std::collections::BTreeMap::new();
    for res in r.iter() {
        let name = if res.revocable { format!("{}_revocable", res.name) } else { res.name.to_string() };
        match &res.value {
            Value::Scalar(s) => {
                let cur = m.get(&name).and_then(Json::as_f64).unwrap_or(0.0);
                m.insert(name, json!(((cur + s.as_f64()) * 1000.0).round() / 1000.0));
            }
            Value::Ranges(_) => {
                ranges.entry(name).or_default().add_one(res.clone());
            }
            Value::Set(s) => {
                m.insert(name, json!(format!("{{{}}}", s.iter().cloned().collect::<Vec<_>>().join(", "))));
            }
        }
    }
    for (name, rs) in ranges {
        let all = rs.iter().fold(Ranges::default(), |acc, r| match &r.value {
            Value::Ranges(x) => acc.union(x),
            _ => acc,
        });
        m.insert(name, json!(all.to_string()));
    }
    Json::Object(m)
}

// ---------------------------------------------------------------------------
// Resources and attributes in Mesos's JSON shape.

#[derive(Serialize, Deserialize)]
pub(crate) struct JsonScalar {
    pub(crate) value: f64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct JsonRange {
    #[serde(deserialize_with = "json::u64_any")]
    pub(crate) begin: u64,
    #[serde(deserialize_with = "json::u64_any")]
    pub(crate) end: u64,
}

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct JsonRanges {
    #[serde(default)]
    pub(crate) range: Vec<JsonRange>,
}

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct JsonSet {
    #[serde(default)]
    pub(crate) item: Vec<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct JsonText {
    pub(crate) value: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum JsonValueType {
    Scalar,
    Ranges,
    Set,
    Text,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum JsonReservationType {
    Unknown,
    Static,
    Dynamic,
}

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct JsonReservation {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<JsonReservationType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) labels: Option<Labels>,
}

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct JsonRevocable {}

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct JsonPersistence {
    #[serde(default)]
    pub(crate) id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) principal: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonVolumeMode {
    #[serde(rename = "RW")]
    ReadWrite,
    #[serde(rename = "RO")]
    ReadOnly,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct JsonVolume {
    #[serde(default)]
    pub(crate) container_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mode: Option<JsonVolumeMode>,
}

/// `Resource.DiskInfo`: only persistent volumes (no disk sources).
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct JsonDisk {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) persistence: Option<JsonPersistence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) volume: Option<JsonVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct JsonResource {
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) kind: JsonValueType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scalar: Option<JsonScalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ranges: Option<JsonRanges>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) set: Option<JsonSet>,
    /// Pre-refinement role; kept in output for older clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<String>,
    /// Pre-refinement dynamic reservation info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reservation: Option<JsonReservation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) reservations: Vec<JsonReservation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) allocation_info: Option<AllocationInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) revocable: Option<JsonRevocable>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) disk: Option<JsonDisk>,
}

fn labels_to_pairs(l: Option<Labels>) -> Vec<(String, String)> {
    l.map(|l| l.labels.into_iter().map(|x| (x.key, x.value.unwrap_or_default())).collect()).unwrap_or_default()
}

fn pairs_to_labels(p: &[(String, String)]) -> Option<Labels> {
    if p.is_empty() {
        None
    } else {
        Some(Labels { labels: p.iter().map(|(k, v)| Label { key: k.clone(), value: Some(v.clone()) }).collect() })
    }
}

impl TryFrom<JsonResource> for Resource {
    type Error = String;

    fn try_from(j: JsonResource) -> Result<Resource, String> {
        if j.name.is_empty() {
            return Err("resource without a name".into());
        }
        let value = match j.kind {
            JsonValueType::Scalar => {
                let s = j.scalar.ok_or_else(|| format!("resource {:?} of type SCALAR has no 'scalar'", j.name))?;
                if !s.value.is_finite() || !(0.0..=crate::resources::MAX_SCALAR).contains(&s.value) {
                    return Err(format!("resource {:?} has invalid scalar {}", j.name, s.value));
                }
                Value::Scalar(Fixed::from_f64(s.value))
            }
            JsonValueType::Ranges => {
                let r = j.ranges.ok_or_else(|| format!("resource {:?} of type RANGES has no 'ranges'", j.name))?;
                let mut pairs = Vec::with_capacity(r.range.len());
                for x in r.range {
                    if x.begin > x.end {
                        return Err(format!("resource {:?} has reversed range {}-{}", j.name, x.begin, x.end));
                    }
                    pairs.push((x.begin, x.end));
                }
                Value::Ranges(Ranges::new(pairs))
            }
            JsonValueType::Set => Value::Set(j.set.unwrap_or_default().item.into_iter().collect::<BTreeSet<_>>()),
            JsonValueType::Text => return Err(format!("resource {:?}: TEXT resources are not supported", j.name)),
        };
        // Refined reservations: the last one is the current role.
        let reservation = if let Some(last) = j.reservations.into_iter().last() {
            let role = last.role.ok_or_else(|| format!("resource {:?} has a reservation without a role", j.name))?;
            Some(Reservation {
                kind: match last.kind {
                    Some(JsonReservationType::Dynamic) => ReservationKind::Dynamic,
                    _ => ReservationKind::Static,
                },
                role: role.into(),
                principal: last.principal,
                labels: labels_to_pairs(last.labels),
            })
        } else {
            match j.role.as_deref() {
                None | Some(DEFAULT_ROLE) => None,
                Some(role) => Some(match j.reservation {
                    Some(r) => Reservation {
                        kind: ReservationKind::Dynamic,
                        role: role.into(),
                        principal: r.principal,
                        labels: labels_to_pairs(r.labels),
                    },
                    None => Reservation {
                        kind: ReservationKind::Static,
                        role: role.into(),
                        principal: None,
                        labels: Vec::new(),
                    },
                }),
            }
        };
        if let Some(r) = &reservation {
            if !crate::resources::valid_role(&r.role) || r.role == DEFAULT_ROLE {
                return Err(format!("resource {:?} is reserved to invalid role {:?}", j.name, r.role));
            }
        }
        let volume = match j.disk {
            None => None,
            Some(d) => {
                if d.source.is_some() {
                    return Err(format!("resource {:?}: disk sources are not supported", j.name));
                }
                match (d.persistence, d.volume) {
                    (None, None) => None,
                    (Some(p), Some(v)) => Some(Volume {
                        id: p.id,
                        principal: p.principal,
                        container_path: v.container_path,
                        read_only: v.mode == Some(JsonVolumeMode::ReadOnly),
                    }),
                    (Some(_), None) => {
                        return Err(format!("resource {:?}: a persistent volume needs 'disk.volume'", j.name))
                    }
                    (None, Some(_)) => {
                        return Err(format!("resource {:?}: 'disk.volume' without 'disk.persistence'", j.name))
                    }
                }
            }
        };
        if volume.is_some() && !matches!(value, Value::Scalar(_)) {
            return Err(format!("resource {:?}: only a scalar can hold a persistent volume", j.name));
        }
        Ok(Resource {
            name: j.name.into(),
            value,
            reservation: reservation.map(Box::new),
            revocable: j.revocable.is_some(),
            allocation_role: j.allocation_info.and_then(|a| a.role.map(Name::from)),
            volume: volume.map(Box::new),
        })
    }
}

impl From<&Resource> for JsonResource {
    fn from(r: &Resource) -> JsonResource {
        let (kind, scalar, ranges, set) = match &r.value {
            Value::Scalar(s) => (JsonValueType::Scalar, Some(JsonScalar { value: s.as_f64() }), None, None),
            Value::Ranges(rg) => (
                JsonValueType::Ranges,
                None,
                Some(JsonRanges {
                    range: rg.as_slice().iter().map(|&(begin, end)| JsonRange { begin, end }).collect(),
                }),
                None,
            ),
            Value::Set(s) => (JsonValueType::Set, None, None, Some(JsonSet { item: s.iter().cloned().collect() })),
        };
        let reservations = r
            .reservation
            .iter()
            .map(|res| JsonReservation {
                kind: Some(match res.kind {
                    ReservationKind::Static => JsonReservationType::Static,
                    ReservationKind::Dynamic => JsonReservationType::Dynamic,
                }),
                role: Some(res.role.to_string()),
                principal: res.principal.clone(),
                labels: pairs_to_labels(&res.labels),
            })
            .collect();
        JsonResource {
            name: r.name.to_string(),
            kind,
            scalar,
            ranges,
            set,
            role: Some(r.role().to_string()),
            reservation: None,
            reservations,
            allocation_info: r.allocation_role.as_ref().map(|role| AllocationInfo { role: Some(role.to_string()) }),
            revocable: r.revocable.then(JsonRevocable::default),
            disk: r.volume.as_ref().map(|v| JsonDisk {
                persistence: Some(JsonPersistence { id: v.id.clone(), principal: v.principal.clone() }),
                volume: Some(JsonVolume {
                    container_path: v.container_path.clone(),
                    mode: Some(if v.read_only { JsonVolumeMode::ReadOnly } else { JsonVolumeMode::ReadWrite }),
                }),
                source: None,
            }),
        }
    }
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        JsonResource::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Resource, D::Error> {
        Resource::try_from(JsonResource::deserialize(d)?).map_err(D::Error::custom)
    }
}

impl Serialize for Resources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Resources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Resources, D::Error> {
        Ok(Resources::from_vec(Vec::<Resource>::deserialize(d)?))
    }
}

#[derive(Serialize, Deserialize)]
struct JsonAttribute {
    name: String,
    #[serde(rename = "type")]
    kind: JsonValueType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scalar: Option<JsonScalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ranges: Option<JsonRanges>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set: Option<JsonSet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<JsonText>,
}

impl Serialize for Attribute {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut j = JsonAttribute {
            name: self.name.clone(),
            kind: JsonValueType::Text,
            scalar: None,
            ranges: None,
            set: None,
            text: None,
        };
        match &self.value {
            AttributeValue::Text(t) => j.text = Some(JsonText { value: t.clone() }),
            AttributeValue::Scalar(x) => {
                j.kind = JsonValueType::Scalar;
                j.scalar = Some(JsonScalar { value: x.as_f64() });
            }
            AttributeValue::Ranges(r) => {
                j.kind = JsonValueType::Ranges;
                j.ranges = Some(JsonRanges {
                    range: r.as_slice().iter().map(|&(begin, end)| JsonRange { begin, end }).collect(),
                });
            }
            AttributeValue::Set(x) => {
                j.kind = JsonValueType::Set;
                j.set = Some(JsonSet { item: x.iter().cloned().collect() });
            }
        }
        j.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Attribute {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Attribute, D::Error> {
        let j = JsonAttribute::deserialize(d)?;
        let missing = |what: &str| D::Error::custom(format!("attribute {:?} has no '{what}'", j.name));
        let value = match j.kind {
            JsonValueType::Text => AttributeValue::Text(j.text.as_ref().ok_or_else(|| missing("text"))?.value.clone()),
            JsonValueType::Scalar => {
                AttributeValue::Scalar(Fixed::from_f64(j.scalar.as_ref().ok_or_else(|| missing("scalar"))?.value))
            }
            JsonValueType::Ranges => AttributeValue::Ranges(Ranges::new(
                j.ranges.as_ref().ok_or_else(|| missing("ranges"))?.range.iter().map(|r| (r.begin, r.end)).collect(),
            )),
            JsonValueType::Set => {
                AttributeValue::Set(j.set.as_ref().ok_or_else(|| missing("set"))?.item.iter().cloned().collect())
            }
        };
        Ok(Attribute { name: j.name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_json_matches_mesos() {
        let r = Resources::parse("cpus:1.5;ports:[31000-31001];cpus(eng):2").unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v[0]["name"], "cpus");
        assert_eq!(v[0]["type"], "SCALAR");
        assert_eq!(v[0]["scalar"]["value"], 1.5);
        assert_eq!(v[0]["role"], "*");
        assert_eq!(v[1]["ranges"]["range"][0]["begin"], 31000);
        assert_eq!(v[2]["reservations"][0]["role"], "eng");
        assert_eq!(v[2]["reservations"][0]["type"], "STATIC");
        let back: Resources = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn persistent_volumes_round_trip_and_carve_out_of_an_agent() {
        let text = r#"{"name":"disk","type":"SCALAR","scalar":{"value":128},
            "reservations":[{"type":"DYNAMIC","role":"eng","principal":"p"}],
            "disk":{"persistence":{"id":"v1","principal":"p"},"volume":{"container_path":"data","mode":"RO"}}}"#;
        let r: Resource = serde_json::from_str(text).unwrap();
        let v = r.volume.clone().unwrap();
        assert_eq!((v.id.as_str(), v.container_path.as_str(), v.read_only), ("v1", "data", true));
        let back: Resource = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(r.is_checkpointed());
        assert_eq!(r.base(), Resource::scalar("disk", 128.0));
        // A volume never merges with plain disk or another volume.
        let mut other = r.clone();
        other.volume.as_mut().unwrap().id = "v2".into();
        assert_eq!(Resources::from_vec(vec![r.clone(), other.clone()]).len(), 2);

        let base = Resources::parse("cpus:2;disk:1024").unwrap();
        let kept = Resources::from_vec(vec![r.clone()]);
        let total = Resources::with_checkpointed(&base, &kept).unwrap();
        assert_eq!(total.disk_mb(), 1024.0);
        assert_eq!(total.checkpointed(), kept);
        assert_eq!(total.without_checkpointed(), base);
        let small = Resources::parse("cpus:2;disk:64").unwrap();
        assert!(Resources::with_checkpointed(&small, &kept).is_err());

        for bad in [
            r#"{"name":"disk","type":"SCALAR","scalar":{"value":1},"disk":{"persistence":{"id":"v"}}}"#,
            r#"{"name":"disk","type":"SCALAR","scalar":{"value":1},"disk":{"volume":{"container_path":"d"}}}"#,
            r#"{"name":"disk","type":"SCALAR","scalar":{"value":1},"disk":{"source":{"type":"MOUNT"}}}"#,
            r#"{"name":"p","type":"RANGES","ranges":{"range":[]},"disk":{"persistence":{"id":"v"},"volume":{"container_path":"d"}}}"#,
        ] {
            assert!(serde_json::from_str::<Resource>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepts_legacy_and_refined_reservations() {
        let legacy: Resource = serde_json::from_str(
            r#"{"name":"mem","type":"SCALAR","scalar":{"value":64},"role":"eng","reservation":{"principal":"p"}}"#,
        )
        .unwrap();
        assert_eq!(legacy.role(), "eng");
        assert_eq!(legacy.reservation.as_ref().unwrap().kind, ReservationKind::Dynamic);
        let refined: Resource = serde_json::from_str(
            r#"{"name":"mem","type":"SCALAR","scalar":{"value":64},"reservations":[{"type":"DYNAMIC","role":"eng/dev","principal":"p"}]}"#,
        )
        .unwrap();
        assert_eq!(refined.role(), "eng/dev");
        for bad in [
            r#"{"name":"cpus","type":"SCALAR"}"#,
            r#"{"name":"cpus","type":"SCALAR","scalar":{"value":-1}}"#,
            r#"{"name":"cpus","type":"SCALAR","scalar":{"value":1e300}}"#,
            r#"{"name":"ports","type":"RANGES","ranges":{"range":[{"begin":5,"end":1}]}}"#,
            r#"{"name":"x","type":"TEXT","text":{"value":"a"}}"#,
            r#"{"name":"cpus","type":"BOGUS","scalar":{"value":1}}"#,
        ] {
            assert!(serde_json::from_str::<Resource>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_info_from_pymesos_style_json() {
        let t: TaskInfo = serde_json::from_str(
            r#"{"name":"t","task_id":{"value":"1"},"agent_id":{"value":"a"},
                "resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":0.1}}],
                "command":{"value":"echo hi","environment":{"variables":[{"name":"A","value":"b"}]}},
                "kill_policy":{"grace_period":{"nanoseconds":"1000000000"}},
                "data":"aGVsbG8=","health_check":{"type":"COMMAND"}}"#,
        )
        .unwrap();
        assert_eq!(t.resources.cpus(), 0.1);
        assert_eq!(t.data.as_deref(), Some(&b"hello"[..]));
        assert_eq!(t.kill_policy.unwrap().grace_period.unwrap().nanoseconds, 1_000_000_000);
    }

    #[test]
    fn status_names_and_exit_code() {
        let s = TaskStatus::new(TaskId::new("t"), TaskState::Failed).with_exit_code(3);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["state"], "TASK_FAILED");
        assert_eq!(s.exit_code(), Some(3));
        let r: Reason = serde_json::from_str("\"REASON_CONTAINER_LIMITATION_MEMORY\"").unwrap();
        assert_eq!(r, Reason::ReasonContainerLimitationMemory);
        let r: Reason = serde_json::from_str("\"REASON_FROM_THE_FUTURE\"").unwrap();
        assert_eq!(r, Reason::Other);
        for st in TaskState::ALL {
            let j = serde_json::to_string(&st).unwrap();
            assert_eq!(j, format!("\"{}\"", st.name()));
        }
    }

    #[test]
    fn attributes_json() {
        let a = crate::resources::parse_attributes("zone:z1;level:3").unwrap();
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v[0]["type"], "TEXT");
        assert_eq!(v[0]["text"]["value"], "z1");
        assert_eq!(v[1]["scalar"]["value"], 3.0);
        let back: Vec<Attribute> = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
    }
}
