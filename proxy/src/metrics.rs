//! The proxy's own metric families: client connections, calls to the app and upstreams, and
//! config reloads. Every family of every concern is registered at startup ([`register_all`]),
//! so `/metrics` shows them all from the first scrape.

use std::sync::Arc;

use attache_filters::flags::metrics::FlagFamilies;
use attache_filters::idempotency::metrics::IdempotencyFamilies;
use attache_filters::metrics::{Direction, DirectionLabels, Families, Metrics, ResultLabels};
use attache_filters::telemetry::families::{ExportFamilies, HttpFamilies};
use attache_filters::trace_context::metrics::TraceFamilies;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    /// `host:port` of an endpoint of the app or an upstream: bounded by the config.
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub direction: Direction,
    /// A configured upstream name (`app` for the inbound app): bounded by the config.
    pub upstream: String,
    /// `connect`, `timeout`, `reset`, `protocol`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    /// A configured upstream name: bounded by the config.
    pub upstream: String,
    /// What the retried try met: `connect`, `timeout`, `reset`, or `status`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// A configured upstream name: bounded by the config.
    pub upstream: String,
}

pub struct ProxyFamilies {
    pub open_connections: Family<DirectionLabels, Gauge>,
    pub connections: Family<DirectionLabels, Counter>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// Connections attache opened to each endpoint: with keep-alive working, this grows with
    /// concurrency, not with requests.
    pub upstream_connections: Family<EndpointLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub upstream_retries: Family<RetryLabels, Counter>,
    /// Retries the budget did not allow (the failed try was answered as it was).
    pub retry_budget_exhausted: Family<UpstreamLabels, Counter>,
    pub ejections: Family<EjectionLabels, Counter>,
    /// TLS handshakes with upstreams that failed, by reason.
    pub tls_failures: Family<TlsFailureLabels, Counter>,
    /// Connections to each endpoint open now.
    pub upstream_open_connections: Family<EndpointLabels, Gauge>,
    /// Tries at each endpoint of a named upstream, by status class (`error` without one).
    pub upstream_requests: Family<UpstreamStatusLabels, Counter>,
    /// Time to the response head of each try at an endpoint of a named upstream.
    pub upstream_duration: Family<EjectionLabels, Histogram, fn() -> Histogram>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TlsFailureLabels {
    pub upstream: String,
    /// `expired`, `not_yet_valid`, `name_mismatch`, `unknown_issuer`, `bad_certificate`,
    /// `protocol`, `other`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamStatusLabels {
    pub upstream: String,
    pub endpoint: String,
    /// `1xx` to `5xx`, or `error` when no response came.
    pub status_class: &'static str,
}

fn upstream_duration_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// One endpoint's request metrics, resolved once when its target is built, so that a try
/// costs two atomic adds and a bucket search, no label lookup.
#[derive(Clone)]
pub struct EndpointMeters {
    /// By status class: 1xx, 2xx, 3xx, 4xx, 5xx, and no response.
    pub requests: [Counter; 6],
    pub duration: Histogram,
}

impl EndpointMeters {
    pub fn new(families: &ProxyFamilies, upstream: &str, endpoint: &str) -> Self {
        let class = |status_class| {
            families
                .upstream_requests
                .get_or_create(&UpstreamStatusLabels {
                    upstream: upstream.to_owned(),
                    endpoint: endpoint.to_owned(),
                    status_class,
                })
                .clone()
        };
        Self {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx", "error"].map(class),
            duration: families
                .upstream_duration
                .get_or_create(&EjectionLabels {
                    upstream: upstream.to_owned(),
                    endpoint: endpoint.to_owned(),
                })
                .clone(),
        }
    }

