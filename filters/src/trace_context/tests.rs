//! Format precedence, `specs/trace-context.md` §2.4 and cases 21–22.

use http::{HeaderMap, HeaderValue};

use super::*;

const A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const B: &str = "0af7651916cd43dd8448eb211c80319c";
const P: &str = "00f067aa0ba902b7";

fn h(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn case_22_extract_order_decides() {
    let headers = h(&[
        ("traceparent", format!("00-{A}-{P}-01")),
        ("tracestate", "rojo=1".into()),
        ("b3", format!("{B}-{P}-1")),
    ]);
    let ex = extract(&headers, &Format::ALL);
    assert_eq!(ex.context.unwrap().trace_id.to_string(), A);
    assert_eq!(ex.context.unwrap().format, Format::TraceContext);
    let ex = extract(&headers, &[Format::B3, Format::TraceContext]);
    assert_eq!(ex.context.unwrap().trace_id.to_string(), B);
    assert_eq!(ex.outcomes[Format::B3 as usize], Some(Outcome::Valid));
    assert_eq!(
        ex.outcomes[Format::TraceContext as usize],
        Some(Outcome::Valid)
    );
    assert_eq!(ex.outcomes[Format::Jaeger as usize], None, "not tried");
}

#[test]
fn case_21_b3_single_beats_multi_and_an_invalid_multi_is_ignored() {
    let headers = h(&[
        ("b3", format!("{A}-{P}-1")),
        ("x-b3-traceid", B.into()),
        ("x-b3-spanid", P[1..].into()),
    ]);
    let ex = extract(&headers, &Format::ALL);
    assert_eq!(ex.context.unwrap().trace_id.to_string(), A);
    assert_eq!(
        ex.outcomes[Format::B3Multi as usize],
        Some(Outcome::Invalid)
    );
}

#[test]
fn an_invalid_traceparent_falls_through_to_the_next_format() {
    let headers = h(&[
        ("traceparent", format!("00-{}-{P}-01", A.to_uppercase())),
        ("uber-trace-id", format!("{B}:{P}:0:1")),
    ]);
    let ex = extract(&headers, &Format::ALL);
    assert_eq!(ex.context.unwrap().format, Format::Jaeger);
    assert_eq!(
        ex.outcomes[Format::TraceContext as usize],
        Some(Outcome::Invalid)
    );
}

#[test]
fn a_lone_b3_state_only_decides_sampling() {
    let ex = extract(&h(&[("b3", "0".into())]), &Format::ALL);
    assert_eq!(ex.context, None);
    assert_eq!(
        ex.sampling,
        Some(b3::Sampling {
            sampled: false,
            debug: false
        })
    );
    assert!(ex.outcomes.iter().all(|o| *o == Some(Outcome::Absent)));
}
