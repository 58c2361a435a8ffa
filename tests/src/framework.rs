//! A scheduler for tests, built on the SDK: packs tasks into offers,
//! acknowledges updates (or not), and waits for states.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use agora_proto::mesos::{
    AgentId, CommandInfo, FrameworkId, FrameworkInfo, KillPolicy, Offer, TaskId, TaskInfo, TaskState, TaskStatus,
};
use agora_proto::resources::Resources;
use agora_proto::scheduler::Event;
use agora_sdk::{Driver, DriverEvent};
use tokio::sync::mpsc;

pub struct TestFramework {
    pub driver: Driver,
    events: mpsc::Receiver<DriverEvent>,
    pub framework_id: FrameworkId,
    pub offers: VecDeque<Offer>,
    pub updates: Vec<TaskStatus>,
    pub subscriptions: usize,
    pub disconnections: usize,
    /// Acknowledge updates as they arrive.
    pub auto_ack: bool,
}

/// One task to launch.
#[derive(Clone, Debug)]
pub struct Spec {
    pub id: String,
    pub command: String,
    pub resources: String,
    pub kill_policy: Option<KillPolicy>,
}

impl Spec {
    pub fn new(id: impl Into<String>, command: &str, resources: &str) -> Spec {
        Spec { id: id.into(), command: command.into(), resources: resources.into(), kill_policy: None }
    }
}

pub fn info(name: &str) -> FrameworkInfo {
    FrameworkInfo { user: "root".into(), name: name.into(), failover_timeout: Some(60.0), ..Default::default() }
}

impl TestFramework {
    /// A framework on the SDK's default encoding (FlatBuffers).
    pub async fn start(master: &str, info: FrameworkInfo) -> TestFramework {
        Self::start_with(master, info, agora_sdk::Encoding::FlatBuffers).await
    }

    pub async fn start_with(master: &str, info: FrameworkInfo, encoding: agora_sdk::Encoding) -> TestFramework {
        let (driver, events) = Driver::start_with(master, info, encoding).await.expect("subscribe");
        let framework_id = driver.framework_id().expect("subscribed");
        TestFramework {
            driver,
            events,
            framework_id,
            offers: VecDeque::new(),
            updates: Vec::new(),
            subscriptions: 0,
            disconnections: 0,
            auto_ack: true,
        }
    }

    /// Handles one driver event (recording offers and updates); returns the
    /// master event if there was one.
    pub async fn step(&mut self, timeout: Duration) -> Option<Event> {
        let ev = tokio::time::timeout(timeout, self.events.recv()).await.ok()??;
        match ev {
            DriverEvent::Subscribed { .. } => {
                self.subscriptions += 1;
                None
            }
            DriverEvent::Disconnected(_) => {
                self.disconnections += 1;
                None
            }
            DriverEvent::Error(m) => panic!("framework error: {m}"),
            DriverEvent::Event(e) => {
                if let Some(o) = &e.offers {
                    self.offers.extend(o.offers.iter().cloned());
                }
                if let Some(r) = &e.rescind {
                    self.offers.retain(|o| o.id != r.offer_id);
                }
                if let Some(u) = &e.update {
                    self.updates.push(u.status.clone());
                    if self.auto_ack {
                        self.driver.acknowledge(&u.status).await.expect("acknowledge");
                    }
                }
                Some(*e)
            }
        }
    }

    /// Steps until `f` holds or `timeout` passes.
    pub async fn until(&mut self, timeout: Duration, what: &str, mut f: impl FnMut(&TestFramework) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !f(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                panic!("timed out after {timeout:?} waiting for {what}; updates so far: {:#?}", self.summary());
            }
            self.step(left.min(Duration::from_millis(200))).await;
        }
    }

    pub fn summary(&self) -> Vec<String> {
        self.updates.iter().map(|u| format!("{} {} {:?}", u.task_id, u.state, u.message)).collect()
    }

    /// The latest state of each task.
    pub fn latest(&self) -> HashMap<String, TaskStatus> {
        let mut m = HashMap::new();
        for u in &self.updates {
            m.insert(u.task_id.value.clone(), u.clone());
        }
        m
    }

    pub fn last_state(&self, task: &str) -> Option<TaskState> {
        self.updates.iter().rev().find(|u| u.task_id.as_str() == task).map(|u| u.state)
    }

    /// Launches the specs into offers as they come (as many per offer as fit)
    /// and returns once every one of them has been launched.
    pub async fn launch(&mut self, specs: Vec<Spec>, timeout: Duration) -> HashMap<String, AgentId> {
        let mut todo: VecDeque<Spec> = specs.into();
        let mut placed = HashMap::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while !todo.is_empty() {
            while let Some(offer) = self.offers.pop_front() {
                let mut avail = offer.resources.clone();
                let role = offer.allocation_info.as_ref().and_then(|a| a.role.clone()).unwrap_or_else(|| "*".into());
                let mut batch = Vec::new();
                while let Some(spec) = todo.front() {
                    let r = Resources::parse(&spec.resources).expect("resources").allocate_to(&role);
                    if !avail.contains(&r) {
                        break;
                    }
                    avail.subtract(&r).expect("contained");
                    let spec = todo.pop_front().expect("front");
                    placed.insert(spec.id.clone(), offer.agent_id.clone());
                    batch.push(TaskInfo {
                        name: spec.id.clone(),
                        task_id: TaskId::new(&spec.id),
                        agent_id: offer.agent_id.clone(),
                        resources: r,
                        command: Some(CommandInfo::shell(spec.command.clone())),
                        kill_policy: spec.kill_policy,
                        ..Default::default()
                    });
                }
                if batch.is_empty() {
                    self.driver.decline(vec![offer.id.clone()], 0.0).await.expect("decline");
                } else {
                    self.driver.launch(&offer, batch, 0.0).await.expect("launch");
                }
                if todo.is_empty() {
                    break;
                }
            }
            if todo.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "timed out launching; {} tasks left", todo.len());
            self.step(left.min(Duration::from_millis(200))).await;
        }
        placed
    }

    /// Waits until each named task has reached a terminal state.
    pub async fn wait_terminal(&mut self, ids: &[String], timeout: Duration) {
        self.until(timeout, "tasks to reach a terminal state", |f| {
            let latest = f.latest();
            ids.iter().all(|id| latest.get(id).is_some_and(|s| s.state.is_terminal()))
        })
        .await;
    }
}
