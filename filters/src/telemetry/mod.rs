//! Telemetry: what attache tells operators about the traffic it carries. Sits third in the
//! request flow, around everything below it, so it sees every response including the ones
//! attache makes up itself.
//!
//! - [`metrics`]: the Prometheus registry and the per-request metrics layer.

pub mod metrics;

pub use metrics::{Direction, Metrics, MetricsLayer};
