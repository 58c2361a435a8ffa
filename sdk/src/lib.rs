//! The Rust framework SDK: an async scheduler driver for Agora's (and
//! Mesos's) v1 scheduler API.
//!
//! [`Driver::start`] subscribes and returns a receiver of [`DriverEvent`]s.
//! When the subscription stream breaks, the driver re-subscribes with the
//! same framework id (with backoff), as long as the framework has a failover
//! timeout; each new subscription arrives as another `Subscribed` event.
//! Calls go over a separate keep-alive connection, pipelined: concurrent
//! calls do not wait for each other's answers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), agora_sdk::Error> {
//! use agora_proto::mesos::FrameworkInfo;
//! let info = FrameworkInfo { user: "me".into(), name: "demo".into(), ..Default::default() };
//! let (driver, mut events) = agora_sdk::Driver::start("127.0.0.1:5050", info).await?;
//! while let Some(ev) = events.recv().await {
//!     println!("{ev:?}");
//! }
//! # Ok(()) }
//! ```

pub mod http;

pub use agora_proto::scheduler::Encoding;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_proto::mesos::{AgentId, FrameworkId, FrameworkInfo, Offer, OfferId, TaskId, TaskInfo, TaskStatus};
use agora_proto::scheduler::{
    Accept, Acknowledge, Call, CallType, Decline, Event, EventType, Filters, Kill, Operation, Reconcile, ReconcileTask,
    Roles, Subscribe,
};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the master at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("I/O with the master: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad HTTP from the master: {0}")]
    Http(#[from] agora_proto::http::HttpError),
    #[error("the master answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the master sent an event that cannot be decoded: {0}")]
    Decode(String),
    #[error("the master refused the subscription: {0}")]
    Refused(String),
    #[error("not subscribed")]
    NotSubscribed,
    #[error("the master closed the stream")]
    Closed,
}

/// What the driver reports.
#[derive(Debug, Clone)]
pub enum DriverEvent {
    /// A (re)subscription succeeded.
    Subscribed { framework_id: FrameworkId },
    /// An event from the master (including SUBSCRIBED and HEARTBEAT).
    Event(Box<Event>),
    /// The stream broke; the driver will try to re-subscribe.
    Disconnected(String),
    /// The master refused the framework (e.g. it was removed); the driver stops.
    Error(String),
}

#[derive(Debug, Default)]
struct Session {
    framework_id: Option<FrameworkId>,
    stream_id: Option<String>,
}

/// Events queued for the application before the driver waits for it.
const EVENT_QUEUE: usize = 65_536;

/// A handle for making calls; cheap to clone.
#[derive(Clone)]
pub struct Driver {
    master: String,
    encoding: Encoding,
    session: Arc<Mutex<Session>>,
    /// The connection calls are pipelined on, opened on the first call and
    /// replaced once broken.
    calls: Arc<tokio::sync::Mutex<Option<Arc<http::Pipeline>>>>,
    stop: Arc<tokio::sync::Notify>,
}

impl Driver {
    /// Subscribes and keeps the subscription alive in the background. Returns
    /// once the first subscription succeeded. Calls and events are
    /// FlatBuffers; [`Driver::start_with`] chooses.
    pub async fn start(master: &str, info: FrameworkInfo) -> Result<(Driver, mpsc::Receiver<DriverEvent>), Error> {
        Self::start_with(master, info, Encoding::FlatBuffers).await
    }

