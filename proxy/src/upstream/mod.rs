//! The outbound tail: how a request the forwarder has prepared reaches one endpoint of a
//! target, and how its response (or why none came) comes back. Each part is a tower service
//! over the one below it:
//!
//! ```text
//! route → forward → balance → endpoint → pool → connector
//! ```
//!
//! - `route` (`proxy/src/route.rs`) picks the target: the leg's own, or the upstream a flag route
//!   named.
//! - `forward` (`proxy/src/forward.rs`) is the leg's exchange with that target: it prepares the
//!   request (hop-by-hop, `X-Forwarded-*`, the target's protocol), sets its deadline (the
//!   target's request timeout), checks the response, runs an upgrade tunnel, and turns a
//!   `Failure` (`failure.rs`) into the client's answer. It is the only part whose error
//!   type is `Infallible`; below it, services answer `Result<`[`Exchange`]`, `[`Unanswered`]`>`.
//! - [`balance::Balance`] picks the endpoint (round robin) and sends a request that no
//!   connection took to the next endpoint, once.
//! - [`endpoint::Endpoint`] addresses the request to its endpoint (the HTTP/2 authority, a
//!   missing `Host`, credentials from the endpoint URL), and takes them off again when the
//!   request comes back unsent.
//! - [`pool::Endpoint`] holds the endpoint's kept-alive connections, enforces the deadline on a
//!   timer each connection keeps, and resends, once, a request a closing keep-alive connection
//!   dropped (both need what only the pool knows: which connection, idle how long).
//! - [`connector::Connector`] makes a new connection: the seam where TLS origination plugs in.
//!
//! [`retry::Retry`] sits between forward and balance for upstreams with a retry policy; P2C
//! and sharding are [`balance::Balancer`]s.

pub mod balance;
pub mod connector;
pub mod endpoint;
pub mod failure;
pub mod health;
pub mod p2c;
pub mod pool;
pub mod resolve;
pub mod retry;
pub mod shard;
pub mod tls;

use std::sync::Arc;

use attache_config::{Protocol, Timeouts, UpstreamUrl};
use attache_filters::Body;
use attache_filters::facts::UpstreamInfo;
use attache_filters::metrics::Metrics;
use http::{Request, Response};
use tokio::time::Instant;

use self::balance::{Balance, RoundRobin};
use self::failure::{Failure, SendError};

/// A request on its way down the tail, with the clock it runs on.
pub struct Outgoing {
    pub request: Request<Body>,
    /// When the exchange began (the pool measures a connection's idle time against it).
    pub started: Instant,
    /// The response head is due by then.
    pub deadline: Instant,
}

/// A response from an endpoint, and what spans and the access log say about the hop.
pub struct Exchange {
    pub response: Response<Body>,
    pub upstream: UpstreamInfo,
    /// A connection that could not be made before the endpoint that answered was tried.
    pub failed_over: Option<Failure>,
}

/// No response: why, the request itself when it never left attache, and the hop's facts.
pub struct Unanswered {
    pub error: SendError,
    /// Boxed: it is there only on a rare path, and the `Result` every exchange returns stays
    /// small.
    pub unsent: Option<Box<Request<Body>>>,
    pub upstream: UpstreamInfo,
    pub failed_over: Option<Failure>,
}

/// Upstreams a flag route may pick instead of a leg's own (specs/feature-flags.md §9).
pub type Routed = std::collections::HashMap<Arc<str>, Arc<Target>>;

/// The connection pools for one connect timeout, pool policy and protocol, kept across
/// reloads so that a new snapshot reuses the connections of the last.
pub type Client = pool::Client;

/// The pools for a connect timeout, pool policy and protocol.
pub fn client(
    connect_timeout: std::time::Duration,
    pool: attache_config::Pool,
    protocol: Protocol,
    metrics: &Arc<Metrics>,
) -> Client {
    pool::Client::new(
        pool::Settings {
            connect_timeout,
            idle_timeout: pool.idle_timeout.get(),
            max_idle: pool.max_idle_per_endpoint as usize,
            protocol,
        },
        metrics.clone(),
    )
}

/// A place requests are sent: the app, or a named upstream with its endpoints.
pub struct Target {
    /// `app` for the inbound app, else the name in `spec.upstreams`.
    pub name: Arc<str>,
    /// Its endpoints and how one is picked.
    pub balance: Balance,
    /// Retries above the balancer, when the upstream has a retry policy.
    pub retry: Option<retry::Retry>,
    pub timeouts: Timeouts,
    pub protocol: Protocol,
}

