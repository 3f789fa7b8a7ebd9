//! The decision order, the defaults, identity wildcards, and the shadow decision.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::authz::path::normalize;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn paths(p: &[&str]) -> Vec<PathPattern> {
    p.iter().map(|p| PathPattern::parse(p).unwrap()).collect()
}

fn rule(name: &str, action: Action, from: Source, to: To) -> Rule {
    Rule {
        name: name.into(),
        action,
        dry_run: false,
        from,
        to,
        when: vec![],
    }
}

fn policy(default: Default, rules: Vec<Rule>) -> Policy {
    Policy::new(default, false, rules)
}

fn ask<'a>(peer: Peer<'a>, method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> Ask<'a> {
    Ask {
        peer,
        addr: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        method,
        path,
        host: Some("orders.internal"),
        headers,
    }
}

fn web() -> Source {
    Source {
        ids: vec![IdPattern::parse("spiffe://prod.example/ns/web/sa/*").unwrap()],
        ..Source::default()
    }
}

#[test]
fn deny_beats_allow_and_the_default_decides_the_rest() {
    let p = policy(
        Default::Deny,
        vec![
            rule(
                "web-orders",
                Action::Allow,
                web(),
                To {
                    paths: paths(&["/v1/orders", "/v1/orders/*"]),
                    ..To::default()
                },
            ),
            rule(
                "no-debug",
                Action::Deny,
                Source {
                    any: true,
                    ..Source::default()
                },
                To {
                    paths: paths(&["/v1/orders/debug"]),
                    ..To::default()
                },
            ),
        ],
    );
    let h = HeaderMap::new();
    let frontend = id("spiffe://prod.example/ns/web/sa/frontend");
    let get = Method::GET;
    let d = p.decide(&ask(Peer::Svid(&frontend), &get, "/v1/orders/7", &h));
    assert_eq!(
        d.enforced,
        Verdict {
            allow: true,
            rule: p.index_of("web-orders"),
            reason: Reason::AllowedByRule
        }
    );
    assert_eq!(d.shadow, None);
    let d = p.decide(&ask(Peer::Svid(&frontend), &get, "/v1/orders/debug", &h));
    assert_eq!(
        d.enforced,
        Verdict {
            allow: false,
            rule: p.index_of("no-debug"),
            reason: Reason::DeniedByRule
        }
    );
    let d = p.decide(&ask(Peer::Svid(&frontend), &get, "/admin", &h));
    assert_eq!(
        d.enforced,
        Verdict {
            allow: false,
            rule: None,
            reason: Reason::NoRuleMatched
        }
    );
    // `*` is one whole segment: ns/web/sa/frontend/extra is not covered.
    let deeper = id("spiffe://prod.example/ns/web/sa/frontend/extra");
    assert!(
        !p.decide(&ask(Peer::Svid(&deeper), &get, "/v1/orders", &h))
            .enforced
            .allow
    );
    // No certificate: nothing matches an identity.
    assert!(
        !p.decide(&ask(Peer::Plaintext, &get, "/v1/orders", &h))
            .enforced
            .allow
    );
}

#[test]
fn defaults_read_the_identity_only() {
    let h = HeaderMap::new();
    let get = Method::GET;
    let ours = id("spiffe://prod.example/ns/a/sa/b");
    let theirs = id("spiffe://partner.example/ns/a/sa/b");
    let decide = |d: Default, peer| policy(d, vec![]).decide(&ask(peer, &get, "/", &h)).enforced;
    assert!(decide(Default::Authenticated, Peer::Svid(&theirs)).allow);
    assert_eq!(
        decide(Default::Authenticated, Peer::Anonymous).reason,
        Reason::Unauthenticated
    );
    assert!(
        decide(
            Default::TrustDomain("prod.example".into()),
            Peer::Svid(&ours)
        )
        .allow
    );
    let other = decide(
        Default::TrustDomain("prod.example".into()),
        Peer::Svid(&theirs),
    );
    assert_eq!((other.allow, other.reason), (false, Reason::NoRuleMatched));
    assert!(decide(Default::Allow, Peer::Plaintext).allow);
    assert_eq!(
        decide(Default::Deny, Peer::Svid(&ours)).reason,
        Reason::NoRuleMatched
    );
    // Without an identity, no rule admitting it: `unauthenticated`, whatever the default.
    for d in [Default::Deny, Default::TrustDomain("prod.example".into())] {
        let v = decide(d, Peer::Plaintext);
        assert_eq!((v.allow, v.reason), (false, Reason::Unauthenticated));
    }
}

