//! The agent's state and event loop: registration with the master, tasks
//! from launch to reaping, and reliable status updates.
//!
//! Status updates are queued per task and delivered in order: only the head
//! of a task's queue is in flight, resent with exponential backoff until the
//! framework acknowledges its uuid (relayed by the master), then the next one
//! goes. While the master is away, updates wait and tasks keep running; on
//! re-registration the agent reports every task it has and resends the heads.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::rc::Rc;
use std::time::{Duration, Instant};

use agora_proto::mesos::{
    AgentId, CapabilityType, FrameworkId, FrameworkInfo, KillPolicy, Reason, Source, TaskId, TaskInfo, TaskState,
    TaskStatus,
};
use agora_proto::resources::{Attribute, Resources};
use agora_proto::wire::{
    self, AgentInfo, AgentToMaster, ArchivedMasterToAgent, Checked, MasterToAgent, StatusUpdate, TaskReport,
};
use tokio::sync::mpsc;

use crate::cgroups::{Cgroups, Limits, TaskCgroup};
use crate::containerizer::{self, LaunchSpec};
use crate::ebpf::Ebpf;
use crate::link::{LinkEvent, LinkOut};
use crate::usage::{self, Sample, Usage};
use crate::volumes;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    Cgroups,
    None,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub master: String,
    pub work_dir: PathBuf,
    /// What the agent offers: its flags' resources with the checkpointed
    /// reservations and volumes carved out.
    pub info: AgentInfo,
    /// Its flags' resources, before any operation.
    pub base_resources: Resources,
    pub isolation: Isolation,
    /// SIGTERM to SIGKILL, when the framework gives no kill policy.
    pub kill_grace: Duration,
    pub status_retry_min: Duration,
    pub status_retry_max: Duration,
    pub max_completed_tasks: usize,
    /// How often usage is reported to the master.
    pub usage_report_interval: Duration,
}

/// Updates a task may have waiting; a task makes only a handful.
const MAX_PENDING_UPDATES: usize = 64;

pub type TaskKey = (FrameworkId, TaskId);

#[derive(Debug)]
pub enum Ev {
    Link(LinkEvent),
    Exited {
        key: TaskKey,
        container_id: String,
        status: std::io::Result<ExitStatus>,
    },
    KillEscalate {
        key: TaskKey,
        container_id: String,
    },
    Tick,
    /// Sample every task's usage.
    Sample,
    /// A finished task's processes are gone and its cgroup removed: its
    /// eBPF registration can go.
    CgroupRemoved {
        cgroup_id: u64,
    },
    Shutdown(String),
}

pub struct TaskRun {
    pub framework: FrameworkInfo,
    pub info: TaskInfo,
    pub container_id: String,
    pub sandbox: PathBuf,
    pub state: TaskState,
    pub pid: Option<i32>,
    pub cgroup: Option<TaskCgroup>,
    /// Its cgroup's files that samples read, kept open while it runs.
    pub stat_files: crate::cgroups::StatFiles,
    /// The task's v2 cgroup id, when it has cgroups.
    pub cgroup_id: Option<u64>,
    /// Whether it is registered with the eBPF programs.
    pub ebpf_registered: bool,
    pub usage: Usage,
    pub kill_requested: bool,
    pub exited: bool,
    /// The framework was shut down: no more updates for this task.
    pub dropped: bool,
    pub pending: VecDeque<TaskStatus>,
    pub next_retry: Instant,
    pub retry: Duration,
    pub started: Instant,
}

/// A task that ended and whose updates were all acknowledged.
#[derive(Clone, Debug)]
pub struct CompletedTask {
    pub framework_id: FrameworkId,
    pub task_id: TaskId,
    pub state: TaskState,
    pub sandbox: PathBuf,
    /// The last usage sample, taken as it ended.
    pub usage: Usage,
    pub cpus_limit: f64,
    pub mem_limit_mb: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub tasks_launched: u64,
    pub tasks_terminal: HashMap<TaskState, u64>,
    pub launch_errors: u64,
    pub updates_sent: u64,
    pub updates_retried: u64,
    pub updates_acknowledged: u64,
    pub registrations: u64,
    pub disconnections: u64,
}

pub struct Agent {
    pub cfg: Config,
    pub agent_id: Option<AgentId>,
    pub registered: bool,
    pub started: Instant,
    link: Option<mpsc::Sender<LinkOut>>,
    /// Answered when the link has written the Unregister sent while stopping.
    flushed: Option<tokio::sync::oneshot::Receiver<()>>,
    pub cgroups: Option<Cgroups>,
    /// The eBPF programs, when loaded; otherwise why not.
    pub ebpf: Option<Ebpf>,
    pub ebpf_note: String,
    last_usage_report: Instant,
    pub tasks: HashMap<TaskKey, TaskRun>,
    pub completed: VecDeque<CompletedTask>,
    shut_down_frameworks: VecDeque<FrameworkId>,
    pub counters: Counters,
    events: mpsc::Sender<Ev>,
    /// Set once the agent is stopping: the deadline for tasks to exit and
    /// the exit code to leave with.
    pub stopping: Option<(Instant, i32)>,
}

