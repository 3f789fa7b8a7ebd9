//! attache's trace-context codecs as an OpenTelemetry [`TextMapPropagator`], so that a Rust
//! service using the `opentelemetry` API propagates exactly as its attache sidecar does.
//!
//! The stock propagators read only the first line of a header, so a request with two
//! `traceparent` lines continues the first instead of starting a new trace, and a `tracestate`
//! split over two lines loses the second (W3C Trace Context test suite:
//! `test_traceparent_duplicated`, `test_tracestate_multiple_headers_different_keys`); they also
//! clear the Level 2 `random` flag. [`AttachePropagator`] reads every line through the
//! extractor's `get_all`, validates each format as attache's proxy does (`specs/trace-context.md`
//! §2), and tries the formats in the order given.
//!
//! ```
//! use attache_filters::otel::AttachePropagator;
//! use attache_filters::trace_context::Format;
//! use opentelemetry::propagation::TextMapPropagator;
//! use opentelemetry::trace::TraceContextExt;
//! use opentelemetry_http::{HeaderExtractor, HeaderInjector};
//!
//! opentelemetry::global::set_text_map_propagator(
//!     AttachePropagator::new().inject([Format::TraceContext, Format::B3]),
//! );
//! let mut incoming = http::HeaderMap::new();
//! incoming.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
//! let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(&incoming)));
//! assert!(cx.span().span_context().is_sampled());
//!
//! let mut outgoing = http::HeaderMap::new();
//! opentelemetry::global::get_text_map_propagator(|p| {
//!     p.inject_context(&cx, &mut HeaderInjector(&mut outgoing))
//! });
//! assert_eq!(outgoing["b3"], "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1");
//! ```

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, TraceContextExt, TraceFlags as OtelFlags,
    TraceId as OtelTraceId, TraceState as OtelState,
};

use crate::trace_context::{
    Format, SpanId, TraceFlags, TraceId, b3, extract, jaeger, traceparent, tracestate,
};

/// W3C, B3 (single and multi) and Jaeger through attache's codecs. By default every format is
/// read (W3C first) and W3C alone is written, with `tracestate` up to 4096 bytes.
#[derive(Debug, Clone)]
pub struct AttachePropagator {
    extract: Vec<Format>,
    inject: Vec<Format>,
    tracestate_max_len: usize,
    /// The header names of both lists, for [`TextMapPropagator::fields`].
    fields: Vec<String>,
}

impl Default for AttachePropagator {
    fn default() -> Self {
        Self::new()
    }
}

impl AttachePropagator {
    pub fn new() -> Self {
        Self {
            extract: Format::ALL.to_vec(),
            inject: vec![Format::TraceContext],
            tracestate_max_len: 4096,
            fields: Vec::new(),
        }
        .with_fields()
    }

    /// The formats read, in order of preference: the first valid one wins.
    pub fn extract(mut self, formats: impl IntoIterator<Item = Format>) -> Self {
        self.extract = formats.into_iter().collect();
        self.with_fields()
    }

    /// The formats written.
    pub fn inject(mut self, formats: impl IntoIterator<Item = Format>) -> Self {
        self.inject = formats.into_iter().collect();
        self.with_fields()
    }

    fn with_fields(mut self) -> Self {
        let mut fields: Vec<String> = Vec::new();
        for f in self.extract.iter().chain(&self.inject) {
            for name in f.headers() {
                if !fields.iter().any(|n| n == name) {
                    fields.push((*name).to_owned());
                }
            }
        }
        self.fields = fields;
        self
    }

    /// The request's trace headers, every line of each, as attache's codecs read them.
    fn headers(&self, extractor: &dyn Extractor) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for name in self.extract.iter().flat_map(|f| f.headers()) {
            for line in extractor.get_all(name).unwrap_or_default() {
                if let Ok(v) = HeaderValue::from_str(line) {
                    headers.append(HeaderName::from_static(name), v);
                }
            }
        }
        headers
    }
}

impl TextMapPropagator for AttachePropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let trace_id = TraceId(u128::from_be_bytes(sc.trace_id().to_bytes()));
        let span_id = SpanId(u64::from_be_bytes(sc.span_id().to_bytes()));
        let sampled = sc.is_sampled();
        let mut set = |name: &str, v: HeaderValue| {
            if let Ok(s) = v.to_str() {
                injector.set(name, s.to_owned());
            }
        };
        for format in &self.inject {
            match format {
                Format::TraceContext => {
                    let flags = TraceFlags::new(sc.trace_flags().to_u8() & 0x03);
                    set(
                        traceparent::TRACEPARENT,
                        traceparent::write(trace_id, span_id, flags),
                    );
                    let state = sc.trace_state().header();
                    if let Ok(v) = HeaderValue::from_str(&state)
                        && !state.is_empty()
                    {
                        set(tracestate::TRACESTATE, v);
                    }
                }
                Format::B3 => set(b3::B3, b3::write_single(trace_id, span_id, sampled, false)),
                Format::B3Multi => {
                    let mut multi = HeaderMap::new();
                    b3::write_multi(&mut multi, trace_id, span_id, sampled, false);
                    for (name, v) in multi {
                        if let Some(name) = name {
                            set(name.as_str(), v);
                        }
                    }
                }
                Format::Jaeger => set(
                    jaeger::UBER_TRACE_ID,
                    jaeger::write(trace_id, span_id, sampled, false),
                ),
            }
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let headers = self.headers(extractor);
        let Some(c) = extract(&headers, &self.extract).context else {
            return cx.clone();
        };
        // A deferred decision (B3 without a sampling state) reads as not sampled: the
        // OpenTelemetry API has no "undecided", and the service's sampler decides its own span.
        let mut bits = 0u8;
        if c.sampled == Some(true) || c.debug {
            bits |= TraceFlags::SAMPLED;
        }
        if c.random {
            bits |= TraceFlags::RANDOM;
        }
        let state = match c.format {
            Format::TraceContext => tracestate::extract(&headers, self.tracestate_max_len)
                .ok()
                .and_then(|t| t.value)
                .and_then(|v| {
                    let s = v.to_str().ok()?;
                    OtelState::from_key_value(s.split(',').filter_map(|m| m.split_once('='))).ok()
                })
                .unwrap_or_default(),
            _ => OtelState::default(),
        };
        cx.with_remote_span_context(SpanContext::new(
            OtelTraceId::from_bytes(c.trace_id.0.to_be_bytes()),
            OtelSpanId::from_bytes(c.parent_id.0.to_be_bytes()),
            OtelFlags::new(bits),
            true,
            state,
        ))
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}
