//! Serving an accepted connection, in one place: what its listener's address serves (read from
//! the current snapshot) decides how. A proxied connection (inbound or outbound) gets the
//! connection deadlines, the HTTP/1.1-or-HTTP/2 sniff, and its role's stack per request; a
//! side connection (admin, OFREP) gets hyper's auto server and its service. Both honour
//! `poll_ready` and drain the same way: once drain starts, the request in flight is answered
//! and the connection closed (HTTP/2: GOAWAY).

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use attache_filters::Body;
use attache_filters::errors::{ProxyError, problem_response};
use futures_util::task::AtomicWaker;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tower::Service;

pub use crate::conn::Known;
use crate::conn::{ConnInfo, ConnIo, ConnState, Deadlines, InFlight};
use crate::ready::{ResponseFuture, ready_now, when_ready};
use crate::shared::Shared;
use crate::snapshot::{Role, Servers, Snapshot};
use crate::stack::Stack;
use crate::tls::server::ServerTls;
use crate::{admin, body};

/// Starts the task of one accepted connection, by what its listener serves. Each kind gets
/// a task of its own type, so that a proxied connection's task is sized for the proxy alone:
/// one `async fn` for all three was as large as the largest (the admin server's), 2.7 KiB per
/// connection against 0.6 KiB.
pub fn connection(stream: TcpStream, peer: SocketAddr, local: SocketAddr, shared: &Arc<Shared>) {
    let snap = shared.snapshot.load();
    if snap.config.spec.admin.listen.0 == local {
        let svc = admin::service(shared.clone());
        tokio::spawn(side(stream, shared.clone(), svc));
    } else if let Some((_, stack)) = [&snap.ofrep, &snap.context]
        .into_iter()
        .flatten()
        .find(|s| s.0 == local)
    {
        tokio::spawn(side_stack_connection(
            stream,
            peer,
            shared.clone(),
            stack.clone(),
        ));
    } else if let Some(role) = snap.listeners.get(&local).cloned() {
        let (server, deadlines) = (snap.server.clone(), snap.deadlines);
        match (&role, &snap.inbound_tls) {
            (Role::Inbound, Some(tls)) => {
                let serving = Serving {
                    role,
                    server,
                    deadlines,
                    shared: shared.clone(),
                };
                tokio::spawn(secured(stream, peer, tls.clone(), serving));
            }
            (Role::Capture, _) => {
                let sniff = snap
                    .config
                    .spec
                    .capture
                    .as_ref()
                    .map_or(std::time::Duration::from_millis(200), |c| c.sniff_timeout.0);
                let serving = Serving {
                    role,
                    server,
                    deadlines,
                    shared: shared.clone(),
                };
                tokio::spawn(crate::capture::connection(
                    stream, peer, local, serving, sniff,
                ));
            }
            _ => {
                let serving = Serving {
                    role,
                    server,
                    deadlines,
                    shared: shared.clone(),
                };
                tokio::spawn(proxied(stream, peer, serving, Known::default()));
            }
        }
    }
    // Otherwise the listener was removed between accept and now: the socket is dropped.
}

/// A listener the app itself calls, beside the traffic: OFREP (specs/feature-flags.md §10,
/// OpenFeature SDKs evaluating flags against attache's snapshot) and the Context API
/// (specs/context-api.md). Each request goes through the snapshot's stack for it (a SERVER
/// span, then the service; built by `steps/flags.rs` and `steps/context.rs`).
async fn side_stack_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stack: Stack,
) {
    let info = ConnInfo::new(peer, Arc::new(ConnState::default()), shared.tracker.clone());
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req: Request<Body> = req.map(attache_filters::boxed);
        req.extensions_mut().insert(info.clone());
        // Called once it is ready, as on the traffic listeners.
        when_ready(stack.clone(), req)
    });
    side(stream, shared, svc).await;
}

