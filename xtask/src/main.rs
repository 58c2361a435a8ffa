//! `cargo xtask`: the project's own commands.
//!
//! - `setup`: installs what the build and the tests need: the eBPF toolchain
//!   (nightly with rust-src, bpf-linker), Debian packages when missing
//!   (Slurm as root, the `real` scenario's baseline), and a Python
//!   virtualenv with pymesos at `.venv`.
//! - `up`: builds everything and runs a local cluster (a standalone master
//!   and two agents on loopback) in the foreground; Ctrl-C stops it and
//!   removes its cgroups. `up --check` starts it, runs a task through
//!   `agora run`, and stops it again: the README's commands, checked.
//! - `test`: setup, then fmt, clippy, the workspace's tests, the integration
//!   tests again with the daemons built with AddressSanitizer, and
//!   `up --check`.
//! - `bench`: the criterion benchmarks, then the load generator's scenarios
//!   (steady, launch, fanout, real; ebpf as root).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("up") => up(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("ci") => {
            std::env::set_var("CI", "true");
            test(&[])
        }
        Some("bench") => bench(&args[1..]),
        Some("codegen") => codegen(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  setup          install what the tests need\n  up [--release] [--port P] [--check]\n                 build and run a local cluster (master + 2 agents)\n  test           setup, fmt, clippy, tests, and `up --check`\n  ci             `test` as CI runs it\n  bench [--quick]\n                 criterion benchmarks and the load generator\n  codegen [--check]\n                 Rust code from the FlatBuffers schemas (--check: fail if stale)"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = res {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", show(cmd));
    let status = cmd.status().with_context(|| format!("cannot run {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs Debian packages that are missing (needs root; `apt-get update` first).
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}; install them (as root: apt-get install {})", missing.join(" "));
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

const PYMESOS: &str = "pymesos==0.3.15";
const HTTP_PARSER: &str = "http-parser==0.9.0";

/// The toolchain pieces the agent's eBPF programs need: the nightly toolchain
/// with rust-src (for `-Z build-std=core`) and `bpf-linker`, built against
/// nightly's own LLVM (a plain `cargo install bpf-linker` looks for LLVM
/// under /usr and fails).
fn ebpf_toolchain() -> Result<()> {
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let components =
        Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]).output()?;
    if !String::from_utf8_lossy(&components.stdout).lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let sysroot = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let lib = sysroot.join("lib");
    let versioned = std::fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major = versioned
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .with_context(|| format!("cannot tell LLVM's version from {versioned}"))?;
    let link = lib.join("libLLVM.so");
    if !link.exists() {
        std::os::unix::fs::symlink(&versioned, &link)?;
    }
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "install", "bpf-linker", "--locked", "--version", "0.13.0"])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &sysroot)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))?;
    anyhow::ensure!(
        succeeds(Command::new("bpf-linker").arg("--version")),
        "bpf-linker is not on PATH after installing it"
    );
    Ok(())
}

/// What the tests need: the eBPF toolchain, Slurm (as root), and the
/// virtualenv at `.venv` with pymesos. pymesos needs `http-parser`, whose
/// C extension does not build on Python 3.11; its package has a pure-Python
/// parser (which pymesos supports), so it is installed without the extension.
fn setup() -> Result<()> {
    ebpf_toolchain()?;
    // Slurm, the baseline of the load generator's `real` scenario; its
    // daemons run as root only, so unprivileged runs skip it.
    if is_root() {
        apt_install(&["slurm-wlm"])?;
    } else {
        eprintln!("setup: not root, so slurm-wlm is not installed and the `real` scenario skips its Slurm half");
    }
    if !succeeds(Command::new("python3").args(["-m", "venv", "--help"])) {
        apt_install(&["python3", "python3-venv"])?;
    }
    let venv = root().join(".venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    if succeeds(Command::new(&py).args(["-c", "import pymesos, http_parser.http"])) {
        eprintln!("setup: pymesos is installed in {}", venv.display());
        return Ok(());
    }
    let pip = |args: &[&str]| -> Result<()> {
        run(Command::new(&py).args(["-m", "pip", "--disable-pip-version-check", "-q"]).args(args))
    };
    pip(&["install", "wheel", "setuptools"])?;
    let dl = target_dir().join("xtask-downloads");
    std::fs::create_dir_all(&dl)?;
    pip(&["download", "--no-deps", "--no-binary", ":all:", "-d", dl.to_str().expect("utf-8 path"), HTTP_PARSER])?;
    let tarball = std::fs::read_dir(&dl)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with("http-parser-") && n.to_string_lossy().ends_with(".tar.gz")
            })
        })
        .context("http-parser sdist was not downloaded")?;
    let src = dl.join("http-parser-src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    run(Command::new("tar").arg("xzf").arg(&tarball).arg("-C").arg(&src).arg("--strip-components=1"))?;
    let setup_py = src.join("setup.py");
    let text = std::fs::read_to_string(&setup_py)?;
    anyhow::ensure!(
        text.contains("run_setup(not IS_PYPY)"),
        "http-parser's setup.py changed; cannot select the pure-Python build"
    );
    std::fs::write(&setup_py, text.replace("run_setup(not IS_PYPY)", "run_setup(False)"))?;
    pip(&["install", "--no-build-isolation", src.to_str().expect("utf-8 path")])?;
    pip(&["install", PYMESOS])?;
    run(Command::new(&py).args(["-c", "import pymesos, http_parser.http; print('pymesos ok')"]))?;
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn catch_signals() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
}

