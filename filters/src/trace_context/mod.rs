//! Trace and request context: attache's own byte-level codecs for the W3C Trace Context and
//! Baggage headers (and, to come, B3 and Jaeger), per `specs/trace-context.md` §2.
//!
//! The OpenTelemetry SDK's propagators are deliberately not used: they read only a header's
//! first line, accept wrong lengths, truncate `tracestate` and clear the random flag. These
//! codecs validate exactly what the spec says, borrow the header bytes while parsing (no
//! allocation), keep an unchanged header's `HeaderValue` as it arrived, and write each header
//! with at most one allocation.
//!
//! In the request flow this sits second, after the connection limits: it extracts the incoming
//! context, and (to come) starts the SERVER or CLIENT span and rewrites the headers.

pub mod baggage;
pub mod traceparent;
pub mod tracestate;

pub use traceparent::{SpanId, TraceFlags, TraceId, TraceParent};

/// Spaces and horizontal tabs, the optional whitespace (OWS) of RFC 9110.
pub(crate) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `s` without leading and trailing SP/HTAB.
pub(crate) fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !is_ows(*b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(*b)).map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}
