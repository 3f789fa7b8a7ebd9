//! The claimed request's run (§4 after the claim): the exchange in a task of its own, the lease
//! renewed while it runs, and the record settled by what the response turned out to be;
//! and the replay of a stored response.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use tower::Service;

use super::error::{IdempotencyError, problem};
use super::store::{self, RecordId, StoreError, Stored, Transition};
use super::{BoxFuture, Inner, REPLAYED_MARKER, RoutePolicy, STORED_MARKER, Settings, Trail};
use crate::Body;
use crate::errors::problem_response;
use crate::facts::UpstreamInfo;

/// A stored response, replayed: its status, stored header lines, body and markers.
pub(super) fn replay(stored: Stored, with_body: bool) -> Response<Body> {
    let body = if with_body { stored.body } else { Bytes::new() };
    let len = body.len();
    let mut res = Response::new(crate::full(body));
    *res.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let h = res.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value),
        ) {
            h.append(n, v);
        }
    }
    // Replays bypass the app's authorization: never cache one unless the app said how.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(REPLAYED_MARKER, HeaderValue::from_static("true"));
    if !with_body {
        h.insert(STORED_MARKER, HeaderValue::from_static("false"));
    }
    res
}

/// The claimed request's exchange, in a task of its own: the client going away cannot cancel
/// the call or the record's outcome.
pub(super) async fn exchange(
    s: Arc<Settings>,
    route: RoutePolicy,
    inner: Inner,
    request: Request<Body>,
    id: RecordId,
    owner: store::Owner,
    trail: Arc<Trail>,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut inner = inner;
    let call: BoxFuture = Box::pin(inner.call(request));
    tokio::spawn(async move {
        let run = Run {
            s,
            route,
            id,
            owner,
            trail,
        };
        let res = run.go(call).await;
        let _ = tx.send(res);
    });
    match rx.await {
        Ok(res) => res,
        Err(_) => problem_response(&crate::errors::ProxyError::Unavailable(
            "the idempotent exchange ended without a response".into(),
        )),
    }
}

struct Run {
    s: Arc<Settings>,
    route: RoutePolicy,
    id: RecordId,
    owner: store::Owner,
    trail: Arc<Trail>,
}

impl Run {
    fn outcome(&self, outcome: &'static str) {
        self.trail.count(outcome);
    }

    /// Runs `fut` while renewing the lease every lease/3.
    async fn renewing<F: Future>(&self, fut: F) -> F::Output {
        tokio::pin!(fut);
        let every = self.route.lease / 3;
        loop {
            tokio::select! {
                out = &mut fut => return out,
                () = tokio::time::sleep(every) => {
                    let renew = self.s.store.renew(&self.id, self.owner, self.route.lease);
                    match timed(&self.s, "renew", renew, transition_label).await {
                        Ok(Ok(Transition::Done)) => {}
                        Ok(Ok(Transition::LostLease)) => self.outcome("lost_lease"),
                        _ => self.outcome("store_error"),
                    }
                }
            }
        }
    }

    /// A complete, release or renew that fails is retried twice; one that finds another
    /// owner writes nothing.
    async fn settle(&self, what: Settle<'_>) {
        for _ in 0..3 {
            let op = async {
                match what {
                    Settle::Release => self.s.store.release(&self.id, self.owner).await,
                    Settle::Complete(stored, tomb) => {
                        self.s
                            .store
                            .complete(&self.id, self.owner, stored, tomb, self.route.retention)
                            .await
                    }
                }
            };
            let name = match what {
                Settle::Release => "release",
                Settle::Complete(..) => "complete",
            };
            match timed(&self.s, name, op, transition_label).await {
                Ok(Ok(Transition::Done)) => {
                    self.outcome(match what {
                        Settle::Release => "released",
                        Settle::Complete(_, true) => "tombstoned",
                        Settle::Complete(_, false) => "completed",
                    });
                    return;
                }
                Ok(Ok(Transition::LostLease)) => {
                    self.outcome("lost_lease");
                    return;
                }
                Ok(Err(StoreError::Unavailable(_) | StoreError::Full(_))) | Err(_) => {}
            }
        }
        self.outcome("store_error");
    }

    /// The exchange and its record: the response decides whether the key is released,
    /// tombstoned or stored with the response (held whole, up to the limit, while renewing).
    async fn go<F>(self, call: F) -> Response<Body>
    where
        F: Future<Output = Result<Response<Body>, Infallible>>,
    {
        let Ok(res) = self.renewing(call).await;
        let status = res.status().as_u16();

        // The forwarder's own answer when the app gave none.
        if let Some(err) = res.extensions().get::<UpstreamInfo>().and_then(|u| u.error) {
            return self.unanswered(res, err).await;
        }
        if self.route.release_statuses.contains(&status) || (status >= 500 && !self.route.store_5xx)
        {
            self.settle(Settle::Release).await;
            return res;
        }
        let tombstone = Stored {
            status,
            headers: self.stored_headers(res.headers()),
            body: Bytes::new(),
        };
        if self.streams(&res) {
            self.settle(Settle::Complete(&tombstone, true)).await;
            return res;
        }
        self.hold(res, tombstone).await
    }

