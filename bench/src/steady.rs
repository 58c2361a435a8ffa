//! Scenario `steady`: N simulated agents connected and answering pings, for
//! each N asked for, each against a master of its own. Reports the master's
//! CPU use over a window of pings and its resident memory per agent (the
//! growth over the idle master, divided by the agents).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};

use crate::report::{self, Plot};
use crate::sim::{self, AgentCounters, MasterProc, SimOpts};
use crate::Args;

pub async fn run(args: &Args) -> Result<()> {
    let sizes = args.sizes.clone().unwrap_or_else(|| {
        if args.quick {
            vec![500, 2_000]
        } else {
            vec![1_000, 10_000, 50_000, 100_000]
        }
    });
    // Quick runs ping every second so that the short window sees pings;
    // full runs use the master's default interval.
    let (ping_flags, window): (&[&str], Duration) = if args.quick {
        (&["--agent-ping-timeout", "1secs"], Duration::from_secs(4))
    } else {
        (&[], Duration::from_secs(args.window_secs))
    };
    // Each agent is a socket here and one in the master, which inherits
    // this process's limit.
    let fds = sim::raise_fd_limit();
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for &n in &sizes {
        if n as u64 + 1_000 > fds {
            let why = format!(
                "{n} agents need {} open files in the master and here; the limit is {fds} (raising the hard limit needs \
                 CAP_SYS_RESOURCE)",
                n + 1_000
            );
            eprintln!("SKIPPED {why}");
            skipped.push(json!({ "agents": n, "reason": why }));
            continue;
        }
        rows.push(one(args, n, ping_flags, window).await?);
    }
    ensure!(!rows.is_empty(), "no size could run: {skipped:?}");
    println!("scenario steady: master with N simulated agents, {} s windows", window.as_secs());
    println!(
        "  {:>8} {:>12} {:>10} {:>12} {:>14} {:>10}",
        "agents", "register/s", "RSS MiB", "KiB/agent", "pongs/s", "CPU %"
    );
    for r in &rows {
        println!(
            "  {:>8} {:>12.0} {:>10.1} {:>12.2} {:>14.0} {:>10.2}",
            r["agents"],
            r["registrations_per_sec"].as_f64().unwrap_or(0.0),
            r["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            r["rss_per_agent_kib"].as_f64().unwrap_or(0.0),
            r["pongs_per_sec"].as_f64().unwrap_or(0.0),
            r["cpu_percent"].as_f64().unwrap_or(0.0),
        );
    }
    let series = |key: &str| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r["agents"].as_f64().unwrap_or(0.0), r[key].as_f64().unwrap_or(0.0))).collect()
    };
    report::plot(
        &args.out.join("steady.svg"),
        &Plot {
            title: "steady: the master with N agents pinging",
            x_label: "simulated agents",
            y_label: "KiB per agent; CPU %",
            log_y: false,
            series: vec![
                ("master RSS per agent (KiB)".into(), series("rss_per_agent_kib")),
                ("master CPU (% of one core)".into(), series("cpu_percent")),
            ],
        },
    )?;
    let errors: u64 = rows.iter().map(|r| r["errors"].as_u64().unwrap_or(1)).sum();
    report::write(
        &args.out,
        "steady",
        json!({
            "window_secs": window.as_secs_f64(),
            "ping_flags": ping_flags,
            "runs": rows,
            "skipped": skipped,
            "errors": errors,
        }),
        args.baseline.as_deref(),
    )?;
    Ok(())
}

async fn one(args: &Args, n: usize, ping_flags: &[&str], window: Duration) -> Result<Value> {
    let mut flags = vec!["--max-connections-per-shard", "1000000"];
    flags.extend_from_slice(ping_flags);
    let master = MasterProc::start(args.shards, &flags)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = master.rss_kib()?;
    let counters = Arc::new(AgentCounters::default());
    eprintln!("steady: {n} agents");
    let agents = sim::spawn_agents(&master.addr, 0, n, &counters, SimOpts { read_buffer: 1024, note_freed: false });
    let registered_in = sim::wait_registered(&counters, n as u64, Duration::from_secs(600)).await?;
    // Let the registrations' work settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, pongs0, t0) = (master.cpu_time()?, AgentCounters::get(&counters.pongs), Instant::now());
    let mut last = Instant::now();
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last.elapsed() > Duration::from_secs(5) {
            eprintln!("  {:.0}/{} s measured", t0.elapsed().as_secs_f64(), window.as_secs());
            last = Instant::now();
        }
    }
    let (cpu1, pongs1, wall) = (master.cpu_time()?, AgentCounters::get(&counters.pongs), t0.elapsed());
    let rss = master.rss_kib()?;
    let active = master.metric("master/slaves_active").await?;
    let errors = AgentCounters::get(&counters.errors);
    drop(agents);
    ensure!(active as usize == n, "the master counts {active} active agents of {n}");
    let cpu_percent = (cpu1 - cpu0).as_secs_f64() / wall.as_secs_f64() * 100.0;
    Ok(json!({
        "agents": n,
        "register_secs": registered_in.as_secs_f64(),
        "registrations_per_sec": n as f64 / registered_in.as_secs_f64(),
        "master_agents_active": active,
        "idle_rss_kib": idle_rss,
        "rss_kib": rss,
        "rss_per_agent_kib": rss.saturating_sub(idle_rss) as f64 / n as f64,
        "cpu_percent": cpu_percent,
        "pongs": pongs1 - pongs0,
        "pongs_per_sec": (pongs1 - pongs0) as f64 / wall.as_secs_f64(),
        "errors": errors,
    }))
}
