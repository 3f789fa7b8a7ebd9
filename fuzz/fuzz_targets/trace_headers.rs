//! The inbound trace-context step on arbitrary header values: whatever a client sends in
//! `traceparent`, `tracestate`, `baggage`, B3 (single and multi) and `uber-trace-id`, the step
//! answers (no panic) and what it forwards is well formed: one valid `traceparent`, a
//! `tracestate` within its limit, a `baggage` that parses again within its limits, and a
//! continued trace id equal to the one a valid `traceparent` carried.
#![no_main]

use std::sync::Arc;

use attache_filters::trace_context::{baggage, ids::SeededIds, propagate::Settings, traceparent};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 9] = [
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "uber-trace-id",
    "baggage",
];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for (name, value) in NAMES.iter().zip(data.split(|b| *b == 0xff)) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    let incoming = headers
        .get("traceparent")
        .map(|v| traceparent::parse(v.as_bytes()));
    let settings = Settings::new(Arc::new(SeededIds::new(7)));
    let ctx = settings.apply(&mut headers);

    let out: Vec<_> = headers.get_all("traceparent").iter().collect();
    assert_eq!(out.len(), 1, "exactly one traceparent is forwarded");
    let tp = traceparent::parse(out[0].as_bytes()).expect("the forwarded traceparent parses");
    assert_eq!(tp.trace_id, ctx.trace_id);
    if let Some(Ok(valid)) = incoming {
        // A valid traceparent is read first (the default order), so its trace continues.
        assert_eq!(
            ctx.trace_id, valid.trace_id,
            "a valid traceparent's trace continues"
        );
    }
    let states: Vec<_> = headers.get_all("tracestate").iter().collect();
    assert!(states.len() <= 1);
    if let Some(s) = states.first() {
        assert!(s.len() <= 4096, "tracestate within its limit");
    }
    if headers.contains_key("baggage") {
        let limits = baggage::Limits::default();
        let b = baggage::extract(&headers, limits).expect("forwarded baggage parses");
        let _ = b;
        let bytes: usize = headers.get_all("baggage").iter().map(|v| v.len()).sum();
        assert!(
            bytes <= limits.max_bytes,
            "forwarded baggage within its byte limit"
        );
    }
});
