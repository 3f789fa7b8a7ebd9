//! B3 (openzipkin/b3-propagation), single header `b3` and multi-header `x-b3-*`,
//! `specs/trace-context.md` §2.4.
//!
//! - `b3: {trace}-{span}[-{state}[-{parent}]]`, or a lone `{state}` that only decides a new
//!   trace's sampling.
//! - `x-b3-traceid` and `x-b3-spanid` are required; `x-b3-sampled` is `1`/`0`/`true`/`false`;
//!   `x-b3-flags: 1` is debug.
//!
//! Trace ids are 16 (left-padded) or 32 lowercase hex digits, span ids 16, none zero; parent
//! ids are checked and discarded. Each header's first line wins.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Context, Format, SpanId, TraceId};
use crate::codec::hex;

pub const B3: &str = "b3";
pub const TRACE_ID: &str = "x-b3-traceid";
pub const SPAN_ID: &str = "x-b3-spanid";
pub const PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const SAMPLED: &str = "x-b3-sampled";
pub const FLAGS: &str = "x-b3-flags";

/// A sampling decision without a context (`b3: 0`, `b3: 1`, `b3: d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampling {
    pub sampled: bool,
    pub debug: bool,
}

/// What a `b3` header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Single {
    Context(Context),
    Sampling(Sampling),
}

fn first<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get(name).map(|v| super::trim_ows(v.as_bytes()))
}

fn trace_id(s: &[u8]) -> Option<TraceId> {
    let id = match s.len() {
        16 => u128::from(hex::lower_u64(s)?),
        32 => hex::lower_u128(s)?,
        _ => return None,
    };
    (id != 0).then_some(TraceId(id))
}

fn span_id(s: &[u8]) -> Option<SpanId> {
    hex::lower_u64(s).filter(|id| *id != 0).map(SpanId)
}

fn state(s: &[u8]) -> Option<Sampling> {
    match s {
        b"1" => Some(Sampling {
            sampled: true,
            debug: false,
        }),
        b"0" => Some(Sampling {
            sampled: false,
            debug: false,
        }),
        b"d" => Some(Sampling {
            sampled: true,
            debug: true,
        }),
        _ => None,
    }
}

/// Reads the single `b3` header: `None` when absent, `Some(None)` when invalid.
pub fn extract_single(headers: &HeaderMap) -> Option<Option<Single>> {
    let v = first(headers, B3)?;
    Some(parse_single(v))
}

pub fn parse_single(v: &[u8]) -> Option<Single> {
    let mut parts = v.split(|b| *b == b'-');
    let a = parts.next()?;
    let Some(b) = parts.next() else {
        return state(a).map(Single::Sampling);
    };
    let trace_id = trace_id(a)?;
    let parent_id = span_id(b)?;
    let sampling = match parts.next() {
        Some(s) => Some(state(s)?),
        None => None,
    };
    if let Some(parent) = parts.next() {
        span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Single::Context(Context {
        trace_id,
        parent_id,
        sampled: sampling.map(|s| s.sampled),
        debug: sampling.is_some_and(|s| s.debug),
        random: false,
        format: Format::B3,
    }))
}

/// Reads the `x-b3-*` headers: `None` when neither id header is present, `Some(None)` when
/// they are present but invalid.
pub fn extract_multi(headers: &HeaderMap) -> Option<Option<Context>> {
    let (t, s) = (first(headers, TRACE_ID), first(headers, SPAN_ID));
    if t.is_none() && s.is_none() {
        return None;
    }
    let (Some(t), Some(s)) = (t, s) else {
        // One id without the other is present but invalid.
        return Some(None);
    };
    Some(parse_multi(headers, t, s))
}

fn parse_multi(headers: &HeaderMap, t: &[u8], s: &[u8]) -> Option<Context> {
    let trace_id = trace_id(t)?;
    let parent_id = span_id(s)?;
    if let Some(p) = first(headers, PARENT_SPAN_ID) {
        span_id(p)?;
    }
    let debug = match first(headers, FLAGS) {
        Some(b"1") => true,
        Some(b"0") | None => false,
        Some(_) => return None,
    };
    let sampled = match first(headers, SAMPLED) {
        Some(b"1" | b"true") => Some(true),
        Some(b"0" | b"false") => Some(false),
        None => None,
        Some(_) => return None,
    };
    Some(Context {
        trace_id,
        parent_id,
        sampled: if debug { Some(true) } else { sampled },
        debug,
        random: false,
        format: Format::B3Multi,
    })
}

