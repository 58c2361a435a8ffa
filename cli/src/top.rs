//! `agora top`: a live table of the cluster's running tasks and what they
//! use, refreshed on an interval and sortable by CPU, run-queue latency,
//! network, block IO or memory.
//!
//! Each refresh reads the master's state (the agents, where they listen, the
//! frameworks' names) and every active agent's `/monitor/statistics`. Rates
//! (cores, bytes per second, the share of CFS periods throttled) and the
//! run-queue latency p99 are computed over the time between an agent's two
//! latest samples seen by `top`, from the counters and the histogram; before
//! the second refresh, CPU is the agent's own last-interval figure and the
//! p99 covers the task's whole life.
//!
//! On a terminal, keys change the order (`c`, `r`, `n`, `i`, `m`) and `q`
//! quits; `--once` prints one table (after one interval, so rates are real)
//! and `--json` prints the rows as JSON.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

/// What the table is ordered by, largest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Cores used.
    Cpu,
    /// Run-queue latency p99.
    Runq,
    /// Network bytes per second, received and sent.
    Net,
    /// Block IO bytes per second, read and written.
    Io,
    /// Resident memory.
    Mem,
}

impl SortKey {
    fn name(self) -> &'static str {
        match self {
            SortKey::Cpu => "cpu",
            SortKey::Runq => "runq p99",
            SortKey::Net => "net",
            SortKey::Io => "io",
            SortKey::Mem => "mem",
        }
    }

    fn from_key(k: u8) -> Option<SortKey> {
        Some(match k {
            b'c' | b'C' => SortKey::Cpu,
            b'r' | b'R' => SortKey::Runq,
            b'n' | b'N' => SortKey::Net,
            b'i' | b'I' => SortKey::Io,
            b'm' | b'M' => SortKey::Mem,
            _ => return None,
        })
    }
}

pub struct Options {
    pub master: String,
    pub sort: SortKey,
    pub interval: Duration,
    pub once: bool,
    pub json: bool,
    /// At most this many rows; the terminal's height when not given.
    pub limit: Option<usize>,
}

/// A task's counters in one agent sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// When the agent took the sample, in seconds since the epoch.
    pub timestamp: f64,
    pub cpu_secs: Option<f64>,
    /// The agent's own figure for cores used over its last interval.
    pub cpus_used: Option<f64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
    pub io_bytes: Option<u64>,
    pub runq_hist: Vec<u64>,
    pub mem_rss_bytes: Option<u64>,
}

/// One running task as an agent reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSample {
    pub task_id: String,
    pub framework_id: String,
    pub agent_id: String,
    pub state: String,
    pub cpus_limit: Option<f64>,
    pub mem_limit_bytes: Option<u64>,
    pub source: String,
    pub counters: Counters,
}

type Key = (String, String, String);

impl TaskSample {
    fn key(&self) -> Key {
        (self.agent_id.clone(), self.framework_id.clone(), self.task_id.clone())
    }

    /// From one entry of an agent's `/monitor/statistics`; `None` for a
    /// completed task or an entry without statistics.
    pub fn parse(agent_id: &str, entry: &Value) -> Option<TaskSample> {
        if entry["completed"] == true {
            return None;
        }
        let st = &entry["statistics"];
        let f = |k: &str| st[k].as_f64();
        let u = |k: &str| st[k].as_u64();
        let timestamp = f("timestamp")?;
        let cpu_secs = f("cpus_oncpu_time_secs").or_else(|| f("cpus_cgroup_time_secs")).or_else(|| {
            let (user, system) = (f("cpus_user_time_secs"), f("cpus_system_time_secs"));
            (user.is_some() || system.is_some()).then(|| user.unwrap_or(0.0) + system.unwrap_or(0.0))
        });
        let io_bytes = match (u("blkio_read_bytes"), u("blkio_write_bytes")) {
            (None, None) => None,
            (r, w) => Some(r.unwrap_or(0) + w.unwrap_or(0)),
        };
        Some(TaskSample {
            task_id: entry["task_id"].as_str()?.to_string(),
            framework_id: entry["framework_id"].as_str().unwrap_or_default().to_string(),
            agent_id: agent_id.to_string(),
            state: entry["state"].as_str().unwrap_or_default().to_string(),
            cpus_limit: f("cpus_limit"),
            mem_limit_bytes: u("mem_limit_bytes"),
            source: st["source"].as_str().unwrap_or_default().to_string(),
            counters: Counters {
                timestamp,
                cpu_secs,
                cpus_used: f("cpus_used"),
                nr_periods: u("cpus_nr_periods"),
                nr_throttled: u("cpus_nr_throttled"),
                net_rx_bytes: u("net_rx_bytes"),
                net_tx_bytes: u("net_tx_bytes"),
                io_bytes,
                runq_hist: st["runq_latency_histogram"]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
                    .unwrap_or_default(),
                mem_rss_bytes: u("mem_rss_bytes"),
            },
        })
    }
}

