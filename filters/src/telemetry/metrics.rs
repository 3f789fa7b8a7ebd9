//! Prometheus metrics. [`Metrics`] owns the registry and every metric family attache exports
//! (served as text at the admin port's `/metrics`); the observe layer (`observe.rs`) counts
//! requests and times them until their response body ends, fails or is dropped.
//!
//! Label values are bounded: direction, a known method or `_OTHER`, and a status class.
//! Never paths, hosts or ids.

use std::fmt::Write as _;
use std::sync::Arc;

use http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which way a request travels through attache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the network to the app (the sidecar role).
    Inbound,
    /// From the app to an upstream (the ambassador role).
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        e.write_str(self.as_str())
    }
}

/// In `crate::trace_context::Format` order.
const TRACE_FORMATS: [&str; 4] = ["tracecontext", "b3", "b3multi", "jaeger"];
const TRACE_RESULTS: [&str; 3] = ["continued", "invalid", "absent"];

const METHODS: [&str; 11] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
    "_OTHER",
];

/// A request method as a bounded label: the RFC 9110 methods, PATCH and QUERY, else `_OTHER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodLabel(u8);

impl MethodLabel {
    pub fn of(m: &Method) -> Self {
        let i = METHODS[..10]
            .iter()
            .position(|k| *k == m.as_str())
            .unwrap_or(10);
        Self(i as u8)
    }

    pub fn as_str(self) -> &'static str {
        METHODS[self.0 as usize]
    }
}

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        e.write_str(self.as_str())
    }
}

/// `1xx` … `5xx`, or `none` when no response was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusClass(u8);

