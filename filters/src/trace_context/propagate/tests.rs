//! Propagation on one leg: `specs/trace-context.md` §12 cases 1–3, 5, 12, 17–23, 29, 36.

use super::*;
use crate::trace_context::ids::SeededIds;

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const P: &str = "00f067aa0ba902b7";

fn settings(ratio: f64) -> Settings {
    Settings {
        request_id: Some(HeaderName::from_static("x-request-id")),
        ratio,
        to_baggage: vec![(HeaderName::from_static("x-tenant-id"), "tenant".into())],
        from_baggage: vec![("tenant".into(), HeaderName::from_static("x-tenant-id"))],
        ..Settings::new(Arc::new(SeededIds::new(42)))
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn all(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn case_1_continues_with_attache_as_parent() {
    let mut h = headers(&[
        ("traceparent", &format!("00-{T}-{P}-01")),
        ("tracestate", "rojo=1"),
    ]);
    let ctx = settings(1.0).apply(&mut h);
    assert_eq!(ctx.parent_id.unwrap().to_string(), P);
    assert_ne!(ctx.span_id.to_string(), P);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{T}-{}-01", ctx.span_id)]
    );
    assert_eq!(all(&h, "tracestate"), ["rojo=1"]);
}

#[test]
fn case_2_flags_are_kept_and_unsampled_stays_unsampled() {
    let mut h = headers(&[("traceparent", &format!("00-{T}-{P}-03"))]);
    let ctx = settings(1.0).apply(&mut h);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{T}-{}-03", ctx.span_id)]
    );
    let mut h = headers(&[("traceparent", &format!("00-{T}-{P}-02"))]);
    let ctx = settings(1.0).apply(&mut h);
    assert!(!ctx.sampled);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{T}-{}-02", ctx.span_id)]
    );
}

#[test]
fn case_3_no_context_starts_a_random_flagged_trace() {
    let mut h = HeaderMap::new();
    let ctx = settings(1.0).apply(&mut h);
    assert_eq!(ctx.parent_id, None);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{}-{}-03", ctx.trace_id, ctx.span_id)]
    );
    let mut h = HeaderMap::new();
    let ctx = settings(0.0).apply(&mut h);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{}-{}-02", ctx.trace_id, ctx.span_id)]
    );
}

#[test]
fn case_5_and_12_an_invalid_traceparent_starts_anew_without_tracestate() {
    let v = format!("00-{T}-{P}-01");
    let mut h = headers(&[
        ("traceparent", &v),
        ("traceparent", &v),
        ("tracestate", "rojo=1"),
    ]);
    let ctx = settings(1.0).apply(&mut h);
    assert_ne!(ctx.trace_id.to_string(), T);
    assert_eq!(all(&h, "traceparent").len(), 1);
    assert!(all(&h, "tracestate").is_empty());
    let mut h = headers(&[("tracestate", "rojo=1")]);
    settings(1.0).apply(&mut h);
    assert!(all(&h, "tracestate").is_empty());
}

#[test]
fn case_17_b3_in_w3c_out_and_mirrored() {
    let mut h = headers(&[("b3", &format!("{T}-{P}-1"))]);
    let ctx = settings(1.0).apply(&mut h);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{T}-{}-01", ctx.span_id)]
    );
    assert_eq!(all(&h, "b3"), [format!("{T}-{}-1", ctx.span_id)]);
}

#[test]
fn case_18_b3_debug_forces_sampling_and_64_bit_ids_round_trip() {
    let h16 = &T[16..];
    let mut h = headers(&[("b3", &format!("{h16}-{P}-d"))]);
    let ctx = settings(0.0).apply(&mut h);
    assert!(ctx.sampled && ctx.debug);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{}{h16}-{}-01", "0".repeat(16), ctx.span_id)]
    );
    assert_eq!(all(&h, "b3"), [format!("{h16}-{}-d", ctx.span_id)]);
}

#[test]
fn case_19_b3_zero_decides_a_new_trace_unsampled() {
    let mut h = headers(&[("b3", "0")]);
    let ctx = settings(1.0).apply(&mut h);
    assert!(!ctx.sampled && ctx.random);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{}-{}-02", ctx.trace_id, ctx.span_id)]
    );
    assert!(all(&h, "b3").is_empty(), "a lone state is not mirrored");
}