/// What one refresh saw.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub tasks: Vec<TaskSample>,
    /// Agent id → hostname.
    pub agents: HashMap<String, String>,
    /// Framework id → name.
    pub frameworks: HashMap<String, String>,
    /// Agents whose statistics could not be read, and why.
    pub unreachable: Vec<(String, String)>,
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub task_id: String,
    pub framework: String,
    pub agent: String,
    pub state: String,
    pub cpus: Option<f64>,
    pub cpus_limit: Option<f64>,
    /// Share of CFS periods in which the task was throttled, 0..1.
    pub throttled: Option<f64>,
    pub runq_p99_us: Option<u64>,
    pub mem_rss_bytes: Option<u64>,
    pub mem_limit_bytes: Option<u64>,
    pub net_rx_per_sec: Option<f64>,
    pub net_tx_per_sec: Option<f64>,
    pub io_per_sec: Option<f64>,
    pub source: String,
}

impl Row {
    fn sort_value(&self, key: SortKey) -> f64 {
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (None, None) => -1.0,
            (a, b) => a.unwrap_or(0.0) + b.unwrap_or(0.0),
        };
        match key {
            SortKey::Cpu => self.cpus.unwrap_or(-1.0),
            SortKey::Runq => self.runq_p99_us.map_or(-1.0, |v| v as f64),
            SortKey::Net => sum(self.net_rx_per_sec, self.net_tx_per_sec),
            SortKey::Io => self.io_per_sec.unwrap_or(-1.0),
            SortKey::Mem => self.mem_rss_bytes.map_or(-1.0, |v| v as f64),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "task_id": self.task_id, "framework": self.framework, "agent": self.agent, "state": self.state,
            "cpus_used": self.cpus, "cpus_limit": self.cpus_limit, "throttled_share": self.throttled,
            "runq_latency_p99_us": self.runq_p99_us,
            "mem_rss_bytes": self.mem_rss_bytes, "mem_limit_bytes": self.mem_limit_bytes,
            "net_rx_bytes_per_sec": self.net_rx_per_sec, "net_tx_bytes_per_sec": self.net_tx_per_sec,
            "io_bytes_per_sec": self.io_per_sec, "source": self.source,
        })
    }
}

fn delta(now: Option<u64>, before: Option<u64>) -> Option<u64> {
    Some(now?.saturating_sub(before?))
}

