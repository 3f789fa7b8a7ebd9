//! The running configuration, compiled: one immutable [`Snapshot`] per accepted config, swapped
//! atomically behind an `ArcSwap`. Each request reads the current snapshot once, so a reload
//! never changes the rules under a request in flight.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_config::{
    Config, Correlation, InjectFormat, Pool, Protocol, TraceFormat, TraceOverride,
};
use attache_filters::Body;
use attache_filters::metrics::{Direction, Metrics};
use attache_filters::trace_context::ids::RandomIds;
use attache_filters::trace_context::propagate::{
    HeaderPattern, PropagationLayer, Restore, RestoreLeg, Settings,
};
use attache_filters::trace_context::restore::{self, InFlight, Table};
use attache_filters::trace_context::{Format, baggage};
use http::HeaderName;
use http::{Request, Response};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::util::BoxCloneSyncService;

use crate::conn::Deadlines;
use crate::forward::{self, HttpClient, Target};
use crate::{inbound, outbound};

/// A complete request flow for one listener, boxed at the edge.
pub type Stack = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// What a listener serves. A connection keeps the role it was accepted for, so when a reload
/// moves a role to another address, connections opened before keep being served.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    Inbound,
    /// An ambassador port for the named upstream, with its listener's trace overrides.
    Outbound(Arc<str>, Option<TraceOverride>),
}

