//! The trace headers attache removes and writes, by format.

use http::{HeaderMap, HeaderName};

use super::TraceCtx;
use crate::trace_context::{Format, TraceFlags, b3, jaeger, traceparent, tracestate};

/// Removes every header of `format`.
pub(super) fn remove(headers: &mut HeaderMap, format: Format) {
    // Constant names: a `&str` key would be parsed on every removal.
    const B3_MULTI: [HeaderName; 5] = [
        HeaderName::from_static(b3::TRACE_ID),
        HeaderName::from_static(b3::SPAN_ID),
        HeaderName::from_static(b3::PARENT_SPAN_ID),
        HeaderName::from_static(b3::SAMPLED),
        HeaderName::from_static(b3::FLAGS),
    ];
    let names: &[HeaderName] = match format {
        Format::TraceContext => &[TRACEPARENT, TRACESTATE],
        Format::B3 => &[B3],
        Format::B3Multi => &B3_MULTI,
        Format::Jaeger => &[UBER_TRACE_ID],
    };
    for name in names {
        headers.remove(name);
    }
}

// Names attache writes, as constants: inserting with a `&str` key would copy the name.
const TRACEPARENT: HeaderName = HeaderName::from_static(traceparent::TRACEPARENT);
const TRACESTATE: HeaderName = HeaderName::from_static(tracestate::TRACESTATE);
const B3: HeaderName = HeaderName::from_static(b3::B3);
const UBER_TRACE_ID: HeaderName = HeaderName::from_static(jaeger::UBER_TRACE_ID);

/// Writes `format`'s headers for `ctx` (attache's span as the parent), replacing any.
pub(super) fn write(headers: &mut HeaderMap, format: Format, ctx: &TraceCtx) {
    match format {
        Format::TraceContext => {
            let flags = TraceFlags::default()
                .with_sampled(ctx.sampled)
                .with_random(ctx.random);
            headers.insert(
                TRACEPARENT,
                traceparent::write(ctx.trace_id, ctx.span_id, flags),
            );
            if let Some(ts) = &ctx.tracestate {
                headers.insert(TRACESTATE, ts.clone());
            }
        }
        Format::B3 => {
            headers.insert(
                B3,
                b3::write_single(ctx.trace_id, ctx.span_id, ctx.sampled, ctx.debug),
            );
        }
        Format::B3Multi => {
            b3::write_multi(headers, ctx.trace_id, ctx.span_id, ctx.sampled, ctx.debug)
        }
        Format::Jaeger => {
            headers.insert(
                UBER_TRACE_ID,
                jaeger::write(ctx.trace_id, ctx.span_id, ctx.sampled, ctx.debug),
            );
        }
    }
}
