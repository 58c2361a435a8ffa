//! The Mesos v1 scheduler API (`mesos.v1.scheduler`): calls a framework sends
//! to `POST /api/v1/scheduler` and events it receives on its subscription
//! stream, in Mesos's JSON shape.

use serde::{Deserialize, Serialize};

use crate::mesos::{
    json, AgentId, ExecutorId, FrameworkId, FrameworkInfo, KillPolicy, MasterInfo, Offer, OfferId, TaskId, TaskInfo,
    TaskStatus,
};
use crate::resources::Resources;

/// `Call.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallType {
    Unknown,
    Subscribe,
    Teardown,
    Accept,
    Decline,
    AcceptInverseOffers,
    DeclineInverseOffers,
    Revive,
    Kill,
    Shutdown,
    Acknowledge,
    AcknowledgeOperationStatus,
    Reconcile,
    ReconcileOperations,
    Message,
    Request,
    Suppress,
    UpdateFramework,
}

/// `Filters`: how long a declined or partly used offer's resources stay away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Filters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse_seconds: Option<f64>,
}

/// Mesos's default for `Filters.refuse_seconds`.
pub const DEFAULT_REFUSE_SECONDS: f64 = 5.0;
/// Mesos caps `refuse_seconds` at a year.
pub const MAX_REFUSE_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

impl Filters {
    /// The effective refusal: the default when unset, negative or not a number,
    /// capped at a year.
    pub fn refuse_seconds(f: Option<&Filters>) -> f64 {
        match f.and_then(|f| f.refuse_seconds) {
            Some(s) if s.is_finite() && s >= 0.0 => s.min(MAX_REFUSE_SECONDS),
            Some(s) if s == f64::INFINITY => MAX_REFUSE_SECONDS,
            _ => DEFAULT_REFUSE_SECONDS,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    pub framework_info: FrameworkInfo,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed_roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_constraints: Option<OfferConstraints>,
}

/// `OfferConstraints`: per role, the agents whose resources the framework
/// wants offered, by their attributes. A role's groups are ORed, the
/// constraints within a group ANDed; a role without constraints is offered
/// every agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OfferConstraints {
    #[serde(default)]
    pub role_constraints: std::collections::BTreeMap<String, RoleConstraints>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleConstraints {
    #[serde(default)]
    pub groups: Vec<AttributeConstraintGroup>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AttributeConstraintGroup {
    #[serde(default)]
    pub attribute_constraints: Vec<AttributeConstraint>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AttributeConstraint {
    #[serde(default)]
    pub selector: ConstraintSelector,
    #[serde(default)]
    pub predicate: ConstraintPredicate,
}

/// One of: a pseudo-attribute (`HOSTNAME`) or an attribute name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConstraintSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudoattribute_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute_name: Option<String>,
}

/// One of the predicates (Mesos's names; `{}` marks the empty ones).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConstraintPredicate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_exists: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_equals: Option<TextValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_not_equals: Option<TextValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_matches: Option<TextRegex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_not_matches: Option<TextRegex>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TextValue {
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TextRegex {
    #[serde(default)]
    pub regex: String,
}

/// `Offer.Operation.Type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationType {
    #[default]
    Unknown,
    Launch,
    LaunchGroup,
    Reserve,
    Unreserve,
    Create,
    Destroy,
    GrowVolume,
    ShrinkVolume,
    CreateDisk,
    DestroyDisk,
    #[serde(other)]
    Other,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    #[serde(default)]
    pub task_infos: Vec<TaskInfo>,
}

/// `Offer.Operation.LaunchGroup`: only its tasks are read (to refuse them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LaunchGroup {
    #[serde(default)]
    pub task_group: TaskGroup,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskGroup {
    #[serde(default)]
    pub tasks: Vec<TaskInfo>,
}

/// `Offer.Operation.Reserve` and `Unreserve`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReserveOp {
    #[serde(default)]
    pub resources: Resources,
}

/// `Offer.Operation.Create` and `Destroy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumesOp {
    #[serde(default)]
    pub volumes: Resources,
}

