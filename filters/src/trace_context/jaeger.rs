//! Jaeger's `uber-trace-id: {trace}:{span}:{parent}:{flags}`, `specs/trace-context.md` §2.4.
//!
//! `%3A` is accepted for `:`. Ids are up to 32 (trace) and 16 (span) hex digits of either
//! case, left-padded and lowercased, not zero; the parent may be zero. Flags are 1–2 hex
//! digits: `0x01` sampled, `0x02` debug.

use http::{HeaderMap, HeaderValue};

use super::{Context, Format, SpanId, TraceId};
use crate::codec::hex;

pub const UBER_TRACE_ID: &str = "uber-trace-id";

/// Reads `uber-trace-id`: `None` when absent, `Some(None)` when invalid.
pub fn extract(headers: &HeaderMap) -> Option<Option<Context>> {
    let v = headers.get(UBER_TRACE_ID)?;
    Some(parse(super::trim_ows(v.as_bytes())))
}

pub fn parse(v: &[u8]) -> Option<Context> {
    // Split on `:` or its percent-encoding, without allocating.
    let mut fields: [&[u8]; 4] = [&[]; 4];
    let mut n = 0;
    let mut start = 0;
    let mut i = 0;
    while i <= v.len() {
        let sep = if i == v.len() {
            Some(0)
        } else if v[i] == b':' {
            Some(1)
        } else if v[i..].len() >= 3
            && v[i] == b'%'
            && v[i + 1] == b'3'
            && v[i + 2].eq_ignore_ascii_case(&b'a')
        {
            Some(3)
        } else {
            None
        };
        if let Some(len) = sep {
            if n == 4 {
                return None;
            }
            fields[n] = &v[start..i];
            n += 1;
            i += len.max(1);
            start = i;
        } else {
            i += 1;
        }
    }
    if n != 4 {
        return None;
    }
    let trace_id = hex::any_case_u128(fields[0]).filter(|t| *t != 0)?;
    let span = hex::any_case_u64(fields[1]).filter(|s| *s != 0)?;
    hex::any_case_u64(fields[2])?;
    if !matches!(fields[3].len(), 1 | 2) {
        return None;
    }
    let flags = hex::any_case_u64(fields[3])? as u8;
    Some(Context {
        trace_id: TraceId(trace_id),
        parent_id: SpanId(span),
        sampled: Some(flags & 0x01 != 0 || flags & 0x02 != 0),
        debug: flags & 0x02 != 0,
        random: false,
        format: Format::Jaeger,
    })
}

/// `T:S:0:{1,0,3}`; T is 16 hex digits when its upper half is zero.
pub fn write(trace_id: TraceId, span_id: SpanId, sampled: bool, debug: bool) -> HeaderValue {
    let mut buf = [0u8; 32 + 1 + 16 + 4];
    let n = hex::put_ids(&mut buf, trace_id.0, b':', span_id.0);
    buf[n..n + 3].copy_from_slice(b":0:");
    buf[n + 3] = if debug {
        b'3'
    } else if sampled {
        b'1'
    } else {
        b'0'
    };
    HeaderValue::from_bytes(&buf[..n + 4]).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const P: &str = "00f067aa0ba902b7";

    #[test]
    fn case_23_plain_and_percent_encoded() {
        let c = parse(format!("{T}:{P}:0:1").as_bytes()).unwrap();
        assert_eq!(
            (c.trace_id.to_string(), c.parent_id.to_string()),
            (T.to_owned(), P.to_owned())
        );
        assert_eq!((c.sampled, c.debug), (Some(true), false));
        let c = parse(b"abc%3Adef%3A0%3A3").unwrap();
        assert_eq!(c.trace_id.to_string(), format!("{}abc", "0".repeat(29)));
        assert_eq!(c.parent_id.to_string(), format!("{}def", "0".repeat(13)));
        assert_eq!((c.sampled, c.debug), (Some(true), true));
        assert_eq!(
            write(c.trace_id, SpanId(0x10), true, true),
            "0000000000000abc:0000000000000010:0:3"
        );
        assert_eq!(
            parse(format!("{}:{P}:0:0", T.to_uppercase()).as_bytes())
                .unwrap()
                .sampled,
            Some(false)
        );
    }

    #[test]
    fn invalid_values() {
        for bad in [
            format!("0:{P}:0:1"),
            format!("{T}:0:0:1"),
            format!("{T}:{P}:0"),
            format!("{T}:{P}:0:1:9"),
            format!("{T}:{P}:0:100"),
            format!("{T}0:{P}:0:1"),
            format!("{T}:{P}0:0:1"),
            format!("{T}:{P}:0:"),
            format!("{T}:{P}:xyz:1"),
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
    }
}
