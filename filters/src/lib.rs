//! attache's request filters. Each concern is a module holding a tower `Layer`, its `Service`
//! and its future; none of them knows about sockets or listeners, so an app can also stack them
//! in-process. The proxy crate fixes their order (see `proxy/src/inbound.rs`).
//!
//! - [`errors`]: the one mapping from any proxy error to an RFC 9457 problem+json response.
//! - [`telemetry`]: request metrics, spans, OTLP export and the access log.
//! - [`trace_context`]: trace and request context propagation.
//! - [`idempotency`]: Idempotency-Key enforcement.

#![forbid(unsafe_code)]

pub mod codec;
pub mod errors;
pub mod facts;
pub mod flags;
pub mod idempotency;
pub mod log_throttle;
pub mod metrics;
pub mod otel;
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
