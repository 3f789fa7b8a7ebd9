//! Retries on the ambassador (`spec.upstreams.<name>.retry`), end to end: the real binary in
//! front of a real app whose first requests fail, counting how often each request ran.

use std::time::{Duration, Instant};

use attache_tests::app::App;
use attache_tests::client::exchange;
use attache_tests::{Attache, Ports};

/// An attache with one outbound port to the upstream `flaky` at `app`, with `retry` (YAML
/// under `retry:`, indented by eight spaces) and the access log on stdout.
fn ambassador(app: &App, retry: &str, timeouts: &str) -> (Attache, Ports) {
    let ports = Ports::new();
    let config = format!(
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound:
    - listen: 127.0.0.1:{out}
      upstream: flaky
  upstreams:
    flaky:
      endpoints: ['http://{app}']
      {timeouts}
      retry:
{retry}
  admin: {{ listen: 127.0.0.1:{admin} }}
",
        out = ports.outbound,
        app = app.addr,
        admin = ports.admin
    );
    (Attache::run(ports, &config), ports)
}

fn url(ports: Ports, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", ports.outbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_is_retried_after_a_reset_and_a_503_and_an_unkeyed_post_is_not() {
    let app = App::start("flaky").await;
    let (a, ports) = ambassador(&app, "        attempts: 3\n        backoff: 5ms", "");

    // The first try's connection is dropped after the app read the request; the second
    // answers 503; the third gets through. The client sees one 200.
    let got = exchange("GET", &url(ports, "/flaky/1/reset"), &[], "").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["hits"], 2, "tried twice: {}", got.text());
    let got = exchange("GET", &url(ports, "/flaky/3/503"), &[], "").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["hits"], 4);
    a.assert_metrics(&[
        "attache_upstream_retries_total{upstream=\"flaky\",reason=\"reset\"} 1",
        "attache_upstream_retries_total{upstream=\"flaky\",reason=\"status\"} 1",
    ]);

    // A POST without an Idempotency-Key may not run twice: its reset is the answer (502),
    // and the app ran it once.
    let before = app.hits();
    let got = exchange("POST", &url(ports, "/flaky/999/reset"), &[], "pay").await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(app.hits(), before + 1, "an unkeyed POST ran once");

    // Three tries in all: a GET that keeps failing is answered with the last failure.
    let before = app.hits();
    let got = exchange("GET", &url(ports, "/flaky/999/503"), &[], "").await;
    assert_eq!(got.status, 503);
    assert_eq!(app.hits(), before + 3, "attempts: 3 is three tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_post_is_retried_with_its_body() {
    let app = App::start("flaky").await;
    let (_a, ports) = ambassador(&app, "        attempts: 2\n        backoff: 5ms", "");
    let body = "x".repeat(10_000);
    let got = exchange(
        "POST",
        &url(ports, "/flaky/1/reset"),
        &[
            ("idempotency-key", "\"order-1\""),
            ("content-type", "text/plain"),
        ],
        &body,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let v = got.json();
    assert_eq!(v["hits"], 2, "the keyed POST went again");
    assert_eq!(v["body_bytes"], 10_000, "with its whole body");

    // A body over max_body_bytes (64 KiB by default) is not held, so not retried.
    let before = app.hits();
    let big = "y".repeat(100_000);
    let got = exchange(
        "POST",
        &url(ports, &format!("/flaky/{}/reset", before + 1)),
        &[("idempotency-key", "\"order-2\"")],
        &big,
    )
    .await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(app.hits(), before + 1, "a large body goes once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_waited_out_and_the_deadline_bounds_everything() {
    let app = App::start("flaky").await;
    let (_a, ports) = ambassador(
        &app,
        "        attempts: 3\n        backoff: 5ms",
        "timeouts: { request: 3s }",
    );
    // The 503 asks for one second: the retry waits it out.
    let started = Instant::now();
    let got = exchange("GET", &url(ports, "/flaky/1/503?retry_after=1"), &[], "").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was honoured ({:?})",
        started.elapsed()
    );

    // A Retry-After past the call's deadline (3 s) is not waited for: the 503 is the answer.
    let before = app.hits();
    let got = exchange(
        "GET",
        &url(ports, &format!("/flaky/{}/503?retry_after=30", before + 5)),
        &[],
        "",
    )
    .await;
    assert_eq!(got.status, 503);
    assert_eq!(app.hits(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_holds_retries_under_a_full_outage() {
    // Every request fails. With a budget of 20% and no floor, retries stay within 20% of the
    // requests (plus the first, which the empty window cannot pay for: none).
    let app = App::start("flaky").await;
    let (a, ports) = ambassador(
        &app,
        "        attempts: 3\n        backoff: 1ms\n        budget: { ratio: 0.2, min_per_second: 0 }",
        "",
    );
    let requests = 50;
    for _ in 0..requests {
        let got = exchange("GET", &url(ports, "/flaky/100000/503"), &[], "").await;
        assert_eq!(got.status, 503);
    }
    let retries = a
        .metric("attache_upstream_retries_total{upstream=\"flaky\",reason=\"status\"}")
        .unwrap_or(0.0);
    let refused = a
        .metric("attache_upstream_retry_budget_exhausted_total{upstream=\"flaky\"}")
        .unwrap_or(0.0);
    assert!(
        retries <= 0.2 * requests as f64,
        "{retries} retries for {requests} requests"
    );
    assert!(retries >= 1.0, "the budget allows some retries: {retries}");
    assert!(refused >= 1.0, "and refuses the rest: {refused}");
    assert_eq!(
        app.hits(),
        requests + retries as usize,
        "every try reached the app once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_moves_on_to_the_next_try() {
    // Each try of a slow request is cut at per_try_timeout and tried again, and the call
    // ends long before its own (request) timeout.
    let app = App::start("flaky").await;
    let (a, ports) = ambassador(
        &app,
        "        attempts: 2\n        backoff: 5ms\n        per_try_timeout: 200ms",
        "timeouts: { request: 5s }",
    );
    let started = Instant::now();
    // /slow/1000 takes a second: both tries are cut at 200 ms, and the 504 comes within
    // twice the per-try timeout plus the backoff, far below the 5 s request timeout.
    let got = exchange("GET", &url(ports, "/slow/1000"), &[], "").await;
    assert_eq!(got.status, 504, "{}", got.text());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.hits(), 2, "two tries");
    a.assert_metrics(&["attache_upstream_retries_total{upstream=\"flaky\",reason=\"timeout\"} 1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_span_counts_every_try_after_the_first() {
    use attache_tests::otlp::{Collector, Protocol};
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

    let collector = Collector::start(Protocol::Http).await;
    let app = App::start("flaky").await;
    let ports = Ports::new();
    let config = format!(
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ {{ listen: '127.0.0.1:{out}', upstream: flaky }} ]
  upstreams:
    flaky:
      endpoints: ['http://{app}']
      retry: {{ attempts: 3, backoff: 5ms }}
  telemetry:
    otlp: {{ endpoint: '{otlp}', protocol: http/protobuf, timeout: 2s }}
    batch: {{ scheduled_delay: 100ms, max_export_batch_size: 1 }}
  admin: {{ listen: 127.0.0.1:{admin} }}
",
        out = ports.outbound,
        app = app.addr,
        otlp = collector.endpoint(),
        admin = ports.admin
    );
    let _a = Attache::run(ports, &config);
    let got = exchange("GET", &url(ports, "/flaky/2/503"), &[], "").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["hits"], 3);
    let spans = collector.wait_spans(1, 10).await;
    let clients: Vec<_> = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Client)
        .collect();
    assert_eq!(clients.len(), 1, "one CLIENT span for the call: {spans:#?}");
    assert_eq!(
        clients[0].attr("http.request.resend_count").as_deref(),
        Some("2")
    );
    assert_eq!(
        clients[0].attr("http.response.status_code").as_deref(),
        Some("200")
    );
}

/// A TCP relay on a free loopback port to `target` that loses the first answer: on its first
/// connection it passes the request on, and when the answer's first bytes come back it closes
/// both sides without passing them. Later connections are relayed whole.
async fn losing_first_answer(target: std::net::SocketAddr) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            if std::mem::take(&mut first) {
                tokio::spawn(async move {
                    let (mut cr, _cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let mut buf = [0u8; 16 * 1024];
                    let mut answer = [0u8; 1];
                    loop {
                        tokio::select! {
                            n = cr.read(&mut buf) => match n {
                                Ok(n) if n > 0 => { let _ = sw.write_all(&buf[..n]).await; }
                                _ => return,
                            },
                            // The answer came: the app ran. Drop it, and both connections.
                            _ = sr.read(&mut answer) => return,
                        }
                    }
                });
            } else {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_given_a_key_is_answered_from_the_callees_record_when_its_answer_is_lost() {
    // Two attaches: the caller's ambassador generates an Idempotency-Key for the app's POST;
    // the callee's sidecar enforces idempotency in front of an app that counts executions.
    // The first answer is lost on the way back (the connection cut after the app ran); the
    // retry is answered from the callee's record, and the app ran the POST once.
    let app = App::start("orders").await;
    let callee_ports = Ports::new();
    let callee = Attache::run(
        callee_ports,
        &attache_tests::sidecar_config(callee_ports, app.addr, "  idempotency: {}\n"),
    );
    let relay = losing_first_answer(callee.inbound()).await;
    let ports = Ports::new();
    let config = format!(
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound: [ {{ listen: '127.0.0.1:{out}', upstream: orders }} ]
  upstreams:
    orders:
      endpoints: ['http://{relay}']
      retry: {{ attempts: 3, backoff: 20ms, idempotency_key: generate }}
  admin: {{ listen: 127.0.0.1:{admin} }}
",
        out = ports.outbound,
        admin = ports.admin
    );
    let caller = Attache::run(ports, &config);
    let got = exchange(
        "POST",
        &url(ports, "/created"),
        &[("content-type", "application/json")],
        "{\"item\":1}",
    )
    .await;
    assert_eq!(got.status, 201, "{}", got.text());
    assert_eq!(
        got.headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "the retry was answered from the callee's record"
    );
    assert_eq!(got.json()["order"], 1, "the answer of the one execution");
    assert_eq!(app.hits(), 1, "the POST ran once");
    caller.assert_metrics(&[
        "attache_upstream_retries_total{upstream=\"orders\",reason=\"reset\"} 1",
    ]);

    // Without `generate`, the same lost answer is a 502 and nothing is retried.
    let app2 = App::start("orders").await;
    let callee2_ports = Ports::new();
    let callee2 = Attache::run(
        callee2_ports,
        &attache_tests::sidecar_config(callee2_ports, app2.addr, "  idempotency: {}\n"),
    );
    let relay2 = losing_first_answer(callee2.inbound()).await;
    let ports2 = Ports::new();
    let plain = config
        .replace(&relay.to_string(), &relay2.to_string())
        .replace(", idempotency_key: generate", "")
        .replace(&ports.outbound.to_string(), &ports2.outbound.to_string())
        .replace(&ports.admin.to_string(), &ports2.admin.to_string());
    let _caller2 = Attache::run(ports2, &plain);
    let got = exchange("POST", &url(ports2, "/created"), &[], "{}").await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(app2.hits(), 1);
}
