//! The running configuration, compiled: one immutable [`Snapshot`] per accepted config, swapped
//! atomically behind an `ArcSwap`. Each request reads the current snapshot once, so a reload
//! never changes the rules under a request in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use attache_config::{Config, Protocol, TraceOverride};
use attache_filters::metrics::Direction;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::conn::Deadlines;
use crate::forward_proxy::Mode;
use crate::forward_proxy::allow::Allow;
use crate::lasting::{Clients, Lasting};
use crate::stack::{Stack, Steps, Tail};
use crate::tls::server::ServerTls;
use crate::upstream::Target;
use crate::{inbound, outbound};

/// What a listener serves. A connection keeps the role it was accepted for, so when a reload
/// moves a role to another address, connections opened before keep being served.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    Inbound,
    /// An ambassador port for the named upstream, with its listener's trace overrides.
    Outbound(Arc<str>, Option<TraceOverride>),
    /// The forward proxy (`spec.forward_proxy`).
    ForwardProxy,
    /// Transparent capture (`spec.capture`).
    Capture,
}

impl Role {
    pub fn direction(&self) -> Direction {
        match self {
            Role::Inbound => Direction::Inbound,
            Role::Outbound(..) | Role::ForwardProxy | Role::Capture => Direction::Outbound,
        }
    }
}

pub struct Snapshot {
    pub config: Arc<Config>,
    /// What each listen address serves.
    pub listeners: HashMap<SocketAddr, Role>,
    /// The request flow of each role.
    pub stacks: HashMap<Role, Stack>,
    pub deadlines: Deadlines,
    /// The HTTP/1.1 and HTTP/2 server settings derived from `spec.limits`.
    pub server: Arc<Servers>,
    /// The flag sources this snapshot evaluates against (`spec.flags`).
    pub flags: Option<Arc<crate::flags::Running>>,
    /// The OFREP listener's address and request flow.
    pub ofrep: Option<(SocketAddr, Stack)>,
    /// The Context API's listener and request flow (`spec.context`).
    pub context: Option<(SocketAddr, Stack)>,
    /// TLS termination on the inbound listener (`spec.inbound.tls`).
    pub inbound_tls: Option<Arc<ServerTls>>,
    /// The compiled authorization policy (`spec.authz`).
    pub authz: Option<Arc<attache_filters::authz::policy::Policy>>,
}

/// hyper's server settings for client connections, one per protocol: a connection is served
/// by the one its first bytes call for (see [`crate::conn::ConnIo::sniff`]).
pub struct Servers {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

impl Snapshot {
    /// Compiles `config`, taking from `lasting` what an earlier snapshot made from the same
    /// parts of the config.
    pub fn build(config: Config, lasting: &Lasting) -> anyhow::Result<Snapshot> {
        let spec = &config.spec;
        let running = match &spec.flags {
            Some(f) => Some(lasting.flags.running(f)),
            None => {
                lasting.flags.clear();
                None
            }
        };
        if let Some(warning) = spec
            .trace
            .sampling
            .effective(&|k| std::env::var(k).ok())
            .warning
        {
            tracing::warn!("{warning}");
        }
        let inbound_tls = match spec.inbound.as_ref().and_then(|i| i.tls.as_ref()) {
            Some(tls) => Some(lasting.server_tls.get_or_make(tls.clone(), |tls, _| {
                ServerTls::start(tls, lasting.metrics.family())
            })?),
            None => {
                lasting.server_tls.clear();
                None
            }
        };
        let authz = match &spec.authz {
            Some(a) => {
                let own = inbound_tls.as_ref().and_then(|t| t.own_trust_domain());
                let policy = crate::authz::compile(a, own.as_deref()).map_err(|errors| {
                    anyhow::anyhow!(
                        "{}",
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                })?;
                Some(Arc::new(policy))
            }
            None => None,
        };
        let legs = Legs {
            config: &config,
            authz: authz.clone(),
            lasting,
            running: running.as_ref(),
            routed: Arc::new(routed_targets(spec, &lasting.clients)?),
            // One restoration table per snapshot, shared by the inbound leg (which records)
            // and the outbound legs (which restore). A reload starts an empty table.
            restoration: crate::steps::trace_context::restoration(&config, &lasting.metrics),
        };
        let (listeners, stacks) = legs.build()?;
        let (server, deadlines) = servers(&spec.limits);
        let ofrep = crate::steps::flags::ofrep(&config, running.as_ref(), &lasting.metrics).map(
            |(addr, svc)| {
                let stack = crate::steps::flags::ofrep_stack(
                    &config,
                    svc,
                    &lasting.metrics,
                    &lasting.telemetry,
                );
                (addr, stack)
            },
        );
        let context = crate::steps::context::stack(
            &config,
            &lasting.contexts,
            legs.restoration.as_ref(),
            &lasting.metrics,
            &lasting.telemetry,
        )?;
        Ok(Snapshot {
            inbound_tls,
            authz,
            flags: running,
            ofrep,
            context,
            config: Arc::new(config),
            listeners,
            stacks,
            deadlines,
            server: Arc::new(server),
        })
    }

    /// Every address this snapshot listens on for traffic (not admin).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self.listeners.keys().copied().collect();
        all.extend(self.ofrep.as_ref().map(|o| o.0));
        all.extend(self.context.as_ref().map(|c| c.0));
        all
    }
}

/// What every leg of one snapshot is built from.
struct Legs<'a> {
    config: &'a Config,
    lasting: &'a Lasting,
    running: Option<&'a Arc<crate::flags::Running>>,
    routed: Arc<crate::upstream::Routed>,
    restoration: Option<crate::steps::trace_context::Restoration>,
    authz: Option<Arc<attache_filters::authz::policy::Policy>>,
}

