//! The Redis store (specs/idempotency.md §7): one hash per record at
//! `<prefix>:{<H(scope)>.<H(key)>}` (the braces are a Cluster hash tag), fields `v` (schema),
//! `st` (`run`, `done`, `tomb`), `fp`, `own`, `sc`, `hd`, `b`. Each operation is one Lua script
//! and one round trip (`EVALSHA`, loading the script on `NOSCRIPT`). Scripts take keys only
//! through `KEYS` and decide nothing on time: the TTL is the lease, completion sets the
//! retention.
//!
//! The connection (`crate::redis`, shared with the other Redis-backed concerns) is made lazily
//! and re-made after failures, so an unreachable Redis delays neither start nor readiness;
//! operations fail fast (the caller bounds them with `store_timeout`).

use std::time::Duration;

use bytes::Bytes;
use redis::{Script, Value};

use crate::redis::Redis;

use super::store::{Claim, Owner, RecordId, Store, StoreError, StoreFuture, Stored, Transition};

const CLAIM: &str = r"
local t = redis.call('TYPE', KEYS[1]).ok
if t == 'none' then
  redis.call('HSET', KEYS[1], 'v', '1', 'st', 'run', 'fp', ARGV[1], 'own', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'claimed'}
end
if t ~= 'hash' or redis.call('HGET', KEYS[1], 'v') ~= '1' then
  return {'foreign'}
end
local r = redis.call('HMGET', KEYS[1], 'st', 'fp', 'sc', 'hd', 'b')
if ARGV[4] == '1' and r[2] ~= ARGV[1] then return {'mismatch'} end
if r[1] == 'run' then return {'in_flight'} end
if r[1] == 'done' then return {'done', r[3], r[4], r[5]} end
if r[1] == 'tomb' then return {'tomb', r[3], r[4]} end
return {'foreign'}
";

const COMPLETE: &str = r"
local r = redis.call('HMGET', KEYS[1], 'own', 'st')
if r[1] ~= ARGV[1] or r[2] ~= 'run' then return 0 end
redis.call('HSET', KEYS[1], 'st', ARGV[2], 'sc', ARGV[3], 'hd', ARGV[4], 'b', ARGV[5])
redis.call('HDEL', KEYS[1], 'own')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
";

const RELEASE: &str = r"
local r = redis.call('HMGET', KEYS[1], 'own', 'st')
if r[1] ~= ARGV[1] or r[2] ~= 'run' then return 0 end
redis.call('DEL', KEYS[1])
return 1
";

const RENEW: &str = r"
local r = redis.call('HMGET', KEYS[1], 'own', 'st')
if r[1] ~= ARGV[1] or r[2] ~= 'run' then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

pub struct RedisStore {
    redis: Redis,
    prefix: String,
    claim: Script,
    complete: Script,
    release: Script,
    renew: Script,
}

impl RedisStore {
    /// A store for `url`: `redis://`, `rediss://`, `redis+unix://` (standalone) or
    /// `redis+cluster://h1:p,h2:p` (`rediss+cluster://` for TLS; Cluster seeds). Connects on
    /// first use.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let redis = Redis::new(url, timeout).map_err(unavailable)?;
        Ok(Self {
            redis,
            prefix: prefix.to_owned(),
            claim: Script::new(CLAIM),
            complete: Script::new(COMPLETE),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
        })
    }

    /// Runs one script: one round trip (plus a load on `NOSCRIPT`).
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.redis.invoke(invocation).await.map_err(unavailable)
    }

    fn key(&self, id: &RecordId) -> String {
        format!("{}:{{{:032x}.{:032x}}}", self.prefix, id.scope, id.key)
    }

    /// The largest `maxmemory` and, if any node may evict, its `maxmemory-policy` (every seed
    /// of a Cluster is asked): eviction re-enables execution.
    pub async fn eviction_policy(&self) -> Result<(u64, String), StoreError> {
        let infos = self.redis.info_memory().await.map_err(unavailable)?;
        let mut worst = (0, "noeviction".to_owned());
        for info in infos {
            let (max, policy) = parse_memory(&info);
            if max > 0 && policy != "noeviction" {
                return Ok((max, policy));
            }
            worst.0 = worst.0.max(max);
        }
        Ok(worst)
    }
}

