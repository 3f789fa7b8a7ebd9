//! DNS endpoints (`spec.upstreams.<name>.dns_refresh`): each endpoint whose host is a name
//! stands for every address the name resolves to (all A and AAAA records), looked up again on
//! an interval, and the balance's set is replaced when the addresses change.
//!
//! Until a name's first lookup succeeds it is one endpoint, resolved when a connection is
//! opened (as without `dns_refresh`); a lookup that fails or finds nothing keeps the last good
//! addresses. An endpoint whose address stays keeps its pool (the same `Endpoint`); the
//! balancer's and passive health's state are made anew for a changed set, by the policy the
//! upstream was configured with. The task lives as long as the balance it feeds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attache_config::UpstreamUrl;

use super::balance::{Balance, Balancer, Set};
use super::endpoint::Endpoint;
use super::health::Health;

/// Makes an endpoint of a URL, at one of its name's addresses or (`None`) at the name.
pub type MakeEndpoint =
    Box<dyn Fn(&UpstreamUrl, Option<SocketAddr>) -> anyhow::Result<Endpoint> + Send + Sync>;

/// Makes the balancer and the health for a set of endpoints, by their addresses.
pub type MakePolicy =
    Box<dyn Fn(&[String]) -> anyhow::Result<(Arc<dyn Balancer>, Health)> + Send + Sync>;

/// Starts re-resolving `urls` every `every` for `balance`, whose current set was made from
/// them one endpoint per URL; the balance to use from then on.
pub fn start(
    balance: Balance,
    urls: Vec<UpstreamUrl>,
    every: Duration,
    make_endpoint: MakeEndpoint,
    make_policy: MakePolicy,
    upstream: Arc<str>,
) -> Balance {
    let set = balance.set();
    let mut current: Vec<Key> = Vec::with_capacity(urls.len());
    let mut endpoints = HashMap::new();
    for (i, ep) in set.endpoints.iter().enumerate() {
        current.push((i, None));
        endpoints.insert((i, None), ep.clone());
    }
    let resolver = Resolver {
        urls,
        make_endpoint,
        make_policy,
        upstream,
        last_good: HashMap::new(),
        current,
        endpoints,
    };
    let (balance, handle) = balance.swappable();
    tokio::spawn(resolver.run(handle, every));
    balance
}

/// An endpoint of the set: the URL's index, and the address it is connected at (`None`: the
/// name itself, or an address literal).
type Key = (usize, Option<SocketAddr>);

struct Resolver {
    urls: Vec<UpstreamUrl>,
    make_endpoint: MakeEndpoint,
    make_policy: MakePolicy,
    upstream: Arc<str>,
    /// Each name's addresses, from its last lookup that found any.
    last_good: HashMap<usize, Vec<SocketAddr>>,
    current: Vec<Key>,
    endpoints: HashMap<Key, Endpoint>,
}

impl Resolver {
    async fn run(mut self, balance: std::sync::Weak<arc_swap::ArcSwap<Set>>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The first tick is at once: a name is expanded as soon as it resolves.
            tick.tick().await;
            self.lookup(every).await;
            let Some(current) = balance.upgrade() else {
                return;
            };
            if let Some(set) = self.next_set() {
                tracing::info!(
                    upstream = %self.upstream,
                    endpoints = ?set.addresses(),
                    "upstream endpoints changed after DNS resolution"
                );
                current.store(Arc::new(set));
            }
        }
    }

    /// Looks every name up once (each within `limit`), keeping what each last found.
    async fn lookup(&mut self, limit: Duration) {
        for (i, url) in self.urls.iter().enumerate() {
            if url.host.parse::<std::net::IpAddr>().is_ok() {
                continue;
            }
            let lookup = tokio::net::lookup_host((url.host.as_str(), url.port));
            match tokio::time::timeout(limit, lookup).await {
                Ok(Ok(found)) => {
                    let mut addrs: Vec<SocketAddr> = found.collect();
                    addrs.sort();
                    addrs.dedup();
                    if !addrs.is_empty() {
                        self.last_good.insert(i, addrs);
                    }
                }
                Ok(Err(e)) => tracing::warn!(
                    upstream = %self.upstream, host = %url.host, error = %e,
                    "DNS lookup failed; keeping the last good addresses"
                ),
                Err(_) => tracing::warn!(
                    upstream = %self.upstream, host = %url.host,
                    "DNS lookup timed out; keeping the last good addresses"
                ),
            }
        }
    }

    /// The set the lookups call for, when it differs from the current one.
    fn next_set(&mut self) -> Option<Set> {
        let mut keys: Vec<Key> = Vec::new();
        for i in 0..self.urls.len() {
            match self.last_good.get(&i) {
                Some(addrs) => keys.extend(addrs.iter().map(|a| (i, Some(*a)))),
                None => keys.push((i, None)),
            }
        }
        if keys == self.current {
            return None;
        }
        let mut endpoints = Vec::with_capacity(keys.len());
        let mut kept = HashMap::with_capacity(keys.len());
        for key in &keys {
            let ep = match self.endpoints.get(key) {
                Some(ep) => ep.clone(),
                None => match (self.make_endpoint)(&self.urls[key.0], key.1) {
                    Ok(ep) => ep,
                    Err(e) => {
                        tracing::warn!(upstream = %self.upstream, error = %e, "cannot make an endpoint");
                        return None;
                    }
                },
            };
            kept.insert(*key, ep.clone());
            endpoints.push(ep);
        }
        let addresses: Vec<String> = endpoints.iter().map(Endpoint::address).collect();
        let (balancer, health) = match (self.make_policy)(&addresses) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(upstream = %self.upstream, error = %e, "cannot balance the resolved endpoints");
                return None;
            }
        };
        self.current = keys;
        self.endpoints = kept;
        Some(Set {
            endpoints: endpoints.into(),
            balancer,
            health: Arc::new(health),
        })
    }
}
