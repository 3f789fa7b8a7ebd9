//! attache-filters as a library: `filters/examples/in_process.rs`, a Rust service with
//! attache's layers stacked in-process (no proxy, no config crate), run as a real process and
//! talked to over real sockets, with a real Redis and the test OTLP collector.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use attache_tests::client::exchange;
use attache_tests::metrics;
use attache_tests::otlp::{Collector, Protocol};
use attache_tests::redis::Redis;

/// The example serving on a free port; killed when dropped.
struct Example {
    child: Child,
    addr: String,
}

impl Example {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(attache_tests::filters_example("in_process"))
            .arg("127.0.0.1:0")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the example");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the example's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn the_layers_in_a_service_continue_the_trace_deliver_flags_and_export_spans() {
    let collector = Collector::start(Protocol::Http).await;
    let endpoint = format!("{}/v1/traces", collector.endpoint());
    let ex = Example::start(&[], &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint)]);

    let got = exchange(
        "GET",
        &ex.url("/checkout"),
        &[
            ("traceparent", TP),
            ("x-user-id", "u1"),
            ("x-plan", "pro"),
            // A client's forged decisions never reach the handler.
            ("x-flags", r#"{"new-checkout":{"value":"forged"}}"#),
            ("baggage", "flag.theme=dark"),
        ],
        "",
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = got.json();
    let tp = seen["traceparent"].as_str().expect("a traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert_ne!(tp, TP, "the service's own span is the parent now");
    assert_eq!(seen["request_id"].as_str().map(str::len), Some(36));
    assert_eq!(seen["flags"]["new-checkout"]["value"], true);
    assert_eq!(seen["flags"]["theme"]["value"], "light");
    let baggage = seen["baggage"].as_str().expect("baggage");
    assert!(baggage.contains("flag.theme=light"), "{baggage}");
    assert!(!baggage.contains("dark"), "{baggage}");

    // Another plan, another decision.
    let got = exchange("GET", &ex.url("/"), &[("x-plan", "free")], "").await;
    assert_eq!(got.json()["flags"]["new-checkout"]["value"], false);

    // The SERVER span of the first request reaches the collector, in the caller's trace.
    let spans = collector.wait_spans(2, 10).await;
    let server = spans
        .iter()
        .find(|s| s.trace_id() == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the continued trace's span");
    assert_eq!(server.parent_id(), "00f067aa0ba902b7");
    assert_eq!(server.span_id(), tp[36..52]);

    // Counted in the service's own registry, as the request arrived (not when its response
    // ended, which could race this scrape): the first request's continued trace, and the
    // two requests without a context (the second, and this scrape).
    let metrics = exchange("GET", &ex.url("/metrics"), &[], "").await.text();
    for sample in [
        "attache_trace_context_total{direction=\"inbound\",format=\"tracecontext\",result=\"continued\"} 1",
        "attache_trace_context_total{direction=\"inbound\",format=\"tracecontext\",result=\"absent\"} 2",
    ] {
        assert!(metrics::has(&metrics, sample), "{sample}\n{metrics}");
    }
}

#[tokio::test]
async fn replicas_sharing_redis_run_a_keyed_request_once() {
    let redis = Redis::start();
    let url = redis.url();
    let a = Example::start(&[&url], &[]);
    let b = Example::start(&[&url], &[]);
    let post = |ex: &Example, key: &str| {
        let (url, key) = (ex.url("/orders"), key.to_owned());
        async move { exchange("POST", &url, &[("idempotency-key", &key)], "{}").await }
    };

    let first = post(&a, "order-1").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["order"], 1);
    // The retry lands on the other replica: replayed from Redis, not run again there.
    let retry = post(&b, "order-1").await;
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.body, first.body);
    // b's own first order is its first: the retry never reached its handler.
    let other = post(&b, "order-2").await;
    assert_eq!(other.json()["order"], 1);
    assert!(other.headers.get("idempotent-replayed").is_none());

    // A key reused with another body is refused (422).
    let reused = exchange(
        "POST",
        &a.url("/orders"),
        &[("idempotency-key", "order-1")],
        r#"{"other":true}"#,
    )
    .await;
    assert_eq!(reused.status, 422);
}
