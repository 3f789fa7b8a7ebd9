//! The propagation step as a tower layer: applies the [`Settings`] to each request, counts what
//! it found, registers an inbound request as in flight, and hands the [`TraceCtx`] up.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::Request;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{PendingRecord, RestoreLeg, Restored, Settings, TraceCtx};
use crate::metrics::{Direction, Metrics};
use crate::trace_context::metrics::TraceFamilies;
use crate::trace_context::restore::{Active, InFlightGuard};

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

/// Counts what the trace-context step found on one request.
fn record_trace(families: &TraceFamilies, direction: Direction, ctx: &TraceCtx) {
    let d = match direction {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    };
    for (format, outcome) in ctx.outcomes.iter().enumerate() {
        let r = match outcome {
            Some(crate::trace_context::Outcome::Valid) => 0,
            Some(crate::trace_context::Outcome::Invalid) => 1,
            Some(crate::trace_context::Outcome::Absent) => 2,
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
