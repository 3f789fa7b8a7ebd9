//! Idempotency-Key enforcement (specs/idempotency.md): a keyed POST or PATCH runs in the app at
//! most once; its retries get the stored response, marked `Idempotent-Replayed: true`.
//!
//! In the inbound flow this sits last, just above the forwarder. For an enforced route and
//! method it reads the key (§2), buffers the body, hashes scope, key and fingerprint (§3), then
//! makes one atomic claim-or-read (§4):
//!
//! - claimed: the exchange runs in a task of its own, so a client that goes away cannot cancel
//!   it; the lease is renewed every lease/3 while it runs; the response decides the record
//!   (stored, released, tombstoned, or left in flight when the outcome is unknown) and is
//!   delivered once that write returns;
//! - another fingerprint: 422 (or 400); in flight: 409 (or wait); done: the replay.
//!
//! - this file: the policy types and the layer, which matches the route and reads the key;
//!   `admit.rs`: buffering, hashing and the claim; `run.rs`: the claimed exchange, the lease
//!   and the record's settlement, and replays; `error.rs`: the §5.3 answers.
//! - [`key`]: the key field's syntax; [`hash`]: record keys and fingerprints;
//!   [`store`]: the `Store` trait and the memory store; [`redis_store`]: the Redis store.

mod admit;
pub mod builder;
pub mod cloudevents;
mod error;
pub mod hash;
pub mod key;
pub mod metrics;
pub mod redis_store;
mod run;
pub mod store;

pub use admit::SCOPE_CREDENTIALS;
pub use error::IdempotencyError;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::Body;
use admit::Admission;
use error::problem;
use store::Store;

/// Response headers replayed by default (§5.1).
const REPLAYED: [&str; 12] = [
    "content-type",
    "content-encoding",
    "content-language",
    "content-location",
    "content-disposition",
    "location",
    "etag",
    "last-modified",
    "link",
    "cache-control",
    "vary",
    "retry-after",
];

const REPLAYED_MARKER: HeaderName = HeaderName::from_static("idempotent-replayed");
const STORED_MARKER: HeaderName = HeaderName::from_static("idempotency-response-stored");
const ENFORCED_MARKER: HeaderName = HeaderName::from_static("idempotency-enforced");

/// What a keyed request went through, for the metrics and its span: each outcome is counted
/// as it happens; the last one is the request's.
struct Trail {
    metrics: Arc<metrics::IdempotencyFamilies>,
    route: Arc<str>,
    last: std::sync::Mutex<&'static str>,
    /// The first 64 bits of `H(key)`, once known.
    record: std::sync::atomic::AtomicU64,
}

impl Trail {
    fn count(&self, outcome: &'static str) {
        self.metrics.outcome(&self.route, outcome);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = outcome;
    }

    fn info(&self, replayed: bool) -> IdempotencyInfo {
        IdempotencyInfo {
            route: self.route.clone(),
            outcome: *self.last.lock().unwrap_or_else(|p| p.into_inner()),
            replayed,
            record: self.record.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// What the idempotency step did, handed up as a [`Fact`](crate::facts::Fact) for the SERVER
/// span.
#[derive(Debug, Clone)]
pub struct IdempotencyInfo {
    pub route: Arc<str>,
    pub outcome: &'static str,
    pub replayed: bool,
    /// The first 64 bits of the key's hash (0 when the request never got that far).
    pub record: u64,
}

impl crate::facts::Fact for IdempotencyInfo {
    fn attributes(&self, attr: crate::facts::Attributes<'_>) {
        use crate::facts::Value;
        attr("attache.idempotency.route", Value::from(&*self.route));
        attr("attache.idempotency.outcome", Value::from(self.outcome));
        attr("attache.idempotency.replayed", Value::Bool(self.replayed));
        if self.record != 0 {
            attr(
                "attache.idempotency.record",
                Value::from(format!("{:016x}", self.record)),
            );
        }
    }
}

/// One route's effective policy, compiled.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    pub name: Arc<str>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Vec<Method>,
    /// The key header and its aliases.
    pub headers: Vec<HeaderName>,
    pub strict_sf: bool,
    pub required: bool,
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub retention: Duration,
    /// The in-flight lease: the upstream timeout plus `lease_grace`.
    pub lease: Duration,
    pub mismatch_status: StatusCode,
    pub release_statuses: Vec<u16>,
    pub store_5xx: bool,
    pub in_flight_wait: Duration,
    pub fail_open: bool,
    pub scope_authorization: bool,
    /// `Cookie` and the API-key headers ([`SCOPE_CREDENTIALS`]) are part of the scope.
    pub scope_credentials: bool,
    pub scope_headers: Vec<HeaderName>,
    pub scope_by_route: bool,
    pub fingerprint_headers: Vec<HeaderName>,
    pub json_canonical: bool,
    /// Lower-case names stored and replayed.
    pub replay_headers: Vec<String>,
    /// A CloudEvents route: identify requests by (`source`, `id`); `Some(true)` also compares
    /// the fingerprint.
    pub cloudevents: Option<bool>,
}

impl RoutePolicy {
    fn matches(&self, path: &str) -> bool {
        self.path.as_deref().is_none_or(|p| p == path)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
    }

    fn replayable(&self, name: &str) -> bool {
        REPLAYED.contains(&name) || self.replay_headers.iter().any(|h| h == name)
    }
}

/// Everything the layer needs.
pub struct Settings {
    pub store: Arc<dyn Store>,
    pub secret: Vec<u8>,
    pub store_timeout: Duration,
    pub policy_url: Option<HeaderValue>,
    pub routes: Vec<RoutePolicy>,
    /// Its families in the registry (`Metrics::family`).
    pub metrics: Arc<metrics::IdempotencyFamilies>,
    /// Store errors are logged at most once per `telemetry.error_log_interval` (every one is
    /// counted in the metrics): an outage fails every keyed request.
    pub store_errors: Arc<crate::log_throttle::LogThrottle>,
}

// === impl IdempotencyLayer ===

#[derive(Clone)]
pub struct IdempotencyLayer {
    settings: Arc<Settings>,
}

impl IdempotencyLayer {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings: Arc::new(settings),
        }
    }
}