impl Agent {
    pub fn new(cfg: Config, cgroups: Option<Cgroups>, ebpf: Result<Ebpf, String>, events: mpsc::Sender<Ev>) -> Agent {
        let (ebpf, ebpf_note) = match ebpf {
            Ok(e) => (Some(e), "on".to_string()),
            Err(why) => (None, why),
        };
        Agent {
            ebpf,
            ebpf_note,
            last_usage_report: Instant::now(),
            cfg,
            agent_id: None,
            registered: false,
            started: Instant::now(),
            link: None,
            flushed: None,
            cgroups,
            tasks: HashMap::new(),
            completed: VecDeque::new(),
            shut_down_frameworks: VecDeque::new(),
            counters: Counters::default(),
            events,
            stopping: None,
        }
    }

    fn send(&mut self, msg: &AgentToMaster) -> bool {
        let Some(link) = &self.link else { return false };
        if link.try_send(LinkOut::Frame(wire::encode(msg))).is_err() {
            // The connection is stuck; the link will notice and reconnect.
            tracing::warn!("the queue to the master is full; message dropped");
            return false;
        }
        true
    }

    pub fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Link(LinkEvent::Connected(tx)) => {
                self.link = Some(tx);
                self.registered = false;
                let msg = match &self.agent_id {
                    None => AgentToMaster::Register { info: Box::new(self.cfg.info.clone()) },
                    Some(id) => self.reregistration(id.clone()),
                };
                self.send(&msg);
            }
            Ev::Link(LinkEvent::Disconnected(_)) => {
                if self.registered {
                    self.counters.disconnections += 1;
                }
                self.link = None;
                self.registered = false;
            }
            Ev::Link(LinkEvent::Message(m)) => self.master_message(&m),
            Ev::Exited { key, container_id, status } => self.exited(key, &container_id, status),
            Ev::KillEscalate { key, container_id } => {
                if let Some(t) = self.tasks.get(&key) {
                    if t.container_id == container_id && !t.exited {
                        if let Some(pid) = t.pid {
                            tracing::info!(task = %key.1, "grace period over; sending SIGKILL");
                            containerizer::signal(pid, t.cgroup.as_ref(), libc::SIGKILL);
                        }
                    }
                }
            }
            Ev::Tick => self.tick(),
            Ev::CgroupRemoved { cgroup_id } => {
                // Cgroup ids are not reused while the kernel runs, but a
                // live task's registration is never removed here regardless.
                let live = self.tasks.values().any(|t| t.ebpf_registered && t.cgroup_id == Some(cgroup_id));
                if let (false, Some(ebpf)) = (live, self.ebpf.as_mut()) {
                    ebpf.unregister(cgroup_id);
                }
            }
            Ev::Sample => {
                self.sample_all();
                if self.last_usage_report.elapsed() >= self.cfg.usage_report_interval {
                    self.last_usage_report = Instant::now();
                    self.report_usage();
                }
            }
            Ev::Shutdown(why) => self.stop(&why, 0),
        }
    }

    fn reregistration(&self, agent_id: AgentId) -> AgentToMaster {
        let mut frameworks: HashMap<FrameworkId, FrameworkInfo> = HashMap::new();
        let mut tasks = Vec::new();
        for ((fid, _), t) in &self.tasks {
            if t.dropped {
                continue;
            }
            frameworks.entry(fid.clone()).or_insert_with(|| t.framework.clone());
            tasks.push(TaskReport { framework_id: fid.clone(), task: t.info.clone(), state: t.state });
        }
        AgentToMaster::Reregister {
            agent_id,
            info: Box::new(self.cfg.info.clone()),
            tasks,
            frameworks: frameworks.into_values().collect(),
        }
    }

    /// A message from the master, read in place: launches and checkpoints,
    /// kept whole, are deserialized; the rest copy out at most an id or two.
    fn master_message(&mut self, m: &Checked<MasterToAgent>) {
        match m.get() {
            ArchivedMasterToAgent::RunTask { .. } | ArchivedMasterToAgent::CheckpointResources { .. } => {
                match m.to_owned() {
                    Ok(MasterToAgent::RunTask { framework, task }) => self.run_task(*framework, *task),
                    Ok(MasterToAgent::CheckpointResources { resources }) => self.checkpoint_resources(resources),
                    Ok(_) => unreachable!("the archive was a launch or a checkpoint"),
                    Err(e) => tracing::error!("a message from the master could not be read: {e}"),
                }
            }
            ArchivedMasterToAgent::Registered { agent_id, master_id, .. } => {
                let (agent_id, master_id) = (AgentId::new(agent_id.value.as_str()), master_id.as_str());
                if self.agent_id.as_ref() != Some(&agent_id) {
                    tracing::info!(%agent_id, %master_id, "registered");
                } else {
                    tracing::info!(%agent_id, %master_id, "re-registered");
                }
                self.agent_id = Some(agent_id);
                self.registered = true;
                self.counters.registrations += 1;
                // Everything in flight goes again, now.
                let keys: Vec<TaskKey> = self.tasks.keys().cloned().collect();
                for k in keys {
                    self.send_head(&k, true);
                }
            }
            ArchivedMasterToAgent::Refused { message } => {
                let message = message.as_str();
                tracing::error!("the master refused this agent: {message}");
                self.stop(&format!("refused by the master: {message}"), 1);
            }
            ArchivedMasterToAgent::Ping { seq } => {
                self.send(&AgentToMaster::Pong { seq: seq.to_native() });
            }
            ArchivedMasterToAgent::KillTask { framework_id, task_id, kill_policy } => {
                let key = (FrameworkId::new(framework_id.value.as_str()), TaskId::new(task_id.value.as_str()));
                match wire::owned(kill_policy) {
                    Ok(policy) => self.kill(key, policy, true),
                    Err(e) => tracing::error!("a kill from the master could not be read: {e}"),
                }
            }
            ArchivedMasterToAgent::AcknowledgeUpdate { framework_id, task_id, uuid } => {
                let key = (FrameworkId::new(framework_id.value.as_str()), TaskId::new(task_id.value.as_str()));
                self.acknowledge(key, uuid.as_slice())
            }
            ArchivedMasterToAgent::ShutdownFramework { framework_id } => {
                self.shutdown_framework(FrameworkId::new(framework_id.value.as_str()))
            }
        }
    }

    /// Takes the master's reservations and volumes: kept on disk, volume
    /// directories made or removed, and offered from now on (and after a
    /// restart). A set that does not fit the agent's resources is refused
    /// and logged; the master learns the agent's own at its next
    /// re-registration.
    fn checkpoint_resources(&mut self, resources: Resources) {
        let total = match Resources::with_checkpointed(&self.cfg.base_resources, &resources) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("checkpointed resources from the master do not fit this agent ({e}); ignored");
                return;
            }
        };
        if let Err(e) = volumes::store(&self.cfg.work_dir, &resources) {
            tracing::error!("{e}; the reservations and volumes apply but may not survive a restart");
        }
        let before = self.cfg.info.resources.checkpointed();
        let work_dir = &self.cfg.work_dir;
        let in_use: Vec<PathBuf> = self
            .tasks
            .values()
            .filter(|t| !t.exited)
            .flat_map(|t| volumes::volumes(work_dir, &t.info.resources).map(|(_, d)| d).collect::<Vec<_>>())
            .collect();
        for problem in volumes::sync(&self.cfg.work_dir, &before, &resources, &in_use) {
            tracing::warn!("{problem}");
        }
        tracing::info!(resources = %resources, "checkpointed resources");
        self.cfg.info.resources = total;
    }

    /// Bind mounts for the persistent volumes among a task's resources:
    /// (volume directory, path in the sandbox, read only).
    fn volume_mounts(&self, resources: &Resources) -> Vec<containerizer::Mount> {
        volumes::volumes(&self.cfg.work_dir, resources)
            .map(|(v, dir)| containerizer::Mount {
                source: dir,
                target: v.container_path.clone(),
                read_only: v.read_only,
            })
            .collect()
    }

    fn run_task(&mut self, framework: FrameworkInfo, task: TaskInfo) {
        let Some(fid) = framework.id.clone() else {
            tracing::warn!(task = %task.task_id, "launch without a framework id; ignored");
            return;
        };
        if self.stopping.is_some() {
            return;
        }
        if self.shut_down_frameworks.contains(&fid) {
            tracing::warn!(framework = %fid, "launch for a framework that was shut down; ignored");
            return;
        }
        let key = (fid.clone(), task.task_id.clone());
        if self.tasks.contains_key(&key) {
            tracing::warn!(task = %task.task_id, "duplicate launch; ignored");
            return;
        }
        let container_id = uuid::Uuid::new_v4().to_string();
        let sandbox =
            containerizer::sandbox_dir(&self.cfg.work_dir, fid.as_str(), task.task_id.as_str(), &container_id);
        self.tasks.insert(
            key.clone(),
            TaskRun {
                framework,
                info: task.clone(),
                container_id: container_id.clone(),
                sandbox: sandbox.clone(),
                state: TaskState::Staging,
                pid: None,
                cgroup: None,
                stat_files: Default::default(),
                cgroup_id: None,
                ebpf_registered: false,
                usage: Usage::default(),
                kill_requested: false,
                exited: false,
                dropped: false,
                pending: VecDeque::new(),
                next_retry: Instant::now(),
                retry: self.cfg.status_retry_min,
                started: Instant::now(),
            },
        );
        self.counters.tasks_launched += 1;
        self.update(&key, TaskState::Starting, Source::Executor, None, "Launching the command".into(), None);

        let mut env = vec![
            ("MESOS_SANDBOX".to_string(), sandbox.display().to_string()),
            ("MESOS_TASK_ID".to_string(), task.task_id.value.clone()),
            ("MESOS_FRAMEWORK_ID".to_string(), fid.value.clone()),
            ("MESOS_CONTAINER_ID".to_string(), container_id.clone()),
        ];
        if let Some(a) = &self.agent_id {
            env.push(("MESOS_AGENT_ID".to_string(), a.value.clone()));
        }
        let ports: Vec<u64> = task.resources.ports().as_slice().iter().flat_map(|&(b, e)| b..=e).take(64).collect();
        for (i, p) in ports.iter().enumerate() {
            env.push((format!("PORT{i}"), p.to_string()));
        }
        if !ports.is_empty() {
            env.push(("PORTS".into(), ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")));
        }
        let mem = task.resources.mem_mb();
        let spec = LaunchSpec {
            container_id: container_id.clone(),
            sandbox,
            command: task.command.clone().unwrap_or_default(),
            env,
            mounts: self.volume_mounts(&task.resources),
            limits: Limits {
                cpus: task.resources.cpus(),
                mem_bytes: (mem > 0.0).then_some((mem * 1024.0 * 1024.0) as u64),
            },
        };
        let prepared = match &self.cgroups {
            Some(cg) => containerizer::prepare(&spec, cg).map(Some),
            None => Ok(None),
        };
        // The task is accounted and its policy enforced from its first
        // instruction: registered with the eBPF programs before it starts.
        let prepared = prepared.and_then(|cgroup| {
            let id = cgroup.as_ref().and_then(|c| c.cgroup_id());
            if let (Some(ebpf), Some(id)) = (self.ebpf.as_mut(), id) {
                let registered = task_policy(&task.resources).and_then(|p| ebpf.register(id, p));
                if let Err(e) = registered {
                    if let Some(c) = &cgroup {
                        let _ = c.destroy(Duration::from_secs(1));
                    }
                    return Err(format!("cannot set up the task's accounting and enforcement: {e}"));
                }
            }
            Ok((cgroup, id))
        });
        let registered = self.ebpf.is_some();
        match prepared.and_then(|(cgroup, id)| {
            containerizer::launch(&spec, cgroup).map(|c| (c, id)).inspect_err(|_| {
                if let (Some(ebpf), Some(id)) = (self.ebpf.as_mut(), id) {
                    ebpf.unregister(id);
                }
            })
        }) {
            Ok((c, id)) => {
                let t = self.tasks.get_mut(&key).expect("inserted above");
                t.pid = Some(c.pid);
                t.cgroup = c.cgroup;
                t.cgroup_id = id;
                t.ebpf_registered = registered && id.is_some();
                let child = c.child;
                let events = self.events.clone();
                let k = key.clone();
                tokio_uring::spawn(async move {
                    let status = child.wait().await;
                    let _ = events.send(Ev::Exited { key: k, container_id, status }).await;
                });
                self.update(&key, TaskState::Running, Source::Executor, None, "Command started".into(), None);
            }
            Err(e) => {
                tracing::warn!(task = %key.1, "launch failed: {e}");
                self.counters.launch_errors += 1;
                let t = self.tasks.get_mut(&key).expect("inserted above");
                t.exited = true;
                self.update(&key, TaskState::Failed, Source::Agent, Some(Reason::ReasonContainerLaunchFailed), e, None);
            }
        }
    }

    fn kill(&mut self, key: TaskKey, policy: Option<KillPolicy>, announce: bool) {
        let grace = policy
            .and_then(|p| p.grace_period)
            .map(|g| Duration::from_nanos(g.nanoseconds.max(0) as u64))
            .unwrap_or(self.cfg.kill_grace);
        let Some(t) = self.tasks.get_mut(&key) else {
            tracing::info!(task = %key.1, "kill of an unknown task");
            return;
        };
        if t.exited || t.kill_requested {
            return;
        }
        t.kill_requested = true;
        let Some(pid) = t.pid else { return };
        containerizer::signal(pid, t.cgroup.as_ref(), libc::SIGTERM);
        let container_id = t.container_id.clone();
        let killing_state = t.framework.has_capability(CapabilityType::TaskKillingState);
        let events = self.events.clone();
        let k = key.clone();
        tokio_uring::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = events.send(Ev::KillEscalate { key: k, container_id }).await;
        });
        if announce && killing_state {
            self.update(&key, TaskState::Killing, Source::Executor, None, "Killing the task".into(), None);
        }
    }

    fn shutdown_framework(&mut self, fid: FrameworkId) {
        if self.shut_down_frameworks.len() >= 1024 {
            self.shut_down_frameworks.pop_front();
        }
        self.shut_down_frameworks.push_back(fid.clone());
        let keys: Vec<TaskKey> = self.tasks.keys().filter(|(f, _)| f == &fid).cloned().collect();
        self.kill_silently(keys);
    }

    /// Kills tasks nobody will hear about again: their pending updates are
    /// dropped and no new ones are made.
    fn kill_silently(&mut self, keys: Vec<TaskKey>) {
        for k in keys {
            if let Some(t) = self.tasks.get_mut(&k) {
                t.dropped = true;
                t.pending.clear();
            }
            self.kill(k.clone(), None, false);
            self.maybe_forget(&k);
        }
    }

    fn exited(&mut self, key: TaskKey, container_id: &str, status: std::io::Result<ExitStatus>) {
        let Some(t) = self.tasks.get_mut(&key) else { return };
        if t.container_id != container_id || t.exited {
            return;
        }
        t.exited = true;
        // A last sample while the cgroup still exists. The task stays
        // registered (its ports and egress limit enforced) until whatever it
        // left behind is killed and its cgroup removed.
        let sample = sample_task(t, self.ebpf.as_ref());
        t.usage.push(sample);
        // Nothing is sampled from here on; the cgroup is about to go.
        t.stat_files = Default::default();
        let registered = t.ebpf_registered.then_some(t.cgroup_id).flatten();
        t.ebpf_registered = false;
        let outcome = match status {
            Ok(s) => containerizer::classify(s, t.kill_requested, t.cgroup.as_ref()),
            Err(e) => containerizer::Outcome {
                state: TaskState::Failed,
                reason: Some(Reason::ReasonCommandExecutorFailed),
                message: format!("cannot wait for the task: {e}"),
                exit_code: None,
            },
        };
        if let Some(pid) = t.pid {
            // Removing cgroups can wait on dying processes: not on this loop.
            let cgroup = t.cgroup.clone();
            let events = self.events.clone();
            tokio::task::spawn_blocking(move || {
                let removed = containerizer::cleanup(pid, cgroup.as_ref());
                match registered {
                    Some(cgroup_id) if removed => {
                        let _ = events.blocking_send(Ev::CgroupRemoved { cgroup_id });
                    }
                    // Whatever is left in it stays enforced.
                    Some(cgroup_id) => tracing::warn!(cgroup_id, "task cgroup not removed; it stays registered"),
                    None => {}
                }
            });
        } else if let (Some(id), Some(ebpf)) = (registered, self.ebpf.as_mut()) {
            ebpf.unregister(id);
        }
        tracing::info!(task = %key.1, state = %outcome.state, "{}", outcome.message);
        let source = if outcome.reason == Some(Reason::ReasonContainerLimitationMemory) {
            Source::Agent
        } else {
            Source::Executor
        };
        if !t.dropped {
            self.update(&key, outcome.state, source, outcome.reason, outcome.message, outcome.exit_code);
        }
        self.maybe_forget(&key);
    }

    /// Queues a status update and sends it if it is at the head.
    fn update(
        &mut self,
        key: &TaskKey,
        state: TaskState,
        source: Source,
        reason: Option<Reason>,
        message: String,
        exit_code: Option<i32>,
    ) {
        let agent_id = self.agent_id.clone();
        let Some(t) = self.tasks.get_mut(key) else { return };
        if t.dropped {
            return;
        }
        t.state = state;
        if state.is_terminal() {
            *self.counters.tasks_terminal.entry(state).or_default() += 1;
        }
        let mut s = TaskStatus::new(key.1.clone(), state);
        s.source = Some(source);
        s.reason = reason;
        s.message = Some(message);
        s.agent_id = agent_id;
        s.timestamp = Some(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        );
        s.uuid = Some(uuid::Uuid::new_v4().as_bytes().to_vec());
        if let Some(c) = exit_code {
            s = s.with_exit_code(c);
        }
        if t.pending.len() >= MAX_PENDING_UPDATES {
            // Keep the newest states: the framework cares about where the task is.
            tracing::warn!(task = %key.1, "too many unacknowledged updates; dropping the oldest");
            t.pending.pop_front();
        }
        t.pending.push_back(s);
        if t.pending.len() == 1 {
            self.send_head(key, true);
        }
    }

    /// Sends the head of a task's queue; `reset` restarts its backoff.
    fn send_head(&mut self, key: &TaskKey, reset: bool) {
        if !self.registered {
            return;
        }
        let min = self.cfg.status_retry_min;
        let Some(t) = self.tasks.get_mut(key) else { return };
        let Some(head) = t.pending.front().cloned() else { return };
        if reset {
            t.retry = min;
        }
        t.next_retry = Instant::now() + t.retry;
        let msg = AgentToMaster::StatusUpdate(Box::new(StatusUpdate {
            framework_id: key.0.clone(),
            status: head,
            latest_state: t.state,
        }));
        if self.send(&msg) {
            self.counters.updates_sent += 1;
        }
    }

    fn acknowledge(&mut self, key: TaskKey, uuid: &[u8]) {
        let Some(t) = self.tasks.get_mut(&key) else { return };
        if t.pending.front().and_then(|s| s.uuid.as_deref()) != Some(uuid) {
            // A late duplicate: the update was acknowledged already.
            return;
        }
        t.pending.pop_front();
        self.counters.updates_acknowledged += 1;
        if t.pending.is_empty() {
            self.maybe_forget(&key);
        } else {
            self.send_head(&key, true);
        }
    }

    /// Drops a task the agent has nothing more to do for.
    fn maybe_forget(&mut self, key: &TaskKey) {
        let done = self.tasks.get(key).is_some_and(|t| t.exited && (t.dropped || t.pending.is_empty()));
        if !done {
            return;
        }
        let t = self.tasks.remove(key).expect("checked above");
        if self.completed.len() >= self.cfg.max_completed_tasks {
            self.completed.pop_front();
        }
        self.completed.push_back(CompletedTask {
            framework_id: key.0.clone(),
            task_id: key.1.clone(),
            state: t.state,
            sandbox: t.sandbox,
            usage: t.usage,
            cpus_limit: t.info.resources.cpus(),
            mem_limit_mb: t.info.resources.mem_mb(),
        });
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let max = self.cfg.status_retry_max;
        let due: Vec<TaskKey> = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.pending.is_empty() && t.next_retry <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if let Some(t) = self.tasks.get_mut(&k) {
                t.retry = (t.retry * 2).min(max);
            }
            self.counters.updates_retried += 1;
            self.send_head(&k, false);
        }
        if let Some((deadline, _)) = self.stopping {
            if now >= deadline {
                for t in self.tasks.values() {
                    if let (false, Some(pid)) = (t.exited, t.pid) {
                        containerizer::signal(pid, t.cgroup.as_ref(), libc::SIGKILL);
                    }
                }
            }
        }
    }

    /// Starts stopping: tells the master, kills every task.
    pub fn stop(&mut self, why: &str, code: i32) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!("stopping: {why}");
        // Sent whenever the link is up, even before the master's answer to
        // the registration has arrived: frames arrive in order, so the master
        // registers the agent and then removes it, and an Unregister on a
        // connection it never registered is ignored.
        if self.link.is_some() && self.send(&AgentToMaster::Unregister { reason: why.to_string() }) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if self.link.as_ref().is_some_and(|l| l.try_send(LinkOut::Flush(tx)).is_ok()) {
                self.flushed = Some(rx);
            }
        }
        self.stopping = Some((Instant::now() + self.cfg.kill_grace, code));
        let keys: Vec<TaskKey> = self.tasks.keys().cloned().collect();
        self.kill_silently(keys);
    }

    /// Stopping and every task has exited.
    pub fn stopped(&self) -> Option<i32> {
        let (deadline, code) = self.stopping?;
        let all_exited = self.tasks.values().all(|t| t.exited || t.pid.is_none());
        (all_exited || Instant::now() > deadline + Duration::from_secs(3)).then_some(code)
    }

    /// Samples every running task's usage.
    fn sample_all(&mut self) {
        let live = |t: &TaskRun| !t.exited && t.cgroup.is_some();
        let ids: Vec<u64> =
            self.tasks.values().filter(|t| live(t) && t.ebpf_registered).filter_map(|t| t.cgroup_id).collect();
        let mut counters = self.ebpf.as_ref().map(|e| e.read_many(&ids)).unwrap_or_default();
        for t in self.tasks.values_mut().filter(|t| live(t)) {
            let c = if t.ebpf_registered { t.cgroup_id.and_then(|id| counters.remove(&id)) } else { None };
            let s = sample(t, c);
            t.usage.push(s);
        }
    }

    /// Sends the master a summary of every running task's usage.
    fn report_usage(&mut self) {
        if !self.registered {
            return;
        }
        let tasks: Vec<wire::TaskUsage> = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.exited && !t.dropped)
            .filter_map(|((fid, tid), t)| summarize(fid, tid, &t.usage))
            .collect();
        if !tasks.is_empty() {
            self.send(&AgentToMaster::Usage { tasks });
        }
    }

    /// Removes every cgroup the agent made.
    pub fn cleanup(&mut self) {
        for t in self.tasks.values() {
            if let Some(pid) = t.pid {
                containerizer::cleanup(pid, t.cgroup.as_ref());
            }
        }
        if let Some(cg) = &self.cgroups {
            cg.clean_stale();
            cg.remove();
        }
    }

    pub fn attributes(&self) -> &[Attribute] {
        &self.cfg.info.attributes
    }
}

