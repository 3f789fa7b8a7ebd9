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

/// specs/authorization.md §5: the authorization step allocates nothing on an allowed request
/// (spans and the access log off), with 20 rules and the one that allows it last; a denial
/// (its 403) may.
#[test]
fn an_allowed_request_costs_the_authorization_step_no_allocation() {
    use attache_filters::authz::policy::{Action, Default, Policy, Rule, Source, To};
    use attache_filters::authz::{AuthzLayer, Settings, path::PathPattern, spiffe::IdPattern};
    use std::task::{Context, Poll};
    use tower::{Layer, Service};

    let paths = |p: &[&str]| -> Vec<PathPattern> {
        p.iter().map(|p| PathPattern::parse(p).unwrap()).collect()
    };
    let rule = |name: &str, action, from, to| Rule {
        name: name.into(),
        action,
        dry_run: false,
        from,
        to,
        when: vec![],
    };
    let any = || Source {
        any: true,
        ..Source::default()
    };
    let mut rules = vec![rule(
        "no-debug",
        Action::Deny,
        any(),
        To {
            paths: paths(&["/admin/debug/**"]),
            ..To::default()
        },
    )];
    for i in 1..=9 {
        let web = Source {
            ids: vec![IdPattern::parse("spiffe://bench.local/ns/web/sa/*").unwrap()],
            ..Source::default()
        };
        let to = To {
            paths: paths(&[&format!("/v{i}/orders"), &format!("/v{i}/orders/*")]),
            ..To::default()
        };
        rules.push(rule(&format!("web-{i}"), Action::Allow, web, to));
        let to = To {
            methods: vec![http::Method::GET, http::Method::POST],
            paths: paths(&[&format!("/svc{i}/**")]),
            ..To::default()
        };
        rules.push(rule(&format!("svc-{i}"), Action::Allow, any(), to));
    }
    rules.push(rule(
        "public",
        Action::Allow,
        any(),
        To {
            methods: vec![http::Method::GET],
            paths: paths(&["/**"]),
            ..To::default()
        },
    ));
    assert_eq!(rules.len(), 20);
    let policy = Arc::new(Policy::new(Default::Deny, false, rules));
    let metrics = attache_filters::metrics::Metrics::new();
    let layer = AuthzLayer::new(Settings {
        counters: attache_filters::authz::metrics::Counters::new(metrics.family(), &policy),
        policy,
        peer_of: |_| None,
        request_id: Some(HeaderName::from_static("x-request-id")),
        hand_up: false,
        tunnels: Arc::default(),
        log_interval: std::time::Duration::from_secs(60),
    });
    let ok = || Ok::<_, std::convert::Infallible>(http::Response::new(attache_filters::empty()));
    let mut svc = layer.layer(tower::service_fn(move |_req| std::future::ready(ok())));
    let request = |method: http::Method, path: &str| {
        let mut req = http::Request::new(attache_filters::empty());
        *req.method_mut() = method;
        *req.uri_mut() = path.parse().unwrap();
        req.headers_mut()
            .insert("host", HeaderValue::from_static("orders.internal"));
        req
    };
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut run = |req| {
        let mut fut = std::pin::pin!(svc.call(req));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(res)) => res.status(),
            _ => panic!("the step did not answer at once"),
        }
    };
    // The first decision makes the counter it counts with; later ones find it.
    assert_eq!(run(request(http::Method::GET, "/products/7")), 200);
    let req = request(http::Method::GET, "/products/8");
    let info = measure(|| assert_eq!(run(req), 200));
    assert_eq!(
        info.count_total, 0,
        "an allowed request allocated: {info:?}"
    );
    assert_eq!(run(request(http::Method::POST, "/products/8")), 403);
}
