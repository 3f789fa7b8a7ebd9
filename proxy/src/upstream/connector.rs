//! The connector: the bottom of the outbound tail, where a connection to one endpoint is made.
//! A tower `Service` from an endpoint's `host:port` to a [`Stream`], so that the pool above
//! does not care how a stream came to be: this is the seam where TLS origination plugs in (a
//! `Stream` variant and a connector that wraps this one).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::Service;

use super::failure::SendError;

/// A connection to an endpoint.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    /// Boxed: a TLS session's state is large, and most connections are plain.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Makes TCP connections: every address the name resolves to, tried in order, within the
/// connect timeout; no Nagle delay, keep-alive probes after a minute of silence.
#[derive(Clone)]
pub struct Connector {
    pub timeout: Duration,
    /// For an `https://` endpoint: the TLS session to open over the connection.
    pub tls: Option<std::sync::Arc<super::tls::TlsOrigin>>,
}

impl Connector {
    pub async fn connect(&self, addr: &str) -> Result<Stream, SendError> {
        let attempt = async {
            let mut last = None;
            for addr in tokio::net::lookup_host(addr)
                .await
                .map_err(SendError::Resolve)?
            {
                match TcpStream::connect(addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(SendError::Connect(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the name has no addresses")
            })))
        };
        let stream = tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| SendError::ConnectTimeout)??;
        // Best effort: a socket that refuses these options still carries requests.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let Some(tls) = &self.tls else {
            return Ok(Stream::Tcp(stream));
        };
        // The handshake is part of connecting: it has the connect timeout too.
        let handshake = tls.connector.connect(tls.server_name.clone(), stream);
        match tokio::time::timeout(self.timeout, handshake).await {
            Ok(Ok(session)) => Ok(Stream::Tls(Box::new(session))),
            Ok(Err(e)) => Err(SendError::Tls(e)),
            Err(_) => Err(SendError::ConnectTimeout),
        }
    }
}

impl Service<String> for Connector {
    type Response = Stream;
    type Error = SendError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, SendError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, addr: String) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.connect(&addr).await })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    use super::*;
    use crate::upstream::failure::Failure;

    #[tokio::test]
    async fn the_connector_is_a_service_that_makes_streams_and_types_its_failures() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"hi").await.unwrap();
        });
        let connector = Connector {
            timeout: Duration::from_secs(5),
            tls: None,
        };
        let mut stream = connector.clone().oneshot(addr.clone()).await.unwrap();
        let mut got = [0u8; 2];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");

        // Nothing listens on a port just released: refused, and typed so.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let err = connector.clone().oneshot(addr).await.unwrap_err();
        assert_eq!(Failure::of(&err), Failure::Refused);
    }
}
