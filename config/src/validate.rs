//! Checks that types alone cannot express: references between sections, clashing listen
//! addresses, empty lists. Every error carries the path of the field at fault.

use std::collections::HashMap;

use crate::error::ConfigError;
use crate::model::Config;

mod authz;
mod flags;
mod ratelimit;
use flags::flags;

pub fn validate(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let spec = &config.spec;

    if spec.inbound.is_none()
        && spec.outbound.is_empty()
        && spec.forward_proxy.is_none()
        && spec.capture.is_none()
    {
        errors.push(ConfigError::new(
            "spec",
            "nothing to do: configure `inbound` (in front of the app), `outbound` or `forward_proxy` (for the app's calls)",
        ));
    }
    if let Some(fp) = &spec.forward_proxy
        && fp.allow.is_empty()
    {
        errors.push(ConfigError::new(
            "spec.forward_proxy.allow",
            "lists no destination, so every request would be refused: name the hosts the app may reach (`*` for any)",
        ));
    }
    if config.metadata.name.trim().is_empty() {
        errors.push(ConfigError::new("metadata.name", "must not be empty"));
    }

    listen_addresses(spec, &mut errors);
    if let Some(tls) = spec.inbound.as_ref().and_then(|i| i.tls.as_ref())
        && tls.client_ca_file.is_none()
        && tls.client_cert == crate::model::ClientCert::Optional
    {
        errors.push(ConfigError::new(
            "spec.inbound.tls.client_cert",
            "is read only with client_ca_file (the CAs client certificates are verified against)",
        ));
    }
    upstreams(spec, &mut errors);
    trace(&spec.trace, &mut errors);
    limits_and_timeouts(spec, &mut errors);
    telemetry(&spec.telemetry, &mut errors);
    if let Some(flags) = &spec.flags {
        self::flags(flags, spec, &mut errors);
    }
    if let Some(idem) = &spec.idempotency {
        idempotency(idem, &mut errors);
    }
    if let Some(c) = &spec.context {
        context(c, &mut errors);
        if !c.push.is_empty() && spec.inbound.is_none() {
            errors.push(ConfigError::new(
                "spec.context.push",
                "delivers through the inbound listener: configure spec.inbound",
            ));
        }
        if !c.push.is_empty() && spec.inbound.as_ref().is_some_and(|i| i.tls.is_some()) {
            errors.push(ConfigError::new(
                "spec.context.push",
                "delivers in plaintext through the inbound listener, which spec.inbound.tls makes TLS-only: push delivery with inbound TLS is not supported yet (consume the queue with leases instead)",
            ));
        }
    }
    if let Some(rl) = &spec.rate_limits {
        ratelimit::rate_limits(rl, spec, &mut errors);
    }
    if let Some(a) = &spec.authz {
        authz::authz(a, spec, &mut errors);
    }
    errors
}

/// Listen addresses that clash (the same port on the same or a wildcard address), and
/// outbound listeners naming an upstream that is not defined.
fn listen_addresses(spec: &crate::Spec, errors: &mut Vec<ConfigError>) {
    let mut listens: HashMap<std::net::SocketAddr, String> = HashMap::new();
    let mut claim = |addr: std::net::SocketAddr, path: String, errors: &mut Vec<ConfigError>| {
        let clash = listens.iter().find(|(a, _)| {
            a.port() == addr.port()
                && (a.ip() == addr.ip() || a.ip().is_unspecified() || addr.ip().is_unspecified())
        });
        match clash {
            Some((_, other)) => errors.push(ConfigError::new(
                path,
                format!("listen address {addr} clashes with `{other}`"),
            )),
            None => {
                listens.insert(addr, path);
            }
        }
    };
    claim(spec.admin.listen.0, "spec.admin.listen".to_owned(), errors);
    if let Some(inbound) = &spec.inbound {
        claim(inbound.listen.0, "spec.inbound.listen".to_owned(), errors);
    }
    if let Some(fp) = &spec.forward_proxy {
        claim(fp.listen.0, "spec.forward_proxy.listen".to_owned(), errors);
    }
    if let Some(c) = &spec.capture {
        claim(c.listen.0, "spec.capture.listen".to_owned(), errors);
    }
    if let Some(ofrep) = spec.flags.as_ref().and_then(|f| f.ofrep.as_ref()) {
        claim(ofrep.listen.0, "spec.flags.ofrep.listen".to_owned(), errors);
    }
    if let Some(c) = &spec.context {
        claim(c.listen.0, "spec.context.listen".to_owned(), errors);
    }
    for (i, out) in spec.outbound.iter().enumerate() {
        claim(out.listen.0, format!("spec.outbound[{i}].listen"), errors);
        if !spec.upstreams.contains_key(&out.upstream) {
            let known: Vec<_> = spec.upstreams.keys().map(|k| format!("`{k}`")).collect();
            errors.push(ConfigError::new(
                format!("spec.outbound[{i}].upstream"),
                if known.is_empty() {
                    format!(
                        "upstream `{}` is not defined (add it under spec.upstreams)",
                        out.upstream
                    )
                } else {
                    format!(
                        "upstream `{}` is not defined in spec.upstreams (defined: {})",
                        out.upstream,
                        known.join(", ")
                    )
                },
            ));
        }
    }
}

