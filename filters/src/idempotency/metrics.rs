//! The idempotency step's metric families: outcomes by route, and store operations timed.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::Families;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreOpLabels {
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOutcomeLabels {
    pub route: String,
    pub outcome: &'static str,
}

/// 0.1 ms to about 1.6 s: Redis round trips on a local network sit at the low end.
fn store_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 15,
    ))
}

pub struct IdempotencyFamilies {
    pub outcomes: Family<RouteOutcomeLabels, Counter>,
    pub store: Family<StoreOpLabels, Histogram, fn() -> Histogram>,
}

impl Families for IdempotencyFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            outcomes: Family::default(),
            store: Family::new_with_constructor(store_histogram as fn() -> Histogram),
        };
        registry.register(
            "idempotency_outcomes",
            "Idempotency-Key outcomes by route and outcome (claimed, completed, replayed, conflict_409, mismatch_422, released, tombstoned, indeterminate, store_error, lost_lease, passed_through, rejected, failed_open)",
            f.outcomes.clone(),
        );
        registry.register(
            "idempotency_store_duration_seconds",
            "Idempotency store operations, by op (claim, complete, release, renew) and result (ok, error, timeout, lost_lease)",
            f.store.clone(),
        );
        f
    }
}

impl IdempotencyFamilies {
    /// Counts an outcome on a configured route (route names are bounded by the config).
    pub fn outcome(&self, route: &str, outcome: &'static str) {
        self.outcomes
            .get_or_create(&RouteOutcomeLabels {
                route: route.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn store_op(&self, op: &'static str, result: &'static str, took: Duration) {
        self.store
            .get_or_create(&StoreOpLabels { op, result })
            .observe(took.as_secs_f64());
    }
}
