//! The observe layer: the outermost step of both request flows. It sees every request and
//! every response, attache's own rejections included, and when the response body ends, fails
//! or is dropped it records the exchange once:
//!
//! - the request metrics (count and duration by direction, method and status class);
//! - the leg's span (SERVER inbound, CLIENT outbound) when the trace is sampled and spans go
//!   somewhere;
//! - the access log line.
//!
//! The layers below report through the response's extensions: the trace decision
//! ([`TraceCtx`], left by the propagation step), the hop to the app or upstream
//! ([`UpstreamInfo`], left by the forwarder), and whatever else they learned as
//! [`Facts`] (flag decisions, the idempotency outcome), which the span
//! shows without this module knowing the filters that made them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime};

use bytes::Buf;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::access_log::{AccessLog, Entry};
use super::export::SpanSink;
use super::families::{HttpFamilies, HttpLabels};
use super::span::{Ending, RequestHead, SpanRecord, SpanSettings, protocol_version};
use crate::facts::Facts;
use crate::facts::UpstreamInfo;
use crate::metrics::{Direction, Metrics};
use crate::metrics::{MethodLabel, StatusClass};
use crate::trace_context::propagate::TraceCtx;

/// Finds the client's address in a request's extensions (the proxy knows where it put it).
pub type PeerOf = fn(&http::Extensions) -> Option<Peer>;

/// The client as the connection knows it.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The connection came over TLS: the span's `url.scheme` is `https`.
    pub secure: bool,
}

struct Shared {
    metrics: Arc<HttpFamilies>,
    direction: Direction,
    record_metrics: bool,
    spans: Option<(SpanSink, Arc<SpanSettings>)>,
    access_log: Option<AccessLog>,
    peer_of: PeerOf,
}

/// Metrics, spans and the access log for one direction.
#[derive(Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>, direction: Direction) -> Self {
        Self {
            shared: Arc::new(Shared {
                metrics: metrics.family(),
                direction,
                record_metrics: true,
                spans: None,
                access_log: None,
                peer_of: |_| None,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            f(shared);
        }
        self
    }

    /// Sampled exchanges become spans sent to `sink`.
    pub fn spans(self, sink: SpanSink, settings: SpanSettings) -> Self {
        self.with(|s| s.spans = Some((sink, Arc::new(settings))))
    }

    /// Whether the leg's spans go anywhere (so that what they would carry is worth keeping).
    pub fn records_spans(&self) -> bool {
        self.shared.spans.is_some()
    }

    /// Whether anything reads an exchange's details (its trace context, its upstream) from
    /// the response: the span or the access log. When neither is on, the steps below need not
    /// hand them up.
    pub fn records_exchanges(&self) -> bool {
        self.shared.spans.is_some() || self.shared.access_log.is_some()
    }

    pub fn access_log(self, log: AccessLog) -> Self {
        self.with(|s| s.access_log = Some(log))
    }

    /// `telemetry.metrics.enabled: false` stops the request metrics.
    pub fn record_metrics(self, on: bool) -> Self {
        self.with(|s| s.record_metrics = on)
    }

    pub fn peer_of(self, peer_of: PeerOf) -> Self {
        self.with(|s| s.peer_of = peer_of)
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ObserveService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ObserveService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ObserveService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ReqB: HttpBody,
{
    type Response = Response<ObservedBody<ResB>>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let s = &self.shared;
        let needs_head = s.spans.is_some() || s.access_log.is_some();
        let head = needs_head.then(|| {
            let peer = (s.peer_of)(req.extensions());
            let mut head = RequestHead::of(
                req.method(),
                req.uri(),
                req.version(),
                req.headers(),
                peer.map(|p| p.addr),
            );
            head.secure = peer.is_some_and(|p| p.secure);
            head
        });
        let request_bytes = if s.access_log.is_some() {
            req.headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .or_else(|| req.body().is_end_stream().then_some(0))
        } else {
            None
        };
        let record = Record {
            shared: self.shared.clone(),
            method: MethodLabel::of(req.method()),
            start: Instant::now(),
            start_wall: needs_head.then(SystemTime::now),
            head,
            request_bytes,
            status: None,
            ctx: None,
            upstream: None,
            facts: Facts::default(),
            response_bytes: 0,
            ending: Ending::Abandoned,
        };
        ObserveFuture {
            inner: self.inner.call(req),
            record: Some(record),
        }
    }
}

pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F, B, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ObservedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        // An error without a response is recorded (status `none`) when the record drops.
        let mut record = this.record.take();
        Poll::Ready(res.map(|mut res| {
            if let Some(r) = record.as_mut() {
                r.status = Some(res.status().as_u16());
                let ext = res.extensions_mut();
                r.ctx = ext.remove::<TraceCtx>();
                r.upstream = ext.remove::<UpstreamInfo>();
                r.facts = ext.remove::<Facts>().unwrap_or_default();
            }
            res.map(|inner| ObservedBody { inner, record })
        }))
    }
}

