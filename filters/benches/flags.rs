//! Flag evaluation benchmarks (`specs/feature-flags.md` §13):
//! `cargo bench -p attache-filters --bench flags`.
//!
//! Targets: a static flag under 200 ns; a three-condition targeting rule under 2 µs;
//! `fractional` under 1 µs; loading (parsing, compiling and swapping in) 1,000 flags under
//! 50 ms.

use std::hint::black_box;
use std::time::Duration;

use attache_filters::flags::eval::{FlagSet, Kind};
use attache_filters::flags::logic::FractionalVersion;
use attache_filters::flags::store::FlagStore;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn set() -> FlagSet {
    FlagSet::parse(&json!({
        "flags": {
            "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
            "targeted": {
                "state": "ENABLED",
                "variants": {"beta": "beta", "stable": "stable"},
                "defaultVariant": "stable",
                "targeting": {"if": [{"and": [
                    {"ends_with": [{"var": "email"}, "@acme.com"]},
                    {"in": [{"var": "plan"}, ["pro", "enterprise"]]},
                    {">=": [{"var": "age"}, 18]}
                ]}, "beta", null]}
            },
            "split": {
                "state": "ENABLED",
                "variants": {"a": "a", "b": "b", "c": "c"},
                "defaultVariant": "a",
                "targeting": {"fractional": [["a", 50], ["b", 30], ["c", 20]]}
            }
        }
    }))
    .unwrap_or_default()
}

fn flags(c: &mut Criterion) {
    let set = set();
    let ctx = json!({
        "targetingKey": "user-42",
        "email": "dev@acme.com",
        "plan": "pro",
        "age": 31,
        "tenant": "acme",
        "country": "FR"
    });
    let now = 1_795_000_000;
    c.bench_function("static flag", |b| {
        b.iter(|| {
            black_box(set.evaluate(
                black_box("static"),
                &ctx,
                now,
                Kind::Boolean,
                FractionalVersion::V2,
            ))
        })
    });
    c.bench_function("three-condition targeting", |b| {
        b.iter(|| {
            black_box(set.evaluate(
                black_box("targeted"),
                &ctx,
                now,
                Kind::String,
                FractionalVersion::V2,
            ))
        })
    });
    c.bench_function("fractional", |b| {
        b.iter(|| {
            black_box(set.evaluate(
                black_box("split"),
                &ctx,
                now,
                Kind::String,
                FractionalVersion::V2,
            ))
        })
    });
}

/// 1,000 flags, a third static, a third targeted, a third fractional.
fn thousand() -> serde_json::Value {
    let mut flags = serde_json::Map::new();
    for i in 0..1000 {
        let targeting = match i % 3 {
            0 => json!({}),
            1 => json!({"if": [{"and": [
                {"ends_with": [{"var": "email"}, "@acme.com"]},
                {"in": [{"var": "plan"}, ["pro", "enterprise"]]},
                {"sem_ver": [{"var": "app_version"}, ">=", "2.1.0"]}
            ]}, "on", null]}),
            _ => json!({"fractional": [["on", 10], ["off", 90]]}),
        };
        flags.insert(
            format!("flag-{i}"),
            json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                   "defaultVariant": "off", "targeting": targeting}),
        );
    }
    json!({ "flags": flags })
}

fn reload(c: &mut Criterion) {
    let doc = thousand();
    let store = FlagStore::new(1);
    c.bench_function("load 1,000 flags", |b| {
        b.iter(|| black_box(store.update(0, black_box(&doc))))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = flags, reload
}
criterion_main!(benches);
