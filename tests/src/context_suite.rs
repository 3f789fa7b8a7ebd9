//! The Context API's store conformance suite (specs/context-api.md §5): what every backend
//! must do, checked through the `Store` interface alone. `tests/tests/context_store.rs` runs
//! it on the memory store, a redis-server and a Redis Cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use attache_filters::context::error::ContextError;
use attache_filters::context::op::{
    Change, Cond, Kind, Message, NewMessage, Object, Op, Outcome, Shown, Ttl, TtlMode,
};
use attache_filters::context::store::{Once, Store};
use serde_json::json;

pub fn object(kind: Kind, name: &str) -> Object {
    Object {
        kind,
        name: name.into(),
    }
}

pub fn write(kind: Kind, name: &str, change: Change) -> Op {
    Op::Write {
        object: object(kind, name),
        cond: Cond::default(),
        ttl: Ttl::default(),
        change,
    }
}

pub fn add(by: i64) -> Change {
    Change::CounterAdd {
        by,
        min: i64::MIN,
        max: i64::MAX,
    }
}

pub async fn run(store: &dyn Store, op: &Op) -> Result<Outcome, ContextError> {
    store.run("ctx", op, None).await.map(|r| r.outcome)
}

pub fn value_of(o: &Outcome) -> (Shown, u64) {
    match o {
        Outcome::Object { shown, version, .. } => (shown.clone(), *version),
        other => panic!("not an object: {other:?}"),
    }
}

