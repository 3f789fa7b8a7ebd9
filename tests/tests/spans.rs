//! Spans, their export over OTLP and the access log, through the real binary
//! (`specs/trace-context.md` §8–§12, cases 39–44). Spans are checked at a test collector
//! (`attache_tests::otlp`) that speaks OTLP over HTTP/protobuf (hyper) or gRPC (tonic).

use std::time::{Duration, Instant};

use attache_tests::client::{get, http1};
use attache_tests::otlp::{Collector, Protocol, Received, SpanKind};
use attache_tests::{App, Attache, Ports, TempDir, eventually, metrics, sidecar_config, within};

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const P: &str = "00f067aa0ba902b7";

/// A sidecar in front of `app`, with an ambassador port to `upstream_endpoints`, exporting
/// to `collector` in small, quick batches. `telemetry` adds keys under `spec.telemetry`.
fn traced(
    ports: Ports,
    app: &App,
    upstream_endpoints: &str,
    collector: &Collector,
    telemetry: &str,
    env: &[(&str, &str)],
) -> Attache {
    let protocol = match collector.protocol {
        Protocol::Http => "http/protobuf",
        Protocol::Grpc => "grpc",
    };
    let extra = format!(
        "  outbound: [ {{ listen: '127.0.0.1:{}', upstream: payments }} ]
  upstreams: {{ payments: {{ endpoints: [{upstream_endpoints}] }} }}
  telemetry:
    otlp: {{ endpoint: '{}', protocol: {protocol}, timeout: 2s }}
    batch: {{ scheduled_delay: 100ms, max_export_batch_size: 2 }}
{telemetry}",
        ports.outbound,
        collector.endpoint(),
    );
    Attache::run_with_env(ports, &sidecar_config(ports, app.addr, &extra), env)
}

async fn call(url: &str, method: &str, headers: &[(&str, &str)]) -> attache_tests::client::Got {
    attache_tests::client::exchange(method, url, headers, "").await
}

fn one<'a>(spans: &'a [Received], what: &str, pred: impl Fn(&Received) -> bool) -> &'a Received {
    let found: Vec<_> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what} span in {spans:#?}");
    found[0]
}

