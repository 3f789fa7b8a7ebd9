//! Builder-style settings for the idempotency layer, for services that stack it in-process:
//! a store (memory, or Redis shared by every replica) and the routes it enforces, with the
//! defaults of specs/idempotency.md §1.
//!
//! ```
//! use std::sync::Arc;
//! use attache_filters::idempotency::{IdempotencyLayer, RoutePolicy};
//! use attache_filters::idempotency::store::MemoryStore;
//!
//! let layer = IdempotencyLayer::builder(Arc::new(MemoryStore::new(10_000)))
//!     .route(RoutePolicy::new("payments").path_prefix("/payments").required(true))
//!     .route(RoutePolicy::new("default"))
//!     .build();
//! # let _ = layer;
//! ```
//!
//! With Redis, replicas must share the scope secret:
//!
//! ```no_run
//! # use std::{sync::Arc, time::Duration};
//! # use attache_filters::idempotency::{IdempotencyLayer, RoutePolicy};
//! use attache_filters::idempotency::redis_store::RedisStore;
//!
//! let store = RedisStore::new("redis://127.0.0.1:6379", "attache:idem:", Duration::from_millis(500))
//!     .expect("a Redis URL");
//! let layer = IdempotencyLayer::builder(Arc::new(store))
//!     .secret(b"shared by every replica".to_vec())
//!     .route(RoutePolicy::new("default"))
//!     .build();
//! # let _ = layer;
//! ```

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

use super::store::Store;
use super::{IdempotencyLayer, RoutePolicy, Settings};
use crate::log_throttle::LogThrottle;
use crate::metrics::Metrics;
use crate::trace_context::ids::{IdGenerator, RandomIds};

impl RoutePolicy {
    /// A policy named `name` (its metric label) with §1's defaults: every path, keyed `POST`
    /// and `PATCH` enforced, the key in `Idempotency-Key`, bodies and responses up to 1 MiB,
    /// records kept 24 h, a 65 s lease (attache's 60 s upstream timeout plus 5 s), 422 for a
    /// reused key, `Authorization` and the usual credentials in the scope.
    pub fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            path: None,
            path_prefix: None,
            methods: vec![Method::POST, Method::PATCH],
            headers: vec![HeaderName::from_static("idempotency-key")],
            strict_sf: false,
            required: false,
            max_request_bytes: 1 << 20,
            max_response_bytes: 1 << 20,
            retention: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(65),
            mismatch_status: StatusCode::UNPROCESSABLE_ENTITY,
            release_statuses: vec![401, 403, 407, 408, 425, 429],
            store_5xx: false,
            in_flight_wait: Duration::ZERO,
            fail_open: false,
            scope_authorization: true,
            scope_credentials: true,
            scope_headers: Vec::new(),
            scope_by_route: false,
            fingerprint_headers: Vec::new(),
            json_canonical: false,
            replay_headers: Vec::new(),
            cloudevents: None,
        }
    }

    /// Only requests under this path prefix.
    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.path_prefix = Some(prefix.to_owned());
        self
    }

    /// Refuse enforced requests without a key (400) instead of passing them unrecorded.
    pub fn required(mut self, on: bool) -> Self {
        self.required = on;
        self
    }

    /// The methods enforced (never the safe ones: the layer ignores those).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// How long a stored response is replayed.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How long a claim holds while the request runs: longer than the service's slowest
    /// answer, or a retry may run it again.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// When the store fails, forward unrecorded instead of answering 503.
    pub fn fail_open(mut self, on: bool) -> Self {
        self.fail_open = on;
        self
    }
}

/// Builds an [`IdempotencyLayer`]; see [`IdempotencyLayer::builder`].
pub struct IdempotencyBuilder {
    settings: Settings,
}

impl IdempotencyLayer {
    /// Enforcement over `store`, with a random scope secret (fine for one process; replicas
    /// sharing a store must share [`IdempotencyBuilder::secret`]), a 500 ms store timeout and
    /// no routes until [`IdempotencyBuilder::route`] adds them; the first matching route wins.
    pub fn builder(store: Arc<dyn Store>) -> IdempotencyBuilder {
        IdempotencyBuilder {
            settings: Settings {
                store,
                secret: RandomIds::default().trace_id().0.to_be_bytes().to_vec(),
                store_timeout: Duration::from_millis(500),
                policy_url: None,
                routes: Vec::new(),
                metrics: Metrics::new().family(),
                store_errors: Arc::new(LogThrottle::new(Duration::from_secs(60))),
            },
        }
    }
}

impl IdempotencyBuilder {
    pub fn route(mut self, policy: RoutePolicy) -> Self {
        self.settings.routes.push(policy);
        self
    }

    /// The key that scopes and hashes record keys (HMAC-SHA-256).
    pub fn secret(mut self, secret: Vec<u8>) -> Self {
        self.settings.secret = secret;
        self
    }

    /// A claim slower than this fails (503, or forwarded with `fail_open`).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.settings.store_timeout = timeout;
        self
    }

    /// Count outcomes in this registry (a new one by default).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.settings.metrics = metrics.family();
        self
    }

    pub fn build(self) -> IdempotencyLayer {
        IdempotencyLayer::new(self.settings)
    }
}