impl StatusClass {
    pub const NONE: Self = Self(0);
    pub fn of(status: u16) -> Self {
        Self((status / 100).clamp(1, 5) as u8)
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
        match self.0 {
            0 => e.write_str("none"),
            n => write!(e, "{n}xx"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub direction: Direction,
    pub method: MethodLabel,
    pub status_class: StatusClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

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
    /// `connect`, `timeout`, `reset`, `protocol`, `body_too_large`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TraceLabels {
    pub direction: Direction,
    /// `tracecontext`, `b3`, `b3multi` or `jaeger`.
    pub format: &'static str,
    /// `continued`, `invalid` or `absent`.
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DroppedLabels {
    /// `tracestate`, `baggage` or `baggage_member`.
    pub what: &'static str,
    /// `invalid` or `over_limit`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Request counter and histogram handles for one label set.
type HttpHandles = (Counter, Histogram);

/// Every metric attache exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Handles for every HTTP label set (2 directions × 11 methods × 6 status classes),
    /// filled on first use: recording a request is then an index, not a hashed lookup.
    http: Box<[std::sync::OnceLock<HttpHandles>]>,
    pub requests: Family<HttpLabels, Counter>,
    pub duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    pub open_connections: Family<DirectionLabels, Gauge>,
    pub connections: Family<DirectionLabels, Counter>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// Connections attache opened to each endpoint: with keep-alive working, this grows with
    /// concurrency, not with requests.
    pub upstream_connections: Family<EndpointLabels, Counter>,
    pub client_errors: Family<ResultLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub trace_context: Family<TraceLabels, Counter>,
    pub trace_dropped: Family<DroppedLabels, Counter>,
    /// Every trace-context label set, pre-created: [direction][format][result].
    trace_handles: Vec<Counter>,
    /// [tracestate invalid, tracestate over_limit, baggage invalid, baggage_member over_limit].
    dropped_handles: [Counter; 4],
    pub trace_restore: Family<ResultLabels, Counter>,
    /// [hit, miss, no_context, single_in_flight, ambiguous]
    restore_handles: [Counter; 5],
    pub restore_entries: Gauge,
    pub restore_bytes: Gauge,
    pub restore_evictions: Family<ReasonLabels, Counter>,
    pub spans_exported: Counter,
    pub spans_dropped: Family<ReasonLabels, Counter>,
    pub access_log_dropped: Counter,
    pub idempotency_outcomes: Family<RouteOutcomeLabels, Counter>,
    pub idempotency_store: Family<StoreOpLabels, Histogram, fn() -> Histogram>,
    pub flags: FlagFamilies,
}

/// Feature-flag metrics (specs/feature-flags.md §11). Flag keys not in the snapshot are
/// labelled `_unknown`, and variants come from the snapshot, so labels stay bounded.
pub struct FlagFamilies {
    pub evaluations: Family<FlagEvalLabels, Counter>,
    pub errors: Family<FlagErrorLabels, Counter>,
    pub reused: Family<FlagLabels, Counter>,
    pub skew: Family<FlagLabels, Counter>,
    pub source_loads: Family<SourceResultLabels, Counter>,
    pub source_valid: Family<SourceLabels, Gauge>,
    pub source_last_success: Family<SourceLabels, Gauge>,
}

impl FlagFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            evaluations: Family::default(),
            errors: Family::default(),
            reused: Family::default(),
            skew: Family::default(),
            source_loads: Family::default(),
            source_valid: Family::default(),
            source_last_success: Family::default(),
        };
        registry.register(
            "flag_evaluations",
            "Flag evaluations by flag, variant, reason and path (proxy, route, ofrep, ofrep_bulk)",
            f.evaluations.clone(),
        );
        registry.register(
            "flag_evaluation_errors",
            "Flag evaluations that ended in an error, by flag and error type",
            f.errors.clone(),
        );
        registry.register(
            "flag_decisions_reused",
            "Decisions taken from a trusted peer's baggage instead of evaluated",
            f.reused.clone(),
        );
        registry.register(
            "flag_decision_skew",
            "Peer decisions naming a flag or variant unknown here, evaluated again",
            f.skew.clone(),
        );
        registry.register(
            "flag_source_loads",
            "Flag source loads by source and result (ok, unchanged, invalid, unreachable)",
            f.source_loads.clone(),
        );
        registry.register(
            "flag_source_valid",
            "1 when the source's last load succeeded, 0 when it failed",
            f.source_valid.clone(),
        );
        registry.register(
            "flag_source_last_success_seconds",
            "Unix time of the source's last successful load",
            f.source_last_success.clone(),
        );
        f
    }

    /// Counts a source load (`ok`, `unchanged`, `invalid`, `unreachable`) and updates the
    /// source's gauges.
    pub fn source_load(&self, source: &str, result: &'static str) {
        self.source_loads
            .get_or_create(&SourceResultLabels {
                source: source.to_owned(),
                result,
            })
            .inc();
        let labels = SourceLabels {
            source: source.to_owned(),
        };
        let ok = matches!(result, "ok" | "unchanged");
        self.source_valid.get_or_create(&labels).set(i64::from(ok));
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.source_last_success
                .get_or_create(&labels)
                .set(i64::try_from(now).unwrap_or(i64::MAX));
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlagEvalLabels {
    pub flag: String,
    pub variant: String,
    pub reason: &'static str,
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlagErrorLabels {
    pub flag: String,
    pub error_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlagLabels {
    pub flag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceResultLabels {
    pub source: String,
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `ttl`, `entries` or `bytes`.
    pub reason: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("attache");
        let requests = Family::<HttpLabels, Counter>::default();
        let duration = Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let open_connections = Family::<DirectionLabels, Gauge>::default();
        let connections = Family::<DirectionLabels, Counter>::default();
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let upstream_connections = Family::<EndpointLabels, Counter>::default();
        let client_errors = Family::<ResultLabels, Counter>::default();
        let config_reloads = Family::<ResultLabels, Counter>::default();
        let trace_context = Family::<TraceLabels, Counter>::default();
        let trace_dropped = Family::<DroppedLabels, Counter>::default();
        let mut trace_handles = Vec::with_capacity(2 * 4 * 3);
        for direction in [Direction::Inbound, Direction::Outbound] {
            for format in TRACE_FORMATS {
                for result in TRACE_RESULTS {
                    let labels = TraceLabels {
                        direction,
                        format,
                        result,
                    };
                    trace_handles.push(trace_context.get_or_create(&labels).clone());
                }
            }
        }
        let dropped = |what, reason| {
            trace_dropped
                .get_or_create(&DroppedLabels { what, reason })
                .clone()
        };
        let dropped_handles = [
            dropped("tracestate", "invalid"),
            dropped("tracestate", "over_limit"),
            dropped("baggage", "invalid"),
            dropped("baggage_member", "over_limit"),
        ];
        registry.register(
            "http_requests",
            "HTTP requests handled, by direction, method and status class",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to the end of the response body",
            duration.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections currently open",
            open_connections.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            connections.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed calls to the app or an upstream, by kind",
            upstream_errors.clone(),
        );
        registry.register(
            "upstream_connections_opened",
            "Connections opened to each endpoint of the app and the upstreams (keep-alive reuses them)",
            upstream_connections.clone(),
        );
        registry.register(
            "client_errors",
            "Client connections or requests refused: header_timeout, headers_too_large, body_too_large, malformed_head, bad_host",
            client_errors.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (success, failure)",
            config_reloads.clone(),
        );
        registry.register(
            "trace_context",
            "Incoming trace contexts, by direction, format and result (continued, invalid, absent)",
            trace_context.clone(),
        );
        registry.register(
            "trace_dropped",
            "Trace headers or members dropped, by what and reason (invalid, over_limit)",
            trace_dropped.clone(),
        );
        let trace_restore = Family::<ResultLabels, Counter>::default();
        let restore_handles =
            ["hit", "miss", "no_context", "single_in_flight", "ambiguous"].map(|result| {
                trace_restore
                    .get_or_create(&ResultLabels { result })
                    .clone()
            });
        let restore_entries = Gauge::default();
        let restore_bytes = Gauge::default();
        let restore_evictions = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "trace_restore",
            "Outbound calls looked up in the restoration table, by result",
            trace_restore.clone(),
        );
        registry.register(
            "trace_restore_entries",
            "Traces held in the restoration table",
            restore_entries.clone(),
        );
        registry.register(
            "trace_restore_bytes",
            "Bytes held in the restoration table",
            restore_bytes.clone(),
        );
        registry.register(
            "trace_restore_evictions",
            "Restoration entries evicted, by reason (ttl, entries, bytes)",
            restore_evictions.clone(),
        );
        let spans_exported = Counter::default();
        let spans_dropped = Family::<ReasonLabels, Counter>::default();
        let access_log_dropped = Counter::default();
        let idempotency_outcomes = Family::<RouteOutcomeLabels, Counter>::default();
        registry.register(
            "idempotency_outcomes",
            "Idempotency-Key outcomes by route and outcome (claimed, completed, replayed, conflict_409, mismatch_422, released, tombstoned, indeterminate, store_error, lost_lease, passed_through, rejected, failed_open)",
            idempotency_outcomes.clone(),
        );
        registry.register(
            "spans_exported",
            "Spans accepted by the OTLP collector",
            spans_exported.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans not exported, by reason (queue_full, export_failed, rejected, shutdown)",
            spans_dropped.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the output could not keep up or failed (closed)",
            access_log_dropped.clone(),
        );
        let idempotency_store =
            Family::<StoreOpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                store_histogram as fn() -> Histogram,
            );
        registry.register(
            "idempotency_store_duration_seconds",
            "Idempotency store operations, by op (claim, complete, release, renew) and result (ok, error, timeout, lost_lease)",
            idempotency_store.clone(),
        );
        let flags = FlagFamilies::register(&mut registry);
        Self {
            flags,
            idempotency_store,
            idempotency_outcomes,
            spans_exported,
            spans_dropped,
            access_log_dropped,
            trace_restore,
            restore_handles,
            restore_entries,
            restore_bytes,
            restore_evictions,
            trace_context,
            trace_dropped,
            trace_handles,
            dropped_handles,
            registry,
            http: (0..2 * 11 * 6)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            requests,
            duration,
            open_connections,
            connections,
            upstream_errors,
            upstream_connections,
            client_errors,
            config_reloads,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn http_handles(&self, labels: &HttpLabels) -> &HttpHandles {
        let d = match labels.direction {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        };
        let i = (d * 11 + labels.method.0 as usize) * 6 + labels.status_class.0 as usize;
        self.http[i].get_or_init(|| {
            (
                self.requests.get_or_create(labels).clone(),
                self.duration.get_or_create(labels).clone(),
            )
        })
    }

    /// Counts what the trace-context step found on one request.
    pub fn record_trace(
        &self,
        direction: Direction,
        ctx: &crate::trace_context::propagate::TraceCtx,
    ) {
        use crate::trace_context::Outcome;
        let d = match direction {
            Direction::Inbound => 0,
            Direction::Outbound => 1,
        };
        for (format, outcome) in ctx.outcomes.iter().enumerate() {
            let r = match outcome {
                Some(Outcome::Valid) => 0,
                Some(Outcome::Invalid) => 1,
                Some(Outcome::Absent) => 2,
                None => continue,
            };
            self.trace_handles[(d * 4 + format) * 3 + r].inc();
        }
        if ctx.dropped_tracestate {
            self.dropped_handles[0].inc();
        }
        if ctx.tracestate_members_dropped > 0 {
            self.dropped_handles[1].inc();
        }
        if ctx.dropped_baggage {
            self.dropped_handles[2].inc();
        }
        if ctx.baggage_members_dropped > 0 {
            self.dropped_handles[3].inc_by(ctx.baggage_members_dropped as u64);
        }
        use crate::trace_context::propagate::Restored;
        match ctx.restored {
            Some(Restored::Hit) => self.restore_handles[0].inc(),
            Some(Restored::Miss) => self.restore_handles[1].inc(),
            Some(Restored::NoContext) => self.restore_handles[2].inc(),
            Some(Restored::SingleInFlight) => self.restore_handles[3].inc(),
            Some(Restored::Ambiguous) => self.restore_handles[4].inc(),
            None => 0,
        };
    }

    /// Sets the restoration table gauges.
    pub fn restore_usage(&self, entries: usize, bytes: usize) {
        self.restore_entries.set(entries as i64);
        self.restore_bytes.set(bytes as i64);
    }

    pub fn restore_evicted(&self, reason: crate::trace_context::restore::Eviction) {
        use crate::trace_context::restore::Eviction;
        let reason = match reason {
            Eviction::Ttl => "ttl",
            Eviction::Entries => "entries",
            Eviction::Bytes => "bytes",
        };
        self.restore_evictions
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts an idempotency outcome on a configured route (route names are bounded by the
    /// config).
    pub fn idempotency_outcome(&self, route: &str, outcome: &'static str) {
        self.idempotency_outcomes
            .get_or_create(&RouteOutcomeLabels {
                route: route.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn idempotency_store(
        &self,
        op: &'static str,
        result: &'static str,
        took: std::time::Duration,
    ) {
        self.idempotency_store
            .get_or_create(&StoreOpLabels { op, result })
            .observe(took.as_secs_f64());
    }

    /// A baggage member dropped because it would pass the limits.
    pub fn baggage_member_dropped(&self) {
        self.dropped_handles[3].inc();
    }

    pub fn spans_dropped(&self, reason: &'static str, n: u64) {
        self.spans_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }

    pub fn upstream_error(&self, direction: Direction, upstream: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                direction,
                upstream: upstream.to_owned(),
                kind,
            })
            .inc();
    }

    pub fn client_error(&self, result: &'static str) {
        self.client_errors
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a connection as open until the returned guard drops.
    pub fn connection_opened(self: &Arc<Self>, direction: Direction) -> ConnectionGuard {
        let labels = DirectionLabels { direction };
        self.connections.get_or_create(&labels).inc();
        self.open_connections.get_or_create(&labels).inc();
        ConnectionGuard {
            metrics: self.clone(),
            labels,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    pub op: &'static str,
    pub result: &'static str,
}

/// 0.1 ms to about 1.6 s: Redis round trips on a local network sit at the low end.
fn store_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 15,
    ))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOutcomeLabels {
    pub route: String,
    pub outcome: &'static str,
}

/// Decrements the open-connections gauge when dropped.
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    labels: DirectionLabels,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics
            .open_connections
            .get_or_create(&self.labels)
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_gauge_follows_guards() {
        let metrics = Arc::new(Metrics::new());
        let a = metrics.connection_opened(Direction::Outbound);
        let _b = metrics.connection_opened(Direction::Outbound);
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
    }
}
