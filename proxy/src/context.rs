//! The Context API's store, which outlives config snapshots (a reload must not forget the
//! app's state): kept while its backend and limits are unchanged. `steps/context.rs` builds
//! the API over it. The memory store is swept for expired objects every [`SWEEP_EVERY`] by a
//! task that ends with the store.

use std::sync::Arc;
use std::time::Duration;

use attache_config::ContextLimits;
use attache_filters::context::memory::MemoryStore;
use attache_filters::context::store::Limits;

use crate::kept::Kept;

pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Stores {
    memory: Kept<(String, ContextLimits), Arc<MemoryStore>>,
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
    pub fn get(&self, config: &attache_config::Context) -> Arc<MemoryStore> {
        self.memory
            .get_or_insert((config.store.clone(), config.limits), |_, _| {
                let store = Arc::new(MemoryStore::new(limits(&config.limits)));
                crate::kept::tend(Arc::downgrade(&store), SWEEP_EVERY, MemoryStore::sweep);
                store
            })
    }
}
