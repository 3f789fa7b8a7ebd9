//! Authorization's metric families. Labels are the decision, the rule's name (bounded by the
//! config), the reason and whether the peer had an SVID: never a peer's ID, whose number
//! nothing bounds.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::policy::{Policy, Reason, Verdict};
use crate::metrics::Families;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The rule that decided; empty when the default did.
    pub rule: String,
    pub reason: &'static str,
    /// `true` when the peer presented a valid SVID.
    pub authenticated: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MismatchLabels {
    /// What was enforced, and what the shadow decision said.
    pub enforced: &'static str,
    pub shadow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `encoded_separator`, `malformed_percent` or `not_absolute`.
    pub reason: &'static str,
}

pub struct AuthzFamilies {
    pub decisions: Family<DecisionLabels, Counter>,
    pub dry_run: Family<DecisionLabels, Counter>,
    pub mismatches: Family<MismatchLabels, Counter>,
    pub paths_refused: Family<RefusedLabels, Counter>,
    pub tunnels_closed: Counter,
}

impl Families for AuthzFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            decisions: Family::default(),
            dry_run: Family::default(),
            mismatches: Family::default(),
            paths_refused: Family::default(),
            tunnels_closed: Counter::default(),
        };
        registry.register(
            "authz_decisions",
            "Inbound requests authorized, by decision (allow, deny), the rule that decided (empty for the default), reason and whether the peer had an SVID",
            f.decisions.clone(),
        );
        registry.register(
            "authz_dry_run_decisions",
            "Shadow decisions of dry-run rules (or of the whole policy in dry-run mode), which are reported and never enforced",
            f.dry_run.clone(),
        );
        registry.register(
            "authz_dry_run_mismatches",
            "Requests whose shadow decision differed from the enforced one",
            f.mismatches.clone(),
        );
        registry.register(
            "authz_paths_refused",
            "Requests refused with 400 for a path authorization cannot judge (an encoded /, \\ or NUL; a bare %)",
            f.paths_refused.clone(),
        );
        registry.register(
            "authz_tunnels_closed",
            "Upgraded connections (WebSocket) closed because a reloaded policy no longer allows them",
            f.tunnels_closed.clone(),
        );
        f
    }
}

const REASONS: usize = 4;

fn reason_index(r: Reason) -> usize {
    match r {
        Reason::AllowedByRule => 0,
        Reason::DeniedByRule => 1,
        Reason::NoRuleMatched => 2,
        Reason::Unauthenticated => 3,
    }
}

/// One policy's counters, each made the first time it counts: counting is then an index and
/// an atomic add, with no label built or hashed on the request path.
pub struct Counters {
    families: std::sync::Arc<AuthzFamilies>,
    names: Vec<String>,
    /// By (rule or default, reason, decision, authenticated).
    decisions: Vec<OnceLock<Counter>>,
    dry_run: Vec<OnceLock<Counter>>,
    /// By (enforced allow, shadow allow).
    mismatches: [OnceLock<Counter>; 4],
}

impl Counters {
    pub fn new(families: std::sync::Arc<AuthzFamilies>, policy: &Policy) -> Self {
        let names: Vec<String> = policy.rules().iter().map(|r| r.name.to_string()).collect();
        let slots = (names.len() + 1) * REASONS * 4;
        Self {
            families,
            decisions: (0..slots).map(|_| OnceLock::new()).collect(),
            dry_run: (0..slots).map(|_| OnceLock::new()).collect(),
            names,
            mismatches: Default::default(),
        }
    }

    fn slot(&self, v: &Verdict, authenticated: bool) -> usize {
        let rule = v.rule.unwrap_or(self.names.len());
        ((rule * REASONS + reason_index(v.reason)) * 2 + usize::from(v.allow)) * 2
            + usize::from(authenticated)
    }

    fn labels(&self, v: &Verdict, authenticated: bool) -> DecisionLabels {
        DecisionLabels {
            decision: if v.allow { "allow" } else { "deny" },
            rule: v
                .rule
                .and_then(|i| self.names.get(i))
                .cloned()
                .unwrap_or_default(),
            reason: v.reason.as_str(),
            authenticated: if authenticated { "true" } else { "false" },
        }
    }

    pub fn decided(&self, v: &Verdict, authenticated: bool) {
        if let Some(c) = self.decisions.get(self.slot(v, authenticated)) {
            c.get_or_init(|| {
                self.families
                    .decisions
                    .get_or_create(&self.labels(v, authenticated))
                    .clone()
            })
            .inc();
        }
    }

    pub fn shadowed(&self, v: &Verdict, authenticated: bool, enforced: bool) {
        if let Some(c) = self.dry_run.get(self.slot(v, authenticated)) {
            c.get_or_init(|| {
                self.families
                    .dry_run
                    .get_or_create(&self.labels(v, authenticated))
                    .clone()
            })
            .inc();
        }
        if v.allow != enforced {
            let i = usize::from(enforced) * 2 + usize::from(v.allow);
            let word = |allow: bool| if allow { "allow" } else { "deny" };
            self.mismatches[i]
                .get_or_init(|| {
                    self.families
                        .mismatches
                        .get_or_create(&MismatchLabels {
                            enforced: word(enforced),
                            shadow: word(v.allow),
                        })
                        .clone()
                })
                .inc();
        }
    }

    pub fn path_refused(&self, reason: &'static str) {
        self.families
            .paths_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }
}
