//! A differential check of what the app receives. Generated requests (methods × body framing ×
//! body sizes, over HTTP/1.1 and HTTP/2) go through the real binary to a raw app that parses
//! HTTP/1.1 itself (an independent peer, not hyper) and records what it read. For each request
//! the app must have received the method, the target, the body bytes and every end-to-end header
//! the client sent (hop-by-hop ones aside), with one well-formed framing; and the connection must
//! stay usable for the next request. A seeded generator makes a failing run repeatable.
//!
//! Every method (GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH) × framing × body size (0, 1,
//! 137 and 20,000 bytes) is sent once per protocol, six (HTTP/1.1) or twelve (HTTP/2) to a
//! connection. Framings over HTTP/1.1: no body, `Content-Length`, chunked (with chunk extensions and
//! trailers), and an empty chunked body; over HTTP/2: no body (END_STREAM on HEADERS), DATA
//! frames with `content-length`, and DATA frames without one. A body the client sent must reach
//! the app whatever the method: a GET with a chunked body once reached the app with none.
//! Trailer fields are not compared: a proxy may drop them (RFC 9110 §6.5.1), and attache does
//! on HTTP/1.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use attache_filters::trace_context::ids::{IdGenerator, SeededIds};
use attache_tests::{Attache, within};
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];
const SIZES: [usize; 4] = [0, 1, 137, 20_000];
/// Requests sent on one client connection before it is closed.
const PER_CONNECTION: usize = 6;

