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
