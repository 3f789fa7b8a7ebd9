//! `spec.authz` compiled into the policy the inbound step decides with
//! (`attache_filters::authz`), by the parsers that match identities and paths: so a file is
//! checked (`attache validate`, a reload) by the very code that will judge requests. Also
//! here: the connection's peer as the step reads it, the step itself per snapshot, the probe
//! warning, and `attache authz explain`.

use std::net::IpAddr;
use std::sync::Arc;

use attache_config::{
    Authz, AuthzAction, AuthzDefault, AuthzFrom, AuthzMode, AuthzTo, Config, ConfigError,
};
use attache_filters::authz::policy::{
    Action, Ask, Default, Network, Peer, Policy, Rule, Source, To, When,
};
use attache_filters::authz::spiffe::{IdPattern, SpiffeId};
use attache_filters::authz::tunnels::Tunnels;
use attache_filters::authz::{AuthzLayer, ConnPeer, Settings, path::PathPattern};
use attache_filters::metrics::Metrics;
use http::{HeaderMap, HeaderName, Method};

use crate::conn::ConnInfo;

/// A trust domain (`prod.example`) as an ID's first part is written.
fn trust_domain_ok(td: &str) -> bool {
    SpiffeId::parse(&format!("spiffe://{td}")).is_ok() && !td.contains('/')
}

