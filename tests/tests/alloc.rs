//! `specs/trace-context.md` §13, checked with a counting allocator: parsing borrows header bytes
//! and allocates nothing; unchanged `tracestate` and `baggage` keep their `HeaderValue`; each
//! header written costs at most one allocation.
//!
//! Header values are built the way hyper builds them (slices of a shared read buffer), so
//! cloning one is a reference count, as in production.

use std::sync::Arc;

use allocation_counter::measure;
use attache_filters::trace_context::ids::RandomIds;
use attache_filters::trace_context::propagate::Settings;
use attache_filters::trace_context::{
    Format, SpanId, TraceFlags, TraceId, b3, baggage, jaeger, traceparent, tracestate,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const P: &str = "00f067aa0ba902b7";

/// A request's headers as hyper hands them over: every value shares one buffer.
fn request(pairs: &[(&'static str, String)]) -> HeaderMap {
    let joined: String = pairs.iter().map(|(_, v)| v.as_str()).collect();
    let buffer = Bytes::from(joined.into_bytes());
    let _promoted = buffer.clone();
    let mut h = HeaderMap::with_capacity(32);
    let mut at = 0;
    for (name, v) in pairs {
        let value = HeaderValue::from_maybe_shared(buffer.slice(at..at + v.len())).unwrap();
        at += v.len();
        h.append(HeaderName::from_static(name), value);
    }
    h
}

#[test]
fn parsing_allocates_nothing() {
    let h = request(&[
        ("traceparent", format!("00-{T}-{P}-01")),
        (
            "tracestate",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into(),
        ),
        ("baggage", "userId=alice,serverNode=DF%2028".into()),
        ("b3", format!("{T}-{P}-1")),
        ("uber-trace-id", format!("{T}:{P}:0:1")),
        ("x-b3-traceid", T.into()),
        ("x-b3-spanid", P.into()),
    ]);
    let info = measure(|| {
        assert!(traceparent::extract(&h).is_some_and(|r| r.is_ok()));
        assert!(tracestate::extract(&h, 4096).is_ok_and(|t| t.value.is_some()));
        assert_eq!(
            baggage::extract(&h, baggage::Limits::default()),
            Ok(baggage::Baggage::Unchanged)
        );
        assert!(b3::extract_single(&h).is_some());
        assert!(b3::extract_multi(&h).is_some());
        assert!(jaeger::extract(&h).is_some());
        let ex = attache_filters::trace_context::extract(&h, &Format::ALL);
        assert!(ex.context.is_some());
    });
    assert_eq!(info.count_total, 0, "parsing allocated: {info:?}");
}

#[test]
fn each_written_header_costs_at_most_one_allocation() {
    let (t, s, f) = (TraceId(7), SpanId(9), TraceFlags::new(1));
    for (what, n) in [
        (
            "traceparent",
            measure(|| drop(traceparent::write(t, s, f))).count_total,
        ),
        (
            "b3",
            measure(|| drop(b3::write_single(t, s, true, false))).count_total,
        ),
        (
            "uber-trace-id",
            measure(|| drop(jaeger::write(t, s, true, false))).count_total,
        ),
    ] {
        assert!(n <= 1, "{what}: {n} allocations");
    }
}

#[test]
fn the_propagation_step_keeps_unchanged_values_and_allocates_per_written_header() {
    let settings = Settings {
        request_id: Some(HeaderName::from_static("x-request-id")),
        ..Settings::new(Arc::new(RandomIds::default()))
    };
    let mut h = request(&[
        ("traceparent", format!("00-{T}-{P}-01")),
        ("tracestate", "rojo=00f067aa0ba902b7".into()),
        ("baggage", "u=7,p=1".into()),
    ]);
    let tracestate_before = h["tracestate"].as_bytes().as_ptr();
    let baggage_before = h["baggage"].as_bytes().as_ptr();
    let info = measure(|| drop(settings.apply(&mut h)));
    // Written: traceparent and x-request-id; tracestate and baggage pass as they came.
    assert!(info.count_total <= 2, "{info:?}");
    assert_eq!(
        h["tracestate"].as_bytes().as_ptr(),
        tracestate_before,
        "tracestate was copied"
    );
    assert_eq!(
        h["baggage"].as_bytes().as_ptr(),
        baggage_before,
        "baggage was copied"
    );
    assert_eq!(h.get_all("traceparent").iter().count(), 1);
}

/// `specs/feature-flags.md` §13: a static evaluation allocates nothing (the decision borrows
/// the snapshot), and so does a disabled flag; a targeted one allocates only what the rule
/// itself builds.
#[test]
fn static_flag_evaluation_allocates_nothing() {
    use attache_filters::flags::eval::{FlagSet, Kind, Reason};
    use attache_filters::flags::logic::FractionalVersion;
    let set = FlagSet::parse(&serde_json::json!({"flags": {
        "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "object": {"state": "ENABLED", "variants": {"a": {"cols": [1, 2]}}, "defaultVariant": "a"},
        "off": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}
    }}))
    .unwrap();
    let ctx = serde_json::Value::Null;
    let info = measure(|| {
        let d = set.decide("static", &ctx, 1, Kind::Any, FractionalVersion::V2);
        assert_eq!(d.reason, Reason::Static);
        assert_eq!(d.variant, Some("on"));
        let d = set.decide("object", &ctx, 1, Kind::Object, FractionalVersion::V2);
        assert!(d.value.is_some_and(|v| v.is_object()));
        let d = set.decide("off", &ctx, 1, Kind::Boolean, FractionalVersion::V2);
        assert_eq!(d.reason, Reason::Disabled);
    });
    assert_eq!(
        info.count_total, 0,
        "a static evaluation allocated: {info:?}"
    );
}