/// `T-S-{1,0,d}`; T is 16 hex digits when its upper half is zero, so 64-bit ids round-trip.
pub fn write_single(trace_id: TraceId, span_id: SpanId, sampled: bool, debug: bool) -> HeaderValue {
    let mut buf = [0u8; 32 + 1 + 16 + 2];
    let n = hex::put_ids(&mut buf, trace_id.0, b'-', span_id.0);
    buf[n] = b'-';
    buf[n + 1] = if debug {
        b'd'
    } else if sampled {
        b'1'
    } else {
        b'0'
    };
    HeaderValue::from_bytes(&buf[..n + 2]).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The `x-b3-*` headers: trace id, span id, and `x-b3-sampled` or (debug) `x-b3-flags: 1`.
/// `x-b3-parentspanid` is never written.
pub fn write_multi(
    headers: &mut HeaderMap,
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    debug: bool,
) {
    let mut buf = [0u8; 32];
    let n = hex::put_trace_id(&mut buf, trace_id.0);
    if let Ok(v) = HeaderValue::from_bytes(&buf[..n]) {
        headers.insert(HeaderName::from_static(TRACE_ID), v);
    }
    hex::put(&mut buf[..16], &span_id.0.to_be_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&buf[..16]) {
        headers.insert(HeaderName::from_static(SPAN_ID), v);
    }
    if debug {
        headers.insert(
            HeaderName::from_static(FLAGS),
            HeaderValue::from_static("1"),
        );
    } else {
        let v = HeaderValue::from_static(if sampled { "1" } else { "0" });
        headers.insert(HeaderName::from_static(SAMPLED), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const P: &str = "00f067aa0ba902b7";
    const H: &str = "a3ce929d0e0e4736";

    fn single(v: &str) -> Option<Single> {
        parse_single(v.as_bytes())
    }

    fn ctx(s: Option<Single>) -> Context {
        match s {
            Some(Single::Context(c)) => c,
            other => panic!("not a context: {other:?}"),
        }
    }

    #[test]
    fn case_17_single_header_with_sampling() {
        let c = ctx(single(&format!("{T}-{P}-1")));
        assert_eq!(
            (c.trace_id.to_string(), c.parent_id.to_string()),
            (T.to_owned(), P.to_owned())
        );
        assert_eq!((c.sampled, c.debug), (Some(true), false));
        let c = ctx(single(&format!("{T}-{P}")));
        assert_eq!(c.sampled, None, "absent state defers");
        let c = ctx(single(&format!("{T}-{P}-0-{P}")));
        assert_eq!(c.sampled, Some(false));
    }

    #[test]
    fn case_18_64_bit_trace_ids_are_left_padded_and_debug_samples() {
        let c = ctx(single(&format!("{H}-{P}-d")));
        assert_eq!(c.trace_id.to_string(), format!("{}{H}", "0".repeat(16)));
        assert_eq!((c.sampled, c.debug), (Some(true), true));
        // Written back as 16 digits so the 64-bit id round-trips.
        let v = write_single(c.trace_id, SpanId(0x1122334455667788), true, true);
        assert_eq!(v, format!("{H}-1122334455667788-d").as_str());
    }

    #[test]
    fn single_writes_128_bit_ids_and_each_state() {
        let t = TraceId(u128::from_str_radix(T, 16).unwrap());
        let s = SpanId(u64::from_str_radix(P, 16).unwrap());
        assert_eq!(
            write_single(t, s, true, false),
            format!("{T}-{P}-1").as_str()
        );
        assert_eq!(
            write_single(t, s, false, false),
            format!("{T}-{P}-0").as_str()
        );
        assert_eq!(
            write_single(t, s, false, true),
            format!("{T}-{P}-d").as_str()
        );
    }

    #[test]
    fn case_19_a_lone_state_is_only_a_sampling_decision() {
        assert_eq!(
            single("0"),
            Some(Single::Sampling(Sampling {
                sampled: false,
                debug: false
            }))
        );
        assert_eq!(
            single("d"),
            Some(Single::Sampling(Sampling {
                sampled: true,
                debug: true
            }))
        );
        assert_eq!(single("2"), None);
    }

    #[test]
    fn invalid_single_values() {
        for bad in [
            format!("{T}-{}", "0".repeat(16)),
            format!("{}-{P}-1", "0".repeat(32)),
            format!("{}-{P}-1", &T[..20]),
            format!("{T}-{P}-x"),
            format!("{T}-{P}-1-{}", &P[..15]),
            format!("{T}-{P}-1-{P}-extra"),
            format!("{}-{P}-1", T.to_uppercase()),
        ] {
            assert_eq!(single(&bad), None, "{bad}");
        }
    }

    fn multi(pairs: &[(&'static str, &str)]) -> Option<Option<Context>> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        extract_multi(&h)
    }

    #[test]
    fn case_20_multi_headers() {
        let c = multi(&[
            (TRACE_ID, T),
            (SPAN_ID, P),
            (PARENT_SPAN_ID, H),
            (SAMPLED, "true"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.trace_id.to_string(), c.parent_id.to_string(), c.sampled),
            (T.to_owned(), P.to_owned(), Some(true))
        );
        let c = multi(&[(TRACE_ID, T), (SPAN_ID, P), (FLAGS, "1")])
            .unwrap()
            .unwrap();
        assert!(c.debug && c.sampled == Some(true));
        assert_eq!(multi(&[(SAMPLED, "1")]), None, "no ids: absent");
    }

    #[test]
    fn case_21_a_15_digit_span_id_is_invalid() {
        assert_eq!(multi(&[(TRACE_ID, T), (SPAN_ID, &P[1..])]), Some(None));
        assert_eq!(multi(&[(TRACE_ID, T)]), Some(None));
        assert_eq!(
            multi(&[(TRACE_ID, T), (SPAN_ID, P), (SAMPLED, "yes")]),
            Some(None)
        );
    }

    #[test]
    fn multi_writes_no_parent() {
        let mut h = HeaderMap::new();
        write_multi(
            &mut h,
            TraceId(u128::from_str_radix(T, 16).unwrap()),
            SpanId(0x42),
            true,
            false,
        );
        assert_eq!(h[TRACE_ID], T);
        assert_eq!(h[SPAN_ID], "0000000000000042");
        assert_eq!(h[SAMPLED], "1");
        assert!(!h.contains_key(PARENT_SPAN_ID) && !h.contains_key(FLAGS));
    }
}
