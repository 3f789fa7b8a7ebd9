//! The decision (spec §3): deny rules, then allow rules, then the default, on the normalized
//! path, for the peer the TLS session verified. Rules marked `dry_run` (or all of them, in
//! dry-run mode) do not decide; they make one complete shadow decision beside the enforced
//! one, and a difference is a mismatch to report.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};

use super::path::PathPattern;
use super::spiffe::{IdPattern, SpiffeId};

/// Who is calling, as the connection knows it: never from a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer<'a> {
    Plaintext,
    /// TLS, without a client certificate.
    Anonymous,
    Svid(&'a SpiffeId),
}

/// What a decision reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub peer: Peer<'a>,
    /// The direct peer's address.
    pub addr: IpAddr,
    pub method: &'a Method,
    /// Normalized (`path::normalize`).
    pub path: &'a str,
    /// Without port.
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// A network the direct peer's address may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Who a rule is about. Fields are ANDed, entries of one field ORed; an empty field matches.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// Any peer, plaintext included (no other field is read).
    pub any: bool,
    /// Any verified SVID.
    pub authenticated: bool,
    pub ids: Vec<IdPattern>,
    pub trust_domains: Vec<String>,
    pub networks: Vec<Network>,
    pub not_ids: Vec<IdPattern>,
    pub not_trust_domains: Vec<String>,
    pub not_networks: Vec<Network>,
}

/// What a rule is about; an empty field matches.
#[derive(Debug, Clone, Default)]
pub struct To {
    pub methods: Vec<Method>,
    pub paths: Vec<PathPattern>,
    pub not_paths: Vec<PathPattern>,
    /// Lower case; `*.domain` matches below the domain.
    pub hosts: Vec<String>,
}

/// A condition on a request header: one of `values`, or merely present (or absent).
#[derive(Debug, Clone)]
pub struct When {
    pub header: HeaderName,
    pub values: Vec<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Arc<str>,
    pub action: Action,
    pub dry_run: bool,
    pub from: Source,
    pub to: To,
    pub when: Vec<When>,
}

/// What applies when no rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Default {
    Deny,
    /// Any verified SVID.
    Authenticated,
    /// SVIDs of this trust domain.
    TrustDomain(String),
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    AllowedByRule,
    DeniedByRule,
    /// The default decided.
    NoRuleMatched,
    /// No rule matched, and the peer has no SVID (where the default is not `allow`).
    Unauthenticated,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AllowedByRule => "allowed_by_rule",
            Reason::DeniedByRule => "denied_by_rule",
            Reason::NoRuleMatched => "no_rule_matched",
            Reason::Unauthenticated => "unauthenticated",
        }
    }
}

/// One decision: allowed or not, the rule that decided (its index in the policy: the first
/// in file order among those that matched), and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    pub rule: Option<usize>,
    pub reason: Reason,
}

/// The enforced decision, and the shadow one when a dry run is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub enforced: Verdict,
    pub shadow: Option<Verdict>,
}

impl Decision {
    /// The shadow decision differs from the enforced one.
    pub fn mismatch(&self) -> bool {
        self.shadow
            .as_ref()
            .is_some_and(|s| s.allow != self.enforced.allow)
    }
}

/// A compiled policy: the rules, with the orders the two decisions visit them in worked out
/// once (a request walks only the rules that can decide it).
#[derive(Debug, Clone)]
pub struct Policy {
    default: Default,
    /// `mode: dry_run`: decide and report, never refuse.
    dry_run: bool,
    rules: Vec<Rule>,
    /// Enforced rules: deny ones, then allow ones, in file order.
    enforced: Order,
    /// Every rule (dry-run ones too), likewise; empty when nothing is in dry run.
    shadow: Order,
    /// A shadow decision is made: the section or a rule is in dry run.
    shadowing: bool,
    /// Some rule matches hosts (else a request's host is not looked up).
    hosts: bool,
}

/// The rules one decision visits, deny rules then allow rules, each in file order; indexed
/// by the first path segment, so that a request walks only the rules that could match its
/// path: those whose every path pattern begins with a literal segment are listed under those
/// segments, the rest (no paths, `/**`, `/*/x`) under every key and in `wild`.
#[derive(Debug, Clone, Default)]
struct Order {
    by_first: HashMap<Box<[u8]>, Vec<usize>, BuildHasherDefault<Fnv>>,
    /// For a path whose first segment no rule names (or that has none).
    wild: Vec<usize>,
}

impl Order {
    /// Over the rules `keep` selects.
    fn new(rules: &[Rule], keep: impl Fn(&Rule) -> bool) -> Self {
        fn firsts(r: &Rule) -> Option<Vec<&str>> {
            if r.to.paths.is_empty() {
                return None;
            }
            r.to.paths.iter().map(PathPattern::first_literal).collect()
        }
        let mut all: Vec<usize> = Vec::new();
        for action in [Action::Deny, Action::Allow] {
            all.extend((0..rules.len()).filter(|&i| rules[i].action == action && keep(&rules[i])));
        }
        let mut keys: Vec<&str> = all
            .iter()
            .filter_map(|&i| firsts(&rules[i]))
            .flatten()
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let under = |key: Option<&str>| -> Vec<usize> {
            all.iter()
                .copied()
                .filter(|&i| match firsts(&rules[i]) {
                    None => true,
                    Some(f) => key.is_some_and(|k| f.contains(&k)),
                })
                .collect()
        };
        Self {
            by_first: keys
                .iter()
                .map(|k| (Box::from(k.as_bytes()), under(Some(k))))
                .collect(),
            wild: under(None),
        }
    }

    /// The rules, in order, that could match `path`.
    fn for_path(&self, path: &str) -> &[usize] {
        super::path::first_segment(path)
            .and_then(|f| self.by_first.get(f))
            .unwrap_or(&self.wild)
    }
}

