//! What outlives a snapshot. A reload builds a new snapshot from the new config, but state
//! made from a part of the config that did not change is kept: upstream connection pools, the
//! span exporter and the access-log writer, the idempotency store, the flag sources with their
//! last good documents, local rate limits' buckets, the Context API's store, the inbound TLS config and its file watcher. [`Lasting`] holds all of it, and each piece follows one pattern,
//! [`Kept`]: a value and the key (the config it was made from) it was
//! made for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_config::{InboundTls, Pool, Protocol};

use attache_filters::metrics::Metrics;

use crate::flags::Flags;
use crate::idempotency::Stores;
use crate::kept::Kept;
use crate::ratelimit::Limiters;
use crate::telemetry::Telemetry;
use crate::tls::server::ServerTls;
use crate::upstream::{self, Client};

/// Everything a reload keeps, handed to each snapshot as it is built.
pub struct Lasting {
    pub metrics: Arc<Metrics>,
    pub clients: Clients,
    pub telemetry: Telemetry,
    pub stores: Stores,
    pub flags: Flags,
    /// Local rate limits' buckets and the shared limits' Redis.
    pub limiters: Limiters,
    /// The Context API's store.
    pub contexts: crate::context::Stores,
    /// The inbound listener's TLS, with its file watcher (`spec.inbound.tls`).
    pub server_tls: Kept<InboundTls, Arc<ServerTls>>,
    /// Upgraded connections authorization let through, revised by each new policy.
    pub tunnels: Arc<attache_filters::authz::tunnels::Tunnels>,
}

impl Lasting {
    pub fn new(metrics: Arc<Metrics>, dev: bool) -> Self {
        Self {
            clients: Clients::new(metrics.clone()),
            telemetry: Telemetry::new(metrics.clone(), dev),
            stores: Stores::default(),
            flags: Flags::new(metrics.clone()),
            limiters: Limiters::default(),
            contexts: crate::context::Stores::default(),
            server_tls: Kept::default(),
            tunnels: Arc::default(),
            metrics,
        }
    }
}

/// Upstream clients by connect timeout and pool policy, kept across reloads so connection
/// pools survive them.
pub struct Clients {
    metrics: Arc<Metrics>,
    by_policy: Mutex<HashMap<(Duration, Pool, Protocol), Client>>,
}

impl Clients {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            by_policy: Mutex::default(),
        }
    }

    /// The registry the pools count their connections in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn get(&self, connect: Duration, pool: Pool, protocol: Protocol) -> Client {
        let mut map = self.by_policy.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((connect, pool, protocol))
            .or_insert_with(|| upstream::client(connect, pool, protocol, &self.metrics))
            .clone()
    }
}
