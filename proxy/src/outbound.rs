//! The outbound request flow (app → upstream), for ambassador listeners bound to one named
//! upstream. In order:
//!
//! 1. limits, and the fields the app's `Connection` names removed, as inbound
//! 2. trace_context: continue the app's trace (or start one), restore the context the app
//!    did not forward, rewrite trace headers
//! 3. telemetry: metrics, the CLIENT span and the access log
//! 4. flags: routing by a flag's variant (the app's baggage decisions are trusted)
//! 5. ratelimit: quotas protecting dependencies (to come)
//! 5. timeouts, retries, circuit breaking (timeouts now; the rest to come)
//! 6. load balancing over endpoints (round robin now) → connection pool → upstream
//!
//! The upstream sees its own authority in `Host`: the app addressed `127.0.0.1:15001`, which
//! means nothing to the upstream's virtual hosting.

use std::sync::Arc;

use attache_config::{Config, ForwardedHeaders, Outbound};
use attache_filters::metrics::{Direction, Metrics};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::forward::{Forward, Leg, Target};
use crate::limits::LimitsLayer;
use crate::snapshot::{Restoration, Stack, Steps};

pub fn stack(
    config: &Config,
    listener: &Outbound,
    upstream: Arc<Target>,
    metrics: &Arc<Metrics>,
    restoration: Option<&Restoration>,
    steps: Steps,
) -> Stack {
    let hand_up = steps.observe.records_exchanges();
    let leg = Leg {
        direction: Direction::Outbound,
        forwarded: ForwardedHeaders::Off,
        trusted_proxies: Arc::default(),
        rewrite_host: true,
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
                Direction::Outbound,
                listener.trace.as_ref(),
                metrics,
                restoration,
            )
            .map(|p| p.hand_up(hand_up)),
        )
        .option_layer(steps.flags)
        .service(Forward::new(upstream, metrics.clone(), leg).routed(steps.routed));
    BoxCloneSyncService::new(svc)
}