/// Upstream names and endpoint lists.
fn upstreams(spec: &crate::Spec, errors: &mut Vec<ConfigError>) {
    for (name, up) in &spec.upstreams {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            errors.push(ConfigError::new(
                format!("spec.upstreams.{name}"),
                "upstream names use letters, digits, `-`, `_` and `.`",
            ));
        }
        if up.endpoints.is_empty() {
            errors.push(ConfigError::new(
                format!("spec.upstreams.{name}.endpoints"),
                "needs at least one endpoint",
            ));
        }
        shard(name, up, errors);
        if up
            .dns_refresh
            .is_some_and(|d| d.0 < std::time::Duration::from_secs(1))
        {
            errors.push(ConfigError::new(
                format!("spec.upstreams.{name}.dns_refresh"),
                "must be at least 1s",
            ));
        }
        if let Some(tls) = &up.tls {
            if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                errors.push(ConfigError::new(
                    format!("spec.upstreams.{name}.tls"),
                    "a client certificate needs both client_cert_file and client_key_file",
                ));
            }
            if !up
                .endpoints
                .iter()
                .any(|e| e.scheme == crate::Scheme::Https)
            {
                errors.push(ConfigError::new(
                    format!("spec.upstreams.{name}.tls"),
                    "is read only for https:// endpoints",
                ));
            }
        }
        let e = &up.ejection;
        if e.base_time.0.is_zero() || e.base_time.0 > e.max_time.0 {
            errors.push(ConfigError::new(
                format!("spec.upstreams.{name}.ejection.base_time"),
                "must be above zero and at most max_time",
            ));
        }
        if e.max_ejected_percent > 100 {
            errors.push(ConfigError::new(
                format!("spec.upstreams.{name}.ejection.max_ejected_percent"),
                format!("is a percentage (0-100), not {}", e.max_ejected_percent),
            ));
        }
        if let Some(retry) = &up.retry {
            self::retry(&format!("spec.upstreams.{name}.retry"), retry, errors);
        }
    }
}

/// `balance: shard` and its key: one source, a path pattern that compiles with a group.
fn shard(name: &str, up: &crate::Upstream, errors: &mut Vec<ConfigError>) {
    let at = format!("spec.upstreams.{name}.shard");
    let Some(shard) = &up.shard else {
        if up.balance == crate::Balance::Shard {
            errors.push(ConfigError::new(
                at,
                "`balance: shard` needs the key: `shard: {header: ...}`, `{path: ...}` or `{baggage: ...}`",
            ));
        }
        return;
    };
    if up.balance != crate::Balance::Shard {
        errors.push(ConfigError::new(
            at.clone(),
            "is read only with `balance: shard`",
        ));
    }
    let sources = [&shard.path, &shard.header, &shard.baggage]
        .iter()
        .filter(|s| s.is_some())
        .count();
    if sources != 1 {
        errors.push(ConfigError::new(
            at.clone(),
            "needs exactly one of `path`, `header`, `baggage`",
        ));
    }
    if let Some(path) = &shard.path {
        match regex_lite::Regex::new(path) {
            Ok(re) if re.captures_len() > 1 => {}
            Ok(_) => errors.push(ConfigError::new(
                format!("{at}.path"),
                "needs a capture group for the key, e.g. `^/users/([^/]+)/`",
            )),
            Err(e) => errors.push(ConfigError::new(
                format!("{at}.path"),
                format!("is not a regular expression: {e}"),
            )),
        }
    }
    if let Some(h) = &shard.header
        && http_token(h).is_none()
    {
        errors.push(ConfigError::new(
            format!("{at}.header"),
            format!("`{h}` is not a header name"),
        ));
    }
}