    /// The app gave no response and the forwarder answered with `err` (its `error.type`).
    async fn unanswered(&self, res: Response<Body>, err: &str) -> Response<Body> {
        if err == "connection_refused" || err == "dns" {
            // Nothing reached the app: the key is free again.
            self.settle(Settle::Release).await;
            return res;
        }
        // Bytes may have reached the app: the outcome is unknown until the lease ends.
        self.outcome("indeterminate");
        let status = if err == "timeout" {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        problem(
            &IdempotencyError::OutcomeUnknown(status, self.route.lease),
            self.s.policy_url.as_ref(),
        )
    }

    /// A response that is not held for storing: a protocol switch, an event or gRPC stream,
    /// or a declared length over the limit. Its record is a tombstone (headers only).
    fn streams(&self, res: &Response<Body>) -> bool {
        let declared = res
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let media = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        res.status() == StatusCode::SWITCHING_PROTOCOLS
            || media.starts_with("text/event-stream")
            || media.starts_with("application/grpc")
            || declared.is_some_and(|n| n > self.route.max_response_bytes)
    }

    /// Holds the response until it ends (or crosses the limit), while renewing, then stores
    /// it (whole) or its tombstone (too large, or with trailers), and delivers it.
    async fn hold(&self, res: Response<Body>, tombstone: Stored) -> Response<Body> {
        let (parts, mut body) = res.into_parts();
        let held = Held::read(&mut body, self.route.max_response_bytes);
        let Held {
            data,
            complete,
            trailers,
            failed,
        } = self.renewing(held).await;
        if let Some(e) = failed {
            // The body broke midway: the app ran, but what it answered is unknown.
            self.outcome("indeterminate");
            tracing::warn!(route = %self.route.name, error = %e, "response body failed; key held until the lease ends");
            return problem(
                &IdempotencyError::OutcomeUnknown(StatusCode::BAD_GATEWAY, self.route.lease),
                self.s.policy_url.as_ref(),
            );
        }
        if !complete || trailers.is_some() {
            // Too large, or trailers: the first caller gets it whole; retries, the headers.
            self.settle(Settle::Complete(&tombstone, true)).await;
            let rest = Chain {
                first: Some(data),
                trailers,
                rest: (!complete).then_some(body),
            };
            return Response::from_parts(parts, crate::boxed(rest));
        }
        let stored = Stored {
            body: data.clone(),
            ..tombstone
        };
        self.settle(Settle::Complete(&stored, false)).await;
        Response::from_parts(parts, crate::full(data))
    }

    /// The allow-listed header lines, in order.
    fn stored_headers(&self, headers: &HeaderMap) -> Vec<(String, Bytes)> {
        headers
            .iter()
            .filter(|(n, _)| self.route.replayable(n.as_str()))
            .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
            .collect()
    }
}

/// What was read of a response body while holding it.
struct Held {
    data: Bytes,
    /// It ended within the limit.
    complete: bool,
    trailers: Option<HeaderMap>,
    /// It broke midway.
    failed: Option<crate::BoxError>,
}

impl Held {
    /// Reads `body` until it ends, sends trailers, fails, or holds more than `limit` bytes.
    async fn read(body: &mut Body, limit: u64) -> Self {
        let mut data = BytesMut::new();
        let (complete, trailers, failed) = loop {
            match body.frame().await {
                None => break (true, None, None),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        data.extend_from_slice(&chunk);
                        if data.len() as u64 > limit {
                            break (false, None, None);
                        }
                    }
                    Err(frame) => break (true, frame.into_trailers().ok(), None),
                },
                Some(Err(e)) => break (true, None, Some(e)),
            }
        };
        Self {
            data: data.freeze(),
            complete,
            trailers,
            failed,
        }
    }
}

/// Runs a store operation within `store_timeout`, timing it in
/// `attache_idempotency_store_duration_seconds{op, result}`.
pub(super) async fn timed<T>(
    s: &Settings,
    op: &'static str,
    fut: impl Future<Output = Result<T, StoreError>>,
    label: impl Fn(&T) -> &'static str,
) -> Result<Result<T, StoreError>, tokio::time::error::Elapsed> {
    let start = std::time::Instant::now();
    let out = tokio::time::timeout(s.store_timeout, fut).await;
    let result = match &out {
        Ok(Ok(v)) => label(v),
        Ok(Err(_)) => "error",
        Err(_) => "timeout",
    };
    s.metrics.store_op(op, result, start.elapsed());
    out
}

pub(super) fn transition_label(t: &Transition) -> &'static str {
    match t {
        Transition::Done => "ok",
        Transition::LostLease => "lost_lease",
    }
}

#[derive(Clone, Copy)]
enum Settle<'a> {
    Release,
    Complete(&'a Stored, bool),
}

/// A response body that was partly read: what was held, then the rest (or the trailers).
struct Chain {
    first: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<Body>,
}

impl HttpBody for Chain {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take().filter(|b| !b.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if let Some(rest) = self.rest.as_mut() {
            return Pin::new(rest).poll_frame(cx);
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}
