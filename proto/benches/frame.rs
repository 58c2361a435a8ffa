//! Master↔agent frames: encoding, validation and decoding.
//!
//! Cases:
//! - `encode/run_task`: a RunTask (a command task with cpus, mem, ports,
//!   environment and labels) archived into a length-prefixed frame.
//! - `validate/run_task`: bytecheck validation of that frame's payload,
//!   giving access to the archived message in place.
//! - `decode/run_task`: validation plus deserialization into owned types.
//! - `encode/ping`, `decode/status_update`: the small, frequent messages.
//! - `read_in_place/status_update`: what the master does with one:
//!   validation, the ids read in place, and only the status copied out.

use agora_proto::mesos::*;
use agora_proto::resources::Resources;
use agora_proto::wire::{self, AgentToMaster, FrameDecoder, MasterToAgent, StatusUpdate};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

fn run_task() -> MasterToAgent {
    let task = TaskInfo {
        name: "web-server-1234".into(),
        task_id: TaskId::new("web-server-1234.6f1c2c0e-3a1b-4d8e-9a77-1b2c3d4e5f60"),
        agent_id: AgentId::new("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9-S42"),
        resources: Resources::parse("cpus:0.5;mem:256;disk:1024;ports:[31000-31001]").unwrap(),
        command: Some(CommandInfo {
            value: Some("exec ./server --port $PORT0 --threads 4".into()),
            environment: Some(Environment {
                variables: (0..8)
                    .map(|i| EnvVariable { name: format!("VAR_{i}"), value: format!("value-{i}") })
                    .collect(),
            }),
            ..Default::default()
        }),
        labels: Some(Labels::default().with("team", "storefront").with("tier", "frontend")),
        ..Default::default()
    };
    let framework = FrameworkInfo {
        user: "svc".into(),
        name: "marathon-like".into(),
        id: Some(FrameworkId::new("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9-0001")),
        failover_timeout: Some(604800.0),
        ..Default::default()
    };
    MasterToAgent::RunTask { framework: Box::new(framework), task: Box::new(task) }
}

fn status_update() -> AgentToMaster {
    let mut s = TaskStatus::new(TaskId::new("web-server-1234.6f1c2c0e"), TaskState::Running);
    s.uuid = Some(vec![7; 16]);
    s.source = Some(Source::Executor);
    s.message = Some("Command started".into());
    s.timestamp = Some(1.7e9);
    AgentToMaster::StatusUpdate(Box::new(StatusUpdate {
        framework_id: FrameworkId::new("0a1b2c3d-0001"),
        status: s,
        latest_state: TaskState::Running,
    }))
}

fn payload(frame: &[u8]) -> rkyv::util::AlignedVec {
    let mut d = FrameDecoder::new(wire::DEFAULT_MAX_FRAME_BYTES);
    d.push(frame);
    d.next_frame().unwrap().unwrap()
}

fn bench(c: &mut Criterion) {
    let msg = run_task();
    let frame = wire::encode(&msg);
    let p = payload(&frame);
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("encode/run_task", |b| b.iter(|| wire::encode(black_box(&msg))));
    g.bench_function("validate/run_task", |b| {
        b.iter(|| wire::access::<MasterToAgent>(black_box(&p)).unwrap().is_some_ping())
    });
    g.bench_function("decode/run_task", |b| b.iter(|| wire::decode::<MasterToAgent>(black_box(&p)).unwrap()));
    g.finish();
    let ping = MasterToAgent::Ping { seq: 42 };
    c.bench_function("frame/encode/ping", |b| b.iter(|| wire::encode(black_box(&ping))));
    let su = wire::encode(&status_update());
    let sp = payload(&su);
    c.bench_function("frame/decode/status_update", |b| {
        b.iter(|| wire::decode::<AgentToMaster>(black_box(&sp)).unwrap())
    });
    // What the master does with one: validate, look up by the ids read in
    // place, and copy out only the status it forwards.
    c.bench_function("frame/read_in_place/status_update", |b| {
        b.iter(|| {
            let wire::ArchivedAgentToMaster::StatusUpdate(u) = wire::access::<AgentToMaster>(black_box(&sp)).unwrap()
            else {
                unreachable!("a status update")
            };
            let status: TaskStatus = wire::owned(&u.status).unwrap();
            (u.framework_id.value.len(), status)
        })
    });
    println!("run_task frame: {} bytes; status update frame: {} bytes", frame.len(), su.len());
}

trait IsPing {
    fn is_some_ping(&self) -> bool;
}

impl IsPing for wire::ArchivedMasterToAgent {
    fn is_some_ping(&self) -> bool {
        matches!(self, wire::ArchivedMasterToAgent::Ping { .. })
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
