//! An OFFERS event with 100 offers, in the three encodings Agora speaks:
//! JSON (Mesos's v1 API), FlatBuffers (the same API, `application/x-flatbuffers`)
//! and rkyv (the master↔agent wire, here archiving the event's offers).
//!
//! Cases, for each encoding:
//! - `encode/<enc>`: the typed event to bytes;
//! - `decode/<enc>`: bytes to the typed event (checked, every field owned);
//! - `read/<enc>`: check the bytes and read every offer's id, agent id and
//!   hostname in place, without building the typed event (JSON cannot: it
//!   parses into a generic value instead).

use agora_proto::fb::{self, schema};
use agora_proto::mesos::{AgentId, AllocationInfo, FrameworkId, Offer, OfferId};
use agora_proto::resources::{parse_attributes, Resources};
use agora_proto::scheduler::Event;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use planus::ReadAsRoot;
use rkyv::rancor;

fn offers_event(n: usize) -> Event {
    let resources = Resources::parse("cpus:32;mem:131072;disk:100000;ports:[31000-32000]").unwrap();
    let attributes = parse_attributes("zone:z1;rack:r12;level:3").unwrap();
    Event::offers(
        (0..n)
            .map(|i| Offer {
                id: OfferId::new(format!("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9-O{i}")),
                framework_id: FrameworkId::new("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9-0001"),
                agent_id: AgentId::new(format!("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9-S{i}")),
                hostname: format!("node-{i}.cluster.internal"),
                resources: resources.clone().into_allocated_to("eng"),
                attributes: attributes.clone(),
                executor_ids: vec![],
                allocation_info: Some(AllocationInfo { role: Some("eng".into()) }),
            })
            .collect(),
    )
}

fn bench(c: &mut Criterion) {
    let event = offers_event(100);
    let offers = event.offers.as_ref().unwrap().offers.clone();
    let json = serde_json::to_vec(&event).unwrap();
    let flat = fb::encode_event(&event);
    let archived = rkyv::to_bytes::<rancor::Error>(&offers).unwrap();
    println!("OFFERS with 100 offers: JSON {} B, FlatBuffers {} B, rkyv {} B", json.len(), flat.len(), archived.len());

    let mut g = c.benchmark_group("offers100");
    g.throughput(Throughput::Elements(100));
    g.bench_function("encode/json", |b| b.iter(|| serde_json::to_vec(black_box(&event)).unwrap()));
    g.bench_function("encode/flatbuffers", |b| b.iter(|| fb::encode_event(black_box(&event))));
    g.bench_function("encode/rkyv", |b| b.iter(|| rkyv::to_bytes::<rancor::Error>(black_box(&offers)).unwrap()));

    g.bench_function("decode/json", |b| b.iter(|| serde_json::from_slice::<Event>(black_box(&json)).unwrap()));
    g.bench_function("decode/flatbuffers", |b| b.iter(|| fb::decode_event(black_box(&flat)).unwrap()));
    g.bench_function("decode/rkyv", |b| {
        b.iter(|| rkyv::from_bytes::<Vec<Offer>, rancor::Error>(black_box(&archived)).unwrap())
    });

    g.bench_function("read/json", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(&json)).unwrap();
            let mut bytes = 0;
            for o in v["offers"]["offers"].as_array().unwrap() {
                bytes += o["id"]["value"].as_str().unwrap().len()
                    + o["agent_id"]["value"].as_str().unwrap().len()
                    + o["hostname"].as_str().unwrap().len();
            }
            bytes
        })
    });
    g.bench_function("read/flatbuffers", |b| {
        b.iter(|| {
            let e = schema::EventRef::read_as_root(black_box(&flat)).unwrap();
            let mut bytes = 0;
            for o in e.offers().unwrap().unwrap().offers().unwrap().unwrap() {
                let o = o.unwrap();
                bytes += o.id().unwrap().len() + o.agent_id().unwrap().len() + o.hostname().unwrap().len();
            }
            bytes
        })
    });
    g.bench_function("read/rkyv", |b| {
        b.iter(|| {
            let a = rkyv::access::<rkyv::Archived<Vec<Offer>>, rancor::Error>(black_box(&archived)).unwrap();
            let mut bytes = 0;
            for o in a.iter() {
                bytes += o.id.value.len() + o.agent_id.value.len() + o.hostname.len();
            }
            bytes
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
