//! Rate-limit check benchmarks: `cargo bench -p attache-filters --bench ratelimit`.
//!
//! Target: a local keyed check under 100 ns: from the key's bytes, hashing them and taking (or
//! refusing) a share of that key's burst. governor's own keyed limiter on the same keys is
//! timed beside it, as the floor. Each benchmark first asserts the
//! verdict it is about to time, so a bench that stopped measuring its path fails instead.
//! `.ci/run` runs every bench once in test mode (`cargo test --benches`).

// A failed `expect` is how a bench reports a broken setup.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use attache_filters::ratelimit::{LocalLimiter, Verdict, local_hash};
use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::metrics::counter::Counter;

// The proxy's allocator, so allocation costs are the proxy's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// 10,000 API keys as a header would carry them.
fn keys() -> Vec<Vec<u8>> {
    (0..10_000)
        .map(|i| format!("ak_live_{i:08x}f3a9c2d17b").into_bytes())
        .collect()
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    // Generous: every check allowed, the common case on a healthy service.
    let keyed = LocalLimiter::new(
        1_000_000,
        Duration::from_secs(1),
        1_000_000,
        Some((100_000, Counter::default())),
    );
    for k in &keys {
        assert!(keyed.check(local_hash(Some(k))).allowed());
    }
    assert_eq!(keyed.keys(), keys.len());
    let mut i = 0;
    c.bench_function("local keyed check (10k keys, allowed)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(keyed.check(local_hash(Some(black_box(&keys[i])))).allowed())
        });
    });

    // Spent: every check refused (a client hammering past its limit).
    let spent = LocalLimiter::new(
        1,
        Duration::from_secs(3600),
        1,
        Some((100_000, Counter::default())),
    );
    for k in &keys {
        spent.check(local_hash(Some(k)));
        assert!(matches!(
            spent.check(local_hash(Some(k))).verdict(),
            Verdict::Limited { .. }
        ));
    }
    c.bench_function("local keyed check (10k keys, limited)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(spent.check(local_hash(Some(black_box(&keys[i])))).verdict())
        });
    });

    // The floor: governor's own keyed limiter (its hashmap store, keys hashed by the standard
    // library's SipHash as ours are) on the same keys, with nothing of attache's around it.
    let floor = governor::RateLimiter::<Vec<u8>, _, _>::hashmap(governor::Quota::per_second(
        std::num::NonZeroU32::new(1_000_000).unwrap(),
    ));
    for k in &keys {
        assert!(floor.check_key(k).is_ok());
    }
    c.bench_function("governor's own keyed check (10k keys, floor)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(floor.check_key(black_box(&keys[i])).is_ok())
        });
    });

    let whole = LocalLimiter::new(1_000_000, Duration::from_secs(1), 1_000_000, None);
    assert!(whole.check(0).allowed());
    c.bench_function("local check without keys", |b| {
        b.iter(|| black_box(whole.check(black_box(0)).allowed()));
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
