//! Trace-context propagation through the real binary (`specs/trace-context.md` §3–§4, §12).

use attache_tests::client::{get, http1, send};
use attache_tests::{App, Attache, Ports, sidecar_config, within};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const P: &str = "00f067aa0ba902b7";

/// `00-{trace}-{span}-{flags}` → (trace, span, flags).
fn split(tp: &str) -> (String, String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// A sidecar in front of `app` with an ambassador port to `payments` and the given
/// `trace.restore` settings (YAML flow mapping contents).
fn with_payments(ports: Ports, app: &App, payments: &App, restore: &str) -> Attache {
    let extra = format!(
        "  outbound: [ {{ listen: '127.0.0.1:{}', upstream: payments }} ]
  upstreams: {{ payments: {{ endpoints: ['http://{}'] }} }}
  trace:
    restore: {{ {restore} }}
",
        ports.outbound, payments.addr
    );
    Attache::run(ports, &sidecar_config(ports, app.addr, &extra))
}

async fn seen_by_app(url: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let got = within(
        10,
        send(&http1(), req.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(got.status, 200);
    for h in ["traceparent", "tracestate", "b3", "baggage"] {
        assert!(
            !got.headers.contains_key(h),
            "responses gain no trace header ({h})"
        );
    }
    got.json()["headers"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_continues_the_callers_trace_with_attache_as_parent() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    let tp = format!("00-{T}-{P}-01");
    let h = seen_by_app(
        &a.url("/"),
        &[
            ("traceparent", &tp),
            ("tracestate", "rojo=1,congo=2"),
            ("baggage", "u=7,p=1"),
        ],
    )
    .await;
    let (trace, span, flags) = split(h["traceparent"].as_str().unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (T, "01"));
    assert_ne!(
        span, P,
        "the app's parent is attache's span, not the caller's"
    );
    assert_eq!(h["tracestate"], "rojo=1,congo=2");
    assert_eq!(h["baggage"], "u=7,p=1");
    let rid = h["x-request-id"].as_str().unwrap();
    assert_eq!((rid.len(), &rid[14..15]), (36, "4"), "a UUID v4: {rid}");

    // No context: a new trace, sampled, random flag set; each request its own.
    let h1 = seen_by_app(&a.url("/"), &[]).await;
    let h2 = seen_by_app(&a.url("/"), &[]).await;
    let (t1, _, f1) = split(h1["traceparent"].as_str().unwrap());
    let (t2, _, _) = split(h2["traceparent"].as_str().unwrap());
    assert_eq!(f1, "03");
    assert_ne!(t1, t2);
    assert_ne!(h1["x-request-id"], h2["x-request-id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_b3_caller_and_a_w3c_app_understand_each_other() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "");
    let h = seen_by_app(&a.url("/"), &[("b3", &format!("{T}-{P}-1"))]).await;
    let (trace, span, flags) = split(h["traceparent"].as_str().unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (T, "01"));
    assert_eq!(
        h["b3"],
        format!("{T}-{span}-1"),
        "mirrored with the same parent"
    );
    // Malformed headers never fail the request: a new trace instead.
    let h = seen_by_app(
        &a.url("/"),
        &[("traceparent", "00-nonsense"), ("baggage", "k v=1")],
    )
    .await;
    assert!(
        h.get("baggage").is_none(),
        "invalid baggage is dropped whole"
    );
    assert_ne!(split(h["traceparent"].as_str().unwrap()).0, T);

    a.assert_metrics(&[
        "attache_trace_context_total{direction=\"inbound\",format=\"b3\",result=\"continued\"} 1",
        "attache_trace_context_total{direction=\"inbound\",format=\"tracecontext\",result=\"absent\"} 1",
        "attache_trace_context_total{direction=\"inbound\",format=\"tracecontext\",result=\"invalid\"} 1",
        "attache_trace_dropped_total{what=\"baggage\",reason=\"invalid\"} 1",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_are_children_of_what_the_app_sends() {
    let upstream = App::start("payments").await;
    let ports = Ports::new();
    let config = format!(
        "apiVersion: attache.dev/v1
kind: Sidecar
spec:
  outbound:
    - listen: '127.0.0.1:{out}'
      upstream: payments
      trace: {{ inject: [tracecontext, b3multi, baggage] }}   # this listener only
  upstreams: {{ payments: {{ endpoints: ['http://{up}'] }} }}
  admin: {{ listen: '127.0.0.1:{admin}' }}
",
        out = ports.outbound,
        up = upstream.addr,
        admin = ports.admin
    );
    let _a = Attache::run(ports, &config);
    let url = format!("http://127.0.0.1:{}/charge", ports.outbound);
    let app_span = "1111111111111111";
    let tp = format!("00-{T}-{app_span}-01");
    let mut children = Vec::new();
    for _ in 0..3 {
        let h = seen_by_app(&url, &[("traceparent", &tp)]).await;
        let (trace, span, _) = split(h["traceparent"].as_str().unwrap());
        assert_eq!(trace, T);
        assert_ne!(span, app_span);
        assert_eq!(
            h["x-b3-spanid"], span,
            "case 24: b3multi carries the CLIENT span"
        );
        assert_eq!(h["x-b3-traceid"], T);
        assert!(
            h.get("x-request-id").is_none(),
            "request ids are generated inbound only"
        );
        children.push(span);
    }
    children.sort();
    children.dedup();
    assert_eq!(
        children.len(),
        3,
        "case 25: N calls carry N distinct parent-ids"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_tracing_leaves_headers_untouched() {
    let app = App::start("app").await;
    let a = Attache::sidecar(app.addr, "  trace: { enabled: false }\n");
    let tp = format!("00-{T}-{P}-01");
    let h = seen_by_app(&a.url("/"), &[("traceparent", &tp), ("baggage", "k v=1")]).await;
    assert_eq!(h["traceparent"], tp);
    assert_eq!(h["baggage"], "k v=1");
    assert!(h.get("x-request-id").is_none());
    let plain = within(10, get(&http1(), &a.url("/"))).await.unwrap().json();
    assert!(plain["headers"].get("traceparent").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_baggage_map_into_each_other() {
    let app = App::start("app").await;
    let ports = Ports::new();
    let extra = "  trace:
    context:
      to_baggage: [ { header: x-tenant-id, key: tenant } ]
      from_baggage: [ { key: plan, header: x-plan } ]
";
    let a = Attache::run(ports, &sidecar_config(ports, app.addr, extra));
    let h = seen_by_app(
        &a.url("/"),
        &[("x-tenant-id", "acme co"), ("baggage", "plan=gold%20plus")],
    )
    .await;
    assert_eq!(h["baggage"], "plan=gold%20plus,tenant=acme%20co");
    assert_eq!(h["x-plan"], "gold plus");
    assert_eq!(h["x-tenant-id"], "acme co");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoration_carries_context_the_app_did_not_forward() {
    // Cases 27 and 29: the app forwards only traceparent; everything else still arrives.
    let app = App::start("app").await;
    let payments = App::start("payments").await;
    let ports = Ports::new();
    let a = with_payments(
        ports,
        &app,
        &payments,
        "headers: [x-request-id, x-tenant-id]",
    );
    let tp = format!("00-{T}-{P}-01");
    let inbound = seen_by_app(
        &a.url("/checkout"),
        &[
            ("traceparent", &tp),
            ("x-tenant-id", "acme"),
            ("tracestate", "rojo=1"),
            ("baggage", "u=7,p=1"),
        ],
    )
    .await;
    let app_tp = inbound["traceparent"].as_str().unwrap().to_owned();
    let (_, server_span, _) = split(&app_tp);

    // The app's own call: only traceparent.
    let url = format!("http://127.0.0.1:{}/charge", ports.outbound);
    let up = seen_by_app(&url, &[("traceparent", &app_tp)]).await;
    let (trace, client_span, flags) = split(up["traceparent"].as_str().unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (T, "01"));
    assert_ne!(client_span, server_span);
    assert_eq!(
        up["x-request-id"], inbound["x-request-id"],
        "case 29: the same request id upstream"
    );
    assert_eq!(up["x-tenant-id"], "acme");
    assert_eq!(up["tracestate"], "rojo=1");
    assert_eq!(up["baggage"], "u=7,p=1");

    // A call for another trace restores nothing.
    let other = "00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01";
    let up = seen_by_app(&url, &[("traceparent", other)]).await;
    assert!(up.get("x-tenant-id").is_none());

    a.assert_metrics(&[
        "attache_trace_restore_total{result=\"hit\"} 1",
        "attache_trace_restore_total{result=\"miss\"} 1",
        "attache_trace_restore_entries 1",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_in_flight_attributes_calls_that_carry_no_context() {
    // Case 33: an app that forwards nothing and serves one request at a time.
    let app = App::start("app").await;
    let payments = App::start("payments").await;
    let ports = Ports::new();
    let a = with_payments(ports, &app, &payments, "correlation: single_in_flight");
    let out = format!("http://127.0.0.1:{}/charge", ports.outbound);
    let slow = |rid: &'static str| {
        let url = a.url("/slow/1500");
        let tp = format!("00-{T}-{P}-01");
        tokio::spawn(async move {
            let req = Request::get(url)
                .header("traceparent", tp)
                .header("x-request-id", rid)
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(&http1(), req).await
        })
    };

    let first = slow("r-1");
    assert!(attache_tests::eventually(5, async || app.hits() == 1).await);
    let up = seen_by_app(&out, &[]).await;
    let (trace, _, flags) = split(up["traceparent"].as_str().unwrap());
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        (T, "01"),
        "joined the inbound trace"
    );
    assert_eq!(up["x-request-id"], "r-1", "and restored its context");

    let second = slow("r-2");
    assert!(attache_tests::eventually(5, async || app.hits() == 2).await);
    let up = seen_by_app(&out, &[]).await;
    assert_ne!(
        split(up["traceparent"].as_str().unwrap()).0,
        T,
        "two in flight: a new root"
    );
    assert!(up.get("x-request-id").is_none());
    assert_eq!(within(10, first).await.unwrap().unwrap().status, 200);
    assert_eq!(within(10, second).await.unwrap().unwrap().status, 200);

    a.assert_metrics(&[
        "attache_trace_restore_total{result=\"single_in_flight\"} 1",
        "attache_trace_restore_total{result=\"ambiguous\"} 1",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sampler_variables_are_honoured_and_shown() {
    // Case 42 (sampling): OTEL_TRACES_SAMPLER_ARG=0 makes new roots unsampled.
    let app = App::start("app").await;
    let ports = Ports::new();
    let a = attache_tests::Attache::run_with_env(
        ports,
        &sidecar_config(ports, app.addr, ""),
        &[("OTEL_TRACES_SAMPLER_ARG", "0")],
    );
    let h = seen_by_app(&a.url("/"), &[]).await;
    assert_eq!(split(h["traceparent"].as_str().unwrap()).2, "02");
    // A caller's decision is still followed (parent-based).
    let h = seen_by_app(&a.url("/"), &[("traceparent", &format!("00-{T}-{P}-01"))]).await;
    assert_eq!(split(h["traceparent"].as_str().unwrap()).2, "01");
    let (_, body) = attache_tests::client::blocking_get(&a.admin_url("/config")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let s = &v["effective"]["trace_sampling"];
    assert_eq!(
        (s["ratio"].as_f64(), s["source"].as_str()),
        (Some(0.0), Some("OTEL_TRACES_SAMPLER"))
    );

    // A ratio in the file beats the environment.
    let ports = Ports::new();
    let a = attache_tests::Attache::run_with_env(
        ports,
        &sidecar_config(ports, app.addr, "  trace: { sampling: { ratio: 1.0 } }\n"),
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    );
    let h = seen_by_app(&a.url("/"), &[]).await;
    assert_eq!(split(h["traceparent"].as_str().unwrap()).2, "03");
}
