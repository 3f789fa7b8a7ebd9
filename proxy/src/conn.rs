//! Client connections: deadlines, in-flight tracking and drain.
//!
//! hyper's own header-read timeout closes the socket without a word, and its keep-alive has no
//! idle limit. attache wants a `408` problem+json for a client that starts a request head and
//! does not finish it (slowloris), a silent close for one that connects and never speaks, and
//! an idle limit on every connection. [`ConnIo`] wraps the socket to enforce those deadlines: it
//! sees every byte, and learns from [`ConnState`] when hyper has handed a request to attache's
//! service (the head is complete) and when the response has finished.
//!
//! The deadlines cost next to nothing per request: the clock is read once each time a read
//! has to wait, not on every read and write (bytes moving only mark the last activity as out
//! of date), and the timer is moved only when a deadline comes *earlier*. An idle deadline that
//! moved later lets the timer fire at the old time once, and it is set again then. (Reading
//! the clock three times and moving the timer on every request cost about 700 of the 31,000
//! instructions a proxied request took.)
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
use attache_filters::telemetry::families::HttpFamilies;
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
    /// What was known of the connection before its first request, when anything was (one
    /// pointer, so that the plain connection's info stays small: it is cloned per request).
    known: Option<Arc<Known>>,
}

/// What is known of a connection before its first request.
#[derive(Debug, Default)]
pub struct Known {
    /// The TLS session, on a connection that arrived over TLS: the client's verified
    /// certificate under mutual TLS.
    pub tls: Option<crate::tls::server::Session>,
    /// Where the client's connection was sent before iptables redirected it to the capture
    /// listener (`SO_ORIGINAL_DST`).
    pub original_dst: Option<std::net::SocketAddr>,
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
            known: None,
        }
    }

    /// The same connection, with what was known of it before its first request.
    pub fn with(self, known: Known) -> Self {
        let any = known.tls.is_some() || known.original_dst.is_some();
        Self {
            known: any.then(|| Arc::new(known)),
            ..self
        }
    }

    /// The TLS session, when the connection came over TLS.
    pub fn tls(&self) -> Option<&crate::tls::server::Session> {
        self.known.as_ref().and_then(|k| k.tls.as_ref())
    }

    /// The facts of the connection (its TLS session), to hand up to the span.
    pub fn known(&self) -> Option<&Arc<Known>> {
        self.known.as_ref()
    }

    /// Where a captured connection was sent before the redirect.
    pub fn original_dst(&self) -> Option<std::net::SocketAddr> {
        self.known.as_ref().and_then(|k| k.original_dst)
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
    /// The head is due by `deadline`; `None` until the clock is next read (a kept-alive
    /// connection's head is due a header-read timeout after its first bytes came).
    Head {
        deadline: Option<Instant>,
        started: u64,
    },
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
    metrics: Arc<HttpFamilies>,
    limits: Deadlines,
    proto: Proto,
    phase: Phase,
    accepted: Instant,
    /// When bytes last moved, as of the last reading of the clock.
    last_activity: Instant,
    /// Bytes have moved since `last_activity` was taken: it is out of date by less than the
    /// time since then, and the next reading of the clock replaces it.
    moved: bool,
    /// Bytes of a 408 (or of the answer to a head that could not be parsed) still to write
    /// before the socket is shut down.
    farewell: Option<(Vec<u8>, usize)>,
    /// hyper's own answer to a head it could not parse is being replaced: its bytes are
    /// swallowed, attache's are written instead.
    swapped: bool,
    closed: bool,
    /// The first bytes, read by [`ConnIo::sniff`] to pick the protocol, and how many of them
    /// hyper has been given back so far.
    sniffed: [u8; H2_PREFACE.len()],
    sniffed_len: u8,
    sniffed_at: u8,
}

