//! attache's propagator through the OpenTelemetry API itself: installed as the global text-map
//! propagator, reading and writing `http::HeaderMap`s through `opentelemetry-http`'s extractor
//! and injector, as a Rust service would use it. The cases are those of the W3C Trace Context
//! test suite (test/test.py) that attache's codecs decide, plus B3 and Jaeger.

use attache_filters::otel::AttachePropagator;
use attache_filters::trace_context::Format;
use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::global;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn install() {
    global::set_text_map_propagator(AttachePropagator::new().inject([
        Format::TraceContext,
        Format::B3,
        Format::Jaeger,
    ]));
}

fn headers(lines: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in lines {
        h.append(*name, value.parse().expect("a header value"));
    }
    h
}

fn extract(lines: &[(&'static str, &str)]) -> Context {
    install();
    let h = headers(lines);
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(&h)))
}

fn inject(cx: &Context) -> HeaderMap {
    let mut out = HeaderMap::new();
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut HeaderInjector(&mut out)));
    out
}

fn remote(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[test]
fn a_valid_traceparent_continues_and_every_configured_format_is_written() {
    let cx = extract(&[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")]);
    assert_eq!(
        remote(&cx).as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert!(cx.span().span_context().is_remote());
    let out = inject(&cx);
    assert_eq!(out["traceparent"], TP);
    assert_eq!(out["tracestate"], "congo=t61rcWkgMzE");
    assert_eq!(
        out["b3"],
        "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"
    );
    assert_eq!(
        out["uber-trace-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1"
    );
}

#[test]
fn two_traceparent_lines_start_a_new_trace() {
    // test_traceparent_duplicated: the stock propagator continues the first line.
    let other = "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-01";
    let cx = extract(&[("traceparent", TP), ("traceparent", other)]);
    assert_eq!(remote(&cx), None);
    assert!(inject(&cx).is_empty());
}

#[test]
fn tracestate_over_several_lines_is_one_list() {
    // test_tracestate_multiple_headers_different_keys: the stock propagator keeps line one.
    let cx = extract(&[
        ("traceparent", TP),
        ("tracestate", "foo=1,bar=2"),
        ("tracestate", "rojo=1,congo=2"),
    ]);
    assert_eq!(inject(&cx)["tracestate"], "foo=1,bar=2,rojo=1,congo=2");
    // An invalid member drops the whole header, never the trace.
    let cx = extract(&[("traceparent", TP), ("tracestate", "foo=1,BAD KEY=2")]);
    assert!(remote(&cx).is_some());
    assert!(!inject(&cx).contains_key("tracestate"));
}

#[test]
fn the_level_2_random_flag_survives() {
    let cx = extract(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
    )]);
    assert_eq!(
        remote(&cx).as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03")
    );
    assert_eq!(
        inject(&cx)["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
    );
}

#[test]
fn malformed_traceparents_are_refused() {
    for bad in [
        // test_traceparent_version_0x00: no trailing data in version 00.
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what",
        // test_traceparent_version_0xff.
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        // Upper case, all-zero ids, short fields.
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    ] {
        assert_eq!(remote(&extract(&[("traceparent", bad)])), None, "{bad}");
    }
    // test_traceparent_version_0xcc: a future version's extra fields are allowed.
    let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future";
    assert!(remote(&extract(&[("traceparent", future)])).is_some());
}

#[test]
fn b3_and_jaeger_are_read_in_order() {
    let cx = extract(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
    assert_eq!(
        remote(&cx).as_deref(),
        Some("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01")
    );
    let cx = extract(&[
        ("x-b3-traceid", "463ac35c9f6413ad"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "0"),
    ]);
    assert_eq!(
        remote(&cx).as_deref(),
        Some("0000000000000000463ac35c9f6413ad-a2fb4a1d1a96d312-00")
    );
    // A 64-bit trace id goes on in 16 digits in B3 and Jaeger.
    let out = inject(&cx);
    assert_eq!(out["b3"], "463ac35c9f6413ad-a2fb4a1d1a96d312-0");
    let cx = extract(&[("uber-trace-id", "abc%3Adef%3A0%3A3")]);
    assert_eq!(
        remote(&cx).as_deref(),
        Some("00000000000000000000000000000abc-0000000000000def-01")
    );
    // W3C first: with both, the traceparent wins.
    let cx = extract(&[
        ("traceparent", TP),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ]);
    assert!(remote(&cx).is_some_and(|r| r.starts_with("4bf92f35")));
}

#[test]
fn fields_name_every_header_read_or_written() {
    let p = AttachePropagator::new()
        .extract([Format::TraceContext])
        .inject([Format::B3Multi]);
    let fields: Vec<&str> = p.fields().collect();
    assert_eq!(
        fields,
        [
            "traceparent",
            "tracestate",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-flags"
        ]
    );
}
