//! Scenario `fanout`: how long freed resources take to reach a framework
//! as an offer, with F frameworks on the Rust SDK and N simulated agents,
//! once with every framework on JSON and once on FlatBuffers, each against a
//! master of its own.
//!
//! Every agent's resources are held as an offer by some framework. The
//! bench launches a task on an offer that uses the whole agent. The
//! simulated task ends at once: the agent's first update for it (RUNNING)
//! says that its latest state is FINISHED, and the master frees the agent on
//! it, allocates it again at once, and the new offer goes to whichever
//! framework DRF picks. An agent's latency is from the moment it sends that
//! update to the moment a framework's driver hands over the OFFERS event
//! carrying the agent: the update's way in, the allocation, the encoding,
//! the stream and the decoding. (A DECLINE would not do: as in Mesos,
//! declined resources wait for the next periodic round.)
//!
//! - `single`: one agent at a time, at a steady rate, spread over the
//!   frameworks: the path of one offer.
//! - `burst`: every offer held is used at once, and the whole cluster is
//!   offered again to all the frameworks as the tasks finish: the fan-out of
//!   a full round.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_proto::mesos::{CommandInfo, FrameworkInfo, Offer, TaskId, TaskInfo, TaskState};
use agora_proto::scheduler::Encoding;
use agora_sdk::{Driver, DriverEvent};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::report::{self, Plot};
use crate::sim::{self, AgentCounters, MasterProc, SimOpts};
use crate::Args;

/// Offers that reached a framework.
struct Arrival {
    framework: usize,
    at: Instant,
    offers: Vec<Offer>,
}

