//! Counting evaluations: where they happened (`EvalPath`) and the
//! `attache_flag_evaluations_total` / `attache_flag_evaluation_errors_total` counters of each
//! decision, cached per compiled flag.

use std::borrow::Cow;
use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;

use super::eval::{Decision, ErrorCode, Reason};
use super::metrics::{FlagErrorLabels, FlagEvalLabels, FlagFamilies};

/// Where an evaluation happened, for `attache_flag_evaluations_total{path}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalPath {
    Proxy,
    Route,
    Ofrep,
    OfrepBulk,
}

impl EvalPath {
    const ALL: [EvalPath; 4] = [
        EvalPath::Proxy,
        EvalPath::Route,
        EvalPath::Ofrep,
        EvalPath::OfrepBulk,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EvalPath::Proxy => "proxy",
            EvalPath::Route => "route",
            EvalPath::Ofrep => "ofrep",
            EvalPath::OfrepBulk => "ofrep_bulk",
        }
    }
}

const REASONS: [Reason; 6] = [
    Reason::Static,
    Reason::Default,
    Reason::TargetingMatch,
    Reason::Disabled,
    Reason::Cached,
    Reason::Error,
];

/// Counts one evaluation of `key` (and its error, if any).
pub fn count(metrics: &FlagFamilies, key: &str, d: &Decision<'_>, path: EvalPath) {
    let vi = d.index;
    count_at(metrics, key, d, vi, path);
}

/// [`count`], with the variant's index already known.
pub(super) fn count_at(
    metrics: &FlagFamilies,
    key: &str,
    d: &Decision<'_>,
    vi: Option<usize>,
    path: EvalPath,
) {
    evaluation_counter(metrics, key, d, vi, path).inc();
    if let Some(errors) = error_counter(metrics, key, d) {
        errors.inc();
    }
}

/// The `attache_flag_evaluations_total` counter of a decision: cached per compiled flag,
/// variant, reason and path.
pub(super) fn evaluation_counter<'m>(
    metrics: &FlagFamilies,
    key: &str,
    d: &Decision<'m>,
    vi: Option<usize>,
    path: EvalPath,
) -> Cow<'m, Counter> {
    let labels = || FlagEvalLabels {
        flag: if d.flag.is_some() {
            key.to_owned()
        } else {
            "_unknown".to_owned()
        },
        variant: d.variant.unwrap_or_default().to_owned(),
        reason: d.reason.as_str(),
        path: path.as_str(),
    };
    let Some(flag) = d.flag else {
        return Cow::Owned(metrics.evaluations.get_or_create(&labels()).clone());
    };
    let reason = REASONS.iter().position(|r| *r == d.reason).unwrap_or(0);
    let path_i = EvalPath::ALL.iter().position(|p| *p == path).unwrap_or(0);
    let variant = vi.map_or(0, |i| i + 1);
    let per_variant = REASONS.len() * EvalPath::ALL.len();
    let slots = flag.counters.counters.get_or_init(|| {
        (0..(flag.variants.len() + 1) * per_variant)
            .map(|_| OnceLock::new())
            .collect()
    });
    let slot = variant * per_variant + reason * EvalPath::ALL.len() + path_i;
    match slots.get(slot) {
        Some(c) => {
            Cow::Borrowed(c.get_or_init(|| metrics.evaluations.get_or_create(&labels()).clone()))
        }
        None => Cow::Owned(metrics.evaluations.get_or_create(&labels()).clone()),
    }
}

/// The `attache_flag_errors_total` counter of a decision that is an error.
pub(super) fn error_counter(
    metrics: &FlagFamilies,
    key: &str,
    d: &Decision<'_>,
) -> Option<Counter> {
    let (code, _) = d.error.as_ref()?;
    Some(
        metrics
            .errors
            .get_or_create(&FlagErrorLabels {
                flag: if d.flag.is_some() {
                    key.to_owned()
                } else {
                    "_unknown".to_owned()
                },
                error_type: error_type(*code),
            })
            .clone(),
    )
}

/// The OpenTelemetry `error.type` of an error code: lower case.
pub fn error_type(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::FlagNotFound => "flag_not_found",
        ErrorCode::ParseError => "parse_error",
        ErrorCode::TypeMismatch => "type_mismatch",
        ErrorCode::General => "general",
    }
}
