//! Client connections: deadlines, in-flight tracking and drain.
//!
//! hyper's own header-read timeout closes the socket without a word, and its keep-alive has no
//! idle limit. attache wants a `408` problem+json for a client that starts a request head and
//! does not finish it (slowloris), a silent close for one that connects and never speaks, and
//! an idle limit on every connection. [`ConnIo`] wraps the socket to enforce those deadlines: it
//! sees every byte, and learns from [`ConnState`] when hyper has handed a request to attache's
//! service (the head is complete) and when the response has finished.
//!
//! [`Tracker`] counts live connections (and upgraded tunnels) so drain can wait for them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use attache_filters::errors::{ProxyError, problem_http1_bytes};
use attache_filters::telemetry::Metrics;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a request knows about the connection it arrived on (in its extensions).
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    /// The peer's address as `X-Forwarded-For` carries it, formatted once per connection
    /// (formatting an address costs about as much as the rest of the header rewriting).
    pub peer_ip: http::HeaderValue,
    pub state: Arc<ConnState>,
    pub tracker: Arc<Tracker>,
}

impl ConnInfo {
    pub fn new(peer: std::net::SocketAddr, state: Arc<ConnState>, tracker: Arc<Tracker>) -> Self {
        let peer_ip = http::HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        Self {
            peer,
            peer_ip,
            state,
            tracker,
        }
    }
}

/// What the request side tells the IO side about one connection.
#[derive(Default)]
pub struct ConnState {
    in_flight: AtomicUsize,
    /// Requests handed to the service so far; lets [`ConnIo`] see that a head it was timing
    /// has been parsed.
    started: AtomicU64,
    /// Set once the connection is upgraded (WebSocket): no more request heads will come.
    upgraded: AtomicBool,
}

impl ConnState {
    /// Marks a request as started; the guard marks it finished when dropped (at the end of the
    /// response body, or when the exchange is abandoned).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }
}

pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Proto {
    Unknown,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Accepted, nothing received yet: the first head must start and finish in time.
    New,
    /// Bytes of a request head are arriving; the service has seen `started` requests so far.
    Head { deadline: Instant, started: u64 },
    /// Anything else: only the idle limit applies.
    Open,
}

#[derive(Clone, Copy)]
pub struct Deadlines {
    pub header_read: Duration,
    pub idle: Duration,
}

/// A client socket with attache's deadlines.
pub struct ConnIo<T> {
    inner: T,
    timer: Pin<Box<Sleep>>,
    state: Arc<ConnState>,
    metrics: Arc<Metrics>,
    limits: Deadlines,
    proto: Proto,
    phase: Phase,
    accepted: Instant,
    last_activity: Instant,
    /// Bytes of a 408 still to write before the socket is shut down.
    farewell: Option<(Vec<u8>, usize)>,
    closed: bool,
}

impl<T> ConnIo<T> {
    pub fn new(inner: T, state: Arc<ConnState>, metrics: Arc<Metrics>, limits: Deadlines) -> Self {
        let now = Instant::now();
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep_until(now + limits.header_read)),
            state,
            metrics,
            limits,
            proto: Proto::Unknown,
            phase: Phase::New,
            accepted: now,
            last_activity: now,
            farewell: None,
            closed: false,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> ConnIo<T> {
    /// The next deadline and whether missing it deserves a 408.
    fn deadline(
        phase: &mut Phase,
        state: &ConnState,
        accepted: Instant,
        last: Instant,
        limits: Deadlines,
    ) -> (Instant, bool) {
        if let Phase::Head { started, .. } = *phase
            && state.started.load(Ordering::Acquire) != started
        {
            *phase = Phase::Open;
        }
        let upgraded = state.upgraded.load(Ordering::Acquire);
        match *phase {
            Phase::New if !upgraded => (accepted + limits.header_read, false),
            Phase::Head { deadline, .. } if !upgraded => (deadline, true),
            _ => (last + limits.idle, false),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    this.last_activity = Instant::now();
                    if this.proto == Proto::Unknown {
                        let n = got.len().min(H2_PREFACE.len());
                        this.proto = if got[..n] == H2_PREFACE[..n] {
                            Proto::Http2
                        } else {
                            Proto::Http1
                        };
                    }
                    let idle = this.state.in_flight.load(Ordering::Acquire) == 0;
                    let head_pending = matches!(this.phase, Phase::Head { .. } | Phase::New);
                    if this.proto == Proto::Http1 && idle && !head_pending {
                        // First bytes of a new request on a kept-alive connection.
                        this.phase = Phase::Head {
                            deadline: this.last_activity + this.limits.header_read,
                            started: this.state.started.load(Ordering::Acquire),
                        };
                    } else if let Phase::New = this.phase {
                        this.phase = if this.proto == Proto::Http1 {
                            Phase::Head {
                                deadline: this.accepted + this.limits.header_read,
                                started: this.state.started.load(Ordering::Acquire),
                            }
                        } else {
                            Phase::Open
                        };
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                let (deadline, head) = Self::deadline(
                    &mut this.phase,
                    &this.state,
                    this.accepted,
                    this.last_activity,
                    this.limits,
                );
                if Instant::now() >= deadline {
                    this.closed = true;
                    if head && this.proto == Proto::Http1 {
                        this.metrics.client_error("header_timeout");
                        let bytes = problem_http1_bytes(&ProxyError::HeaderReadTimeout(
                            this.limits.header_read,
                        ));
                        this.farewell = Some((bytes, 0));
                        let _ = flush_farewell(Pin::new(&mut this.inner), &mut this.farewell, cx);
                    } else if matches!(this.phase, Phase::New) {
                        this.metrics.client_error("header_timeout");
                    }
                    // EOF: hyper closes the connection.
                    return Poll::Ready(Ok(()));
                }
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            },
        }
    }
}

/// Writes what is left of the 408; best effort, the connection is going away regardless.
fn flush_farewell<T: AsyncWrite>(
    mut inner: Pin<&mut T>,
    farewell: &mut Option<(Vec<u8>, usize)>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    while let Some((bytes, written)) = farewell {
        match inner.as_mut().poll_write(cx, &bytes[*written..]) {
            Poll::Ready(Ok(n)) if n > 0 && *written + n < bytes.len() => *written += n,
            Poll::Pending => return Poll::Pending,
            _ => *farewell = None,
        }
    }
    Poll::Ready(())
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            this.last_activity = Instant::now();
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            this.last_activity = Instant::now();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if flush_farewell(Pin::new(&mut this.inner), &mut this.farewell, cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

// === Tracker ===

/// Counts live connections and tunnels; drain waits until the count reaches zero.
#[derive(Default)]
pub struct Tracker {
    live: AtomicUsize,
    idle: Notify,
}

pub struct Tracked(Arc<Tracker>);

impl Tracker {
    pub fn track(self: &Arc<Self>) -> Tracked {
        self.live.fetch_add(1, Ordering::AcqRel);
        Tracked(self.clone())
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Resolves once nothing is tracked.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