/// `OperationID`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OperationId {
    pub value: String,
}

/// `Offer.Operation`: LAUNCH, and RESERVE, UNRESERVE, CREATE and DESTROY,
/// carried out in order on the offers' resources. LAUNCH_GROUP and the
/// others are refused with a reason.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    #[serde(rename = "type")]
    pub kind: OperationType,
    /// With an id, the framework is told how the operation ended
    /// (UPDATE_OPERATION_STATUS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<OperationId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<Launch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_group: Option<LaunchGroup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<ReserveOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreserve: Option<ReserveOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<VolumesOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy: Option<VolumesOp>,
}

impl Operation {
    pub fn launch(tasks: Vec<TaskInfo>) -> Operation {
        Operation { kind: OperationType::Launch, launch: Some(Launch { task_infos: tasks }), ..Default::default() }
    }

    pub fn reserve(resources: Resources) -> Operation {
        Operation { kind: OperationType::Reserve, reserve: Some(ReserveOp { resources }), ..Default::default() }
    }

    pub fn unreserve(resources: Resources) -> Operation {
        Operation { kind: OperationType::Unreserve, unreserve: Some(ReserveOp { resources }), ..Default::default() }
    }

    pub fn create(volumes: Resources) -> Operation {
        Operation { kind: OperationType::Create, create: Some(VolumesOp { volumes }), ..Default::default() }
    }