/// Case 39, 42 and 44 and the span tree: caller → SERVER → app → CLIENT → upstream.
async fn span_tree_reaches_the_collector(protocol: Protocol, workers: &str) {
    let collector = Collector::start(protocol).await;
    let app = App::start("app").await;
    let payments = App::start("payments").await;
    let ports = Ports::new();
    let a = traced(
        ports,
        &app,
        &format!("'http://{}'", payments.addr),
        &collector,
        "",
        &[
            ("ATTACHE_WORKERS", workers),
            ("OTEL_SERVICE_NAME", "a"),
            ("POD_NAME", "p"),
        ],
    );

    let tp = format!("00-{T}-{P}-01");
    let path = format!("/call/{}/charge", ports.outbound);
    let got = call(
        &a.url(&format!("{path}?x=1&sig=s")),
        "GET",
        &[("traceparent", &tp), ("user-agent", "e2e/1")],
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.text(),
        "{\"status\":200}",
        "the app's call went through"
    );

    let spans = collector.wait_spans(2, 10).await;
    let server = one(&spans, "SERVER", |s| s.kind() == SpanKind::Server);
    let client = one(&spans, "CLIENT", |s| s.kind() == SpanKind::Client);

    // The tree: the caller's P → SERVER → (app) → CLIENT, one trace.
    assert_eq!(server.trace_id(), T);
    assert_eq!(server.parent_id(), P);
    assert_eq!(
        server.span.flags & 0x300,
        0x300,
        "a continued span's parent is remote"
    );
    assert_eq!(client.trace_id(), T);
    assert_eq!(
        client.parent_id(),
        server.span_id(),
        "the app forwarded attache's SERVER span"
    );
    assert_eq!(server.span.name, "GET");
    assert!(server.span.end_time_unix_nano >= server.span.start_time_unix_nano);
    assert!(
        server.span.start_time_unix_nano <= client.span.start_time_unix_nano
            && client.span.end_time_unix_nano <= server.span.end_time_unix_nano,
        "the CLIENT span lies within the SERVER span"
    );

    // §8 attributes, case 39's query redaction.
    let attr = |s: &Received, k: &str| s.attr(k).unwrap_or_else(|| panic!("no {k} in {s:#?}"));
    assert_eq!(attr(server, "http.request.method"), "GET");
    assert_eq!(attr(server, "url.path"), path);
    assert_eq!(attr(server, "url.query"), "x=1&sig=REDACTED");
    assert_eq!(attr(server, "url.scheme"), "http");
    assert_eq!(attr(server, "user_agent.original"), "e2e/1");
    assert_eq!(attr(server, "server.address"), "127.0.0.1");
    assert_eq!(attr(server, "server.port"), ports.inbound.to_string());
    assert_eq!(attr(server, "client.address"), "127.0.0.1");
    assert_eq!(attr(server, "network.protocol.version"), "1.1");
    assert_eq!(attr(server, "http.response.status_code"), "200");
    assert_eq!(attr(server, "attache.trace.format"), "tracecontext");
    assert!(server.attr("http.route").is_none(), "a path is no route");
    assert!(!server.is_error());

    assert_eq!(attr(client, "http.request.method"), "GET");
    assert_eq!(
        attr(client, "url.full"),
        format!("http://{}/charge", payments.addr)
    );
    assert_eq!(
        attr(client, "server.port"),
        payments.addr.port().to_string()
    );
    assert_eq!(attr(client, "http.response.status_code"), "200");
    assert_eq!(attr(client, "attache.restored"), "true");
    assert_eq!(attr(client, "attache.correlation"), "trace_context");
    assert!(client.attr("url.path").is_none());

    // Case 42: the resource.
    assert_eq!(server.resource["service.name"], "a");
    assert_eq!(server.resource["k8s.pod.name"], "p");

    // Case 44: the access log names the same trace and span as the forwarded traceparent.
    let seen = call(&a.url("/echo"), "GET", &[("traceparent", &tp)])
        .await
        .json();
    let forwarded = seen["headers"]["traceparent"].as_str().unwrap().to_owned();
    let rid = seen["headers"]["x-request-id"].as_str().unwrap().to_owned();
    let lines = a.wait_access_log(10, |l| l["path"] == "/echo");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(
        format!(
            "00-{}-{}-01",
            line["trace_id"].as_str().unwrap(),
            line["span_id"].as_str().unwrap()
        ),
        forwarded
    );
    assert_eq!(line["request_id"], rid.as_str());
    assert_eq!(line["direction"], "inbound");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], "app");
    assert_eq!(line["sampled"], true);
    assert!(line["response_bytes"].as_u64().unwrap() > 0);
    let out = a.wait_access_log(10, |l| l["direction"] == "outbound");
    assert_eq!(out[0]["span_id"].as_str().unwrap(), client.span_id());
    assert_eq!(out[0]["upstream"], "payments");

    // Several batches (max_export_batch_size: 2), all of them received.
    for i in 0..5 {
        call(&a.url(&format!("/n/{i}")), "GET", &[]).await;
    }
    let spans = collector.wait_spans(8, 10).await;
    assert!(spans.len() >= 8, "{} spans", spans.len());
    assert!(collector.batches() >= 3, "{} batches", collector.batches());
    // The counter moves once the collector's answer is read.
    assert!(
        attache_tests::eventually(5, async || {
            attache_tests::client::blocking_get(&a.admin_url("/metrics"))
                .is_ok_and(|(_, m)| metrics::has(&m, "attache_spans_exported_total 8"))
        })
        .await,
        "attache_spans_exported_total 8"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_tree_over_http_protobuf() {
    span_tree_reaches_the_collector(Protocol::Http, "2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_tree_over_grpc_on_one_worker() {
    span_tree_reaches_the_collector(Protocol::Grpc, "1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_errors_and_unknown_methods() {
    // Cases 39 (method FOO) and 40.
    let collector = Collector::start(Protocol::Http).await;
    let app = App::start("app").await;
    let payments = App::start("payments").await;
    let ports = Ports::new();
    let a = traced(
        ports,
        &app,
        &format!("'http://{}'", payments.addr),
        &collector,
        "",
        &[],
    );
    let out = |p: &str| format!("http://127.0.0.1:{}{p}", ports.outbound);
    assert_eq!(call(&a.url("/status/404"), "GET", &[]).await.status, 404);
    assert_eq!(call(&a.url("/status/503"), "GET", &[]).await.status, 503);
    assert_eq!(call(&a.url("/foo"), "FOO", &[]).await.status, 200);
    assert_eq!(call(&out("/status/404"), "GET", &[]).await.status, 404);
    let spans = collector.wait_spans(4, 10).await;
    let by = |kind: SpanKind, path: &str| {
        one(&spans, path, |s| {
            s.kind() == kind
                && (s.attr("url.path").as_deref() == Some(path)
                    || s.attr("url.full").is_some_and(|u| u.ends_with(path)))
        })
        .clone()
    };
    let s404 = by(SpanKind::Server, "/status/404");
    assert!(!s404.is_error(), "SERVER 404 is Unset");
    assert!(s404.attr("error.type").is_none());
    let s503 = by(SpanKind::Server, "/status/503");
    assert!(s503.is_error(), "SERVER 503 is Error");
    assert_eq!(s503.attr("error.type").as_deref(), Some("503"));
    let c404 = by(SpanKind::Client, "/status/404");
    assert!(c404.is_error(), "CLIENT 404 is Error");
    assert_eq!(c404.attr("error.type").as_deref(), Some("404"));
    let foo = by(SpanKind::Server, "/foo");
    assert_eq!(foo.span.name, "HTTP");
    assert_eq!(foo.attr("http.request.method").as_deref(), Some("_OTHER"));
    assert_eq!(
        foo.attr("http.request.method_original").as_deref(),
        Some("FOO")
    );
    drop(a);

    // Refused: no status received, error.type names the cause.
    let collector = Collector::start(Protocol::Http).await;
    let dead = Ports::new().inbound;
    let ports = Ports::new();
    let _a = traced(
        ports,
        &app,
        &format!("'http://127.0.0.1:{dead}'"),
        &collector,
        "",
        &[],
    );
    let got = call(
        &format!("http://127.0.0.1:{}/x", ports.outbound),
        "GET",
        &[],
    )
    .await;
    assert_eq!(got.status, 502);
    let spans = collector.wait_spans(1, 10).await;
    let c = one(&spans, "CLIENT", |s| s.kind() == SpanKind::Client);
    assert!(c.is_error());
    assert_eq!(c.attr("error.type").as_deref(), Some("connection_refused"));
    assert!(c.attr("http.response.status_code").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_is_one_span_with_credentials_redacted() {
    // Case 41: the first endpoint refuses, the second answers; one CLIENT span.
    let collector = Collector::start(Protocol::Http).await;
    let app = App::start("app").await;
    let payments = App::start("payments").await;
    let dead = Ports::new().inbound;
    let ports = Ports::new();
    let a = traced(
        ports,
        &app,
        &format!(
            "'http://u:p@127.0.0.1:{dead}', 'http://u:p@{}'",
            payments.addr
        ),
        &collector,
        "",
        &[],
    );
    let got = call(
        &format!("http://127.0.0.1:{}/x?sig=abc", ports.outbound),
        "GET",
        &[],
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json()["headers"]["authorization"],
        "Basic dTpw",
        "the endpoint's credentials are sent"
    );
    let spans = collector.wait_spans(1, 10).await;
    let c = one(&spans, "CLIENT", |s| s.kind() == SpanKind::Client);
    assert_eq!(c.attr("http.request.resend_count").as_deref(), Some("1"));
    assert_eq!(
        c.attr("url.full").unwrap(),
        format!("http://REDACTED:REDACTED@{}/x?sig=REDACTED", payments.addr)
    );
    assert!(!c.is_error());
    // A marker call after it: once its span arrived, any span of a second attempt (queued
    // earlier) would have too.
    call(
        &format!("http://127.0.0.1:{}/marker", ports.outbound),
        "GET",
        &[],
    )
    .await;
    let spans = collector.wait_spans(2, 10).await;
    let path = |s: &Received| s.attr("url.full").unwrap_or_default();
    assert!(
        spans.iter().any(|s| path(s).contains("/marker")),
        "{spans:#?}"
    );
    assert_eq!(
        spans.iter().filter(|s| path(s).contains("/x?")).count(),
        1,
        "retries stay inside one span: {spans:#?}"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_arg_zero_exports_roots_as_unsampled() {
    // Case 42: OTEL_TRACES_SAMPLER_ARG=0 → new roots carry flags 02 and export nothing; a
    // sampled caller is still followed.
    let collector = Collector::start(Protocol::Http).await;
    let app = App::start("app").await;
    let ports = Ports::new();
    let a = traced(
        ports,
        &app,
        &format!("'http://{}'", app.addr),
        &collector,
        "",
        &[("OTEL_TRACES_SAMPLER_ARG", "0")],
    );
    let root = call(&a.url("/root"), "GET", &[]).await.json();
    assert!(
        root["headers"]["traceparent"]
            .as_str()
            .unwrap()
            .ends_with("-02")
    );
    let tp = format!("00-{T}-{P}-01");
    call(&a.url("/followed"), "GET", &[("traceparent", &tp)]).await;
    // `/followed` ended after `/root` and spans leave in the order they end: once its span
    // arrived, a span of the unsampled root would have too.
    let spans = collector.wait_spans(1, 10).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].attr("url.path").as_deref(), Some("/followed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_retry_and_compression_is_understood() {
    for protocol in [Protocol::Http, Protocol::Grpc] {
        let collector = Collector::start(protocol).await;
        collector.fail_next(1);
        let app = App::start("app").await;
        let ports = Ports::new();
        let a = traced(
            ports,
            &app,
            &format!("'http://{}'", app.addr),
            &collector,
            "",
            &[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")],
        );
        call(&a.url("/once"), "GET", &[]).await;
        let spans = collector.wait_spans(1, 10).await;
        assert_eq!(spans.len(), 1, "{protocol:?}: the batch was retried");
        assert_eq!(collector.failed(), 1, "{protocol:?}");
        assert!(collector.gzipped() >= 1, "{protocol:?}: gzip was used");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_requests_nothing_and_sigterm_flushes() {
    // Case 43: nothing listens at the collector's address; requests all succeed while
    // spans are dropped and counted.
    let app = App::start("app").await;
    let dead = Ports::new().inbound;
    let ports = Ports::new();
    let extra = format!(
        "  telemetry:
    otlp: {{ endpoint: 'http://127.0.0.1:{dead}', timeout: 5s }}
    batch: {{ max_queue_size: 8, max_export_batch_size: 4, scheduled_delay: 50ms }}
"
    );
    let a = Attache::run(ports, &sidecar_config(ports, app.addr, &extra));
    let client = http1();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url) = (client.clone(), a.url("/"));
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut slowest) = (0, Duration::ZERO);
            for _ in 0..25 {
                let t = Instant::now();
                if get(&client, &url).await.is_ok_and(|g| g.status == 200) {
                    ok += 1;
                }
                slowest = slowest.max(t.elapsed());
            }
            (ok, slowest)
        }));
    }
    let (mut ok, mut slowest) = (0, Duration::ZERO);
    for t in tasks {
        let (n, s) = within(30, t).await.unwrap();
        ok += n;
        slowest = slowest.max(s);
    }
    let total = started.elapsed();
    assert_eq!(ok, 200, "every request succeeded with the collector down");
    // No request waited on an export: each took a fraction of the 5 s export timeout, and all
    // 200 (25 in a row on each of 8 clients) less than two timeouts.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );
    assert!(
        total < Duration::from_secs(10),
        "200 requests took {total:?}"
    );
    // Every span is dropped and counted, whatever the reason (a full queue, a failed export),
    // but those still queued (8) or in the batch being tried (4).
    let text = a.metrics_text();
    let dropped: f64 = metrics::samples(&text)
        .filter(|(s, _)| s.starts_with("attache_spans_dropped_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(dropped >= 188.0, "drops are counted:\n{text}");
    assert!(
        metrics::has(&text, "attache_spans_exported_total 0"),
        "{text}"
    );
    drop(a);

    // SIGTERM: spans waiting for their scheduled batch are sent before exit.
    let collector = Collector::start(Protocol::Grpc).await;
    let ports = Ports::new();
    let extra = format!(
        "  telemetry:
    otlp: {{ endpoint: '{}', protocol: grpc }}
    batch: {{ scheduled_delay: 1h }}
",
        collector.endpoint()
    );
    let mut a = Attache::run(ports, &sidecar_config(ports, app.addr, &extra));
    for _ in 0..3 {
        call(&a.url("/before-exit"), "GET", &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        collector.spans().len(),
        0,
        "nothing sent before the batch is due"
    );
    a.signal("TERM");
    let status = a.wait_exit(Duration::from_secs(15)).expect("exited");
    assert!(status.success());
    assert_eq!(collector.spans().len(), 3, "flushed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_spans_on_the_console() {
    let app = App::start("app").await;
    let ports = Ports::new();
    let dir = TempDir::new();
    let mut a = Attache::spawn(
        ports,
        dir,
        &[
            "dev",
            "--app",
            &format!("http://{}", app.addr),
            "--listen",
            &format!("127.0.0.1:{}", ports.inbound),
            "--admin",
            &format!("127.0.0.1:{}", ports.admin),
        ],
    );
    a.wait_ready();
    let tp = format!("00-{T}-{P}-01");
    call(&a.url("/hello"), "GET", &[("traceparent", &tp)]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let span = loop {
        let found = a
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["kind"] == "server");
        if let Some(v) = found {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no console span:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(span["trace_id"], T);
    assert_eq!(span["parent_span_id"], P);
    assert_eq!(span["attributes"]["url.path"], "/hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_where_telemetry_settings_came_from() {
    let app = App::start("app").await;
    let ports = Ports::new();
    let a = Attache::run_with_env(
        ports,
        &sidecar_config(ports, app.addr, "  telemetry: { otlp: { timeout: 3s } }\n"),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret"),
        ],
    );
    let doc: serde_json::Value = serde_json::from_str(
        &attache_tests::client::blocking_get(&a.admin_url("/config"))
            .unwrap()
            .1,
    )
    .unwrap();
    let t = &doc["effective"]["telemetry"];
    assert_eq!(t["endpoint"], "http://127.0.0.1:1/v1/traces");
    assert_eq!(t["sources"]["endpoint"], "OTEL_EXPORTER_OTLP_ENDPOINT");
    assert_eq!(t["sources"]["timeout"], "file");
    assert_eq!(t["timeout"], "3000ms");
    assert_eq!(t["headers"]["api-key"], "<redacted>");
    assert_eq!(t["resource"]["service.name"], "e2e");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_requests_nothing() {
    // Accepts connections and reads nothing back: every export waits out its timeout.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled_addr = stalled.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = stalled.accept().await {
            conns.push(c);
        }
    });
    let app = App::start("app").await;
    let ports = Ports::new();
    let extra = format!(
        "  telemetry:
    otlp: {{ endpoint: 'http://{stalled_addr}', timeout: 5s }}
    batch: {{ max_queue_size: 16, max_export_batch_size: 8, scheduled_delay: 50ms }}
"
    );
    let a = Attache::run(ports, &sidecar_config(ports, app.addr, &extra));
    let client = http1();
    let started = Instant::now();
    for _ in 0..100 {
        let t = Instant::now();
        let got = within(5, get(&client, &a.url("/"))).await.unwrap();
        assert_eq!(got.status, 200);
        // Far under the 5 s export timeout: the request did not wait on the stuck export.
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    // 100 requests in a row in less than two export timeouts.
    let total = started.elapsed();
    assert!(
        total < Duration::from_secs(10),
        "100 requests took {total:?}"
    );
    // The export task is stuck on its first batch (at most 8 spans) and the queue holds 16:
    // of 100 spans, at least 76 were dropped as the queue overflowed, and none exported. (A
    // span is recorded when its response body ends, which may be just after the client has
    // read it: the last one's drop may land a moment after the loop.)
    let dropped = || {
        a.metric("attache_spans_dropped_total{reason=\"queue_full\"}")
            .unwrap_or(0.0)
    };
    eventually(5, async || dropped() >= 76.0).await;
    assert!((76.0..=100.0).contains(&dropped()), "{} dropped", dropped());
    a.assert_metrics(&["attache_spans_exported_total 0"]);
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_an_endpoint_starts_exporting() {
    let collector = Collector::start(Protocol::Http).await;
    let app = App::start("app").await;
    let ports = Ports::new();
    let mut a = Attache::run(ports, &sidecar_config(ports, app.addr, ""));
    call(&a.url("/before"), "GET", &[]).await;
    let extra = format!(
        "  telemetry:\n    otlp: {{ endpoint: '{}' }}\n    batch: {{ scheduled_delay: 100ms }}\n",
        collector.endpoint()
    );
    std::fs::write(a.config_path(), sidecar_config(ports, app.addr, &extra)).unwrap();
    a.signal("HUP");
    let ok = attache_tests::eventually(10, async || {
        call(&a.url("/after"), "GET", &[]).await;
        !collector.spans().is_empty()
    })
    .await;
    assert!(ok, "no spans after the reload:\n{}", a.log_text());
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| s.attr("url.path").as_deref() == Some("/after")),
        "spans from before the reload had nowhere to go"
    );
    a.wait_ready();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_collector_url_go_as_basic_auth_and_show_nowhere() {
    let collector = Collector::start(Protocol::Http).await;
    let app = App::start("app").await;
    let ports = Ports::new();
    let endpoint = format!("http://bob:pw-1234@{}", collector.addr);
    let a = Attache::run(
        ports,
        &sidecar_config(
            ports,
            app.addr,
            &format!(
                "  telemetry:\n    otlp: {{ endpoint: '{endpoint}' }}\n    batch: {{ scheduled_delay: 100ms }}\n"
            ),
        ),
    );
    assert_eq!(call(&a.url("/x"), "GET", &[]).await.status, 200);
    collector.wait_spans(1, 10).await;
    // base64("bob:pw-1234")
    assert_eq!(collector.authorizations()[0], "Basic Ym9iOnB3LTEyMzQ=");
    let config = attache_tests::client::blocking_get(&a.admin_url("/config"))
        .unwrap()
        .1;
    assert!(!config.contains("pw-1234"), "{config}");
    assert!(!a.log_text().contains("pw-1234"), "{}", a.log_text());
}
