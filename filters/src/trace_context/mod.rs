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

pub mod b3;
pub mod baggage;
pub mod builder;
pub mod ids;
pub mod jaeger;
pub mod metrics;
pub mod propagate;
pub mod restore;
pub mod traceparent;
pub mod tracestate;

use http::HeaderMap;

pub use traceparent::{SpanId, TraceFlags, TraceId, TraceParent};

/// The trace header formats attache reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// W3C `traceparent` (with `tracestate`).
    TraceContext,
    /// B3 single header `b3`.
    B3,
    /// B3 multi-header `x-b3-*`.
    B3Multi,
    /// Jaeger `uber-trace-id`.
    Jaeger,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::TraceContext,
        Format::B3,
        Format::B3Multi,
        Format::Jaeger,
    ];

    /// The headers the format reads and writes.
    pub fn headers(self) -> &'static [&'static str] {
        match self {
            Format::TraceContext => &[traceparent::TRACEPARENT, tracestate::TRACESTATE],
            Format::B3 => &[b3::B3],
            Format::B3Multi => &[
                b3::TRACE_ID,
                b3::SPAN_ID,
                b3::PARENT_SPAN_ID,
                b3::SAMPLED,
                b3::FLAGS,
            ],
            Format::Jaeger => &[jaeger::UBER_TRACE_ID],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::TraceContext => "tracecontext",
            Format::B3 => "b3",
            Format::B3Multi => "b3multi",
            Format::Jaeger => "jaeger",
        }
    }
}

/// A valid remote context, whatever format it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub trace_id: TraceId,
    /// The caller's span: the parent of attache's span on this leg.
    pub parent_id: SpanId,
    /// The caller's sampling decision; `None` defers it to attache.
    pub sampled: Option<bool>,
    /// B3 `d`, `x-b3-flags: 1` or Jaeger flag `0x02`: force sampling; kept with the request.
    pub debug: bool,
    /// W3C Level 2 random flag: the trace id's right 7 bytes are random.
    pub random: bool,
    pub format: Format,
}

/// What each format held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Absent,
    Invalid,
    Valid,
}

/// The result of reading every configured format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extraction {
    /// The first valid context in `extract` order.
    pub context: Option<Context>,
    /// A lone `b3: {state}` decides the sampling of the new trace attache starts.
    pub sampling: Option<b3::Sampling>,
    /// What each tried format held, indexed by `Format as usize`; `None` if not tried.
    pub outcomes: [Option<Outcome>; 4],
}

/// Which formats have at least one of their headers in `headers`, as bits indexed by
/// `Format as usize`: one pass over the names, so that absent formats cost no lookups.
pub fn present(headers: &HeaderMap) -> u8 {
    let mut bits = 0u8;
    for name in headers.keys() {
        let format = match name.as_str() {
            traceparent::TRACEPARENT | tracestate::TRACESTATE => Format::TraceContext,
            b3::B3 => Format::B3,
            b3::TRACE_ID | b3::SPAN_ID | b3::PARENT_SPAN_ID | b3::SAMPLED | b3::FLAGS => {
                Format::B3Multi
            }
            jaeger::UBER_TRACE_ID => Format::Jaeger,
            _ => continue,
        };
        bits |= 1 << format as u8;
    }
    bits
}

/// Tries the formats in `order` (§2.4); the first valid context wins.
pub fn extract(headers: &HeaderMap, order: &[Format]) -> Extraction {
    extract_present(headers, order, present(headers))
}

/// As [`extract`], given [`present`]'s answer.
pub fn extract_present(headers: &HeaderMap, order: &[Format], present: u8) -> Extraction {
    let mut ex = Extraction::default();
    for &format in order {
        if present & (1 << format as u8) == 0 {
            ex.outcomes[format as usize] = Some(Outcome::Absent);
            continue;
        }
        let found: Option<Option<Context>> = match format {
            Format::TraceContext => traceparent::extract(headers).map(|r| {
                r.ok().map(|p| Context {
                    trace_id: p.trace_id,
                    parent_id: p.parent_id,
                    sampled: Some(p.flags.sampled()),
                    debug: false,
                    random: p.flags.random(),
                    format,
                })
            }),
            Format::B3 => b3::extract_single(headers).map(|single| match single {
                Some(b3::Single::Context(c)) => Some(c),
                Some(b3::Single::Sampling(s)) => {
                    ex.sampling.get_or_insert(s);
                    None
                }
                None => None,
            }),
            Format::B3Multi => b3::extract_multi(headers),
            Format::Jaeger => jaeger::extract(headers),
        };
        let outcome = match found {
            None => Outcome::Absent,
            // A lone b3 sampling state is valid, but carries no context.
            Some(None) if format == Format::B3 && ex.sampling.is_some() => Outcome::Absent,
            Some(None) => Outcome::Invalid,
            Some(Some(c)) => {
                ex.context.get_or_insert(c);
                Outcome::Valid
            }
        };
        ex.outcomes[format as usize] = Some(outcome);
    }
    ex
}

#[cfg(test)]
mod tests;

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