/// The rows of `now`, with rates over the time since `prev` where `prev` has
/// an older sample of the same task.
pub fn rows(now: &Snapshot, prev: Option<&Snapshot>) -> Vec<Row> {
    let before: HashMap<Key, &Counters> =
        prev.map(|p| p.tasks.iter().map(|t| (t.key(), &t.counters)).collect()).unwrap_or_default();
    now.tasks
        .iter()
        .map(|t| {
            let c = &t.counters;
            let earlier = before.get(&t.key()).filter(|b| c.timestamp > b.timestamp);
            let mut row = Row {
                task_id: t.task_id.clone(),
                framework: now.frameworks.get(&t.framework_id).cloned().unwrap_or_else(|| t.framework_id.clone()),
                agent: now.agents.get(&t.agent_id).cloned().unwrap_or_else(|| t.agent_id.clone()),
                state: t.state.clone(),
                cpus: c.cpus_used,
                cpus_limit: t.cpus_limit,
                throttled: None,
                runq_p99_us: agora_ebpf_common::rq_quantile_us(&c.runq_hist, 990),
                mem_rss_bytes: c.mem_rss_bytes,
                mem_limit_bytes: t.mem_limit_bytes,
                net_rx_per_sec: None,
                net_tx_per_sec: None,
                io_per_sec: None,
                source: t.source.clone(),
            };
            if let Some(b) = earlier {
                let dt = c.timestamp - b.timestamp;
                let rate = |d: Option<u64>| d.map(|d| d as f64 / dt);
                if let (Some(x), Some(y)) = (c.cpu_secs, b.cpu_secs) {
                    row.cpus = Some((x - y).max(0.0) / dt);
                }
                row.net_rx_per_sec = rate(delta(c.net_rx_bytes, b.net_rx_bytes));
                row.net_tx_per_sec = rate(delta(c.net_tx_bytes, b.net_tx_bytes));
                row.io_per_sec = rate(delta(c.io_bytes, b.io_bytes));
                if let (Some(p), Some(th)) = (delta(c.nr_periods, b.nr_periods), delta(c.nr_throttled, b.nr_throttled))
                {
                    row.throttled = Some(if p == 0 { 0.0 } else { th as f64 / p as f64 });
                }
                if c.runq_hist.len() == b.runq_hist.len() {
                    let window: Vec<u64> =
                        c.runq_hist.iter().zip(&b.runq_hist).map(|(x, y)| x.saturating_sub(*y)).collect();
                    // No wakeups in the window: nothing waited.
                    row.runq_p99_us = agora_ebpf_common::rq_quantile_us(&window, 990);
                }
            }
            row
        })
        .collect()
}

/// Largest first by `key`; ties by task id.
pub fn sort(rows: &mut [Row], key: SortKey) {
    rows.sort_by(|a, b| b.sort_value(key).total_cmp(&a.sort_value(key)).then_with(|| a.task_id.cmp(&b.task_id)));
}

fn bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = v;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

fn micros(us: u64) -> String {
    match us {
        0..1000 => format!("{us}µs"),
        1000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.1}s", us as f64 / 1e6),
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

pub const HEADERS: [&str; 11] =
    ["TASK", "FRAMEWORK", "AGENT", "CPU", "LIMIT", "THROTTLED", "RUNQ P99", "MEM", "NET RX/s", "NET TX/s", "IO/s"];

/// The table's cells for a row.
pub fn cells(r: &Row) -> [String; 11] {
    let clip = |s: &str, n: usize| {
        if s.chars().count() > n {
            format!("{}…", s.chars().take(n - 1).collect::<String>())
        } else {
            s.to_string()
        }
    };
    [
        clip(&r.task_id, 32),
        clip(&r.framework, 20),
        clip(&r.agent, 20),
        opt(r.cpus, |v| format!("{v:.2}")),
        opt(r.cpus_limit, |v| format!("{v:.2}")),
        opt(r.throttled, |v| format!("{:.0}%", v * 100.0)),
        opt(r.runq_p99_us, micros),
        match (r.mem_rss_bytes, r.mem_limit_bytes) {
            (Some(m), Some(l)) => format!("{}/{}", bytes(m as f64), bytes(l as f64)),
            (m, _) => opt(m, |m| bytes(m as f64)),
        },
        opt(r.net_rx_per_sec, bytes),
        opt(r.net_tx_per_sec, bytes),
        opt(r.io_per_sec, bytes),
    ]
}

/// The whole screen: a summary line, any unreachable agents, the table, cut
/// to `width` columns and `height` lines.
pub fn render(snap: &Snapshot, rows: &[Row], sort: SortKey, interval: Duration, width: usize, height: usize) -> String {
    let mut lines = vec![format!(
        "agora top: {} agents, {} tasks, by {} (every {:.1?}; keys c r n i m sort, q quits)",
        snap.agents.len(),
        rows.len(),
        sort.name(),
        interval
    )];
    for (agent, why) in &snap.unreachable {
        lines.push(format!("agent {agent} unreachable: {why}"));
    }
    let body: Vec<[String; 11]> = rows.iter().map(cells).collect();
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.chars().count()).collect();
    for r in &body {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            // Names left, numbers right.
            if i < 3 {
                out.push_str(c);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str(&" ".repeat(pad));
                out.push_str(c);
            }
            out.push_str("  ");
        }
        out.trim_end().to_string()
    };
    lines.push(line(&HEADERS.map(String::from)));
    let room = height.saturating_sub(lines.len());
    let shown = body.len().min(room);
    for r in &body[..shown] {
        lines.push(line(r));
    }
    if shown < body.len() {
        if let Some(last) = lines.last_mut() {
            *last = format!("… {} more", body.len() - shown + 1);
        }
    }
    let cut: Vec<String> = lines.into_iter().map(|l| l.chars().take(width).collect()).collect();
    cut.join("\n") + "\n"
}