fn parse_memory(info: &str) -> (u64, String) {
    {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        let max = field("maxmemory").and_then(|v| v.parse().ok()).unwrap_or(0);
        (max, field("maxmemory_policy").unwrap_or_default())
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn bytes(v: Option<&Value>) -> Bytes {
    match v {
        Some(Value::BulkString(b)) => Bytes::copy_from_slice(b),
        Some(Value::SimpleString(s)) => Bytes::copy_from_slice(s.as_bytes()),
        _ => Bytes::new(),
    }
}

fn stored(items: &[Value], with_body: bool) -> Option<Stored> {
    let status = std::str::from_utf8(&bytes(items.get(1)))
        .ok()?
        .parse()
        .ok()?;
    let headers = Stored::decode_headers(&bytes(items.get(2)))?;
    let body = if with_body {
        bytes(items.get(3))
    } else {
        Bytes::new()
    };
    Some(Stored {
        status,
        headers,
        body,
    })
}

fn transition(v: i64) -> Transition {
    if v == 1 {
        Transition::Done
    } else {
        Transition::LostLease
    }
}

impl Store for RedisStore {
    fn claim<'a>(
        &'a self,
        id: &'a RecordId,
        fingerprint: Option<[u8; 32]>,
        owner: Owner,
        lease: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let reply: Vec<Value> = self
                .invoke(
                    self.claim
                        .key(self.key(id))
                        .arg(fingerprint.map(|f| f.to_vec()).unwrap_or_default())
                        .arg(format!("{owner:032x}"))
                        .arg(lease.as_millis() as u64)
                        .arg(if fingerprint.is_some() { "1" } else { "0" }),
                )
                .await?;
            let kind = bytes(reply.first());
            Ok(match &kind[..] {
                b"claimed" => Claim::Claimed,
                b"mismatch" => Claim::Mismatch,
                b"in_flight" => Claim::InFlight,
                b"done" => stored(&reply, true).map_or(Claim::Foreign, Claim::Done),
                b"tomb" => stored(&reply, false).map_or(Claim::Foreign, Claim::Tombstone),
                _ => Claim::Foreign,
            })
        })
    }

    fn complete<'a>(
        &'a self,
        id: &'a RecordId,
        owner: Owner,
        response: &'a Stored,
        tombstone: bool,
        retention: Duration,
    ) -> StoreFuture<'a, Transition> {
        Box::pin(async move {
            let reply: i64 = self
                .invoke(
                    self.complete
                        .key(self.key(id))
                        .arg(format!("{owner:032x}"))
                        .arg(if tombstone { "tomb" } else { "done" })
                        .arg(response.status)
                        .arg(response.encode_headers())
                        .arg(if tombstone {
                            &[][..]
                        } else {
                            &response.body[..]
                        })
                        .arg(retention.as_millis() as u64),
                )
                .await?;
            Ok(transition(reply))
        })
    }

    fn release<'a>(&'a self, id: &'a RecordId, owner: Owner) -> StoreFuture<'a, Transition> {
        Box::pin(async move {
            let reply: i64 = self
                .invoke(self.release.key(self.key(id)).arg(format!("{owner:032x}")))
                .await?;
            Ok(transition(reply))
        })
    }

    fn renew<'a>(
        &'a self,
        id: &'a RecordId,
        owner: Owner,
        lease: Duration,
    ) -> StoreFuture<'a, Transition> {
        Box::pin(async move {
            let reply: i64 = self
                .invoke(
                    self.renew
                        .key(self.key(id))
                        .arg(format!("{owner:032x}"))
                        .arg(lease.as_millis() as u64),
                )
                .await?;
            Ok(transition(reply))
        })
    }
}
