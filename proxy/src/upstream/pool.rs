//! Upstream connections: a keep-alive pool per endpoint, on hyper's connection API.
//!
//! Each endpoint of a target (the app, a named upstream) owns its idle HTTP/1.1 connections, a
//! short stack under an uncontended lock, and for HTTP/2 one shared connection. The endpoint's
//! pool is found once, when a config snapshot is built, so a request takes a connection by
//! popping the stack: no pool key is hashed and no task is spawned per request. (hyper-util's
//! pooled client, used before, hashed the scheme and authority with SipHash on every checkout
//! and every return, about 2,000 instructions of the 41,000 a proxied request cost.)
//!
//! A connection returns to its stack when the response body has been read to the end, so a
//! connection is only reused once its previous exchange is complete. A pooled connection that
//! the upstream closed meanwhile is noticed on checkout (hyper's connection task watches the
//! socket) or, in the race where it closes as the request is handed over, by the request coming
//! back unsent: it is then sent once more on a fresh connection. In the race where it closes
//! just after the request went out (the upstream's keep-alive timer), only a request that may
//! run twice goes again (see `MAY_BE_CLOSING_AFTER`).
//!
//! Pools are kept across config reloads ([`Client`] hands out the same endpoint pool for the
//! same address) and close their connections when the last snapshot using them is dropped.
//! Idle connections past `spec.pool.idle_timeout` are closed by a timer task per endpoint;
//! past `spec.pool.max_idle_per_endpoint`, a returning connection is closed instead.
//!
//! The request timeout (the response head is due by a deadline) runs on a timer that each
//! HTTP/1.1 connection keeps for its whole life, not on one made per request: registering a
//! timer and cancelling it cost about 650 of the 31,000 instructions a proxied request took.
//! A connection's exchanges run one after another, so each deadline is later than the last;
//! the timer is moved only when it fires before the exchange in flight is due (once per
//! timeout period on a busy connection) or when a deadline is earlier than the one it holds.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

mod deadline;
mod pooled;

use self::deadline::{Timer, by_deadline};
use self::pooled::{Back, Pooled};
use super::connector::{Connector, Stream};
use super::failure::SendError;
use crate::metrics::{EndpointLabels, ProxyFamilies};
use attache_config::Protocol;
use attache_filters::Body;
use attache_filters::metrics::Metrics;
use http::{Request, Response, StatusCode};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tower::ServiceExt;

/// How connections to every endpoint of a [`Client`] are made and kept.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    pub protocol: Protocol,
}

/// The endpoint pools of one connection policy, by address.
#[derive(Clone)]
pub struct Client {
    settings: Settings,
    metrics: Arc<ProxyFamilies>,
    endpoints: Arc<Mutex<HashMap<String, Weak<Endpoint>>>>,
}

impl Client {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            metrics: metrics.family(),
            endpoints: Arc::default(),
        }
    }

    /// The pool for `addr` (`host:port`): the one already in use, or a new one.
    pub fn endpoint(&self, addr: &str) -> Arc<Endpoint> {
        self.endpoint_with(addr, None)
    }

    /// The pool for `addr` with `tls` over its connections (`https://`): pools under other
    /// TLS settings, or none, are never shared with it.
    pub fn endpoint_with(
        &self,
        addr: &str,
        tls: Option<Arc<super::tls::TlsOrigin>>,
    ) -> Arc<Endpoint> {
        let key = match &tls {
            Some(t) => format!("{addr}|{}", t.identity),
            None => addr.to_owned(),
        };
        let mut map = lock(&self.endpoints);
        if let Some(pool) = map.get(&key).and_then(Weak::upgrade) {
            return pool;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let opened = self
            .metrics
            .upstream_connections
            .get_or_create(&EndpointLabels {
                endpoint: addr.to_owned(),
            })
            .clone();
        let open = self
            .metrics
            .upstream_open_connections
            .get_or_create(&EndpointLabels {
                endpoint: addr.to_owned(),
            })
            .clone();
        let pool = Endpoint::new(addr.to_owned(), self.settings, (opened, open), tls);
        map.insert(key, Arc::downgrade(&pool));
        pool
    }
}

