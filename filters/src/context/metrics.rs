//! The Context API's metric families: calls by operation and outcome. Context names are never
//! labels (they are unbounded); they go on spans.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::error::ContextError;
use crate::metrics::Families;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `counter_add`, `map_patch`, `set_update`, `context_list`, ...
    pub operation: &'static str,
    /// `ok`, `replayed`, or the refusal (`not_found`, `precondition_failed`, ...).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CurrentLabels {
    /// `resolved`, or why not: `no_trace`, `no_request`, `no_member`, `invalid`,
    /// `not_allowed`, `off` (no restoration table).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// `delivered`, `retried` or `dead`.
    pub result: &'static str,
}

pub struct ContextFamilies {
    pub operations: Family<OperationLabels, Counter>,
    pub current: Family<CurrentLabels, Counter>,
    pub push: Family<PushLabels, Counter>,
}

impl Families for ContextFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            operations: Family::default(),
            current: Family::default(),
            push: Family::default(),
        };
        registry.register(
            "context_operations",
            "Context API calls, by operation and outcome (ok, replayed, not_found, type_mismatch, precondition_failed, out_of_bounds, too_large, invalid, not_allowed, key_reused, unavailable)",
            f.operations.clone(),
        );
        registry.register(
            "context_current",
            "Calls naming the _current context, by result (resolved, or no_trace, no_request, no_member, invalid, not_allowed, off): a name that fails validation or allow is ignored and counted here",
            f.current.clone(),
        );
        registry.register(
            "context_push",
            "Queue messages attache delivered to the app (spec.context.push), by result (delivered, retried, dead)",
            f.push.clone(),
        );
        f
    }
}

impl ContextFamilies {
    pub fn pushed(&self, result: &'static str) {
        self.push.get_or_create(&PushLabels { result }).inc();
    }

    pub fn count(&self, operation: &'static str, outcome: &'static str) {
        self.operations
            .get_or_create(&OperationLabels { operation, outcome })
            .inc();
    }
}

/// The outcome label of a refusal.
pub fn outcome_of(e: &ContextError) -> &'static str {
    match e {
        ContextError::InvalidName(_) | ContextError::InvalidRequest(_) => "invalid",
        ContextError::NotAllowed(_) => "not_allowed",
        ContextError::NotFound(_) => "not_found",
        ContextError::TypeMismatch { .. } => "type_mismatch",
        ContextError::PreconditionFailed { .. } => "precondition_failed",
        ContextError::OutOfBounds { .. } => "out_of_bounds",
        ContextError::TooLarge { .. } | ContextError::TooMany { .. } => "too_large",
        ContextError::KeyReused => "key_reused",
        ContextError::LockHeld(..) => "lock_held",
        ContextError::LeaseLost(_) => "lease_lost",
        ContextError::StaleFence { .. } => "stale_fence",
        ContextError::MethodNotAllowed(_) => "invalid",
        ContextError::NoCurrentContext(_) => "no_current_context",
        ContextError::NotImplemented(_) => "not_implemented",
        ContextError::Batch { error, .. } => outcome_of(error),
        ContextError::Unavailable(_) => "unavailable",
    }
}
