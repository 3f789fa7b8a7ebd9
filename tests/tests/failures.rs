//! What clients see when things go wrong: every error attache makes up is problem+json with a
//! stable type, and bad clients never disturb good ones.

use std::time::{Duration, Instant};

use attache_tests::client::{self, Got, get, http1, send};
use attache_tests::{App, Attache, Ports, free_port, metrics, sidecar_config, within};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn assert_problem(got: &Got, status: u16, slug: &str) {
    assert_eq!(got.status, status, "{}", got.text());
    assert_eq!(got.headers["content-type"], "application/problem+json");
    let v = got.json();
    assert_eq!(v["type"], format!("https://attache.dev/problems/{slug}"));
    assert_eq!(v["status"], status);
    assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_refusing_connections_gives_502() {
    let ports = Ports::new();
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let a = Attache::run(ports, &sidecar_config(ports, dead, ""));
    let got = within(10, get(&http1(), &a.url("/x"))).await.unwrap();
    assert_problem(&got, 502, "upstream-unreachable");
    assert!(
        got.json()["detail"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{}",
        got.text()
    );
    a.assert_metrics(&[
        "attache_upstream_errors_total{direction=\"inbound\",upstream=\"app\",kind=\"connect\"} 1",
    ]);
}

/// An app whose keep-alive timer fires as the next request arrives: it answers the first
/// request on each connection and closes the connection, unanswered, when a second one comes.
/// Counts the request heads it received, by method.
async fn closing_app() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = false;
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let method = head.split(' ').next().unwrap_or_default().to_owned();
                        log.lock().unwrap().push(method);
                        if answered {
                            return; // closed, unanswered
                        }
                        answered = true;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_closing_unanswered_repeats_idempotent_requests() {
    let (app, seen) = closing_app().await;
    let collector =
        attache_tests::otlp::Collector::start(attache_tests::otlp::Protocol::Http).await;
    let ports = Ports::new();
    // The app's calls through the ambassador port: their CLIENT spans count resends.
    let extra = format!(
        "  outbound: [ {{ listen: '127.0.0.1:{}', upstream: closing }} ]
  upstreams: {{ closing: {{ endpoints: ['http://{app}'] }} }}
  telemetry:
    otlp: {{ endpoint: '{}' }}
    batch: {{ scheduled_delay: 100ms }}
",
        ports.outbound,
        collector.endpoint()
    );
    let _attache = Attache::run(ports, &sidecar_config(ports, app, &extra));
    let url = format!("http://127.0.0.1:{}/x", ports.outbound);
    let c = http1();
    let request = |method: &str| {
        Request::builder()
            .method(method)
            .uri(&url)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // Each request after a second of quiet finds its kept-alive connection closing.
    for method in ["GET", "HEAD", "PUT", "DELETE"] {
        let got = within(10, send(&c, request(method))).await.unwrap();
        assert_eq!(got.status, 200, "{method}: {}", got.text());
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // Nothing went missing and no idempotent request failed: the first GET opened a connection; each
    // later request reached the closing one, then went again on a new one.
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET", "HEAD", "HEAD", "PUT", "PUT", "DELETE", "DELETE"]
    );
    // Each CLIENT span says whether its request went out again.
    let spans = collector.wait_spans(4, 10).await;
    let mut resent: Vec<(String, String)> = spans
        .iter()
        .map(|s| {
            (
                s.attr("http.request.method").unwrap_or_default(),
                s.attr("http.request.resend_count").unwrap_or_default(),
            )
        })
        .collect();
    resent.sort();
    assert_eq!(
        resent,
        [("DELETE", "1"), ("GET", ""), ("HEAD", "1"), ("PUT", "1")]
            .map(|(m, n)| (m.to_owned(), n.to_owned()))
    );
    // A POST may have run: it is not repeated, and the caller learns it failed.
    let got = within(10, send(&c, request("POST"))).await.unwrap();
    assert_problem(&got, 502, "upstream-failed");
    assert_eq!(
        seen.lock().unwrap().iter().filter(|m| *m == "POST").count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_too_slow_gives_504_at_the_configured_timeout() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "  timeouts: { request: 300ms }\n");
    let started = Instant::now();
    let got = within(10, get(&http1(), &a.url("/slow/3000")))
        .await
        .unwrap();
    assert_problem(&got, 504, "upstream-timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "answered at the timeout, not when the app finished"
    );
    // The proxy keeps serving.
    assert_eq!(
        within(10, get(&http1(), &a.url("/ok")))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_give_431() {
    let app = App::start("app").await;
    let a = Attache::sidecar(
        app.addr,
        "  limits: { max_headers: 20, max_header_bytes: 4KiB }\n",
    );
    let mut req = Request::get(a.url("/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    for i in 0..30 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            "v".parse().unwrap(),
        );
    }
    let got = within(10, send(&http1(), req)).await.unwrap();
    assert_problem(&got, 431, "too-many-headers");

    let req = Request::get(a.url("/"))
        .header("x-big", "b".repeat(5000))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = within(10, send(&http1(), req)).await.unwrap();
    assert_problem(&got, 431, "headers-too-large");

    // The same limits hold over HTTP/2.
    let req = Request::get(a.url("/"))
        .header("x-big", "b".repeat(5000))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = within(10, send(&client::http2(), req)).await.unwrap();
    assert_problem(&got, 431, "headers-too-large");
    assert_eq!(app.hits(), 0, "rejected requests never reach the app");
}

/// A request head that cannot be parsed gets problem+json too (hyper's own answer would be an
/// empty 400), on a new connection and on a kept-alive one, and the connection closes; an
/// app's own 4xx passes through untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_lines_are_checked_and_an_absolute_target_names_the_host() {
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, with two, or with an invalid
    // one; the app never sees them, so attache and the app cannot disagree on the host.
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    for head in [
        &b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a b\r\nconnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: user@a\r\nconnection: close\r\n\r\n",
    ] {
        let out = within(10, client::raw(a.inbound(), head, Duration::from_secs(2))).await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert!(
            out.contains("https://attache.dev/problems/bad-request"),
            "{out}"
        );
    }
    assert_eq!(app.hits(), 0);
    a.assert_metrics(&["attache_client_errors_total{result=\"bad_host\"} 4"]);
    // HTTP/1.0 may leave Host out.
    let out = within(
        10,
        client::raw(
            a.inbound(),
            b"GET / HTTP/1.0\r\n\r\n",
            Duration::from_secs(2),
        ),
    )
    .await;
    assert!(out.starts_with("HTTP/1.0 200 "), "{out}");
    // An absolute-form target's authority is the host (RFC 9112 §3.2.2), not the Host line.
    let out = within(
        10,
        client::raw(
            a.inbound(),
            b"GET http://shop.example:8080/p HTTP/1.1\r\nhost: other\r\nconnection: close\r\n\r\n",
            Duration::from_secs(2),
        ),
    )
    .await;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["path"], "/p");
    assert_eq!(v["headers"]["host"], "shop.example:8080", "{v}");
    assert_eq!(v["headers"]["x-forwarded-host"], "shop.example:8080", "{v}");
    // Over HTTP/2, a Host naming another host than :authority is malformed (RFC 9113
    // §8.3.1); the same one is fine.
    for (host, status) in [("elsewhere.example", 400), ("", 200)] {
        let mut req = Request::get(a.url("/h2"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        if !host.is_empty() {
            req.headers_mut().insert("host", host.parse().unwrap());
        } else {
            req.headers_mut()
                .insert("host", a.inbound().to_string().parse().unwrap());
        }
        let got = within(10, send(&client::http2(), req)).await.unwrap();
        assert_eq!(got.status, status, "{host:?}: {}", got.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_get_problem_json() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    let long_target = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    for (head, status, slug) in [
        (
            &b"GET / HTTP/1.1\r\nhost: x\r\nx-bad: a\x01b\r\n\r\n"[..],
            400,
            "malformed-request",
        ),
        (b"GARBAGE\r\n\r\n", 400, "malformed-request"),
        (
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            400,
            "malformed-request",
        ),
        (long_target.as_bytes(), 414, "uri-too-long"),
    ] {
        let out = within(10, client::raw(a.inbound(), head, Duration::from_secs(5))).await;
        let (top, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        assert!(top.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
        assert!(
            top.contains("content-type: application/problem+json"),
            "{out}"
        );
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(
            v["type"],
            format!("https://attache.dev/problems/{slug}"),
            "{v}"
        );
        assert_eq!(v["status"], status, "{v}");
    }
    // On a kept-alive connection, after a good exchange.
    let mut s = tokio::net::TcpStream::connect(a.inbound()).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = within(5, s.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    s.write_all(b"GET /b HTTP/1.1\r\nhost: x\r\nx-bad: a\x01b\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    within(5, s.read_to_end(&mut rest)).await.unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 400 "), "{rest}");
    assert!(rest.contains("malformed-request"), "{rest}");
    // The app's own empty 400 is the app's.
    let out = within(
        10,
        client::raw(
            a.inbound(),
            b"GET /status/400 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(5),
        ),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(!out.contains("problem+json"), "{out}");
    let m = client::blocking_get(&a.admin_url("/metrics")).unwrap().1;
    assert!(
        metrics::has(
            &m,
            "attache_client_errors_total{result=\"malformed_head\"} 5"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_with_its_head_gets_408_and_is_closed() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "  limits: { header_read_timeout: 300ms }\n");
    let started = Instant::now();
    let out = within(
        10,
        client::raw(
            a.inbound(),
            b"GET / HTTP/1.1\r\nhost: x\r\nx-partial: ",
            Duration::from_secs(5),
        ),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{out:?}"
    );
    assert!(
        out.contains("application/problem+json") && out.contains("header-read-timeout"),
        "{out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed at the deadline, not when the client gave up"
    );

    // A kept-alive connection that goes quiet between requests is not a slow client: it gets
    // its idle time, and its next request works.
    let mut s = tokio::net::TcpStream::connect(a.inbound()).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within(5, s.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(b"GET /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    within(5, s.read_to_end(&mut rest)).await.unwrap();
    assert!(
        rest.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_idle_timeout() {
    let app = App::start("app").await;
    let a = Attache::sidecar(
        app.addr,
        "  limits: { idle_timeout: 400ms, header_read_timeout: 5s }\n",
    );
    let mut s = tokio::net::TcpStream::connect(a.inbound()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within(5, s.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    let n = within(5, s.read(&mut buf)).await.unwrap();
    assert_eq!(n, 0, "closed without another response");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_give_413() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "  limits: { max_request_body_bytes: 1KiB }\n");
    let req = Request::post(a.url("/sink"))
        .body(Full::new(Bytes::from(vec![b'x'; 2048])))
        .unwrap();
    let got = within(10, send(&http1(), req)).await.unwrap();
    assert_problem(&got, 413, "body-too-large");
    assert_eq!(
        app.hits(),
        0,
        "a declared oversize body never reaches the app"
    );

    // Chunked, so the size is only known while streaming.
    let head = b"POST /sink HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let mut raw = head.to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'y'; 512]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let out = within(10, client::raw(a.inbound(), &raw, Duration::from_secs(5))).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("body-too-large"), "{out}");

    let req = Request::post(a.url("/sink"))
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .unwrap();
    let got = within(10, send(&http1(), req)).await.unwrap();
    assert_eq!((got.status, got.text()), (200, "1024".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_resetting_clients_do_not_disturb_others() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "  limits: { header_read_timeout: 2s }\n");

    // 100 slowloris connections trickle header bytes.
    let mut lorises = Vec::new();
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(a.inbound()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        lorises.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..40 {
                if s.write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            out
        }));
    }
    // 50 clients send half a body and reset.
    for _ in 0..50 {
        let mut s = std::net::TcpStream::connect(a.inbound()).unwrap();
        use std::io::Write;
        s.write_all(b"POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\nhalf")
            .unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    }
    // Meanwhile, good clients are served promptly.
    let c = http1();
    for i in 0..50 {
        let started = Instant::now();
        let got = within(10, get(&c, &a.url(&format!("/good/{i}"))))
            .await
            .unwrap();
        assert_eq!(got.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "request {i} took {:?}",
            started.elapsed()
        );
    }
    // Every slowloris connection is cut off with a 408 at the header deadline.
    for l in lorises {
        let out = within(15, l).await.unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
    // At least the 100 slowloris connections (a pooled test-client connection that was opened
    // but never used is closed at the same deadline and counted too).
    let metrics = client::blocking_get(&a.admin_url("/metrics")).unwrap().1;
    let timeouts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("attache_client_errors_total{result=\"header_timeout\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(timeouts >= 100, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let app = App::start("app").await;
    let ports = Ports::new();
    let config = sidecar_config(
        ports,
        app.addr,
        "  upstreams:\n    billing: { endpoints: ['http://svc:s3cret@billing:80'] }\n  telemetry:\n    otlp: { endpoint: 'http://u:otlppass@127.0.0.1:9', headers: { x-api-key: k123 } }\n",
    );
    let a = Attache::run(ports, &config);
    assert_eq!(
        client::blocking_get(&a.admin_url("/live")).unwrap(),
        (200, "live\n".to_owned())
    );
    assert_eq!(
        client::blocking_get(&a.admin_url("/ready")).unwrap(),
        (200, "ready\n".to_owned())
    );
    within(10, get(&http1(), &a.url("/status/503")))
        .await
        .unwrap();
    within(10, get(&http1(), &a.url("/status/201")))
        .await
        .unwrap();
    a.assert_metrics(&[
        "attache_http_requests_total{direction=\"inbound\",method=\"GET\",status_class=\"5xx\"} 1",
        "attache_http_requests_total{direction=\"inbound\",method=\"GET\",status_class=\"2xx\"} 1",
        "attache_http_request_duration_seconds_count{direction=\"inbound\",method=\"GET\",status_class=\"2xx\"} 1",
        "attache_http_request_duration_seconds_bucket{le=\"+Inf\",direction=\"inbound\",method=\"GET\",status_class=\"2xx\"} 1",
        // Each request came on a client of its own.
        "attache_connections_total{direction=\"inbound\"} 2",
    ]);
    let (status, body) = client::blocking_get(&a.admin_url("/config")).unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["config"]["metadata"]["name"], "e2e");
    assert_eq!(
        v["config"]["spec"]["upstreams"]["billing"]["endpoints"][0],
        "http://REDACTED@billing:80"
    );
    // No credential shows, whatever carries it: a URL's userinfo, any header of a header map;
    // not on the admin port, not in the startup log.
    for secret in ["s3cret", "otlppass", "k123"] {
        assert!(!body.contains(secret), "{secret} on /config: {body}");
        assert!(!a.log_text().contains(secret), "{secret} in the log");
    }
    assert!(v["reload"]["last_error"].is_null());
    let got = within(10, get(&http1(), &a.admin_url("/nope")))
        .await
        .unwrap();
    assert_problem(&got, 404, "admin-not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_answering_with_too_many_header_lines_gets_a_502_that_says_so() {
    // 150 Set-Cookie lines: over the 100 a response head may carry (Envoy's default too).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let mut head = String::from("HTTP/1.1 200 OK\r\n");
                for i in 0..150 {
                    head.push_str(&format!("set-cookie: c{i}=v\r\n"));
                }
                head.push_str("content-length: 2\r\nconnection: close\r\n\r\nok");
                let _ = s.write_all(head.as_bytes()).await;
            });
        }
    });
    let ports = Ports::new();
    let a = Attache::run(ports, &sidecar_config(ports, app, ""));
    let got = within(10, get(&http1(), &a.url("/"))).await.unwrap();
    assert_problem(&got, 502, "upstream-failed");
    assert!(
        got.text().contains("response head is too large"),
        "{}",
        got.text()
    );
}
