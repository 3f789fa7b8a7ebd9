//! The pool against real upstream servers on loopback: reuse, caps, expiry, closed and refused
//! connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use attache_config::Protocol;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{Client, Endpoint, NoResponse, SendError, Settings};
use attache_filters::metrics::Metrics;

/// A hyper server on a free port that counts the connections it accepted and holds open.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

#[derive(Clone, Copy)]
struct Behaviour {
    h2: bool,
    keep_alive: bool,
    delay: Duration,
    body_len: usize,
}

const PLAIN: Behaviour = Behaviour {
    h2: false,
    keep_alive: true,
    delay: Duration::ZERO,
    body_len: 5,
};

async fn upstream(b: Behaviour) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (acc, op) = (accepted.clone(), open.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            op.fetch_add(1, Ordering::SeqCst);
            let op = op.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    // `x-delay-ms` sets this request's delay; else the upstream's.
                    let delay = req
                        .headers()
                        .get("x-delay-ms")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .map_or(b.delay, Duration::from_millis);
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![
                        b'x';
                        b.body_len
                    ]))))
                });
                let io = TokioIo::new(stream);
                if b.h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(b.keep_alive)
                        .serve_connection(io, svc)
                        .await;
                }
                op.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Upstream {
        addr,
        accepted,
        open,
    }
}

fn pool(addr: SocketAddr, protocol: Protocol, max_idle: usize, idle: Duration) -> Arc<Endpoint> {
    client(Settings {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: idle,
        max_idle,
        protocol,
    })
    .endpoint(&addr.to_string())
}

fn client(settings: Settings) -> Client {
    Client::new(settings, Arc::new(Metrics::new()))
}

fn get(addr: SocketAddr) -> Request<attache_filters::Body> {
    Request::builder()
        .uri("/")
        .header(http::header::HOST, addr.to_string())
        .body(attache_filters::empty())
        .expect("request")
}

/// An HTTP/2 request to `addr`: with the scheme and authority HTTP/2 carries.
fn get_h2(addr: SocketAddr) -> Request<attache_filters::Body> {
    let mut req = get(addr);
    *req.uri_mut() = format!("http://{addr}/").parse().expect("uri");
    *req.version_mut() = http::Version::HTTP_2;
    req
}

async fn body_len(ep: &Arc<Endpoint>, addr: SocketAddr) -> usize {
    len_of(ep, get(addr)).await
}

/// Sends `req` and reads the whole response body; its length.
async fn len_of(ep: &Arc<Endpoint>, req: Request<attache_filters::Body>) -> usize {
    let res = send(ep, req).await.expect("response");
    assert_eq!(res.status(), 200);
    res.into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .len()
}

/// Sends `req` with 30 s for its response head.
async fn send(
    ep: &Arc<Endpoint>,
    req: Request<attache_filters::Body>,
) -> Result<Response<attache_filters::Body>, NoResponse> {
    send_within(ep, req, Duration::from_secs(30)).await
}

async fn send_within(
    ep: &Arc<Endpoint>,
    req: Request<attache_filters::Body>,
    timeout: Duration,
) -> Result<Response<attache_filters::Body>, NoResponse> {
    let now = tokio::time::Instant::now();
    ep.send(req, now, now + timeout).await
}

/// Waits up to 2 s for `f` to hold (connection tasks finish in the background).
async fn eventually(f: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let up = upstream(PLAIN).await;
    let metrics = Arc::new(Metrics::new());
    let ep = Client::new(
        Settings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            max_idle: 8,
            protocol: Protocol::Http1,
        },
        metrics.clone(),
    )
    .endpoint(&up.addr.to_string());
    for _ in 0..5 {
        assert_eq!(body_len(&ep, up.addr).await, 5);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(ep.idle_count(), 1);
    let line = format!(
        "attache_upstream_connections_opened_total{{endpoint=\"{}\"}} 1",
        up.addr
    );
    assert!(metrics.encode().contains(&line), "{}", metrics.encode());
}