pub async fn run(args: &Args) -> Result<()> {
    let (agents, frameworks) = if args.quick {
        (args.agents.unwrap_or(500), args.frameworks.unwrap_or(10))
    } else {
        (args.agents.unwrap_or(10_000), args.frameworks.unwrap_or(100))
    };
    let (rate, secs, cycles) = if args.quick { (200, 2, 3) } else { (args.rate, args.window_secs.min(20), 10) };
    let mut results = serde_json::Map::new();
    let mut plots = Vec::new();
    for encoding in [Encoding::Json, Encoding::FlatBuffers] {
        let name = match encoding {
            Encoding::Json => "json",
            Encoding::FlatBuffers => "flatbuffers",
        };
        eprintln!("fanout: {agents} agents, {frameworks} frameworks, {name}");
        let (single, burst, figures) = one(args, encoding, agents, frameworks, rate, secs, cycles).await?;
        plots.push((format!("{name}: single"), report::distribution(&single)));
        plots.push((format!("{name}: burst"), report::distribution(&burst)));
        results.insert(name.into(), figures);
    }
    println!("scenario fanout: {agents} simulated agents, {frameworks} frameworks; task ended -> offer at a framework");
    for name in ["json", "flatbuffers"] {
        let r = &results[name];
        for phase in ["single", "burst"] {
            let p = &r[phase];
            println!(
                "  {:<24} p50 {:>8} us   p99 {:>8} us   p99.9 {:>8} us   max {:>8} us   ({} offers)",
                format!("{name} {phase}"),
                p["p50_us"],
                p["p99_us"],
                p["p999_us"],
                p["max_us"],
                p["count"]
            );
        }
        let rounds: Vec<String> = r["burst_round_ms"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{:.1}", v.as_f64().unwrap_or(0.0)))
            .collect();
        println!("  {:<24} every agent offered again in {} ms", format!("{name} burst rounds"), rounds.join(", "));
    }
    let ratio = |phase: &str| {
        let j = results["json"][phase]["p99_us"].as_f64().unwrap_or(0.0);
        let f = results["flatbuffers"][phase]["p99_us"].as_f64().unwrap_or(0.0);
        if f > 0.0 {
            j / f
        } else {
            0.0
        }
    };
    let (single_ratio, burst_ratio) = (ratio("single"), ratio("burst"));
    println!("  p99 JSON / FlatBuffers: single {single_ratio:.2}x, burst {burst_ratio:.2}x");
    report::plot(
        &args.out.join("fanout.svg"),
        &Plot {
            title: &format!("fanout: task ended to offer, {agents} agents x {frameworks} frameworks"),
            x_label: report::NINES,
            y_label: "latency (ms)",
            log_y: true,
            series: plots,
        },
    )?;
    let errors: u64 = ["json", "flatbuffers"].iter().map(|n| results[*n]["errors"].as_u64().unwrap_or(1)).sum();
    let mut figures = json!({
        "agents": agents,
        "frameworks": frameworks,
        "single_tasks_per_sec": rate,
        "single_secs": secs,
        "burst_rounds": cycles,
        "p99_json_over_flatbuffers": { "single": single_ratio, "burst": burst_ratio },
        "errors": errors,
    });
    figures.as_object_mut().expect("an object").extend(results);
    report::write(&args.out, "fanout", figures, args.baseline.as_deref())?;
    Ok(())
}

/// Who holds which agent's offer.
#[derive(Default)]
struct Held {
    by_agent: HashMap<String, (usize, Offer)>,
    agents: Vec<String>,
}

impl Held {
    fn insert(&mut self, framework: usize, offer: Offer) {
        let agent = offer.agent_id.as_str().to_string();
        if self.by_agent.insert(agent.clone(), (framework, offer)).is_none() {
            self.agents.push(agent);
        }
    }

    fn take_at(&mut self, i: usize) -> (String, usize, Offer) {
        let agent = self.agents.swap_remove(i);
        let (f, o) = self.by_agent.remove(&agent).expect("held agents are indexed");
        (agent, f, o)
    }
}

/// Offers that arrived: each is held, and an agent waited for is timed from
/// its task's end.
fn arrived(
    a: Arrival,
    held: &mut Held,
    waiting: &mut HashSet<String>,
    counters: &AgentCounters,
    h: &mut Histogram<u64>,
) -> Result<u64> {
    let n = a.offers.len() as u64;
    let mut freed = counters.freed_at.lock().expect("not poisoned");
    for offer in a.offers {
        let agent = offer.agent_id.as_str();
        if waiting.remove(agent) {
            let t =
                freed.remove(agent).with_context(|| format!("agent {agent} offered again before its task ended"))?;
            h.record(a.at.saturating_duration_since(t).as_micros().max(1) as u64)?;
        }
        held.insert(a.framework, offer);
    }
    Ok(n)
}

async fn one(
    args: &Args,
    encoding: Encoding,
    n_agents: usize,
    n_frameworks: usize,
    rate: u64,
    secs: u64,
    cycles: usize,
) -> Result<(Histogram<u64>, Histogram<u64>, Value)> {
    let master = MasterProc::start(args.shards, &["--max-connections-per-shard", "1000000"])?;
    let counters = Arc::new(AgentCounters::default());
    let agents =
        sim::spawn_agents(&master.addr, 0, n_agents, &counters, SimOpts { read_buffer: 4096, note_freed: true });
    sim::wait_registered(&counters, n_agents as u64, Duration::from_secs(600)).await?;

    let (tx, mut rx) = mpsc::channel::<Arrival>(65_536);
    let errors = Arc::new(AtomicU64::new(0));
    let mut drivers = Vec::new();
    for i in 0..n_frameworks {
        let info = FrameworkInfo { user: "bench".into(), name: format!("fanout-{i}"), ..Default::default() };
        let (driver, mut events) = Driver::start_with(&master.addr, info, encoding).await?;
        drivers.push(driver.clone());
        let (tx, errors) = (tx.clone(), errors.clone());
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let at = Instant::now();
                let DriverEvent::Event(ev) = ev else { continue };
                if let Some(u) = ev.update {
                    if !matches!(u.status.state, TaskState::Running | TaskState::Finished) {
                        eprintln!("task {} is {}: {:?}", u.status.task_id, u.status.state, u.status.message);
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    // Acknowledged from a task of its own, so that the stream
                    // is read meanwhile; the agent then sends FINISHED.
                    let (d, errors) = (driver.clone(), errors.clone());
                    tokio::spawn(async move {
                        if let Err(e) = d.acknowledge(&u.status).await {
                            eprintln!("acknowledge: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                let Some(o) = ev.offers else { continue };
                if tx.send(Arrival { framework: i, at, offers: o.offers }).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut next_task = 0u64;
    // A task that uses the whole offer, so that nothing of the agent is left
    // to come back before it finishes.
    let mut use_whole = |framework: usize, offer: Offer| {
        let (d, errors) = (drivers[framework].clone(), errors.clone());
        next_task += 1;
        let task = TaskInfo {
            name: format!("f{next_task}"),
            task_id: TaskId::new(format!("f{next_task}")),
            agent_id: offer.agent_id.clone(),
            resources: offer.resources.clone(),
            command: Some(CommandInfo::shell("true")),
            ..Default::default()
        };
        tokio::spawn(async move {
            if let Err(e) = d.launch(&offer, vec![task], 0.0).await {
                eprintln!("launch: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    };

    // Every agent offered once.
    let mut held = Held::default();
    let mut offers_received = 0u64;
    let mut waiting: HashSet<String> = HashSet::new();
    let started = Instant::now();
    while held.agents.len() < n_agents {
        let a = recv(&mut rx, &held, n_agents).await?;
        offers_received += a.offers.len() as u64;
        for offer in a.offers {
            held.insert(a.framework, offer);
        }
    }
    let initial = started.elapsed();

    // Single: one agent at a time.
    let mut single = report::histogram();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n_agents as u64);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let t0 = Instant::now();
    let mut next = t0;
    let mut sent = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) || !waiting.is_empty() {
        if t0.elapsed() > Duration::from_secs(secs + 30) {
            bail!("{} agents whose task was launched were not offered again within 30 s", waiting.len());
        }
        if t0.elapsed() < Duration::from_secs(secs) && Instant::now() >= next && !held.agents.is_empty() {
            let (agent, f, offer) = held.take_at(rng.below(held.agents.len()));
            waiting.insert(agent);
            use_whole(f, offer);
            sent += 1;
            next += interval;
            continue;
        }
        let wait = next.saturating_duration_since(Instant::now()).max(Duration::from_micros(100));
        let Ok(a) = tokio::time::timeout(wait, rx.recv()).await else { continue };
        let a = a.context("every framework's driver stopped")?;
        offers_received += arrived(a, &mut held, &mut waiting, &counters, &mut single)?;
    }
    eprintln!("  single: {sent} tasks, p99 {} us", single.value_at_quantile(0.99));

    // Burst: every offer held used at once, `cycles` times.
    let mut burst = report::histogram();
    let mut rounds_ms = Vec::new();
    for c in 0..cycles {
        let start = Instant::now();
        while !held.agents.is_empty() {
            let (agent, f, offer) = held.take_at(held.agents.len() - 1);
            waiting.insert(agent);
            use_whole(f, offer);
        }
        let mut last = start;
        while !waiting.is_empty() {
            let a = recv(&mut rx, &held, n_agents).await?;
            last = last.max(a.at);
            offers_received += arrived(a, &mut held, &mut waiting, &counters, &mut burst)?;
        }
        let ms = (last - start).as_secs_f64() * 1e3;
        eprintln!(
            "  burst {}/{cycles}: every agent's task launched, finished and the agent offered again in {ms:.1} ms",
            c + 1
        );
        rounds_ms.push(ms);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let offers_sent = master.metric("master/offers_sent").await?;
    for d in &drivers {
        let _ = d.teardown().await;
        d.stop();
    }
    drop(agents);
    let figures = json!({
        "initial_offers_secs": initial.as_secs_f64(),
        "single": report::percentiles(&single),
        "single_tasks": sent,
        "burst": report::percentiles(&burst),
        "burst_round_ms": rounds_ms,
        "offers_received": offers_received,
        "master_offers_sent": offers_sent,
        "errors": errors.load(Ordering::Relaxed) + AgentCounters::get(&counters.errors),
    });
    Ok((single, burst, figures))
}

async fn recv(rx: &mut mpsc::Receiver<Arrival>, held: &Held, n: usize) -> Result<Arrival> {
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => bail!("every framework's driver stopped"),
        Err(_) => bail!("no offer for 30 s; {} of {n} agents held", held.agents.len()),
    }
}

/// xorshift64*: which held offer to use next, the same every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}
