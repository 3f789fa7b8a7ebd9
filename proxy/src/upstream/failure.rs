//! Why an exchange with an upstream failed, as one typed kind. The response status, the
//! metric it is counted under (`attache_upstream_errors_total{kind}`, or
//! `attache_client_errors_total{result}` when the client's own body was at fault), the span's
//! `error.type` (also the access log's `error`) and the problem's wording all derive from it
//! here, and nowhere else. The kind is read from the error's types, never from its text: the
//! variants of [`SendError`] (what the connector, the pool and the forwarder report), hyper's
//! predicates, `io::ErrorKind`, `h2`'s reasons.

use std::error::Error as StdError;
use std::io;

use attache_config::Timeouts;
use attache_filters::errors::{ProxyError, error_chain};

use crate::limits::BodyLimitExceeded;

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
    /// A response that came, and that attache will not pass on (the reason says why).
    #[error("{0}")]
    Unacceptable(String),
    /// The TLS handshake with the endpoint failed (its certificate, the name, the protocol).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] io::Error),
    /// A sharded upstream that rejects requests without a key got one without.
    #[error("the request carries no shard key")]
    NoShardKey,
    /// The request's body failed while attache held it for a retry (the client broke its
    /// framing or went away, or it went over its limit).
    #[error("{0}")]
    ClientBody(#[source] attache_filters::BoxError),
}

/// What went wrong with an exchange.
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
    /// The TLS handshake failed: an expired, mismatched or unknown certificate, say.
    Tls,
    /// Connected, but no response head by the request's deadline.
    Timeout,
    /// The connection or stream was closed or reset before the response head.
    Reset,
    /// The upstream broke HTTP: an unparseable or oversized response head, a frame it must
    /// not send, or a response attache will not pass on.
    Protocol,
    /// The request's body went over `spec.limits.max_body_bytes` as it was sent.
    BodyLimit,
    /// The request's own body broke HTTP framing (a bad chunk, a length it did not keep to):
    /// the client's fault, not the upstream's.
    ClientMalformed,
    /// The client went away while its body was being sent.
    ClientAborted,
    /// The request has no shard key and its upstream rejects such requests.
    NoShardKey,
}

/// The counter a failure is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// `attache_upstream_errors_total{kind}`.
    Upstream(&'static str),
    /// `attache_client_errors_total{result}`.
    Client(&'static str),
    /// Counted elsewhere, or not an error of either side (a body over the limit is counted
    /// by the limits step; a client abort by the observe step, which also sees the exchanges
    /// dropped before they got this far).
    Elsewhere,
}

impl Failure {
    /// Classifies a failed send.
    pub fn of(e: &SendError) -> Self {
        if source::<BodyLimitExceeded>(e).is_some() {
            return Self::BodyLimit;
        }
        if let Some(fault) = client_body_fault(e) {
            return fault;
        }
        if let SendError::ClientBody(read) = e {
            return match client_fault(read.as_ref()) {
                Some(_) => Self::ClientMalformed,
                None => Self::ClientAborted,
            };
        }
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
            SendError::Unacceptable(_) => Self::Protocol,
            SendError::ClientBody(_) => Self::ClientAborted,
            SendError::NoShardKey => Self::NoShardKey,
            SendError::Tls(_) => Self::Tls,
        }
    }

    /// Where the failure is counted.
    pub fn counted(self) -> Counted {
        match self {
            Self::Refused | Self::Dns | Self::ConnectTimeout | Self::Connect => {
                Counted::Upstream("connect")
            }
            Self::Tls => Counted::Upstream("tls"),
            Self::Timeout => Counted::Upstream("timeout"),
            Self::Reset => Counted::Upstream("reset"),
            Self::Protocol => Counted::Upstream("protocol"),
            Self::ClientMalformed => Counted::Client("malformed_body"),
            Self::NoShardKey => Counted::Client("no_shard_key"),
            Self::BodyLimit | Self::ClientAborted => Counted::Elsewhere,
        }
    }

    /// Whether the upstream is at fault (logged as a warning), rather than the client.
    pub fn is_upstream(self) -> bool {
        matches!(self.counted(), Counted::Upstream(_))
    }

    /// The span's `error.type` and the access log's `error` (OpenTelemetry's names where it
    /// has them; `_OTHER` otherwise).
    pub fn error_type(self) -> &'static str {
        match self {
            Self::Refused => "connection_refused",
            Self::Dns => "dns",
            Self::ConnectTimeout | Self::Timeout => "timeout",
            Self::Connect => "_OTHER",
            Self::Tls => "tls",
            Self::Reset => "connection_reset",
            Self::Protocol => "protocol",
            Self::BodyLimit => "body",
            Self::ClientMalformed => "malformed_body",
            Self::ClientAborted => "aborted",
            Self::NoShardKey => "no_shard_key",
        }
    }

    /// The error the client is answered with (its status, problem type and wording): 504 for
    /// the timeouts, 502 for the upstream's other failures, 413 for a body over its limit,
    /// 400 for a malformed body, 499 when the client left.
    pub fn answer(self, e: &SendError, upstream: &str, timeouts: &Timeouts) -> ProxyError {
        let upstream = upstream.to_owned();
        match self {
            Self::ConnectTimeout => ProxyError::UpstreamTimeout {
                upstream,
                after: timeouts.connect.get(),
            },
            Self::Timeout => ProxyError::UpstreamTimeout {
                upstream,
                after: timeouts.request.get(),
            },
            Self::Refused => ProxyError::UpstreamUnreachable {
                upstream,
                reason: "connection refused".to_owned(),
            },
            Self::Dns | Self::Connect | Self::Tls => ProxyError::UpstreamUnreachable {
                upstream,
                reason: error_chain(e),
            },
            Self::Reset | Self::Protocol => ProxyError::UpstreamFailed {
                upstream,
                reason: match e {
                    // hyper's limits for a response head, as Envoy's defaults: say which.
                    SendError::Exchange(h) if h.is_parse_too_large() => {
                        "its response head is too large (more than 100 header lines, or over \
                         400 KiB)"
                            .to_owned()
                    }
                    _ => error_chain(e),
                },
            },
            Self::BodyLimit => ProxyError::BodyTooLarge {
                limit: source::<BodyLimitExceeded>(e).map_or(0, |l| l.limit),
            },
            Self::ClientMalformed => ProxyError::MalformedBody(
                client_fault_reason(e)
                    .or_else(|| match e {
                        SendError::ClientBody(read) => client_fault(read.as_ref()),
                        _ => None,
                    })
                    .unwrap_or_else(|| error_chain(e)),
            ),
            Self::ClientAborted => ProxyError::ClientAborted,
            Self::NoShardKey => ProxyError::BadRequest(format!(
                "upstream `{upstream}` is sharded and the request carries no shard key"
            )),
        }
    }
}

