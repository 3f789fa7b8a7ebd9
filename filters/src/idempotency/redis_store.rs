//! The Redis store (specs/idempotency.md §7): one hash per record at
//! `<prefix>:{<H(scope)>.<H(key)>}` (the braces are a Cluster hash tag), fields `v` (schema),
//! `st` (`run`, `done`, `tomb`), `fp`, `own`, `sc`, `hd`, `b`. Each operation is one Lua script
//! and one round trip (`EVALSHA`, loading the script on `NOSCRIPT`). Scripts take keys only
//! through `KEYS` and decide nothing on time: the TTL is the lease, completion sets the
//! retention.
//!
//! The connection is made lazily and re-made after failures, so an unreachable Redis delays
//! neither start nor readiness; operations fail fast (the caller bounds them with
//! `store_timeout`).

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

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

/// Standalone (one connection manager) or Cluster (a cluster connection made on first use and
/// again after it fails).
enum Backend {
    Single(ConnectionManager),
    Cluster(Box<ClusterBackend>),
    Sentinel(Box<SentinelBackend>),
}

/// The primary the Sentinels name, asked again after any failed operation (a failover).
struct SentinelBackend {
    client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    timeout: Duration,
}

struct ClusterBackend {
    client: ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    seeds: Vec<String>,
}

/// A connection of either kind, for the scripts.
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(redis::aio::MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

pub struct RedisStore {
    backend: Backend,
    prefix: String,
    claim: Script,
    complete: Script,
    release: Script,
    renew: Script,
}

/// A Sentinel-managed master: `rest` is `h1:p,h2:p/<service>[/db]` (port 26379 when none).
fn sentinel(scheme: &str, rest: &str, timeout: Duration) -> Result<Backend, StoreError> {
    let mut parts = rest.splitn(3, '/');
    let hosts = parts.next().unwrap_or_default();
    let service = parts.next().filter(|s| !s.is_empty()).ok_or_else(|| {
        StoreError::Unavailable(
            "a Sentinel URL needs a service name: redis+sentinel://host:26379/mymaster".into(),
        )
    })?;
    let db: i64 = match parts.next().filter(|d| !d.is_empty()) {
        Some(d) => d
            .parse()
            .map_err(|_| StoreError::Unavailable(format!("invalid database {d:?}")))?,
        None => 0,
    };
    let seeds: Vec<String> = hosts
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|h| {
            let has_port = h
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
            if has_port {
                format!("{scheme}://{h}")
            } else {
                format!("{scheme}://{h}:26379")
            }
        })
        .collect();
    let mut node = redis::sentinel::SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(redis::RedisConnectionInfo::default().set_db(db));
    if scheme == "rediss" {
        node = node.set_tls_mode(redis::TlsMode::Secure);
    }
    let client = redis::sentinel::SentinelClient::build(
        seeds,
        service,
        Some(node),
        redis::sentinel::SentinelServerType::Master,
    )
    .map_err(unavailable)?;
    Ok(Backend::Sentinel(Box::new(SentinelBackend {
        client: tokio::sync::Mutex::new(client),
        conn: tokio::sync::Mutex::new(None),
        timeout,
    })))
}

/// A Redis Cluster: `rest` is its seeds, `h1:p,h2:p`.
fn cluster(scheme: &str, rest: &str, timeout: Duration) -> Result<Backend, StoreError> {
    let seeds: Vec<String> = rest
        .trim_end_matches('/')
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| format!("{scheme}://{s}"))
        .collect();
    let client = ClusterClient::builder(seeds.clone())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .build()
        .map_err(unavailable)?;
    Ok(Backend::Cluster(Box::new(ClusterBackend {
        client,
        conn: tokio::sync::Mutex::new(None),
        seeds,
    })))
}

