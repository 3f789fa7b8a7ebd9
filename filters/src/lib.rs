//! attache's request filters, as a library. Each concern is a module holding a tower `Layer`,
//! its `Service` and its future; none of them knows about sockets, listeners or attache's config
//! crate, so a Rust service can stack them in-process (in a hyper or axum server), and the
//! attache proxy builds its stacks from the same layers (`proxy/src/stack.rs` fixes their
//! order there).
//!
//! ```no_run
//! # use std::{convert::Infallible, sync::Arc};
//! use attache_filters::flags::{context::Source, request::FlagsLayer, store::FlagStore};
//! use attache_filters::idempotency::{IdempotencyLayer, RoutePolicy, store::MemoryStore};
//! use attache_filters::metrics::{Direction, Metrics};
//! use attache_filters::telemetry::ObserveLayer;
//! use attache_filters::trace_context::propagate::{PropagationLayer, Settings};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let doc = serde_json::json!({"flags": {}});
//! # let app = tower::service_fn(|_req: http::Request<attache_filters::Body>| async {
//! #     Ok::<_, Infallible>(http::Response::new(attache_filters::empty()))
//! # });
//! let metrics = Arc::new(Metrics::new());
//! let svc = ServiceBuilder::new()
//!     .layer(ObserveLayer::new(metrics.clone(), Direction::Inbound))
//!     .layer(PropagationLayer::new(Settings::default().request_id("x-request-id")))
//!     .layer(
//!         FlagsLayer::builder(FlagStore::from_document(&doc)?)
//!             .targeting_key(Source::Header(http::HeaderName::from_static("x-user-id")))
//!             .deliver_all()
//!             .metrics(metrics.clone())
//!             .build(),
//!     )
//!     .layer(
//!         IdempotencyLayer::builder(Arc::new(MemoryStore::new(10_000)))
//!             .route(RoutePolicy::new("default"))
//!             .metrics(metrics.clone())
//!             .build(),
//!     )
//!     .service(app);
//! # let _ = svc;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/in_process.rs` is a whole service built this way.
//!
//! - [`trace_context`]: W3C / B3 / Jaeger codecs and propagation, with builder-style
//!   [`Settings`](trace_context::propagate::Settings); [`otel`]: the same codecs as an
//!   OpenTelemetry `TextMapPropagator`.
//! - [`flags`]: flagd-format feature flags evaluated per request and delivered as headers and
//!   baggage ([`FlagsLayer::builder`](flags::request::FlagsLayer::builder)), and OFREP.
//! - [`idempotency`]: Idempotency-Key enforcement over a memory or Redis store
//!   ([`IdempotencyLayer::builder`](idempotency::IdempotencyLayer::builder)).
//! - [`ratelimit`]: rate limits, local (governor's GCRA over a bounded keyed store) or shared
//!   through Redis ([`RateLimitLayer`](ratelimit::RateLimitLayer)).
//! - [`authz`]: authorization's ground, being built: normalized paths and SPIFFE IDs.
//! - [`telemetry`]: the observe layer (request metrics, spans, access log) and OTLP export.
//! - The ground floor: [`metrics`] (the registry, and the families each concern declares),
//!   [`facts`] (what layers tell the observer), [`errors`] (problem+json responses),
//!   [`codec`] (hex and percent-encoding), [`log_throttle`], [`redis`] (the Redis client
//!   under every Redis-backed concern).

#![forbid(unsafe_code)]

pub mod authz;
pub mod codec;
pub mod context;
pub mod errors;
pub mod facts;
pub mod flags;
pub mod idempotency;
pub mod log_throttle;
pub mod metrics;
pub mod otel;
pub mod ratelimit;
pub mod redis;
pub mod telemetry;
pub mod trace_context;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

/// The error type bodies and services pass around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type at module edges: request and response bodies are boxed once, so the layers
/// between stay free of generic body parameters.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The whole body, or `None` past `limit` bytes.
pub async fn read_limited(mut body: Body, limit: u64) -> Result<Option<Bytes>, BoxError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                return Ok(None);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Some(buf.freeze()))
}

/// Boxes any body whose error converts to [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