/// A `to.hosts` entry: a host name, or `*.` and a domain; no port.
fn host_ok(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Compiles `a`; `own_trust_domain` is attache's (from its certificate), for
/// `default: trust_domain` without `trust_domain`. Every error names its field.
pub fn compile(a: &Authz, own_trust_domain: Option<&str>) -> Result<Policy, Vec<ConfigError>> {
    let top = "spec.authz";
    let mut errors = Vec::new();
    let pattern = |s: &str, at: String, errors: &mut Vec<ConfigError>| match IdPattern::parse(s) {
        Ok(p) => Some(p),
        Err(e) => {
            errors.push(ConfigError::new(at, e.to_string()));
            None
        }
    };
    let mut peers = std::collections::HashMap::new();
    for (name, ids) in &a.peers {
        if ids.is_empty() {
            errors.push(ConfigError::new(
                format!("{top}.peers.{name}"),
                "is empty: a rule naming it would match nobody",
            ));
        }
        let list: Vec<IdPattern> = ids
            .iter()
            .enumerate()
            .filter_map(|(j, id)| pattern(id, format!("{top}.peers.{name}[{j}]"), &mut errors))
            .collect();
        peers.insert(name.as_str(), list);
    }
    let trust_domain = |td: &str, at: String, errors: &mut Vec<ConfigError>| {
        if trust_domain_ok(td) {
            Some(td.to_owned())
        } else {
            errors.push(ConfigError::new(
                at,
                format!("{td:?} is not a trust domain (lower-case letters, digits, `.`, `-`, `_`)"),
            ));
            None
        }
    };
    let default = match a.default {
        AuthzDefault::Deny => Default::Deny,
        AuthzDefault::Allow => Default::Allow,
        AuthzDefault::Authenticated => Default::Authenticated,
        AuthzDefault::TrustDomain => match (a.trust_domain.as_deref(), own_trust_domain) {
            (Some(td), _) => {
                trust_domain(td, format!("{top}.trust_domain"), &mut errors);
                Default::TrustDomain(td.to_owned())
            }
            (None, Some(td)) => Default::TrustDomain(td.to_owned()),
            (None, None) => {
                errors.push(ConfigError::new(
                        format!("{top}.trust_domain"),
                        "default: trust_domain needs the trust domain: set it here, or give attache a certificate whose URI SAN is its SPIFFE ID",
                    ));
                Default::Deny
            }
        },
    };
    let mut rules = Vec::new();
    for (i, r) in a.rules.iter().enumerate() {
        let at = format!("{top}.rules[{i}]");
        let mut from = Source::default();
        // A peer set's IDs, or a pattern, into `ids`.
        let identity =
            |s: &str, at: String, ids: &mut Vec<IdPattern>, errors: &mut Vec<ConfigError>| {
                if s.starts_with("spiffe://") {
                    ids.extend(pattern(s, at, errors));
                } else if let Some(set) = peers.get(s) {
                    ids.extend(set.iter().cloned());
                }
            };
        match &r.from {
            None => from.any = true,
            Some(AuthzFrom::One(s)) if s == "any" => from.any = true,
            Some(AuthzFrom::One(s)) if s == "authenticated" => from.authenticated = true,
            Some(AuthzFrom::One(s)) => {
                identity(s, format!("{at}.from"), &mut from.ids, &mut errors)
            }
            Some(AuthzFrom::List(list)) => {
                for (j, s) in list.iter().enumerate() {
                    identity(s, format!("{at}.from[{j}]"), &mut from.ids, &mut errors);
                }
            }
            Some(AuthzFrom::Fields(f)) => {
                for (field, list, into) in [
                    ("ids", &f.ids, &mut from.ids),
                    ("not_ids", &f.not_ids, &mut from.not_ids),
                ] {
                    for (j, s) in list.iter().enumerate() {
                        into.extend(pattern(s, format!("{at}.from.{field}[{j}]"), &mut errors));
                    }
                }
                for (list, into) in [(&f.peers, &mut from.ids), (&f.not_peers, &mut from.not_ids)] {
                    for s in list {
                        into.extend(peers.get(s.as_str()).into_iter().flatten().cloned());
                    }
                }
                for (field, list, into) in [
                    ("trust_domains", &f.trust_domains, &mut from.trust_domains),
                    (
                        "not_trust_domains",
                        &f.not_trust_domains,
                        &mut from.not_trust_domains,
                    ),
                ] {
                    for (j, td) in list.iter().enumerate() {
                        into.extend(trust_domain(
                            td,
                            format!("{at}.from.{field}[{j}]"),
                            &mut errors,
                        ));
                    }
                }
                let net = |c: &attache_config::Cidr| Network {
                    addr: c.addr,
                    prefix: c.prefix,
                };
                from.networks = f.networks.iter().map(net).collect();
                from.not_networks = f.not_networks.iter().map(net).collect();
            }
        }
        let mut to = To::default();
        let paths = |list: &[String], field: &str, errors: &mut Vec<ConfigError>| {
            list.iter()
                .enumerate()
                .filter_map(|(j, p)| {
                    PathPattern::parse(p)
                        .map_err(|e| {
                            errors.push(ConfigError::new(format!("{at}.to{field}[{j}]"), e))
                        })
                        .ok()
                })
                .collect::<Vec<_>>()
        };
        match &r.to {
            None => {}
            Some(AuthzTo::Paths(list)) => to.paths = paths(list, "", &mut errors),
            Some(AuthzTo::Fields(t)) => {
                to.paths = paths(&t.paths, ".paths", &mut errors);
                to.not_paths = paths(&t.not_paths, ".not_paths", &mut errors);
                to.methods = t
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect();
                for (j, h) in t.hosts.iter().enumerate() {
                    if host_ok(h) {
                        to.hosts.push(h.to_ascii_lowercase());
                    } else {
                        errors.push(ConfigError::new(
                            format!("{at}.to.hosts[{j}]"),
                            format!("{h:?} is not a host name or `*.domain` (no port)"),
                        ));
                    }
                }
            }
        }
        let when = r
            .when
            .iter()
            .filter_map(|w| {
                Some(When {
                    header: HeaderName::from_bytes(w.header.as_bytes()).ok()?,
                    values: w.values.clone(),
                    present: w.present,
                })
            })
            .collect();
        rules.push(Rule {
            name: Arc::from(r.name.as_str()),
            action: match r.action {
                AuthzAction::Allow => Action::Allow,
                AuthzAction::Deny => Action::Deny,
            },
            dry_run: r.dry_run,
            from,
            to,
            when,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Policy::new(default, a.mode == AuthzMode::DryRun, rules))
}

/// The check `attache_config::load_file_with` runs: the policy compiles. Attache's own trust
/// domain is only known once its certificate is read, so it is assumed here.
pub fn check(config: &Config) -> Vec<ConfigError> {
    match &config.spec.authz {
        Some(a) => compile(a, Some("assumed.example"))
            .err()
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

/// What `attache validate` warns about: probe paths the policy denies to a plaintext caller
/// (`probe_paths`, and `probes` found elsewhere: a manifest's pods, as (where, path)), and
/// identity rules on a listener that verifies no client certificate.
pub fn warnings(config: &Config, probes: &[(String, String)]) -> Vec<String> {
    let Some(a) = &config.spec.authz else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mtls = config
        .spec
        .inbound
        .as_ref()
        .and_then(|i| i.tls.as_ref())
        .is_some_and(|t| t.client_ca_file.is_some());
    if !mtls {
        out.push(
            "spec.authz: spec.inbound.tls.client_ca_file is not set, so no caller has a verified identity: rules on identities never match, and `authenticated` or `trust_domain` defaults deny everyone".to_owned(),
        );
    }
    let Ok(policy) = compile(a, Some("assumed.example")) else {
        return out;
    };
    let headers = HeaderMap::new();
    // (where, method, path, the caller's address, what it is)
    let mut asks: Vec<(String, Method, String, IpAddr, &str)> = Vec::new();
    let kubelet = IpAddr::from([10, 0, 0, 1]);
    for (i, p) in a.probe_paths.iter().enumerate() {
        let at = format!("spec.authz.probe_paths[{i}]");
        asks.push((at, Method::GET, p.clone(), kubelet, "the probe"));
    }
    for (at, p) in probes {
        asks.push((at.clone(), Method::GET, p.clone(), kubelet, "the probe"));
    }
    // Push delivery POSTs through the inbound listener, from loopback, without a certificate.
    for (i, p) in config.spec.context.iter().flat_map(|c| &c.push).enumerate() {
        let at = format!("spec.context.push[{i}].path");
        let local = IpAddr::from([127, 0, 0, 1]);
        asks.push((at, Method::POST, p.path.clone(), local, "push delivery"));
    }
    for (at, method, path, addr, what) in &asks {
        let path = path.split('?').next().unwrap_or_default();
        let ask = Ask {
            peer: Peer::Plaintext,
            addr: *addr,
            method,
            path,
            host: None,
            headers: &headers,
        };
        let d = policy.decide(&ask);
        if !d.enforced.allow || d.shadow.is_some_and(|s| !s.allow) {
            out.push(format!(
                "{at}: no rule allows {method} {path} without a client certificate, so {what} will fail{}; add a rule such as `{{ name: ..., from: {}, to: {{ methods: [{method}], paths: [{path}] }} }}`",
                if d.enforced.allow { " once enforced" } else { "" },
                if addr.is_loopback() { "{ networks: [127.0.0.1/32] }" } else { "any" },
            ));
        }
    }
    out
}

/// The connection's peer: plaintext, TLS without an SVID, or the SVID the handshake verified.
fn peer_of(ext: &http::Extensions) -> Option<ConnPeer<'_>> {
    let conn = ext.get::<ConnInfo>()?;
    let peer = match conn.tls() {
        None => Peer::Plaintext,
        Some(session) => match &session.svid {
            Some(id) => Peer::Svid(id),
            None => Peer::Anonymous,
        },
    };
    Some(ConnPeer {
        peer,
        addr: conn.peer.ip(),
    })
}

/// The inbound step for one snapshot's policy.
pub fn layer(
    config: &Config,
    policy: &Arc<Policy>,
    metrics: &Metrics,
    tunnels: &Arc<Tunnels>,
    hand_up: bool,
) -> AuthzLayer {
    let counters = attache_filters::authz::metrics::Counters::new(metrics.family(), policy);
    AuthzLayer::new(Settings {
        policy: policy.clone(),
        peer_of,
        counters,
        request_id: HeaderName::from_bytes(config.spec.trace.request_id.header.as_bytes()).ok(),
        hand_up,
        tunnels: tunnels.clone(),
        log_interval: config.spec.telemetry.error_log_interval.get(),
    })
}

/// attache's trust domain from its certificate file, for `explain` (the proxy reads it from
/// the loaded certificate).
fn own_trust_domain_of_file(config: &Config) -> Option<String> {
    let tls = config.spec.inbound.as_ref()?.tls.as_ref()?;
    let certs = crate::tls::read_certs(&tls.cert_file, "cert_file").ok()?;
    let uri = crate::tls::peer::first_uri(certs.first()?)?;
    SpiffeId::parse(&uri)
        .ok()
        .map(|id| id.trust_domain().to_owned())
}

/// What `attache authz explain` is asked.
pub struct Question {
    /// A SPIFFE ID, `plaintext`, or `tls` (TLS without a certificate).
    pub peer: String,
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub addr: IpAddr,
    pub headers: Vec<(String, String)>,
}

/// Prints the decision for `q` under `config`'s policy, and why, rule by rule; `Ok(allowed)`.
pub fn explain(
    config: &Config,
    q: &Question,
    out: &mut impl std::io::Write,
) -> anyhow::Result<bool> {
    let Some(a) = &config.spec.authz else {
        writeln!(
            out,
            "decision: allow (spec.authz is not configured: every request is allowed)"
        )?;
        return Ok(true);
    };
    let own = own_trust_domain_of_file(config);
    let policy = compile(a, own.as_deref()).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let id;
    let peer = match q.peer.as_str() {
        "plaintext" => Peer::Plaintext,
        "tls" => Peer::Anonymous,
        s => {
            id = SpiffeId::parse(s).map_err(|e| anyhow::anyhow!("--peer: {e}"))?;
            Peer::Svid(&id)
        }
    };
    let method = Method::from_bytes(q.method.as_bytes())
        .map_err(|_| anyhow::anyhow!("--method {:?} is not a method", q.method))?;
    let mut headers = HeaderMap::new();
    for (k, v) in &q.headers {
        headers.append(
            HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| anyhow::anyhow!("--header {k:?} is not a header name"))?,
            v.parse()
                .map_err(|_| anyhow::anyhow!("--header {k}: {v:?} is not a header value"))?,
        );
    }
    let raw = q.path.split('?').next().unwrap_or_default();
    let path = match attache_filters::authz::path::normalize(raw) {
        Ok(p) => p,
        Err(e) => {
            writeln!(out, "decision: refused (400): {e}")?;
            return Ok(false);
        }
    };
    if path != raw {
        writeln!(out, "path: {raw} is judged (and reaches the app) as {path}")?;
    }
    let ask = Ask {
        peer,
        addr: q.addr,
        method: &method,
        path: &path,
        host: q.host.as_deref(),
        headers: &headers,
    };
    let d = policy.decide(&ask);
    let word = |allow: bool| if allow { "allow" } else { "deny" };
    let named = |v: &attache_filters::authz::policy::Verdict| match policy.rule_name(v) {
        Some(rule) => format!("rule {rule}"),
        None => format!(
            "the default ({})",
            match a.default {
                AuthzDefault::Deny => "deny",
                AuthzDefault::Authenticated => "authenticated",
                AuthzDefault::TrustDomain => "trust_domain",
                AuthzDefault::Allow => "allow",
            }
        ),
    };
    writeln!(
        out,
        "decision: {} ({}, by {})",
        word(d.enforced.allow),
        d.enforced.reason.as_str(),
        if policy.dry_run() {
            "dry-run mode: nothing is refused".to_owned()
        } else {
            named(&d.enforced)
        }
    )?;
    if let Some(shadow) = &d.shadow {
        writeln!(
            out,
            "dry run: {} ({}, by {}){}",
            word(shadow.allow),
            shadow.reason.as_str(),
            named(shadow),
            if d.mismatch() { " - a mismatch" } else { "" }
        )?;
    }
    writeln!(
        out,
        "rules (deny rules are checked first, then allow rules):"
    )?;
    for r in policy.rules() {
        let (from, to, when) = r.parts(&ask);
        let mark = |ok: bool| if ok { "matches" } else { "does not match" };
        writeln!(
            out,
            "  {:<24} {:<5}{}  from {}; to {}; when {} => {}",
            r.name,
            word(r.action == Action::Allow),
            if r.dry_run { " (dry run)" } else { "" },
            mark(from),
            mark(to),
            mark(when),
            if from && to && when {
                "MATCH"
            } else {
                "no match"
            }
        )?;
    }
    Ok(d.enforced.allow)
}
