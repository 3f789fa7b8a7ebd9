//! Trace-context codec benchmarks (`specs/trace-context.md` §13):
//! `cargo bench -p attache-filters --bench trace_context`.
//!
//! Target: parse and validate a `traceparent` and a two-member `tracestate` in under 1 µs.

use std::hint::black_box;

use attache_filters::trace_context::{SpanId, baggage, traceparent, tracestate};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};

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
}

criterion_group!(benches, bench);
criterion_main!(benches);