/// Runs the event loop until the agent stops; returns its exit code.
///
/// Launches wait in a queue of their own and start one at a time, while
/// nothing else is waiting. Acknowledgements, exits and timers, which are
/// about tasks already started, go ahead of the launches still queued: a
/// batch of launches then does not hold back the acknowledgements that let
/// each started task's next update (RUNNING) go out. Anything else (a kill,
/// a reconnection, ...) keeps its place: the launches before it start
/// first. At most [`MAX_WAITING_LAUNCHES`] wait; then one starts before
/// anything more is taken from the channel.
pub async fn run_loop(agent: Rc<RefCell<Agent>>, mut rx: mpsc::Receiver<Ev>) -> i32 {
    let mut order = Order::new(MAX_WAITING_LAUNCHES);
    loop {
        let ev = if order.full() {
            None
        } else {
            match rx.try_recv() {
                Ok(ev) => Some(ev),
                Err(mpsc::error::TryRecvError::Empty) if !order.waiting() => rx.recv().await,
                Err(_) => None,
            }
        };
        match ev {
            Some(ev) => {
                let kind = kind_of(&ev);
                for ev in order.take(ev, kind) {
                    if let Some(code) = step(&agent, ev).await {
                        return code;
                    }
                }
            }
            None => match order.idle() {
                Some(launch) => {
                    if let Some(code) = step(&agent, launch).await {
                        return code;
                    }
                }
                None => return 1,
            },
        }
    }
}

