//! The store conformance suite (spec §5), run here on the memory backend; every backend must
//! pass it through the `Store` interface alone.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::error::ContextError;
use super::memory::MemoryStore;
use super::op::{Change, Cond, Kind, Object, Op, Outcome, Shown, Ttl, TtlMode};
use super::store::{Limits, Once, Store};

fn object(kind: Kind, name: &str) -> Object {
    Object {
        kind,
        name: name.into(),
    }
}

fn write(kind: Kind, name: &str, change: Change) -> Op {
    Op::Write {
        object: object(kind, name),
        cond: Cond::default(),
        ttl: Ttl::default(),
        change,
    }
}

fn add(by: i64) -> Change {
    Change::CounterAdd {
        by,
        min: i64::MIN,
        max: i64::MAX,
    }
}

async fn run(store: &dyn Store, op: &Op) -> Result<Outcome, ContextError> {
    store.run("ctx", op, None).await.map(|r| r.outcome)
}

fn value_of(o: &Outcome) -> (Shown, u64) {
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
                    if_none_match: true
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
            "counters/fresh",
            "counters/hits",
            "maps/order",
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

#[tokio::test]
async fn the_memory_store_passes_the_conformance_suite() {
    conformance(&MemoryStore::new(Limits::default())).await;
}

#[tokio::test]
async fn limits_refuse_and_change_nothing() {
    let store = MemoryStore::new(Limits {
        max_value_bytes: 8,
        max_map_bytes: 40,
        max_map_fields: 3,
        max_set_members: 2,
    });
    let set = |fields: &[(&str, serde_json::Value)]| {
        write(
            Kind::Map,
            "m",
            Change::MapPatch {
                set: fields
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
                delete: vec![],
                incr: BTreeMap::new(),
            },
        )
    };
    run(&store, &set(&[("a", json!(1))])).await.unwrap();
    assert!(matches!(
        run(&store, &set(&[("b", json!("far too long"))])).await,
        Err(ContextError::TooLarge {
            what: "a map field's value",
            ..
        })
    ));
    assert!(matches!(
        run(
            &store,
            &set(&[("b", json!(1)), ("c", json!(1)), ("d", json!(1))])
        )
        .await,
        Err(ContextError::TooMany { .. })
    ));
    let members = write(
        Kind::Set,
        "s",
        Change::SetUpdate {
            add: vec!["x".into(), "y".into(), "z".into()],
            remove: vec![],
        },
    );
    assert!(matches!(
        run(&store, &members).await,
        Err(ContextError::TooMany { .. })
    ));
    let (shown, _) = value_of(
        &run(
            &store,
            &Op::Get {
                object: object(Kind::Map, "m"),
                fields: None,
                page: None,
            },
        )
        .await
        .unwrap(),
    );
    assert_eq!(shown, Shown::Map(BTreeMap::from([("a".into(), json!(1))])));
    assert!(matches!(
        run(
            &store,
            &Op::Get {
                object: object(Kind::Set, "s"),
                fields: None,
                page: None
            }
        )
        .await,
        Err(ContextError::NotFound(_))
    ));
}

#[test]
fn ttl_modes_move_the_expiry_as_documented() {
    let t = |given: Option<u64>, mode| Ttl {
        given: given.map(Duration::from_millis),
        default: Some(Duration::from_millis(50)),
        mode,
    };
    // New objects: the given TTL, else the default.
    assert_eq!(t(Some(10), TtlMode::Keep).expiry(1000, None), Some(1010));
    assert_eq!(t(None, TtlMode::Create).expiry(1000, None), Some(1050));
    // Existing objects.
    assert_eq!(
        t(Some(10), TtlMode::Create).expiry(2000, Some(Some(1010))),
        Some(1010)
    );
    assert_eq!(
        t(None, TtlMode::Touch).expiry(2000, Some(Some(1010))),
        Some(2050)
    );
    assert_eq!(t(None, TtlMode::Keep).expiry(2000, Some(None)), None);
    assert_eq!(
        t(Some(10), TtlMode::Keep).expiry(2000, Some(None)),
        Some(2010)
    );
}