#[test]
fn case_20_b3_multi_is_mirrored_without_a_parent() {
    let mut h = headers(&[
        ("x-b3-traceid", T),
        ("x-b3-spanid", P),
        ("x-b3-parentspanid", "1111111111111111"),
        ("x-b3-sampled", "true"),
    ]);
    let ctx = settings(1.0).apply(&mut h);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{T}-{}-01", ctx.span_id)]
    );
    assert_eq!(all(&h, "x-b3-spanid"), [ctx.span_id.to_string()]);
    assert_eq!(all(&h, "x-b3-sampled"), ["1"]);
    assert!(all(&h, "x-b3-parentspanid").is_empty());
}

#[test]
fn case_22_one_trace_everywhere() {
    let b = "0af7651916cd43dd8448eb211c80319c";
    let mut h = headers(&[
        ("traceparent", &format!("00-{T}-{P}-01")),
        ("tracestate", "rojo=1"),
        ("b3", &format!("{b}-{P}-1")),
    ]);
    let ctx = settings(1.0).apply(&mut h);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{T}-{}-01", ctx.span_id)]
    );
    assert_eq!(all(&h, "tracestate"), ["rojo=1"]);
    assert_eq!(all(&h, "b3"), [format!("{T}-{}-1", ctx.span_id)]);

    let mut s = settings(1.0);
    s.extract = vec![Format::B3, Format::TraceContext];
    let mut h = headers(&[
        ("traceparent", &format!("00-{T}-{P}-01")),
        ("tracestate", "rojo=1"),
        ("b3", &format!("{b}-{P}-1")),
    ]);
    let ctx = s.apply(&mut h);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{b}-{}-01", ctx.span_id)]
    );
    assert!(
        all(&h, "tracestate").is_empty(),
        "tracestate belongs to the other trace"
    );
}

#[test]
fn case_23_jaeger_in_and_out() {
    let mut h = headers(&[("uber-trace-id", &format!("{T}:{P}:0:1"))]);
    let ctx = settings(1.0).apply(&mut h);
    assert_eq!(
        all(&h, "traceparent"),
        [format!("00-{T}-{}-01", ctx.span_id)]
    );
    assert_eq!(
        all(&h, "uber-trace-id"),
        [format!("{T}:{}:0:1", ctx.span_id)]
    );
}

#[test]
fn case_29_request_id_added_when_missing_and_kept_otherwise() {
    let mut h = HeaderMap::new();
    settings(1.0).apply(&mut h);
    let id = all(&h, "x-request-id");
    assert_eq!(id.len(), 1);
    assert_eq!(id[0].len(), 36);
    let mut h = headers(&[("x-request-id", "mine")]);
    settings(1.0).apply(&mut h);
    assert_eq!(all(&h, "x-request-id"), ["mine"]);
}

#[test]
fn case_36_invalid_baggage_is_dropped_and_the_trace_continues() {
    let mut h = headers(&[
        ("traceparent", &format!("00-{T}-{P}-01")),
        ("baggage", "ok=1"),
        ("baggage", "k v=1"),
    ]);
    let ctx = settings(1.0).apply(&mut h);
    assert!(ctx.dropped_baggage);
    assert!(all(&h, "baggage").is_empty());
    assert_eq!(ctx.trace_id.to_string(), T);
}

#[test]
fn baggage_passes_untouched_unless_injected() {
    let mut s = settings(1.0);
    s.inject_baggage = false;
    let mut h = headers(&[("baggage", "k v=1")]);
    s.apply(&mut h);
    assert_eq!(all(&h, "baggage"), ["k v=1"]);
}

#[test]
fn a_non_parent_based_sampler_ignores_the_callers_decision() {
    let mut s = settings(0.0);
    s.parent_based = false;
    let mut h = headers(&[("traceparent", &format!("00-{T}-{P}-01"))]);
    assert!(!s.apply(&mut h).sampled);
    let mut h = headers(&[("b3", &format!("{T}-{P}-d"))]);
    assert!(s.apply(&mut h).sampled, "debug still forces sampling");
}

#[test]
fn ratio_sampling_is_decided_by_the_trace_id() {
    let s = settings(0.5);
    let low = TraceId(0x0000_0000_0000_0000_0000_0000_0000_0001);
    let high = TraceId(0x0000_0000_0000_0000_00ff_ffff_ffff_ffff);
    assert!(!s.ratio_sampled(low));
    assert!(s.ratio_sampled(high));
    let sampled = (0..10_000u64)
        .filter(|i| s.ratio_sampled(TraceId(u128::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))))
        .count();
    assert!((4_500..5_500).contains(&sampled), "{sampled}");
}