/// Why a TLS handshake with an endpoint failed, as a metric label (see
/// [`crate::tls::failure_reason`]).
pub fn tls_reason(e: &SendError) -> &'static str {
    match e {
        SendError::Tls(io) => crate::tls::io_failure_reason(io),
        _ => "other",
    }
}

/// The first error of type `E` in `e`'s chain of sources.
fn source<'a, E: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut cur: Option<&'a (dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

/// The error under hyper's "error from user's Body stream" when it came from reading the
/// client's body from its connection (another `hyper::Error` under it): then the request's
/// own body, not the upstream, failed the exchange.
fn client_read_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    let mut cur: Option<&'a (dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            break;
        }
        cur = err.source();
    }
    let read = cur?.source()?;
    read.downcast_ref::<hyper::Error>()?;
    Some(read)
}

/// Whether the client's body failed the exchange, and how: it broke HTTP framing (a bad chunk
/// size or line, an oversized chunk extension, a length the stream did not keep to), or the
/// client went away mid-body (the connection closed or reset, the stream was reset). Read from
/// the error types (io kinds, HTTP/2 reasons), not from their text.
fn client_body_fault(e: &(dyn StdError + 'static)) -> Option<Failure> {
    Some(match client_fault(client_read_error(e)?) {
        Some(_) => Failure::ClientMalformed,
        None => Failure::ClientAborted,
    })
}

/// What the client's malformed body did wrong, for the 400's detail.
fn client_fault_reason(e: &(dyn StdError + 'static)) -> Option<String> {
    client_fault(client_read_error(e)?)
}

/// `Some(reason)` when the error reading the client's body is a malformed body; `None` when it
/// is the client leaving.
fn client_fault(read: &(dyn StdError + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(read);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => Some(io.to_string()),
                _ => None,
            };
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            // A reason attache's side found (a length the stream broke, a flow-control
            // violation) is the client's malformed stream; a reset, GOAWAY or I/O error from the
            // client's side is the client leaving.
            let local = !h2.is_remote() && !h2.is_io();
            return match h2.reason() {
                Some(reason) if local && reason != h2::Reason::CANCEL => Some(h2.to_string()),
                _ => None,
            };
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() {
                return Some(h.to_string());
            }
            if h.is_incomplete_message() {
                return None;
            }
        }
        cur = err.source();
    }
    None
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
        assert_eq!(Failure::of(&SendError::NoShardKey), Failure::NoShardKey);
        // A body that failed while held for a retry: the client's fault, read from its type.
        let gone = SendError::ClientBody(Box::new(io::Error::from(io::ErrorKind::ConnectionReset)));
        assert_eq!(Failure::of(&gone), Failure::ClientAborted);
        let bad = SendError::ClientBody(Box::new(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad chunk size",
        )));
        assert_eq!(Failure::of(&bad), Failure::ClientMalformed);
    }

    #[test]
    fn status_label_and_error_type_come_from_the_kind() {
        let after = std::time::Duration::from_secs(1);
        let cases = [
            (Failure::Refused, "connect", "connection_refused", 502),
            (Failure::Dns, "connect", "dns", 502),
            (Failure::ConnectTimeout, "connect", "timeout", 504),
            (Failure::Connect, "connect", "_OTHER", 502),
            (Failure::Tls, "tls", "tls", 502),
            (Failure::Timeout, "timeout", "timeout", 504),
            (Failure::Reset, "reset", "connection_reset", 502),
            (Failure::Protocol, "protocol", "protocol", 502),
        ]
        .map(|(f, kind, t, s)| (f, Counted::Upstream(kind), t, s));
        let client = [
            (Failure::BodyLimit, Counted::Elsewhere, "body", 413),
            (
                Failure::ClientMalformed,
                Counted::Client("malformed_body"),
                "malformed_body",
                400,
            ),
            (Failure::ClientAborted, Counted::Elsewhere, "aborted", 499),
            (
                Failure::NoShardKey,
                Counted::Client("no_shard_key"),
                "no_shard_key",
                400,
            ),
        ];
        let timeouts = Timeouts {
            connect: attache_config::Duration(after),
            request: attache_config::Duration(after),
        };
        let why = SendError::Unacceptable("why".into());
        for (f, kind, error_type, status) in cases.into_iter().chain(client) {
            assert_eq!(f.counted(), kind, "{f:?}");
            assert_eq!(f.error_type(), error_type, "{f:?}");
            let answer = f.answer(&why, "app", &timeouts);
            assert_eq!(answer.status().as_u16(), status, "{f:?}");
        }
    }
}
