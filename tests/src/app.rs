//! A small real upstream app for the tests, on a loopback port. What it does depends on the
//! path, so one app serves every scenario:
//!
//! - `/slow/<ms>`: waits, then answers 200 (or `?status=<code>`);
//! - `/sink`: reads the whole body without keeping it, answers with its length;
//! - `/status/<code>`: answers with that status;
//! - `/ws`: accepts an HTTP Upgrade and echoes every byte back;
//! - `/big/<n>`: answers n bytes;
//! - `/drip/<n>/<ms>`: answers at once, then sends its body in n pieces, one every ms
//!   (`?sse`: as `text/event-stream`; `?hit`: the first piece is `#<request number>;`, so
//!   two executions of one request differ);
//! - `/created`: 201 with `Location`, `ETag`, `Set-Cookie`, `X-Request-Id`, two `Link` lines
//!   and a JSON body naming how many requests the app had served (so a re-execution shows);
//! - `/trailers`: answers `ok` followed by a `grpc-status: 0` trailer (as gRPC does);
//! - `/flaky/<n>/<mode>`: the first `n` requests fail (`reset`, or a status), then 200 with
//!   the request number;
//! - `/call/<port>/<path>`: calls `http://127.0.0.1:<port>/<path>` (an ambassador port),
//!   forwarding only `traceparent`, as an app with the least tracing support does, and answers
//!   with the status it got;
//! - anything else: a JSON echo of the method, path, headers and body length, plus the app's
//!   name.
//!
//! It counts the requests it served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct App {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn start(name: &str) -> App {
        Self::start_slow(name, Duration::ZERO).await
    }

    /// An app that waits `delay` before it handles each request: a slow replica.
    pub async fn start_slow(name: &str, delay: Duration) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("app addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let (n, h) = (name.to_owned(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h) = (n.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let hits = h.fetch_add(1, Ordering::SeqCst) + 1;
                        let n = n.clone();
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            handle(n, hits, req).await
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App {
            addr,
            name: name.to_owned(),
            hits,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits (up to 10 s, else fails the test) until the app has received `n` requests in all:
    /// the way a test knows a request reached the app before it sends the next one.
    pub async fn wait_hits(&self, n: usize) {
        assert!(
            crate::eventually(10, async || self.hits() >= n).await,
            "the app has {} requests, not {n}",
            self.hits()
        );
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type AppBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> AppBody {
    Full::new(b.into()).boxed_unsync()
}

async fn handle(
    name: String,
    hits: usize,
    mut req: Request<Incoming>,
) -> Result<Response<AppBody>, std::io::Error> {
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/flaky/") {
        return flaky(rest, hits, req).await;
    }
    if let Some(rest) = path.strip_prefix("/drip/") {
        let (n, ms) = rest.split_once('/').unwrap_or((rest, "0"));
        let (n, ms): (usize, u64) = (n.parse().unwrap_or(1), ms.parse().unwrap_or(0));
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let tag = (req.uri().query() == Some("hit")).then(|| Bytes::from(format!("#{hits};")));
        tokio::spawn(async move {
            if let Some(tag) = tag
                && tx.send(tag).await.is_err()
            {
                return;
            }
            for i in 0..n {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if tx.send(Bytes::from(format!("{i};"))).await.is_err() {
                    return;
                }
            }
        });
        let mut res = Response::new(Drip(rx).boxed_unsync());
        if req.uri().query() == Some("sse") {
            res.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
        }
        return Ok(res);
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let _ = req.into_body().collect().await;
        return Ok(Response::new(full(vec![b'x'; n.parse().unwrap_or(0)])));
    }
    if path == "/created" {
        let _ = req.into_body().collect().await;
        let mut res = Response::new(full(format!("{{\"order\":{hits}}}")));
        *res.status_mut() = StatusCode::CREATED;
        let h = res.headers_mut();
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        h.insert("location", http::HeaderValue::from_static("/orders/1"));
        h.insert("etag", http::HeaderValue::from_static("\"v1\""));
        h.insert("set-cookie", http::HeaderValue::from_static("session=1"));
        h.insert("x-request-id", http::HeaderValue::from_static("r1"));
        h.append("link", http::HeaderValue::from_static("</a>; rel=\"x, y\""));
        h.append("link", http::HeaderValue::from_static("</b>; rel=next"));
        return Ok(res);
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        let mut res = Response::new(full(format!("{name} waited {ms}ms")));
        // `?status=503` answers with that status after the wait.
        if let Some(code) = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("status="))
            .and_then(|c| c.parse().ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            *res.status_mut() = code;
        }
        return Ok(res);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut res = Response::new(full(Bytes::new()));
        *res.status_mut() = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
        return Ok(res);
    }
    if let Some(rest) = path.strip_prefix("/call/") {
        let (port, target) = rest.split_once('/').unwrap_or((rest, ""));
        let mut call = Request::get(format!("http://127.0.0.1:{port}/{target}"));
        if let Some(tp) = req.headers().get("traceparent") {
            call = call.header("traceparent", tp);
        }
        let client = crate::client::http1();
        let status =
            match crate::client::send(&client, call.body(Full::new(Bytes::new())).expect("call"))
                .await
            {
                Ok(got) => got.status,
                Err(_) => 599,
            };
        return Ok(Response::new(full(format!("{{\"status\":{status}}}"))));
    }
    if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut res = Response::new(full(Bytes::new()));
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        res.headers_mut()
            .insert("connection", "upgrade".parse().expect("static"));
        res.headers_mut()
            .insert("upgrade", "websocket".parse().expect("static"));
        return Ok(res);
    }
    if path == "/trailers" {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let te = req.headers().get("te").cloned();
        let body = Full::new(Bytes::from_static(b"ok"))
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed_unsync();
        let mut res = Response::new(body);
        res.headers_mut().insert(
            "x-seen-version",
            format!("{:?}", req.version()).parse().expect("ascii"),
        );
        if let Some(te) = te {
            res.headers_mut().insert("x-seen-te", te);
        }
        return Ok(res);
    }
    let (parts, mut body) = req.into_parts();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => len += f.data_ref().map_or(0, |d| d.len()),
            Err(_) => break,
        }
    }
    if path == "/sink" {
        return Ok(Response::new(full(len.to_string())));
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .keys()
        .map(|k| {
            let vals: Vec<_> = parts
                .headers
                .get_all(k)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (
                k.as_str().to_owned(),
                serde_json::Value::from(vals.join(", ")),
            )
        })
        .collect();
    let doc = serde_json::json!({
        "app": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": len,
    });
    Ok(Response::new(full(doc.to_string())))
}