#[test]
fn case_37_headers_and_baggage_map_both_ways_and_existing_values_win() {
    let mut h = headers(&[("x-tenant-id", "acme co"), ("baggage", "u=7")]);
    settings(1.0).apply(&mut h);
    assert_eq!(all(&h, "baggage"), ["u=7,tenant=acme%20co"]);

    let mut h = headers(&[("baggage", "tenant=acme%20co")]);
    settings(1.0).apply(&mut h);
    assert_eq!(all(&h, "x-tenant-id"), ["acme co"]);
    assert_eq!(
        all(&h, "baggage"),
        ["tenant=acme%20co"],
        "baggage still reaches the app"
    );

    // Existing values win, both ways.
    let mut h = headers(&[("x-tenant-id", "a"), ("baggage", "tenant=b")]);
    settings(1.0).apply(&mut h);
    assert_eq!(all(&h, "x-tenant-id"), ["a"]);
    assert_eq!(all(&h, "baggage"), ["tenant=b"]);

    // Unchanged baggage keeps its original lines.
    let mut h = headers(&[("baggage", "a=1"), ("baggage", "b=2")]);
    settings(1.0).apply(&mut h);
    assert_eq!(all(&h, "baggage"), ["a=1", "b=2"]);
}

#[test]
fn case_38_uberctx_headers_become_members() {
    let mut h = headers(&[("uberctx-team", "a%20b")]);
    settings(1.0).apply(&mut h);
    assert_eq!(all(&h, "baggage"), ["team=a%20b"]);
    let mut s = settings(1.0);
    s.inject.push(Format::Jaeger);
    let mut h = headers(&[("baggage", "team=a%20b")]);
    s.apply(&mut h);
    assert_eq!(all(&h, "uberctx-team"), ["a%20b"]);
}

#[test]
fn members_attache_would_add_past_the_limits_are_counted_not_added() {
    let full: Vec<String> = (0..64).map(|i| format!("k{i}=v")).collect();
    let line = full.join(",");
    let mut h = headers(&[("baggage", &line), ("x-tenant-id", "acme")]);
    let ctx = settings(1.0).apply(&mut h);
    assert_eq!(ctx.baggage_members_dropped, 1);
    assert_eq!(all(&h, "baggage"), [line]);
}

mod restoration {
    use super::*;
    use crate::trace_context::restore::{Limits, Table};
    use std::time::Duration;

    fn legs(patterns: &[&str], mirror: bool) -> (Settings, Settings) {
        let table = Arc::new(Table::new(Limits {
            ttl: Duration::from_secs(120),
            max_entries: 100,
            max_bytes: 1 << 20,
            max_record_bytes: 16 * 1024,
        }));
        let restore = |leg| Restore {
            table: table.clone(),
            leg,
            headers: patterns
                .iter()
                .filter_map(|p| HeaderPattern::parse(p))
                .collect(),
            baggage: true,
            single_in_flight: None,
        };
        let mut inbound = settings(1.0);
        inbound.to_baggage = Vec::new();
        inbound.from_baggage = Vec::new();
        inbound.mirror = mirror;
        inbound.restore = Some(restore(RestoreLeg::Record));
        let mut outbound = settings(1.0);
        outbound.request_id = None;
        outbound.to_baggage = Vec::new();
        outbound.from_baggage = Vec::new();
        outbound.restore = Some(restore(RestoreLeg::Apply));
        (inbound, outbound)
    }

    #[test]
    fn case_27_the_app_forwards_only_traceparent_and_everything_arrives() {
        let (inbound, outbound) = legs(&["x-request-id", "x-tenant-id"], true);
        let mut h = headers(&[
            ("traceparent", &format!("00-{T}-{P}-01")),
            ("x-request-id", "req-1"),
            ("x-tenant-id", "a"),
            ("tracestate", "rojo=1"),
            ("baggage", "u=7,p=1"),
        ]);
        let server = inbound.apply(&mut h);
        let app_tp = all(&h, "traceparent").remove(0);

        let mut call = headers(&[("traceparent", &app_tp)]);
        let client = outbound.apply(&mut call);
        assert_eq!(client.restored, Some(Restored::Hit));
        assert_eq!(
            client.parent_id,
            Some(server.span_id),
            "the CLIENT span is a child of the SERVER span"
        );
        assert_eq!(
            all(&call, "traceparent"),
            [format!("00-{T}-{}-01", client.span_id)]
        );
        assert_eq!(all(&call, "x-request-id"), ["req-1"]);
        assert_eq!(all(&call, "x-tenant-id"), ["a"]);
        assert_eq!(all(&call, "tracestate"), ["rojo=1"]);
        assert_eq!(all(&call, "baggage"), ["u=7,p=1"]);
    }

