//! Rate-limit state that outlives config snapshots: each local limit's buckets (a reload that
//! leaves a limit unchanged must not hand every client a fresh burst) and the Redis client of
//! shared limits. `steps/ratelimit.rs` builds each leg's step over them.
//!
//! A keyed local limit is swept for idle keys every [`SWEEP_EVERY`] by a task that ends when
//! the limit is dropped (a reload that removes or changes it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_config::{LimitKey, RateLimit};
use attache_filters::metrics::Metrics;
use attache_filters::ratelimit::LocalLimiter;
use attache_filters::ratelimit::metrics::RateLimitFamilies;
use attache_filters::redis::Redis;

use crate::kept::Kept;

/// How often keyed limits drop the keys whose burst is whole again.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The local limits by name, each with the config it was made from; the Redis of shared ones.
#[derive(Default)]
pub struct Limiters {
    local: Mutex<HashMap<String, (RateLimit, Arc<LocalLimiter>)>>,
    redis: Kept<(String, Duration), Arc<Redis>>,
}

impl Limiters {
    /// The local limiter of `limit`: the one in use when the limit is unchanged, else a new one
    /// with fresh buckets.
    pub fn local(&self, limit: &RateLimit, metrics: &Metrics) -> Arc<LocalLimiter> {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made_from, limiter)) = local.get(&limit.name)
            && made_from == limit
        {
            return limiter.clone();
        }
        let families = metrics.family::<RateLimitFamilies>();
        let keyed = (limit.key != LimitKey::None)
            .then(|| (limit.max_keys as usize, families.overflow(&limit.name)));
        let limiter = Arc::new(LocalLimiter::new(
            limit.rate.count,
            limit.rate.per,
            limit.burst(),
            keyed,
        ));
        if limit.key != LimitKey::None {
            let keys = families.keys(&limit.name);
            crate::kept::tend(Arc::downgrade(&limiter), SWEEP_EVERY, move |l| {
                l.evict_idle();
                keys.set(i64::try_from(l.keys()).unwrap_or(i64::MAX));
            });
        }
        local.insert(limit.name.clone(), (limit.clone(), limiter.clone()));
        limiter
    }

    /// Forgets the local limits no longer configured (their buckets go with them).
    pub fn retain(&self, names: &[&str]) {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local.retain(|name, _| names.contains(&name.as_str()));
    }

    /// The client of the shared limits' store, kept while its URL and timeout stay.
    pub fn redis(&self, url: &str, timeout: Duration) -> anyhow::Result<Arc<Redis>> {
        self.redis.get_or_make((url.to_owned(), timeout), |_, _| {
            Redis::new(url, timeout)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("spec.rate_limits.store: {e}"))
        })
    }
}