/// An upstream's retry policy: a bounded number of tries, waits that grow, statuses that are
/// errors, a budget that is a share.
fn retry(at: &str, r: &crate::Retry, errors: &mut Vec<ConfigError>) {
    if !(1..=10).contains(&r.attempts) {
        errors.push(ConfigError::new(
            format!("{at}.attempts"),
            format!("must be between 1 and 10, not {}", r.attempts),
        ));
    }
    if r.backoff.0.is_zero() || r.backoff.0 > r.max_backoff.0 {
        errors.push(ConfigError::new(
            format!("{at}.backoff"),
            "must be above zero and at most max_backoff",
        ));
    }
    for (i, s) in r.statuses.iter().enumerate() {
        if !(400..=599).contains(s) {
            errors.push(ConfigError::new(
                format!("{at}.statuses[{i}]"),
                format!("{s} is not an error status (400-599)"),
            ));
        }
    }
    if r.per_try_timeout.is_some_and(|t| t.0.is_zero()) {
        errors.push(ConfigError::new(
            format!("{at}.per_try_timeout"),
            "must be above zero",
        ));
    }
    if !(0.0..=1.0).contains(&r.budget.ratio) {
        errors.push(ConfigError::new(
            format!("{at}.budget.ratio"),
            format!("must be between 0 and 1, not {}", r.budget.ratio),
        ));
    }
}

/// `spec.trace`: W3C minimums, header names and baggage keys, restoration.
fn trace(trace: &crate::model::Trace, errors: &mut Vec<ConfigError>) {
    if trace.tracestate_max_len < 512 {
        errors.push(ConfigError::new(
            "spec.trace.tracestate_max_len",
            "must be at least 512 (the W3C minimum)",
        ));
    }
    if let Some(ratio) = trace.sampling.ratio
        && !(0.0..=1.0).contains(&ratio)
    {
        errors.push(ConfigError::new(
            "spec.trace.sampling.ratio",
            format!("must be between 0 and 1, not {ratio}"),
        ));
    }
    if trace.baggage.max_members < 64 {
        errors.push(ConfigError::new(
            "spec.trace.baggage.max_members",
            "must be at least 64 (the W3C minimum)",
        ));
    }
    if trace.baggage.max_bytes < 8192 {
        errors.push(ConfigError::new(
            "spec.trace.baggage.max_bytes",
            "must be at least 8192 (the W3C minimum)",
        ));
    }
    if trace.extract.is_empty() {
        errors.push(ConfigError::new(
            "spec.trace.extract",
            "needs at least one format",
        ));
    }
    trace_headers(trace, errors);
}