    #[test]
    fn case_28_what_the_app_sets_wins() {
        let (inbound, outbound) = legs(&["x-tenant-id"], true);
        let mut h = headers(&[
            ("traceparent", &format!("00-{T}-{P}-01")),
            ("x-tenant-id", "a"),
            ("baggage", "u=7,p=1"),
        ]);
        inbound.apply(&mut h);
        let app_tp = all(&h, "traceparent").remove(0);
        let mut call = headers(&[
            ("traceparent", &app_tp),
            ("x-tenant-id", "b"),
            ("baggage", "u=8"),
        ]);
        outbound.apply(&mut call);
        assert_eq!(all(&call, "x-tenant-id"), ["b"]);
        assert_eq!(all(&call, "baggage"), ["u=8,p=1"]);
        // Even an empty header the app set is kept.
        let mut call = headers(&[("traceparent", &app_tp), ("x-tenant-id", "")]);
        outbound.apply(&mut call);
        assert_eq!(all(&call, "x-tenant-id"), [""]);
    }

    #[test]
    fn case_30_a_b3_caller_gets_b3_on_the_way_out() {
        for (patterns, mirror) in [(&[][..], true), (&["x-b3-*"][..], false)] {
            let (inbound, outbound) = legs(patterns, mirror);
            let mut h = headers(&[
                ("x-b3-traceid", T),
                ("x-b3-spanid", P),
                ("x-b3-sampled", "1"),
            ]);
            inbound.apply(&mut h);
            let app_tp = all(&h, "traceparent").remove(0);
            let mut call = headers(&[("traceparent", &app_tp)]);
            let client = outbound.apply(&mut call);
            assert_eq!(
                all(&call, "x-b3-spanid"),
                [client.span_id.to_string()],
                "mirror {mirror}"
            );
            assert_eq!(all(&call, "x-b3-traceid"), [T]);
        }
    }

    #[test]
    fn case_32_without_context_nothing_is_restored() {
        let (inbound, outbound) = legs(&["x-request-id"], true);
        let mut h = headers(&[
            ("traceparent", &format!("00-{T}-{P}-01")),
            ("x-request-id", "r"),
        ]);
        inbound.apply(&mut h);
        let mut call = HeaderMap::new();
        let client = outbound.apply(&mut call);
        assert_eq!(client.restored, Some(Restored::NoContext));
        assert_eq!(client.parent_id, None, "a new root");
        assert!(all(&call, "x-request-id").is_empty());
        let mut other = headers(&[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01",
        )]);
        assert_eq!(outbound.apply(&mut other).restored, Some(Restored::Miss));
    }

    #[test]
    fn case_33_single_in_flight_attributes_calls_without_context() {
        let (mut inbound, mut outbound) = legs(&["x-request-id"], true);
        let set = Arc::new(crate::trace_context::restore::InFlight::default());
        for leg in [&mut inbound, &mut outbound] {
            leg.restore.as_mut().unwrap().single_in_flight = Some(set.clone());
        }
        let mut h = headers(&[
            ("traceparent", &format!("00-{T}-{P}-01")),
            ("x-request-id", "r1"),
        ]);
        let server = inbound.apply(&mut h);

        // One inbound request in flight: the call joins its trace under the SERVER span.
        let active = |t, s| crate::trace_context::restore::Active {
            trace_id: t,
            span_id: s,
            sampled: true,
            random: false,
            debug: false,
        };
        let guard = set.enter(active(server.trace_id, server.span_id));
        let mut call = HeaderMap::new();
        let client = outbound.apply(&mut call);
        assert_eq!(client.restored, Some(Restored::SingleInFlight));
        assert_eq!(
            (client.trace_id, client.parent_id),
            (server.trace_id, Some(server.span_id))
        );
        assert_eq!(all(&call, "x-request-id"), ["r1"]);
        assert_eq!(
            all(&call, "traceparent"),
            [format!("00-{T}-{}-01", client.span_id)]
        );

        // Two in flight, or none: a new root, counted as ambiguous.
        let second = set.enter(active(TraceId(7), SpanId(7)));
        let mut call = HeaderMap::new();
        let client = outbound.apply(&mut call);
        assert_eq!(
            (client.restored, client.parent_id),
            (Some(Restored::Ambiguous), None)
        );
        drop((guard, second));
        let mut call = HeaderMap::new();
        assert_eq!(
            outbound.apply(&mut call).restored,
            Some(Restored::Ambiguous)
        );
        assert!(all(&call, "x-request-id").is_empty());
    }
}
