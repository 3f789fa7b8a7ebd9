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

use std::future::Future;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tower::{Layer, Service};

use super::ids::IdGenerator;
use super::metrics::TraceFamilies;
use super::restore::{Active, InFlight, InFlightGuard, Record, Table};
use super::{
    Format, Outcome, SpanId, TraceFlags, TraceId, b3, baggage, jaeger, traceparent, tracestate,
};
use crate::codec::percent;
use crate::metrics::{Direction, Metrics};

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
        let span_id = self.ids.span_id();
        // A valid context is continued; without one a new trace starts, sampled by a lone
        // B3 state if one came, else by the ratio.
        let (trace_id, parent_id, format, sampled, debug, random) = match ex.context {
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
        let mut ctx = TraceCtx {
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
        };
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

        if self.inject_baggage {
            self.map_context(headers, &mut ctx);
        }
        let mut restored_formats = [false; 4];
        if let Some(r) = self.restore.as_ref().filter(|r| r.leg == RestoreLeg::Apply) {
            self.restore_into(r, headers, &mut ctx, &mut restored_formats);
        }

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
            .filter(|f| self.mirror && ex.outcomes[*f as usize] == Some(Outcome::Valid));
        let mut written = [false; 4];
        let restored = Format::ALL
            .into_iter()
            .filter(|f| restored_formats[*f as usize]);
        for format in self.inject.iter().copied().chain(arrived).chain(restored) {
            let slot = &mut written[format as usize];
            if !*slot {
                *slot = true;
                write(headers, format, &ctx);
            }
        }
        if let Some(name) = &self.request_id {
            ctx.request_id = match headers.get(name) {
                Some(v) => Some(RequestId::Arrived(v.clone())),
                None => {
                    let text = self.ids.request_id_text();
                    if let Ok(v) = HeaderValue::from_bytes(&text) {
                        headers.insert(name.clone(), v);
                    }
                    Some(RequestId::Generated(text))
                }
            };
        }
        ctx
    }

    /// Inbound: stores what is forwarded to the app under the trace id.
    fn record(&self, r: &Restore, headers: &HeaderMap, ctx: &TraceCtx) {
        let mut rec = Record {
            tracestate: ctx.tracestate.clone(),
            debug: ctx.debug,
            ..Record::default()
        };
        for (name, value) in headers {
            let plain = trace_format_of(name).is_none() && name != baggage::BAGGAGE;
            if plain && r.headers.iter().any(|p| p.matches(name)) {
                rec.headers.push((name.clone(), value.clone()));
            }
        }
        // A listed trace header is never copied back: its format is recorded (when it arrived
        // valid, even without `mirror`) and rewritten with the CLIENT span's ids.
        for f in Format::ALL {
            let listed = f
                .headers()
                .iter()
                .any(|n| r.headers.iter().any(|p| p.matches_str(n)));
            if listed && ctx.outcomes[f as usize] == Some(Outcome::Valid) {
                rec.formats[f as usize] = true;
            }
        }
        if self.mirror {
            for f in Format::ALL {
                rec.formats[f as usize] |= ctx.outcomes[f as usize] == Some(Outcome::Valid);
            }
        }
        if r.baggage {
            rec.baggage = headers.get_all(baggage::BAGGAGE).iter().cloned().collect();
        }
        r.table.insert(ctx.trace_id, rec);
    }

    /// Outbound: adds back what the app's call for a recorded trace lacks, never overriding
    /// what the app set (even an empty header).
    fn restore_into(
        &self,
        r: &Restore,
        headers: &mut HeaderMap,
        ctx: &mut TraceCtx,
        formats: &mut [bool; 4],
    ) {
        if ctx.parent_id.is_none() {
            let Some(in_flight) = &r.single_in_flight else {
                ctx.restored = Some(Restored::NoContext);
                return;
            };
            match in_flight.single() {
                Ok(active) => {
                    // The one inbound request in flight is the cause: continue its trace
                    // under its SERVER span, as if the app had forwarded its context.
                    ctx.trace_id = active.trace_id;
                    ctx.parent_id = Some(active.span_id);
                    ctx.sampled = active.sampled;
                    ctx.random = active.random;
                    ctx.debug = active.debug;
                    ctx.restored = Some(Restored::SingleInFlight);
                }
                Err(_) => {
                    ctx.restored = Some(Restored::Ambiguous);
                    return;
                }
            }
        }
        let Some(rec) = r.table.get(ctx.trace_id) else {
            if ctx.restored.is_none() {
                ctx.restored = Some(Restored::Miss);
            }
            return;
        };
        if ctx.restored.is_none() {
            ctx.restored = Some(Restored::Hit);
        }
        let app_had: Vec<&HeaderName> = rec
            .headers
            .iter()
            .map(|(n, _)| n)
            .filter(|n| headers.contains_key(*n))
            .collect();
        let missing: Vec<(HeaderName, HeaderValue)> = rec
            .headers
            .iter()
            .filter(|(n, _)| !app_had.contains(&n))
            .cloned()
            .collect();
        for (n, v) in missing {
            headers.append(n, v);
        }
        if r.baggage && !rec.baggage.is_empty() {
            self.restore_baggage(&rec.baggage, headers, ctx);
        }
        if ctx.tracestate.is_none() && !headers.contains_key(tracestate::TRACESTATE) {
            ctx.tracestate = rec.tracestate.clone();
        }
        if rec.debug {
            ctx.debug = true;
            ctx.sampled = true;
        }
        *formats = rec.formats;
    }

    /// The app's baggage first; recorded members whose key it lacks after, within limits.
    fn restore_baggage(
        &self,
        recorded: &[HeaderValue],
        headers: &mut HeaderMap,
        ctx: &mut TraceCtx,
    ) {
        if !headers.contains_key(baggage::BAGGAGE) {
            for line in recorded {
                headers.append(BAGGAGE, line.clone());
            }
            return;
        }
        let mut old = HeaderMap::new();
        for line in recorded {
            old.append(BAGGAGE, line.clone());
        }
        let mut line: Vec<String> = baggage::members(headers)
            .flatten()
            .map(|m| m.raw.to_owned())
            .collect();
        let keys: Vec<String> = baggage::members(headers)
            .flatten()
            .map(|m| m.key.to_owned())
            .collect();
        let before = line.len();
        let mut bytes = line.iter().map(String::len).sum::<usize>() + line.len().saturating_sub(1);
        for m in baggage::members(&old).flatten() {
            if keys.iter().any(|k| k == m.key) {
                continue;
            }
            let grow = m.raw.len() + usize::from(!line.is_empty());
            if line.len() < self.baggage.max_members && bytes + grow <= self.baggage.max_bytes {
                bytes += grow;
                line.push(m.raw.to_owned());
            } else {
                ctx.baggage_members_dropped += 1;
            }
        }
        if line.len() > before
            && let Ok(v) = HeaderValue::from_str(&line.join(","))
        {
            headers.insert(BAGGAGE, v);
        }
    }
}

