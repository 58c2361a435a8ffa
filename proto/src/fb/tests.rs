use super::*;
use crate::mesos::{CommandInfo, Labels, Offer, TaskInfo, TaskState, TaskStatus};

fn json_call(text: &str) -> Call {
    serde_json::from_str(text).expect("a JSON call")
}

/// A call goes through FlatBuffers and comes back as the same value the
/// JSON decoder makes.
fn round_trip_call(text: &str) {
    let call = json_call(text);
    let back = decode_call(&encode_call(&call)).expect("decodes");
    assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&call).unwrap(), "{text}");
}

#[test]
fn calls_round_trip_to_the_values_json_gives() {
    round_trip_call(
        r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"u","name":"n","roles":["a","b/c"],
        "capabilities":[{"type":"MULTI_ROLE"},{"type":"PARTITION_AWARE"}],"failover_timeout":60,
        "labels":{"labels":[{"key":"k","value":"v"}]}},"suppressed_roles":["b/c"],
        "offer_constraints":{"role_constraints":{"a":{"groups":[{"attribute_constraints":[
        {"selector":{"attribute_name":"zone"},"predicate":{"text_equals":{"value":"z1"}}},
        {"selector":{"pseudoattribute_type":"HOSTNAME"},"predicate":{"exists":{}}}]}]}}}}}"#,
    );
    round_trip_call(
        r#"{"type":"ACCEPT","framework_id":{"value":"f"},"accept":{"offer_ids":[{"value":"o1"},{"value":"o2"}],
        "operations":[{"type":"RESERVE","reserve":{"resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":1.5},
        "reservations":[{"type":"DYNAMIC","role":"eng","principal":"p","labels":{"labels":[{"key":"a","value":"b"}]}}]}]}},
        {"type":"CREATE","create":{"volumes":[{"name":"disk","type":"SCALAR","scalar":{"value":64},
        "reservations":[{"type":"DYNAMIC","role":"eng"}],"disk":{"persistence":{"id":"v1"},
        "volume":{"container_path":"data","mode":"RW"}}}]}},
        {"type":"LAUNCH","launch":{"task_infos":[{"name":"t","task_id":{"value":"t1"},"agent_id":{"value":"a1"},
        "resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":0.1}},{"name":"ports","type":"RANGES",
        "ranges":{"range":[{"begin":31000,"end":31009}]}}],"command":{"value":"echo hi","environment":
        {"variables":[{"name":"X","value":"1"}]}},"kill_policy":{"grace_period":{"nanoseconds":5000000000}},
        "data":"aGVsbG8="}]}}],"filters":{"refuse_seconds":3.5}}}"#,
    );
    round_trip_call(r#"{"type":"DECLINE","framework_id":{"value":"f"},"decline":{"offer_ids":[{"value":"o"}]}}"#);
    round_trip_call(
        r#"{"type":"ACKNOWLEDGE","framework_id":{"value":"f"},"acknowledge":{"agent_id":{"value":"a"},
        "task_id":{"value":"t"},"uuid":"AAECAwQFBgcICQoLDA0ODw=="}}"#,
    );
    round_trip_call(
        r#"{"type":"RECONCILE","framework_id":{"value":"f"},"reconcile":{"tasks":[{"task_id":{"value":"t"}},
        {"task_id":{"value":"u"},"agent_id":{"value":"a"}}]}}"#,
    );
    round_trip_call(r#"{"type":"REVIVE","framework_id":{"value":"f"},"revive":{"roles":["r"]}}"#);
    round_trip_call(r#"{"type":"SUPPRESS","framework_id":{"value":"f"}}"#);
    round_trip_call(r#"{"type":"KILL","framework_id":{"value":"f"},"kill":{"task_id":{"value":"t"}}}"#);
    round_trip_call(r#"{"type":"TEARDOWN","framework_id":{"value":"f"}}"#);
}

#[test]
fn events_round_trip() {
    let offer = Offer {
        id: OfferId::new("o"),
        framework_id: FrameworkId::new("f"),
        agent_id: AgentId::new("a"),
        hostname: "h".into(),
        resources: Resources::parse("cpus:4;mem:1024;ports:[31000-32000];disk(eng):10").unwrap(),
        attributes: crate::resources::parse_attributes("zone:z1;rack:3;level:[1-2]").unwrap(),
        executor_ids: vec![],
        allocation_info: Some(mesos::AllocationInfo { role: Some("eng".into()) }),
    };
    let status = TaskStatus {
        message: Some("done".into()),
        source: Some(mesos::Source::Agent),
        reason: Some(mesos::Reason::ReasonContainerLimitationMemory),
        uuid: Some(vec![7; 16]),
        timestamp: Some(1.5),
        labels: Some(Labels::default().with("x", "y")),
        ..TaskStatus::new(TaskId::new("t"), TaskState::Failed)
    };
    for e in [
        Event::offers(vec![offer.clone(), offer]),
        Event::update(status),
        Event::rescind(OfferId::new("o")),
        Event::heartbeat(),
        Event::error("no"),
    ] {
        let back = decode_event(&encode_event(&e)).expect("decodes");
        assert_eq!(back, e);
    }
}

#[test]
fn bad_buffers_are_errors_not_panics() {
    assert!(decode_call(&[]).unwrap_err().contains("invalid FlatBuffers Call"));
    assert!(decode_call(&[1, 2, 3]).is_err());
    let good = encode_call(&json_call(r#"{"type":"TEARDOWN","framework_id":{"value":"f"}}"#));
    // Every truncation and every single-byte corruption is either an error
    // or a call; never a panic.
    for n in 0..good.len() {
        let _ = decode_call(&good[..n]);
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[n] ^= 1 << bit;
            let _ = decode_call(&bad);
        }
    }
    let e = decode_call(&good[..good.len() / 2]).unwrap_err();
    assert!(e.starts_with("invalid FlatBuffers Call"), "{e}");
}

#[test]
fn resources_are_checked_as_json_checks_them() {
    let bad = |r: fb::Resource| {
        let mut call = Call::new(sched::CallType::Accept, Some(FrameworkId::new("f")));
        call.accept = Some(sched::Accept::default());
        let mut owned: fb::Call = call.to_fb();
        owned.accept.as_mut().unwrap().operations = Some(vec![fb::Operation {
            type_: fb::OperationType::Reserve,
            reserve: Some(Box::new(fb::Reserve { resources: Some(vec![r]) })),
            ..Default::default()
        }]);
        let mut b = planus::Builder::new();
        decode_call(b.finish(owned, None)).unwrap_err()
    };
    let scalar = |v: f64| fb::Resource {
        name: "cpus".into(),
        type_: fb::ValueType::Scalar,
        scalar: Some(fb::Scalar { value: v }),
        ..Default::default()
    };
    assert!(bad(scalar(-1.0)).contains("invalid scalar"));
    assert!(bad(scalar(f64::NAN)).contains("invalid scalar"));
    assert!(bad(fb::Resource { scalar: None, ..scalar(1.0) }).contains("has no 'scalar'"));
    let reversed = fb::Resource {
        name: "ports".into(),
        type_: fb::ValueType::Ranges,
        ranges: Some(Box::new(fb::Ranges { range: Some(vec![fb::Range { begin: 9, end: 3 }]) })),
        ..Default::default()
    };
    assert!(bad(reversed).contains("reversed range"));
    let bad_role = fb::Resource {
        reservations: Some(vec![fb::ReservationInfo {
            type_: fb::ReservationType::Dynamic,
            role: Some("../x".into()),
            ..Default::default()
        }]),
        ..scalar(1.0)
    };
    assert!(bad(bad_role).contains("invalid role"));
}

#[test]
fn a_launch_keeps_every_field() {
    let task = TaskInfo {
        name: "t".into(),
        task_id: TaskId::new("t"),
        agent_id: AgentId::new("a"),
        resources: Resources::parse("cpus:1;mem:32").unwrap(),
        command: Some(CommandInfo {
            arguments: vec!["a".into(), "b".into()],
            shell: Some(false),
            ..CommandInfo::shell("x")
        }),
        container: Some(mesos::ContainerInfo {
            kind: Some("MESOS".into()),
            mesos: Some(mesos::MesosContainerInfo { image: Some(true) }),
        }),
        max_completion_time: Some(mesos::DurationInfo { nanoseconds: 9 }),
        ..Default::default()
    };
    let mut call = Call::new(sched::CallType::Accept, Some(FrameworkId::new("f")));
    call.accept = Some(sched::Accept {
        offer_ids: vec![OfferId::new("o")],
        operations: vec![sched::Operation::launch(vec![task])],
        filters: None,
    });
    assert_eq!(decode_call(&encode_call(&call)).unwrap(), call);
}

/// OFFERS is written straight from the offers; it must read back as the
/// owned path's bytes do, for plain, reserved, revocable and volume
/// resources alike.
#[test]
fn offers_written_directly_read_as_the_owned_path_writes_them() {
    let mut resources = Resources::parse("cpus:4;mem:1024;ports:[31000-31005,32000-32000];disk(eng):10").unwrap();
    let mut rev = Resource::scalar("cpus", 0.5);
    rev.revocable = true;
    resources.add_one(rev);
    resources.add_one(Resource {
        name: "gpus_set".into(),
        value: crate::resources::Value::Set(["a".to_string(), "b".to_string()].into_iter().collect()),
        reservation: None,
        revocable: false,
        allocation_role: None,
        volume: None,
    });
    let offer = Offer {
        id: OfferId::new("o"),
        framework_id: FrameworkId::new("f"),
        agent_id: AgentId::new("a"),
        hostname: "h".into(),
        resources: resources.into_allocated_to("eng"),
        attributes: crate::resources::parse_attributes("zone:z1").unwrap(),
        executor_ids: vec![ExecutorId::new("e")],
        allocation_info: Some(mesos::AllocationInfo { role: Some("eng".into()) }),
    };
    let event = Event::offers(vec![offer.clone(), Offer { attributes: vec![], ..offer }]);
    let direct = encode_event(&event);
    let owned: fb::Event = event.to_fb();
    let mut b = planus::Builder::new();
    let via_owned = b.finish(owned, None).to_vec();
    assert_eq!(decode_event(&direct).unwrap(), decode_event(&via_owned).unwrap());
    assert_eq!(decode_event(&direct).unwrap(), event);
}
