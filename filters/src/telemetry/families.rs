//! The observe layer's metric families: requests and their duration, client errors, and what
//! became of spans and access-log lines.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::{Direction, Families, MethodLabel, ReasonLabels, ResultLabels, StatusClass};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub direction: Direction,
    pub method: MethodLabel,
    pub status_class: StatusClass,
}

/// Request counter and histogram handles for one label set.
type HttpHandles = (Counter, Histogram);

/// Requests handled, their duration, and the requests refused as the client's fault.
pub struct HttpFamilies {
    /// Handles for every HTTP label set (2 directions × 11 methods × 6 status classes),
    /// filled on first use: recording a request is then an index, not a hashed lookup.
    handles: Box<[OnceLock<HttpHandles>]>,
    pub requests: Family<HttpLabels, Counter>,
    pub duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    pub client_errors: Family<ResultLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Families for HttpFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            handles: (0..2 * 11 * 6).map(|_| OnceLock::new()).collect(),
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            client_errors: Family::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests handled, by direction, method and status class",
            f.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to the end of the response body",
            f.duration.clone(),
        );
        registry.register(
            "client_errors",
            "Client connections or requests refused: header_timeout, headers_too_large, body_too_large, malformed_head, bad_host",
            f.client_errors.clone(),
        );
        f
    }
}

impl HttpFamilies {
    pub(crate) fn handles(&self, labels: &HttpLabels) -> &HttpHandles {
        let d = match labels.direction {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        };
        let i = (d * 11 + labels.method.0 as usize) * 6 + labels.status_class.0 as usize;
        self.handles[i].get_or_init(|| {
            (
                self.requests.get_or_create(labels).clone(),
                self.duration.get_or_create(labels).clone(),
            )
        })
    }

    pub fn client_error(&self, result: &'static str) {
        self.client_errors
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

/// Spans exported and dropped, access-log lines dropped.
pub struct ExportFamilies {
    pub spans_exported: Counter,
    pub spans_dropped: Family<ReasonLabels, Counter>,
    pub access_log_dropped: Counter,
}

impl Families for ExportFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            spans_exported: Counter::default(),
            spans_dropped: Family::default(),
            access_log_dropped: Counter::default(),
        };
        registry.register(
            "spans_exported",
            "Spans accepted by the OTLP collector",
            f.spans_exported.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans not exported, by reason (queue_full, export_failed, rejected, shutdown)",
            f.spans_dropped.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the output could not keep up or failed (closed)",
            f.access_log_dropped.clone(),
        );
        f
    }
}

impl ExportFamilies {
    pub fn spans_dropped(&self, reason: &'static str, n: u64) {
        self.spans_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }
}
