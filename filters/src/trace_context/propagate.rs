//! The propagation step of both legs, `specs/trace-context.md` §3–§4 (spans to come):
//!
//! 1. read the formats in `extract` order; a valid context makes attache's span its child
//!    (keeping the trace id and the random flag), otherwise attache starts a new trace (random
//!    trace id, random flag set) and drops any `tracestate`;
//! 2. remove every trace header of the formats in `extract` or `inject`, then write, once
//!    each, the `inject` formats and (with `mirror`) those that arrived valid, with attache's
//!    span as the parent: replaced, never appended;
//! 3. the span id is fresh even when unsampled, so app logs correlate;
//! 4. validate and limit `baggage` when it is in `inject` (else it passes untouched);
//! 5. add a request id where asked.
//!
//! The decision is left in the request's extensions as a [`TraceCtx`] for the layers below.
//!
//! On the inbound leg with restoration on, what is recorded is what the app receives: the
//! propagation step leaves a [`PendingRecord`] in the request's extensions, and
//! [`RecordLayer`], placed just before the request leaves for the app, stores the request's
//! headers as they are then. Steps between the two (the flags step removing an untrusted
//! client's `flag.*` baggage members and adding attache's own decisions) are thereby in the
//! record, and a forged member can never come back through restoration on the app's calls.

mod headers;
mod layer;
mod mapping;
mod restoration;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::ids::IdGenerator;
use super::restore::{InFlight, Table};
use super::{Format, Outcome, SpanId, TraceId, baggage, tracestate};
use baggage::BAGGAGE_HEADER as BAGGAGE;
use headers::{remove, write};
pub use layer::{Propagation, PropagationFuture, PropagationLayer};
pub use restoration::{PendingRecord, RecordForwarded, RecordLayer};

/// How one leg propagates context.
#[derive(Clone)]
pub struct Settings {
    pub extract: Vec<Format>,
    /// Trace formats written (whatever arrived).
    pub inject: Vec<Format>,
    /// Validate, limit and forward `baggage`.
    pub inject_baggage: bool,
    pub mirror: bool,
    pub tracestate_max_len: usize,
    pub baggage: baggage::Limits,
    /// Header to fill with a UUID v4 when missing.
    pub request_id: Option<HeaderName>,
    /// Sampling ratio for new traces and deferred decisions.
    pub ratio: f64,
    /// Follow the caller's sampling decision (else `ratio` decides every trace).
    pub parent_based: bool,
    /// Headers copied into baggage members (`header`, `key`) when the key is absent.
    pub to_baggage: Vec<(HeaderName, String)>,
    /// Baggage members copied into headers (`key`, `header`) when the header is absent;
    /// inbound only.
    pub from_baggage: Vec<(String, HeaderName)>,
    /// Context restoration (§5): the inbound leg records, the outbound leg restores.
    pub restore: Option<Restore>,
    pub ids: Arc<dyn IdGenerator>,
}

/// Context restoration on one leg.
#[derive(Clone)]
pub struct Restore {
    pub table: Arc<Table>,
    pub leg: RestoreLeg,
    /// Headers recorded inbound: exact names, or prefixes written with a trailing `*`.
    pub headers: Vec<HeaderPattern>,
    /// Record and restore baggage.
    pub baggage: bool,
    /// With `correlation: single_in_flight`: the inbound requests in flight (shared by both
    /// legs). The inbound leg registers; the outbound leg attributes context-less calls.
    pub single_in_flight: Option<Arc<InFlight>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreLeg {
    /// Inbound: record what was forwarded to the app.
    Record,
    /// Outbound: add back what the app's call lacks.
    Apply,
}

/// A header name, or a prefix (`x-b3-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderPattern {
    Exact(HeaderName),
    Prefix(String),
}

impl HeaderPattern {
    pub fn parse(s: &str) -> Option<Self> {
        match s.strip_suffix('*') {
            Some(prefix) => Some(Self::Prefix(prefix.to_ascii_lowercase())),
            None => HeaderName::from_bytes(s.as_bytes()).ok().map(Self::Exact),
        }
    }

    fn matches(&self, name: &HeaderName) -> bool {
        match self {
            Self::Exact(n) => n == name,
            Self::Prefix(p) => name.as_str().starts_with(p.as_str()),
        }
    }