#[test]
fn methods_hosts_networks_headers_and_not_twins_all_count() {
    let ops = id("spiffe://prod.example/ns/ops/sa/deployer");
    let from = Source {
        ids: vec![IdPattern::parse("spiffe://prod.example/ns/ops/sa/*").unwrap()],
        networks: vec![Network {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)),
            prefix: 8,
        }],
        not_ids: vec![IdPattern::parse("spiffe://prod.example/ns/ops/sa/intern").unwrap()],
        ..Source::default()
    };
    let to = To {
        methods: vec![Method::GET, Method::POST],
        paths: paths(&["/admin/**"]),
        not_paths: paths(&["/admin/secrets/**"]),
        hosts: vec!["*.internal".into()],
    };
    let mut r = rule("ops-admin", Action::Allow, from, to);
    r.when = vec![When {
        header: HeaderName::from_static("x-tenant"),
        values: vec!["acme".into()],
        present: None,
    }];
    let p = policy(Default::Deny, vec![r]);
    let mut h = HeaderMap::new();
    h.insert("x-tenant", "acme".parse().unwrap());
    let (get, delete) = (Method::GET, Method::DELETE);
    assert!(
        p.decide(&ask(Peer::Svid(&ops), &get, "/admin", &h))
            .enforced
            .allow
    );
    assert!(
        p.decide(&ask(Peer::Svid(&ops), &get, "/admin/users/7", &h))
            .enforced
            .allow
    );
    assert!(
        !p.decide(&ask(Peer::Svid(&ops), &get, "/admin/secrets/k", &h))
            .enforced
            .allow
    );
    assert!(
        !p.decide(&ask(Peer::Svid(&ops), &delete, "/admin", &h))
            .enforced
            .allow
    );
    let intern = id("spiffe://prod.example/ns/ops/sa/intern");
    assert!(
        !p.decide(&ask(Peer::Svid(&intern), &get, "/admin", &h))
            .enforced
            .allow
    );
    let mut outside = ask(Peer::Svid(&ops), &get, "/admin", &h);
    outside.addr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1));
    assert!(!p.decide(&outside).enforced.allow);
    let mut elsewhere = ask(Peer::Svid(&ops), &get, "/admin", &h);
    elsewhere.host = Some("orders.example.com");
    assert!(!p.decide(&elsewhere).enforced.allow);
    let other_tenant = {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "initech".parse().unwrap());
        h
    };
    assert!(
        !p.decide(&ask(Peer::Svid(&ops), &get, "/admin", &other_tenant))
            .enforced
            .allow
    );
}

#[test]
fn dry_run_rules_and_mode_make_a_shadow_decision() {
    let h = HeaderMap::new();
    let post = Method::POST;
    let frontend = id("spiffe://prod.example/ns/web/sa/frontend");
    let mut freeze = rule(
        "freeze-writes",
        Action::Deny,
        Source {
            any: true,
            ..Source::default()
        },
        To {
            methods: vec![Method::POST],
            ..To::default()
        },
    );
    freeze.dry_run = true;
    let p = policy(Default::Allow, vec![freeze.clone()]);
    let d = p.decide(&ask(Peer::Svid(&frontend), &post, "/v1/orders", &h));
    assert!(d.enforced.allow, "a dry-run rule never blocks");
    assert_eq!(
        d.shadow,
        Some(Verdict {
            allow: false,
            rule: p.index_of("freeze-writes"),
            reason: Reason::DeniedByRule
        })
    );
    assert!(d.mismatch());
    // The whole section in dry run: every request passes; the shadow is the full decision.
    let strict = Policy::new(Default::Deny, true, vec![]);
    let d = strict.decide(&ask(Peer::Plaintext, &post, "/", &h));
    assert!(d.enforced.allow);
    assert_eq!(d.shadow.as_ref().map(|s| s.allow), Some(false));
    assert!(d.mismatch());
    // No dry run anywhere: no shadow.
    assert_eq!(
        policy(Default::Deny, vec![])
            .decide(&ask(Peer::Plaintext, &post, "/", &h))
            .shadow,
        None
    );
}