#[tokio::test]
async fn the_same_address_gets_the_same_pool_while_in_use() {
    let client = client(Settings {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(30),
        max_idle: 8,
        protocol: Protocol::Http1,
    });
    let a = client.endpoint("127.0.0.1:1");
    assert!(Arc::ptr_eq(&a, &client.endpoint("127.0.0.1:1")));
    assert!(!Arc::ptr_eq(&a, &client.endpoint("127.0.0.1:2")));
}

#[tokio::test]
async fn concurrent_requests_open_connections_and_at_most_max_idle_stay() {
    let up = upstream(Behaviour {
        delay: Duration::from_millis(200),
        ..PLAIN
    })
    .await;
    let ep = pool(up.addr, Protocol::Http1, 2, Duration::from_secs(30));
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let ep = ep.clone();
            tokio::spawn(async move { body_len(&ep, up.addr).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("join"), 5);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 5);
    assert_eq!(ep.idle_count(), 2);
    assert!(
        eventually(|| up.open.load(Ordering::SeqCst) == 2).await,
        "the three connections past the cap are closed; open: {}",
        up.open.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let up = upstream(PLAIN).await;
    let ep = pool(up.addr, Protocol::Http1, 8, Duration::from_millis(200));
    assert_eq!(body_len(&ep, up.addr).await, 5);
    assert_eq!(ep.idle_count(), 1);
    assert!(
        eventually(|| up.open.load(Ordering::SeqCst) == 0).await,
        "the idle connection is closed"
    );
    assert_eq!(ep.idle_count(), 0);
    assert_eq!(body_len(&ep, up.addr).await, 5);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

/// A request slower than `ms` milliseconds, by the upstream's `x-delay-ms`.
fn slow(addr: SocketAddr, ms: u64) -> Request<attache_filters::Body> {
    let mut req = get(addr);
    req.headers_mut()
        .insert("x-delay-ms", http::HeaderValue::from(ms));
    req
}

#[tokio::test]
async fn each_exchange_on_a_kept_connection_gets_its_own_deadline() {
    let up = upstream(PLAIN).await;
    let ep = pool(up.addr, Protocol::Http1, 8, Duration::from_secs(30));
    let timeout = Duration::from_millis(400);
    // The connection's timer is set for this first exchange's deadline, 400 ms from now.
    let res = send_within(&ep, get(up.addr), timeout)
        .await
        .expect("response");
    res.into_body().collect().await.expect("body");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The next exchange on the same connection outlives that first deadline and is still
    // within its own: the timer fires at the old deadline and is moved on, not obeyed.
    let began = tokio::time::Instant::now();
    let res = send_within(&ep, slow(up.addr, 300), timeout)
        .await
        .expect("answered within its own deadline");
    assert_eq!(res.status(), 200);
    assert!(began.elapsed() >= Duration::from_millis(300));
    res.into_body().collect().await.expect("body");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1, "one kept connection");

    // One past its deadline gets `TimedOut` at the deadline, not at the upstream's answer,
    // and its connection is not reused (the exchange was abandoned mid-way).
    let began = tokio::time::Instant::now();
    match send_within(&ep, slow(up.addr, 2_000), timeout).await {
        Err(NoResponse {
            error: SendError::TimedOut,
            unsent: None,
        }) => {}
        Err(f) => panic!("expected a timeout, got {}", f.error),
        Ok(res) => panic!("expected a timeout, got {}", res.status()),
    }
    let waited = began.elapsed();
    assert!(
        waited >= timeout && waited < Duration::from_millis(1_500),
        "timed out after {waited:?}"
    );
    assert_eq!(ep.idle_count(), 0);
    assert_eq!(body_len(&ep, up.addr).await, 5);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);

    // A shorter timeout than the one the connection's timer holds is obeyed at once.
    let began = tokio::time::Instant::now();
    let short = send_within(&ep, slow(up.addr, 2_000), Duration::from_millis(100)).await;
    assert!(matches!(
        short,
        Err(NoResponse {
            error: SendError::TimedOut,
            ..
        })
    ));
    assert!(began.elapsed() < Duration::from_millis(1_000));
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_not_reused() {
    // An upstream that answers with `Connection: close`.
    let up = upstream(Behaviour {
        keep_alive: false,
        ..PLAIN
    })
    .await;
    let ep = pool(up.addr, Protocol::Http1, 8, Duration::from_secs(30));
    for _ in 0..3 {
        assert_eq!(body_len(&ep, up.addr).await, 5);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(ep.idle_count(), 0);
}

#[tokio::test]
async fn a_pooled_connection_closed_without_notice_is_replaced() {
    // A raw upstream that answers one request as keep-alive, then closes the socket.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // dropped: closed with no `Connection: close`
            });
        }
    });
    let ep = pool(addr, Protocol::Http1, 8, Duration::from_secs(30));
    for _ in 0..3 {
        assert_eq!(body_len(&ep, addr).await, 2);
        // Let the connection task see the close before the next checkout; a request that
        // races it comes back unsent and is resent (the other branch of `send_h1`).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_body_dropped_unread_does_not_return_its_connection() {
    let up = upstream(Behaviour {
        body_len: 4 << 20,
        ..PLAIN
    })
    .await;
    let ep = pool(up.addr, Protocol::Http1, 8, Duration::from_secs(30));
    let res = send(&ep, get(up.addr)).await.expect("response");
    let mut body = res.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body);
    assert_eq!(ep.idle_count(), 0);
    assert_eq!(body_len(&ep, up.addr).await, 4 << 20);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(ep.idle_count(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let ep = pool(addr, Protocol::Http1, 8, Duration::from_secs(30));
    match send(&ep, get(addr)).await {
        Err(NoResponse {
            error: e @ SendError::Connect(_),
            unsent,
        }) => {
            assert_eq!(
                crate::upstream::failure::Failure::of(&e),
                crate::upstream::failure::Failure::Refused
            );
            assert!(
                matches!(&e, SendError::Connect(io) if io.kind() == std::io::ErrorKind::ConnectionRefused)
            );
            assert!(
                unsent.is_some(),
                "the request comes back for another endpoint"
            );
        }
        Err(f) => panic!("expected a refused connection, got {}", f.error),
        Ok(res) => panic!("expected a refused connection, got {}", res.status()),
    }
}

#[tokio::test]
async fn an_unresolvable_name_is_a_dns_error() {
    let ep = client(Settings {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_idle: 8,
        protocol: Protocol::Http1,
    })
    .endpoint("no-such-host.invalid:80");
    let req = Request::builder()
        .uri("/")
        .body(attache_filters::empty())
        .expect("request");
    let failure = send(&ep, req).await.expect_err("an error");
    let err = &failure.error;
    assert_eq!(
        crate::upstream::failure::Failure::of(err),
        crate::upstream::failure::Failure::Dns
    );
    assert!(err.to_string().starts_with("dns error"), "{err}");
    let unsent = failure
        .unsent
        .expect("a request no connection took comes back");
    assert_eq!(unsent.uri(), "/");
}

#[tokio::test]
async fn http2_requests_share_one_connection() {
    let up = upstream(Behaviour {
        h2: true,
        delay: Duration::from_millis(50),
        ..PLAIN
    })
    .await;
    let ep = pool(up.addr, Protocol::Http2, 8, Duration::from_secs(30));
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let ep = ep.clone();
            tokio::spawn(async move { len_of(&ep, get_h2(up.addr)).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("join"), 5);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let up = upstream(Behaviour { h2: true, ..PLAIN }).await;
    let ep = pool(up.addr, Protocol::Http2, 8, Duration::from_millis(200));
    assert_eq!(len_of(&ep, get_h2(up.addr)).await, 5);
    assert_eq!(up.open.load(Ordering::SeqCst), 1);
    assert!(
        eventually(|| up.open.load(Ordering::SeqCst) == 0).await,
        "the idle HTTP/2 connection is closed"
    );
    assert_eq!(len_of(&ep, get_h2(up.addr)).await, 5);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}