impl<T> ConnIo<T> {
    pub fn new(
        inner: T,
        state: Arc<ConnState>,
        metrics: Arc<HttpFamilies>,
        limits: Deadlines,
    ) -> Self {
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
            moved: false,
            farewell: None,
            swapped: false,
            closed: false,
            sniffed: [0; H2_PREFACE.len()],
            sniffed_len: 0,
            sniffed_at: 0,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> ConnIo<T> {
    /// Reads the connection's first bytes, as many as it takes to tell HTTP/2's prior-knowledge
    /// preface from anything else, and keeps them for hyper to read before the socket's.
    /// `Some(true)` for HTTP/2, `Some(false)` for HTTP/1.1; `None` when the client closed, or
    /// sent nothing before the header-read deadline, so there is nothing to serve.
    ///
    /// attache picks the protocol itself, rather than through hyper-util's `auto` server, so
    /// that an HTTP/1.1 connection holds hyper's HTTP/1.1 state alone (0.96 KiB) and not room
    /// for the larger HTTP/2 one (1.84 KiB), and so that hyper gets the sniffed bytes together
    /// with the rest of the head (see `poll_read`).
    pub async fn sniff(&mut self) -> Option<bool> {
        let mut first = [0u8; H2_PREFACE.len()];
        let mut len = 0;
        let h2 = loop {
            let n = std::future::poll_fn(|cx| {
                let mut buf = ReadBuf::new(&mut first[len..]);
                Pin::new(&mut *self)
                    .poll_read(cx, &mut buf)
                    .map_ok(|()| buf.filled().len())
            })
            .await;
            match n {
                Ok(0) if len == 0 => return None,
                // The client closed mid-way: hyper reads what came, then the end.
                Ok(0) => break false,
                Ok(n) => len += n,
                Err(_) => return None,
            }
            if first[..len] != H2_PREFACE[..len] {
                break false;
            }
            if len == H2_PREFACE.len() {
                break true;
            }
        };
        self.sniffed = first;
        self.sniffed_len = len as u8;
        self.proto = if h2 { Proto::Http2 } else { Proto::Http1 };
        // The first head (HTTP/1.1) is due by the deadline counted from the accept.
        self.phase = if h2 {
            Phase::Open
        } else {
            Phase::Head {
                deadline: Some(self.accepted + self.limits.header_read),
                started: self.state.started.load(Ordering::Acquire),
            }
        };
        Some(h2)
    }

    /// The status of hyper's answer to a request head it could not parse, when `first` (the
    /// start of a write) is one: on HTTP/1.1, hyper writes nothing else while a head is being
    /// read and no request has been handed to attache since (`100 Continue` and every response
    /// come after a request). hyper's answer is an empty 400 (431, 414 past its limits) that
    /// closes the connection, and only a write of that shape is taken for one. (A head that
    /// follows another in the same read, pipelined, is not told apart: hyper's 400 goes out.)
    fn parse_error_status(&self, first: &[u8]) -> Option<http::StatusCode> {
        let Phase::Head { started, .. } = self.phase else {
            return None;
        };
        if self.proto != Proto::Http1
            || self.state.started.load(Ordering::Acquire) != started
            || self.state.in_flight.load(Ordering::Acquire) != 0
        {
            return None;
        }
        // `HTTP/1.1 400 Bad Request`
        let code = first.strip_prefix(b"HTTP/1.")?.get(2..5)?;
        let status = http::StatusCode::from_bytes(code).ok()?;
        let has = |line: &[u8]| first.windows(line.len()).any(|w| w == line);
        (status.is_client_error()
            && has(b"\r\nconnection: close\r\n")
            && has(b"\r\ncontent-length: 0\r\n"))
        .then_some(status)
    }

    /// Answers with attache's problem+json instead of hyper's empty error (whose bytes are
    /// swallowed from here on; hyper closes the connection after it).
    fn swap_for_problem(&mut self, status: http::StatusCode) {
        self.metrics.client_error("malformed_head");
        self.farewell = Some((problem_http1_bytes(&ProxyError::Malformed(status)), 0));
        self.swapped = true;
    }

    /// The next deadline and whether missing it deserves a 408, with the clock read as `now`.
    fn deadline(&mut self, now: Instant) -> (Instant, bool) {
        if std::mem::take(&mut self.moved) {
            self.last_activity = now;
        }
        if let Phase::Head { started, .. } = self.phase
            && self.state.started.load(Ordering::Acquire) != started
        {
            self.phase = Phase::Open;
        }
        let upgraded = self.state.upgraded.load(Ordering::Acquire);
        match &mut self.phase {
            Phase::New if !upgraded => (self.accepted + self.limits.header_read, false),
            Phase::Head { deadline, .. } if !upgraded => (
                *deadline.get_or_insert(self.last_activity + self.limits.header_read),
                true,
            ),
            _ => (self.last_activity + self.limits.idle, false),
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
        // The sniffed bytes go back first, together with whatever else has arrived: a head
        // handed to hyper in two reads makes it grow its read buffer from 8 to 16 KiB (and copy
        // the first 8 into the new one), memory an idle kept-alive connection holds ever after.
        let sniffed = this.sniffed_at < this.sniffed_len;
        if sniffed {
            let rest = &this.sniffed[usize::from(this.sniffed_at)..usize::from(this.sniffed_len)];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.sniffed_at += n as u8;
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    this.moved = true;
                    let idle = this.state.in_flight.load(Ordering::Acquire) == 0;
                    let head_pending = matches!(this.phase, Phase::Head { .. } | Phase::New);
                    if this.proto == Proto::Http1 && idle && !head_pending {
                        // First bytes of a new request on a kept-alive connection.
                        this.phase = Phase::Head {
                            deadline: None,
                            started: this.state.started.load(Ordering::Acquire),
                        };
                    }
                    // `New` lasts until `sniff` has picked the protocol.
                }
                Poll::Ready(Ok(()))
            }
            // The sniffed bytes are this read's; an error or the wait is the next one's.
            Poll::Ready(Err(_)) | Poll::Pending if sniffed => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                let now = Instant::now();
                let (deadline, head) = this.deadline(now);
                if now >= deadline {
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
                // Moved only to an earlier deadline, or once the one it had has passed (it
                // fired, maybe before a deadline that has moved on since).
                let armed = this.timer.deadline();
                if deadline < armed || armed <= now {
                    this.timer.as_mut().reset(deadline);
                }
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            },
        }
    }
}

/// Writes what is left of the farewell (a 408, or the answer to a head that could not be
/// parsed); best effort, the connection is going away regardless.
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
        if !this.swapped
            && let Some(status) = this.parse_error_status(buf)
        {
            this.swap_for_problem(status);
        }
        if this.swapped {
            let _ = flush_farewell(Pin::new(&mut this.inner), &mut this.farewell, cx);
            return Poll::Ready(Ok(buf.len()));
        }
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            this.moved = true;
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.swapped
            && let Some(status) = bufs.first().and_then(|b| this.parse_error_status(b))
        {
            this.swap_for_problem(status);
        }
        if this.swapped {
            let _ = flush_farewell(Pin::new(&mut this.inner), &mut this.farewell, cx);
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            this.moved = true;
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.farewell.is_some()
            && flush_farewell(Pin::new(&mut this.inner), &mut this.farewell, cx).is_pending()
        {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
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

#[cfg(test)]
mod tests {
    use super::*;
    use attache_filters::metrics::Metrics;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn conn_io(header_read: Duration) -> (ConnIo<DuplexStream>, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let limits = Deadlines {
            header_read,
            idle: Duration::from_secs(60),
        };
        let io = ConnIo::new(ours, Arc::default(), Metrics::new().family(), limits);
        (io, theirs)
    }

    /// Everything hyper would read after `sniff`, until the peer's end.
    async fn rest(io: &mut ConnIo<DuplexStream>) -> Vec<u8> {
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn sniff_tells_http2_from_http1_and_gives_every_byte_back() {
        // The preface in three pieces, as a slow client might send it.
        let (mut io, mut peer) = conn_io(Duration::from_secs(5));
        let sending = tokio::spawn(async move {
            for piece in [
                &H2_PREFACE[..3],
                &H2_PREFACE[3..16],
                &H2_PREFACE[16..],
                b"frames",
            ] {
                peer.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert_eq!(io.sniff().await, Some(true));
        assert_eq!(io.proto, Proto::Http2);
        sending.await.expect("sender");
        let mut want = H2_PREFACE.to_vec();
        want.extend_from_slice(b"frames");
        assert_eq!(rest(&mut io).await, want);

        // HTTP/1.1, including a head that starts like the preface and parts from it late.
        for head in [
            &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
            b"PRI * HTTP/1.1\r\nhost: x\r\n\r\n",
            b"G",
        ] {
            let (mut io, mut peer) = conn_io(Duration::from_secs(5));
            peer.write_all(head).await.expect("write");
            drop(peer);
            assert_eq!(io.sniff().await, Some(false), "{head:?}");
            assert_eq!(io.proto, Proto::Http1);
            assert!(
                matches!(io.phase, Phase::Head { .. }),
                "the head's deadline runs"
            );
            // One read gives hyper the sniffed bytes and what followed them, as one read of
            // the socket would have.
            let mut first = [0u8; 1024];
            let n = io.read(&mut first).await.expect("read");
            assert_eq!(&first[..n], head);
            assert_eq!(rest(&mut io).await, b"");
        }
    }

    #[tokio::test]
    async fn sniff_gives_up_on_clients_that_close_or_say_nothing() {
        let (mut io, peer) = conn_io(Duration::from_secs(5));
        drop(peer);
        assert_eq!(io.sniff().await, None);

        // Silent past the header-read deadline: nothing to serve, and counted.
        let (mut io, _peer) = conn_io(Duration::from_millis(300));
        let started = Instant::now();
        assert_eq!(io.sniff().await, None);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let counted = io
            .metrics
            .client_errors
            .get_or_create(&attache_filters::metrics::ResultLabels {
                result: "header_timeout",
            })
            .get();
        assert_eq!(counted, 1);
    }
}
