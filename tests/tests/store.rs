//! One behaviour suite for both idempotency stores (`specs/idempotency.md` §7, case 37): the
//! memory store on an injectable clock, the Redis store against a real redis-server with short
//! TTLs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attache_filters::idempotency::redis_store::RedisStore;
use attache_filters::idempotency::store::{
    Claim, MemoryStore, RecordId, Store, Stored, Transition,
};
use attache_tests::redis::Redis;
use bytes::Bytes;

const LEASE: Duration = Duration::from_millis(300);

fn id(n: u128) -> RecordId {
    RecordId { scope: 7, key: n }
}

fn response() -> Stored {
    Stored {
        status: 201,
        headers: vec![
            ("location".into(), Bytes::from_static(b"/orders/1")),
            ("link".into(), Bytes::from_static(b"</a>; rel=\"x, y\"")),
            ("link".into(), Bytes::from_static(b"</b>")),
        ],
        body: Bytes::from_static(b"{\"order\":1}\x00\xff"),
    }
}

/// The suite; `pass` lets time go by (a fake clock, or a real sleep). The checks around a
/// lease's end leave it a third of the lease of slack, so a real clock needs a lease long
/// enough that a busy machine's late wake-ups fit in that third.
async fn suite<F, Fut>(store: &dyn Store, lease: Duration, pass: F)
where
    F: Fn(Duration) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (fp, other_fp) = (Some([1u8; 32]), Some([2u8; 32]));
    let (a, b) = (11u128, 22u128);

    // Claim, then everyone else sees it in flight; another request mismatches first.
    assert_eq!(
        store.claim(&id(1), fp, a, lease).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store.claim(&id(1), fp, b, lease).await.unwrap(),
        Claim::InFlight
    );
    assert_eq!(
        store.claim(&id(1), other_fp, b, lease).await.unwrap(),
        Claim::Mismatch
    );
    assert_eq!(
        store.claim(&id(1), None, b, lease).await.unwrap(),
        Claim::InFlight
    );

    // Only the owner completes; the result replays exactly, line by line.
    let r = response();
    let day = Duration::from_secs(86_400);
    assert_eq!(
        store.complete(&id(1), b, &r, false, day).await.unwrap(),
        Transition::LostLease
    );
    assert_eq!(
        store.renew(&id(1), b, lease).await.unwrap(),
        Transition::LostLease
    );
    assert_eq!(
        store.release(&id(1), b).await.unwrap(),
        Transition::LostLease
    );
    assert_eq!(
        store.complete(&id(1), a, &r, false, day).await.unwrap(),
        Transition::Done
    );
    assert_eq!(
        store.claim(&id(1), fp, b, lease).await.unwrap(),
        Claim::Done(r.clone())
    );
    assert_eq!(
        store.claim(&id(1), other_fp, b, lease).await.unwrap(),
        Claim::Mismatch
    );
    // A done record is no longer in flight: no transition applies.
    assert_eq!(
        store.release(&id(1), a).await.unwrap(),
        Transition::LostLease
    );

    // Release frees the key.
    assert_eq!(
        store.claim(&id(2), fp, a, lease).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(store.release(&id(2), a).await.unwrap(), Transition::Done);
    assert_eq!(
        store.claim(&id(2), other_fp, b, lease).await.unwrap(),
        Claim::Claimed
    );

    // Tombstones keep the status and headers, not the body.
    assert_eq!(
        store.claim(&id(3), fp, a, lease).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store.complete(&id(3), a, &r, true, day).await.unwrap(),
        Transition::Done
    );
    match store.claim(&id(3), fp, b, lease).await.unwrap() {
        Claim::Tombstone(t) => {
            assert_eq!((t.status, &t.headers), (201, &r.headers));
            assert!(t.body.is_empty());
        }
        other => panic!("{other:?}"),
    }

    // Renewal holds an in-flight record past its first lease; without it the lease ends and
    // a takeover completes first, so the original owner's completion is refused.
    assert_eq!(
        store.claim(&id(4), fp, a, lease).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store.claim(&id(5), fp, a, lease).await.unwrap(),
        Claim::Claimed
    );
    pass(lease * 2 / 3).await;
    assert_eq!(
        store.renew(&id(4), a, lease).await.unwrap(),
        Transition::Done
    );
    pass(lease * 2 / 3).await;
    assert_eq!(
        store.claim(&id(4), fp, b, lease).await.unwrap(),
        Claim::InFlight
    );
    assert_eq!(
        store.claim(&id(5), fp, b, lease).await.unwrap(),
        Claim::Claimed,
        "lease over"
    );
    assert_eq!(
        store.complete(&id(5), b, &r, false, day).await.unwrap(),
        Transition::Done
    );
    assert_eq!(
        store.complete(&id(5), a, &r, false, day).await.unwrap(),
        Transition::LostLease
    );

    // Retention ends a done record.
    assert_eq!(
        store.claim(&id(6), fp, a, lease).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store.complete(&id(6), a, &r, false, lease).await.unwrap(),
        Transition::Done
    );
    pass(lease + Duration::from_millis(100)).await;
    assert_eq!(
        store.claim(&id(6), fp, b, lease).await.unwrap(),
        Claim::Claimed
    );
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    let now = Arc::new(Mutex::new(Instant::now()));
    let clock = now.clone();
    let store = MemoryStore::with_clock(100, Arc::new(move || *clock.lock().unwrap()));
    suite(&store, LEASE, |d| {
        let now = now.clone();
        async move {
            *now.lock().unwrap() += d;
        }
    })
    .await;
}

