//! The Context API step (specs/context-api.md): `spec.context` into the API's service and its
//! request flow on its own listener, over the store `context.rs` keeps across reloads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use attache_config::Config;
use attache_filters::Body;
use attache_filters::context::api::Rules;
use attache_filters::context::current::Current;
use attache_filters::context::names::Allow;
use attache_filters::context::op::TtlMode;
use attache_filters::context::{ContextApi, Settings};
use attache_filters::metrics::Metrics;
use http::Request;

use crate::context::Stores;

/// The listener's address and its request flow: a SERVER span (continuing the app's trace),
/// then the API. `None` without `spec.context`; an error when its store cannot be made.
pub fn stack(
    config: &Config,
    stores: &Stores,
    restoration: Option<&crate::steps::trace_context::Restoration>,
    metrics: &Arc<Metrics>,
    telemetry: &crate::telemetry::Telemetry,
) -> anyhow::Result<Option<(SocketAddr, crate::stack::Stack)>> {
    let Some(c) = config.spec.context.as_ref() else {
        stores.stop_push();
        return Ok(None);
    };
    let limits = crate::context::limits(&c.limits);
    let store = stores.get(c)?;
    stores.push(
        c,
        &store,
        config.spec.inbound.as_ref().map(|i| i.listen.0),
        metrics,
    );
    let api = Arc::new(ContextApi::new(Settings {
        store,
        allow: Allow::new(c.allow.clone()),
        rules: Rules {
            max_attempts: c.queue_max_attempts.max(1),
            dedupe_window: c.queue_dedupe_window.get(),
            max_message_bytes: usize::try_from(c.limits.max_message_bytes.0).unwrap_or(usize::MAX),
            max_ttl: c.limits.max_ttl.get(),
            default_ttl: c.ttl.map(attache_config::Duration::get),
            ttl_mode: match c.ttl_mode {
                attache_config::TtlMode::Create => TtlMode::Create,
                attache_config::TtlMode::Touch => TtlMode::Touch,
                attache_config::TtlMode::Keep => TtlMode::Keep,
            },
            max_members_per_request: c.limits.max_members_per_request as usize,
        },
        retention: c.idempotency_retention.get(),
        store_timeout: c.store_timeout.get(),
        // The largest body a write can carry: a whole map, and room for the request's own
        // fields around it.
        max_body_bytes: limits.max_map_bytes.saturating_add(64 * 1024),
        metrics: metrics.family(),
        current: restoration.map(|r| Current {
            table: r.table.clone(),
            member: c.baggage_member.clone(),
        }),
    }));
    let svc = tower::service_fn(move |req: Request<Body>| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.serve(req).await) }
    });
    Ok(Some((
        c.listen.0,
        crate::stack::side(config, metrics, telemetry, svc),
    )))
}
