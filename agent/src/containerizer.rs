//! Launching, killing and reaping tasks.
//!
//! Each task runs in a sandbox directory of its own (its working directory,
//! with `stdout` and `stderr` written there), in a new session and process
//! group, and in cgroups of its own that it joins between clone and exec, so
//! that nothing it starts escapes the limits. A kill sends SIGTERM to the
//! group and the cgroup, then SIGKILL after the grace period. When the task's
//! main process exits, whatever it left behind is killed and its cgroups are
//! removed.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use agora_proto::mesos::{CommandInfo, Reason, TaskState};

use crate::cgroups::{Cgroups, Limits, TaskCgroup};
use crate::spawn;

/// Everything needed to start one task.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub container_id: String,
    pub sandbox: PathBuf,
    pub command: CommandInfo,
    pub env: Vec<(String, String)>,
    /// Persistent volumes to bind-mount into the sandbox.
    pub mounts: Vec<Mount>,
    pub limits: Limits,
}

/// A directory the task sees at `target` (relative to its sandbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// The mount points of a task's volumes, created in its sandbox, as C
/// strings ready for the child: (source, target, read only).
fn mount_points(spec: &LaunchSpec) -> Result<Vec<(CString, CString, bool)>, String> {
    let mut out = Vec::with_capacity(spec.mounts.len());
    for m in &spec.mounts {
        if !agora_proto::resources::valid_container_path(&m.target) {
            return Err(format!("volume container_path {:?} must be a relative path inside the sandbox", m.target));
        }
        fs::create_dir_all(&m.source)
            .map_err(|e| format!("cannot create volume directory {}: {e}", m.source.display()))?;
        let target = spec.sandbox.join(&m.target);
        fs::create_dir_all(&target)
            .map_err(|e| format!("cannot create the volume's mount point {}: {e}", target.display()))?;
        let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| "a path holds a NUL".to_string());
        out.push((c(&m.source)?, c(&target)?, m.read_only));
    }
    Ok(out)
}

/// In the child, before exec: a mount namespace of the task's own, where
/// nothing propagates back to the host, with each volume bind-mounted.
/// Only system calls, no allocation.
pub(crate) fn mount_volumes(mounts: &[(CString, CString, bool)]) -> std::io::Result<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    let check = |rc: libc::c_int| if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
    // SAFETY: unshare and mount with valid, NUL-terminated paths.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ))?;
        for (source, target, read_only) in mounts {
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            if *read_only {
                check(libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ))?;
            }
        }
    }
    Ok(())
}

/// A started task.
pub struct Container {
    pub pid: i32,
    pub child: spawn::Child,
    pub cgroup: Option<TaskCgroup>,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Creates a task's cgroups with its limits (before anything else, so that
/// accounting and enforcement can be registered before the task runs).
pub fn prepare(spec: &LaunchSpec, cgroups: &Cgroups) -> Result<TaskCgroup, String> {
    cgroups.create(&spec.container_id, spec.limits)
}

/// Starts a task in `cgroup` (from [`prepare`]; `None` when isolation is off).
/// On failure the cgroup is removed.
pub fn launch(spec: &LaunchSpec, cgroup: Option<TaskCgroup>) -> Result<Container, String> {
    let res = spawn(spec, cgroup.as_ref());
    match res {
        Ok((pid, child)) => Ok(Container { pid, child, cgroup }),
        Err(e) => {
            if let Some(c) = &cgroup {
                let _ = c.destroy(Duration::from_secs(1));
            }
            Err(e)
        }
    }
}

fn spawn(spec: &LaunchSpec, cgroup: Option<&TaskCgroup>) -> Result<(i32, spawn::Child), String> {
    fs::create_dir_all(&spec.sandbox).map_err(|e| format!("cannot create sandbox {}: {e}", spec.sandbox.display()))?;
    let open = |name: &str| {
        fs::File::create(spec.sandbox.join(name)).map_err(|e| format!("cannot create {name} in the sandbox: {e}"))
    };
    let (stdout, stderr) = (open("stdout")?, open("stderr")?);
    let c = |s: &[u8]| CString::new(s).map_err(|_| "the command holds a NUL".to_string());
    let agent_path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
    // A later value of a name replaces an earlier one.
    let mut env: BTreeMap<&str, &str> = BTreeMap::new();
    let sandbox = spec.sandbox.to_str().ok_or("the sandbox path is not UTF-8")?;
    env.insert("PATH", &agent_path);
    env.insert("HOME", sandbox);
    for (k, v) in &spec.env {
        env.insert(k, v);
    }
    if let Some(e) = &spec.command.environment {
        for v in &e.variables {
            env.insert(&v.name, &v.value);
        }
    }
    let envp = env.iter().map(|(k, v)| c(format!("{k}={v}").as_bytes())).collect::<Result<Vec<_>, _>>()?;
    let value = spec.command.value.clone().unwrap_or_default();
    let (program, argv) = if spec.command.shell.unwrap_or(true) {
        (c(b"/bin/sh")?, vec![c(b"/bin/sh")?, c(b"-c")?, c(value.as_bytes())?])
    } else {
        // Mesos: `value` is the program and `arguments` its full argv. The
        // program is looked up on the task's own PATH, from its sandbox.
        let program =
            spawn::resolve(&value, env["PATH"], &spec.sandbox).map_err(|e| format!("cannot start the command: {e}"))?;
        let argv = match spec.command.arguments.split_first() {
            Some((argv0, rest)) => {
                std::iter::once(argv0).chain(rest).map(|a| c(a.as_bytes())).collect::<Result<Vec<_>, _>>()?
            }
            None => vec![c(value.as_bytes())?],
        };
        (program, argv)
    };

    let files = match cgroup {
        Some(c) => c.procs_files()?,
        None => Vec::new(),
    };
    let fds = TaskCgroup::procs_fds(&files);
    let mounts = mount_points(spec)?;
    let child = spawn::spawn(&spawn::Spawn {
        program,
        argv,
        envp,
        cwd: c(sandbox.as_bytes())?,
        stdout: stdout.as_raw_fd(),
        stderr: stderr.as_raw_fd(),
        nofile: TASK_NOFILE.get().copied(),
        cgroup_fds: &fds,
        mounts: &mounts,
    })
    .map_err(|e| format!("cannot start the command: {e}"))?;
    drop(files);
    Ok((child.pid, child))
}

/// The open-file limit tasks start with: the one the agent was started
/// with, before it raised its own (`raise_open_file_limit`).
static TASK_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises the agent's open-file limit to the hard limit (it keeps about nine
/// cgroup files open per running task), and remembers the limit it had for
/// the tasks, which get that one back. Returns the limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        let _ = TASK_NOFILE.set(lim);
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Some(raised.rlim_cur);
            }
        }
    }
    Some(lim.rlim_cur)
}