/// What the raw app parsed from one request.
#[derive(Clone)]
struct Parsed {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Parsed {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One generated request.
#[derive(Clone)]
struct Case {
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    None,
    Length,
    Chunked,
}

/// The raw app: a strict HTTP/1.1 parser of its own. Every request it reads is recorded (or
/// its parse error, which fails the test) and answered `204` with `x-seq`, its number.
struct RawApp {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Result<Parsed, String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawApp {
    async fn start() -> RawApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Result<Parsed, String>>>> = Arc::default();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut conn = BufReader::new(conn);
                    loop {
                        let got = match read_request(&mut conn).await {
                            Ok(Some(p)) => Ok(p),
                            Ok(None) => return,
                            Err(e) => Err(e),
                        };
                        let failed = got.is_err();
                        let seq = {
                            let mut s = s.lock().unwrap();
                            s.push(got);
                            s.len()
                        };
                        if failed {
                            return;
                        }
                        let res = format!("HTTP/1.1 204 No Content\r\nx-seq: {seq}\r\n\r\n");
                        if conn.get_mut().write_all(res.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawApp { addr, seen, task }
    }

    fn get(&self, seq: usize) -> Parsed {
        let seen = self.seen.lock().unwrap();
        match seen.get(seq - 1) {
            Some(Ok(p)) => p.clone(),
            Some(Err(e)) => panic!("the app could not parse request {seq}: {e}"),
            None => panic!("the app has no request {seq}"),
        }
    }
}

impl Drop for RawApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_line(r: &mut BufReader<TcpStream>) -> Result<Option<String>, String> {
    let mut line = Vec::new();
    let n = r
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(None);
    }
    let Some(line) = line.strip_suffix(b"\r\n") else {
        return Err(format!(
            "line without CRLF: {:?}",
            String::from_utf8_lossy(&line)
        ));
    };
    String::from_utf8(line.to_vec())
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Reads one request, or `None` when the peer closed between requests.
async fn read_request(r: &mut BufReader<TcpStream>) -> Result<Option<Parsed>, String> {
    let Some(start) = read_line(r).await? else {
        return Ok(None);
    };
    let mut parts = start.split(' ');
    let (Some(method), Some(target), Some("HTTP/1.1"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {start:?}"));
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(r).await?.ok_or("closed in the head")?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad field line {line:?}"))?;
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(format!("bad field name {name:?}"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let field = |n: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let te = field("transfer-encoding");
    let cl = field("content-length");
    let body = match (te.as_slice(), cl.as_slice()) {
        ([], []) => Vec::new(),
        ([], [len]) => {
            let len: usize = len.parse().map_err(|_| format!("bad length {len:?}"))?;
            let mut body = vec![0; len];
            r.read_exact(&mut body).await.map_err(|e| e.to_string())?;
            body
        }
        (["chunked"], []) => read_chunked(r).await?,
        _ => {
            return Err(format!(
                "framing: transfer-encoding {te:?}, content-length {cl:?}"
            ));
        }
    };
    Ok(Some(Parsed {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body,
    }))
}

async fn read_chunked(r: &mut BufReader<TcpStream>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r).await?.ok_or("closed in a chunk size")?;
        let size = line.split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("chunk size {line:?}"))?;
        if size == 0 {
            // Trailer section, up to the empty line.
            while !read_line(r).await?.ok_or("closed in trailers")?.is_empty() {}
            return Ok(body);
        }
        let at = body.len();
        body.resize(at + size + 2, 0);
        r.read_exact(&mut body[at..])
            .await
            .map_err(|e| e.to_string())?;
        if body[at + size..] != *b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        body.truncate(at + size);
    }
}

// Failure messages name a body by its length: the bytes follow from the seed.
impl std::fmt::Debug for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (m, t, h, n) = (&self.method, &self.target, &self.headers, self.body.len());
        write!(f, "{m} {t} {h:?} with a body of {n} bytes")
    }
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (m, t, h, n) = (self.method, &self.target, &self.headers, self.body.len());
        write!(f, "{m} {t} {h:?}, {:?} body of {n} bytes", self.framing)
    }
}

// === the generator ===

struct Rng(SeededIds);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
}

/// Every method × framing × body size (a body-less framing has size 0 only), in a seeded
/// order: 63 requests, each with a generated target and headers ([`case`]).
fn grid(rng: &mut Rng) -> Vec<(&'static str, Framing, usize)> {
    let mut all = Vec::new();
    for method in METHODS {
        all.push((method, Framing::None, 0));
        for size in SIZES {
            all.push((method, Framing::Length, size));
            all.push((method, Framing::Chunked, size));
        }
    }
    // Fisher-Yates: neighbours on one connection differ from run to run of the seed only.
    for i in (1..all.len()).rev() {
        all.swap(i, rng.below(i + 1));
    }
    all
}

/// A request: a method, a framing (over HTTP/2, `Chunked` means DATA frames with no length),
/// a body size, a target and a few end-to-end headers, one of them repeated.
fn case(rng: &mut Rng, n: usize, (method, framing, size): (&'static str, Framing, usize)) -> Case {
    let body: Vec<u8> = (0..size).map(|i| (i * 7 + n) as u8).collect();
    let target = match rng.below(3) {
        0 => format!("/case/{n}"),
        1 => format!("/case/{n}?q=a%20b&x={}", rng.below(1000)),
        _ => format!("/case/{n}/deeper/path;p=1?"),
    };
    let mut headers = vec![
        ("x-case".to_owned(), n.to_string()),
        ("accept".to_owned(), "*/*".to_owned()),
    ];
    for i in 0..rng.below(4) {
        headers.push((format!("x-extra-{i}"), format!("v{}", rng.below(100))));
    }
    if rng.below(2) == 0 {
        // A repeated field: both lines must arrive, in order.
        headers.push(("x-multi".to_owned(), "one".to_owned()));
        headers.push(("x-multi".to_owned(), "two, three".to_owned()));
    }
    if size > 0 {
        headers.push((
            "content-type".to_owned(),
            "application/octet-stream".to_owned(),
        ));
    }
    Case {
        method,
        target,
        headers,
        body,
        framing,
    }
}

/// The HTTP/1.1 bytes of a case, chunked with extensions, several chunks and a trailer.
fn h1_bytes(c: &Case, host: &str) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\nhost: {host}\r\n", c.method, c.target).into_bytes();
    for (n, v) in &c.headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    match c.framing {
        Framing::None => out.extend_from_slice(b"\r\n"),
        Framing::Length => {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", c.body.len()).as_bytes());
            out.extend_from_slice(&c.body);
        }
        Framing::Chunked => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for (i, piece) in c.body.chunks(4096).enumerate() {
                out.extend_from_slice(format!("{:x};ext={i}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0;last\r\nx-trailer: t\r\n\r\n");
        }
    }
    out
}

/// Reads one response head from attache (the app answers 204, so there is no body) and
/// returns its status and `x-seq`.
async fn read_response(r: &mut BufReader<TcpStream>) -> (u16, Option<usize>, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.expect("read response");
        assert!(
            n > 0,
            "attache closed the connection; head so far: {head:?}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let seq = head
        .lines()
        .find_map(|l| l.strip_prefix("x-seq: "))
        .and_then(|v| v.trim().parse().ok());
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.expect("response body");
    head.push_str(&String::from_utf8_lossy(&body));
    (status, seq, head)
}

/// The app received what the client sent.
fn check(c: &Case, got: &Parsed, over: &str) {
    let what = format!("{over} {c:?}\napp got {got:?}");
    assert_eq!(got.method, c.method, "{what}");
    assert_eq!(got.target, c.target, "{what}");
    assert_eq!(got.body, c.body, "body bytes: {what}");
    for (name, _) in &c.headers {
        let sent: Vec<&str> = c
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(got.values(name), sent, "header {name}: {what}");
    }
    let te = got.values("transfer-encoding");
    let cl = got.values("content-length");
    match c.framing {
        // A body that is not known to be empty arrives framed; one with a length keeps it.
        Framing::Length => assert_eq!(cl, [c.body.len().to_string()], "{what}"),
        Framing::Chunked => assert!(
            te == ["chunked"] || cl == [c.body.len().to_string()],
            "{what}"
        ),
        Framing::None => assert!(te.is_empty() && cl.iter().all(|v| *v == "0"), "{what}"),
    }
    for hop in [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "x-trailer",
    ] {
        assert!(got.values(hop).is_empty(), "{hop} reached the app: {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http1_the_app_receives_what_the_client_sent() {
    let app = RawApp::start().await;
    let a = Attache::sidecar(app.addr, "");
    let mut rng = Rng(SeededIds::new(0x5eed_f4a3));
    let grid = grid(&mut rng);
    let mut n = 0;
    for requests in grid.chunks(PER_CONNECTION) {
        let stream = TcpStream::connect(a.inbound()).await.expect("connect");
        let mut stream = BufReader::new(stream);
        for &shape in requests {
            n += 1;
            let c = case(&mut rng, n, shape);
            stream
                .get_mut()
                .write_all(&h1_bytes(&c, "app.test"))
                .await
                .expect("write");
            let (status, seq, head) = within(10, read_response(&mut stream)).await;
            assert_eq!(status, 204, "{c:?}\n{head}");
            let seq = seq.unwrap_or_else(|| panic!("no x-seq: {head}"));
            check(&c, &app.get(seq), "HTTP/1.1");
        }
    }
    assert_eq!(n, grid.len(), "every shape was sent");
    assert_eq!(
        app.seen.lock().unwrap().len(),
        n,
        "one app request per request"
    );
}

type H2Body = BoxBody<Bytes, Infallible>;

/// The HTTP/2 form of a case: END_STREAM on HEADERS without a body, a length with DATA, or
/// DATA frames of unknown length.
fn h2_request(c: &Case, authority: &str) -> http::Request<H2Body> {
    let uri = format!("http://{authority}{}", c.target);
    let mut b = http::Request::builder().method(c.method).uri(uri);
    for (n, v) in &c.headers {
        b = b.header(n, v);
    }
    let body: H2Body = match c.framing {
        Framing::None => http_body_util::Empty::new().boxed(),
        Framing::Length => {
            b = b.header("content-length", c.body.len());
            http_body_util::Full::new(Bytes::from(c.body.clone())).boxed()
        }
        Framing::Chunked => {
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = c
                .body
                .chunks(4096)
                .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
                .collect();
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
        }
    };
    b.body(body).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_app_receives_what_the_client_sent() {
    let app = RawApp::start().await;
    let a = Attache::sidecar(app.addr, "");
    let mut rng = Rng(SeededIds::new(0x5eed_0002));
    let grid = grid(&mut rng);
    let mut n = 0;
    for requests in grid.chunks(PER_CONNECTION * 2) {
        let stream = TcpStream::connect(a.inbound()).await.expect("connect");
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        let driver = tokio::spawn(conn);
        for &shape in requests {
            n += 1;
            let c = case(&mut rng, n, shape);
            let res = within(10, send.send_request(h2_request(&c, "app.test")))
                .await
                .unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert_eq!(res.status(), 204, "{c:?}");
            let seq: usize = res
                .headers()
                .get("x-seq")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or_else(|| panic!("no x-seq: {res:?}"));
            check(&c, &app.get(seq), "HTTP/2");
        }
        drop(send);
        let _ = within(5, driver).await;
    }
    assert_eq!(n, grid.len(), "every shape was sent");
    assert_eq!(
        app.seen.lock().unwrap().len(),
        n,
        "one app request per request"
    );
}