/// The suite: counters, bounds, versions, create-only, compare-and-set, types, maps, sets,
/// TTL written with the data, retries applied once, context listing and deletion.
pub async fn conformance(store: &dyn Store) {
    // Counters: created at 0 by the first add; bounds refuse and change nothing.
    let first = run(store, &write(Kind::Counter, "hits", add(2)))
        .await
        .unwrap();
    assert!(matches!(first, Outcome::Object { created: true, .. }));
    let (shown, v1) = value_of(&first);
    assert_eq!(shown, Shown::Counter(2));
    let bounded = Change::CounterAdd {
        by: 5,
        min: 0,
        max: 6,
    };
    let err = run(store, &write(Kind::Counter, "hits", bounded))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ContextError::OutOfBounds { value: 2, .. }),
        "{err:?}"
    );
    let got = run(
        store,
        &Op::Get {
            object: object(Kind::Counter, "hits"),
            fields: None,
            page: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        value_of(&got),
        (Shown::Counter(2), v1),
        "a refused add changes nothing"
    );

    // Compare-and-set: the version must match; create-only refuses an existing object.
    let cas = |if_match, if_none_match| Op::Write {
        object: object(Kind::Counter, "hits"),
        cond: Cond {
            if_match,
            if_none_match,
            fence: None,
        },
        ttl: Ttl::default(),
        change: Change::CounterSet { value: 10 },
    };
    let err = run(store, &cas(Some(v1 + 1), false)).await.unwrap_err();
    assert!(
        matches!(&err, ContextError::PreconditionFailed { current: Some(t), .. } if *t == format!("\"{v1}\"")),
        "{err:?}"
    );
    assert!(matches!(
        run(store, &cas(None, true)).await,
        Err(ContextError::PreconditionFailed { .. })
    ));
    let (shown, v2) = value_of(&run(store, &cas(Some(v1), false)).await.unwrap());
    assert_eq!(shown, Shown::Counter(10));
    assert!(v2 > v1);
    // Deleted and made again: an old version never matches the new object.
    run(
        store,
        &Op::Delete {
            object: object(Kind::Counter, "hits"),
            cond: Cond::default(),
        },
    )
    .await
    .unwrap();
    let (_, v3) = value_of(
        &run(store, &write(Kind::Counter, "hits", add(1)))
            .await
            .unwrap(),
    );
    assert!(v3 > v2);
    assert!(matches!(
        run(
            store,
            &Op::Write {
                object: object(Kind::Counter, "fresh"),
                cond: Cond {
                    if_match: None,
                    if_none_match: true,
                    fence: None,
                },
                ttl: Ttl::default(),
                change: add(1)
            }
        )
        .await,
        Ok(Outcome::Object { created: true, .. })
    ));

    // Types are fixed: a counter is not a map.
    let err = run(
        store,
        &Op::Get {
            object: object(Kind::Map, "hits"),
            fields: None,
            page: None,
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ContextError::TypeMismatch {
                actual: "counter",
                wanted: "map",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        run(
            store,
            &Op::Get {
                object: object(Kind::Set, "nope"),
                fields: None,
                page: None
            }
        )
        .await,
        Err(ContextError::NotFound(_))
    ));

    // Maps: set, delete and incr in one step; merge patch; a failing incr changes nothing.
    let patch = Change::MapPatch {
        set: BTreeMap::from([
            ("status".into(), json!("paid")),
            ("items".into(), json!([1, 2])),
        ]),
        delete: vec![],
        incr: BTreeMap::from([("hits".into(), 3)]),
    };
    run(store, &write(Kind::Map, "order", patch)).await.unwrap();
    let bad = Change::MapPatch {
        set: BTreeMap::from([("x".into(), json!(1))]),
        delete: vec!["items".into()],
        incr: BTreeMap::from([("status".into(), 1)]),
    };
    assert!(matches!(
        run(store, &write(Kind::Map, "order", bad)).await,
        Err(ContextError::InvalidRequest(_))
    ));
    let merge = json!({"items": null, "address": {"city": "Lyon"}, "hits": 4});
    let Some(merge) = merge.as_object().cloned() else {
        unreachable!()
    };
    let (shown, _) = value_of(
        &run(store, &write(Kind::Map, "order", Change::MapMerge(merge)))
            .await
            .unwrap(),
    );
    assert_eq!(
        shown,
        Shown::Map(BTreeMap::from([
            ("address".into(), json!({"city": "Lyon"})),
            ("hits".into(), json!(4)),
            ("status".into(), json!("paid")),
        ]))
    );
    assert_eq!(
        run(
            store,
            &Op::GetField {
                name: "order".into(),
                field: "status".into()
            }
        )
        .await
        .unwrap(),
        Outcome::Field {
            value: json!("paid"),
            version: value_of(
                &run(
                    store,
                    &Op::Get {
                        object: object(Kind::Map, "order"),
                        fields: None,
                        page: None
                    }
                )
                .await
                .unwrap()
            )
            .1
        }
    );

    // Sets: idempotent adds, counts, pages, membership.
    let update = |add: &[&str], remove: &[&str]| {
        write(
            Kind::Set,
            "tags",
            Change::SetUpdate {
                add: add.iter().map(|s| (*s).to_owned()).collect(),
                remove: remove.iter().map(|s| (*s).to_owned()).collect(),
            },
        )
    };
    assert!(matches!(
        run(store, &update(&["a", "b", "c"], &[])).await.unwrap(),
        Outcome::SetUpdated {
            added: 3,
            removed: 0,
            count: 3,
            ..
        }
    ));
    assert!(matches!(
        run(store, &update(&["a", "d"], &["b", "zz"]))
            .await
            .unwrap(),
        Outcome::SetUpdated {
            added: 1,
            removed: 1,
            count: 3,
            ..
        }
    ));
    let page = run(
        store,
        &Op::Get {
            object: object(Kind::Set, "tags"),
            fields: None,
            page: Some((1, 1)),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        value_of(&page).0,
        Shown::Set {
            members: vec!["c".into()],
            next: Some(2),
            count: 3
        }
    );
    assert_eq!(
        run(
            store,
            &Op::HasMember {
                name: "tags".into(),
                member: "d".into()
            }
        )
        .await
        .unwrap(),
        Outcome::Member(true)
    );
    assert_eq!(
        run(
            store,
            &Op::HasMember {
                name: "tags".into(),
                member: "b".into()
            }
        )
        .await
        .unwrap(),
        Outcome::Member(false)
    );

    // TTL is written with the data: the object and its expiry appear together.
    let ttl = |ms: u64, mode| Ttl {
        given: Some(Duration::from_millis(ms)),
        default: None,
        mode,
    };
    let op = Op::Write {
        object: object(Kind::Counter, "short"),
        cond: Cond::default(),
        ttl: ttl(300, TtlMode::Create),
        change: add(1),
    };
    let Outcome::Object {
        ttl_ms: Some(left), ..
    } = run(store, &op).await.unwrap()
    else {
        panic!("no ttl")
    };
    assert!(left <= 300 && left > 0);
    // `create` does not move it; `touch` does.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let Outcome::Object {
        ttl_ms: Some(left), ..
    } = run(store, &op).await.unwrap()
    else {
        panic!("no ttl")
    };
    assert!(
        left <= 150,
        "create keeps the first expiry ({left} ms left)"
    );
    let touch = Op::Write {
        object: object(Kind::Counter, "short"),
        cond: Cond::default(),
        ttl: ttl(300, TtlMode::Touch),
        change: add(1),
    };
    let Outcome::Object {
        ttl_ms: Some(left), ..
    } = run(store, &touch).await.unwrap()
    else {
        panic!("no ttl")
    };
    assert!(left > 150, "touch restarts it ({left} ms left)");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        run(
            store,
            &Op::Get {
                object: object(Kind::Counter, "short"),
                fields: None,
                page: None
            }
        )
        .await,
        Err(ContextError::NotFound(_))
    ));

    // Retries apply once: the same key and request get the first outcome; another request
    // under the key is refused.
    let once = |fp: u8| Once {
        key: "retry-1",
        fingerprint: [fp; 32],
        retention: Duration::from_secs(60),
    };
    let op = write(Kind::Counter, "retried", add(5));
    let first = store.run("ctx", &op, Some(once(1))).await.unwrap();
    let again = store.run("ctx", &op, Some(once(1))).await.unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.outcome, again.outcome);
    assert_eq!(
        value_of(
            &run(
                store,
                &Op::Get {
                    object: object(Kind::Counter, "retried"),
                    fields: None,
                    page: None
                }
            )
            .await
            .unwrap()
        )
        .0,
        Shown::Counter(5)
    );
    assert!(matches!(
        store.run("ctx", &op, Some(once(2))).await,
        Err(ContextError::KeyReused)
    ));

    let last_token = locks(store).await;
    batches(store).await;
    queues(store).await;

    // Listing, then deleting the context; other contexts are untouched.
    store
        .run("other", &write(Kind::Counter, "kept", add(1)), None)
        .await
        .unwrap();
    let Outcome::Objects(listed) = run(store, &Op::List).await.unwrap() else {
        panic!()
    };
    let names: Vec<String> = listed.iter().map(ToString::to_string).collect();
    // By name, whatever the type.
    assert_eq!(
        names,
        [
            "maps/b-order",
            "queues/b-outbox",
            "sets/b-skus",
            "counters/b-stock",
            "counters/fresh",
            "counters/hits",
            "queues/jobs",
            "maps/ledger",
            "maps/order",
            "queues/poison",
            "counters/retried",
            "sets/tags"
        ]
    );
    run(store, &Op::DeleteContext).await.unwrap();
    assert_eq!(
        run(store, &Op::List).await.unwrap(),
        Outcome::Objects(vec![])
    );
    assert!(matches!(
        run(store, &Op::DeleteContext).await,
        Err(ContextError::NotFound(_))
    ));
    // A token is never granted twice, even after the context was deleted.
    let again = Op::Acquire {
        name: "job".into(),
        owner: "w".into(),
        lease: "l9".into(),
        ttl: Duration::from_secs(1),
    };
    let Outcome::Lease { token, .. } = run(store, &again).await.unwrap() else {
        panic!("no lease")
    };
    assert!(token > last_token);
    assert!(
        store
            .run(
                "other",
                &Op::Get {
                    object: object(Kind::Counter, "kept"),
                    fields: None,
                    page: None
                },
                None
            )
            .await
            .is_ok()
    );
}