impl Legs<'_> {
    /// The inbound leg and each outbound one: what each address serves, and each role's
    /// stack (outbound listeners of one upstream and trace override share one).
    fn build(&self) -> anyhow::Result<(HashMap<SocketAddr, Role>, HashMap<Role, Stack>)> {
        let (config, spec) = (self.config, &self.config.spec);
        let (metrics, clients) = (&self.lasting.metrics, &self.lasting.clients);
        let mut listeners = HashMap::new();
        let mut stacks = HashMap::new();
        if let Some(inb) = &spec.inbound {
            let app = target(
                spec,
                clients,
                "app",
                std::slice::from_ref(&inb.app),
                spec.timeouts.with(inb.timeouts),
                inb.app_protocol,
            )?;
            listeners.insert(inb.listen.0, Role::Inbound);
            let leg = inbound::leg(inb, self.steps(Direction::Inbound, "app")?);
            let to = Tail::Target(Arc::new(app));
            let stack = crate::stack::build(config, leg, to, metrics, self.restoration.as_ref());
            stacks.insert(Role::Inbound, stack);
        }
        for out in &spec.outbound {
            let target = upstream(spec, clients, &out.upstream)?;
            let role = Role::Outbound(Arc::from(out.upstream.as_str()), out.trace.clone());
            listeners.insert(out.listen.0, role.clone());
            if let std::collections::hash_map::Entry::Vacant(slot) = stacks.entry(role) {
                let steps = self.steps(Direction::Outbound, &out.upstream)?;
                let leg = outbound::leg(out.trace.as_ref(), steps);
                slot.insert(crate::stack::build(
                    config,
                    leg,
                    Tail::Target(Arc::new(target)),
                    metrics,
                    self.restoration.as_ref(),
                ));
            }
        }
        if let Some(fp) = &spec.forward_proxy {
            // The admin port, and the proxy itself (a request to it would loop).
            let own = vec![spec.admin.listen.0, fp.listen.0];
            let mode = Mode::Proxy(Allow::new(fp.allow.clone(), own));
            let stack = self.destined(mode, fp.timeouts, crate::forward_proxy::NAME)?;
            listeners.insert(fp.listen.0, Role::ForwardProxy);
            stacks.insert(Role::ForwardProxy, stack);
        }
        if let Some(capture) = &spec.capture {
            let stack = self.destined(
                Mode::Capture,
                capture.timeouts,
                crate::forward_proxy::CAPTURE,
            )?;
            listeners.insert(capture.listen.0, Role::Capture);
            stacks.insert(Role::Capture, stack);
        }
        Ok((listeners, stacks))
    }

    /// The stack of a leg whose requests carry their own destination (the forward proxy's,
    /// transparent capture's), named `name` in metrics. No flag routes: they name upstreams,
    /// and these destinations are the app's own.
    fn destined(
        &self,
        mode: Mode,
        timeouts: Option<attache_config::TimeoutsOverride>,
        name: &str,
    ) -> anyhow::Result<Stack> {
        let spec = &self.config.spec;
        let timeouts = spec.timeouts.with(timeouts);
        let to = Tail::ForwardProxy {
            mode,
            client: (self.lasting.clients).get(timeouts.connect.get(), spec.pool, Protocol::Http1),
            timeouts,
        };
        let mut steps = self.steps(Direction::Outbound, name)?;
        steps.flags = None;
        let leg = outbound::forward_proxy_leg(steps);
        let metrics = &self.lasting.metrics;
        Ok(crate::stack::build(
            self.config,
            leg,
            to,
            metrics,
            self.restoration.as_ref(),
        ))
    }

    /// A leg's optional steps: its observer, flags (delivery inbound, routing on both) and,
    /// inbound only, idempotency.
    fn steps(&self, direction: Direction, upstream: &str) -> anyhow::Result<Steps> {
        let Lasting {
            metrics,
            telemetry,
            stores,
            limiters,
            ..
        } = self.lasting;
        let observe = telemetry.layer(self.config, direction);
        let hand_up = observe.records_exchanges();
        Ok(Steps {
            flags: crate::steps::flags::layer(
                self.config,
                self.running,
                direction,
                upstream,
                metrics,
                observe.records_spans(),
            ),
            observe,
            strip: match direction {
                Direction::Outbound => strip(self.config),
                Direction::Inbound => None,
            },
            authz: match (direction, &self.authz) {
                (Direction::Inbound, Some(policy)) => Some(crate::authz::layer(
                    self.config,
                    policy,
                    metrics,
                    &self.lasting.tunnels,
                    hand_up,
                )),
                _ => None,
            },
            ratelimit: crate::steps::ratelimit::layer(
                self.config,
                limiters,
                metrics,
                direction,
                (direction == Direction::Outbound).then_some(upstream),
            )?,
            idempotency: match direction {
                Direction::Inbound => {
                    crate::steps::idempotency::layer(self.config, stores, metrics, telemetry.dev)?
                }
                Direction::Outbound => None,
            },
            routed: self.routed.clone(),
        })
    }
}