    /// Counts a try that got `status` (`None`: no response) after `elapsed`.
    pub fn record(&self, status: Option<u16>, elapsed: std::time::Duration) {
        let i = match status {
            Some(s @ 100..=599) => usize::from(s / 100 - 1),
            _ => 5,
        };
        self.requests[i].inc();
        if status.is_some() {
            self.duration.observe(elapsed.as_secs_f64());
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EjectionLabels {
    /// A configured upstream name and one of its endpoints: bounded by the config.
    pub upstream: String,
    pub endpoint: String,
}

impl Families for ProxyFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            open_connections: Family::default(),
            connections: Family::default(),
            upstream_errors: Family::default(),
            upstream_connections: Family::default(),
            config_reloads: Family::default(),
            upstream_retries: Family::default(),
            retry_budget_exhausted: Family::default(),
            ejections: Family::default(),
            tls_failures: Family::default(),
            upstream_open_connections: Family::default(),
            upstream_requests: Family::default(),
            upstream_duration: Family::new_with_constructor(
                upstream_duration_histogram as fn() -> Histogram,
            ),
        };
        registry.register(
            "open_connections",
            "Client connections currently open",
            f.open_connections.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            f.connections.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed calls to the app or an upstream, by kind",
            f.upstream_errors.clone(),
        );
        registry.register(
            "upstream_connections_opened",
            "Connections opened to each endpoint of the app and the upstreams (keep-alive reuses them)",
            f.upstream_connections.clone(),
        );
        registry.register(
            "upstream_retries",
            "Calls to an upstream tried again, by what the failed try met",
            f.upstream_retries.clone(),
        );
        registry.register(
            "upstream_retry_budget_exhausted",
            "Retries the upstream's retry budget did not allow",
            f.retry_budget_exhausted.clone(),
        );
        registry.register(
            "upstream_ejections",
            "Endpoints taken out of the balance after consecutive failures",
            f.ejections.clone(),
        );
        registry.register(
            "upstream_tls_failures",
            "TLS handshakes with an upstream that failed, by reason",
            f.tls_failures.clone(),
        );
        registry.register(
            "upstream_open_connections",
            "Connections to each endpoint of the app and the upstreams open now",
            f.upstream_open_connections.clone(),
        );
        registry.register(
            "upstream_requests",
            "Tries at each endpoint of a named upstream, by status class (error: no response)",
            f.upstream_requests.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Time to the response head of each try at an endpoint of a named upstream",
            f.upstream_duration.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (success, failure)",
            f.config_reloads.clone(),
        );
        f
    }
}

impl ProxyFamilies {
    pub fn upstream_error(&self, direction: Direction, upstream: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                direction,
                upstream: upstream.to_owned(),
                kind,
            })
            .inc();
    }

    /// Counts a connection as open until the returned guard drops.
    pub fn connection_opened(self: &Arc<Self>, direction: Direction) -> ConnectionGuard {
        let labels = DirectionLabels { direction };
        self.connections.get_or_create(&labels).inc();
        self.open_connections.get_or_create(&labels).inc();
        ConnectionGuard {
            families: self.clone(),
            labels,
        }
    }

    pub fn upstream_retry(&self, upstream: &str, reason: &'static str) {
        self.upstream_retries
            .get_or_create(&RetryLabels {
                upstream: upstream.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn retry_budget_exhausted(&self, upstream: &str) {
        self.retry_budget_exhausted
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .inc();
    }

    pub fn ejection(&self, upstream: &str, endpoint: &str) {
        self.ejections
            .get_or_create(&EjectionLabels {
                upstream: upstream.to_owned(),
                endpoint: endpoint.to_owned(),
            })
            .inc();
    }

    pub fn tls_failure(&self, upstream: &str, reason: &'static str) {
        self.tls_failures
            .get_or_create(&TlsFailureLabels {
                upstream: upstream.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn config_reload(&self, result: &'static str) {
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

/// Decrements the open-connections gauge when dropped.
pub struct ConnectionGuard {
    families: Arc<ProxyFamilies>,
    labels: DirectionLabels,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.families
            .open_connections
            .get_or_create(&self.labels)
            .dec();
    }
}

/// Registers every concern's families, in the order `/metrics` lists them.
pub fn register_all(metrics: &Metrics) {
    metrics.family::<HttpFamilies>();
    metrics.family::<ProxyFamilies>();
    metrics.family::<TraceFamilies>();
    metrics.family::<IdempotencyFamilies>();
    metrics.family::<ExportFamilies>();
    metrics.family::<FlagFamilies>();
    metrics.family::<attache_filters::ratelimit::metrics::RateLimitFamilies>();
    metrics.family::<attache_filters::context::metrics::ContextFamilies>();
    metrics.family::<crate::tls::metrics::TlsFamilies>();
    metrics.family::<crate::forward_proxy::metrics::ForwardProxyFamilies>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_gauge_follows_guards() {
        let metrics = Metrics::new();
        register_all(&metrics);
        let proxy = metrics.family::<ProxyFamilies>();
        let a = proxy.connection_opened(Direction::Outbound);
        let _b = proxy.connection_opened(Direction::Outbound);
        drop(a);
        let text = metrics.encode();
        assert!(
            text.lines()
                .any(|l| l == "attache_open_connections{direction=\"outbound\"} 1"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "attache_connections_total{direction=\"outbound\"} 2"),
            "{text}"
        );
        // The trace-context step's counters exist from the start (zero), registered by
        // `register_all` before any request.
        assert!(
            text.lines().any(|l| l
                == "attache_trace_context_total{direction=\"inbound\",format=\"b3\",result=\"invalid\"} 0"),
            "{text}"
        );
    }
}