/// FNV-1a: first segments are a few bytes, and the keys come from the config, not the
/// client (a client chooses only which key it looks up).
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

impl Source {
    fn matches(&self, peer: Peer<'_>, addr: IpAddr) -> bool {
        if self.any {
            return true;
        }
        let id = match peer {
            Peer::Svid(id) => Some(id),
            _ => None,
        };
        let needs_id = self.authenticated
            || !self.ids.is_empty()
            || !self.trust_domains.is_empty()
            || !self.not_ids.is_empty()
            || !self.not_trust_domains.is_empty();
        if needs_id && id.is_none() {
            return false;
        }
        let td = id.map(SpiffeId::trust_domain);
        (self.ids.is_empty() || id.is_some_and(|id| self.ids.iter().any(|p| p.matches(id))))
            && (self.trust_domains.is_empty()
                || td.is_some_and(|td| self.trust_domains.iter().any(|t| t == td)))
            && (self.networks.is_empty() || self.networks.iter().any(|n| n.contains(addr)))
            && !id.is_some_and(|id| self.not_ids.iter().any(|p| p.matches(id)))
            && !td.is_some_and(|td| self.not_trust_domains.iter().any(|t| t == td))
            && !self.not_networks.iter().any(|n| n.contains(addr))
    }
}

impl To {
    fn matches(&self, ask: &Ask<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(ask.method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(ask.path)))
            && !self.not_paths.iter().any(|p| p.matches(ask.path))
            && (self.hosts.is_empty()
                || ask
                    .host
                    .is_some_and(|h| self.hosts.iter().any(|p| crate::codec::host::matches(p, h))))
    }
}

impl When {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let value = headers.get(&self.header);
        if let Some(present) = self.present
            && value.is_some() != present
        {
            return false;
        }
        self.values.is_empty()
            || value
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| self.values.iter().any(|w| w == v))
    }
}

impl Rule {
    pub fn matches(&self, ask: &Ask<'_>) -> bool {
        self.from.matches(ask.peer, ask.addr)
            && self.to.matches(ask)
            && self.when.iter().all(|w| w.matches(ask.headers))
    }

    /// Whether `from`, `to` and `when` each match (what `attache authz explain` shows).
    pub fn parts(&self, ask: &Ask<'_>) -> (bool, bool, bool) {
        (
            self.from.matches(ask.peer, ask.addr),
            self.to.matches(ask),
            self.when.iter().all(|w| w.matches(ask.headers)),
        )
    }
}

impl Policy {
    pub fn new(default: Default, dry_run: bool, rules: Vec<Rule>) -> Self {
        let enforced = Order::new(&rules, |r| !r.dry_run);
        let shadowing = dry_run || rules.iter().any(|r| r.dry_run);
        let shadow = if shadowing {
            Order::new(&rules, |_| true)
        } else {
            Order::default()
        };
        let hosts = rules.iter().any(|r| !r.to.hosts.is_empty());
        Self {
            default,
            dry_run,
            rules,
            enforced,
            shadow,
            shadowing,
            hosts,
        }
    }

    /// Whether a decision reads the request's host (`Ask::host` may be `None` otherwise).
    pub fn reads_hosts(&self) -> bool {
        self.hosts
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_decision(&self) -> &Default {
        &self.default
    }

    /// The whole section is in dry run (`mode: dry_run`).
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether a shadow decision is made (a rule or the whole section in dry run).
    pub fn shadows(&self) -> bool {
        self.shadowing
    }

    /// The name of the rule a verdict names.
    pub fn rule_name(&self, v: &Verdict) -> Option<&str> {
        v.rule.and_then(|i| self.rules.get(i)).map(|r| &*r.name)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.rules.iter().position(|r| &*r.name == name)
    }

    /// The decision for `ask`.
    pub fn decide(&self, ask: &Ask<'_>) -> Decision {
        if self.dry_run {
            return Decision {
                enforced: Verdict {
                    allow: true,
                    rule: None,
                    reason: Reason::NoRuleMatched,
                },
                shadow: Some(self.verdict(ask, &self.shadow)),
            };
        }
        Decision {
            enforced: self.verdict(ask, &self.enforced),
            shadow: self.shadowing.then(|| self.verdict(ask, &self.shadow)),
        }
    }

    /// The first rule of `order` that matches, else the default.
    fn verdict(&self, ask: &Ask<'_>, order: &Order) -> Verdict {
        for &i in order.for_path(ask.path) {
            let Some(r) = self.rules.get(i) else { continue };
            if r.matches(ask) {
                let allow = r.action == Action::Allow;
                return Verdict {
                    allow,
                    rule: Some(i),
                    reason: if allow {
                        Reason::AllowedByRule
                    } else {
                        Reason::DeniedByRule
                    },
                };
            }
        }
        let (allow, reason) = match (&self.default, ask.peer) {
            (Default::Allow, _) => (true, Reason::NoRuleMatched),
            // A peer without an SVID that no rule admitted: it is told apart from a known peer
            // without a rule, so "which rule denied me?" reads "you presented no identity".
            (Default::Deny, Peer::Svid(_)) => (false, Reason::NoRuleMatched),
            (Default::Authenticated, Peer::Svid(_)) => (true, Reason::NoRuleMatched),
            (Default::TrustDomain(td), Peer::Svid(id)) if id.trust_domain() == td => {
                (true, Reason::NoRuleMatched)
            }
            (Default::TrustDomain(_), Peer::Svid(_)) => (false, Reason::NoRuleMatched),
            (_, _) => (false, Reason::Unauthenticated),
        };
        Verdict {
            allow,
            rule: None,
            reason,
        }
    }
}

#[cfg(test)]
mod tests;
