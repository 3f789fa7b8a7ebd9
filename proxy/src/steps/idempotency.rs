//! The idempotency step (specs/idempotency.md): each route's effective policy compiled for the
//! filter, over the store `idempotency.rs` keeps across reloads.

use std::sync::Arc;

use attache_config::{Config, FingerprintBody};
use attache_filters::idempotency::{IdempotencyLayer, RoutePolicy, Settings};
use attache_filters::metrics::Metrics;
use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::idempotency::Stores;

/// The filter for `config`'s inbound leg, with the store kept in `stores`, or `None` when
/// idempotency is off.
pub fn layer(
    config: &Config,
    stores: &Stores,
    metrics: &Arc<Metrics>,
    dev: bool,
) -> anyhow::Result<Option<IdempotencyLayer>> {
    let Some(idem) = &config.spec.idempotency else {
        return Ok(None);
    };
    if !idem.uses_redis() && !dev {
        tracing::warn!(
            "idempotency uses the memory store: records are per process and lost on restart; configure a Redis store for production"
        );
    }
    let upstream_timeout = config
        .spec
        .timeouts
        .with(config.spec.inbound.as_ref().and_then(|i| i.timeouts))
        .request;
    let lease_base = upstream_timeout.get();
    let routes = idem
        .policies()
        .iter()
        .map(|p| route_policy(p, lease_base))
        .collect();
    Ok(Some(IdempotencyLayer::new(Settings {
        store: stores.get(idem)?,
        secret: stores.secret(idem),
        store_timeout: idem.store_timeout.get(),
        policy_url: idem
            .policy_url
            .as_deref()
            .and_then(|u| HeaderValue::from_str(&format!("<{u}>; rel=\"describedby\"")).ok()),
        routes,
        metrics: metrics.family(),
        store_errors: Arc::new(attache_filters::log_throttle::LogThrottle::new(
            config.spec.telemetry.error_log_interval.get(),
        )),
    })))
}

/// One route's effective policy, as the filter takes it. Its lease is the app's request
/// timeout (`lease_base`) plus the route's grace.
fn route_policy(p: &attache_config::Policy, lease_base: std::time::Duration) -> RoutePolicy {
    let header = |h: &str| HeaderName::from_bytes(h.as_bytes()).ok();
    RoutePolicy {
        name: Arc::from(p.route.as_str()),
        path: p.matches.path.clone(),
        path_prefix: p.matches.path_prefix.clone(),
        methods: p
            .methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .collect(),
        headers: std::iter::once(&p.header)
            .chain(&p.header_aliases)
            .filter_map(|h| header(h))
            .collect(),
        strict_sf: p.strict_sf,
        required: p.required,
        max_request_bytes: p.max_request_bytes.0,
        max_response_bytes: p.max_response_bytes.0,
        retention: p.retention.get(),
        lease: lease_base + p.lease_grace.get(),
        mismatch_status: StatusCode::from_u16(p.mismatch_status)
            .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
        release_statuses: p.release_statuses.clone(),
        store_5xx: p.store_5xx,
        in_flight_wait: p.in_flight_wait.get(),
        fail_open: p.fail_open,
        scope_authorization: p.scope_authorization,
        scope_credentials: p.scope_credentials,
        scope_headers: p.scope_headers.iter().filter_map(|h| header(h)).collect(),
        scope_by_route: p.scope_by_route,
        fingerprint_headers: p
            .fingerprint_headers
            .iter()
            .filter_map(|h| header(h))
            .collect(),
        json_canonical: p.fingerprint_body == FingerprintBody::JsonCanonical,
        replay_headers: p
            .replay_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        cloudevents: p.cloudevents.map(|c| c.strict),
    }
}
