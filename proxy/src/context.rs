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
    snapshot: Option<(String, Duration)>,
    confirm: (u32, Duration),
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
    /// The memory store with a snapshot file, and the file: written on drain too.
    snapshot: std::sync::Mutex<Option<(Arc<MemoryStore>, std::path::PathBuf)>>,
}

/// Writes the memory store's state to `file` (aside, then renamed over it, so a crash
/// mid-write leaves the last good snapshot).
fn write_snapshot(store: &MemoryStore, file: &std::path::Path) {
    let tmp = file.with_extension("tmp");
    let written = std::fs::write(&tmp, store.save()).and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = written {
        tracing::warn!(file = %file.display(), error = %e, "the Context API's snapshot could not be written");
    }
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
    /// Writes the memory store's snapshot now (on drain), when it has a file.
    pub fn save_snapshot(&self) {
        let slot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((store, file)) = slot.as_ref() {
            write_snapshot(store, file);
        }
    }

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
            snapshot: config
                .snapshot_file
                .clone()
                .map(|f| (f, config.snapshot_interval.get())),
            confirm: (config.confirm_replicas, config.confirm_timeout.get()),
            prefix: config.key_prefix.clone(),
            timeout: config.store_timeout.get(),
            limits: config.limits,
        };
        self.current.get_or_make(key, |key, _| {
            // Whatever store comes next, the previous one's snapshot is not written again.
            *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let store: Arc<dyn Store> = if key.store == "memory" {
                let memory = Arc::new(MemoryStore::new(limits(&key.limits)));
                crate::kept::tend(Arc::downgrade(&memory), SWEEP_EVERY, MemoryStore::sweep);
                if let Some((file, every)) = &key.snapshot {
                    let file = std::path::PathBuf::from(file);
                    match std::fs::read_to_string(&file) {
                        Ok(text) => match memory.load(&text) {
                            Ok(()) => tracing::info!(file = %file.display(), "the Context API's state was read from its snapshot"),
                            Err(e) => tracing::warn!(file = %file.display(), error = %e, "the Context API's snapshot could not be read; starting empty"),
                        },
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => tracing::warn!(file = %file.display(), error = %e, "the Context API's snapshot could not be read; starting empty"),
                    }
                    let to = file.clone();
                    crate::kept::tend(Arc::downgrade(&memory), *every, move |m| {
                        write_snapshot(m, &to);
                    });
                    *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((memory.clone(), file));
                }
                memory
            } else {
                Arc::new(
                    RedisStore::new(&key.store, &key.prefix, key.timeout, limits(&key.limits))
                        .map_err(|e| anyhow::anyhow!("spec.context.store: {e}"))?
                        .confirm_with(key.confirm.0, key.confirm.1),
                )
            };
            Ok(store)
        })
    }
}
