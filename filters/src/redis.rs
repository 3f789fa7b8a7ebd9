//! attache's one Redis client, under every Redis-backed concern (idempotency records, shared
//! rate limits): the three deployments a store URL names, one script invocation per operation,
//! and the reconnection rules.
//!
//! - standalone: `redis://host:6379[/db]`, `rediss://` for TLS, `redis+unix:///path`;
//! - Cluster: `redis+cluster://h1:6379,h2:6379` (`rediss+cluster://`), its seeds;
//! - Sentinel: `redis+sentinel://h1:26379,h2:26379/<service>[/db]` (`rediss+sentinel://`).
//!
//! The connection is made lazily and re-made after failures, so an unreachable Redis delays
//! neither start nor readiness; operations fail fast (callers bound them with their own
//! timeout).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

/// Standalone (one connection manager), Cluster (a cluster connection made on first use and
/// again after it fails) or Sentinel.
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

/// A Redis deployment, as a store URL names it.
pub struct Redis {
    backend: Backend,
}

fn config_error(message: String) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, "invalid Redis URL", message))
}

/// A Sentinel-managed master: `rest` is `h1:p,h2:p/<service>[/db]` (port 26379 when none).
fn sentinel(scheme: &str, rest: &str, timeout: Duration) -> Result<Backend, RedisError> {
    let mut parts = rest.splitn(3, '/');
    let hosts = parts.next().unwrap_or_default();
    let service = parts.next().filter(|s| !s.is_empty()).ok_or_else(|| {
        config_error(
            "a Sentinel URL needs a service name: redis+sentinel://host:26379/mymaster".into(),
        )
    })?;
    let db: i64 = match parts.next().filter(|d| !d.is_empty()) {
        Some(d) => d
            .parse()
            .map_err(|_| config_error(format!("invalid database {d:?}")))?,
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
    )?;
    Ok(Backend::Sentinel(Box::new(SentinelBackend {
        client: tokio::sync::Mutex::new(client),
        conn: tokio::sync::Mutex::new(None),
        timeout,
    })))
}

/// A Redis Cluster: `rest` is its seeds, `h1:p,h2:p`.
fn cluster(scheme: &str, rest: &str, timeout: Duration) -> Result<Backend, RedisError> {
    let seeds: Vec<String> = rest
        .trim_end_matches('/')
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| format!("{scheme}://{s}"))
        .collect();
    let client = ClusterClient::builder(seeds.clone())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .build()?;
    Ok(Backend::Cluster(Box::new(ClusterBackend {
        client,
        conn: tokio::sync::Mutex::new(None),
        seeds,
    })))
}

impl Redis {
    /// A client for `url` (see the module's documentation for the forms), with `timeout` for
    /// connecting and for each response. Connects on first use.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RedisError> {
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
            let client = redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                // One attempt per (re)connection: a refusal is retried once by `invoke`, and
                // while Redis is down a request gets its answer at once rather than after a
                // backoff sleep.
                .set_number_of_retries(0);
            Backend::Single(ConnectionManager::new_lazy_with_config(client, config)?)
        };
        Ok(Self { backend })
    }

    async fn conn(&self) -> Result<Conn, RedisError> {
        match &self.backend {
            Backend::Single(c) => Ok(Conn::Single(c.clone())),
            Backend::Cluster(cluster) => {
                let mut slot = cluster.conn.lock().await;
                if let Some(c) = slot.as_ref() {
                    return Ok(Conn::Cluster(c.clone()));
                }
                let c = cluster.client.get_async_connection().await?;
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
                    .await?;
                *slot = Some(c.clone());
                Ok(Conn::Sentinel(c))
            }
        }
    }

    /// Runs one script: one round trip (`EVALSHA`, plus a load on `NOSCRIPT`).
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let mut conn = self.conn().await?;
        match invocation.invoke_async(&mut conn).await {
            Ok(v) => Ok(v),
            // A refused connection sent nothing, so one more try is safe, and it is what makes
            // a Redis that came back usable at once: the connection manager keeps the result of
            // its last attempt, made while Redis was down, hands that error to the next caller
            // and only then starts a new attempt. That caller, the first request after Redis
            // returns, waits for the new attempt instead of failing.
            Err(e) if e.is_connection_refusal() => {
                self.failed().await;
                let mut conn = self.conn().await?;
                match invocation.invoke_async(&mut conn).await {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        self.failed().await;
                        Err(e)
                    }
                }
            }
            Err(e) => {
                self.failed().await;
                Err(e)
            }
        }
    }

    /// `WAIT replicas timeout`: how many replicas acknowledged the writes made so far on this
    /// client's connection (a Cluster asks every primary and answers the least).
    pub async fn wait(&self, replicas: u32, timeout: Duration) -> Result<i64, RedisError> {
        let mut conn = self.conn().await?;
        redis::cmd("WAIT")
            .arg(replicas)
            .arg(timeout.as_millis() as u64)
            .query_async(&mut conn)
            .await
    }

    /// After a failed operation: with Sentinel, ask for the primary again next time (it may
    /// have failed over).
    async fn failed(&self) {
        if let Backend::Sentinel(sentinel) = &self.backend {
            sentinel.conn.lock().await.take();
        }
    }

    /// `INFO memory` of the deployment: of the one server, of the Sentinels' primary, or of
    /// every seed of a Cluster.
    pub async fn info_memory(&self) -> Result<Vec<String>, RedisError> {
        match &self.backend {
            Backend::Single(c) => {
                let mut conn = c.clone();
                Ok(vec![info_memory(&mut conn).await?])
            }
            Backend::Sentinel(_) => {
                let mut conn = self.conn().await?;
                Ok(vec![info_memory(&mut conn).await?])
            }
            Backend::Cluster(cluster) => {
                let mut all = Vec::new();
                for seed in &cluster.seeds {
                    let client = redis::Client::open(seed.as_str())?;
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    all.push(info_memory(&mut conn).await?);
                }
                Ok(all)
            }
        }
    }
}

async fn info_memory(conn: &mut impl ConnectionLike) -> Result<String, RedisError> {
    redis::cmd("INFO").arg("memory").query_async(conn).await
}

/// Whether `store` names a Redis deployment (any of the forms this module reads).
pub fn is_redis_url(store: &str) -> bool {
    ["redis://", "rediss://", "redis+"]
        .iter()
        .any(|p| store.starts_with(p))
}