/// Launches taken from the event channel and not yet started, at most.
const MAX_WAITING_LAUNCHES: usize = 1024;

/// How an event is ordered against launches that wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Waits its turn with the other launches.
    Launch,
    /// Concerns only tasks already started (or none): handled at once,
    /// ahead of the launches waiting.
    Overtakes,
    /// Keeps its place: the launches before it start first.
    Other,
}

fn kind_of(ev: &Ev) -> Kind {
    match ev {
        Ev::Link(LinkEvent::Message(m)) => match m.get() {
            ArchivedMasterToAgent::RunTask { .. } => Kind::Launch,
            ArchivedMasterToAgent::AcknowledgeUpdate { .. } => Kind::Overtakes,
            _ => Kind::Other,
        },
        Ev::Exited { .. } | Ev::KillEscalate { .. } | Ev::Tick | Ev::Sample | Ev::CgroupRemoved { .. } => {
            Kind::Overtakes
        }
        Ev::Link(_) | Ev::Shutdown(_) => Kind::Other,
    }
}

/// The event loop's order, sans I/O: which events to handle, and when.
struct Order<E> {
    launches: VecDeque<E>,
    max_waiting: usize,
}

impl<E> Order<E> {
    fn new(max_waiting: usize) -> Order<E> {
        Order { launches: VecDeque::new(), max_waiting }
    }