/// The trace format a header belongs to, if it is a trace header.
fn trace_format_of(name: &HeaderName) -> Option<Format> {
    Format::ALL
        .into_iter()
        .find(|f| f.headers().contains(&name.as_str()))
}

impl Settings {
    /// §6: headers and `uberctx-*` into baggage members, members into headers and `uberctx-*`.
    /// Existing members and headers always win; baggage is rewritten (as one line: kept
    /// members unchanged and in order, attache's after) only when a member is added.
    fn map_context(&self, headers: &mut HeaderMap, ctx: &mut TraceCtx) {
        // Most requests need none of this: decide without allocating.
        let jaeger_in = self.extract.contains(&Format::Jaeger)
            && headers.keys().any(|n| n.as_str().starts_with(UBERCTX));
        let jaeger_out =
            self.inject.contains(&Format::Jaeger) && headers.contains_key(baggage::BAGGAGE);
        let from = !self.from_baggage.is_empty() && headers.contains_key(baggage::BAGGAGE);
        let to = self.to_baggage.iter().any(|(h, _)| headers.contains_key(h));
        if !(jaeger_in || jaeger_out || from || to) {
            return;
        }
        // Baggage is valid here: invalid baggage was removed above.
        let existing: Vec<(String, String, String)> = baggage::members(headers)
            .flatten()
            .map(|m| (m.key.to_owned(), m.value.to_owned(), m.raw.to_owned()))
            .collect();
        let has = |key: &str, added: &[(String, String)]| {
            existing.iter().any(|(k, _, _)| k == key) || added.iter().any(|(k, _)| k == key)
        };
        let mut added: Vec<(String, String)> = Vec::new();
        for (header, key) in &self.to_baggage {
            if let Some(v) = headers.get(header)
                && !has(key, &added)
            {
                added.push((key.clone(), encoded(v.as_bytes(), percent::BAGGAGE)));
            }
        }
        if jaeger_in {
            for (name, v) in headers.iter() {
                if let Some(key) = name.as_str().strip_prefix(UBERCTX)
                    && !key.is_empty()
                    && !has(key, &added)
                {
                    // Jaeger clients send these already URL-encoded.
                    added.push((
                        key.to_owned(),
                        encoded(v.as_bytes(), percent::BAGGAGE_ENCODED),
                    ));
                }
            }
        }
        if !added.is_empty() {
            let mut line: Vec<String> = existing.iter().map(|(_, _, raw)| raw.clone()).collect();
            let mut bytes =
                line.iter().map(String::len).sum::<usize>() + line.len().saturating_sub(1);
            for (key, value) in &added {
                let member = format!("{key}={value}");
                let grow = member.len() + usize::from(!line.is_empty());
                if line.len() < self.baggage.max_members && bytes + grow <= self.baggage.max_bytes {
                    bytes += grow;
                    line.push(member);
                } else {
                    ctx.baggage_members_dropped += 1;
                }
            }
            if let Ok(v) = HeaderValue::from_str(&line.join(",")) {
                headers.insert(BAGGAGE, v);
            }
        }
        for (key, header) in &self.from_baggage {
            if headers.contains_key(header) {
                continue;
            }
            if let Some((_, value, _)) = existing.iter().find(|(k, _, _)| k == key)
                && let Ok(v) = HeaderValue::from_bytes(&percent::decode(value.as_bytes()))
            {
                headers.insert(header.clone(), v);
            }
        }
        if jaeger_out {
            let all = existing.iter().map(|(k, v, _)| (k.as_str(), v.as_str()));
            let new = added.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            for (key, value) in all.chain(new) {
                if let Ok(name) = HeaderName::from_bytes(format!("{UBERCTX}{key}").as_bytes())
                    && !headers.contains_key(&name)
                    && let Ok(v) = HeaderValue::from_str(value)
                {
                    headers.insert(name, v);
                }
            }
        }
    }
}

