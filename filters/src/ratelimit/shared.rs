//! A shared limit: the same GCRA as a local one, computed in Redis so that every replica
//! draws on one budget.
//!
//! One script per check, one round trip (`EVALSHA`), on one key: the theoretical arrival
//! time in microseconds of the Redis server's clock (`TIME`), so replicas' clocks never
//! matter. The key is `<prefix>:{<limit>:<H(key)>}`: the braces are a Cluster hash tag (each
//! key lives whole on one node), and `H` is SHA-256 of the key's bytes, so an API key used as a
//! limit key is never written to Redis. The value expires when its burst is whole again, so
//! idle keys cost Redis nothing.
//!
//! The state is a time, meaningful under any rate: a limit whose rate changes keeps its key,
//! since replicas do not reload at one instant, and a key that changed with the config would
//! hand each config version a burst of its own.

use std::time::Duration;

use redis::{RedisError, Script};
use sha2::{Digest, Sha256};

use super::Verdict;
use crate::redis::Redis;

/// `ARGV[1]`: the interval one request's share takes to come back (µs); `ARGV[2]`: the burst
/// tolerance, `(burst - 1) * interval` (µs). Returns `{allowed, wait_us, reset_us}`.
const CHECK: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - tau then
  return {0, tat - tau - now, tat - now}
end
local next = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000))
return {1, 0, next - now}
";

/// One shared limit's settings in Redis.
pub struct SharedLimiter {
    redis: std::sync::Arc<Redis>,
    script: Script,
    /// `<prefix>:{<limit>:`, to which each key's digest and `}` are appended.
    key_start: String,
    interval_us: u64,
    tau_us: u64,
    burst: u32,
}

impl SharedLimiter {
    pub fn new(
        redis: std::sync::Arc<Redis>,
        prefix: &str,
        limit: &str,
        count: u32,
        per: Duration,
        burst: u32,
    ) -> Self {
        let interval_us = (per.as_micros() / u128::from(count.max(1))).max(1) as u64;
        let burst = burst.max(1);
        Self {
            redis,
            script: Script::new(CHECK),
            key_start: format!("{prefix}:{{{limit}:"),
            interval_us,
            tau_us: interval_us * u64::from(burst - 1),
            burst,
        }
    }

    /// The Redis key of `key` (`None`: the limit's one bucket).
    pub fn redis_key(&self, key: Option<&[u8]>) -> String {
        let mut out = String::with_capacity(self.key_start.len() + 33);
        out.push_str(&self.key_start);
        match key {
            Some(k) => {
                let digest = Sha256::digest(k);
                crate::codec::hex::push(&mut out, &digest[..16]);
            }
            None => out.push_str("all"),
        }
        out.push('}');
        out
    }

    /// Checks one request under `redis_key`: one round trip.
    pub fn check<'a>(
        &'a self,
        redis_key: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Verdict, RedisError>> + Send + 'a>> {
        Box::pin(self.run(redis_key))
    }

    async fn run(&self, redis_key: &str) -> Result<Verdict, RedisError> {
        let (allowed, wait_us, reset_us): (i64, i64, i64) = self
            .redis
            .invoke(
                self.script
                    .key(redis_key)
                    .arg(self.interval_us)
                    .arg(self.tau_us),
            )
            .await?;
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(if allowed == 1 {
            // As governor counts it: the shares left of the burst after this one.
            let used = u64::try_from(reset_us)
                .unwrap_or(0)
                .div_ceil(self.interval_us);
            Verdict::Allowed {
                remaining: self
                    .burst
                    .saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)),
                reset: us(reset_us),
            }
        } else {
            Verdict::Limited {
                retry_after: us(wait_us),
                reset: us(reset_us),
            }
        })
    }

    /// The burst and the interval after which one share of it comes back.
    pub fn shape(&self) -> (u32, Duration) {
        (self.burst, Duration::from_micros(self.interval_us))
    }
}