/// `spec.trace`'s header names and baggage keys (request id, context mapping, restoration),
/// and the restoration table's sizes.
fn trace_headers(trace: &crate::model::Trace, errors: &mut Vec<ConfigError>) {
    let header_ok = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // A baggage key is an RFC 9110 token.
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !header_ok(&trace.request_id.header) {
        errors.push(ConfigError::new(
            "spec.trace.request_id.header",
            format!("`{}` is not a valid header name", trace.request_id.header),
        ));
    }
    let mappings = [
        ("to_baggage", &trace.context.to_baggage),
        ("from_baggage", &trace.context.from_baggage),
    ];
    for (list, entries) in mappings {
        for (i, m) in entries.iter().enumerate() {
            if !header_ok(&m.header) {
                errors.push(ConfigError::new(
                    format!("spec.trace.context.{list}[{i}].header"),
                    format!("`{}` is not a valid header name", m.header),
                ));
            }
            if !key_ok(&m.key) {
                errors.push(ConfigError::new(
                    format!("spec.trace.context.{list}[{i}].key"),
                    format!("`{}` is not a valid baggage key", m.key),
                ));
            }
        }
    }
    let restore = &trace.restore;
    for (i, h) in restore.headers.iter().enumerate() {
        if !header_ok(h.strip_suffix('*').unwrap_or(h)) {
            errors.push(ConfigError::new(
                format!("spec.trace.restore.headers[{i}]"),
                format!("`{h}` is not a header name (or a prefix ending in `*`)"),
            ));
        }
    }
    if restore.ttl.0.is_zero() || restore.max_entries == 0 {
        errors.push(ConfigError::new(
            "spec.trace.restore",
            "`ttl` and `max_entries` must be above zero (set `enabled: false` to turn restoration off)",
        ));
    }
    let mapped = !trace.context.to_baggage.is_empty() || !trace.context.from_baggage.is_empty();
    if mapped && !trace.inject.contains(&crate::model::InjectFormat::Baggage) {
        errors.push(ConfigError::new(
            "spec.trace.context",
            "mapping headers and baggage needs `baggage` in spec.trace.inject",
        ));
    }
}

/// `spec.limits`, the upgrade allow-list, and every timeout above zero.
fn limits_and_timeouts(spec: &crate::Spec, errors: &mut Vec<ConfigError>) {
    let limits = &spec.limits;
    if limits.max_headers == 0 {
        errors.push(ConfigError::new(
            "spec.limits.max_headers",
            "must be at least 1",
        ));
    }
    if limits.max_header_bytes.0 < 1024 {
        errors.push(ConfigError::new(
            "spec.limits.max_header_bytes",
            "must be at least 1KiB",
        ));
    }
    for (i, protocol) in limits.upgrade_protocols.iter().enumerate() {
        let path = format!("spec.limits.upgrade_protocols[{i}]");
        let name = protocol.split('/').next().unwrap_or_default();
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !protocol.split('/').all(token) || protocol.matches('/').count() > 1 {
            errors.push(ConfigError::new(
                path,
                format!("`{protocol}` is not a protocol name (a token, or `name/version`)"),
            ));
        } else if name.eq_ignore_ascii_case("h2c") {
            errors.push(ConfigError::new(
                path,
                "`h2c` is never forwarded: RFC 9113 §3.1 removed the upgrade to HTTP/2, and an \
                 app answering it would get a raw HTTP/2 tunnel past attache's filters",
            ));
        }
    }
    for (path, d) in [
        (
            "spec.limits.header_read_timeout",
            limits.header_read_timeout,
        ),
        ("spec.limits.idle_timeout", limits.idle_timeout),
        ("spec.timeouts.connect", spec.timeouts.connect),
        ("spec.timeouts.request", spec.timeouts.request),
        ("spec.drain.grace_period", spec.drain.grace_period),
        ("spec.pool.idle_timeout", spec.pool.idle_timeout),
    ] {
        if d.0.is_zero() {
            errors.push(ConfigError::new(path, "must be longer than 0s"));
        }
    }
}

/// Whether `store` names Redis in one of the forms the stores read.
pub(crate) fn is_redis_url(store: &str) -> bool {
    matches!(
        store.split_once("://").map(|(s, _)| s),
        Some(
            "redis"
                | "rediss"
                | "redis+unix"
                | "redis+cluster"
                | "rediss+cluster"
                | "redis+sentinel"
                | "rediss+sentinel"
        )
    )
}