/// Signals a task's process group and everything in its cgroup.
pub fn signal(pid: i32, cgroup: Option<&TaskCgroup>, sig: i32) {
    // SAFETY: kill(2) on the task's own process group (it is a session leader).
    unsafe {
        libc::kill(-pid, sig);
    }
    if let Some(c) = cgroup {
        c.signal_all(sig);
    }
}

/// How a task ended, in Mesos's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: TaskState,
    pub reason: Option<Reason>,
    pub message: String,
    pub exit_code: Option<i32>,
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// Classifies an exit: a memory-limit kill is FAILED with Mesos's memory
/// reason whatever the status says; a kill the agent asked for is KILLED;
/// exit 0 is FINISHED; anything else FAILED.
pub fn classify(status: ExitStatus, killed_by_request: bool, cgroup: Option<&TaskCgroup>) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    if let Some(cg) = cgroup {
        if cg.oom_killed() {
            let peak = cg.memory_peak_bytes().map(|b| format!("{} MB", b >> 20)).unwrap_or_else(|| "?".into());
            let limit = cg.memory_limit_bytes().map(|b| format!("{} MB", b >> 20)).unwrap_or_else(|| "?".into());
            return Outcome {
                state: TaskState::Failed,
                reason: Some(Reason::ReasonContainerLimitationMemory),
                message: format!("Memory limit exceeded: Requested: {limit} Maximum Used: {peak}"),
                exit_code: status.code(),
            };
        }
    }
    match (status.code(), status.signal()) {
        (Some(0), _) if !killed_by_request => Outcome {
            state: TaskState::Finished,
            reason: None,
            message: "Command exited with status 0".into(),
            exit_code: Some(0),
        },
        (Some(c), _) if !killed_by_request => Outcome {
            state: TaskState::Failed,
            reason: None,
            message: format!("Command exited with status {c}"),
            exit_code: Some(c),
        },
        (code, sig) if killed_by_request => Outcome {
            state: TaskState::Killed,
            reason: None,
            message: match sig {
                Some(s) => format!("Command terminated with {}", signal_name(s)),
                None => format!("Command exited with status {} after a kill", code.unwrap_or(-1)),
            },
            exit_code: code,
        },
        (_, Some(s)) => Outcome {
            state: TaskState::Failed,
            reason: None,
            message: format!("Command terminated with {}", signal_name(s)),
            exit_code: None,
        },
        _ => Outcome {
            state: TaskState::Failed,
            reason: Some(Reason::ReasonCommandExecutorFailed),
            message: "Command ended with an unknown status".into(),
            exit_code: None,
        },
    }
}

/// Removes what a finished task leaves behind. With a cgroup, everything in
/// it is killed and it is removed; the process group is not signalled, since
/// its leader was reaped and its id may belong to someone else by now.
/// Without isolation the group is all there is to go by.
///
/// Returns whether the task's cgroup is gone (true without cgroups).
pub fn cleanup(pid: i32, cgroup: Option<&TaskCgroup>) -> bool {
    match cgroup {
        Some(c) => match c.destroy(Duration::from_secs(2)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("task cgroup cleanup: {e}");
                false
            }
        },
        None => {
            // SAFETY: kill(2) on the task's process group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            true
        }
    }
}

/// A file name safe for ids chosen by frameworks.
pub fn safe_component(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

pub fn sandbox_dir(work_dir: &Path, framework: &str, task: &str, container: &str) -> PathBuf {
    work_dir.join("sandboxes").join(safe_component(framework)).join(format!(
        "{}.{}",
        safe_component(task),
        &container[..8.min(container.len())]
    ))
}
