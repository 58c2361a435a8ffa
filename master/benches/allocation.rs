//! One allocation round of the DRF allocator.
//!
//! Cases:
//! - `round/1000x100`: 1,000 idle agents (16 cpus, 64 GiB, ports) offered to
//!   100 frameworks with different existing shares, from scratch: every
//!   agent is allocated once.
//! - `round/1000x100_filtered`: the same, with every framework having
//!   declined half of the agents (their filters must be checked and skipped).
//! - `round/1000x100_churn`: steady state: 100 agents had resources freed
//!   and only they are reconsidered (the event-triggered path).
//! - `round/1000x100_roles`: as `1000x100`, with the frameworks spread over
//!   a role tree (10 top-level roles, weighted 1 to 10, each with its own
//!   frameworks and two child roles): hierarchical DRF's cost.
//! - `round/10000x1000`: Mesos's own benchmark shape, 10,000 agents and
//!   1,000 frameworks; `_quota_reservations` adds a quota limit on each of
//!   the 10 top-level roles of the tree, a guarantee on five of them (so
//!   that a round has both stages, and holds back headroom), and a quarter
//!   of every agent reserved to one of them.
//! - `round/10000x1000_2_workers` and
//!   `round/10000x1000_quota_reservations_2_workers`: the same two, with
//!   rounds split between two workers (threads), each offering half of the
//!   agents.
//! - `curve/<agents>x<frameworks>`: the cost as both grow, 10 agents per
//!   framework.
//!
//! The threads split rounds run on are started in each case's setup, as a
//! running master keeps them from its first split round on.
//!
//! With `ALLOCATION_MIN_OF=N` set, the bench instead times `N` fresh rounds
//! of each 10,000 × 1,000 case and prints the least and every one: on a
//! shared machine the least is the steadiest figure to compare two builds
//! by (the first round of a process also pays for fresh pages). For the
//! plain cases it also prints the fairness bound's figure of the first
//! round (see the allocator's notes on parallel rounds).

// The master's own allocator (see master/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use agora_master::allocator::{Allocation, Allocator, Config, Quantities, Scalars};
use agora_proto::mesos::{AgentId, FrameworkId};
use agora_proto::resources::Resources;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

/// The cluster of one case.
#[derive(Clone, Copy)]
struct Shape {
    agents: usize,
    frameworks: usize,
    filtered: bool,
    tree: bool,
    /// Quota limits on the top-level roles, and a quarter of each agent
    /// reserved to one of them (needs `tree`).
    quota_reservations: bool,
    /// Allocation workers (see `Config::workers`).
    workers: usize,
}

const SMALL: Shape =
    Shape { agents: 1000, frameworks: 100, filtered: false, tree: false, quota_reservations: false, workers: 1 };

/// The role of framework `f`: `*`, or one of 30 in a tree.
fn role(f: usize, tree: bool) -> String {
    if !tree {
        return "*".into();
    }
    match f % 3 {
        0 => format!("r{}", f % 10),
        1 => format!("r{}/a", f % 10),
        _ => format!("r{}/b", f % 10),
    }
}

fn cluster(filtered: bool) -> Allocator {
    cluster_of(Shape { filtered, ..SMALL })
}

fn cluster_of(shape: Shape) -> Allocator {
    let Shape { agents, frameworks, filtered, tree, quota_reservations, workers } = shape;
    let mut a = Allocator::new(Config { workers, ..Config::default() });
    let total = Resources::parse("cpus:16;mem:65536;disk:1000000;ports:[31000-32000]").unwrap();
    for f in 0..frameworks {
        a.add_framework(FrameworkId::new(format!("f{f}")), vec![role(f, tree)], &[]);
    }
    if tree {
        for r in 0..10 {
            a.set_weight(&format!("r{r}"), (r + 1) as f64);
        }
    }
    if quota_reservations {
        // Each top-level role may hold up to a twentieth of the cluster's cpus.
        let cpus = (agents * 16 / 20) as i64 * 1000;
        for r in 0..10 {
            a.set_limits(&format!("r{r}"), Quantities([Some(cpus), None, None, None]));
        }
        // Half of them are guaranteed a twenty-fifth, more than their
        // reservations (a fortieth).
        let guaranteed = (agents * 16 / 25) as i64 * 1000;
        for r in 0..5 {
            a.set_guarantees(&format!("r{r}"), Quantities([Some(guaranteed), None, None, None]));
        }
    }
    for i in 0..agents {
        let mine = if quota_reservations {
            let r = format!("r{}", i % 10);
            Resources::parse(&format!("cpus:12;mem:49152;disk:1000000;ports:[31000-32000];cpus({r}):4;mem({r}):16384"))
                .unwrap()
        } else {
            total.clone()
        };
        a.add_agent(AgentId::new(format!("a{i}")), mine, &[]);
    }
    // Unequal starting shares, so the DRF order matters.
    for f in 0..frameworks {
        let used = Resources::parse(&format!("cpus:{};mem:{}", 1 + f % 7, 1024 * (1 + f % 5)))
            .unwrap()
            .allocate_to(&role(f, tree));
        a.add_used(&FrameworkId::new(format!("f{f}")), &AgentId::new(format!("a{}", f % agents)), &used);
    }
    if filtered {
        for f in 0..frameworks {
            for i in (0..agents).filter(|i| (i + f) % 2 == 0) {
                a.recover(
                    &FrameworkId::new(format!("f{f}")),
                    &AgentId::new(format!("a{i}")),
                    &total.allocate_to("*"),
                    3_600_000,
                    0,
                );
            }
        }
    }
    // A running master keeps the threads split rounds run on.
    a.start_workers();
    a
}