/// A daemon in its own process group (so the terminal's Ctrl-C reaches only
/// xtask, which stops the daemons in order), with its first stdout line.
fn spawn_daemon(mut cmd: Command, log: &Path) -> Result<(Child, String)> {
    use std::os::unix::process::CommandExt;
    let logf = std::fs::File::create(log)?;
    cmd.process_group(0).stdout(Stdio::piped()).stderr(logf).stdin(Stdio::null());
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", show(&cmd)))?;
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    if line.is_empty() {
        let _ = child.wait();
        bail!("{} did not start; see {}", show(&cmd), log.display());
    }
    std::thread::spawn(move || for _ in out.lines() {});
    Ok((child, line.trim().to_string()))
}

fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

fn up(args: &[String]) -> Result<()> {
    let release = args.iter().any(|a| a == "--release");
    let check = args.iter().any(|a| a == "--check");
    let port = args.windows(2).find(|w| w[0] == "--port").map(|w| w[1].clone()).unwrap_or_else(|| {
        if check {
            "0".into()
        } else {
            "5050".into()
        }
    });
    // The agent embeds its eBPF programs: their toolchain comes first.
    ebpf_toolchain()?;
    let mut build = cargo();
    build.args(["build", "--workspace", "--bins"]);
    if release {
        build.arg("--release");
    }
    run(&mut build)?;
    let bins = target_dir().join(if release { "release" } else { "debug" });
    let state = target_dir().join("agora-up");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    catch_signals();

    let mut master_cmd = Command::new(bins.join("agora-master"));
    master_cmd
        .args(["--ip", "127.0.0.1", "--port", &port, "--allocation-interval", "200ms"])
        .arg("--work-dir")
        .arg(state.join("master"));
    let (mut master, line) = spawn_daemon(master_cmd, &state.join("master.log"))?;
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("master's listening line")?
        .to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
    let isolation = if is_root() { "cgroups" } else { "none" };
    if !is_root() {
        eprintln!("note: not root, so the agents run tasks without cgroup limits (--isolation none)");
    }
    let mut agents = Vec::new();
    for i in 0..2 {
        let mut cmd = Command::new(bins.join("agora-agent"));
        cmd.args(["--master", &addr, "--ip", "127.0.0.1", "--port", "0", "--isolation", isolation])
            .args([
                "--resources",
                &format!(
                    "cpus:{cpus};mem:2048;disk:10240;ports:[{}-{}];egress_mbps:1000",
                    31000 + i * 1000,
                    31999 + i * 1000
                ),
            ])
            .args(["--attributes", &format!("agent:{i}")])
            .arg("--work-dir")
            .arg(state.join(format!("agent{i}")));
        let (child, line) = spawn_daemon(cmd, &state.join(format!("agent{i}.log")))?;
        eprintln!("{line}");
        agents.push(child);
    }
    // Wait for both agents to register.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(bins.join("agora")).args(["agents", "--master", &addr, "--json"]).output()?;
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let n = listed.as_array().map(|a| a.iter().filter(|s| s["active"] == true).count()).unwrap_or(0);
        if n == 2 {
            break;
        }
        if Instant::now() > deadline || STOP.load(Ordering::SeqCst) {
            shutdown(&mut master, &mut agents);
            bail!("the agents did not register; logs are in {}", state.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let agora = bins.join("agora");
    println!("\nAgora is up: master at http://{addr} with 2 agents (logs: {})", state.display());
    println!("  state:   curl http://{addr}/master/state");
    println!("  run:     {} run --master {addr} --name hello --command 'echo hello from $MESOS_TASK_ID' --resources 'cpus:0.1;mem:32'", agora.display());
    println!("  look:    {} tasks --master {addr} --all", agora.display());
    let result = if check {
        self_check(&agora, &addr)
    } else {
        println!("Press Ctrl-C to stop.");
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(Some(s)) = master.try_wait() {
                eprintln!("the master exited ({s})");
                break;
            }
        }
        Ok(())
    };
    shutdown(&mut master, &mut agents);
    let leftovers = agent_cgroups_left(&state);
    if !leftovers.is_empty() {
        bail!("cgroups left behind after stopping: {leftovers:?}");
    }
    println!("Stopped; no cgroups left behind.");
    result
}

fn self_check(agora: &Path, addr: &str) -> Result<()> {
    let out = Command::new(agora)
        .args(["run", "--master", addr, "--name", "up-check", "--resources", "cpus:0.1;mem:32"])
        .args(["--command", "echo hello from $MESOS_TASK_ID"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() || !stdout.contains("TASK_FINISHED") {
        bail!("self-check: `agora run` did not finish its task: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = Command::new(agora)
        .args(["run", "--master", addr, "--name", "up-check-fail", "--command", "exit 7"])
        .output()?;
    if out.status.code() != Some(7) {
        bail!("self-check: `agora run` of `exit 7` exited with {:?}", out.status.code());
    }
    println!("self-check: ok");
    Ok(())
}

fn shutdown(master: &mut Child, agents: &mut [Child]) {
    for a in agents.iter_mut() {
        stop(a, Duration::from_secs(10));
    }
    stop(master, Duration::from_secs(5));
}

/// Agent cgroup directories (recorded in each agent's work dir) that still exist.
fn agent_cgroups_left(state: &Path) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for i in 0..2 {
        let rec = state.join(format!("agent{i}/cgroups"));
        for line in std::fs::read_to_string(rec).unwrap_or_default().lines() {
            let p = PathBuf::from(line);
            if p.exists() {
                left.push(p);
            }
        }
    }
    left
}

/// The generated FlatBuffers code (committed) from `proto/schema/*.fbs`.
fn codegen(args: &[String]) -> Result<()> {
    run(cargo().args(["run", "-q", "-p", "agora-codegen", "--"]).args(args))
}

fn test(args: &[String]) -> Result<()> {
    setup()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    codegen(&["--check".to_string()])?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // Integration tests start the binaries, so they are built first.
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    run(cargo().args(["test", "--workspace"]).args(args))?;
    sanitized_tests()?;
    up(&["--check".to_string()])
}

/// The daemons run `unsafe` code of their own and of their runtimes (io_uring,
/// cross-thread channels, fork/exec); the integration tests run again with
/// every binary they start (master, agent, CLI, load generator) built with
/// AddressSanitizer (nightly), so memory errors fail CI instead of
/// corrupting a cluster.
fn sanitized_tests() -> Result<()> {
    const TARGET: &str = "x86_64-unknown-linux-gnu";
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let asan_target = target_dir().join("asan");
    // Through rustup, with the toolchain chosen for xtask itself cleared.
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "build", "--target", TARGET, "--bins"])
        .args(["-p", "agora-master", "-p", "agora-agent", "-p", "agora-cli", "-p", "agora-bench"])
        .current_dir(root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .env("CARGO_TARGET_DIR", &asan_target)
        .env("RUSTFLAGS", "-Zsanitizer=address"))?;
    run(cargo()
        .args(["test", "-p", "agora-tests"])
        .env("AGORA_BIN_DIR", asan_target.join(TARGET).join("debug"))
        .env("ASAN_OPTIONS", "detect_leaks=0:halt_on_error=1"))
}

/// The criterion benches, then the load generator's scenarios against a
/// release master (results and plots in `target/bench/`). `--quick`
/// shortens all of them; other arguments go to criterion.
fn bench(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let criterion: Vec<String> = if quick {
        vec!["--warm-up-time".into(), "1".into(), "--measurement-time".into(), "2".into()]
    } else {
        args.to_vec()
    };
    for (package, bench) in [("agora-proto", "frame"), ("agora-proto", "event"), ("agora-master", "allocation")] {
        run(cargo().args(["bench", "-p", package, "--bench", bench, "--"]).args(&criterion))?;
    }
    // Optimistic against pessimistic offers: a simulation, not timed.
    run(cargo().args(["bench", "-p", "agora-master", "--bench", "optimistic"]))?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "agora-master",
        "-p",
        "agora-agent",
        "-p",
        "agora-bench",
        "--bins",
    ]))?;
    for scenario in ["steady", "launch", "fanout", "real"] {
        let mut load = Command::new(target_dir().join("release/agora-bench"));
        load.arg(scenario).arg("--out").arg(target_dir().join("bench"));
        if quick {
            load.arg("--quick");
        }
        run(&mut load)?;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED the ebpf benchmark: it needs root (cgroups and eBPF programs)");
        return Ok(());
    }
    let mut ebpf = Command::new(target_dir().join("release/agora-bench"));
    ebpf.arg("ebpf").arg("--out").arg(target_dir().join("bench"));
    if quick {
        ebpf.arg("--quick");
    }
    run(&mut ebpf)
}
