//! Restoration's two halves on the propagation step (§5; the table is `restore.rs`): the
//! inbound leg records what the app receives, through a [`PendingRecord`] that [`RecordLayer`]
//! commits just before the request leaves for the app; the outbound leg adds back what the
//! app's call lacks.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tower::{Layer, Service};

use super::{BAGGAGE, Restore, Restored, Settings, TraceCtx};
use crate::trace_context::metrics::TraceFamilies;
use crate::trace_context::restore::Record;
use crate::trace_context::{Format, Outcome, baggage, tracestate};

impl Settings {
    /// Inbound: stores what is forwarded to the app under the trace id.
    pub(super) fn record(&self, r: &Restore, headers: &HeaderMap, ctx: &TraceCtx) {
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
    pub(super) fn restore_into(
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

/// In an inbound request's extensions, between the propagation step and [`RecordLayer`]: the
/// trace decision to record under, once the request's headers are final.
#[derive(Clone)]
pub struct PendingRecord {
    pub(super) settings: Arc<Settings>,
    pub(super) ctx: TraceCtx,
    /// Where the table's size is reported once the record is in.
    pub(super) metrics: Option<Arc<TraceFamilies>>,
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