fn idempotency(idem: &crate::Idempotency, errors: &mut Vec<ConfigError>) {
    let top = "spec.idempotency";
    if is_redis_url(&idem.store) {
        if idem.scope_secret.as_deref().is_none_or(str::is_empty) {
            errors.push(ConfigError::new(
                format!("{top}.scope_secret"),
                "required with a Redis store: every replica sharing Redis must hash keys alike (e.g. scope_secret: ${ATTACHE_IDEMPOTENCY_SECRET})",
            ));
        }
    } else if idem.store != "memory" {
        errors.push(ConfigError::new(
            format!("{top}.store"),
            format!(
                "invalid store {:?} (expected memory or redis://host:port)",
                idem.store
            ),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, r) in idem.routes.iter().enumerate() {
        if r.name.is_empty() || !names.insert(r.name.clone()) {
            errors.push(ConfigError::new(
                format!("{top}.routes[{i}].name"),
                "route names must be unique and not empty",
            ));
        }
    }
    for (i, policy) in idem.policies().iter().enumerate() {
        idempotency_policy(idem, i, policy, errors);
    }
}

/// One route's effective policy (`Idempotency::policies`), each error at the key that set the
/// value: the route's own, else the top level.
fn idempotency_policy(
    idem: &crate::Idempotency,
    i: usize,
    policy: &crate::idempotency::Policy,
    errors: &mut Vec<ConfigError>,
) {
    let top = "spec.idempotency";
    let route = idem.routes.get(i);
    // The path of the key that decided a value: the route's own, else the top level.
    let at = |field: &str, set_here: bool| {
        if set_here {
            format!("{top}.routes[{i}].{field}")
        } else {
            format!("{top}.{field}")
        }
    };
    for m in &policy.methods {
        let upper = m.to_ascii_uppercase();
        let path = at("methods", route.is_some_and(|r| r.methods.is_some()));
        if matches!(
            upper.as_str(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "CONNECT"
        ) {
            errors.push(ConfigError::new(
                path,
                format!("{m} cannot be enforced: safe methods and CONNECT are excluded"),
            ));
        } else if http_token(m).is_none() {
            errors.push(ConfigError::new(path, format!("{m:?} is not a method")));
        }
    }
    if !matches!(policy.mismatch_status, 400 | 422) {
        errors.push(ConfigError::new(
            at(
                "mismatch_status",
                route.is_some_and(|r| r.mismatch_status.is_some()),
            ),
            "must be 422 or 400 (clients retry a 409)",
        ));
    }
    for h in &policy.replay_headers {
        if crate::never_replayed(&h.to_ascii_lowercase()) {
            errors.push(ConfigError::new(
                at(
                    "replay_headers",
                    route.is_some_and(|r| r.replay_headers.is_some()),
                ),
                format!("{h} is never replayed (credentials, per-response or hop-by-hop)"),
            ));
        }
    }
    for s in &policy.release_statuses {
        if !(400..500).contains(s) {
            errors.push(ConfigError::new(
                at(
                    "release_statuses",
                    route.is_some_and(|r| r.release_statuses.is_some()),
                ),
                format!("{s} is not a 4xx status"),
            ));
        }
    }
    if policy.in_flight_wait.0 > std::time::Duration::from_secs(60) {
        errors.push(ConfigError::new(
            at(
                "in_flight_wait",
                route.is_some_and(|r| r.in_flight_wait.is_some()),
            ),
            "must be at most 60s",
        ));
    }
    for h in policy
        .scope_headers
        .iter()
        .chain(&policy.fingerprint_headers)
        .chain(&policy.header_aliases)
        .chain(std::iter::once(&policy.header))
    {
        if http_token(h).is_none() {
            errors.push(ConfigError::new(
                at("header", route.is_some()),
                format!("{h:?} is not a valid header name"),
            ));
        }
    }
}

fn telemetry(t: &crate::Telemetry, errors: &mut Vec<ConfigError>) {
    if let Some(e) = &t.otlp.endpoint
        && let Some(why) = crate::telemetry::endpoint_problem(e)
    {
        errors.push(ConfigError::new("spec.telemetry.otlp.endpoint", why));
    }
    for (name, _) in t.otlp.headers.iter().flatten() {
        if http_token(name).is_none() {
            errors.push(ConfigError::new(
                format!("spec.telemetry.otlp.headers.{name}"),
                "not a valid header name",
            ));
        }
    }
    for (path, n) in [
        (
            "spec.telemetry.batch.max_queue_size",
            t.batch.max_queue_size,
        ),
        (
            "spec.telemetry.batch.max_export_batch_size",
            t.batch.max_export_batch_size,
        ),
    ] {
        if n == Some(0) {
            errors.push(ConfigError::new(path, "must be at least 1"));
        }
    }
    if let (Some(q), Some(b)) = (t.batch.max_queue_size, t.batch.max_export_batch_size)
        && b > q
    {
        errors.push(ConfigError::new(
            "spec.telemetry.batch.max_export_batch_size",
            format!("must not exceed max_queue_size ({q})"),
        ));
    }
    for (path, d) in [
        ("spec.telemetry.otlp.timeout", t.otlp.timeout),
        (
            "spec.telemetry.batch.scheduled_delay",
            t.batch.scheduled_delay,
        ),
        ("spec.telemetry.shutdown_timeout", Some(t.shutdown_timeout)),
        (
            "spec.telemetry.error_log_interval",
            Some(t.error_log_interval),
        ),
    ] {
        if d.is_some_and(|d| d.0.is_zero()) {
            errors.push(ConfigError::new(path, "must be longer than 0s"));
        }
    }
}

/// An RFC 9110 token, lowercased: a header name.
fn http_token(s: &str) -> Option<String> {
    (!s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
    .then(|| s.to_ascii_lowercase())
}

/// `spec.context`: a store this version has, `allow` patterns of name characters.
fn context(c: &crate::Context, errors: &mut Vec<ConfigError>) {
    let top = "spec.context";
    if c.store != "memory" && !is_redis_url(&c.store) {
        errors.push(ConfigError::new(
            format!("{top}.store"),
            format!(
                "invalid store {:?} (expected memory or a Redis URL: redis://host:6379)",
                c.store
            ),
        ));
    }
    for (i, p) in c.allow.iter().enumerate() {
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._~:-*".contains(&b))
        {
            errors.push(ConfigError::new(
                format!("{top}.allow[{i}]"),
                format!("{p:?}: a pattern of A-Z a-z 0-9 . _ ~ : - and * (any run of characters)"),
            ));
        }
    }
    for (path, d) in [
        ("store_timeout", c.store_timeout),
        ("idempotency_retention", c.idempotency_retention),
        ("limits.max_ttl", c.limits.max_ttl),
    ] {
        if d.get().is_zero() {
            errors.push(ConfigError::new(
                format!("{top}.{path}"),
                "must be longer than 0s",
            ));
        }
    }
    for (i, host) in c.strip_on_egress.iter().enumerate() {
        let bare = host.strip_prefix("*.").unwrap_or(host);
        if bare.is_empty()
            || !bare
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            errors.push(ConfigError::new(
                format!("{top}.strip_on_egress[{i}]"),
                format!("{host:?}: a host name or address, or *.domain"),
            ));
        }
    }
    if c.confirm_replicas > 0 && c.store == "memory" {
        errors.push(ConfigError::new(
            format!("{top}.confirm_replicas"),
            "waits for Redis replicas; the memory store has none",
        ));
    }
    if c.confirm_replicas > 0 && c.confirm_timeout >= c.store_timeout {
        errors.push(ConfigError::new(
            format!("{top}.confirm_timeout"),
            "must be shorter than store_timeout, which bounds the write and its confirmation together",
        ));
    }
    if c.snapshot_file.is_some() && c.store != "memory" {
        errors.push(ConfigError::new(
            format!("{top}.snapshot_file"),
            "keeps the memory store across restarts; Redis keeps its own state",
        ));
    }
    for (i, p) in c.push.iter().enumerate() {
        let at = format!("{top}.push[{i}]");
        if !p.path.starts_with('/') {
            errors.push(ConfigError::new(format!("{at}.path"), "must start with /"));
        }
        if p.context.is_empty() || p.context.starts_with('_') || p.queue.is_empty() {
            errors.push(ConfigError::new(
                at.clone(),
                "needs a context (not a reserved `_` name) and a queue",
            ));
        }
        if p.visibility.get().is_zero() || p.backoff.get().is_zero() {
            errors.push(ConfigError::new(
                at.clone(),
                "visibility and backoff must be longer than 0s",
            ));
        }
    }
    if let Some(ttl) = c.ttl
        && (ttl.get().is_zero() || ttl > c.limits.max_ttl)
    {
        errors.push(ConfigError::new(
            format!("{top}.ttl"),
            format!(
                "must be between 0s and limits.max_ttl ({})",
                c.limits.max_ttl
            ),
        ));
    }
}