/// Serves one connection of a side listener (admin, OFREP) until it ends; once drain starts,
/// the request in flight is answered and the connection closed. Probes keep being answered
/// while draining, but keep-alive connections are not held open.
async fn side<S>(stream: TcpStream, shared: Arc<Shared>, svc: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    let mut conn = std::pin::pin!(conn);
    let mut shutdown = shared.shutdown.subscribe();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async { shutdown.wait_for(|d| *d).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Runs one request through its listener's stack, honouring `poll_ready`.
///
/// The stack is first asked whether it is ready with a waker that does nothing: attache's own
/// layers always are, and the request is then called on the stack the connection holds, at the
/// cost of one `poll_ready` through the layers. A layer that is not ready (a concurrency or rate
/// limit, say) makes the request wait on a clone of the stack ([`when_ready`], which polls with
/// the task's real waker until it is ready). Readiness cannot fail: the stack's
/// error type is `Infallible`, so a layer that refuses answers with a response (503, 429)
/// instead. Nothing calls a service that has not said it is ready, as tower's contract
/// requires.
fn handle(
    stack: Option<&mut Stack>,
    req: Request<Body>,
    in_flight: InFlight,
) -> impl Future<Output = Result<Response<body::Finish<InFlight>>, Infallible>> + Send + use<> {
    let fut: ResponseFuture = match stack {
        Some(stack) => match ready_now(stack) {
            true => stack.call(req),
            false => when_ready(stack.clone(), req),
        },
        None => {
            // A reload removed this connection's role (an outbound upstream, say).
            let err = ProxyError::Unavailable("this listener was removed from the config".into());
            let mut res = problem_response(&err);
            res.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            Box::pin(std::future::ready(Ok(res)))
        }
    };
    async move {
        let res = match fut.await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        Ok(res.map(|b| body::Finish::new(b, in_flight)))
    }
}

/// What a proxied connection is served with, from the snapshot it was accepted under.
pub struct Serving {
    role: Role,
    server: Arc<Servers>,
    deadlines: Deadlines,
    pub shared: Arc<Shared>,
}

/// A connection to the inbound listener under `spec.inbound.tls`: the TLS handshake (within
/// the header-read timeout), then served as any proxied connection, its requests knowing the
/// session (the client's certificate under mutual TLS). A failed handshake is counted by
/// reason and the socket closed; nothing reaches the app.
async fn secured(stream: TcpStream, peer: SocketAddr, tls: Arc<ServerTls>, serving: Serving) {
    let handshake = tokio::time::timeout(serving.deadlines.header_read, tls.accept(stream));
    match handshake.await {
        Ok(Ok((stream, session))) => {
            let known = Known {
                tls: Some(session),
                original_dst: None,
            };
            proxied(stream, peer, serving, known).await
        }
        Ok(Err(e)) => {
            let reason = crate::tls::io_failure_reason(&e);
            tls.metrics.handshake_failed(reason);
            tracing::debug!(%peer, reason, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            tls.metrics.handshake_failed("timeout");
            tracing::debug!(%peer, "TLS handshake not finished in time");
        }
    }
}

/// Proxied connections (inbound or outbound): sniffed for HTTP/2, with attache's own
/// deadlines and counters, each request through its role's stack.
pub async fn proxied<T>(stream: T, peer: SocketAddr, serving: Serving, known: Known)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Serving {
        role,
        server,
        deadlines,
        shared,
    } = serving;
    let _tracked = shared.tracker.track();
    let _counted = shared.proxy_metrics.connection_opened(role.direction());

    let state = Arc::new(ConnState::default());
    let mut io = ConnIo::new(
        stream,
        state.clone(),
        shared.http_metrics.clone(),
        deadlines,
    );
    let mut shutdown = shared.shutdown.subscribe();
    let sniffed = tokio::select! {
        h2 = io.sniff() => h2,
        // Draining: a connection that has not spoken yet is closed at once.
        _ = shutdown.wait_for(|draining| *draining) => None,
    };
    let Some(h2) = sniffed else {
        // Closed, silent past the header-read deadline, or still silent when drain began:
        // nothing to serve.
        return;
    };
    let info = ConnInfo::new(peer, state.clone(), shared.tracker.clone()).with(known);
    let svc_shared = shared.clone();
    // The stack of the snapshot the last request used, kept while no reload replaces it: a
    // request then calls it where it is, instead of finding its role's stack in the snapshot
    // and cloning it (a hash, an allocation, a reference count per layer; about 430 of the
    // 30,000 instructions a request cost). An idle connection so holds on to the snapshot of
    // its last request until its next one or its end. Meanwhile an endpoint pool that only
    // the old config used still closes its idle upstream connections after
    // `spec.pool.idle_timeout`, and is freed with the snapshot.
    let current: RefCell<Option<(Arc<Snapshot>, Option<Stack>)>> = RefCell::new(None);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = state.begin();
        // One snapshot per request: a reload never changes the rules under it.
        let snap = svc_shared.snapshot.load();
        let mut current = current.borrow_mut();
        if !current.as_ref().is_some_and(|(s, _)| Arc::ptr_eq(s, &snap)) {
            let stack = snap.stacks.get(&role).cloned();
            *current = Some((Arc::clone(&snap), stack));
        }
        let stack = current.as_mut().and_then(|(_, stack)| stack.as_mut());
        let mut req: Request<Body> = req.map(attache_filters::boxed);
        req.extensions_mut().insert(info.clone());
        handle(stack, req, in_flight)
    });

    // Each protocol's connection is boxed apart from the task, which stays small: hyper's
    // HTTP/1.1 state is 0.9 KiB and its HTTP/2 state 1.8 KiB (bench/RESULTS.md, memory).
    if h2 {
        let conn = Box::pin(server.http2.serve_connection(TokioIo::new(io), svc));
        drive(conn, |c| c.graceful_shutdown(), shutdown, peer).await;
    } else {
        let conn = server.http1.serve_connection(TokioIo::new(io), svc);
        drive(
            Box::pin(conn.with_upgrades()),
            |c| c.graceful_shutdown(),
            shutdown,
            peer,
        )
        .await;
    }
}

