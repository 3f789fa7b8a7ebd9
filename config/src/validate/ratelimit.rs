//! `spec.rate_limits`: unique names, a store for shared limits, keys and matches that can be
//! read, upstreams that exist.

use crate::error::ConfigError;
use crate::ratelimit::{LimitKey, LimitListener, RateLimits};

pub(super) fn rate_limits(rl: &RateLimits, spec: &crate::Spec, errors: &mut Vec<ConfigError>) {
    let top = "spec.rate_limits";
    if let Some(store) = &rl.store
        && !super::is_redis_url(store)
    {
        errors.push(ConfigError::new(
            format!("{top}.store"),
            format!("invalid store {store:?} (expected a Redis URL: redis://host:6379)"),
        ));
    }
    if rl.store_timeout.get().is_zero() {
        errors.push(ConfigError::new(
            format!("{top}.store_timeout"),
            "must be longer than 0s",
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, limit) in rl.limits.iter().enumerate() {
        let at = format!("{top}.limits[{i}]");
        // A name is a metric label and a `RateLimit-Policy` sf-string: printable ASCII.
        if limit.name.is_empty()
            || !limit
                .name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            errors.push(ConfigError::new(
                format!("{at}.name"),
                "must be printable ASCII without spaces, quotes or backslashes",
            ));
        } else if !names.insert(limit.name.as_str()) {
            errors.push(ConfigError::new(
                format!("{at}.name"),
                format!("another limit is named {:?}", limit.name),
            ));
        }
        if limit.burst == Some(0) {
            errors.push(ConfigError::new(
                format!("{at}.burst"),
                "must be at least 1",
            ));
        }
        if limit.max_keys == 0 {
            errors.push(ConfigError::new(
                format!("{at}.max_keys"),
                "must be at least 1",
            ));
        }
        if limit.shared && rl.store.is_none() {
            errors.push(ConfigError::new(
                format!("{at}.shared"),
                "needs spec.rate_limits.store, the Redis the replicas share",
            ));
        }
        match &limit.key {
            LimitKey::Header(h) if super::http_token(h).is_none() => errors.push(ConfigError::new(
                format!("{at}.key.header"),
                "is not a valid header name",
            )),
            LimitKey::Baggage(b) if b.is_empty() => errors.push(ConfigError::new(
                format!("{at}.key.baggage"),
                "must name a baggage member",
            )),
            LimitKey::PeerIdentity
                if limit.matches.listener == LimitListener::Inbound
                    && spec.inbound.as_ref().is_none_or(|i| {
                        i.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none())
                    }) =>
            {
                errors.push(ConfigError::new(
                    format!("{at}.key"),
                    "peer_identity needs spec.inbound.tls.client_ca_file (mutual TLS): without a verified client certificate there is no identity",
                ));
            }
            LimitKey::PeerIdentity if limit.matches.listener == LimitListener::Outbound => {
                errors.push(ConfigError::new(
                    format!("{at}.key"),
                    "peer_identity is an inbound key: the app's own calls carry no client certificate",
                ));
            }
            _ => {}
        }
        let m = &limit.matches;
        if let Some(up) = &m.upstream {
            if m.listener != LimitListener::Outbound {
                errors.push(ConfigError::new(
                    format!("{at}.match.upstream"),
                    "matches outbound calls only: add `listener: outbound`",
                ));
            } else if !spec.outbound.iter().any(|o| &o.upstream == up) {
                errors.push(ConfigError::new(
                    format!("{at}.match.upstream"),
                    format!("no outbound listener is bound to upstream `{up}`"),
                ));
            }
        }
        for (j, method) in m.methods.iter().enumerate() {
            if http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).is_err() {
                errors.push(ConfigError::new(
                    format!("{at}.match.methods[{j}]"),
                    format!("{method:?} is not an HTTP method"),
                ));
            }
        }
        if let Some(p) = &m.path_prefix
            && !p.starts_with('/')
        {
            errors.push(ConfigError::new(
                format!("{at}.match.path_prefix"),
                "must start with /",
            ));
        }
        if let Some(re) = &m.path_regex
            && let Err(e) = regex_lite::Regex::new(re)
        {
            errors.push(ConfigError::new(
                format!("{at}.match.path_regex"),
                format!("is not a regular expression: {e}"),
            ));
        }
        if limit.matches.listener == LimitListener::Inbound && spec.inbound.is_none() {
            errors.push(ConfigError::new(
                format!("{at}.match.listener"),
                "is inbound, and there is no spec.inbound: set `listener: outbound` for the app's calls",
            ));
        }
    }
}