/// A kept-alive connection idle at least this long may be closed by the upstream's keep-alive
/// timer just as a request goes out on it (Node.js and uvicorn close idle connections after
/// 5 s, gunicorn after 2 s): the request reaches a socket being closed and gets no answer. On
/// such a connection a request that may safely be sent twice (an idempotent method, no body,
/// not an upgrade: RFC 9110 §9.2.2) keeps a copy of its head, and goes once more on a new
/// connection if the old one closes unanswered. A busier connection makes no copy: keep-alive
/// timers are not that short, and the copy would cost every request under load.
const MAY_BE_CLOSING_AFTER: Duration = Duration::from_secs(1);

/// On a response to a request that went out twice (see `MAY_BE_CLOSING_AFTER`): its span
/// counts the resend.
#[derive(Clone, Copy)]
pub struct Resent;

/// The head of `req` if it may be sent again after it went out unanswered.
fn replayable(req: &Request<Body>) -> Option<Request<()>> {
    use http::Method;
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !idempotent
        || !http_body::Body::is_end_stream(req.body())
        || req.headers().contains_key(http::header::UPGRADE)
    {
        return None;
    }
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    Some(head)
}

/// The connection ended before any of the response arrived: closed (end of stream, or reset
/// as the request reached a socket being closed).
fn closed_unanswered(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            );
        }
        source = s.source();
    }
    false
}

/// A request that got no response, and the request itself when it never left attache: no
/// connection could be made, so nothing of it was sent or read (its body included) and it may
/// go to another endpoint whole, whatever its method.
#[derive(Debug)]
pub struct NoResponse {
    pub error: SendError,
    /// Boxed: it is there only on this rare path, and the `Result` every exchange returns
    /// stays the size of a response.
    pub unsent: Option<Box<Request<Body>>>,
}

impl NoResponse {
    fn sent(error: hyper::Error) -> Self {
        Self {
            error: SendError::Exchange(error),
            unsent: None,
        }
    }

    fn unsent(error: SendError, req: Request<Body>) -> Self {
        Self {
            error,
            unsent: Some(Box::new(req)),
        }
    }

    fn timed_out() -> Self {
        Self {
            error: SendError::TimedOut,
            unsent: None,
        }
    }
}

/// The connections to one endpoint.
pub struct Endpoint {
    addr: String,
    settings: Settings,
    /// Makes its new connections: the seam where TLS origination plugs in.
    connector: Connector,
    /// `attache_upstream_connections_opened_total` for this endpoint.
    opened: prometheus_client::metrics::counter::Counter,
    /// `attache_upstream_open_connections` for this endpoint.
    open: prometheus_client::metrics::gauge::Gauge,
    /// Idle HTTP/1.1 connections, the most recently used on top.
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection every request shares, and when a request last took it.
    h2: Mutex<Option<Shared>>,
    /// Held while an HTTP/2 connection is being made, so a burst makes one, not one each.
    h2_connecting: tokio::sync::Mutex<()>,
}

struct Idle {
    conn: http1::SendRequest<Body>,
    timer: Timer,
    since: Instant,
}

struct Shared {
    conn: http2::SendRequest<Body>,
    used: Instant,
}

