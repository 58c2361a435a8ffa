//! Starting a task's process without copying the agent's address space.
//!
//! `fork` copies the agent's page tables into every child, and `exec` then
//! throws the copy away: at a thousand launches that was a quarter of the
//! agent's CPU time (`dup_mmap` and `exit_mmap` in a profile of the bench's
//! `real` scenario). Here the child is made with
//! `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` does: it runs on a stack
//! of its own in the agent's memory while the agent's thread waits, sets
//! itself up with system calls only, and execs. Everything it needs (paths,
//! argv, environment, file descriptors) is prepared before the clone.
//!
//! The child's exit is awaited on a pidfd, so no signal handler is involved.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

/// What the child does between clone and exec, in this order: reset signal
/// handling, start a session, set the open-file limit, join the cgroups
/// (one `write` of "0" to each fd), bind-mount volumes, pause for a moment,
/// set up stdio, change directory, exec.
pub struct Spawn<'a> {
    pub program: CString,
    /// argv[0] first; a program the kernel cannot exec (a script without
    /// `#!`) is run by `/bin/sh` with the same arguments, as `execvp` does.
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: CString,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub nofile: Option<libc::rlimit>,
    pub cgroup_fds: &'a [RawFd],
    pub mounts: &'a [(CString, CString, bool)],
}

/// The steps that can fail in the child, for the error message.
const STEPS: [&str; 7] = [
    "start a session",
    "set the open-file limit",
    "join the task's cgroups",
    "mount volumes",
    "set up stdio",
    "enter the sandbox",
    "exec",
];

struct ChildArgs<'a> {
    spawn: &'a Spawn<'a>,
    /// stdin, stdout and stderr, each above 2, so that no dup2 onto 0, 1 or
    /// 2 overwrites another before it is used.
    stdio: [RawFd; 3],
    argv: &'a [*const libc::c_char],
    /// `/bin/sh program args...`, for ENOEXEC.
    sh_argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// errno of the failed step, and which step (index into STEPS).
    errno: AtomicI32,
    step: AtomicI32,
}

/// Bytes of the child's stack: it only makes system calls, but
/// AddressSanitizer's instrumentation needs room too. A page below it is
/// mapped inaccessible, so an overflow faults instead of writing into the
/// agent's memory.
const STACK: usize = 256 << 10;
const GUARD: usize = 4096;

/// A started process.
pub struct Child {
    pub pid: i32,
    pidfd: Option<OwnedFd>,
}

/// Starts `s`; returns once the child has exec'd (or failed to, which is
/// the error).
pub fn spawn(s: &Spawn) -> io::Result<Child> {
    let argv: Vec<*const libc::c_char> = s.argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let envp: Vec<*const libc::c_char> = s.envp.iter().map(|e| e.as_ptr()).chain([std::ptr::null()]).collect();
    let sh_argv: Vec<*const libc::c_char> = [c"/bin/sh".as_ptr(), s.program.as_ptr()]
        .into_iter()
        .chain(s.argv.iter().skip(1).map(|a| a.as_ptr()))
        .chain([std::ptr::null()])
        .collect();
    // SAFETY: opening a constant path.
    let stdin = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if stdin < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned here.
    let stdin = unsafe { OwnedFd::from_raw_fd(stdin) };
    // Copies made to move a descriptor above 2, closed once the child has exec'd.
    let mut copies = Vec::new();
    let mut lift = |fd: RawFd| -> io::Result<RawFd> {
        Ok(match above_stdio(fd)? {
            Some(copy) => {
                let raw = copy.as_raw_fd();
                copies.push(copy);
                raw
            }
            None => fd,
        })
    };
    let stdio = [lift(stdin.as_raw_fd())?, lift(s.stdout)?, lift(s.stderr)?];
    let args = ChildArgs {
        spawn: s,
        stdio,
        argv: &argv,
        sh_argv: &sh_argv,
        envp: &envp,
        errno: AtomicI32::new(0),
        step: AtomicI32::new(-1),
    };
    // SAFETY: an anonymous private mapping, unmapped below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            GUARD + STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the first page of the mapping just made.
    if unsafe { libc::mprotect(stack, GUARD, libc::PROT_NONE) } != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: unmapping the mapping just made.
        unsafe { libc::munmap(stack, GUARD + STACK) };
        return Err(e);
    }
    // Every signal is blocked across the clone, so that none of the agent's
    // handlers runs in the child, which shares the agent's memory; the
    // child resets them before unblocking.
    // SAFETY: sigset_t values initialised by sigfillset; the stack is
    // STACK bytes and grows down from its end; `args` outlives the child's
    // use of it because CLONE_VFORK suspends this thread until the child
    // execs or exits.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let top = (stack as *mut u8).add(GUARD + STACK);
        let pid = libc::clone(
            child_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&args as *const ChildArgs).cast_mut().cast(),
        );
        let clone_err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        libc::munmap(stack, GUARD + STACK);
        if pid < 0 {
            return Err(clone_err);
        }
        pid
    };
    drop((stdin, copies));
    let step = args.step.load(Ordering::SeqCst);
    if step >= 0 {
        let errno = args.errno.load(Ordering::SeqCst);
        // The child has exited (status 127); reap it.
        let _ = reap(pid, 0);
        let what = STEPS.get(step as usize).copied().unwrap_or("start");
        let e = io::Error::from_raw_os_error(errno);
        return Err(io::Error::new(e.kind(), format!("cannot {what}: {e}")));
    }
    // SAFETY: pidfd_open on our own, unreaped child.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: a descriptor just returned, owned here.
        return Ok(Child { pid, pidfd: Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }) });
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOSYS) {
        return Ok(Child { pid, pidfd: None });
    }
    // No pidfd (out of descriptors): a child that could not be awaited is
    // not left running.
    // SAFETY: kill(2) on our own, unreaped child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = reap(pid, 0);
    Err(io::Error::new(e.kind(), format!("cannot watch the process: {e}")))
}