const UBERCTX: &str = "uberctx-";

/// A baggage value: `value` with the bytes of `set` percent-encoded ([`percent::BAGGAGE`] for
/// values that were never encoded, [`percent::BAGGAGE_ENCODED`] for those that were).
fn encoded(value: &[u8], set: &'static percent_encoding::AsciiSet) -> String {
    let mut out = String::with_capacity(value.len());
    percent::encode_into(value, set, &mut out);
    out
}

fn remove(headers: &mut HeaderMap, format: Format) {
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
use baggage::BAGGAGE_HEADER as BAGGAGE;

fn write(headers: &mut HeaderMap, format: Format, ctx: &TraceCtx) {
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

// === impl PropagationLayer ===

/// Applies [`Settings`] to every request, counts what it found, and hands the [`TraceCtx`]
/// up in the response's extensions (unless told nobody reads it).
#[derive(Clone)]
pub struct PropagationLayer {
    settings: Arc<Settings>,
    metrics: Option<(Arc<TraceFamilies>, Direction)>,
    hand_up: bool,
}

impl PropagationLayer {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: Arc::new(settings),
            metrics: None,
            hand_up: true,
        }
    }

    /// Whether the response carries the [`TraceCtx`] up, for the span and the access log
    /// (on by default). A leg with neither turns it off and saves an allocation per request.
    pub fn hand_up(mut self, on: bool) -> Self {
        self.hand_up = on;
        self
    }

    /// Counts outcomes in `attache_trace_context_total` and drops in
    /// `attache_trace_dropped_total`, for `direction`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>, direction: Direction) -> Self {
        self.metrics = Some((metrics.family(), direction));
        self
    }
}

impl<S> Layer<S> for PropagationLayer {
    type Service = Propagation<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Propagation {
            inner,
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            hand_up: self.hand_up,
        }
    }
}

#[derive(Clone)]
pub struct Propagation<S> {
    inner: S,
    settings: Arc<Settings>,
    metrics: Option<(Arc<TraceFamilies>, Direction)>,
    hand_up: bool,
}

