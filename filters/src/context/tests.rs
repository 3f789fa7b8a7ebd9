//! The memory store's limits and the TTL modes; the conformance suite every backend passes
//! is `tests/src/context_suite.rs`, run by `tests/tests/context_store.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::error::ContextError;
use super::memory::MemoryStore;
use super::op::{Change, Cond, Kind, Object, Op, Outcome, Shown, Ttl, TtlMode};
use super::store::{Limits, Store};

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

async fn run(store: &dyn Store, op: &Op) -> Result<Outcome, ContextError> {
    store.run("ctx", op, None).await.map(|r| r.outcome)
}

fn value_of(o: &Outcome) -> (Shown, u64) {
    match o {
        Outcome::Object { shown, version, .. } => (shown.clone(), *version),
        other => panic!("not an object: {other:?}"),
    }
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
