//! The outbound request flow (app → upstream), for ambassador listeners bound to one named
//! upstream. Its steps are built by `stack.rs` (the same order as inbound, without
//! idempotency and the restoration record):
//!
//! 1. telemetry: metrics, the CLIENT span and the access log, around everything below
//! 2. limits, and the fields the app's `Connection` names removed, as inbound
//! 3. trace_context: continue the app's trace (or start one), restore the context the app
//!    did not forward, rewrite trace headers
//! 4. ratelimit: quotas protecting dependencies (`match.listener: outbound`); over one, the
//!    app gets the 429
//! 5. flags: routing by a flag's variant (the app's baggage decisions are trusted)
//! 6. forward: timeouts (retries and circuit breaking to come), round robin over the
//!    endpoints with a failover when no connection could be made, the connection pool
//!
//! The upstream sees its own authority in `Host`: the app addressed `127.0.0.1:15001`, which
//! means nothing to the upstream's virtual hosting. Through the forward proxy the app named
//! its destination itself, and that name stays in `Host`.

use std::sync::Arc;

use attache_config::{ForwardedHeaders, TraceOverride};
use attache_filters::metrics::Direction;

use crate::forward::Leg;
use crate::stack::{LegSpec, Steps};

/// The outbound leg of one ambassador listener: to its upstream, no `X-Forwarded-*`, the
/// upstream's own authority in `Host`, no idempotency step (the app's calls are not keyed by
/// attache) and no restoration record (restoration applies here instead).
pub fn leg(trace: Option<&TraceOverride>, steps: Steps) -> LegSpec<'_> {
    LegSpec {
        direction: Direction::Outbound,
        trace,
        forward: Leg {
            direction: Direction::Outbound,
            forwarded: ForwardedHeaders::Off,
            trusted_proxies: Arc::default(),
            rewrite_host: true,
            hand_up: false,
            strip: steps.strip.clone(),
        },
        observe: steps.observe,
        authz: None,
        ratelimit: steps.ratelimit,
        flags: steps.flags,
        idempotency: None,
        routed: steps.routed,
    }
}

/// The forward proxy's leg: an outbound one whose requests keep the `Host` the app's
/// absolute-form target named (the destination's own), for each request's own destination.
pub fn forward_proxy_leg(steps: Steps) -> LegSpec<'static> {
    let mut leg = self::leg(None, steps);
    leg.forward.rewrite_host = false;
    leg
}
