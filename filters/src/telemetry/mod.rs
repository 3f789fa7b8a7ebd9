//! Telemetry: what attache tells operators about the traffic it carries. The observe layer sits
//! outermost in both request flows, so it sees every response, including the ones attache makes
//! up itself.
//!
//! - [`families`]: its metric families (requests, client errors, span and log drops);
//! - [`observe`]: the per-request layer that records metrics, spans and the access log;
//! - [`span`]: the SERVER and CLIENT spans and their attributes;
//! - [`export`]: the bounded span queue and the OTLP exporter task; [`otlp`]: spans encoded
//!   straight into OTLP protobuf; `transport.rs`: the collector's HTTP or gRPC client and what
//!   its answers mean;
//! - [`access_log`]: JSON access log lines, written off the request path.

pub mod access_log;
pub mod builder;
pub mod export;
mod export_settings;
pub mod families;
pub mod observe;
pub mod otlp;
pub mod span;
mod transport;

pub use observe::ObserveLayer;