    /// Whether launches wait.
    fn waiting(&self) -> bool {
        !self.launches.is_empty()
    }

    /// At the bound: a launch starts before another event is taken.
    fn full(&self) -> bool {
        self.launches.len() >= self.max_waiting
    }

    /// An event taken from the channel: what to handle now, in order.
    fn take(&mut self, ev: E, kind: Kind) -> impl Iterator<Item = E> + '_ {
        let (before, now) = match kind {
            Kind::Launch => {
                self.launches.push_back(ev);
                (0, None)
            }
            Kind::Overtakes => (0, Some(ev)),
            Kind::Other => (self.launches.len(), Some(ev)),
        };
        self.launches.drain(..before).chain(now)
    }

    /// Nothing more to take (or at the bound): the next launch to start.
    fn idle(&mut self) -> Option<E> {
        self.launches.pop_front()
    }
}

/// Handles one event; the exit code once the agent has stopped.
async fn step(agent: &Rc<RefCell<Agent>>, ev: Ev) -> Option<i32> {
    let launch = kind_of(&ev) == Kind::Launch;
    let done = {
        let mut a = agent.borrow_mut();
        a.handle(ev);
        a.stopped().map(|code| (code, a.flushed.take()))
    };
    if let Some((code, flushed)) = done {
        // Let the master hear the Unregister before the process goes.
        if let Some(f) = flushed {
            let _ = tokio::time::timeout(Duration::from_secs(2), f).await;
        }
        agent.borrow_mut().cleanup();
        return Some(code);
    }
    if launch {
        // A launch takes a while (cgroups, the clone, the exec): the link
        // gets to send the updates made so far and to read what came in.
        tokio::task::yield_now().await;
    }
    None
}

