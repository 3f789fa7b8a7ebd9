//! `spec.flags`: sources, the evaluation context, delivery, trust, routes and OFREP.

use std::collections::HashMap;

use crate::error::ConfigError;

pub(super) fn flags(flags: &crate::Flags, spec: &crate::Spec, errors: &mut Vec<ConfigError>) {
    flag_sources(flags, errors);
    flag_context(flags, errors);
    flag_delivery(flags, errors);
    flag_trust_routes_and_ofrep(flags, spec, errors);
}

/// `spec.flags.sources`: each exactly a file or an http(s) URL without credentials in it, valid
/// headers, poll intervals above zero.
fn flag_sources(flags: &crate::Flags, errors: &mut Vec<ConfigError>) {
    let top = "spec.flags";
    for (i, source) in flags.sources.iter().enumerate() {
        let at = format!("{top}.sources[{i}]");
        match (&source.file, &source.url) {
            (Some(_), Some(_)) | (None, None) => errors.push(ConfigError::new(
                at.clone(),
                "a source is exactly one of `file: PATH` or `url: URL`",
            )),
            (Some(f), None) if f.trim().is_empty() => {
                errors.push(ConfigError::new(format!("{at}.file"), "must not be empty"));
            }
            (None, Some(u)) => {
                if !u.starts_with("http://") && !u.starts_with("https://") {
                    errors.push(ConfigError::new(
                        format!("{at}.url"),
                        format!("{u:?} is not an http:// or https:// URL"),
                    ));
                } else if crate::strip_userinfo(u).is_some()
                    && let Some(shown) = crate::redact_url(u)
                {
                    // Not echoed: the message goes to logs.
                    errors.push(ConfigError::new(
                        format!("{at}.url"),
                        format!("{shown}: credentials in the URL are not sent; put them in `headers: {{ authorization: ... }}`"),
                    ));
                } else if u.parse::<http::Uri>().is_err() {
                    errors.push(ConfigError::new(
                        format!("{at}.url"),
                        format!("invalid URL {u:?}"),
                    ));
                }
                for (name, value) in &source.headers {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                        || http::HeaderValue::from_str(value).is_err()
                    {
                        errors.push(ConfigError::new(
                            format!("{at}.headers.{name}"),
                            "not a valid header name and value",
                        ));
                    }
                }
            }
            _ => {}
        }
        if source.poll_interval.get().is_zero() {
            errors.push(ConfigError::new(
                format!("{at}.poll_interval"),
                "must be more than 0s",
            ));
        }
    }
    if flags.file_poll_interval.get().is_zero() {
        errors.push(ConfigError::new(
            format!("{top}.file_poll_interval"),
            "must be more than 0s",
        ));
    }
}

/// `spec.flags.context`: where the targeting key and attributes are read from.
fn flag_context(flags: &crate::Flags, errors: &mut Vec<ConfigError>) {
    let top = "spec.flags";
    let ctx = &flags.context;
    let sources = ctx
        .targeting_key
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("{top}.context.targeting_key[{i}]"), s, false))
        .chain(
            ctx.attributes
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("{top}.context.attributes[{i}]"), s, true)),
        );
    for (at, s, attribute) in sources {
        match s.source() {
            None => errors.push(ConfigError::new(
                at.clone(),
                "name exactly one of `header`, `cookie`, `query` or `baggage`",
            )),
            Some((crate::SourceKind::Header, h))
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() =>
            {
                errors.push(ConfigError::new(
                    format!("{at}.header"),
                    format!("{h:?} is not a header name"),
                ));
            }
            _ => {}
        }
        if !attribute && s.name.is_some() {
            errors.push(ConfigError::new(
                format!("{at}.as"),
                "the targeting key has no `as`: it is always `targetingKey`",
            ));
        }
        if attribute {
            let key = s.key();
            if key.is_empty() {
                errors.push(ConfigError::new(format!("{at}.as"), "must not be empty"));
            } else if ["$flagd", "request", "targetingKey"]
                .iter()
                .any(|p| key.starts_with(p))
            {
                errors.push(ConfigError::new(
                    format!("{at}.as"),
                    format!("{key:?} is reserved: `$flagd`, `request` and `targetingKey` are set by attache"),
                ));
            }
        }
    }
    for key in ctx.static_attributes.keys() {
        if ["$flagd", "request", "targetingKey"]
            .iter()
            .any(|p| key.starts_with(p))
        {
            errors.push(ConfigError::new(
                format!("{top}.context.static.{key}"),
                "reserved: `$flagd`, `request` and `targetingKey` are set by attache",
            ));
        }
    }
}

/// `spec.flags.deliver`: flag keys, per-flag header names that stay apart, the combined header.
fn flag_delivery(flags: &crate::Flags, errors: &mut Vec<ConfigError>) {
    let top = "spec.flags";
    let deliver = &flags.deliver;
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (i, key) in deliver.flags.iter().enumerate() {
        if key == "*" {
            continue;
        }
        let Some(prefix) = &deliver.header_prefix else {
            break;
        };
        let name = crate::flag_header_name(prefix, key);
        if let Some(other) = seen.insert(name.clone(), key) {
            errors.push(ConfigError::new(
                format!("{top}.deliver.flags[{i}]"),
                format!("`{key}` and `{other}` both map to the header {name}"),
            ));
        }
    }
    if let Some(prefix) = &deliver.header_prefix
        && (prefix.is_empty() || http::HeaderName::from_bytes(prefix.as_bytes()).is_err())
    {
        errors.push(ConfigError::new(
            format!("{top}.deliver.header_prefix"),
            "must be the start of a header name, e.g. x-flag-",
        ));
    }
    if let Some(h) = &deliver.combined_header
        && http::HeaderName::from_bytes(h.as_bytes()).is_err()
    {
        errors.push(ConfigError::new(
            format!("{top}.deliver.combined_header"),
            format!("{h:?} is not a header name"),
        ));
    }
}

/// Trusted peers, routes by variant, and the OFREP listener.
fn flag_trust_routes_and_ofrep(
    flags: &crate::Flags,
    spec: &crate::Spec,
    errors: &mut Vec<ConfigError>,
) {
    let top = "spec.flags";
    if flags.trust_upstream_decisions && flags.trusted_peers.is_empty() {
        errors.push(ConfigError::new(
            format!("{top}.trusted_peers"),
            "trust_upstream_decisions is true but no peer is trusted: list the sidecars' address blocks, e.g. [10.0.0.0/8]",
        ));
    }
    let known =
        |name: &str| name == "app" && spec.inbound.is_some() || spec.upstreams.contains_key(name);
    for (i, route) in flags.routes.iter().enumerate() {
        let at = format!("{top}.routes[{i}]");
        if !known(&route.upstream) {
            errors.push(ConfigError::new(
                format!("{at}.upstream"),
                format!(
                    "upstream `{}` is not defined in spec.upstreams (`app` names the inbound app)",
                    route.upstream
                ),
            ));
        }
        for (variant, target) in &route.variants {
            if !spec.upstreams.contains_key(target) {
                errors.push(ConfigError::new(
                    format!("{at}.variants.{variant}"),
                    format!("upstream `{target}` is not defined in spec.upstreams"),
                ));
            }
        }
    }
    if let Some(ofrep) = &flags.ofrep
        && ofrep.max_body_bytes.0 == 0
    {
        errors.push(ConfigError::new(
            format!("{top}.ofrep.max_body_bytes"),
            "must be more than 0",
        ));
    }
}