impl Endpoint {
    fn new(
        addr: String,
        settings: Settings,
        (opened, open): (
            prometheus_client::metrics::counter::Counter,
            prometheus_client::metrics::gauge::Gauge,
        ),
        tls: Option<Arc<super::tls::TlsOrigin>>,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            addr,
            connector: Connector {
                timeout: settings.connect_timeout,
                tls,
            },
            settings,
            opened,
            open,
            idle: Mutex::default(),
            h2: Mutex::default(),
            h2_connecting: tokio::sync::Mutex::default(),
        });
        // Outside a runtime (config checks), nothing is ever pooled, so nothing needs closing.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&pool);
            let period = (settings.idle_timeout / 2).max(Duration::from_millis(100));
            rt.spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(pool) => pool.close_expired(),
                        None => break,
                    }
                }
            });
        }
        pool
    }

    /// Sends `req` on a pooled connection or a new one; its response head is due by `deadline`
    /// (`now` is the clock as the exchange began). The response body gives the connection
    /// back when it has been read to the end. The request target goes out as it is:
    /// origin-form (`/path`) for HTTP/1.1; HTTP/2 needs the scheme and authority.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        now: Instant,
        deadline: Instant,
    ) -> Result<Response<Body>, NoResponse> {
        match self.settings.protocol {
            Protocol::Http1 => self.send_h1(req, now, deadline).await,
            Protocol::Http2 => tokio::time::timeout_at(deadline, self.send_h2(req))
                .await
                .unwrap_or_else(|_| Err(NoResponse::timed_out())),
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<Body>,
        now: Instant,
        deadline: Instant,
    ) -> Result<Response<Body>, NoResponse> {
        // The head of a request that may go again, kept while it rides a connection that may be
        // closing (see `MAY_BE_CLOSING_AFTER`).
        let mut replay: Option<Request<()>> = None;
        // After such a connection closed unanswered, the copy goes on a new connection.
        let mut fresh = false;
        loop {
            let (mut conn, mut timer, reused) = match if fresh { None } else { self.checkout(now) }
            {
                Some((conn, timer, idle)) => {
                    if idle >= MAY_BE_CLOSING_AFTER {
                        replay = replayable(&req);
                    }
                    (conn, timer, true)
                }
                // Boxed: the connect future is large and rare; inline, every request's
                // future would carry (and move) its space.
                // The new connection's timer bounds the connect too.
                None => {
                    let mut timer = Box::pin(tokio::time::sleep_until(deadline));
                    match by_deadline(Box::pin(self.connect_h1()), &mut timer, deadline).await {
                        Some(Ok(conn)) => (conn, timer, false),
                        Some(Err(e)) => return Err(NoResponse::unsent(e, req)),
                        None => return Err(NoResponse::timed_out()),
                    }
                }
            };
            // Past the deadline the exchange is abandoned, and the connection closes with it.
            let Some(answer) = by_deadline(conn.try_send_request(req), &mut timer, deadline).await
            else {
                return Err(NoResponse::timed_out());
            };
            match answer {
                Ok(res) => {
                    // After a protocol switch the connection belongs to the tunnel.
                    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                        return Ok(res.map(attache_filters::boxed));
                    }
                    let back = Some(Back {
                        conn,
                        timer,
                        pool: self.clone(),
                    });
                    let mut res = res.map(|inner| attache_filters::boxed(Pooled { inner, back }));
                    if fresh {
                        res.extensions_mut().insert(Resent);
                    }
                    return Ok(res);
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection closed as the request was handed to it; the request
                    // never went out, so it goes on a fresh connection.
                    Some(unsent) if reused => req = unsent,
                    // It closed after the request went out and before any answer: the
                    // upstream's keep-alive timer fired as the request arrived. A request that
                    // may safely run twice goes once more, on a new connection.
                    None if reused
                        && closed_unanswered(e.error())
                        && let Some(head) = replay.take() =>
                    {
                        tracing::debug!(endpoint = %self.addr, error = %e.error(), "a kept-alive connection closed unanswered; sending the request again on a new one");
                        req = head.map(|()| attache_filters::empty());
                        fresh = true;
                    }
                    _ => return Err(NoResponse::sent(e.into_error())),
                },
            }
        }
    }

    async fn send_h2(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, NoResponse> {
        // After a request came back unsent, it goes on a connection of its own making.
        let mut fresh = false;
        loop {
            let shared = if fresh { None } else { self.shared_h2() };
            let made = match shared {
                Some(conn) => Ok((conn, true)),
                None if fresh => Box::pin(self.connect_h2()).await.map(|c| (c, false)),
                None => {
                    let _connecting = self.h2_connecting.lock().await;
                    match self.shared_h2() {
                        Some(conn) => Ok((conn, true)),
                        None => Box::pin(self.connect_h2()).await.map(|c| (c, false)),
                    }
                }
            };
            let (mut conn, reused) = match made {
                Ok(made) => made,
                Err(e) => return Err(NoResponse::unsent(e, req)),
            };
            match conn.try_send_request(req).await {
                Ok(res) => return Ok(res.map(attache_filters::boxed)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        // Forget the closed connection (not a fresh one another request
                        // may have made meanwhile).
                        let mut shared = lock(&self.h2);
                        if shared.as_ref().is_some_and(|s| s.conn.is_closed()) {
                            *shared = None;
                        }
                        drop(shared);
                        fresh = true;
                        req = unsent;
                    }
                    _ => return Err(NoResponse::sent(e.into_error())),
                },
            }
        }
    }

    fn shared_h2(&self) -> Option<http2::SendRequest<Body>> {
        let mut shared = lock(&self.h2);
        let s = shared.as_mut().filter(|s| !s.conn.is_closed())?;
        s.used = Instant::now();
        Some(s.conn.clone())
    }

    /// The most recently used idle connection that is still open, its timer, and how long it
    /// was idle as of `now`.
    fn checkout(&self, now: Instant) -> Option<(http1::SendRequest<Body>, Timer, Duration)> {
        let mut idle = lock(&self.idle);
        while let Some(Idle { conn, timer, since }) = idle.pop() {
            let idle_for = now.saturating_duration_since(since);
            if conn.is_ready() && idle_for < self.settings.idle_timeout {
                return Some((conn, timer, idle_for));
            }
        }
        None
    }

    /// Takes back a connection whose exchange is complete.
    fn put(self: Arc<Self>, mut conn: http1::SendRequest<Body>, timer: Timer) {
        if conn.is_ready() {
            self.push(conn, timer);
        } else if !conn.is_closed() {
            // The connection task has not yet seen the end of the exchange (a request body
            // still being written after an early response): it rejoins the pool once ready.
            tokio::spawn(async move {
                if conn.ready().await.is_ok() {
                    self.push(conn, timer);
                }
            });
        }
    }

    fn push(&self, conn: http1::SendRequest<Body>, timer: Timer) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.settings.max_idle {
            idle.push(Idle {
                conn,
                timer,
                since: Instant::now(),
            });
        }
    }

    fn close_expired(&self) {
        let timeout = self.settings.idle_timeout;
        lock(&self.idle).retain(|i| i.conn.is_ready() && i.since.elapsed() < timeout);
        // Dropping the pool's handle closes the HTTP/2 connection once its streams are done;
        // a stream still running keeps it open until then.
        let mut h2 = lock(&self.h2);
        if h2
            .as_ref()
            .is_some_and(|s| s.conn.is_closed() || s.used.elapsed() >= timeout)
        {
            *h2 = None;
        }
    }

    /// Idle connections held now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<Body>, SendError> {
        let io = TokioIo::new(self.connect().await?);
        let (conn, task) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Handshake)?;
        self.drive(task.with_upgrades());
        Ok(conn)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<Body>, SendError> {
        let io = TokioIo::new(self.connect().await?);
        let (conn, task) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(SendError::Handshake)?;
        self.drive(task);
        *lock(&self.h2) = Some(Shared {
            conn: conn.clone(),
            used: Instant::now(),
        });
        Ok(conn)
    }

    /// Runs a connection's task, counted as open until it ends.
    fn drive<F>(&self, task: F)
    where
        F: Future<Output = Result<(), hyper::Error>> + Send + 'static,
    {
        let open = OpenGuard::new(&self.open);
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = task.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
    }

    /// A new connection to the endpoint, from the connector (counted).
    async fn connect(&self) -> Result<Stream, SendError> {
        let stream = self.connector.clone().oneshot(self.addr.clone()).await?;
        self.opened.inc();
        Ok(stream)
    }
}

/// Counts a connection as open in its endpoint's gauge until its task ends.
struct OpenGuard(prometheus_client::metrics::gauge::Gauge);

impl OpenGuard {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
