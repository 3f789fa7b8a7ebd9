//! The flags step's metric families (specs/feature-flags.md §11): evaluations, errors, decisions
//! reused from peers, and the flag sources' loads.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::Families;

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

impl Families for FlagFamilies {
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
}

impl FlagFamilies {
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
