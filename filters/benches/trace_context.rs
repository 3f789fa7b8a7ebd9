//! Trace-context codec benchmarks (`specs/trace-context.md` §13):
//! `cargo bench -p attache-filters --bench trace_context`.
//!
//! Targets: parse and validate a `traceparent` and a two-member `tracestate` in under 1 µs; the
//! whole propagation step of a request (restoration excluded until it exists) under 2 µs.

use std::hint::black_box;

use std::sync::Arc;

use attache_filters::trace_context::ids::RandomIds;
use attache_filters::trace_context::propagate::Settings;
use attache_filters::trace_context::{Format, SpanId, baggage, traceparent, tracestate};
use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderName;
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
    let settings = Settings {
        extract: Format::ALL.to_vec(),
        inject: vec![Format::TraceContext],
        inject_baggage: true,
        mirror: true,
        tracestate_max_len: 4096,
        baggage: baggage::Limits::default(),
        request_id: Some(HeaderName::from_static("x-request-id")),
        ratio: 1.0,
        to_baggage: Vec::new(),
        from_baggage: Vec::new(),
        restore: None,
        ids: Arc::new(RandomIds::default()),
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

criterion_group!(benches, bench);
criterion_main!(benches);