/// One exchange, recorded when dropped: at the end of its response body, or when the body
/// (or the whole exchange) is abandoned.
struct Record {
    shared: Arc<Shared>,
    method: MethodLabel,
    start: Instant,
    /// Wall-clock start, for spans and the log.
    start_wall: Option<SystemTime>,
    head: Option<RequestHead>,
    request_bytes: Option<u64>,
    status: Option<u16>,
    ctx: Option<TraceCtx>,
    upstream: Option<UpstreamInfo>,
    facts: Facts,
    response_bytes: u64,
    ending: Ending,
}

impl Drop for Record {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let s = &*self.shared;
        if s.record_metrics {
            let labels = HttpLabels {
                direction: s.direction,
                method: self.method,
                status_class: self.status.map_or(StatusClass::NONE, StatusClass::of),
            };
            let (count, duration) = s.metrics.handles(&labels);
            count.inc();
            duration.observe(elapsed.as_secs_f64());
            // A caller that went away before its answer: either the forwarder saw its body
            // break off first (499) or its connection or stream went first and the exchange
            // was dropped unanswered. Counted here, once, whichever came first.
            if self.status == Some(499)
                || (self.status.is_none() && self.ending == Ending::Abandoned)
            {
                s.metrics.client_error("aborted");
            }
        }
        let (Some(head), Some(start_wall)) = (self.head.take(), self.start_wall) else {
            return;
        };
        let start_unix = start_wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let end_unix = start_unix + elapsed.as_nanos() as u64;
        if let Some(log) = &s.access_log {
            let client = head.client_address();
            let error = self
                .upstream
                .as_ref()
                .and_then(|u| u.error)
                .or((self.ending == Ending::BodyFailed).then_some("body"));
            log.send(&Entry {
                timestamp_unix_nanos: start_unix,
                direction: s.direction.as_str(),
                method: head.method.as_str(),
                authority: head.authority(),
                path: head.path(),
                protocol: protocol_version(head.version),
                status: self.status,
                duration: elapsed,
                request_bytes: self.request_bytes,
                response_bytes: self.response_bytes,
                client_address: client.as_deref(),
                upstream: self.upstream.as_ref().map(|u| &*u.name),
                request_id: self
                    .ctx
                    .as_ref()
                    .and_then(|c| c.request_id.as_ref())
                    .and_then(|v| v.as_str()),
                trace_id: self.ctx.as_ref().map(|c| c.trace_id.0),
                span_id: self.ctx.as_ref().map(|c| c.span_id.0),
                sampled: self.ctx.as_ref().map(|c| c.sampled),
                error,
                facts: (!self.facts.is_empty()).then_some(&self.facts),
            });
        }
        if let (Some((sink, settings)), Some(ctx)) = (&s.spans, &self.ctx)
            && ctx.sampled
        {
            let mut span = SpanRecord::new(
                s.direction,
                head,
                ctx,
                self.status,
                self.upstream.take(),
                self.ending,
                (start_unix, end_unix),
                settings.clone(),
            );
            span.facts = std::mem::take(&mut self.facts);
            sink.send(span);
        }
    }
}

pin_project! {
    /// A response body that finishes its exchange's record when it ends.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        record: Option<Record>,
    }
}

impl<B: HttpBody> HttpBody for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(r), Some(data)) = (this.record.as_mut(), f.data_ref()) {
                    r.response_bytes += data.remaining() as u64;
                }
            }
            Some(Err(_)) => {
                if let Some(r) = this.record.as_mut() {
                    r.ending = Ending::BodyFailed;
                }
                this.record.take();
            }
            None => {
                if let Some(r) = this.record.as_mut() {
                    r.ending = Ending::Complete;
                }
                this.record.take();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    #[tokio::test]
    async fn counts_by_direction_method_and_status_class_when_the_body_ends() {
        let metrics = Arc::new(Metrics::new());
        let svc = ObserveLayer::new(metrics.clone(), Direction::Inbound).layer(service_fn(
            |req: Request<Full<bytes::Bytes>>| async move {
                let status = if req.uri().path() == "/missing" {
                    404
                } else {
                    200
                };
                let mut res = Response::new(Full::new(bytes::Bytes::from_static(b"hi")));
                *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(res)
            },
        ));
        let res = svc
            .clone()
            .oneshot(Request::get("/missing").body(Full::default()).unwrap())
            .await
            .unwrap();
        // Not counted until the body is consumed.
        assert!(!metrics.encode().contains("status_class=\"4xx\""));
        res.into_body().collect().await.unwrap();
        let req = Request::builder()
            .method("BREW")
            .uri("/")
            .body(Full::default())
            .unwrap();
        drop(svc.oneshot(req).await.unwrap());
        let text = metrics.encode();
        assert!(
            text.lines().any(|l| l
                == "attache_http_requests_total{direction=\"inbound\",method=\"GET\",status_class=\"4xx\"} 1"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l
                == "attache_http_requests_total{direction=\"inbound\",method=\"_OTHER\",status_class=\"2xx\"} 1"),
            "{text}"
        );
        // Each of the two requests is in the histogram's count.
        assert!(
            text.lines().any(|l| l
                == "attache_http_request_duration_seconds_count{direction=\"inbound\",method=\"_OTHER\",status_class=\"2xx\"} 1"),
            "{text}"
        );
    }
}