impl Target {
    pub fn new(
        name: &str,
        urls: &[UpstreamUrl],
        timeouts: Timeouts,
        client: Client,
        protocol: Protocol,
        metered: Option<&Metrics>,
        tls: Option<&attache_config::UpstreamTls>,
    ) -> anyhow::Result<Self> {
        let name: Arc<str> = Arc::from(name);
        let families: Option<Arc<crate::metrics::ProxyFamilies>> = metered.map(Metrics::family);
        let endpoints = urls
            .iter()
            .map(|u| endpoint::Endpoint::new(&name, u, &client, protocol, families.as_deref(), tls))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!endpoints.is_empty(), "upstream `{name}` has no endpoints");
        Ok(Self {
            name,
            balance: Balance::new(
                endpoints,
                Arc::new(RoundRobin::default()),
                health::Health::off(urls.len()),
            ),
            retry: None,
            timeouts,
            protocol,
        })
    }

    /// Power of two choices over peak-EWMA latency (`balance: p2c_ewma`).
    pub fn with_p2c(mut self) -> Self {
        let p2c = p2c::P2cEwma::new(self.balance.addresses().len());
        self.balance = self.balance.with_balancer(Arc::new(p2c));
        self
    }

    /// Shards requests over the endpoints by key (`balance: shard`).
    pub fn with_shard(mut self, config: &attache_config::Shard) -> anyhow::Result<Self> {
        let shard = shard::Shard::new(config, &self.balance.addresses())?;
        self.balance = self.balance.with_balancer(Arc::new(shard));
        Ok(self)
    }

    /// Ejects endpoints that keep failing (`spec.upstreams.<name>.ejection`). Before
    /// [`Target::with_retry`], which retries over this balance.
    pub fn with_ejection(mut self, config: &attache_config::Ejection, metrics: &Metrics) -> Self {
        let health = health::Health::of(
            config,
            self.name.clone(),
            self.balance.addresses(),
            metrics.family(),
        );
        self.balance = self.balance.with_health(health);
        self
    }

    /// Re-resolves endpoint names every `every`, balancing over all their addresses
    /// (`spec.upstreams.<name>.dns_refresh`); a changed set gets its balancer and health made
    /// by `config`'s policy.
    pub fn with_dns_refresh(
        mut self,
        every: std::time::Duration,
        config: &attache_config::Upstream,
        client: Client,
        metrics: &Metrics,
    ) -> Self {
        let families: Arc<crate::metrics::ProxyFamilies> = metrics.family();
        let (name, protocol, tls) = (self.name.clone(), config.protocol, config.tls.clone());
        let endpoint_families = families.clone();
        let endpoint_name = name.clone();
        let make_endpoint: resolve::MakeEndpoint = Box::new(move |url, addr| {
            endpoint::Endpoint::at(
                &endpoint_name,
                url,
                addr,
                &client,
                protocol,
                Some(&endpoint_families),
                tls.as_ref(),
            )
        });
        let (balance, shard, ejection) = (config.balance, config.shard.clone(), config.ejection);
        let policy_name = name.clone();
        let make_policy: resolve::MakePolicy = Box::new(move |addresses| {
            let balancer: Arc<dyn balance::Balancer> = match (balance, &shard) {
                (attache_config::Balance::Shard, Some(s)) => {
                    Arc::new(shard::Shard::new(s, addresses)?)
                }
                (attache_config::Balance::P2cEwma, _) => {
                    Arc::new(p2c::P2cEwma::new(addresses.len()))
                }
                _ => Arc::new(RoundRobin::default()),
            };
            let health = health::Health::of(
                &ejection,
                policy_name.clone(),
                addresses.to_vec(),
                families.clone(),
            );
            Ok((balancer, health))
        });
        self.balance = resolve::start(
            self.balance,
            config.endpoints.clone(),
            every,
            make_endpoint,
            make_policy,
            name,
        );
        self
    }

    /// Retries calls where `config` allows (`spec.upstreams.<name>.retry`).
    pub fn with_retry(mut self, config: &attache_config::Retry, metrics: &Metrics) -> Self {
        self.retry = Some(retry::Retry::new(
            config,
            self.balance.clone(),
            self.name.clone(),
            metrics.family(),
        ));
        self
    }
}
