//! Trace-context codec benchmarks (`specs/trace-context.md` §13):
//! `cargo bench -p attache-filters --bench trace_context`.
//!
//! Targets: parse and validate a `traceparent` and a two-member `tracestate` in under 1 µs; the
//! whole inbound or outbound propagation step, restoration hit included, under 2 µs; a
//! restoration lookup in a table of 10,000 entries within 20% of one in a table of 10.
//!
//! The lookups cycle through keys spread over the whole table: "warm" repeats 16 of them (what
//! a table sees when a few traces are busy), "cold" visits every entry once per cycle in a
//! scattered order (each lookup a different shard and slot, as under many concurrent traces),
//! so the table's size shows in what is measured. Each key is checked to hit before timing.

use std::hint::black_box;

use std::sync::Arc;

use attache_filters::trace_context::ids::RandomIds;
use attache_filters::trace_context::propagate::{HeaderPattern, Restore, RestoreLeg, Settings};
use attache_filters::trace_context::restore::{self, Record, Table};
use attache_filters::trace_context::{SpanId, baggage, traceparent, tracestate};
use attache_filters::trace_context::{TraceId, ids::IdGenerator};
use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderName;
use http::{HeaderMap, HeaderValue};
use std::time::Duration;

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    h.insert(
        "tracestate",
        HeaderValue::from_static("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    );
    h.insert(
        "baggage",
        HeaderValue::from_static("userId=alice,serverNode=DF%2028,isProduction=false"),
    );
    h
}

fn bench(c: &mut Criterion) {
    let h = headers();
    c.bench_function("traceparent + tracestate: parse and validate", |b| {
        b.iter(|| {
            let tp = traceparent::extract(black_box(&h));
            let ts = tracestate::extract(black_box(&h), 4096);
            black_box((tp, ts))
        })
    });
    c.bench_function("baggage: validate three members", |b| {
        b.iter(|| black_box(baggage::extract(black_box(&h), baggage::Limits::default())))
    });
    let parsed = traceparent::extract(&h).and_then(Result::ok);
    c.bench_function("traceparent: write", |b| {
        b.iter(|| {
            let p = black_box(parsed)
                .map(|p| traceparent::write(p.trace_id, SpanId(0x1122334455667788), p.flags));
            black_box(p)
        })
    });
    let settings = Settings {
        request_id: Some(HeaderName::from_static("x-request-id")),
        ..Settings::new(Arc::new(RandomIds::default()))
    };
    c.bench_function("propagation step: continue, rewrite, request id", |b| {
        b.iter_batched_ref(
            || {
                let mut h = headers();
                h.insert("host", HeaderValue::from_static("checkout:8080"));
                h.insert("user-agent", HeaderValue::from_static("curl/8.0"));
                h
            },
            |h| black_box(settings.apply(h)),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn table(n: u128) -> Table {
    let t = Table::new(restore::Limits {
        ttl: Duration::from_secs(120),
        max_entries: 100_000,
        max_bytes: 64 << 20,
        max_record_bytes: 16 << 10,
    });
    for i in 1..=n {
        t.insert(
            TraceId(i * 0x9e37_79b9_7f4a_7c15),
            Record {
                headers: vec![(
                    HeaderName::from_static("x-request-id"),
                    HeaderValue::from_static("4a6f0b2c-0f43-4a55-9d0a-3a5c39d1e7a1"),
                )],
                baggage: vec![HeaderValue::from_static("u=7,p=1")],
                ..Record::default()
            },
        );
    }
    t
}

/// The keys of a table of `n` entries, in a scattered order (a stride coprime with `n`).
fn scattered_keys(n: u128) -> Vec<TraceId> {
    let stride = (1..n)
        .rev()
        .find(|s| gcd(*s, n) == 1 && *s < n / 2 + 1)
        .unwrap_or(1);
    (0..n)
        .map(|i| TraceId((1 + (i * stride) % n) * 0x9e37_79b9_7f4a_7c15))
        .collect()
}

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn bench_restore(c: &mut Criterion) {
    for n in [10u128, 10_000] {
        let t = table(n);
        let cold = scattered_keys(n);
        let warm: Vec<TraceId> = cold
            .iter()
            .step_by(cold.len().div_ceil(16))
            .copied()
            .collect();
        assert!(
            cold.iter().all(|k| t.get(*k).is_some()),
            "every key of the {n}-entry table hits"
        );
        for (what, keys) in [("warm", &warm), ("cold", &cold)] {
            let mut next = keys.iter().cycle();
            c.bench_function(&format!("restoration lookup, {n} entries, {what}"), |b| {
                b.iter(|| black_box(t.get(black_box(*next.next().unwrap_or(&keys[0])))))
            });
        }
    }

    // The outbound step with a restoration hit: the app forwarded only traceparent.
    let table = Arc::new(table(10_000));
    let ids = Arc::new(RandomIds::default());
    let trace_id = TraceId(5_000 * 0x9e37_79b9_7f4a_7c15);
    let outbound = Settings {
        restore: Some(Restore {
            table,
            leg: RestoreLeg::Apply,
            headers: HeaderPattern::parse("x-request-id").into_iter().collect(),
            baggage: true,
            single_in_flight: None,
        }),
        ..Settings::new(ids.clone())
    };
    let tp = traceparent::write(
        trace_id,
        ids.span_id(),
        attache_filters::trace_context::TraceFlags::new(1),
    );
    c.bench_function("outbound propagation step with a restoration hit", |b| {
        b.iter_batched_ref(
            || {
                let mut h = HeaderMap::new();
                h.insert("traceparent", tp.clone());
                h.insert("host", HeaderValue::from_static("payments:8080"));
                h
            },
            |h| black_box(outbound.apply(h)),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench, bench_restore);
criterion_main!(benches);