impl RedisStore {
    /// A store for `url`: `redis://`, `rediss://`, `redis+unix://` (standalone) or
    /// `redis+cluster://h1:p,h2:p` (`rediss+cluster://` for TLS; Cluster seeds). Connects on
    /// first use.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let with_scheme = |plain: &str, tls: &str| {
            url.strip_prefix(plain)
                .map(|rest| ("redis", rest))
                .or_else(|| url.strip_prefix(tls).map(|rest| ("rediss", rest)))
        };
        let backend = if let Some((scheme, rest)) =
            with_scheme("redis+sentinel://", "rediss+sentinel://")
        {
            sentinel(scheme, rest, timeout)?
        } else if let Some((scheme, rest)) = with_scheme("redis+cluster://", "rediss+cluster://") {
            cluster(scheme, rest, timeout)?
        } else {
            let client = redis::Client::open(url).map_err(unavailable)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                // One attempt per (re)connection: a refusal is retried once by `invoke`, and
                // while Redis is down a keyed request gets its 503 at once rather than after a
                // backoff sleep.
                .set_number_of_retries(0);
            Backend::Single(
                ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?,
            )
        };
        Ok(Self {
            backend,
            prefix: prefix.to_owned(),
            claim: Script::new(CLAIM),
            complete: Script::new(COMPLETE),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
        })
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        match &self.backend {
            Backend::Single(c) => Ok(Conn::Single(c.clone())),
            Backend::Cluster(cluster) => {
                let mut slot = cluster.conn.lock().await;
                if let Some(c) = slot.as_ref() {
                    return Ok(Conn::Cluster(c.clone()));
                }
                let c = cluster
                    .client
                    .get_async_connection()
                    .await
                    .map_err(unavailable)?;
                *slot = Some(c.clone());
                Ok(Conn::Cluster(c))
            }
            Backend::Sentinel(sentinel) => {
                let mut slot = sentinel.conn.lock().await;
                if let Some(c) = slot.as_ref() {
                    return Ok(Conn::Sentinel(c.clone()));
                }
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(sentinel.timeout))
                    .set_response_timeout(Some(sentinel.timeout));
                let c = sentinel
                    .client
                    .lock()
                    .await
                    .get_async_connection_with_config(&config)
                    .await
                    .map_err(unavailable)?;
                *slot = Some(c.clone());
                Ok(Conn::Sentinel(c))
            }
        }
    }

    /// Runs one script: one round trip (plus a load on `NOSCRIPT`).
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        match invocation.invoke_async(&mut conn).await {
            Ok(v) => Ok(v),
            // A refused connection sent nothing, so one more try is safe, and it is what makes
            // a Redis that came back usable at once: the connection manager keeps the result of
            // its last attempt, made while Redis was down, hands that error to the next caller
            // and only then starts a new attempt. That caller, the first request after Redis
            // returns, waits for the new attempt instead of failing.
            Err(e) if e.is_connection_refusal() => {
                drop(self.failed(e).await);
                let mut conn = self.conn().await?;
                match invocation.invoke_async(&mut conn).await {
                    Ok(v) => Ok(v),
                    Err(e) => Err(self.failed(e).await),
                }
            }
            Err(e) => Err(self.failed(e).await),
        }
    }

    /// After a failed operation: with Sentinel, ask for the primary again next time (it may
    /// have failed over).
    async fn failed(&self, e: redis::RedisError) -> StoreError {
        if let Backend::Sentinel(sentinel) = &self.backend {
            sentinel.conn.lock().await.take();
        }
        unavailable(e)
    }

    fn key(&self, id: &RecordId) -> String {
        format!("{}:{{{:032x}.{:032x}}}", self.prefix, id.scope, id.key)
    }

    /// The largest `maxmemory` and, if any node may evict, its `maxmemory-policy` (every seed
    /// of a Cluster is asked): eviction re-enables execution.
    pub async fn eviction_policy(&self) -> Result<(u64, String), StoreError> {
        let infos = match &self.backend {
            Backend::Single(c) => {
                let mut conn = c.clone();
                vec![info_memory(&mut conn).await?]
            }
            Backend::Sentinel(_) => {
                let mut conn = self.conn().await?;
                vec![info_memory(&mut conn).await?]
            }
            Backend::Cluster(cluster) => {
                let mut all = Vec::new();
                for seed in &cluster.seeds {
                    let client = redis::Client::open(seed.as_str()).map_err(unavailable)?;
                    let mut conn = client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(unavailable)?;
                    all.push(info_memory(&mut conn).await?);
                }
                all
            }
        };
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

async fn info_memory(conn: &mut impl ConnectionLike) -> Result<String, StoreError> {
    redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .map_err(unavailable)
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
