//! attache's layers inside a Rust service, with no proxy: a small HTTP service whose handler
//! sees what an app behind attache sees (a continued trace, a request id, flag decisions in
//! `x-flags`, Idempotency-Key enforced), and whose `/metrics` shows attache's metrics.
//!
//! ```sh
//! cargo run -p attache-filters --example in_process -- 127.0.0.1:8080            # memory store
//! cargo run -p attache-filters --example in_process -- 127.0.0.1:8080 redis://127.0.0.1:6379
//! curl -s localhost:8080/checkout -H 'x-user-id: u1' -H 'x-plan: pro'
//! curl -s -XPOST localhost:8080/orders -H 'Idempotency-Key: k1' -d '{}'   # twice: one order
//! ```
//!
//! Spans go to an OTLP/HTTP collector when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names one.
//! The handler answers with a JSON echo of what it received and how many orders it created.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use attache_filters::flags::context::Source;

use attache_filters::flags::request::FlagsLayer;
use attache_filters::flags::store::FlagStore;
use attache_filters::idempotency::redis_store::RedisStore;
use attache_filters::idempotency::store::{MemoryStore, Store};
use attache_filters::idempotency::{IdempotencyLayer, RoutePolicy};
use attache_filters::telemetry::export::{ExportSettings, Exporter, Protocol};
use attache_filters::telemetry::span::SpanSettings;
use attache_filters::trace_context::propagate::{PropagationLayer, Settings};
use attache_filters::{Body, full};
use attache_filters::{
    metrics::{Direction, Metrics},
    telemetry::ObserveLayer,
};
use http::{HeaderName, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;

const FLAGS: &str = r#"{"flags": {
  "new-checkout": {"state": "ENABLED", "defaultVariant": "off",
    "variants": {"on": true, "off": false},
    "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on", "off"]}},
  "theme": {"state": "ENABLED", "defaultVariant": "light",
    "variants": {"light": "light", "dark": "dark"}}
}}"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let store: Arc<dyn Store> = match args.next() {
        Some(url) => Arc::new(RedisStore::new(
            &url,
            "example:idem:",
            Duration::from_millis(500),
        )?),
        None => Arc::new(MemoryStore::new(10_000)),
    };

    // One registry for every layer, served at /metrics.
    let metrics = Arc::new(Metrics::new());
    let mut observe = ObserveLayer::new(metrics.clone(), Direction::Inbound);
    if let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        let settings = ExportSettings::otlp(endpoint.parse()?, Protocol::HttpProtobuf)
            .service_name("in-process-example")
            .scheduled_delay(Duration::from_millis(200));
        let exporter = Exporter::start(settings, metrics.clone());
        observe = observe.spans(exporter.sink.clone(), SpanSettings::default());
    }
    let trace = PropagationLayer::new(Settings::default().request_id("x-request-id"))
        .with_metrics(metrics.clone(), Direction::Inbound);
    let flags = FlagsLayer::builder(FlagStore::from_document(&serde_json::from_str(FLAGS)?)?)
        .targeting_key(Source::Header(HeaderName::from_static("x-user-id")))
        .attribute(Source::Header(HeaderName::from_static("x-plan")), "plan")
        .deliver_all()
        .combined_header("x-flags")
        .metrics(metrics.clone())
        .build();
    let idempotency = IdempotencyLayer::builder(store)
        // Replicas sharing Redis must share the secret; a fixed one keeps the example simple.
        .secret(b"in-process example secret".to_vec())
        .route(RoutePolicy::new("orders").path_prefix("/orders"))
        .metrics(metrics.clone())
        .build();

    let orders = Arc::new(AtomicU64::new(0));
    let app = tower::service_fn(move |req: Request<Body>| {
        let (metrics, orders) = (metrics.clone(), orders.clone());
        async move { Ok::<_, Infallible>(handle(req, &metrics, &orders)) }
    });
    let svc = ServiceBuilder::new()
        .layer(observe)
        .layer(trace)
        .layer(flags)
        .layer(idempotency)
        .service(app);

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let svc = svc.clone();
        tokio::spawn(async move {
            let svc = TowerToHyperService::new(tower::util::MapRequest::new(svc, boxed_request));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// hyper's request body, boxed as the layers take it.
fn boxed_request(req: Request<hyper::body::Incoming>) -> Request<Body> {
    req.map(attache_filters::boxed)
}

/// The service's own handler: `/metrics`, `POST /orders` (creates an order), and an echo of
/// what reached it for anything else.
fn handle(req: Request<Body>, metrics: &Metrics, orders: &AtomicU64) -> Response<Body> {
    if req.uri().path() == "/metrics" {
        return Response::new(full(metrics.encode()));
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let created = if req.method() == http::Method::POST && req.uri().path() == "/orders" {
        Some(orders.fetch_add(1, Ordering::SeqCst) + 1)
    } else {
        None
    };
    let echo = serde_json::json!({
        "traceparent": header("traceparent"),
        "request_id": header("x-request-id"),
        "flags": header("x-flags").and_then(|f| serde_json::from_str::<serde_json::Value>(&f).ok()),
        "baggage": header("baggage"),
        "order": created,
    });
    let mut res = Response::new(full(echo.to_string()));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}
