//! Transparent capture (`spec.capture`): connections the pod's iptables rules
//! (`attache init-iptables`) redirected to the capture listener. Each one's original
//! destination is read from the socket (`SO_ORIGINAL_DST`, IPv4 or IPv6); its first bytes
//! are looked at without being read (`peek`): an HTTP/1.1 request line or HTTP/2's preface is
//! served as a proxied connection whose requests go to that destination through the outbound
//! stack (spans, trace context, timeouts, pools); anything else, or a connection that stays
//! silent past the sniff timeout (a protocol whose server speaks first: a database, SMTP), is
//! joined to the destination as a plain TCP tunnel, its bytes untouched.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::serve::{Known, Serving, proxied};

/// Request lines a captured HTTP client starts with (and HTTP/2's preface).
const HTTP_STARTS: [&[u8]; 10] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI * HTTP/2.0",
];

pub async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    serving: Serving,
    sniff: Duration,
) {
    let Some(dst) = original_dst(&stream, local) else {
        tracing::debug!(%peer, "a connection to the capture listener that was not redirected");
        return;
    };
    match sniff_http(&stream, sniff).await {
        Some(true) => {
            let known = Known {
                tls: None,
                original_dst: Some(dst),
            };
            proxied(stream, peer, serving, known).await;
        }
        Some(false) => tunnel(stream, dst, &serving).await,
        None => {}
    }
}

/// Where the connection was sent before the redirect; `None` when it was not redirected
/// (connected to the listener itself: serving it would loop).
fn original_dst(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let dst = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    }
    .ok()?
    .as_socket()?;
    let listener = stream.local_addr().ok()?;
    (dst != listener).then_some(dst)
}

/// `Some(true)` when the first bytes are an HTTP request's, `Some(false)` when they are
/// something else or none came within `limit`, `None` when the client closed.
async fn sniff_http(stream: &TcpStream, limit: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 16];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => n,
            Err(_) => return Some(false),
        };
        let seen = &buf[..n];
        if HTTP_STARTS.iter().any(|m| seen.starts_with(m)) {
            return Some(true);
        }
        // Only a prefix of a request line so far ("GE"): wait for more, within the limit.
        let partial = HTTP_STARTS
            .iter()
            .any(|m| m.len() > n && m.starts_with(seen));
        if !partial || tokio::time::Instant::now() >= deadline {
            return Some(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Joins the captured connection to its destination until either side closes.
async fn tunnel(mut client: TcpStream, dst: SocketAddr, serving: &Serving) {
    let shared = &serving.shared;
    let _tracked = shared.tracker.track();
    let connect = shared.snapshot.load().config.spec.timeouts.connect.get();
    let upstream = match tokio::time::timeout(connect, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%dst, error = %e, "captured TCP: cannot connect");
            return;
        }
        Err(_) => {
            tracing::debug!(%dst, "captured TCP: no connection in time");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let families = shared
        .lasting
        .metrics
        .family::<crate::forward_proxy::metrics::ForwardProxyFamilies>();
    families.captured_tcp.inc();
    let mut upstream = upstream;
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(%dst, up, down, "captured TCP tunnel closed"),
        Err(e) => tracing::debug!(%dst, error = %e, "captured TCP tunnel ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_is_told_from_other_protocols_and_from_silence() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for (first, expect) in [
            (&b"GET / HTTP/1.1\r\n"[..], Some(true)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(true)),
            (b"PING\r\n", Some(false)),
            (b"\x16\x03\x01\x02\x00", Some(false)),
            (b"", Some(false)),
        ] {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let (s, _) = listener.accept().await.unwrap();
            if !first.is_empty() {
                tokio::io::AsyncWriteExt::write_all(&mut c, first)
                    .await
                    .unwrap();
            }
            let got = sniff_http(&s, Duration::from_millis(100)).await;
            assert_eq!(got, expect, "{first:?}");
        }
        // A request line in two pieces is still HTTP.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = listener.accept().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut c, b"GE")
            .await
            .unwrap();
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tokio::io::AsyncWriteExt::write_all(&mut c, b"T / HTTP/1.1\r\n")
                .await
                .unwrap();
            c
        });
        assert_eq!(sniff_http(&s, Duration::from_secs(2)).await, Some(true));
        drop(later.await.unwrap());
    }
}
