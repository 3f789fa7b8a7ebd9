//! HTTP clients for the tests: hyper's pooled client over HTTP/1.1 or HTTP/2 (h2c with prior
//! knowledge), a blocking GET for readiness polling, and raw TCP for what well-behaved clients
//! never send.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn http1() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn http2() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A collected response: status, headers and body.
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Result<Got, String> {
    let res: Response<_> = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    collect(res).await
}

/// A response, its body read to the end.
pub async fn collect<B>(res: Response<B>) -> Result<Got, String>
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Got {
        status,
        headers,
        body,
    })
}

pub async fn get(client: &TestClient, url: &str) -> Result<Got, String> {
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    send(client, req).await
}

/// One HTTP/1.1 request with `headers` and `body`, failing the test on any error or after
/// 10 s.
pub async fn exchange(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Got {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid request");
    crate::within(10, send(&http1(), req))
        .await
        .expect("the request got an answer")
}

/// A blocking GET over a fresh connection: status and body.
pub fn blocking_get(url: &str) -> std::io::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n",
        if path.is_empty() { "/" } else { path }
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {out:?}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sends raw bytes and reads until the peer closes or `wait` passes.
pub async fn raw(addr: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a WebSocket to `/ws` at `addr` (an HTTP/1.1 Upgrade): the stream, and the response
/// head as read, in lower case (up to its blank line; the tunnel's bytes follow it).
pub async fn websocket(addr: std::net::SocketAddr) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("write the upgrade");
    let mut head = Vec::new();
    crate::within(10, async {
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                s.read(&mut b).await.expect("read"),
                1,
                "closed before the head"
            );
            head.push(b[0]);
        }
    })
    .await;
    (s, String::from_utf8_lossy(&head).to_lowercase())
}