/// `spec.context.strip_on_egress`, with the upstreams whose endpoints it lists.
fn strip(config: &Config) -> Option<Arc<crate::forward::Strip>> {
    let c = config.spec.context.as_ref()?;
    if c.strip_on_egress.is_empty() {
        return None;
    }
    let mut strip = crate::forward::Strip {
        member: c.baggage_member.clone(),
        hosts: c.strip_on_egress.clone(),
        upstreams: Default::default(),
    };
    for (name, up) in &config.spec.upstreams {
        if up.endpoints.iter().any(|e| strip.covers(&e.host)) {
            strip.upstreams.insert(name.clone());
        }
    }
    Some(Arc::new(strip))
}

/// The upstreams flag routes may send to, by name.
fn routed_targets(
    spec: &attache_config::Spec,
    clients: &Clients,
) -> anyhow::Result<HashMap<Arc<str>, Arc<Target>>> {
    let mut routed = HashMap::new();
    for route in spec.flags.iter().flat_map(|f| &f.routes) {
        for name in route.variants.values() {
            if !routed.contains_key(name.as_str()) {
                let target = upstream(spec, clients, name)?;
                routed.insert(Arc::<str>::from(name.as_str()), Arc::new(target));
            }
        }
    }
    Ok(routed)
}

/// The target of a named upstream in `spec.upstreams`.
fn upstream(spec: &attache_config::Spec, clients: &Clients, name: &str) -> anyhow::Result<Target> {
    let Some(up) = spec.upstreams.get(name) else {
        anyhow::bail!("upstream `{name}` is not defined");
    };
    let timeouts = spec.timeouts.with(up.timeouts);
    let client = clients.get(timeouts.connect.get(), spec.pool, up.protocol);
    let metered = Some(&**clients.metrics());
    let tls = up.tls.as_ref();
    let mut target = Target::new(
        name,
        &up.endpoints,
        timeouts,
        client,
        up.protocol,
        metered,
        tls,
    )?;
    match (up.balance, &up.shard) {
        (attache_config::Balance::Shard, Some(shard)) => target = target.with_shard(shard)?,
        (attache_config::Balance::P2cEwma, _) => target = target.with_p2c(),
        _ => {}
    }
    let mut target = target.with_ejection(&up.ejection, clients.metrics());
    if let Some(every) = up.dns_refresh {
        let client = clients.get(timeouts.connect.get(), spec.pool, up.protocol);
        target = target.with_dns_refresh(every.get(), up, client, clients.metrics());
    }
    Ok(match &up.retry {
        Some(retry) => target.with_retry(retry, clients.metrics()),
        None => target,
    })
}

/// The inbound app's target: its endpoint, with a client (and so pools) for its connect
/// timeout and pool policy, kept across reloads. (Its requests are counted by the observe
/// step, not per endpoint.)
fn target(
    spec: &attache_config::Spec,
    clients: &Clients,
    name: &str,
    endpoints: &[attache_config::UpstreamUrl],
    timeouts: attache_config::Timeouts,
    protocol: attache_config::Protocol,
) -> anyhow::Result<Target> {
    let client = clients.get(timeouts.connect.get(), spec.pool, protocol);
    Target::new(name, endpoints, timeouts, client, protocol, None, None)
}

/// hyper's server settings and the connection deadlines, from `spec.limits`.
fn servers(limits: &attache_config::Limits) -> (Servers, Deadlines) {
    let deadlines = Deadlines {
        header_read: limits.header_read_timeout.get(),
        idle: limits.idle_timeout.get(),
    };
    // hyper's own limits sit above attache's exact ones, so that attache, not hyper,
    // answers (with problem+json) in all but absurd cases.
    let header_bytes = usize::try_from(limits.max_header_bytes.0).unwrap_or(usize::MAX);
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_headers(limits.max_headers as usize * 2 + 16)
        .max_buf_size(
            header_bytes
                .saturating_mul(2)
                .saturating_add(16 * 1024)
                .max(64 * 1024),
        );
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(header_bytes.saturating_mul(2)).unwrap_or(u32::MAX));
    let server = Servers { http1, http2 };
    (server, deadlines)
}
