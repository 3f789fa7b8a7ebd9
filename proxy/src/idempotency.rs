//! The idempotency store, which outlives config snapshots (a reload must not forget which
//! requests ran), and the scope secret; `steps/idempotency.rs` builds the step with them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_config::{Config, EvictionCheck, Idempotency};
use attache_filters::idempotency::redis_store::RedisStore;
use attache_filters::idempotency::store::{MemoryStore, Store};
use attache_filters::trace_context::ids::{IdGenerator, RandomIds};

use crate::kept::Kept;

/// What decides whether a store must be replaced on reload.
#[derive(PartialEq)]
struct StoreKey {
    store: String,
    prefix: String,
    timeout: Duration,
    memory_max_records: u32,
    memory_max_bytes: u64,
}

/// The store, kept across reloads, and the secret the memory store made up.
#[derive(Default)]
pub struct Stores {
    current: Kept<StoreKey, Arc<dyn Store>>,
    random_secret: Mutex<Option<Vec<u8>>>,
}

/// `eviction_check: refuse`: attache does not start against a Redis that may evict records.
/// An unreachable Redis is not checked (and does not delay the start).
pub async fn refuse_evicting_redis(config: &Config) -> anyhow::Result<()> {
    let Some(idem) = config
        .spec
        .idempotency
        .as_ref()
        .filter(|i| i.uses_redis() && i.eviction_check == EvictionCheck::Refuse)
    else {
        return Ok(());
    };
    let store = RedisStore::new(&idem.store, &idem.key_prefix, idem.store_timeout.get())
        .map_err(|e| anyhow::anyhow!("spec.idempotency.store: {e}"))?;
    if let Ok(Ok((max, policy))) =
        tokio::time::timeout(idem.store_timeout.get() * 4, store.eviction_policy()).await
        && max > 0
        && policy != "noeviction"
    {
        anyhow::bail!(
            "spec.idempotency.eviction_check is refuse and Redis has maxmemory-policy {policy}: an evicted record lets a retry run again; set maxmemory-policy noeviction"
        );
    }
    Ok(())
}

impl Stores {
    /// The store for `idem`: the one in use when its settings are unchanged, else a new one.
    pub fn get(&self, idem: &Idempotency) -> anyhow::Result<Arc<dyn Store>> {
        let key = StoreKey {
            store: idem.store.clone(),
            prefix: idem.key_prefix.clone(),
            timeout: idem.store_timeout.get(),
            memory_max_records: idem.memory_max_records,
            memory_max_bytes: idem.memory_max_bytes.0,
        };
        self.current.get_or_make(key, |_, _| {
            let store: Arc<dyn Store> = if idem.uses_redis() {
                let redis = Arc::new(
                    RedisStore::new(&idem.store, &idem.key_prefix, idem.store_timeout.get())
                        .map_err(|e| anyhow::anyhow!("spec.idempotency.store: {e}"))?,
                );
                if idem.eviction_check != EvictionCheck::Off {
                    let check = redis.clone();
                    tokio::spawn(async move {
                        match check.eviction_policy().await {
                            Ok((max, policy)) if max > 0 && policy != "noeviction" => tracing::warn!(
                                maxmemory = max,
                                policy,
                                "Redis may evict idempotency records (maxmemory-policy is not noeviction): an evicted record lets a retry run again"
                            ),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "Redis is not reachable yet; idempotency claims fail until it is")
                            }
                        }
                    });
                }
                redis
            } else {
                Arc::new(
                    MemoryStore::new(idem.memory_max_records as usize)
                        .max_bytes(usize::try_from(idem.memory_max_bytes.0).unwrap_or(usize::MAX)),
                )
            };
            Ok(store)
        })
    }

    /// The scope secret: the configured one, or one made up for this process.
    pub fn secret(&self, idem: &Idempotency) -> Vec<u8> {
        if let Some(s) = idem.scope_secret.as_deref().filter(|s| !s.is_empty()) {
            return s.as_bytes().to_vec();
        }
        let mut slot = self.random_secret.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| RandomIds::default().trace_id().0.to_be_bytes().to_vec())
            .clone()
    }
}