/// The service below: boxed, so that the exchange can move into a task of its own.
type Inner = tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

impl<S> Layer<S> for IdempotencyLayer
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Service = Idempotency;
    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner: Inner::new(inner),
            settings: self.settings.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Idempotency {
    inner: Inner,
    settings: Arc<Settings>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl Service<Request<Body>> for Idempotency {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = IdempotencyFuture<BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let s = &self.settings;
        // 1. Match: anything else passes untouched, with no store access and no buffering.
        let Some(route) = s
            .routes
            .iter()
            .find(|r| r.matches(req.uri().path()))
            .filter(|r| r.methods.contains(req.method()))
        else {
            return IdempotencyFuture::Pass {
                fut: self.inner.call(req),
            };
        };
        // 2. Key (a CloudEvents route finds its identity once the body is read).
        let key = match key::key(req.headers(), &route.headers, route.strict_sf) {
            _ if route.cloudevents.is_some() => Vec::new(),
            Ok(k) => k,
            Err(key::KeyError::Missing) if !route.required => {
                s.metrics.outcome(&route.name, "passed_through");
                return IdempotencyFuture::Pass {
                    fut: self.inner.call(req),
                };
            }
            Err(e) => {
                s.metrics.outcome(&route.name, "rejected");
                let err = match e {
                    key::KeyError::Missing => IdempotencyError::KeyMissing,
                    key::KeyError::Invalid(why) => IdempotencyError::KeyInvalid(why),
                };
                let res = problem(&err, s.policy_url.as_ref());
                return IdempotencyFuture::Own {
                    fut: Box::pin(async move { Ok(res) }),
                };
            }
        };
        let route = route.clone();
        let settings = self.settings.clone();
        let inner = self.inner.clone();
        let trail = Arc::new(Trail {
            metrics: settings.metrics.clone(),
            route: route.name.clone(),
            last: std::sync::Mutex::new("claimed"),
            record: std::sync::atomic::AtomicU64::new(0),
        });
        IdempotencyFuture::Own {
            fut: Box::pin(async move {
                let admission = Admission {
                    s: settings,
                    route,
                    inner,
                    trail: trail.clone(),
                };
                let mut res = admission.run(req, key).await;
                let replayed = res.headers().contains_key(REPLAYED_MARKER);
                crate::facts::hand_up(res.extensions_mut(), Arc::new(trail.info(replayed)));
                Ok(res)
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// Unenforced requests go straight to the inner future; enforced ones run admission.
    #[project = IdempotencyFutureProj]
    pub enum IdempotencyFuture<F> {
        Pass { #[pin] fut: F },
        Own { fut: BoxFuture },
    }
}

impl<F> Future for IdempotencyFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            IdempotencyFutureProj::Pass { fut } => fut.poll(cx),
            IdempotencyFutureProj::Own { fut } => fut.as_mut().poll(cx),
        }
    }
}