async fn fetch(master: &str) -> anyhow::Result<Snapshot> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let body = tokio::time::timeout(TIMEOUT, agora_sdk::http::get(master, "/master/state"))
        .await
        .map_err(|_| anyhow::anyhow!("the master at {master} did not answer within {TIMEOUT:?}"))??;
    let st: Value = serde_json::from_slice(&body)?;
    let mut snap = Snapshot::default();
    for key in ["frameworks", "completed_frameworks"] {
        for f in st[key].as_array().into_iter().flatten() {
            if let (Some(id), Some(name)) = (f["id"].as_str(), f["name"].as_str()) {
                snap.frameworks.insert(id.to_string(), name.to_string());
            }
        }
    }
    let mut jobs = tokio::task::JoinSet::new();
    for a in st["slaves"].as_array().into_iter().flatten() {
        if a["active"] == false {
            continue;
        }
        let (Some(id), Some(host), Some(port)) = (a["id"].as_str(), a["hostname"].as_str(), a["port"].as_u64()) else {
            continue;
        };
        snap.agents.insert(id.to_string(), host.to_string());
        let (id, addr) = (id.to_string(), format!("{host}:{port}"));
        jobs.spawn(async move {
            let got = tokio::time::timeout(TIMEOUT, agora_sdk::http::get(&addr, "/monitor/statistics")).await;
            let parsed = match got {
                Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(body)) => serde_json::from_slice::<Value>(&body).map_err(|e| format!("bad statistics: {e}")),
            };
            (id, addr, parsed)
        });
    }
    while let Some(done) = jobs.join_next().await {
        let Ok((id, addr, parsed)) = done else { continue };
        match parsed {
            Ok(entries) => {
                snap.tasks.extend(entries.as_array().into_iter().flatten().filter_map(|e| TaskSample::parse(&id, e)))
            }
            Err(why) => snap.unreachable.push((format!("{id} ({addr})"), why)),
        }
    }
    snap.unreachable.sort();
    Ok(snap)
}

/// The terminal's columns and lines, when stdout is one.
fn terminal_size() -> Option<(usize, usize)> {
    // SAFETY: TIOCGWINSZ fills a winsize we own.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0)
            .then_some((ws.ws_col as usize, ws.ws_row as usize))
    }
}

fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Unbuffered, unechoed input on the terminal while it lives; the previous
/// settings come back on drop.
struct RawInput {
    saved: libc::termios,
}

impl RawInput {
    fn enable() -> Option<RawInput> {
        // SAFETY: tcgetattr/tcsetattr on stdin with termios structs we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return None;
            }
            let saved = t;
            // Keep ISIG: Ctrl-C still interrupts.
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            (libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) == 0).then_some(RawInput { saved })
        }
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}

/// The alternate screen with the cursor hidden, like top; restored on drop.
struct Screen;