    /// As [`HeaderPattern::matches`], for a lowercase name.
    fn matches_str(&self, name: &str) -> bool {
        match self {
            Self::Exact(n) => n.as_str() == name,
            Self::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// What restoration did on an outbound request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    Hit,
    Miss,
    /// The app's call carried no trace context: nothing tells which inbound request caused it.
    NoContext,
    /// No context, but exactly one inbound request was in flight: attributed to it.
    SingleInFlight,
    /// No context and zero or several inbound requests in flight: a new trace.
    Ambiguous,
}

/// The trace decision for one request, on one leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: TraceId,
    /// attache's span on this leg: the parent-id the next hop sees.
    pub span_id: SpanId,
    /// The caller's span, when a context was continued.
    pub parent_id: Option<SpanId>,
    /// The format the continued context came in.
    pub format: Option<Format>,
    pub sampled: bool,
    pub debug: bool,
    pub random: bool,
    /// The `tracestate` forwarded, if any.
    pub tracestate: Option<HeaderValue>,
    /// Whether `tracestate` or `baggage` arrived invalid and was dropped.
    pub dropped_tracestate: bool,
    pub dropped_baggage: bool,
    /// Baggage members dropped to fit the limits.
    pub baggage_members_dropped: usize,
    /// `tracestate` members dropped to fit `tracestate_max_len`.
    pub tracestate_members_dropped: usize,
    /// What each format held (see [`super::Extraction::outcomes`]).
    pub outcomes: [Option<Outcome>; 4],
    /// Outbound with restoration on: what it found.
    pub restored: Option<Restored>,
    /// The request id forwarded (inbound, with `request_id` configured), for the access log.
    pub request_id: Option<RequestId>,
}

/// A request id as forwarded: the caller's, or one attache generated. A generated id is kept
/// as text here so that sharing it with the header costs no second allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestId {
    Arrived(HeaderValue),
    Generated([u8; 36]),
}

impl RequestId {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            RequestId::Arrived(v) => v.to_str().ok(),
            RequestId::Generated(b) => std::str::from_utf8(b).ok(),
        }
    }
}

impl Settings {
    /// The defaults of `specs/trace-context.md` §1: read every format, write `tracecontext` and
    /// `baggage`, mirror, sample everything; no request id, mappings or restoration.
    pub fn new(ids: Arc<dyn IdGenerator>) -> Self {
        Self {
            extract: Format::ALL.to_vec(),
            inject: vec![Format::TraceContext],
            inject_baggage: true,
            mirror: true,
            tracestate_max_len: 4096,
            baggage: baggage::Limits::default(),
            request_id: None,
            ratio: 1.0,
            parent_based: true,
            to_baggage: Vec::new(),
            from_baggage: Vec::new(),
            restore: None,
            ids,
        }
    }

