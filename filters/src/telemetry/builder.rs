//! Builder-style settings for span export, for services that stack attache's layers
//! in-process: OTLP over HTTP/protobuf or gRPC with the OpenTelemetry SDK's defaults, or spans
//! printed to stderr.
//!
//! ```no_run
//! # async fn run() {
//! use std::sync::Arc;
//! use attache_filters::{metrics::{Direction, Metrics}, telemetry::ObserveLayer};
//! use attache_filters::telemetry::export::{ExportSettings, Exporter, Protocol};
//! use attache_filters::telemetry::span::SpanSettings;
//!
//! let metrics = Arc::new(Metrics::new());
//! let settings = ExportSettings::otlp("http://127.0.0.1:4318/v1/traces".parse().unwrap(), Protocol::HttpProtobuf)
//!     .service_name("checkout");
//! // Inside a tokio runtime: the export task runs on it.
//! let exporter = Exporter::start(settings, metrics.clone());
//! let observe = ObserveLayer::new(metrics, Direction::Inbound)
//!     .spans(exporter.sink.clone(), SpanSettings::default());
//! # let _ = observe;
//! # }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::export::{ExportSettings, Protocol};

impl ExportSettings {
    /// Spans to the collector at `endpoint` (for HTTP, the whole URL, `/v1/traces` included),
    /// with the SDK's batch defaults: a 2048-span queue, batches of 512 every 5 s, a 10 s
    /// timeout, no compression.
    pub fn otlp(endpoint: Uri, protocol: Protocol) -> Self {
        Self {
            endpoint: Some(endpoint),
            protocol,
            console: false,
            ..Self::console_only()
        }
    }

    /// Spans printed to stderr as JSON lines, sent nowhere.
    pub fn console_only() -> Self {
        Self {
            endpoint: None,
            protocol: Protocol::HttpProtobuf,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            gzip: false,
            max_queue_size: 2048,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_secs(5),
            error_log_interval: Duration::from_secs(60),
            console: true,
            resource: BTreeMap::new(),
        }
    }

    /// Also print every span on stderr.
    pub fn print_spans(mut self, on: bool) -> Self {
        self.console = on || self.endpoint.is_none();
        self
    }

    /// The resource's `service.name`.
    pub fn service_name(self, name: &str) -> Self {
        self.resource_attribute("service.name", name)
    }

    /// One resource attribute (`deployment.environment.name`, ...).
    pub fn resource_attribute(mut self, key: &str, value: &str) -> Self {
        self.resource.insert(key.to_owned(), value.to_owned());
        self
    }

    /// A header sent with every export (an API key, say).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// gzip export bodies.
    pub fn gzip(mut self, on: bool) -> Self {
        self.gzip = on;
        self
    }

    /// Send a batch at least this often.
    pub fn scheduled_delay(mut self, delay: Duration) -> Self {
        self.scheduled_delay = delay;
        self
    }
}
