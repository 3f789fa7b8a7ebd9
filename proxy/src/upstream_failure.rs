//! Why an exchange with an upstream failed, as one typed kind. The response status, the
//! `attache_upstream_errors_total{kind}` label and the span's `error.type` (also the access
//! log's `error`) all derive from it here, and nowhere else. The kind is read from the error's
//! types, never from its text: the variants of [`SendError`] (what the connector and the pool
//! report), hyper's predicates, `io::ErrorKind`, `h2`'s reasons.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use attache_filters::errors::ProxyError;

/// Why a request got no response from an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No response head by the exchange's deadline (the request timeout).
    #[error("no response by the deadline")]
    TimedOut,
    #[error("dns error: {0}")]
    Resolve(#[source] io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Connect(#[source] io::Error),
    #[error("handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
}

/// What went wrong with an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The endpoint refused the connection (nothing listens there).
    Refused,
    /// The endpoint's name did not resolve.
    Dns,
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// No connection for another reason (unreachable network, a failed HTTP/2 handshake).
    Connect,
    /// Connected, but no response head by the request's deadline.
    Timeout,
    /// The connection or stream was closed or reset before the response head.
    Reset,
    /// The upstream broke HTTP: an unparseable or oversized response head, a frame it must
    /// not send, or a response attache will not pass on.
    Protocol,
}

impl Failure {
    /// Classifies a failed send. A request body over its limit and a client's broken body are
    /// not upstream failures; the forwarder sorts those out first.
    pub fn of(e: &SendError) -> Self {
        match e {
            SendError::TimedOut => Self::Timeout,
            SendError::ConnectTimeout => Self::ConnectTimeout,
            SendError::Resolve(_) => Self::Dns,
            SendError::Connect(io) => match io.kind() {
                io::ErrorKind::ConnectionRefused => Self::Refused,
                io::ErrorKind::TimedOut => Self::ConnectTimeout,
                _ => Self::Connect,
            },
            SendError::Handshake(_) => Self::Connect,
            SendError::Exchange(h) => exchange(h),
        }
    }

    /// The `kind` label of `attache_upstream_errors_total`.
    pub fn metric_kind(self) -> &'static str {
        match self {
            Self::Refused | Self::Dns | Self::ConnectTimeout | Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Protocol => "protocol",
        }
    }

    /// The span's `error.type` and the access log's `error` (OpenTelemetry's names where it
    /// has them; `_OTHER` otherwise).
    pub fn error_type(self) -> &'static str {
        match self {
            Self::Refused => "connection_refused",
            Self::Dns => "dns",
            Self::ConnectTimeout | Self::Timeout => "timeout",
            Self::Connect => "_OTHER",
            Self::Reset => "connection_reset",
            Self::Protocol => "protocol",
        }
    }

    /// The error the client is answered with (its status and problem type): 504 for the
    /// timeouts (`after`: the timeout that ran out), 502 for the rest.
    pub fn answer(self, upstream: String, reason: String, after: Duration) -> ProxyError {
        match self {
            Self::ConnectTimeout | Self::Timeout => ProxyError::UpstreamTimeout { upstream, after },
            Self::Refused | Self::Dns | Self::Connect => {
                ProxyError::UpstreamUnreachable { upstream, reason }
            }
            Self::Reset | Self::Protocol => ProxyError::UpstreamFailed { upstream, reason },
        }
    }
}

/// A failure after the connection was made: closed or reset before the response head, or a
/// broken response.
fn exchange(h: &hyper::Error) -> Failure {
    if h.is_parse() || h.is_parse_too_large() || h.is_parse_status() {
        return Failure::Protocol;
    }
    if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
        return Failure::Reset;
    }
    let mut cur: Option<&(dyn StdError + 'static)> = h.source();
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => Failure::Reset,
                _ => Failure::Protocol,
            };
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            // A stream reset or a GOAWAY from the upstream, or its connection lost, ends the
            // exchange; any other HTTP/2 error is the upstream breaking the protocol.
            return if h2.is_reset() || h2.is_go_away() || h2.is_io() {
                Failure::Reset
            } else {
                Failure::Protocol
            };
        }
        cur = err.source();
    }
    Failure::Protocol
}

#[cfg(test)]
mod tests {
    use attache_filters::errors::Problem as _;
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// The error hyper's client gives for one exchange with an upstream that reads the request
    /// head and then answers `reply` (or closes, for an empty one).
    async fn exchange_with(reply: &'static [u8]) -> SendError {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply).await;
            // Dropped: closed.
        });
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        match send.send_request(req).await {
            Ok(res) => panic!("a response: {res:?}"),
            Err(e) => SendError::Exchange(e),
        }
    }

    #[tokio::test]
    async fn each_kind_is_read_from_the_errors_types() {
        let closed = Failure::of(&exchange_with(b"").await);
        assert_eq!(closed, Failure::Reset);
        let garbage = Failure::of(&exchange_with(b"HTTP/9 nonsense\r\n\r\n").await);
        assert_eq!(garbage, Failure::Protocol);
        let half = Failure::of(&exchange_with(b"HTTP/1.1 200 OK\r\nconte").await);
        assert_eq!(half, Failure::Reset);

        // Nothing listens on a port just released.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let refused = TcpStream::connect(port).await.unwrap_err();
        assert_eq!(Failure::of(&SendError::Connect(refused)), Failure::Refused);
        let slow = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(
            Failure::of(&SendError::Connect(slow)),
            Failure::ConnectTimeout
        );
        let dns = io::Error::other("no such host");
        assert_eq!(Failure::of(&SendError::Resolve(dns)), Failure::Dns);
        assert_eq!(Failure::of(&SendError::TimedOut), Failure::Timeout);
    }

    #[test]
    fn status_label_and_error_type_come_from_the_kind() {
        let after = Duration::from_secs(1);
        let cases = [
            (Failure::Refused, "connect", "connection_refused", 502),
            (Failure::Dns, "connect", "dns", 502),
            (Failure::ConnectTimeout, "connect", "timeout", 504),
            (Failure::Connect, "connect", "_OTHER", 502),
            (Failure::Timeout, "timeout", "timeout", 504),
            (Failure::Reset, "reset", "connection_reset", 502),
            (Failure::Protocol, "protocol", "protocol", 502),
        ];
        for (f, kind, error_type, status) in cases {
            assert_eq!(f.metric_kind(), kind, "{f:?}");
            assert_eq!(f.error_type(), error_type, "{f:?}");
            let answer = f.answer("app".into(), "why".into(), after);
            assert_eq!(answer.status().as_u16(), status, "{f:?}");
        }
    }
}
