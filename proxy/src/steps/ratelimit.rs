//! The rate-limit step: the limits of one leg (`spec.rate_limits`, by `match.listener` and
//! `match.upstream`), over the state `ratelimit.rs` keeps across reloads.

use std::net::SocketAddr;
use std::sync::Arc;

use attache_config::{Config, LimitKey, LimitListener, MissingKey, OnStoreError};
use attache_filters::metrics::{Direction, Metrics};
use attache_filters::ratelimit::{
    Check, ConnReaders, KeySource, Limit, RateLimitLayer, Settings, SharedLimiter, Trusted,
};
use http::{HeaderName, Method};

use crate::conn::ConnInfo;
use crate::ratelimit::Limiters;

fn peer_of(ext: &http::Extensions) -> Option<SocketAddr> {
    ext.get::<ConnInfo>().map(|c| c.peer)
}

/// The verified client certificate's SPIFFE ID, else its subject.
fn identity_of(ext: &http::Extensions) -> Option<&str> {
    let peer = ext.get::<ConnInfo>()?.tls()?.peer.as_ref()?;
    peer.spiffe_id()
        .or((!peer.subject.is_empty()).then_some(peer.subject.as_str()))
}

/// The step of one leg: inbound, or an outbound leg sending to `upstream` (an ambassador
/// port's; the forward proxy's and capture's legs have none). `None` when no limit applies.
pub fn layer(
    config: &Config,
    limiters: &Limiters,
    metrics: &Arc<Metrics>,
    direction: Direction,
    upstream: Option<&str>,
) -> anyhow::Result<Option<RateLimitLayer>> {
    let Some(rl) = &config.spec.rate_limits else {
        limiters.retain(&[]);
        return Ok(None);
    };
    limiters.retain(
        &rl.limits
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
    );
    let listener = match direction {
        Direction::Inbound => LimitListener::Inbound,
        Direction::Outbound => LimitListener::Outbound,
    };
    let trusted: Option<Trusted> = config.spec.inbound.as_ref().and_then(|i| {
        let cidrs: Arc<[attache_config::Cidr]> = i.trusted_proxies.iter().copied().collect();
        (!cidrs.is_empty())
            .then(|| Arc::new(move |ip| cidrs.iter().any(|c| c.contains(ip))) as Trusted)
    });
    let mut limits = Vec::new();
    for limit in &rl.limits {
        let m = &limit.matches;
        if m.listener != listener || m.upstream.as_deref().is_some_and(|u| Some(u) != upstream) {
            continue;
        }
        let check = if limit.shared {
            let Some(store) = &rl.store else {
                anyhow::bail!(
                    "spec.rate_limits.store is needed by the shared limit `{}`",
                    limit.name
                );
            };
            let redis = limiters.redis(store, rl.store_timeout.get())?;
            Check::Shared {
                limiter: Arc::new(SharedLimiter::new(
                    redis,
                    &rl.key_prefix,
                    &limit.name,
                    limit.rate.count,
                    limit.rate.per,
                    limit.burst(),
                )),
                deny_on_error: limit.on_store_error == OnStoreError::Deny,
            }
        } else {
            Check::Local(limiters.local(limit, metrics))
        };
        let key = match &limit.key {
            LimitKey::None => KeySource::None,
            LimitKey::ClientAddress => KeySource::ClientAddress {
                trusted: trusted.clone(),
            },
            LimitKey::PeerIdentity => KeySource::PeerIdentity,
            LimitKey::Header(h) => KeySource::Header(HeaderName::from_bytes(h.as_bytes())?),
            LimitKey::Baggage(b) => KeySource::Baggage(Arc::from(b.as_str())),
        };
        limits.push(Limit {
            name: Arc::from(limit.name.as_str()),
            methods: m
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                .collect(),
            path_prefix: m.path_prefix.clone(),
            path_regex: match &m.path_regex {
                Some(re) => Some(regex_lite::Regex::new(&format!("^(?:{re})$"))?),
                None => None,
            },
            key,
            skip_missing: limit.missing_key == MissingKey::Skip,
            check,
            headers_on_allowed: limit.headers_on_allowed,
        });
    }
    if limits.is_empty() {
        return Ok(None);
    }
    Ok(Some(RateLimitLayer::new(Settings {
        limits,
        conn: ConnReaders {
            peer_of,
            identity_of,
        },
        store_timeout: rl.store_timeout.get(),
        store_errors: Arc::new(attache_filters::log_throttle::LogThrottle::new(
            config.spec.telemetry.error_log_interval.get(),
        )),
        metrics: metrics.family(),
    })))
}