/// A task's eBPF policy from its resources: the ports it may bind and its
/// egress limit.
pub fn task_policy(resources: &agora_proto::resources::Resources) -> Result<agora_ebpf_common::TaskPolicy, String> {
    use agora_ebpf_common::{PortRange, TaskPolicy, MAX_PORT_RANGES};
    let ranges = resources.ports();
    let ranges = ranges.as_slice();
    if ranges.len() > MAX_PORT_RANGES {
        return Err(format!("the task has {} port ranges; at most {MAX_PORT_RANGES} can be enforced", ranges.len()));
    }
    let mut ports = [PortRange::default(); MAX_PORT_RANGES];
    for (i, &(b, e)) in ranges.iter().enumerate() {
        let (Ok(begin), Ok(end)) = (u16::try_from(b), u16::try_from(e)) else {
            return Err(format!("port range {b}-{e} is not within 0-65535"));
        };
        ports[i] = PortRange { begin, end };
    }
    let mbps = resources.scalar(usage::EGRESS_RESOURCE).as_f64();
    let bytes_per_sec = if mbps > 0.0 { (mbps * 1e6 / 8.0) as u64 } else { 0 };
    // The task's TCP sockets pace themselves at the rate (the `tcp_pacing`
    // program), so the drop policy is a backstop for traffic that ignores
    // pacing. TCP sends its first ten segments unpaced, and a segment can be
    // 64 KiB, so the burst admits 768 KiB, or 50 ms of sending if more.
    let burst_ns = ((768u64 << 10) * 1_000_000_000).checked_div(bytes_per_sec).map_or(0, |ns| ns.max(50_000_000));
    Ok(TaskPolicy {
        egress_bytes_per_sec: bytes_per_sec,
        egress_burst_ns: burst_ns,
        enforce_ports: 1,
        n_port_ranges: ranges.len() as u32,
        ports,
    })
}

