//! The Context API's store, which outlives config snapshots (a reload must not forget the
//! app's state, nor drop its Redis connections): kept while its backend, key prefix, timeout
//! and limits are unchanged. `steps/context.rs` builds the API over it. The memory store is
//! swept for expired objects every [`SWEEP_EVERY`] (Redis expires its keys itself).

use std::sync::Arc;
use std::time::Duration;

use attache_config::ContextLimits;
use attache_filters::context::memory::MemoryStore;
use attache_filters::context::redis_store::RedisStore;
use attache_filters::context::store::{Limits, Store};

use crate::kept::Kept;

pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What decides whether the store must be replaced on reload.
#[derive(PartialEq)]
struct StoreKey {
    store: String,
    prefix: String,
    timeout: Duration,
    limits: ContextLimits,
}

#[derive(Default)]
pub struct Stores {
    current: Kept<StoreKey, Arc<dyn Store>>,
    /// Push delivery's tasks, kept while the pushed queues, the store and the inbound
    /// listener they deliver to are the same.
    pushers: Kept<PushKey, Arc<crate::context_push::Pushers>>,
}

#[derive(PartialEq)]
struct PushKey {
    push: Vec<attache_config::Push>,
    inbound: std::net::SocketAddr,
    store: String,
    prefix: String,
    max_attempts: u32,
}

/// The store's limits, as the filters take them.
pub fn limits(l: &ContextLimits) -> Limits {
    let size = |b: attache_config::ByteSize| usize::try_from(b.0).unwrap_or(usize::MAX);
    Limits {
        max_value_bytes: size(l.max_value_bytes),
        max_map_bytes: size(l.max_map_bytes),
        max_map_fields: l.max_map_fields as usize,
        max_set_members: l.max_set_members as usize,
    }
}

impl Stores {
    /// Stops push delivery (its section is gone).
    pub fn stop_push(&self) {
        self.pushers.clear();
    }

    /// Starts (or keeps) the delivery tasks of `config.push` over `store`, delivering through
    /// the inbound listener at `inbound`.
    pub fn push(
        &self,
        config: &attache_config::Context,
        store: &Arc<dyn Store>,
        inbound: Option<std::net::SocketAddr>,
        metrics: &attache_filters::metrics::Metrics,
    ) {
        let Some(inbound) = inbound.filter(|_| !config.push.is_empty()) else {
            self.pushers.clear();
            return;
        };
        let key = PushKey {
            push: config.push.clone(),
            inbound,
            store: config.store.clone(),
            prefix: config.key_prefix.clone(),
            max_attempts: config.queue_max_attempts.max(1),
        };
        self.pushers.get_or_insert(key, |key, _| {
            Arc::new(crate::context_push::start(
                &key.push,
                store.clone(),
                key.inbound,
                key.max_attempts,
                metrics.family(),
            ))
        });
    }

    /// The store of `config`: the one in use while its settings stay, else a new one.
    pub fn get(&self, config: &attache_config::Context) -> anyhow::Result<Arc<dyn Store>> {
        let key = StoreKey {
            store: config.store.clone(),
            prefix: config.key_prefix.clone(),
            timeout: config.store_timeout.get(),
            limits: config.limits,
        };
        self.current.get_or_make(key, |key, _| {
            let store: Arc<dyn Store> = if key.store == "memory" {
                let memory = Arc::new(MemoryStore::new(limits(&key.limits)));
                crate::kept::tend(Arc::downgrade(&memory), SWEEP_EVERY, MemoryStore::sweep);
                memory
            } else {
                Arc::new(
                    RedisStore::new(&key.store, &key.prefix, key.timeout, limits(&key.limits))
                        .map_err(|e| anyhow::anyhow!("spec.context.store: {e}"))?,
                )
            };
            Ok(store)
        })
    }
}
