//! `spec.authz`: the shape of the policy. Rule and peer-set names, references to peer sets,
//! methods, header names, `when` conditions that can hold, and the listener it needs. The
//! SPIFFE ID and path-pattern grammars are checked where the policy is compiled (see
//! `crate::authz`).

use crate::authz::{Authz, AuthzDefault, AuthzFrom, AuthzTo};
use crate::error::ConfigError;

/// A rule's or peer set's name: a metric label and a log field.
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(super) fn authz(a: &Authz, spec: &crate::Spec, errors: &mut Vec<ConfigError>) {
    let top = "spec.authz";
    let mut err = |path: String, message: String| errors.push(ConfigError::new(path, message));
    let Some(inbound) = &spec.inbound else {
        err(
            top.into(),
            "authorizes requests on the inbound listener: configure spec.inbound".into(),
        );
        return;
    };
    if a.default == AuthzDefault::TrustDomain && a.trust_domain.is_none() && inbound.tls.is_none() {
        err(
            format!("{top}.default"),
            "trust_domain admits the SVIDs of attache's own trust domain: set spec.authz.trust_domain, or spec.inbound.tls with a certificate holding attache's SPIFFE ID".into(),
        );
    }
    for name in a.peers.keys() {
        if !name_ok(name) || name == "any" || name == "authenticated" {
            err(
                format!("{top}.peers.{name}"),
                "a peer set's name is letters, digits, `-`, `_` and `.`, and not `any` or `authenticated`".into(),
            );
        }
    }
    let peer = |name: &str| a.peers.contains_key(name);
    let known = || {
        let names: Vec<&str> = a.peers.keys().map(String::as_str).collect();
        if names.is_empty() {
            "no peer sets are defined in spec.authz.peers".to_owned()
        } else {
            format!("defined: {}", names.join(", "))
        }
    };
    let mut names = std::collections::HashSet::new();
    for (i, rule) in a.rules.iter().enumerate() {
        let at = format!("{top}.rules[{i}]");
        if !name_ok(&rule.name) {
            err(
                format!("{at}.name"),
                "must be 1 to 64 letters, digits, `-`, `_` and `.`".into(),
            );
        } else if !names.insert(rule.name.as_str()) {
            err(
                format!("{at}.name"),
                format!("another rule is named {:?}", rule.name),
            );
        }
        match &rule.from {
            Some(AuthzFrom::One(s))
                if s != "any"
                    && s != "authenticated"
                    && !s.starts_with("spiffe://")
                    && !peer(s) =>
            {
                err(
                    format!("{at}.from"),
                    format!(
                        "{s:?} is not `any`, `authenticated`, a SPIFFE ID or a peer set ({})",
                        known()
                    ),
                );
            }
            Some(AuthzFrom::List(list)) => {
                if list.is_empty() {
                    err(
                        format!("{at}.from"),
                        "is an empty list, which no peer matches".into(),
                    );
                }
                for (j, s) in list.iter().enumerate() {
                    if !s.starts_with("spiffe://") && !peer(s) {
                        err(
                            format!("{at}.from[{j}]"),
                            format!("{s:?} is not a SPIFFE ID or a peer set ({})", known()),
                        );
                    }
                }
            }
            Some(AuthzFrom::Fields(f)) => {
                if *f == Default::default() {
                    err(
                        format!("{at}.from"),
                        "is empty and would match every peer: write `from: any`, or leave it out"
                            .into(),
                    );
                }
                for (field, list) in [("peers", &f.peers), ("not_peers", &f.not_peers)] {
                    for (j, s) in list.iter().enumerate() {
                        if !peer(s) {
                            err(
                                format!("{at}.from.{field}[{j}]"),
                                format!("no peer set is named {s:?} ({})", known()),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
        match &rule.to {
            Some(AuthzTo::Paths(p)) if p.is_empty() => err(
                format!("{at}.to"),
                "is an empty list, which no request matches".into(),
            ),
            Some(AuthzTo::Fields(t)) => {
                for (j, m) in t.methods.iter().enumerate() {
                    if super::http_token(m).is_none() || m.bytes().any(|b| b.is_ascii_lowercase()) {
                        err(
                            format!("{at}.to.methods[{j}]"),
                            format!("{m:?} is not a method (upper case, as sent: GET, POST)"),
                        );
                    }
                }
            }
            _ => {}
        }
        for (j, w) in rule.when.iter().enumerate() {
            if super::http_token(&w.header).is_none() {
                err(
                    format!("{at}.when[{j}].header"),
                    "is not a valid header name".into(),
                );
            }
            match (w.values.is_empty(), w.present) {
                (true, None) => err(
                    format!("{at}.when[{j}]"),
                    "needs `values` or `present`".into(),
                ),
                (false, Some(false)) => err(
                    format!("{at}.when[{j}]"),
                    "asks for values of a header it asks to be absent".into(),
                ),
                _ => {}
            }
        }
    }
    for (i, p) in a.probe_paths.iter().enumerate() {
        if !p.starts_with('/') {
            err(
                format!("{top}.probe_paths[{i}]"),
                format!("{p:?} does not start with `/`"),
            );
        }
    }
}
