//! `agora-bench`: load against a real master binary over real TCP, and the
//! cost of the agent's eBPF programs. One command per scenario:
//!
//! - `steady`: N simulated agents connected and pinging; the master's CPU
//!   and memory per agent (`steady.rs`).
//! - `launch`: M tasks placed as fast as offers allow (`launch.rs`).
//! - `fanout`: from a task's end to the offer at a framework, with F
//!   frameworks in JSON and in FlatBuffers (`fanout.rs`).
//! - `real`: N real processes through one real agent, and the same N jobs
//!   through Slurm in the same run (`real.rs`, `slurm.rs`).
//! - `ebpf`: what the agent's eBPF programs cost (`ebpf.rs`, root).
//!
//! Simulated agents speak the real rkyv protocol (`sim.rs`); simulated
//! frameworks are the Rust SDK. Every scenario writes
//! `<out>/<scenario>.json` with the machine and the git revision, and a plot
//! beside it (`report.rs`).

mod ebpf;
mod fanout;
mod launch;
mod real;
mod report;
mod sim;
mod slurm;
mod steady;

use std::path::PathBuf;

use agora_proto::scheduler::Encoding;
use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "agora-bench", about = "Load generator for Agora")]
pub struct Args {
    /// Scenario to run: steady, launch, fanout, real or ebpf.
    scenario: String,
    /// `launch`: simulated agents (default 100); `fanout`: 10,000.
    #[arg(long)]
    agents: Option<usize>,
    /// `launch`: tasks placed (default 20,000); `real`: processes run on
    /// each side (default 1,000).
    #[arg(long)]
    tasks: Option<usize>,
    /// `fanout`: frameworks (default 100).
    #[arg(long)]
    frameworks: Option<usize>,
    /// `real`: tasks (and Slurm jobs) running at once at most (default: all).
    #[arg(long)]
    slots: Option<usize>,
    /// `steady`: the numbers of agents, each run against its own master
    /// (default 1000,10000,50000,100000).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// `steady`: seconds measured at each size; `fanout`: seconds of tasks
    /// one agent at a time (at most 20).
    #[arg(long, default_value_t = 30)]
    window_secs: u64,
    /// `fanout`: tasks per second, one agent at a time.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// `launch`, `real`: the framework's encoding, `flatbuffers` or `json`.
    #[arg(long, default_value = "flatbuffers")]
    encoding: String,
    /// Shards of the started master.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// A CI-sized run.
    #[arg(long)]
    quick: bool,
    /// An earlier report of the same scenario: print each figure's ratio to it.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// `ebpf`: runs of each configuration in the overhead comparison.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// `ebpf`: ping-pong round trips per run.
    #[arg(long, default_value_t = 100_000)]
    round_trips: u64,
    /// `ebpf`: tasks registered, read and attached to.
    #[arg(long, default_value_t = 1_000)]
    ebpf_tasks: usize,
    /// Where results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

impl Args {
    fn encoding(&self) -> Result<Encoding> {
        match self.encoding.as_str() {
            "json" => Ok(Encoding::Json),
            "flatbuffers" => Ok(Encoding::FlatBuffers),
            other => bail!("unknown encoding {other:?} (json or flatbuffers)"),
        }
    }
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(ebpf::PINGPONG) {
        let n = argv.get(2).and_then(|n| n.parse().ok()).context("round trips")?;
        return ebpf::pingpong_main(n);
    }
    let mut args = Args::parse();
    if args.quick {
        args.rounds = args.rounds.min(6);
        args.round_trips = args.round_trips.min(50_000);
    }
    if args.scenario == "ebpf" {
        return ebpf::run(&ebpf::Opts {
            rounds: args.rounds,
            round_trips: args.round_trips,
            tasks: args.ebpf_tasks,
            out: args.out.clone(),
            baseline: args.baseline.clone(),
        });
    }
    sim::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    match args.scenario.as_str() {
        "steady" => rt.block_on(steady::run(&args)),
        "launch" => rt.block_on(launch::run(&args)),
        "fanout" => rt.block_on(fanout::run(&args)),
        "real" => rt.block_on(real::run(&args)),
        other => bail!("unknown scenario {other:?} (known: steady, launch, fanout, real, ebpf)"),
    }
}
