//! Wiring for Idempotency-Key enforcement: the store outlives config snapshots (a reload must
//! not forget which requests ran), and each route's effective policy is compiled for the
//! filter.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_config::{Config, EvictionCheck, FingerprintBody, Idempotency};
use attache_filters::idempotency::redis_store::RedisStore;
use attache_filters::idempotency::store::{MemoryStore, Store};
use attache_filters::idempotency::{IdempotencyLayer, RoutePolicy, Settings};
use attache_filters::metrics::Metrics;
use attache_filters::trace_context::ids::{IdGenerator, RandomIds};
use http::{HeaderName, HeaderValue, Method, StatusCode};

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
    fn get(&self, idem: &Idempotency) -> anyhow::Result<Arc<dyn Store>> {
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

    fn secret(&self, idem: &Idempotency) -> Vec<u8> {
        if let Some(s) = idem.scope_secret.as_deref().filter(|s| !s.is_empty()) {
            return s.as_bytes().to_vec();
        }
        let mut slot = self.random_secret.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| RandomIds::default().trace_id().0.to_be_bytes().to_vec())
            .clone()
    }

    /// The filter for `config`'s inbound leg, or `None` when idempotency is off.
    pub fn layer(
        &self,
        config: &Config,
        metrics: &Arc<Metrics>,
        dev: bool,
    ) -> anyhow::Result<Option<IdempotencyLayer>> {
        let Some(idem) = &config.spec.idempotency else {
            return Ok(None);
        };
        if !idem.uses_redis() && !dev {
            tracing::warn!(
                "idempotency uses the memory store: records are per process and lost on restart; configure a Redis store for production"
            );
        }
        let upstream_timeout = config
            .spec
            .timeouts
            .with(config.spec.inbound.as_ref().and_then(|i| i.timeouts))
            .request;
        let header = |h: &str| HeaderName::from_bytes(h.as_bytes()).ok();
        let routes = idem
            .policies()
            .into_iter()
            .map(|p| RoutePolicy {
                name: Arc::from(p.route.as_str()),
                path: p.matches.path.clone(),
                path_prefix: p.matches.path_prefix.clone(),
                methods: p
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                    .collect(),
                headers: std::iter::once(&p.header)
                    .chain(&p.header_aliases)
                    .filter_map(|h| header(h))
                    .collect(),
                strict_sf: p.strict_sf,
                required: p.required,
                max_request_bytes: p.max_request_bytes.0,
                max_response_bytes: p.max_response_bytes.0,
                retention: p.retention.get(),
                lease: upstream_timeout.get() + p.lease_grace.get(),
                mismatch_status: StatusCode::from_u16(p.mismatch_status)
                    .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
                release_statuses: p.release_statuses.clone(),
                store_5xx: p.store_5xx,
                in_flight_wait: p.in_flight_wait.get(),
                fail_open: p.fail_open,
                scope_authorization: p.scope_authorization,
                scope_credentials: p.scope_credentials,
                scope_headers: p.scope_headers.iter().filter_map(|h| header(h)).collect(),
                scope_by_route: p.scope_by_route,
                fingerprint_headers: p
                    .fingerprint_headers
                    .iter()
                    .filter_map(|h| header(h))
                    .collect(),
                json_canonical: p.fingerprint_body == FingerprintBody::JsonCanonical,
                replay_headers: p
                    .replay_headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                cloudevents: p.cloudevents.map(|c| c.strict),
            })
            .collect();
        Ok(Some(IdempotencyLayer::new(Settings {
            store: self.get(idem)?,
            secret: self.secret(idem),
            store_timeout: idem.store_timeout.get(),
            policy_url: idem
                .policy_url
                .as_deref()
                .and_then(|u| HeaderValue::from_str(&format!("<{u}>; rel=\"describedby\"")).ok()),
            routes,
            metrics: metrics.family(),
            store_errors: Arc::new(attache_filters::log_throttle::LogThrottle::new(
                config.spec.telemetry.error_log_interval.get(),
            )),
        })))
    }
}