    pub fn destroy(volumes: Resources) -> Operation {
        Operation { kind: OperationType::Destroy, destroy: Some(VolumesOp { volumes }), ..Default::default() }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Accept {
    #[serde(default)]
    pub offer_ids: Vec<OfferId>,
    #[serde(default)]
    pub operations: Vec<Operation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Decline {
    #[serde(default)]
    pub offer_ids: Vec<OfferId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Roles {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kill {
    pub task_id: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_policy: Option<KillPolicy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shutdown {
    pub executor_id: ExecutorId,
    pub agent_id: AgentId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Acknowledge {
    pub agent_id: AgentId,
    pub task_id: TaskId,
    #[serde(with = "uuid_bytes")]
    pub uuid: Vec<u8>,
}

mod uuid_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        super::json::base64_opt::serialize(&Some(v.to_vec()), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        use serde::de::Error;
        super::json::base64_opt::deserialize(d)?.ok_or_else(|| D::Error::custom("missing uuid"))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconcileTask {
    pub task_id: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reconcile {
    #[serde(default)]
    pub tasks: Vec<ReconcileTask>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageCall {
    pub agent_id: AgentId,
    pub executor_id: ExecutorId,
    #[serde(default, with = "json::base64_opt", skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateFramework {
    pub framework_info: FrameworkInfo,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed_roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_constraints: Option<OfferConstraints>,
}

/// `Call`: one request from a framework.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_id: Option<FrameworkId>,
    #[serde(rename = "type")]
    pub kind: CallType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Subscribe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<Accept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline: Option<Decline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revive: Option<Roles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress: Option<Roles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<Kill>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<Shutdown>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge: Option<Acknowledge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<Reconcile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_framework: Option<UpdateFramework>,
}

impl Call {
    pub fn new(kind: CallType, framework_id: Option<FrameworkId>) -> Call {
        Call {
            framework_id,
            kind,
            subscribe: None,
            accept: None,
            decline: None,
            revive: None,
            suppress: None,
            kill: None,
            shutdown: None,
            acknowledge: None,
            reconcile: None,
            message: None,
            update_framework: None,
        }
    }

    /// Checks what Mesos checks before a call reaches the master's state: the
    /// type is known and the matching sub-message is present.
    pub fn validate(&self) -> Result<(), String> {
        fn need<T>(o: &Option<T>, what: &str) -> Result<(), String> {
            o.as_ref().map(|_| ()).ok_or_else(|| format!("Expecting '{what}' to be present"))
        }
        if self.kind != CallType::Subscribe && self.framework_id.is_none() {
            return Err("Expecting 'framework_id' to be present".into());
        }
        match self.kind {
            CallType::Unknown => Err("Call type UNKNOWN is not supported".into()),
            CallType::Subscribe => {
                need(&self.subscribe, "subscribe")?;
                let info_id = self.subscribe.as_ref().and_then(|s| s.framework_info.id.as_ref());
                if self.framework_id.as_ref() != info_id {
                    return Err("'framework_id' differs from 'subscribe.framework_info.id'".into());
                }
                Ok(())
            }
            CallType::Accept => need(&self.accept, "accept"),
            CallType::Decline => need(&self.decline, "decline"),
            CallType::Kill => need(&self.kill, "kill"),
            CallType::Shutdown => need(&self.shutdown, "shutdown"),
            CallType::Acknowledge => {
                need(&self.acknowledge, "acknowledge")?;
                let n = self.acknowledge.as_ref().map(|a| a.uuid.len()).unwrap_or(0);
                if n != 16 {
                    return Err(format!("'acknowledge.uuid' must be 16 bytes, got {n}"));
                }
                Ok(())
            }
            CallType::Reconcile => need(&self.reconcile, "reconcile"),
            CallType::Message => need(&self.message, "message"),
            CallType::UpdateFramework => need(&self.update_framework, "update_framework"),
            _ => Ok(()),
        }
    }
}

/// `Event.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Unknown,
    Subscribed,
    Offers,
    InverseOffers,
    Rescind,
    RescindInverseOffer,
    Update,
    UpdateOperationStatus,
    Message,
    Failure,
    Error,
    Heartbeat,
    #[serde(other)]
    Other,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscribed {
    pub framework_id: FrameworkId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_info: Option<MasterInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Offers {
    #[serde(default)]
    pub offers: Vec<Offer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rescind {
    pub offer_id: OfferId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub status: TaskStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<ExecutorId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub message: String,
}

/// `OperationState`: the ones operations on offers end in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationState {
    OperationFinished,
    OperationError,
    OperationDropped,
    #[serde(other)]
    OperationUnknown,
}

/// `OperationStatus`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperationStatus {
    pub operation_id: OperationId,
    pub state: OperationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateOperationStatus {
    pub status: OperationStatus,
}

/// `Event`: one record on a subscription stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<Subscribed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offers: Option<Offers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescind: Option<Rescind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Update>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_operation_status: Option<UpdateOperationStatus>,
}

impl Event {
    fn of(kind: EventType) -> Event {
        Event {
            kind,
            subscribed: None,
            offers: None,
            rescind: None,
            update: None,
            failure: None,
            error: None,
            update_operation_status: None,
        }
    }

    pub fn operation_status(status: OperationStatus) -> Event {
        Event {
            update_operation_status: Some(UpdateOperationStatus { status }),
            ..Event::of(EventType::UpdateOperationStatus)
        }
    }

    pub fn subscribed(s: Subscribed) -> Event {
        Event { subscribed: Some(s), ..Event::of(EventType::Subscribed) }
    }

    pub fn offers(offers: Vec<Offer>) -> Event {
        Event { offers: Some(Offers { offers }), ..Event::of(EventType::Offers) }
    }

    pub fn rescind(offer_id: OfferId) -> Event {
        Event { rescind: Some(Rescind { offer_id }), ..Event::of(EventType::Rescind) }
    }

    pub fn update(status: TaskStatus) -> Event {
        Event { update: Some(Update { status }), ..Event::of(EventType::Update) }
    }

    pub fn failure(agent_id: AgentId) -> Event {
        Event {
            failure: Some(Failure { agent_id: Some(agent_id), executor_id: None, status: None }),
            ..Event::of(EventType::Failure)
        }
    }

    pub fn error(message: impl Into<String>) -> Event {
        Event { error: Some(ErrorEvent { message: message.into() }), ..Event::of(EventType::Error) }
    }

    pub fn heartbeat() -> Event {
        Event::of(EventType::Heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pymesos_style_calls() {
        let c: Call = serde_json::from_str(
            r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"root","name":"x","hostname":"h",
                "capabilities":[{"type":"PARTITION_AWARE"},{"type":"SOMETHING_NEW"}]}}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.subscribe.unwrap().framework_info.has_capability(crate::mesos::CapabilityType::PartitionAware));

        let c: Call = serde_json::from_str(
            r#"{"type":"ACCEPT","framework_id":{"value":"f"},"accept":{"offer_ids":[{"value":"o1"}],
                "operations":[{"type":"LAUNCH","launch":{"task_infos":[{"name":"t","task_id":{"value":"1"},
                "agent_id":{"value":"a"},"resources":[],"command":{"value":"true"}}]}}],
                "filters":{"refuse_seconds":5.0}}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.accept.unwrap().operations[0].launch.as_ref().unwrap().task_infos.len(), 1);

        let c: Call = serde_json::from_str(
            r#"{"type":"ACKNOWLEDGE","framework_id":{"value":"f"},"acknowledge":{"agent_id":{"value":"a"},
                "task_id":{"value":"t"},"uuid":"AAECAwQFBgcICQoLDA0ODw=="}}"#,
        )
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn validation_errors() {
        let c: Call = serde_json::from_str(r#"{"type":"ACCEPT"}"#).unwrap();
        assert_eq!(c.validate().unwrap_err(), "Expecting 'framework_id' to be present");
        let c: Call = serde_json::from_str(r#"{"type":"ACCEPT","framework_id":{"value":"f"}}"#).unwrap();
        assert_eq!(c.validate().unwrap_err(), "Expecting 'accept' to be present");
        assert!(serde_json::from_str::<Call>(r#"{"type":"NOT_A_CALL"}"#).is_err());
        assert!(serde_json::from_str::<Call>(r#"{"framework_id":{"value":"f"}}"#).is_err());
    }

    #[test]
    fn offers_event_shape() {
        let e = Event::offers(vec![]);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "OFFERS");
        assert!(v["offers"]["offers"].is_array());
    }

    #[test]
    fn refuse_seconds_defaults_and_caps() {
        assert_eq!(Filters::refuse_seconds(None), 5.0);
        assert_eq!(Filters::refuse_seconds(Some(&Filters { refuse_seconds: Some(-1.0) })), 5.0);
        assert_eq!(Filters::refuse_seconds(Some(&Filters { refuse_seconds: Some(0.0) })), 0.0);
        assert_eq!(Filters::refuse_seconds(Some(&Filters { refuse_seconds: Some(1e12) })), MAX_REFUSE_SECONDS);
    }
}

/// How a framework's calls and events are encoded: Mesos's JSON, or the
/// FlatBuffers form of the same API ([`crate::fb`]). Chosen per request by
/// `Content-Type` (a call) and `Accept` (a subscription's events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Encoding {
    Json,
    FlatBuffers,
}

impl Encoding {
    pub fn media_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::FlatBuffers => crate::fb::MEDIA_TYPE,
        }
    }

    /// The encoding a `Content-Type` or `Accept` item names (parameters and
    /// case ignored).
    pub fn from_media_type(value: &str) -> Option<Encoding> {
        let m = value.split(';').next().unwrap_or("").trim();
        if m.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else if m.eq_ignore_ascii_case(crate::fb::MEDIA_TYPE) {
            Some(Encoding::FlatBuffers)
        } else {
            None
        }
    }

    pub fn encode_call(self, call: &Call) -> Vec<u8> {
        match self {
            Encoding::Json => serde_json::to_vec(call).expect("calls always serialize"),
            Encoding::FlatBuffers => crate::fb::encode_call(call),
        }
    }

    pub fn decode_call(self, bytes: &[u8]) -> Result<Call, String> {
        match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON Call: {e}")),
            Encoding::FlatBuffers => crate::fb::decode_call(bytes),
        }
    }

    pub fn encode_event(self, event: &Event) -> Vec<u8> {
        match self {
            Encoding::Json => serde_json::to_vec(event).expect("events always serialize"),
            Encoding::FlatBuffers => crate::fb::encode_event(event),
        }
    }

    pub fn decode_event(self, bytes: &[u8]) -> Result<Event, String> {
        match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON Event: {e}")),
            Encoding::FlatBuffers => crate::fb::decode_event(bytes),
        }
    }
}