    /// [`Driver::start`] with calls and events in `encoding`.
    pub async fn start_with(
        master: &str,
        info: FrameworkInfo,
        encoding: Encoding,
    ) -> Result<(Driver, mpsc::Receiver<DriverEvent>), Error> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let driver = Driver {
            master: master.to_string(),
            encoding,
            session: Arc::new(Mutex::new(Session { framework_id: info.id.clone(), stream_id: None })),
            calls: Arc::new(tokio::sync::Mutex::new(None)),
            stop: Arc::new(tokio::sync::Notify::new()),
        };
        let stream = driver.subscribe_once(&info).await?;
        let d = driver.clone();
        tokio::spawn(async move { d.run(info, stream, tx).await });
        Ok((driver, rx))
    }

    pub fn framework_id(&self) -> Option<FrameworkId> {
        self.session.lock().expect("not poisoned").framework_id.clone()
    }

    async fn subscribe_once(&self, info: &FrameworkInfo) -> Result<http::EventStream, Error> {
        let mut info = info.clone();
        let fid = self.framework_id();
        info.id = fid.clone();
        let mut call = Call::new(CallType::Subscribe, fid);
        call.subscribe = Some(Subscribe { framework_info: info, suppressed_roles: vec![], offer_constraints: None });
        let mut stream = http::subscribe(&self.master, &call, self.encoding).await?;
        // The first event says whether it worked.
        match stream.next_event().await? {
            Some(ev) if ev.kind == EventType::Subscribed => {
                let sub = ev.subscribed.clone().ok_or(Error::Closed)?;
                let mut s = self.session.lock().expect("not poisoned");
                s.framework_id = Some(sub.framework_id.clone());
                s.stream_id = Some(stream.stream_id.clone());
                stream.pending = Some(ev);
                Ok(stream)
            }
            Some(ev) if ev.kind == EventType::Error => {
                Err(Error::Refused(ev.error.map(|e| e.message).unwrap_or_default()))
            }
            Some(ev) => Err(Error::Refused(format!("expected SUBSCRIBED, got {:?}", ev.kind))),
            None => Err(Error::Closed),
        }
    }

    async fn run(self, info: FrameworkInfo, mut stream: http::EventStream, tx: mpsc::Sender<DriverEvent>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let fid = self.framework_id().expect("subscribed");
            if tx.send(DriverEvent::Subscribed { framework_id: fid }).await.is_err() {
                return;
            }
            let why = loop {
                let next = tokio::select! {
                    n = stream.next_event() => n,
                    _ = self.stop.notified() => return,
                };
                match next {
                    Ok(Some(ev)) => {
                        if tx.send(DriverEvent::Event(Box::new(ev))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break "the master closed the stream".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            self.session.lock().expect("not poisoned").stream_id = None;
            if tx.send(DriverEvent::Disconnected(why)).await.is_err() {
                return;
            }
            if info.failover_timeout.unwrap_or(0.0) <= 0.0 {
                // The master removed the framework when the stream broke.
                let _ = tx.send(DriverEvent::Error("disconnected with no failover timeout".into())).await;
                return;
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = self.stop.notified() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                match self.subscribe_once(&info).await {
                    Ok(s) => {
                        stream = s;
                        backoff = Duration::from_millis(100);
                        break;
                    }
                    Err(Error::Refused(m)) => {
                        let _ = tx.send(DriverEvent::Error(m)).await;
                        return;
                    }
                    Err(_) => continue,
                }
            }
        }
    }

    /// Stops the background subscription (without tearing the framework down).
    pub fn stop(&self) {
        self.stop.notify_waiters();
        self.stop.notify_one();
    }

    /// Sends a call with the framework id and stream id filled in.
    pub async fn call(&self, mut call: Call) -> Result<(), Error> {
        let (fid, sid) = {
            let s = self.session.lock().expect("not poisoned");
            (s.framework_id.clone(), s.stream_id.clone())
        };
        call.framework_id = Some(fid.ok_or(Error::NotSubscribed)?);
        let sid = sid.ok_or(Error::NotSubscribed)?;
        let body = self.encoding.encode_call(&call);
        // One retry on a fresh connection if the kept-alive one went stale.
        for attempt in 0..2 {
            let pipe = {
                let mut guard = self.calls.lock().await;
                match guard.as_ref() {
                    Some(p) if !p.is_broken() => p.clone(),
                    _ => {
                        let p = Arc::new(http::Pipeline::open(&self.master).await?);
                        *guard = Some(p.clone());
                        p
                    }
                }
            };
            match pipe.post("/api/v1/scheduler", self.encoding.media_type(), &[("Mesos-Stream-Id", &sid)], &body).await
            {
                Ok((status, body)) => {
                    return if status == 200 || status == 202 {
                        Ok(())
                    } else {
                        Err(Error::Status { status, message: String::from_utf8_lossy(&body).into_owned() })
                    };
                }
                Err(e) if attempt == 0 => tracing::debug!("call connection failed ({e}); reconnecting"),
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    pub async fn launch(&self, offer: &Offer, tasks: Vec<TaskInfo>, refuse_seconds: f64) -> Result<(), Error> {
        self.accept(vec![offer.id.clone()], vec![Operation::launch(tasks)], refuse_seconds).await
    }

    pub async fn accept(
        &self,
        offer_ids: Vec<OfferId>,
        operations: Vec<Operation>,
        refuse_seconds: f64,
    ) -> Result<(), Error> {
        let mut c = Call::new(CallType::Accept, None);
        c.accept =
            Some(Accept { offer_ids, operations, filters: Some(Filters { refuse_seconds: Some(refuse_seconds) }) });
        self.call(c).await
    }

    pub async fn decline(&self, offer_ids: Vec<OfferId>, refuse_seconds: f64) -> Result<(), Error> {
        let mut c = Call::new(CallType::Decline, None);
        c.decline = Some(Decline { offer_ids, filters: Some(Filters { refuse_seconds: Some(refuse_seconds) }) });
        self.call(c).await
    }

    /// Acknowledges an update if it needs it (it has a uuid and an agent).
    pub async fn acknowledge(&self, status: &TaskStatus) -> Result<(), Error> {
        let (Some(uuid), Some(agent_id)) = (&status.uuid, &status.agent_id) else { return Ok(()) };
        let mut c = Call::new(CallType::Acknowledge, None);
        c.acknowledge =
            Some(Acknowledge { agent_id: agent_id.clone(), task_id: status.task_id.clone(), uuid: uuid.clone() });
        self.call(c).await
    }

    pub async fn kill(&self, task_id: TaskId, agent_id: Option<AgentId>) -> Result<(), Error> {
        let mut c = Call::new(CallType::Kill, None);
        c.kill = Some(Kill { task_id, agent_id, kill_policy: None });
        self.call(c).await
    }

    /// Explicit reconciliation of the given tasks, or implicit when empty.
    pub async fn reconcile(&self, tasks: Vec<(TaskId, Option<AgentId>)>) -> Result<(), Error> {
        let mut c = Call::new(CallType::Reconcile, None);
        c.reconcile = Some(Reconcile {
            tasks: tasks.into_iter().map(|(task_id, agent_id)| ReconcileTask { task_id, agent_id }).collect(),
        });
        self.call(c).await
    }

    pub async fn revive(&self) -> Result<(), Error> {
        let mut c = Call::new(CallType::Revive, None);
        c.revive = Some(Roles::default());
        self.call(c).await
    }

    pub async fn suppress(&self) -> Result<(), Error> {
        let mut c = Call::new(CallType::Suppress, None);
        c.suppress = Some(Roles::default());
        self.call(c).await
    }

    /// Removes the framework: its tasks are killed.
    pub async fn teardown(&self) -> Result<(), Error> {
        let r = self.call(Call::new(CallType::Teardown, None)).await;
        self.stop();
        r
    }
}