impl Child {
    /// Waits for the process to exit and reaps it. Dropped before then, the
    /// process is left as it is and, once it exits, a zombie until the
    /// agent does (the agent only drops it when it stops).
    pub async fn wait(self) -> io::Result<ExitStatus> {
        let pid = self.pid;
        let registered = self.pidfd.map(|fd| {
            // SAFETY: the pidfd is owned by the AsyncFd, open until it drops.
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        });
        match registered {
            // A pidfd the reactor cannot take: waited for on a thread.
            None | Some(Err(_)) => tokio::task::spawn_blocking(move || reap(pid, 0))
                .await
                .map_err(io::Error::other)?
                .and_then(|s| s.ok_or_else(|| io::Error::other("waitpid returned no status"))),
            Some(Ok(fd)) => loop {
                if let Some(status) = reap(pid, libc::WNOHANG)? {
                    return Ok(status);
                }
                fd.readable().await?.clear_ready();
            },
        }
    }
}

/// A copy of `fd` numbered above 2 (close-on-exec), if it is 0, 1 or 2.
fn above_stdio(fd: RawFd) -> io::Result<Option<OwnedFd>> {
    if fd > 2 {
        return Ok(None);
    }
    // SAFETY: duplicating a descriptor the caller holds open.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just made, owned here.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(dup) }))
}

fn reap(pid: i32, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, flags) };
        if rc == pid {
            return Ok(Some(ExitStatus::from_raw(status)));
        }
        if rc == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The child, in the agent's memory on its own stack: system calls only,
/// no allocation, no locks.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` keeps alive while this
    // runs; every call below is a system call on values prepared there.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let s = a.spawn;
        let fail = |step: i32| -> libc::c_int {
            a.errno.store(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL), Ordering::SeqCst);
            a.step.store(step, Ordering::SeqCst);
            libc::_exit(127)
        };
        // The agent's handlers become the default (exec would do that,
        // but a signal could arrive before it); SIGPIPE, which the Rust
        // runtime ignores, is the default again, as std's Command does.
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if sig == libc::SIGPIPE || (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN) {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());

        if libc::setsid() < 0 {
            return fail(0);
        }
        if let Some(lim) = &s.nofile {
            if libc::setrlimit(libc::RLIMIT_NOFILE, lim) != 0 {
                return fail(1);
            }
        }
        if crate::cgroups::join_fds(s.cgroup_fds).is_err() {
            return fail(2);
        }
        if crate::containerizer::mount_volumes(s.mounts).is_err() {
            return fail(3);
        }
        // A moment off the CPU: the scheduler programs see the process
        // leave it and come back in its task's cgroup, so that a process
        // that then keeps its CPU is counted from the start.
        let pause = libc::timespec { tv_sec: 0, tv_nsec: 1 };
        libc::nanosleep(&pause, std::ptr::null_mut());
        // Each is above 2, and dup2 leaves the copy open across exec.
        for (fd, target) in a.stdio.into_iter().zip(0..) {
            if libc::dup2(fd, target) != target {
                return fail(4);
            }
        }
        if libc::chdir(s.cwd.as_ptr()) != 0 {
            return fail(5);
        }
        libc::execve(s.program.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
        if *libc::__errno_location() == libc::ENOEXEC {
            libc::execve(c"/bin/sh".as_ptr(), a.sh_argv.as_ptr(), a.envp.as_ptr());
        }
        fail(6)
    }
}

