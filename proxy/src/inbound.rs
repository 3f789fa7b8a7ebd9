//! The inbound request flow (network → app). Its steps are built by `stack.rs`, in this
//! order:
//!
//! 1. limits: header count and size (431), body size (413); header-read and idle deadlines are
//!    enforced on the connection itself (`conn.rs`); then the fields the client's `Connection`
//!    names are removed, before any step adds its own (`hop_by_hop.rs`)
//! 2. trace_context: continue or start the trace, rewrite trace headers
//! 3. telemetry: metrics, the SERVER span and the access log, around everything below
//! 4. authz: the identity headers a client sent removed, the path normalized, the request
//!    allowed or denied by the verified peer (`spec.authz`, `filters/src/authz/`); denied, a
//!    403 at once
//! 5. ratelimit: the limits of `spec.rate_limits` on inbound requests; over one, a 429 at
//!    once (`filters/src/ratelimit/`)
//! 6. flags: evaluate for the app, deliver as headers and baggage, route by variant
//!    (specs/feature-flags.md)
//! 7. idempotency: Idempotency-Key enforcement (specs/idempotency.md)
//! 8. record for context restoration what the app receives (after the flags step removed an
//!    untrusted client's decisions and added attache's), then forward to the app
//!
//! Telemetry wraps the limits here so that 431/413 rejections show in the request metrics; the
//! trace step runs inside them, so rejected requests start no trace.

use attache_config::Inbound;
use attache_filters::metrics::Direction;

use crate::forward::Leg;
use crate::stack::{LegSpec, Steps};

/// The inbound leg: to the app, `X-Forwarded-*` per `inbound.forwarded_headers` (kept from
/// `trusted_proxies` only), the `Host` as the client sent it, idempotency enforced.
pub fn leg(inbound: &Inbound, steps: Steps) -> LegSpec<'_> {
    LegSpec {
        direction: Direction::Inbound,
        trace: inbound.trace.as_ref(),
        forward: Leg {
            direction: Direction::Inbound,
            forwarded: inbound.forwarded_headers,
            trusted_proxies: inbound.trusted_proxies.iter().copied().collect(),
            rewrite_host: false,
            hand_up: false,
            strip: None,
        },
        observe: steps.observe,
        authz: steps.authz,
        ratelimit: steps.ratelimit,
        flags: steps.flags,
        idempotency: steps.idempotency,
        routed: steps.routed,
    }
}