/// `/flaky/<n>/<mode>`: the app's first `n` requests fail, by `mode`: `reset` drops the
/// connection without an answer (the request was read: it ran), a status code answers with
/// it (`?retry_after=<s>` adds `Retry-After`). Later ones answer 200 with
/// `{"hits":<request number>,"body_bytes":<n>}`, so a test sees how many tries there were.
async fn flaky(
    rest: &str,
    hits: usize,
    req: Request<Incoming>,
) -> Result<Response<AppBody>, std::io::Error> {
    let (n, mode) = rest.split_once('/').unwrap_or((rest, "reset"));
    let n: usize = n.parse().unwrap_or(0);
    let retry_after = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("retry_after="))
        .map(str::to_owned);
    let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
    if hits > n {
        let len = body.unwrap_or(0);
        return Ok(Response::new(full(format!(
            "{{\"hits\":{hits},\"body_bytes\":{len}}}"
        ))));
    }
    let Some(status) = mode.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()) else {
        return Err(std::io::Error::other("flaky: dropping the connection"));
    };
    let mut res = Response::new(full("flaky"));
    *res.status_mut() = status;
    if let Some(s) = retry_after {
        res.headers_mut()
            .insert("retry-after", s.parse().expect("digits"));
    }
    Ok(res)
}

/// A body whose pieces arrive on a channel.
struct Drip(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Drip {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A raw app for what a well-behaved HTTP library never sends: it reads each request head (and
/// nothing of a body), answers with the same bytes, and closes the connection. It keeps the
/// request heads it read, in order.
pub struct Canned {
    pub addr: SocketAddr,
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Canned {
    pub async fn start(response: &[u8]) -> Canned {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (seen, response) = (heads.clone(), Bytes::copy_from_slice(response));
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (seen, response) = (seen.clone(), response.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock()
                        .expect("heads")
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let _ = s.write_all(&response).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Canned { addr, heads, task }
    }

    pub fn hits(&self) -> usize {
        self.heads.lock().expect("heads").len()
    }
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.task.abort();
    }
}
