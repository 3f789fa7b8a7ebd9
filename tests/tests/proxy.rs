//! Traffic through the real binary: HTTP/1.1 and HTTP/2 inbound, the outbound ambassador,
//! WebSocket upgrades and large streamed uploads.

use attache_tests::client::{self, exchange, get, http1, http2, send};
use attache_tests::{App, Attache, Ports, within};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_round_trip_strips_hop_by_hop_and_sets_forwarded_headers() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    let req = Request::get(a.url("/hello?x=1"))
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = within(10, send(&http1(), req)).await.unwrap();
    assert_eq!(got.status, 200);
    let v = got.json();
    assert_eq!(v["app"], "app");
    assert_eq!(v["path"], "/hello");
    let h = &v["headers"];
    assert_eq!(h["x-custom"], "kept");
    assert!(
        h.get("x-private").is_none(),
        "a header named in Connection must not reach the app: {h}"
    );
    assert!(h.get("keep-alive").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["host"], format!("127.0.0.1:{}", a.ports.inbound));
    assert_eq!(
        h["x-forwarded-host"],
        format!("127.0.0.1:{}", a.ports.inbound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_reaches_an_http1_app() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    let c = http2();
    for i in 0..3 {
        let got = within(10, get(&c, &a.url(&format!("/h2/{i}"))))
            .await
            .unwrap();
        assert_eq!(got.status, 200);
        let v = got.json();
        assert_eq!(v["version"], "HTTP/1.1", "the app is spoken to in HTTP/1.1");
        assert_eq!(v["path"], format!("/h2/{i}"));
        assert_eq!(
            v["headers"]["host"],
            format!("127.0.0.1:{}", a.ports.inbound),
            "h2 :authority becomes Host"
        );
    }
    assert_eq!(app.hits(), 3);
    // Sequential requests ride one kept-alive connection to the app.
    a.assert_metrics(&[&format!(
        "attache_upstream_connections_opened_total{{endpoint=\"{}\"}} 1",
        app.addr
    )]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_endpoint_hands_any_request_to_the_next_whole() {
    // One endpoint of two refuses connections. Nothing of a request reached it, so every
    // request, a POST with its body included, goes whole to the other one: with that
    // endpoint's Host and credentials, never the refusing one's. Over HTTP/1.1 and HTTP/2.
    for protocol in ["http1", "http2"] {
        let live = App::start("payments").await;
        let dead = Ports::new().inbound;
        let ports = Ports::new();
        let config = format!(
            "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound:
    - listen: 127.0.0.1:{out}
      upstream: payments
  upstreams:
    payments:
      endpoints: ['http://dead:secret@127.0.0.1:{dead}', 'http://{live}']
      protocol: {protocol}
  admin: {{ listen: 127.0.0.1:{admin} }}
",
            out = ports.outbound,
            live = live.addr,
            admin = ports.admin
        );
        let a = Attache::run(ports, &config);
        let body = "0123456789".repeat(1000);
        for method in ["POST", "PUT", "GET", "POST"] {
            let got = exchange(
                method,
                &format!("http://127.0.0.1:{}/charge", ports.outbound),
                &[("content-type", "text/plain")],
                if method == "GET" { "" } else { &body },
            )
            .await;
            assert_eq!(got.status, 200, "{protocol} {method}: {}", got.text());
            let v = got.json();
            assert_eq!(v["method"], method, "{protocol}");
            let sent = if method == "GET" { 0 } else { body.len() };
            assert_eq!(v["body_bytes"], sent, "{protocol} {method}: the whole body");
            assert_eq!(v["headers"]["host"], live.addr.to_string(), "{protocol}");
            assert!(
                v["headers"].get("authorization").is_none(),
                "{protocol} {method}: the refusing endpoint's credentials stay with it: {v}"
            );
        }
        assert_eq!(live.hits(), 4, "{protocol}: each request ran once");
        a.assert_metrics(&[
            "attache_http_requests_total{direction=\"outbound\",method=\"POST\",status_class=\"2xx\"} 2",
            "attache_upstream_errors_total{direction=\"outbound\",upstream=\"payments\",kind=\"connect\"} 2",
        ]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_ambassador_round_robins_and_rewrites_host() {
    let (a1, a2) = (App::start("pay-a").await, App::start("pay-b").await);
    let ports = Ports::new();
    let config = format!(
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound:
    - listen: 127.0.0.1:{out}
      upstream: payments
  upstreams:
    payments:
      endpoints: [http://{e1}, http://{e2}]
  admin: {{ listen: 127.0.0.1:{admin} }}
",
        out = ports.outbound,
        e1 = a1.addr,
        e2 = a2.addr,
        admin = ports.admin
    );
    let a = Attache::run(ports, &config);
    let c = http1();
    let mut hosts = Vec::new();
    for _ in 0..4 {
        let got = within(
            10,
            get(&c, &format!("http://127.0.0.1:{}/charge", ports.outbound)),
        )
        .await
        .unwrap();
        assert_eq!(got.status, 200);
        let v = got.json();
        hosts.push(v["headers"]["host"].as_str().unwrap_or_default().to_owned());
        assert!(
            v["headers"].get("x-forwarded-for").is_none(),
            "outbound calls carry no X-Forwarded-For"
        );
    }
    assert_eq!(
        (a1.hits(), a2.hits()),
        (2, 2),
        "round robin over both endpoints"
    );
    assert!(
        hosts.contains(&a1.addr.to_string()) && hosts.contains(&a2.addr.to_string()),
        "{hosts:?}"
    );
    a.assert_metrics(&[
        "attache_http_requests_total{direction=\"outbound\",method=\"GET\",status_class=\"2xx\"} 4",
        // Each endpoint's pool keeps its one connection for its second request.
        &format!(
            "attache_upstream_connections_opened_total{{endpoint=\"{}\"}} 1",
            a1.addr
        ),
        &format!(
            "attache_upstream_connections_opened_total{{endpoint=\"{}\"}} 1",
            a2.addr
        ),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let app = App::start("ws").await;
    let a = Attache::sidecar(app.addr, "");
    let (mut s, head) = client::websocket(a.inbound()).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"ping"[..], b"a longer frame of bytes \x00\x01\x02"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        within(10, s.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1gib_upload_streams_through_with_flat_memory() {
    const TOTAL: u64 = 1 << 30;
    let app = App::start("sink").await;
    let a = Attache::sidecar(app.addr, "");
    let (peak_before, _) = a.memory_kib();
    let mut s = tokio::net::TcpStream::connect(a.inbound()).await.unwrap();
    let head = format!(
        "POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: {TOTAL}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 256 * 1024];
    within(120, async {
        let mut sent = 0u64;
        while sent < TOTAL {
            s.write_all(&chunk).await.unwrap();
            sent += chunk.len() as u64;
        }
    })
    .await;
    let mut out = String::new();
    within(30, s.read_to_string(&mut out)).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with(&TOTAL.to_string()),
        "the app received every byte: {out}"
    );
    let (peak_after, _) = a.memory_kib();
    // Streaming, not buffering: 1 GiB moves through while the peak grows by a few MiB at most.
    assert!(
        peak_after < peak_before + 32 * 1024,
        "peak RSS grew from {peak_before} KiB to {peak_after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_does_not_hold_up_others() {
    slow_request_alone(2).await;
}

/// One worker: tokio's current-thread scheduler runs every connection on one thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_does_not_hold_up_others_on_one_worker() {
    slow_request_alone(1).await;
}

async fn slow_request_alone(workers: usize) {
    let app = App::start("app").await;
    let a = Attache::sidecar_on(app.addr, "", workers);
    let slow = tokio::spawn({
        let url = a.url("/slow/1500");
        async move { get(&http1(), &url).await }
    });
    // The slow request is at the app before the fast one is sent.
    app.wait_hits(1).await;
    let fast = within(10, get(&http1(), &a.url("/fast"))).await.unwrap();
    assert_eq!(fast.status, 200);
    assert!(
        !slow.is_finished(),
        "the slow request is still running while the fast one is answered"
    );
    assert_eq!(within(10, slow).await.unwrap().unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_apps_get_http2_with_trailers_end_to_end() {
    use http_body_util::BodyExt;
    let app = App::start("grpc").await;
    let a = {
        let ports = Ports::new();
        let config = attache_tests::sidecar_config(ports, app.addr, "").replace(
            "    app: http://",
            "    app_protocol: http2\n    app: http://",
        );
        Attache::run(ports, &config)
    };
    let req = Request::post(a.url("/trailers"))
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let res = within(10, client::http2().request(req)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["x-seen-version"],
        "HTTP/2.0",
        "attache spoke HTTP/2 to the app"
    );
    assert_eq!(
        res.headers()["x-seen-te"],
        "trailers",
        "te: trailers reached the app"
    );
    let collected = within(10, res.into_body().collect()).await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers came back");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "ok");

    // An HTTP/1.1 app (the default) never sees TE.
    let plain = Attache::sidecar(app.addr, "");
    let req = Request::get(plain.url("/trailers"))
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = within(10, client::http2().request(req)).await.unwrap();
    assert_eq!(res.headers()["x-seen-version"], "HTTP/1.1");
    assert!(!res.headers().contains_key("x-seen-te"));
}