#[tokio::test]
async fn redis_store_passes_the_suite() {
    let redis = Redis::start();
    let store = RedisStore::new(&redis.url(), "suite", Duration::from_secs(2)).unwrap();
    // 1 s, not 300 ms: the Redis run sleeps for real, and 100 ms of slack was once too little
    // on a loaded CI machine.
    suite(&store, Duration::from_secs(1), tokio::time::sleep).await;
    // Every record is a hash under the prefix and a Cluster hash tag.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(
        keys.lines()
            .all(|k| k.starts_with("suite:{") && k.ends_with('}')),
        "{keys}"
    );
}

#[tokio::test]
async fn a_full_memory_store_refuses_new_claims_but_keeps_old_ones() {
    let store = MemoryStore::new(2);
    let fp = Some([1u8; 32]);
    for n in 1..=2 {
        assert_eq!(
            store.claim(&id(n), fp, 1, LEASE).await.unwrap(),
            Claim::Claimed
        );
    }
    assert!(store.claim(&id(3), fp, 1, LEASE).await.is_err());
    assert_eq!(
        store.claim(&id(1), fp, 2, LEASE).await.unwrap(),
        Claim::InFlight
    );
}

#[tokio::test]
async fn the_memory_store_holds_at_most_max_bytes() {
    let now = Arc::new(Mutex::new(Instant::now()));
    let clock = now.clone();
    let store =
        MemoryStore::with_clock(100, Arc::new(move || *clock.lock().unwrap())).max_bytes(10_000);
    let body = |n: usize| Stored {
        status: 201,
        headers: vec![("content-type".into(), Bytes::from_static(b"text/plain"))],
        body: Bytes::from(vec![b'x'; n]),
    };
    let retention = Duration::from_secs(60);
    // A 6 kB response fits and is replayed whole.
    assert_eq!(
        store.claim(&id(1), None, 1, LEASE).await.unwrap(),
        Claim::Claimed
    );
    let stored = store
        .complete(&id(1), 1, &body(6_000), false, retention)
        .await;
    assert_eq!(stored.unwrap(), Transition::Done);
    match store.claim(&id(1), None, 2, LEASE).await.unwrap() {
        Claim::Done(s) => assert_eq!(s.body.len(), 6_000),
        other => panic!("{other:?}"),
    }
    // Another 6 kB would pass 10 kB: the request ran, so it is kept as a tombstone (status and
    // headers), never dropped.
    assert_eq!(
        store.claim(&id(2), None, 1, LEASE).await.unwrap(),
        Claim::Claimed
    );
    let stored = store
        .complete(&id(2), 1, &body(6_000), false, retention)
        .await;
    assert_eq!(stored.unwrap(), Transition::Done);
    match store.claim(&id(2), None, 2, LEASE).await.unwrap() {
        Claim::Tombstone(s) => {
            assert_eq!(s.status, 201);
            assert!(s.body.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(store.bytes() <= 10_000, "{}", store.bytes());
    // Filled to the limit, new claims are refused; old records keep answering.
    let mut n = 3;
    loop {
        match store.claim(&id(n), None, 1, LEASE).await {
            Ok(Claim::Claimed) => {
                let stored = store
                    .complete(&id(n), 1, &body(500), false, retention)
                    .await;
                assert_eq!(stored.unwrap(), Transition::Done);
                n += 1;
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(e.to_string().contains("10000 bytes"), "{e}");
                break;
            }
        }
        assert!(n < 50, "never full");
    }
    assert!(store.bytes() <= 10_000, "{}", store.bytes());
    assert!(matches!(
        store.claim(&id(1), None, 3, LEASE).await.unwrap(),
        Claim::Done(_)
    ));
    // Once records expire, their bytes are free again.
    *now.lock().unwrap() += retention * 2;
    assert_eq!(
        store.claim(&id(99), None, 1, LEASE).await.unwrap(),
        Claim::Claimed
    );
    assert!(store.bytes() < 1_000, "{}", store.bytes());
}