impl Role {
    pub fn direction(&self) -> Direction {
        match self {
            Role::Inbound => Direction::Inbound,
            Role::Outbound(..) => Direction::Outbound,
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
}

/// hyper's server settings for client connections, one per protocol: a connection is served
/// by the one its first bytes call for (see [`crate::conn::ConnIo::sniff`]).
pub struct Servers {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

/// Upstream clients by connect timeout and pool policy, kept across reloads so connection
/// pools survive them.
pub struct Clients {
    metrics: Arc<Metrics>,
    by_policy: Mutex<HashMap<(Duration, Pool, Protocol), HttpClient>>,
}

impl Clients {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            by_policy: Mutex::default(),
        }
    }

    fn get(&self, connect: Duration, pool: Pool, protocol: Protocol) -> HttpClient {
        let mut map = self.by_policy.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((connect, pool, protocol))
            .or_insert_with(|| forward::client(connect, pool, protocol, &self.metrics))
            .clone()
    }
}

/// The optional steps of a leg's request flow, built per snapshot.
pub struct Steps {
    pub observe: attache_filters::telemetry::ObserveLayer,
    pub flags: Option<attache_filters::flags::request::FlagsLayer>,
    pub idempotency: Option<attache_filters::idempotency::IdempotencyLayer>,
    /// Upstreams flag routes may pick.
    pub routed: Arc<crate::forward::Routed>,
}

/// The restoration state both legs of a snapshot share.
pub struct Restoration {
    pub table: Arc<Table>,
    pub in_flight: Option<Arc<InFlight>>,
}

/// The trace-context settings of one leg, or `None` when `spec.trace.enabled` is false.
pub fn propagation(
    config: &Config,
    direction: Direction,
    over: Option<&TraceOverride>,
    metrics: &Arc<Metrics>,
    restoration: Option<&Restoration>,
) -> Option<PropagationLayer> {
    let t = &config.spec.trace;
    if !t.enabled {
        return None;
    }
    let sampling = t.sampling.effective(&|k| std::env::var(k).ok());
    let extract = over.and_then(|o| o.extract.as_ref()).unwrap_or(&t.extract);
    let inject_formats = over.and_then(|o| o.inject.as_ref()).unwrap_or(&t.inject);
    let mirror = over.and_then(|o| o.mirror).unwrap_or(t.mirror);
    let format = |f: TraceFormat| match f {
        TraceFormat::Tracecontext => Format::TraceContext,
        TraceFormat::B3 => Format::B3,
        TraceFormat::B3multi => Format::B3Multi,
        TraceFormat::Jaeger => Format::Jaeger,
    };
    let inject = inject_formats
        .iter()
        .filter_map(|f| match f {
            InjectFormat::Tracecontext => Some(Format::TraceContext),
            InjectFormat::B3 => Some(Format::B3),
            InjectFormat::B3multi => Some(Format::B3Multi),
            InjectFormat::Jaeger => Some(Format::Jaeger),
            InjectFormat::Baggage => None,
        })
        .collect();
    // A request id is generated where a request enters the mesh: the inbound leg.
    let request_id = (direction == Direction::Inbound && t.request_id.generate)
        .then(|| HeaderName::from_bytes(t.request_id.header.as_bytes()).ok())
        .flatten();
    let header = |h: &str| HeaderName::from_bytes(h.as_bytes()).ok();
    let to_baggage = t
        .context
        .to_baggage
        .iter()
        .filter_map(|m| Some((header(&m.header)?, m.key.clone())))
        .collect();
    // Headers are filled from baggage for the app, on the inbound leg.
    let from_baggage = match direction {
        Direction::Inbound => t
            .context
            .from_baggage
            .iter()
            .filter_map(|m| Some((m.key.clone(), header(&m.header)?)))
            .collect(),
        Direction::Outbound => Vec::new(),
    };
    Some(
        PropagationLayer::new(Settings {
            extract: extract.iter().copied().map(format).collect(),
            inject,
            inject_baggage: inject_formats.contains(&InjectFormat::Baggage),
            mirror,
            tracestate_max_len: t.tracestate_max_len as usize,
            baggage: baggage::Limits {
                max_members: t.baggage.max_members as usize,
                max_bytes: t.baggage.max_bytes as usize,
            },
            request_id,
            ratio: sampling.ratio,
            parent_based: sampling.parent_based,
            to_baggage,
            from_baggage,
            restore: restoration.map(|r| Restore {
                table: r.table.clone(),
                single_in_flight: r.in_flight.clone(),
                leg: match direction {
                    Direction::Inbound => RestoreLeg::Record,
                    Direction::Outbound => RestoreLeg::Apply,
                },
                headers: t
                    .restore
                    .headers
                    .iter()
                    .filter_map(|h| HeaderPattern::parse(h))
                    .collect(),
                baggage: t.restore.baggage,
            }),
            ids: Arc::new(RandomIds::default()),
        })
        .with_metrics(metrics.clone(), direction),
    )
}

impl Snapshot {
    pub fn build(
        config: Config,
        metrics: &Arc<Metrics>,
        clients: &Clients,
        telemetry: &crate::telemetry::Telemetry,
        stores: &crate::idempotency::Stores,
        flags: &crate::flags::Flags,
    ) -> anyhow::Result<Snapshot> {
        let spec = &config.spec;
        let running = match &spec.flags {
            Some(f) => Some(flags.running(f)),
            None => {
                flags.clear();
                None
            }
        };
        // Upstreams a flag route may send to, by name.
        let mut routed = HashMap::new();
        for route in spec.flags.iter().flat_map(|f| &f.routes) {
            for name in route.variants.values() {
                if routed.contains_key(name.as_str()) {
                    continue;
                }
                let Some(up) = spec.upstreams.get(name) else {
                    anyhow::bail!("upstream `{name}` is not defined");
                };
                let timeouts = spec.timeouts.with(up.timeouts);
                let target = Target::new(
                    name,
                    &up.endpoints,
                    timeouts,
                    clients.get(timeouts.connect.get(), spec.pool, up.protocol),
                    up.protocol,
                )?;
                routed.insert(Arc::<str>::from(name.as_str()), Arc::new(target));
            }
        }
        let routed = Arc::new(routed);
        if let Some(warning) = spec
            .trace
            .sampling
            .effective(&|k| std::env::var(k).ok())
            .warning
        {
            tracing::warn!("{warning}");
        }
        // One restoration table per snapshot, shared by the inbound leg (which records) and
        // the outbound legs (which restore). A reload starts an empty table.
        let restore = &spec.trace.restore;
        let restoration = (spec.trace.enabled && restore.enabled).then(|| {
            let m = metrics.family::<attache_filters::trace_context::metrics::TraceFamilies>();
            let table = Arc::new(
                Table::new(restore::Limits {
                    ttl: restore.ttl.get(),
                    max_entries: restore.max_entries as usize,
                    max_bytes: usize::try_from(restore.max_bytes.0).unwrap_or(usize::MAX),
                    max_record_bytes: usize::try_from(restore.max_record_bytes.0)
                        .unwrap_or(usize::MAX),
                })
                .on_evict(Arc::new(move |reason| m.restore_evicted(reason))),
            );
            let in_flight = (restore.correlation == Correlation::SingleInFlight)
                .then(|| Arc::new(InFlight::default()));
            Restoration { table, in_flight }
        });
        let mut listeners = HashMap::new();
        let mut stacks = HashMap::new();
        if let Some(inb) = &spec.inbound {
            let timeouts = spec.timeouts.with(inb.timeouts);
            let app = Target::new(
                "app",
                std::slice::from_ref(&inb.app),
                timeouts,
                clients.get(timeouts.connect.get(), spec.pool, inb.app_protocol),
                inb.app_protocol,
            )?;
            listeners.insert(inb.listen.0, Role::Inbound);
            let observe = telemetry.layer(&config, Direction::Inbound);
            stacks.insert(
                Role::Inbound,
                inbound::stack(
                    &config,
                    inb,
                    Arc::new(app),
                    metrics,
                    restoration.as_ref(),
                    Steps {
                        flags: crate::flags::layer(
                            &config,
                            running.as_ref(),
                            Direction::Inbound,
                            "app",
                            metrics,
                            observe.records_spans(),
                        ),
                        observe,
                        idempotency: stores.layer(&config, metrics, telemetry.dev)?,
                        routed: routed.clone(),
                    },
                ),
            );
        }
        for out in &spec.outbound {
            let Some(up) = spec.upstreams.get(&out.upstream) else {
                anyhow::bail!("upstream `{}` is not defined", out.upstream);
            };
            let timeouts = spec.timeouts.with(up.timeouts);
            let target = Target::new(
                &out.upstream,
                &up.endpoints,
                timeouts,
                clients.get(timeouts.connect.get(), spec.pool, up.protocol),
                up.protocol,
            )?;
            let role = Role::Outbound(Arc::from(out.upstream.as_str()), out.trace.clone());
            listeners.insert(out.listen.0, role.clone());
            stacks.entry(role).or_insert_with(|| {
                let observe = telemetry.layer(&config, Direction::Outbound);
                outbound::stack(
                    &config,
                    out,
                    Arc::new(target),
                    metrics,
                    restoration.as_ref(),
                    Steps {
                        flags: crate::flags::layer(
                            &config,
                            running.as_ref(),
                            Direction::Outbound,
                            &out.upstream,
                            metrics,
                            observe.records_spans(),
                        ),
                        observe,
                        idempotency: None,
                        routed: routed.clone(),
                    },
                )
            });
        }
        let limits = &spec.limits;
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
        http2.timer(TokioTimer::new()).max_header_list_size(
            u32::try_from(header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
        );
        let server = Servers { http1, http2 };
        let ofrep = crate::flags::ofrep(&config, running.as_ref(), metrics).map(|(addr, svc)| {
            (
                addr,
                crate::flags::ofrep_stack(&config, svc, metrics, telemetry),
            )
        });
        Ok(Snapshot {
            flags: running,
            ofrep,
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
        all
    }
}