    /// Samples a trace id at `ratio`, from its rightmost 56 bits (random in a W3C Level 2
    /// trace id), so every attache seeing the trace decides alike.
    pub fn ratio_sampled(&self, trace_id: TraceId) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        if self.ratio <= 0.0 {
            return false;
        }
        let r = (trace_id.0 as u64) & ((1 << 56) - 1);
        let threshold = ((1.0 - self.ratio) * (1u64 << 56) as f64) as u64;
        r >= threshold
    }

    /// Applies the propagation rules to a request's headers and, on a recording leg, records
    /// the headers as they are now (a stack records later, with [`RecordLayer`]).
    pub fn apply(&self, headers: &mut HeaderMap) -> TraceCtx {
        let ctx = self.propagate(headers);
        if let Some(r) = self.recording() {
            self.record(r, headers, &ctx);
        }
        ctx
    }

    /// The restoration settings of a leg that records (inbound).
    fn recording(&self) -> Option<&Restore> {
        self.restore
            .as_ref()
            .filter(|r| r.leg == RestoreLeg::Record)
    }

    /// The propagation rules, without recording.
    fn propagate(&self, headers: &mut HeaderMap) -> TraceCtx {
        let ex = super::extract_present(headers, &self.extract, super::present(headers));
        let mut ctx = self.decide(&ex);
        if ctx.format == Some(Format::TraceContext) {
            match tracestate::extract(headers, self.tracestate_max_len) {
                Ok(ts) => {
                    ctx.tracestate = ts.value;
                    ctx.tracestate_members_dropped = ts.dropped;
                }
                Err(_) => ctx.dropped_tracestate = true,
            }
        }
        if self.inject_baggage {
            self.limit_baggage(headers, &mut ctx);
            self.map_context(headers, &mut ctx);
        }
        let mut restored_formats = [false; 4];
        if let Some(r) = self.restore.as_ref().filter(|r| r.leg == RestoreLeg::Apply) {
            self.restore_into(r, headers, &mut ctx, &mut restored_formats);
        }
        self.rewrite(headers, &ctx, restored_formats);
        if let Some(name) = &self.request_id {
            ctx.request_id = Some(match headers.get(name) {
                Some(v) => RequestId::Arrived(v.clone()),
                None => {
                    let text = self.ids.request_id_text();
                    if let Ok(v) = HeaderValue::from_bytes(&text) {
                        headers.insert(name.clone(), v);
                    }
                    RequestId::Generated(text)
                }
            });
        }
        ctx
    }

    /// A valid context is continued; without one a new trace starts, sampled by a lone B3
    /// state if one came, else by the ratio. The span id is always fresh.
    fn decide(&self, ex: &super::Extraction) -> TraceCtx {
        let span_id = self.ids.span_id();
        let (trace_id, parent_id, format, sampled, debug, random) = match &ex.context {
            Some(c) => (
                c.trace_id,
                Some(c.parent_id),
                Some(c.format),
                c.debug
                    || match c.sampled {
                        Some(sampled) if self.parent_based => sampled,
                        _ => self.ratio_sampled(c.trace_id),
                    },
                c.debug,
                c.random,
            ),
            None => {
                let trace_id = self.ids.trace_id();
                let sampled = ex
                    .sampling
                    .map_or_else(|| self.ratio_sampled(trace_id), |s| s.sampled || s.debug);
                let debug = ex.sampling.is_some_and(|s| s.debug);
                (trace_id, None, None, sampled, debug, true)
            }
        };
        TraceCtx {
            trace_id,
            span_id,
            parent_id,
            format,
            sampled,
            debug,
            random,
            tracestate: None,
            dropped_tracestate: false,
            dropped_baggage: false,
            baggage_members_dropped: 0,
            tracestate_members_dropped: 0,
            outcomes: ex.outcomes,
            restored: None,
            request_id: None,
        }
    }

    /// `baggage` validated and held to the limits: trimmed, or removed when invalid.
    fn limit_baggage(&self, headers: &mut HeaderMap, ctx: &mut TraceCtx) {
        match baggage::extract(headers, self.baggage) {
            Ok(baggage::Baggage::Absent | baggage::Baggage::Unchanged) => {}
            Ok(baggage::Baggage::Trimmed { value, dropped }) => {
                headers.insert(BAGGAGE, value);
                ctx.baggage_members_dropped = dropped;
            }
            Err(baggage::Invalid) => {
                headers.remove(baggage::BAGGAGE);
                ctx.dropped_baggage = true;
            }
        }
    }

    /// Removes every trace header of the formats read or written, then writes, once each,
    /// the `inject` formats, those that arrived valid (with `mirror`) and those restoration
    /// asks for, with attache's span as the parent.
    fn rewrite(&self, headers: &mut HeaderMap, ctx: &TraceCtx, restored: [bool; 4]) {
        let present = super::present(headers);
        for format in Format::ALL {
            if present & (1 << format as u8) != 0
                && (self.extract.contains(&format) || self.inject.contains(&format))
            {
                remove(headers, format);
            }
        }
        let arrived = Format::ALL
            .into_iter()
            .filter(|f| self.mirror && ctx.outcomes[*f as usize] == Some(Outcome::Valid));
        let restored = Format::ALL.into_iter().filter(|f| restored[*f as usize]);
        let mut written = [false; 4];
        for format in self.inject.iter().copied().chain(arrived).chain(restored) {
            let slot = &mut written[format as usize];
            if !*slot {
                *slot = true;
                write(headers, format, ctx);
            }
        }
    }
}

#[cfg(test)]
mod tests;