/// One full round. The allocator is handed back with the offers, so that
/// criterion drops both outside the timed part: tearing the whole cluster
/// down is not part of a round.
fn round(mut a: Allocator) -> (Allocator, Vec<Allocation>) {
    let out = a.allocate(1, None);
    (a, out)
}

fn bench(c: &mut Criterion) {
    let large = Shape { agents: 10_000, frameworks: 1000, ..SMALL };
    if let Some(n) = std::env::var("ALLOCATION_MIN_OF").ok().and_then(|n| n.parse().ok()) {
        min_of(n, large);
        std::process::exit(0);
    }
    let mut g = c.benchmark_group("round");
    g.sample_size(20);
    g.bench_function("1000x100", |b| b.iter_batched(|| cluster(false), round, BatchSize::LargeInput));
    g.bench_function("1000x100_roles", |b| {
        b.iter_batched(|| cluster_of(Shape { tree: true, ..SMALL }), round, BatchSize::LargeInput)
    });
    g.bench_function("1000x100_filtered", |b| b.iter_batched(|| cluster(true), round, BatchSize::LargeInput));
    let freed: Vec<AgentId> = (0..100).map(|i| AgentId::new(format!("a{}", i * 10))).collect();
    g.bench_function("1000x100_churn", |b| {
        b.iter_batched(
            || {
                let mut a = cluster(false);
                let offers = a.allocate(0, None);
                // Half of each of 100 agents' allocation is given back.
                for o in offers.iter().filter(|o| freed.contains(&o.agent_id)) {
                    let half = Resources::parse("cpus:8;mem:32768").unwrap().allocate_to(&o.role);
                    a.recover(&o.framework_id, &o.agent_id, &half, 0, 0);
                }
                a
            },
            |mut a| {
                let out = a.allocate(2, Some(&freed));
                (a, out)
            },
            BatchSize::LargeInput,
        )
    });
    g.sample_size(10);
    for (name, shape) in large_cases(large) {
        g.bench_function(name, |b| b.iter_batched(|| cluster_of(shape), round, BatchSize::LargeInput));
    }
    g.finish();

    let mut g = c.benchmark_group("curve");
    g.sample_size(10);
    for frameworks in [100, 200, 500, 1000] {
        let shape = Shape { agents: frameworks * 10, frameworks, ..SMALL };
        g.bench_function(format!("{}x{frameworks}", shape.agents), |b| {
            b.iter_batched(|| cluster_of(shape), round, BatchSize::LargeInput)
        });
    }
    g.finish();
}

/// The 10,000 × 1,000 cases: plain, and with quota and reservations; each
/// serial and split between two workers.
fn large_cases(large: Shape) -> [(&'static str, Shape); 4] {
    let quota = Shape { tree: true, quota_reservations: true, ..large };
    [
        ("10000x1000", large),
        ("10000x1000_quota_reservations", quota),
        ("10000x1000_2_workers", Shape { workers: 2, ..large }),
        ("10000x1000_quota_reservations_2_workers", Shape { workers: 2, ..quota }),
    ]
}

/// Times `n` fresh rounds of each 10,000 × 1,000 case, and prints how far
/// the plain cases' first round strays from fair.
fn min_of(n: usize, large: Shape) {
    for (name, shape) in large_cases(large) {
        let mut lead = None;
        let times: Vec<f64> = (0..n)
            .map(|i| {
                let a = cluster_of(shape);
                let before = shares(&a, shape);
                let t = std::time::Instant::now();
                let (a, out) = round(a);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if i == 0 && !shape.tree {
                    lead = Some(excess_lead(&before, &shares(&a, shape), &a, &out));
                }
                drop((a, out));
                ms
            })
            .collect();
        let least = times.iter().copied().fold(f64::MAX, f64::min);
        let all: Vec<String> = times.iter().map(|t| format!("{t:.1}")).collect();
        println!("round/{name}: least {least:.2} ms of {n} ({} ms)", all.join(", "));
        if let Some(lead) = lead {
            println!(
                "  most a framework granted something ends ahead of another, beyond its lead before: {lead:.2} grants"
            );
        }
    }
}

/// Every framework's dominant share.
fn shares(a: &Allocator, shape: Shape) -> Vec<f64> {
    (0..shape.frameworks).map(|f| a.share(&FrameworkId::new(format!("f{f}"))).unwrap_or(0.0)).collect()
}

/// The fairness bound's figure (see the allocator's notes): the most that a
/// framework granted something in the round ends ahead of any other,
/// beyond the lead it had before (if any), in units of the largest grant's
/// share. At most 1 for a serial round, `k` for `k` workers.
fn excess_lead(before: &[f64], after: &[f64], a: &Allocator, out: &[Allocation]) -> f64 {
    let total = a.total();
    let g = out.iter().map(|x| Scalars::of(&x.resources).dominant_share(&total)).fold(0.0, f64::max);
    let mut worst = 0f64;
    for f in (0..after.len()).filter(|&f| after[f] > before[f]) {
        for h in 0..after.len() {
            worst = worst.max(after[f] - after[h] - (before[f] - before[h]).max(0.0));
        }
    }
    worst / g
}

criterion_group!(benches, bench);
criterion_main!(benches);
