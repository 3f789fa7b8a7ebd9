//! The trace-context step's metric families: what each request carried, what was dropped, and
//! the restoration table.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::restore::Eviction;
use crate::metrics::{Direction, Families, ReasonLabels, ResultLabels};

/// In [`super::Format`] order.
const TRACE_FORMATS: [&str; 4] = ["tracecontext", "b3", "b3multi", "jaeger"];
const TRACE_RESULTS: [&str; 3] = ["continued", "invalid", "absent"];

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

pub struct TraceFamilies {
    pub trace_context: Family<TraceLabels, Counter>,
    pub trace_dropped: Family<DroppedLabels, Counter>,
    /// Every trace-context label set, pre-created: [direction][format][result].
    pub(super) trace_handles: Vec<Counter>,
    /// [tracestate invalid, tracestate over_limit, baggage invalid, baggage_member over_limit].
    pub(super) dropped_handles: [Counter; 4],
    pub trace_restore: Family<ResultLabels, Counter>,
    /// [hit, miss, no_context, single_in_flight, ambiguous]
    pub(super) restore_handles: [Counter; 5],
    pub restore_entries: Gauge,
    pub restore_bytes: Gauge,
    pub restore_evictions: Family<ReasonLabels, Counter>,
}

impl Families for TraceFamilies {
    fn register(registry: &mut Registry) -> Self {
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
        let trace_restore = Family::<ResultLabels, Counter>::default();
        let restore_handles =
            ["hit", "miss", "no_context", "single_in_flight", "ambiguous"].map(|result| {
                trace_restore
                    .get_or_create(&ResultLabels { result })
                    .clone()
            });
        let f = Self {
            trace_context,
            trace_dropped,
            trace_handles,
            dropped_handles,
            trace_restore,
            restore_handles,
            restore_entries: Gauge::default(),
            restore_bytes: Gauge::default(),
            restore_evictions: Family::default(),
        };
        registry.register(
            "trace_context",
            "Incoming trace contexts, by direction, format and result (continued, invalid, absent)",
            f.trace_context.clone(),
        );
        registry.register(
            "trace_dropped",
            "Trace headers or members dropped, by what and reason (invalid, over_limit)",
            f.trace_dropped.clone(),
        );
        registry.register(
            "trace_restore",
            "Outbound calls looked up in the restoration table, by result",
            f.trace_restore.clone(),
        );
        registry.register(
            "trace_restore_entries",
            "Traces held in the restoration table",
            f.restore_entries.clone(),
        );
        registry.register(
            "trace_restore_bytes",
            "Bytes held in the restoration table",
            f.restore_bytes.clone(),
        );
        registry.register(
            "trace_restore_evictions",
            "Restoration entries evicted, by reason (ttl, entries, bytes)",
            f.restore_evictions.clone(),
        );
        f
    }
}

impl TraceFamilies {
    /// Sets the restoration table gauges.
    pub fn restore_usage(&self, entries: usize, bytes: usize) {
        self.restore_entries.set(entries as i64);
        self.restore_bytes.set(bytes as i64);
    }

    pub fn restore_evicted(&self, reason: Eviction) {
        let reason = match reason {
            Eviction::Ttl => "ttl",
            Eviction::Entries => "entries",
            Eviction::Bytes => "bytes",
        };
        self.restore_evictions
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A baggage member dropped because it would pass the limits.
    pub fn baggage_member_dropped(&self) {
        self.dropped_handles[3].inc();
    }
}