/// The program a command names: itself when it holds a slash, otherwise the
/// first executable file of that name in `path` (as `execvp` would look, but
/// here, before the clone). Relative names and PATH entries are taken from
/// `cwd`, the directory the program will run in.
pub fn resolve(program: &str, path: &str, cwd: &std::path::Path) -> io::Result<CString> {
    let c = |s: &[u8]| CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the command"));
    if program.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty command"));
    }
    let from_cwd = |p: &str| -> io::Result<CString> {
        let full = cwd.join(p);
        c(full.as_os_str().as_encoded_bytes())
    };
    if program.contains('/') {
        return from_cwd(program);
    }
    // An empty entry is the current directory, as for execvp.
    for dir in path.split(':') {
        let candidate = from_cwd(&format!("{}/{program}", if dir.is_empty() { "." } else { dir }))?;
        if is_executable_file(&candidate) {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, format!("{program} not found in PATH")))
}

fn is_executable_file(p: &CStr) -> bool {
    // SAFETY: stat and access on a valid C string.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::stat(p.as_ptr(), &mut st) == 0
            && (st.st_mode & libc::S_IFMT) == libc::S_IFREG
            && libc::access(p.as_ptr(), libc::X_OK) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    /// `argv` run as `program` in `cwd` with no environment, both outputs to `out`.
    fn plain(program: &str, argv: &[&str], cwd: &str, out: RawFd) -> Spawn<'static> {
        Spawn {
            program: c(program),
            argv: argv.iter().map(|a| c(a)).collect(),
            envp: vec![],
            cwd: c(cwd),
            stdout: out,
            stderr: out,
            nofile: None,
            cgroup_fds: &[],
            mounts: &[],
        }
    }

    fn run(s: &Spawn) -> io::Result<ExitStatus> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let child = spawn(s)?;
        rt.block_on(child.wait())
    }

    /// A directory for one test, removed when dropped (a failing test too).
    struct Scratch(std::path::PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("agora-spawn-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    #[test]
    fn the_child_gets_its_argv_environment_directory_stdio_session_and_limits() {
        let dir = scratch("basic");
        let out = std::fs::File::create(dir.join("stdout")).unwrap();
        let err = std::fs::File::create(dir.join("stderr")).unwrap();
        let script = "echo \"$0|$1|$FOO|$(pwd)|$(env | wc -l)|$(ulimit -n)\"; \
                      set -- $(cat /proc/$$/stat); echo \"session $6 pid $$\"; \
                      read line; echo \"stdin [$line]\"; \
                      echo oops >&2; exit 3";
        let mut hard = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit with a valid pointer.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) };
        let status = run(&Spawn {
            program: c("/bin/sh"),
            argv: vec![c("/bin/sh"), c("-c"), c(script), c("zero"), c("one")],
            envp: vec![c("FOO=bar"), c("PATH=/usr/bin:/bin")],
            cwd: c(dir.to_str().unwrap()),
            stdout: out.as_raw_fd(),
            stderr: err.as_raw_fd(),
            nofile: Some(libc::rlimit { rlim_cur: 100, rlim_max: hard.rlim_max }),
            cgroup_fds: &[],
            mounts: &[],
        })
        .unwrap();
        assert_eq!(status.code(), Some(3));
        let text = std::fs::read_to_string(dir.join("stdout")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Only the environment given (sh adds PWD, and the pipeline's env its own _ at most).
        let fields: Vec<&str> = lines[0].split('|').collect();
        assert_eq!(&fields[..4], &["zero", "one", "bar", dir.to_str().unwrap()], "{text}");
        assert!(fields[4].trim().parse::<u32>().unwrap() <= 4, "{text}");
        assert_eq!(fields[5], "100", "{text}");
        let session: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(session[1], session[3], "a session of its own: {text}");
        assert_eq!(lines[2], "stdin []", "stdin is /dev/null: {text}");
        assert_eq!(std::fs::read_to_string(dir.join("stderr")).unwrap(), "oops\n");

        // The program's own signal state (read by itself: a shell blocks
        // signals while it waits for a command): nothing blocked, and
        // SIGPIPE, which the Rust runtime ignores, not ignored.
        let out = std::fs::File::create(dir.join("signals")).unwrap();
        let argv = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"];
        let status = run(&plain("/bin/grep", &argv, dir.to_str().unwrap(), out.as_raw_fd())).unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(dir.join("signals")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "SigBlk:\t0000000000000000", "{text}");
        let ignored = u64::from_str_radix(lines[1].trim_start_matches("SigIgn:").trim(), 16).unwrap();
        assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{text}");
    }

    #[test]
    fn a_step_that_fails_is_an_error_naming_it() {
        let dir = scratch("fail");
        let out = std::fs::File::create(dir.join("stdout")).unwrap();
        let base = |program: &str, cwd: &str| plain(program, &[program], cwd, out.as_raw_fd());
        let e = spawn(&base("/nonexistent/program", dir.to_str().unwrap())).err().expect("no such program");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().starts_with("cannot exec"), "{e}");
        let e = spawn(&base("/bin/true", "/nonexistent/dir")).err().expect("no such directory");
        assert!(e.to_string().starts_with("cannot enter the sandbox"), "{e}");
        // A closed fd for the cgroup: the join fails before anything runs.
        let closed = [987_654];
        let e = spawn(&Spawn { cgroup_fds: &closed, ..base("/bin/true", dir.to_str().unwrap()) })
            .err()
            .expect("a bad cgroup fd");
        assert!(e.to_string().starts_with("cannot join the task's cgroups"), "{e}");
    }

    #[test]
    fn stdio_descriptors_are_moved_above_2() {
        let moved = above_stdio(2).unwrap().expect("a copy of fd 2");
        assert!(moved.as_raw_fd() > 2);
        assert!(above_stdio(moved.as_raw_fd()).unwrap().is_none());
    }

    #[test]
    fn programs_are_found_on_the_path() {
        let root = std::path::Path::new("/");
        assert_eq!(resolve("/x/y", "", root).unwrap(), c("/x/y"));
        let sh = resolve("sh", "/nonexistent:/bin:/usr/bin", root).unwrap();
        assert!(sh == c("/bin/sh") || sh == c("/usr/bin/sh"), "{sh:?}");
        assert_eq!(resolve("no-such-program-here", "/bin:/usr/bin", root).unwrap_err().kind(), io::ErrorKind::NotFound);
        // A directory of that name is not a program.
        assert_eq!(resolve("bin", "/", root).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(resolve("", "/bin", root).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        // Relative names and entries are taken from the task's directory.
        let dir = scratch("resolve");
        std::fs::create_dir_all(dir.join("tools")).unwrap();
        std::os::unix::fs::symlink("/bin/true", dir.join("tools/mine")).unwrap();
        let expect = c(dir.join("tools/mine").to_str().unwrap());
        assert_eq!(resolve("mine", "/bin:tools", &dir).unwrap(), expect);
        assert_eq!(resolve("./tools/mine", "", &dir).unwrap(), c(dir.join("./tools/mine").to_str().unwrap()));
    }

    #[test]
    fn a_script_without_an_interpreter_line_runs_in_sh() {
        let dir = scratch("script");
        let script = dir.join("script");
        // Written by another process: a write descriptor open in this one
        // would be copied into a child another test clones meanwhile, and
        // exec would fail with ETXTBSY while that child holds it.
        let wrote = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("printf 'echo \"script $1\"\\n' > \"$0\" && chmod 755 \"$0\"")
            .arg(&script)
            .status()
            .unwrap();
        assert!(wrote.success());
        let out = std::fs::File::create(dir.join("stdout")).unwrap();
        let script = script.to_str().unwrap();
        let status = run(&plain(script, &["script", "arg"], dir.to_str().unwrap(), out.as_raw_fd())).unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(dir.join("stdout")).unwrap(), "script arg\n");
    }
}
