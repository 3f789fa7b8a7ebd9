//! The rate-limit step's metric families, per limit (limit names are bounded by the config).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::Families;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub limit: String,
    /// `allowed` or `limited`.
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    pub limit: String,
    /// `timeout` or `unavailable`.
    pub error: &'static str,
    /// What the limit did about it: `allowed` (fail open) or `denied`.
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// `ok`, `error` or `timeout`.
    pub result: &'static str,
}

pub struct RateLimitFamilies {
    pub decisions: Family<DecisionLabels, Counter>,
    pub overflow: Family<LimitLabels, Counter>,
    pub keys: Family<LimitLabels, Gauge>,
    pub store_errors: Family<StoreErrorLabels, Counter>,
    pub store: Family<StoreLabels, Histogram, fn() -> Histogram>,
}

/// 0.1 ms to about 1.6 s: a shared check is one Redis round trip.
fn store_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 15,
    ))
}

impl Families for RateLimitFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            decisions: Family::default(),
            overflow: Family::default(),
            keys: Family::default(),
            store_errors: Family::default(),
            store: Family::new_with_constructor(store_histogram as fn() -> Histogram),
        };
        registry.register(
            "ratelimit_decisions",
            "Requests a rate limit checked, by limit and decision (allowed, limited)",
            f.decisions.clone(),
        );
        registry.register(
            "ratelimit_overflow",
            "Checks of new keys a limit had no room to track (past its max_keys), made in its shared overflow bucket",
            f.overflow.clone(),
        );
        registry.register(
            "ratelimit_keys",
            "Keys a local limit tracks, as of its last sweep of idle keys",
            f.keys.clone(),
        );
        registry.register(
            "ratelimit_store_errors",
            "Shared checks that failed, by limit, error (timeout, unavailable) and action (allowed: fail open, denied)",
            f.store_errors.clone(),
        );
        registry.register(
            "ratelimit_store_duration_seconds",
            "Shared rate-limit checks (one Redis round trip each), by result (ok, error, timeout)",
            f.store.clone(),
        );
        f
    }
}

/// One limit's counters, resolved once when the step is built so that a check counts with
/// one atomic add and no label lookup.
#[derive(Clone)]
pub struct LimitCounters {
    pub allowed: Counter,
    pub limited: Counter,
}

impl RateLimitFamilies {
    pub fn counters(&self, limit: &str) -> LimitCounters {
        let decision = |decision| {
            self.decisions
                .get_or_create(&DecisionLabels {
                    limit: limit.to_owned(),
                    decision,
                })
                .clone()
        };
        LimitCounters {
            allowed: decision("allowed"),
            limited: decision("limited"),
        }
    }

    pub fn overflow(&self, limit: &str) -> Counter {
        self.overflow
            .get_or_create(&LimitLabels {
                limit: limit.to_owned(),
            })
            .clone()
    }

    pub fn keys(&self, limit: &str) -> Gauge {
        self.keys
            .get_or_create(&LimitLabels {
                limit: limit.to_owned(),
            })
            .clone()
    }

    pub fn store_error(&self, limit: &str, error: &'static str, action: &'static str) {
        self.store_errors
            .get_or_create(&StoreErrorLabels {
                limit: limit.to_owned(),
                error,
                action,
            })
            .inc();
    }

    pub fn store_op(&self, result: &'static str, took: Duration) {
        self.store
            .get_or_create(&StoreLabels { result })
            .observe(took.as_secs_f64());
    }
}