#[test]
fn networks_match_by_prefix_in_either_family() {
    let n = Network {
        addr: "10.0.0.0".parse().unwrap(),
        prefix: 8,
    };
    assert!(n.contains("10.255.0.1".parse().unwrap()));
    assert!(n.contains("::ffff:10.1.1.1".parse().unwrap()));
    assert!(!n.contains("11.0.0.1".parse().unwrap()));
    let v6 = Network {
        addr: "fd00::".parse().unwrap(),
        prefix: 8,
    };
    assert!(v6.contains("fd12::1".parse().unwrap()));
    assert!(!v6.contains("fe80::1".parse().unwrap()));
    let all = Network {
        addr: "0.0.0.0".parse().unwrap(),
        prefix: 0,
    };
    assert!(all.contains("203.0.113.9".parse().unwrap()));
}

/// The first-segment index changes which rules a request walks, never the decision: every
/// request of a spread of paths and methods is decided as a walk over all rules would.
#[test]
fn the_first_segment_index_decides_as_walking_every_rule_would() {
    let any = || Source {
        any: true,
        ..Source::default()
    };
    let to = |p: &[&str], methods: Vec<Method>| To {
        paths: paths(p),
        methods,
        ..To::default()
    };
    let rules = vec![
        rule(
            "a",
            Action::Allow,
            any(),
            to(&["/v1/orders", "/v1/orders/*"], vec![]),
        ),
        rule("b", Action::Deny, any(), to(&["/v1/orders/debug"], vec![])),
        rule(
            "c",
            Action::Allow,
            any(),
            to(&["/admin/**", "/v2/*"], vec![Method::GET]),
        ),
        rule("d", Action::Allow, any(), to(&["/*/items"], vec![])),
        rule("e", Action::Deny, any(), to(&[], vec![Method::DELETE])),
        rule("f", Action::Allow, any(), to(&["/"], vec![])),
        rule("g", Action::Allow, web(), to(&["/**"], vec![Method::POST])),
        rule(
            "h",
            Action::Deny,
            any(),
            to(&["/admin/secrets/**", "/v2/x"], vec![]),
        ),
        rule("i", Action::Allow, any(), to(&["/v3"], vec![])),
    ];
    let p = Policy::new(Default::Deny, false, rules.clone());
    let brute = |ask: &Ask<'_>| -> Option<usize> {
        let deny =
            (0..rules.len()).find(|&i| rules[i].action == Action::Deny && rules[i].matches(ask));
        deny.or_else(|| {
            (0..rules.len()).find(|&i| rules[i].action == Action::Allow && rules[i].matches(ask))
        })
    };
    let segs = [
        "", "v1", "orders", "debug", "admin", "secrets", "v2", "x", "items", "v3",
    ];
    let h = HeaderMap::new();
    let frontend = id("spiffe://prod.example/ns/web/sa/frontend");
    let mut checked = 0;
    for a in segs {
        for b in segs {
            for c in segs {
                let path = format!("/{a}/{b}/{c}");
                let path = normalize(&path).unwrap();
                for m in [Method::GET, Method::POST, Method::DELETE] {
                    for peer in [Peer::Plaintext, Peer::Svid(&frontend)] {
                        let ask = ask(peer, &m, &path, &h);
                        assert_eq!(p.decide(&ask).enforced.rule, brute(&ask), "{m} {path}");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 6000);
}
