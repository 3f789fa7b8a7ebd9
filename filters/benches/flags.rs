//! Flag evaluation benchmarks (`specs/feature-flags.md` §13):
//! `cargo bench -p attache-filters --bench flags`.
//!
//! Targets: a static flag under 200 ns; a three-condition targeting rule under 2 µs;
//! `fractional` under 1 µs.

use std::hint::black_box;
use std::time::Duration;

use attache_filters::flags::eval::{FlagSet, Kind};
use attache_filters::flags::logic::FractionalVersion;
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

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = flags
}
criterion_main!(benches);