/// Runs a served connection to its end; when drain starts, asks it to finish gracefully
/// (HTTP/1.1: close after the response in flight; HTTP/2: GOAWAY, let streams finish).
async fn drive<C>(
    mut conn: Pin<Box<C>>,
    graceful: impl FnOnce(Pin<&mut C>),
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let draining = std::pin::pin!(async move {
        // An error means the sender is gone: attache is exiting anyway.
        let _ = shutdown.wait_for(|draining| *draining).await;
    });
    let res = match (UntilDrain {
        conn: conn.as_mut(),
        draining,
        woken: Arc::new(DrainWaker {
            signalled: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }),
    })
    .await
    {
        Some(res) => res,
        None => {
            graceful(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A connection's future until it ends (`Some`) or drain starts (`None`).
///
/// The drain signal is polled only when its own waker fired (and once at the start), not on
/// every wakeup of the connection: a `select!` between the two re-polled the watch, and the
/// lock inside it, on every request, about 400 instructions of the 31,000 one cost.
struct UntilDrain<'a, C, D> {
    conn: Pin<&'a mut C>,
    draining: Pin<&'a mut D>,
    woken: Arc<DrainWaker>,
}

/// Wakes the connection's task for the drain signal, and notes that it was the signal.
struct DrainWaker {
    /// The signal woke the task (or has not been polled yet): poll it.
    signalled: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for DrainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.signalled.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<C, D> Future for UntilDrain<'_, C, D>
where
    C: Future,
    D: Future<Output = ()>,
{
    type Output = Option<C::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.woken.task.register(cx.waker());
        if let Poll::Ready(out) = self.conn.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if self.woken.signalled.swap(false, Ordering::AcqRel) {
            let waker = std::task::Waker::from(self.woken.clone());
            if self
                .draining
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tower::util::BoxCloneSyncService;

    use super::*;

    /// A service that is ready only on every other `poll_ready` (waking its caller when it
    /// says no), and that records any call made without readiness.
    #[derive(Clone)]
    struct Reluctant {
        polls: Arc<AtomicUsize>,
        ready: bool,
        unready_calls: Arc<AtomicUsize>,
    }

    impl Service<Request<Body>> for Reluctant {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.polls.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ready = true;
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            if !std::mem::take(&mut self.ready) {
                self.unready_calls.fetch_add(1, Ordering::SeqCst);
            }
            std::future::ready(Ok(Response::new(attache_filters::empty())))
        }
    }

    #[tokio::test]
    async fn a_layer_that_is_not_ready_makes_the_request_wait_never_called_unready() {
        let unready_calls = Arc::new(AtomicUsize::new(0));
        let polls = Arc::new(AtomicUsize::new(0));
        let mut stack: Stack = BoxCloneSyncService::new(Reluctant {
            polls: polls.clone(),
            ready: false,
            unready_calls: unready_calls.clone(),
        });
        let state = Arc::new(ConnState::default());
        for _ in 0..10 {
            let req = Request::new(attache_filters::empty());
            let res = handle(Some(&mut stack), req, state.begin()).await;
            let Ok(res) = res;
            assert_eq!(res.status(), http::StatusCode::OK);
        }
        assert_eq!(unready_calls.load(Ordering::SeqCst), 0);
        // Every request met a "not ready" first (the service alternates), and waited it out.
        assert!(polls.load(Ordering::SeqCst) >= 20, "{polls:?}");
    }
}
