//! The inbound request flow (network → app), fixed here in one place. In order:
//!
//! 1. limits: header count and size (431), body size (413); header-read and idle deadlines are
//!    enforced on the connection itself (`conn.rs`); then the fields the client's `Connection`
//!    names are removed, before any step adds its own (`hop_by_hop.rs`)
//! 2. trace_context: continue or start the trace, rewrite trace headers
//! 3. telemetry: metrics, the SERVER span and the access log, around everything below
//! 4. ratelimit (to come)
//! 5. flags: evaluate for the app, deliver as headers and baggage, route by variant
//!    (specs/feature-flags.md)
//! 6. idempotency: Idempotency-Key enforcement (specs/idempotency.md)
//! 7. record for context restoration what the app receives (after the flags step removed an
//!    untrusted client's decisions and added attache's), then forward to the app
//!
//! Telemetry wraps the limits here so that 431/413 rejections show in the request metrics; the
//! trace step runs inside them, so rejected requests start no trace.

use std::sync::Arc;

use attache_config::{Config, Inbound};
use attache_filters::metrics::{Direction, Metrics};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::forward::{Forward, Leg, Target};
use crate::limits::LimitsLayer;
use crate::snapshot::{Restoration, Stack, Steps};

pub fn stack(
    config: &Config,
    inbound: &Inbound,
    app: Arc<Target>,
    metrics: &Arc<Metrics>,
    restoration: Option<&Restoration>,
    steps: Steps,
) -> Stack {
    let hand_up = steps.observe.records_exchanges();
    let leg = Leg {
        direction: Direction::Inbound,
        forwarded: inbound.forwarded_headers,
        trusted_proxies: inbound.trusted_proxies.iter().copied().collect(),
        rewrite_host: false,
        hand_up,
    };
    let svc = ServiceBuilder::new()
        .map_response(|res: http::Response<_>| res.map(attache_filters::boxed))
        .layer(steps.observe)
        .layer(LimitsLayer::new(&config.spec.limits, metrics.clone()))
        .map_request(|mut req: http::Request<attache_filters::Body>| {
            crate::hop_by_hop::on_arrival(req.headers_mut());
            req
        })
        .option_layer(
            crate::snapshot::propagation(
                config,
                Direction::Inbound,
                inbound.trace.as_ref(),
                metrics,
                restoration,
            )
            .map(|p| p.hand_up(hand_up)),
        )
        .option_layer(steps.flags)
        .option_layer(steps.idempotency)
        // Restoration records what the app receives: after the flags step, never before.
        .layer(attache_filters::trace_context::propagate::RecordLayer)
        .service(Forward::new(app, metrics.clone(), leg).routed(steps.routed));
    BoxCloneSyncService::new(svc)
}