/// Locks: one lease at a time, tokens that only grow (across releases, expiries and the
/// context's deletion), renewal and release by the lease only, fenced writes, retried acquires.
async fn locks(store: &dyn Store) -> u64 {
    let acquire = |lease: &str, ms: u64| Op::Acquire {
        name: "job".into(),
        owner: format!("worker-{lease}"),
        lease: lease.into(),
        ttl: Duration::from_millis(ms),
    };
    let token_of = |o: Outcome| match o {
        Outcome::Lease { token, granted, .. } => (token, granted),
        other => panic!("not a lease: {other:?}"),
    };
    let (t1, granted) = token_of(run(store, &acquire("l1", 60_000)).await.unwrap());
    assert!(granted);
    assert!(
        matches!(run(store, &acquire("l2", 60_000)).await, Err(ContextError::LockHeld(_, left)) if left > Duration::from_secs(50))
    );
    let renew = |lease: &str| Op::Renew {
        name: "job".into(),
        lease: lease.into(),
        ttl: Duration::from_millis(200),
    };
    assert_eq!(
        token_of(run(store, &renew("l1")).await.unwrap()),
        (t1, false)
    );
    assert!(matches!(
        run(store, &renew("l2")).await,
        Err(ContextError::LeaseLost(_))
    ));
    let held = run(
        store,
        &Op::Get {
            object: object(Kind::Lock, "job"),
            fields: None,
            page: None,
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(value_of(&held).0, Shown::Lock { ref owner, token, .. } if owner == "worker-l1" && token == t1)
    );
    // A fenced write with the holder's token applies; once the lease ran out and another
    // holder was granted, the first holder's token is stale, checked in the write's own step.
    let fenced = |token: u64| Op::Write {
        object: object(Kind::Map, "ledger"),
        cond: Cond {
            if_match: None,
            if_none_match: false,
            fence: Some(("job".into(), token)),
        },
        ttl: Ttl::default(),
        change: Change::MapPatch {
            set: BTreeMap::from([("by".into(), json!(token))]),
            delete: vec![],
            incr: BTreeMap::new(),
        },
    };
    run(store, &fenced(t1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (t2, _) = token_of(run(store, &acquire("l2", 60_000)).await.unwrap());
    assert!(t2 > t1);
    assert!(
        matches!(run(store, &fenced(t1)).await, Err(ContextError::StaleFence { token, latest, .. }) if token == t1 && latest == t2)
    );
    assert!(matches!(
        run(store, &fenced(t2 + 1)).await,
        Err(ContextError::StaleFence { .. })
    ));
    run(store, &fenced(t2)).await.unwrap();
    // Release by the lease only; the next grant's token still grows.
    let release = |lease: &str| Op::Release {
        name: "job".into(),
        lease: lease.into(),
    };
    assert!(matches!(
        run(store, &release("l1")).await,
        Err(ContextError::LeaseLost(_))
    ));
    assert_eq!(run(store, &release("l2")).await.unwrap(), Outcome::Deleted);
    // A retried acquire (same key) gets the same lease, not "held by someone".
    let once = Once {
        key: "acquire-1",
        fingerprint: [7; 32],
        retention: Duration::from_secs(60),
    };
    let first = store
        .run("ctx", &acquire("l3", 60_000), Some(once))
        .await
        .unwrap();
    let retried = store
        .run("ctx", &acquire("l4", 60_000), Some(once))
        .await
        .unwrap();
    assert!(retried.replayed);
    assert_eq!(first.outcome, retried.outcome);
    let (t3, _) = token_of(first.outcome);
    assert!(t3 > t2);
    run(store, &release("l3")).await.unwrap();
    t3
}

/// Batches: every precondition and op checked before any applies; all or nothing, even when
/// the op that fails comes after one that would have applied.
async fn batches(store: &dyn Store) {
    let stock = object(Kind::Counter, "b-stock");
    let order = object(Kind::Map, "b-order");
    run(store, &write(Kind::Counter, "b-stock", add(5)))
        .await
        .unwrap();
    let patch = |status: &str| Change::MapPatch {
        set: BTreeMap::from([("status".into(), json!(status))]),
        delete: vec![],
        incr: BTreeMap::new(),
    };
    let (_, v) = value_of(
        &run(store, &write(Kind::Map, "b-order", patch("new")))
            .await
            .unwrap(),
    );
    let batch = |checks: Vec<(Object, u64)>, ops: Vec<Op>| Op::Batch { checks, ops };
    let take = |by: i64| Op::Write {
        object: stock.clone(),
        cond: Cond::default(),
        ttl: Ttl::default(),
        change: Change::CounterAdd {
            by,
            min: 0,
            max: i64::MAX,
        },
    };
    let set_order = |status: &str| write(Kind::Map, "b-order", patch(status));
    let Outcome::Batch(outcomes) = run(
        store,
        &batch(
            vec![(order.clone(), v)],
            vec![
                take(-1),
                set_order("paid"),
                write(
                    Kind::Set,
                    "b-skus",
                    Change::SetUpdate {
                        add: vec!["x".into()],
                        remove: vec![],
                    },
                ),
                // The outbox: the message goes out with the state change, or not at all.
                Op::Enqueue {
                    name: "b-outbox".into(),
                    message: message("order-paid", 0, None),
                },
            ],
        ),
    )
    .await
    .unwrap() else {
        panic!("not a batch")
    };
    assert_eq!(outcomes.len(), 4);
    assert_eq!(
        outcomes[3],
        Outcome::Enqueued {
            id: "order-paid".into(),
            created: true
        }
    );
    assert_eq!(value_of(&outcomes[0]).0, Shown::Counter(4));
    // The precondition no longer holds (the batch changed the map): nothing applies.
    let err = run(store, &batch(vec![(order.clone(), v)], vec![take(-1)]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ContextError::Batch { at, error } if at.starts_with("if[0]") && matches!(**error, ContextError::PreconditionFailed { .. })),
        "{err:?}"
    );
    // The second op is out of bounds: the first, which alone would apply, does not either.
    let lost = Op::Enqueue {
        name: "b-lost".into(),
        message: message("never", 0, None),
    };
    let err = run(
        store,
        &batch(vec![], vec![set_order("lost"), lost, take(-10)]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ContextError::Batch { at, error } if at == "ops[2]" && matches!(**error, ContextError::OutOfBounds { .. })),
        "{err:?}"
    );
    let queue = Op::Get {
        object: object(Kind::Queue, "b-lost"),
        fields: None,
        page: None,
    };
    assert!(
        matches!(run(store, &queue).await, Err(ContextError::NotFound(_))),
        "the refused batch's message was not enqueued"
    );
    let get = |o: &Object| Op::Get {
        object: o.clone(),
        fields: None,
        page: None,
    };
    assert_eq!(
        value_of(&run(store, &get(&stock)).await.unwrap()).0,
        Shown::Counter(4)
    );
    assert_eq!(
        value_of(&run(store, &get(&order)).await.unwrap()).0,
        Shown::Map(BTreeMap::from([("status".into(), json!("paid"))]))
    );
}

fn message(id: &str, delay_ms: u64, dedupe: Option<&str>) -> NewMessage {
    NewMessage {
        id: id.into(),
        body: format!("{{\"order\":\"{id}\"}}"),
        content_type: "application/json".into(),
        delay: Duration::from_millis(delay_ms),
        dedupe: dedupe.map(|d| (d.to_owned(), Duration::from_secs(60))),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        baggage: None,
    }
}

async fn lease(store: &dyn Store, q: &str, max_attempts: u32) -> Vec<Message> {
    let op = Op::Lease {
        name: q.into(),
        max: 10,
        visibility: Duration::from_millis(150),
        max_attempts,
    };
    match run(store, &op).await.unwrap() {
        Outcome::Messages(m) => m,
        other => panic!("not messages: {other:?}"),
    }
}

/// Queues: delays, dedupe, leases with receipts, acks, redelivery after the visibility
/// timeout (redeliveries first), giving back, dead letters after `max_attempts`, replay.
async fn queues(store: &dyn Store) {
    let enqueue = |m: NewMessage| Op::Enqueue {
        name: "jobs".into(),
        message: m,
    };
    let first = run(store, &enqueue(message("m1", 0, Some("order-1"))))
        .await
        .unwrap();
    assert_eq!(
        first,
        Outcome::Enqueued {
            id: "m1".into(),
            created: true
        }
    );
    // The same dedupe id within its window: the first message's id, nothing added.
    let again = run(store, &enqueue(message("m1b", 0, Some("order-1"))))
        .await
        .unwrap();
    assert_eq!(
        again,
        Outcome::Enqueued {
            id: "m1".into(),
            created: false
        }
    );
    run(store, &enqueue(message("m2", 300, None)))
        .await
        .unwrap();
    // m2 is delayed: only m1 now, with its trace context.
    let got = lease(store, "jobs", 5).await;
    assert_eq!(
        got.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["m1"]
    );
    assert_eq!((got[0].attempt, got[0].receipt.as_str()), (1, "m1.1"));
    assert_eq!(got[0].body, "{\"order\":\"m1\"}");
    assert!(got[0].traceparent.is_some());
    let ack = |receipt: &str| Op::Ack {
        name: "jobs".into(),
        receipt: receipt.into(),
    };
    assert!(matches!(
        run(store, &ack("m1.2")).await,
        Err(ContextError::LeaseLost(_))
    ));
    assert_eq!(run(store, &ack("m1.1")).await.unwrap(), Outcome::Deleted);
    assert!(matches!(
        run(store, &ack("m1.1")).await,
        Err(ContextError::LeaseLost(_))
    ));
    // A consumer that never acks: the message comes back after the visibility timeout, first.
    run(store, &enqueue(message("m3", 0, None))).await.unwrap();
    assert_eq!(lease(store, "jobs", 5).await[0].id, "m3");
    tokio::time::sleep(Duration::from_millis(320)).await;
    let got = lease(store, "jobs", 5).await;
    let order: Vec<(&str, u32)> = got.iter().map(|m| (m.id.as_str(), m.attempt)).collect();
    assert_eq!(order, [("m3", 2), ("m2", 1)]);
    // Given back at once (visibility 0s): leased again, one attempt more.
    let back = Op::Extend {
        name: "jobs".into(),
        receipt: "m2.1".into(),
        visibility: Duration::ZERO,
    };
    assert!(matches!(
        run(store, &back).await,
        Ok(Outcome::Extended { .. })
    ));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let got = lease(store, "jobs", 5).await;
    assert_eq!(
        got.iter()
            .map(|m| (m.id.as_str(), m.attempt))
            .collect::<Vec<_>>(),
        [("m2", 2)]
    );
    // A message that always fails: after max_attempts deliveries it goes to the dead letters.
    let poison = Op::Enqueue {
        name: "poison".into(),
        message: message("p1", 0, None),
    };
    run(store, &poison).await.unwrap();
    for attempt in 1..=2 {
        let got = lease(store, "poison", 2).await;
        assert_eq!(got.iter().map(|m| m.attempt).collect::<Vec<_>>(), [attempt]);
        tokio::time::sleep(Duration::from_millis(170)).await;
    }
    assert!(lease(store, "poison", 2).await.is_empty());
    let Outcome::Messages(dead) = run(
        store,
        &Op::DeadLetters {
            name: "poison".into(),
        },
    )
    .await
    .unwrap() else {
        panic!("no dead letters")
    };
    assert_eq!(
        dead.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["p1"]
    );
    let replay = Op::Replay {
        name: "poison".into(),
        id: "p1".into(),
    };
    assert_eq!(run(store, &replay).await.unwrap(), Outcome::Deleted);
    assert!(matches!(
        run(store, &replay).await,
        Err(ContextError::NotFound(_))
    ));
    let got = lease(store, "poison", 2).await;
    assert_eq!(
        got.iter()
            .map(|m| (m.id.as_str(), m.attempt))
            .collect::<Vec<_>>(),
        [("p1", 1)]
    );
    let counts = run(
        store,
        &Op::Get {
            object: object(Kind::Queue, "poison"),
            fields: None,
            page: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        value_of(&counts).0,
        Shown::Queue {
            ready: 0,
            leased: 1,
            dead: 0
        }
    );
}