fn sample_task(t: &mut TaskRun, ebpf: Option<&Ebpf>) -> Sample {
    let counters = match (t.ebpf_registered, t.cgroup_id, ebpf) {
        (true, Some(id), Some(e)) => e.read_many(&[id]).remove(&id),
        _ => None,
    };
    sample(t, counters)
}

/// A sample of the task's cgroup, with its eBPF counters when it has them.
fn sample(t: &mut TaskRun, mut counters: Option<agora_ebpf_common::TaskCounters>) -> Sample {
    // A run counted in progress by the last sample may, rarely, be in
    // neither the counters nor the runs in progress of this one: CPU time
    // never goes back.
    if let (Some(c), Some(last)) = (counters.as_mut(), t.usage.latest.as_ref().and_then(|s| s.ebpf)) {
        c.cpu_ns = c.cpu_ns.max(last.cpu_ns);
    }
    Sample {
        at: Instant::now(),
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        cgroup: t.cgroup.as_ref().map(|c| c.stats_from(&mut t.stat_files)).unwrap_or_default(),
        ebpf: counters,
    }
}

/// The summary of a task's usage that rides to the master.
fn summarize(fid: &FrameworkId, tid: &TaskId, u: &Usage) -> Option<wire::TaskUsage> {
    let s = u.latest.as_ref()?;
    let (rx_rate, tx_rate) = u.net_rates().unwrap_or((0.0, 0.0));
    let e = s.ebpf.unwrap_or(agora_ebpf_common::TaskCounters::ZERO);
    Some(wire::TaskUsage {
        framework_id: fid.clone(),
        task_id: tid.clone(),
        cpus_used: u.cpus_used().unwrap_or(0.0),
        cpu_time_secs: s.ebpf.map(|e| e.cpu_ns).or(s.cgroup.cpu_usage_ns).unwrap_or(0) as f64 / 1e9,
        mem_bytes: s.cgroup.mem_usage_bytes.unwrap_or(0),
        mem_peak_bytes: s.cgroup.mem_peak_bytes.unwrap_or(0),
        net_rx_bytes: e.net_rx_bytes,
        net_tx_bytes: e.net_tx_bytes,
        net_rx_bytes_per_sec: rx_rate,
        net_tx_bytes_per_sec: tx_rate,
        io_bytes_per_sec: u.io_rate().unwrap_or(0.0),
        runq_p99_us: agora_ebpf_common::rq_quantile_us(&e.rq_hist, 990).unwrap_or(0),
        throttled_secs: s.cgroup.throttled_ns.unwrap_or(0) as f64 / 1e9,
        ebpf: s.ebpf.is_some() as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives `Order` the way `run_loop` does, with every event already in
    /// the channel; the order in which they would be handled.
    fn handled(max_waiting: usize, events: &[(&'static str, Kind)]) -> Vec<&'static str> {
        let mut order = Order::new(max_waiting);
        let mut channel = events.iter().copied();
        let mut out = Vec::new();
        loop {
            let next = if order.full() { None } else { channel.next() };
            match next {
                Some((name, kind)) => out.extend(order.take(name, kind)),
                None => match order.idle() {
                    Some(launch) => out.push(launch),
                    None => return out,
                },
            }
        }
    }

    #[test]
    fn acknowledgements_and_exits_overtake_waiting_launches_and_a_kill_does_not() {
        use Kind::*;
        let order = handled(
            1024,
            &[
                ("launch 1", Launch),
                ("launch 2", Launch),
                ("ack 1", Overtakes),
                ("launch 3", Launch),
                ("exit 1", Overtakes),
                ("kill 2", Other),
                ("launch 4", Launch),
            ],
        );
        assert_eq!(order, ["ack 1", "exit 1", "launch 1", "launch 2", "launch 3", "kill 2", "launch 4"]);
    }

    #[test]
    fn at_the_bound_a_launch_starts_before_more_is_taken() {
        use Kind::*;
        let order = handled(2, &[("launch 1", Launch), ("launch 2", Launch), ("launch 3", Launch), ("ack", Overtakes)]);
        assert_eq!(order, ["launch 1", "launch 2", "ack", "launch 3"]);
        let mut o = Order::new(2);
        assert_eq!(o.take(1, Launch).count(), 0);
        assert!(!o.full() && o.waiting());
        assert_eq!(o.take(2, Launch).count(), 0);
        assert!(o.full());
        assert_eq!(o.idle(), Some(1));
        assert!(!o.full());
    }

    #[test]
    fn events_are_ordered_by_what_they_concern() {
        let fid = FrameworkId::new("f");
        let tid = TaskId::new("t");
        let msg = |m: MasterToAgent| Ev::Link(LinkEvent::Message(Checked::of(&m)));
        let launch = msg(MasterToAgent::RunTask {
            framework: Box::default(),
            task: Box::new(TaskInfo { task_id: tid.clone(), ..Default::default() }),
        });
        let ack = msg(MasterToAgent::AcknowledgeUpdate {
            framework_id: fid.clone(),
            task_id: tid.clone(),
            uuid: vec![1; 16],
        });
        let kill = msg(MasterToAgent::KillTask { framework_id: fid.clone(), task_id: tid.clone(), kill_policy: None });
        let shutdown_fw = msg(MasterToAgent::ShutdownFramework { framework_id: fid.clone() });
        let exited = Ev::Exited {
            key: (fid.clone(), tid.clone()),
            container_id: "c".into(),
            status: Err(std::io::Error::other("gone")),
        };
        assert_eq!(kind_of(&launch), Kind::Launch);
        assert_eq!(kind_of(&ack), Kind::Overtakes);
        assert_eq!(kind_of(&exited), Kind::Overtakes);
        assert_eq!(kind_of(&Ev::Tick), Kind::Overtakes);
        assert_eq!(kind_of(&Ev::Sample), Kind::Overtakes);
        assert_eq!(kind_of(&Ev::CgroupRemoved { cgroup_id: 1 }), Kind::Overtakes);
        assert_eq!(kind_of(&kill), Kind::Other);
        assert_eq!(kind_of(&shutdown_fw), Kind::Other);
        assert_eq!(kind_of(&Ev::Link(LinkEvent::Disconnected("x".into()))), Kind::Other);
        assert_eq!(kind_of(&Ev::Shutdown("x".into())), Kind::Other);
    }
}
