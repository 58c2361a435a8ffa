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

use agora_master::allocator::{Allocator, Config};
use agora_proto::mesos::{AgentId, FrameworkId};
use agora_proto::resources::Resources;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

const AGENTS: usize = 1000;
const FRAMEWORKS: usize = 100;

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
    cluster_with(filtered, false)
}

fn cluster_with(filtered: bool, tree: bool) -> Allocator {
    let mut a = Allocator::new(Config::default());
    let total = Resources::parse("cpus:16;mem:65536;disk:1000000;ports:[31000-32000]").unwrap();
    for f in 0..FRAMEWORKS {
        a.add_framework(FrameworkId::new(format!("f{f}")), vec![role(f, tree)], &[]);
    }
    if tree {
        for r in 0..10 {
            a.set_weight(&format!("r{r}"), (r + 1) as f64);
        }
    }
    for i in 0..AGENTS {
        a.add_agent(AgentId::new(format!("a{i}")), total.clone(), &[]);
    }
    // Unequal starting shares, so the DRF order matters.
    for f in 0..FRAMEWORKS {
        let used = Resources::parse(&format!("cpus:{};mem:{}", 1 + f % 7, 1024 * (1 + f % 5)))
            .unwrap()
            .allocate_to(&role(f, tree));
        a.add_used(&FrameworkId::new(format!("f{f}")), &AgentId::new(format!("a{}", f % AGENTS)), &used);
    }
    if filtered {
        for f in 0..FRAMEWORKS {
            for i in (0..AGENTS).filter(|i| (i + f) % 2 == 0) {
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
    a
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("round");
    g.sample_size(20);
    g.bench_function("1000x100", |b| {
        b.iter_batched(|| cluster(false), |mut a| a.allocate(1, None), BatchSize::LargeInput)
    });
    g.bench_function("1000x100_roles", |b| {
        b.iter_batched(|| cluster_with(false, true), |mut a| a.allocate(1, None), BatchSize::LargeInput)
    });
    g.bench_function("1000x100_filtered", |b| {
        b.iter_batched(|| cluster(true), |mut a| a.allocate(1, None), BatchSize::LargeInput)
    });
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
            |mut a| a.allocate(2, Some(&freed)),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