impl<S, B, ResB> Service<Request<B>> for Propagation<S>
where
    S: Service<Request<B>, Response = http::Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = PropagationFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ctx = self.settings.propagate(req.headers_mut());
        if let Some((metrics, direction)) = &self.metrics {
            record_trace(metrics, *direction, &ctx);
        }
        if self.settings.recording().is_some() {
            req.extensions_mut().insert(PendingRecord {
                settings: self.settings.clone(),
                ctx: ctx.clone(),
                metrics: self.metrics.as_ref().map(|(m, _)| m.clone()),
            });
        }
        // An inbound request is in flight until its response head is ready (or it is
        // dropped): the window in which the app makes the calls it causes.
        let guard = self
            .settings
            .restore
            .as_ref()
            .filter(|r| r.leg == RestoreLeg::Record)
            .and_then(|r| r.single_in_flight.as_ref())
            .map(|set| {
                set.enter(Active {
                    trace_id: ctx.trace_id,
                    span_id: ctx.span_id,
                    sampled: ctx.sampled,
                    random: ctx.random,
                    debug: ctx.debug,
                })
            });
        PropagationFuture {
            inner: self.inner.call(req),
            guard,
            ctx: self.hand_up.then_some(ctx),
        }
    }
}

pin_project! {
    /// The inner future, holding the request's in-flight registration until it completes.
    /// The [`TraceCtx`] is handed up in the response's extensions, for the span and the
    /// access log.
    pub struct PropagationFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlightGuard>,
        ctx: Option<TraceCtx>,
    }
}

impl<F, B, E> Future for PropagationFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut out = std::task::ready!(this.inner.poll(cx));
        this.guard.take();
        if let (Ok(res), Some(ctx)) = (&mut out, this.ctx.take()) {
            res.extensions_mut().insert(ctx);
        }
        Poll::Ready(out)
    }
}

/// In an inbound request's extensions, between the propagation step and [`RecordLayer`]: the
/// trace decision to record under, once the request's headers are final.
#[derive(Clone)]
pub struct PendingRecord {
    settings: Arc<Settings>,
    ctx: TraceCtx,
    /// Where the table's size is reported once the record is in.
    metrics: Option<Arc<TraceFamilies>>,
}

impl PendingRecord {
    /// Records `headers` (what the app receives) for restoration on the app's calls.
    pub fn commit(&self, headers: &HeaderMap) {
        if let Some(r) = self.settings.recording() {
            self.settings.record(r, headers, &self.ctx);
            if let Some(metrics) = &self.metrics {
                let (entries, bytes) = r.table.usage();
                metrics.restore_usage(entries, bytes);
            }
        }
    }
}

/// The last step before a request leaves for the app: records what the app receives, for
/// restoration (see the module's doc). Without it, an inbound leg with restoration records
/// nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordLayer;

impl<S> Layer<S> for RecordLayer {
    type Service = RecordForwarded<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecordForwarded { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RecordForwarded<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RecordForwarded<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(pending) = req.extensions_mut().remove::<PendingRecord>() {
            pending.commit(req.headers());
        }
        self.inner.call(req)
    }
}

/// Counts what the trace-context step found on one request.
fn record_trace(families: &TraceFamilies, direction: Direction, ctx: &TraceCtx) {
    let d = match direction {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    };
    for (format, outcome) in ctx.outcomes.iter().enumerate() {
        let r = match outcome {
            Some(super::Outcome::Valid) => 0,
            Some(super::Outcome::Invalid) => 1,
            Some(super::Outcome::Absent) => 2,
            None => continue,
        };
        families.trace_handles[(d * 4 + format) * 3 + r].inc();
    }
    if ctx.dropped_tracestate {
        families.dropped_handles[0].inc();
    }
    if ctx.tracestate_members_dropped > 0 {
        families.dropped_handles[1].inc();
    }
    if ctx.dropped_baggage {
        families.dropped_handles[2].inc();
    }
    if ctx.baggage_members_dropped > 0 {
        families.dropped_handles[3].inc_by(ctx.baggage_members_dropped as u64);
    }
    match ctx.restored {
        Some(Restored::Hit) => families.restore_handles[0].inc(),
        Some(Restored::Miss) => families.restore_handles[1].inc(),
        Some(Restored::NoContext) => families.restore_handles[2].inc(),
        Some(Restored::SingleInFlight) => families.restore_handles[3].inc(),
        Some(Restored::Ambiguous) => families.restore_handles[4].inc(),
        None => 0,
    };
}

#[cfg(test)]
mod tests;