impl Screen {
    fn enter() -> Screen {
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Screen
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
    }
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(o.interval >= Duration::from_millis(100), "--interval must be at least 100ms");
    if o.once || o.json {
        let first = fetch(&o.master).await?;
        tokio::time::sleep(o.interval).await;
        let now = fetch(&o.master).await?;
        let mut rows = rows(&now, Some(&first));
        sort(&mut rows, o.sort);
        if let Some(n) = o.limit {
            rows.truncate(n);
        }
        if o.json {
            println!("{}", serde_json::to_string_pretty(&rows.iter().map(Row::to_json).collect::<Vec<_>>())?);
        } else {
            print!("{}", render(&now, &rows, o.sort, o.interval, usize::MAX, usize::MAX));
        }
        return Ok(());
    }
    let interactive = is_tty(libc::STDOUT_FILENO);
    // Keys, read by a thread: stdin blocks.
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<u8>(16);
    let raw = (interactive && is_tty(libc::STDIN_FILENO)).then(RawInput::enable).flatten();
    if raw.is_some() {
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            while let Ok(1) = std::io::Read::read(&mut std::io::stdin(), &mut b) {
                if keys_tx.blocking_send(b[0]).is_err() {
                    return;
                }
            }
        });
    }
    let screen = interactive.then(Screen::enter);
    let mut sort_by = o.sort;
    let mut prev: Option<Snapshot> = None;
    let mut current: Option<(Snapshot, Vec<Row>)> = None;
    let mut error: Option<String> = None;
    let mut next = tokio::time::Instant::now();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                next += o.interval;
                match fetch(&o.master).await {
                    Ok(snap) => {
                        let rows = rows(&snap, prev.as_ref());
                        prev = Some(snap.clone());
                        current = Some((snap, rows));
                        error = None;
                    }
                    Err(e) => error = Some(format!("{e:#}")),
                }
            }
            k = keys.recv() => match k {
                Some(b'q' | b'Q') | None => break,
                Some(k) => match SortKey::from_key(k) {
                    Some(s) => sort_by = s,
                    None => continue,
                },
            },
            _ = &mut interrupt => break,
        }
        let (width, height) = terminal_size().unwrap_or((usize::MAX, usize::MAX));
        let mut frame = String::new();
        if let Some((snap, rows)) = &mut current {
            sort(rows, sort_by);
            let rows: &[Row] = match o.limit {
                Some(n) => &rows[..n.min(rows.len())],
                None => rows,
            };
            frame = render(snap, rows, sort_by, o.interval, width, height.saturating_sub(1));
        }
        if let Some(e) = &error {
            frame.push_str(&format!("cannot refresh: {e}\n"));
        }
        if interactive {
            print!("\x1b[H\x1b[2J{frame}");
        } else {
            println!("{frame}");
        }
        std::io::stdout().flush()?;
    }
    drop(screen);
    drop(raw);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(task: &str, ts: f64, cpu: f64, tx: u64, hist: &[u64]) -> Value {
        json!({
            "task_id": task, "framework_id": "f1", "state": "TASK_RUNNING",
            "statistics": {
                "timestamp": ts, "cpus_limit": 0.5, "cpus_oncpu_time_secs": cpu, "cpus_used": 0.1,
                "cpus_nr_periods": (ts * 10.0) as u64, "cpus_nr_throttled": (ts * 5.0) as u64,
                "net_rx_bytes": 0, "net_tx_bytes": tx, "blkio_read_bytes": 4096, "blkio_write_bytes": 0,
                "mem_rss_bytes": 1 << 20, "mem_limit_bytes": 64 << 20, "runq_latency_histogram": hist,
                "source": "ebpf",
            }
        })
    }

    fn snap(entries: &[Value]) -> Snapshot {
        Snapshot {
            tasks: entries.iter().filter_map(|e| TaskSample::parse("a1", e)).collect(),
            agents: [("a1".to_string(), "host1".to_string())].into(),
            frameworks: [("f1".to_string(), "web".to_string())].into(),
            unreachable: vec![],
        }
    }

    #[test]
    fn rates_come_from_two_samples() {
        let before = snap(&[entry("t", 10.0, 1.0, 1000, &[0, 100, 0, 0])]);
        let now = snap(&[entry("t", 12.0, 2.0, 5000, &[0, 100, 0, 50])]);
        let r = &rows(&now, Some(&before))[0];
        assert_eq!((r.framework.as_str(), r.agent.as_str()), ("web", "host1"));
        assert_eq!(r.cpus, Some(0.5));
        assert_eq!(r.net_tx_per_sec, Some(2000.0));
        assert_eq!(r.net_rx_per_sec, Some(0.0));
        assert_eq!(r.io_per_sec, Some(0.0));
        assert_eq!(r.throttled, Some(0.5));
        // Only the window's 50 wakeups, all in bucket 3 (up to 8 µs).
        assert_eq!(r.runq_p99_us, Some(8));
    }

    #[test]
    fn a_first_sample_uses_the_agents_figures() {
        let now = snap(&[entry("t", 12.0, 2.0, 5000, &[0, 100, 0, 0])]);
        let r = &rows(&now, None)[0];
        assert_eq!(r.cpus, Some(0.1));
        assert_eq!(r.net_tx_per_sec, None);
        assert_eq!(r.runq_p99_us, Some(2));
        // The same sample twice: no window, so no rates.
        assert_eq!(rows(&now, Some(&now))[0].net_tx_per_sec, None);
    }

    #[test]
    fn completed_and_malformed_entries_are_skipped() {
        let mut done = entry("t", 1.0, 0.0, 0, &[]);
        done["completed"] = json!(true);
        assert!(TaskSample::parse("a1", &done).is_none());
        assert!(TaskSample::parse("a1", &json!({"task_id": "x"})).is_none());
        assert!(TaskSample::parse("a1", &json!("garbage")).is_none());
        let bare = json!({"task_id": "x", "statistics": {"timestamp": 1.0}});
        let t = TaskSample::parse("a1", &bare).expect("a sample without numbers");
        assert_eq!(t.counters.cpu_secs, None);
    }

    #[test]
    fn sorting_puts_the_largest_first_and_unknowns_last() {
        let row = |id: &str, cpus: Option<f64>, p99: Option<u64>| Row {
            task_id: id.into(),
            framework: String::new(),
            agent: String::new(),
            state: String::new(),
            cpus,
            cpus_limit: None,
            throttled: None,
            runq_p99_us: p99,
            mem_rss_bytes: None,
            mem_limit_bytes: None,
            net_rx_per_sec: None,
            net_tx_per_sec: None,
            io_per_sec: None,
            source: String::new(),
        };
        let mut rows = vec![
            row("a", Some(0.1), Some(4096)),
            row("b", None, Some(2)),
            row("c", Some(0.9), None),
            row("d", Some(0.1), None),
        ];
        sort(&mut rows, SortKey::Cpu);
        assert_eq!(rows.iter().map(|r| r.task_id.as_str()).collect::<Vec<_>>(), ["c", "a", "d", "b"]);
        sort(&mut rows, SortKey::Runq);
        assert_eq!(rows.iter().map(|r| r.task_id.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
    }

    #[test]
    fn rendering_fits_the_screen() {
        let now = snap(&[
            entry("t1", 12.0, 2.0, 5000, &[]),
            entry("t2", 12.0, 2.0, 5000, &[]),
            entry("t3", 12.0, 2.0, 5000, &[]),
        ]);
        let rows = rows(&now, None);
        let out = render(&now, &rows, SortKey::Cpu, Duration::from_secs(2), 40, 4);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|l| l.chars().count() <= 40), "{out}");
        assert!(lines[1].starts_with("TASK"), "{out}");
        assert_eq!(lines[3], "… 2 more");
        assert_eq!(micros(512), "512µs");
        assert_eq!(micros(4096), "4.1ms");
        assert_eq!(bytes(1536.0), "1.5K");
    }
}
