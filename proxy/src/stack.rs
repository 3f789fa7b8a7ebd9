//! A leg's request flow, built from one description. Both legs run the same steps in the same
//! order; what differs between them is data ([`LegSpec`]): which trace override applies, whose
//! `X-Forwarded-*` is kept, whether the `Host` is rewritten, whether idempotency is enforced
//! (inbound only) and whether restoration records what was forwarded (inbound only). The order
//! itself, and why, is documented where each leg is described (`inbound.rs`, `outbound.rs`)
//! and in docs/ARCHITECTURE.md.

use std::convert::Infallible;
use std::sync::Arc;

use attache_config::{Config, TraceOverride};
use attache_filters::Body;
use attache_filters::authz::AuthzLayer;
use attache_filters::flags::request::FlagsLayer;
use attache_filters::idempotency::IdempotencyLayer;
use attache_filters::metrics::{Direction, Metrics};
use attache_filters::ratelimit::RateLimitLayer;
use attache_filters::telemetry::ObserveLayer;
use attache_filters::trace_context::propagate::RecordLayer;
use http::{Request, Response};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::forward::{Forward, Leg};
use crate::limits::LimitsLayer;
use crate::route::Route;
use crate::steps::trace_context::{Restoration, propagation};
use crate::upstream::{Routed, Target};

/// A leg's request flow, boxed: what a listener serves each request with.
pub type Stack = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The optional steps of a leg's request flow, built per snapshot.
pub struct Steps {
    pub observe: ObserveLayer,
    /// Outbound: the context's baggage member stripped on calls to listed hosts.
    pub strip: Option<Arc<crate::forward::Strip>>,
    /// Inbound: authorization (`spec.authz`).
    pub authz: Option<AuthzLayer>,
    pub ratelimit: Option<RateLimitLayer>,
    pub flags: Option<FlagsLayer>,
    pub idempotency: Option<IdempotencyLayer>,
    /// Upstreams flag routes may pick.
    pub routed: Arc<Routed>,
}

/// What one leg is: where it sends, how it rewrites, and its optional steps.
pub struct LegSpec<'a> {
    pub direction: Direction,
    /// A listener's own trace settings (outbound), over `spec.trace`.
    pub trace: Option<&'a TraceOverride>,
    /// The forwarder's rewriting rules (`X-Forwarded-*`, `Host`).
    pub forward: Leg,
    pub observe: ObserveLayer,
    pub authz: Option<AuthzLayer>,
    pub ratelimit: Option<RateLimitLayer>,
    pub flags: Option<FlagsLayer>,
    pub idempotency: Option<IdempotencyLayer>,
    /// Upstreams flag routes may pick.
    pub routed: Arc<Routed>,
}

/// Where a leg's requests go.
pub enum Tail {
    /// The leg's own target (the app, an ambassador's upstream), or the upstream a flag route
    /// picks.
    Target(Arc<Target>),
    /// Each request's own destination: the forward proxy's (within its allowlist), or a
    /// captured connection's original one.
    ForwardProxy {
        mode: crate::forward_proxy::Mode,
        client: crate::upstream::Client,
        timeouts: attache_config::Timeouts,
    },
}

/// The top of a leg's outbound tail: the route to the leg's own target or to a flag route's
/// upstream, each with this leg's exchange (see `crate::upstream`).
fn tail(target: Arc<Target>, routed: &Routed, metrics: &Metrics, leg: &Leg) -> Route<Forward> {
    let routed = routed
        .iter()
        .map(|(name, t)| (name.clone(), Forward::new(t.clone(), metrics, leg.clone())))
        .collect();
    Route::new(Forward::new(target, metrics, leg.clone()), routed)
}

/// The stack of one leg, in the one order both legs share:
///
/// observe → limits → hop-by-hop on arrival → trace context → authorization (inbound) →
/// rate limits → flags → idempotency (inbound)
/// → restoration record (inbound) → route → forward → balance → endpoint; on the forward
/// proxy, its own tail (`forward_proxy/`) in place of the route.
pub fn build(
    config: &Config,
    spec: LegSpec<'_>,
    to: Tail,
    metrics: &Arc<Metrics>,
    restoration: Option<&Restoration>,
) -> Stack {
    let mut forward_leg = spec.forward.clone();
    forward_leg.hand_up = spec.observe.records_exchanges();
    match to {
        Tail::Target(target) => {
            let tail = tail(target, &spec.routed, metrics, &forward_leg);
            assemble(config, spec, metrics, restoration, tail)
        }
        Tail::ForwardProxy {
            mode,
            client,
            timeouts,
        } => {
            let tail = crate::forward_proxy::ForwardProxy::new(
                mode,
                forward_leg,
                metrics,
                client,
                timeouts,
            );
            assemble(config, spec, metrics, restoration, tail)
        }
    }
}

/// The steps of `spec` over `tail`.
fn assemble<T>(
    config: &Config,
    spec: LegSpec<'_>,
    metrics: &Arc<Metrics>,
    restoration: Option<&Restoration>,
    tail: T,
) -> Stack
where
    T: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    T::Future: Send + 'static,
{
    let hand_up = spec.observe.records_exchanges();
    let inbound = spec.direction == Direction::Inbound;
    let svc = ServiceBuilder::new()
        .map_response(|res: http::Response<_>| res.map(attache_filters::boxed))
        .layer(spec.observe)
        .layer(LimitsLayer::new(&config.spec.limits, metrics.clone()))
        .map_request(|mut req: http::Request<attache_filters::Body>| {
            crate::hop_by_hop::on_arrival(req.headers_mut());
            req
        })
        .option_layer(
            propagation(config, spec.direction, spec.trace, metrics, restoration)
                .map(|p| p.hand_up(hand_up)),
        )
        // A denied request is answered here, with its span, metrics and log line: it costs no
        // quota, no flag evaluation, no Redis and no restoration record.
        .option_layer(spec.authz)
        // A request over a limit is answered here: it costs no flag evaluation, never claims
        // an idempotency key, and leaves no restoration record.
        .option_layer(spec.ratelimit)
        .option_layer(spec.flags)
        .option_layer(spec.idempotency)
        // Restoration records what the app receives: after the flags step, never before.
        .option_layer(inbound.then_some(RecordLayer))
        .service(tail);
    BoxCloneSyncService::new(svc)
}

/// The request flow of a listener the app itself calls (OFREP, the Context API): a SERVER
/// span continuing the app's trace, then `service`.
pub fn side<S>(
    config: &Config,
    metrics: &Arc<Metrics>,
    telemetry: &crate::telemetry::Telemetry,
    service: S,
) -> Stack
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let svc = ServiceBuilder::new()
        .map_response(|res: Response<_>| res.map(attache_filters::boxed))
        .layer(telemetry.spans_only(config))
        .option_layer(propagation(config, Direction::Inbound, None, metrics, None))
        .service(service);
    BoxCloneSyncService::new(svc)
}
