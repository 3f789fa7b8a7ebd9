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
//! - [`key`]: the key field's syntax; [`hash`]: record keys and fingerprints;
//!   [`store`]: the `Store` trait and the memory store; [`redis_store`]: the Redis store.

pub mod builder;
pub mod cloudevents;
pub mod hash;
pub mod key;
pub mod metrics;
pub mod redis_store;
pub mod store;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use crate::Body;
use crate::errors::{Problem, problem_response};
use crate::facts::UpstreamInfo;
use crate::trace_context::ids::{IdGenerator, RandomIds};
use store::{Claim, RecordId, Store, StoreError, Stored, Transition};

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

/// The errors of §5.3.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("this route requires an Idempotency-Key header")]
    KeyMissing,
    #[error("the Idempotency-Key is invalid: {0}")]
    KeyInvalid(&'static str),
    #[error("a keyed request body may be at most {0} bytes")]
    RequestTooLarge(u64),
    #[error("this Idempotency-Key was used with a different request")]
    KeyReused(StatusCode),
    #[error("a request with this Idempotency-Key is still in progress; retry later")]
    InProgress,
    #[error("the idempotency store is unavailable; nothing was forwarded")]
    StoreUnavailable,
    #[error(
        "the app failed after the request may have reached it; retrying with this key is refused until {0:?} have passed"
    )]
    OutcomeUnknown(StatusCode, Duration),
    #[error("the response to this key was a protocol switch and cannot be replayed")]
    NotStored,
}

impl Problem for IdempotencyError {
    fn status(&self) -> StatusCode {
        match self {
            Self::KeyMissing | Self::KeyInvalid(_) => StatusCode::BAD_REQUEST,
            Self::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::KeyReused(s) | Self::OutcomeUnknown(s, _) => *s,
            Self::InProgress => StatusCode::CONFLICT,
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotStored => StatusCode::GONE,
        }
    }
    fn slug(&self) -> &'static str {
        match self {
            Self::KeyMissing => "idempotency-key-missing",
            Self::KeyInvalid(_) => "idempotency-key-invalid",
            Self::RequestTooLarge(_) => "idempotency-request-too-large",
            Self::KeyReused(_) => "idempotency-key-reused",
            Self::InProgress => "idempotency-request-in-progress",
            Self::StoreUnavailable => "idempotency-store-unavailable",
            Self::OutcomeUnknown(..) => "idempotency-outcome-unknown",
            Self::NotStored => "idempotency-response-not-stored",
        }
    }
    fn title(&self) -> &'static str {
        match self {
            Self::KeyMissing => "Idempotency-Key missing",
            Self::KeyInvalid(_) => "Invalid Idempotency-Key",
            Self::RequestTooLarge(_) => "Keyed request too large",
            Self::KeyReused(_) => "Idempotency-Key reused",
            Self::InProgress => "Request in progress",
            Self::StoreUnavailable => "Idempotency store unavailable",
            Self::OutcomeUnknown(..) => "Outcome unknown",
            Self::NotStored => "Response not stored",
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::InProgress | Self::StoreUnavailable => Some(Duration::from_secs(1)),
            Self::OutcomeUnknown(_, lease) => Some(*lease),
            _ => None,
        }
    }
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
                let mut res = admit(settings, route, inner, req, key, trail.clone()).await;
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

fn problem(err: &IdempotencyError, policy_url: Option<&HeaderValue>) -> Response<Body> {
    let mut res = problem_response(err);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(url) = policy_url {
        res.headers_mut().insert(header::LINK, url.clone());
    }
    res
}

/// Steps 3 and 4 of admission, then the claim's consequences.
async fn admit(
    s: Arc<Settings>,
    route: RoutePolicy,
    inner: Inner,
    req: Request<Body>,
    key: Vec<u8>,
    trail: Arc<Trail>,
) -> Response<Body> {
    let reject = |outcome: &'static str, err: IdempotencyError| {
        trail.count(outcome);
        problem(&err, s.policy_url.as_ref())
    };
    // 3. Body, buffered up to the limit.
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route.max_request_bytes) {
        return reject(
            "rejected",
            IdempotencyError::RequestTooLarge(route.max_request_bytes),
        );
    }
    let body = match read_limited(body, route.max_request_bytes).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return reject(
                "rejected",
                IdempotencyError::RequestTooLarge(route.max_request_bytes),
            );
        }
        Err(e) => {
            return problem_response(&crate::errors::ProxyError::BadRequest(format!(
                "the request body could not be read: {e}"
            )));
        }
    };

    // 4. Scope, key and fingerprint.
    let key = match route.cloudevents {
        None => key,
        Some(_) => match cloudevents::identity(&parts.headers, &body) {
            Ok(cloudevents::Identity::Event(k)) => k,
            Ok(cloudevents::Identity::Batch) => {
                trail.count("passed_through");
                let mut inner = inner;
                let Ok(res) = inner
                    .call(Request::from_parts(parts, crate::full(body)))
                    .await;
                return res;
            }
            Err(key::KeyError::Missing) => return reject("rejected", IdempotencyError::KeyMissing),
            Err(key::KeyError::Invalid(why)) => {
                return reject("rejected", IdempotencyError::KeyInvalid(why));
            }
        },
    };
    let id = record_id(&s, &route, &parts, &key);
    trail
        .record
        .store((id.key >> 64) as u64, std::sync::atomic::Ordering::Relaxed);
    let fingerprint = fingerprint(&route, &parts, &body);
    let owner = RandomIds::default().trace_id().0;
    let request = Request::from_parts(parts, crate::full(body));

    let deadline = tokio::time::Instant::now() + route.in_flight_wait;
    let mut backoff = Duration::from_millis(25);
    loop {
        let claimed = timed(
            &s,
            "claim",
            // A resent event may differ elsewhere: CloudEvents routes compare the
            // fingerprint only when `strict`.
            s.store.claim(
                &id,
                (route.cloudevents != Some(false)).then_some(fingerprint),
                owner,
                route.lease,
            ),
            |_| "ok",
        )
        .await;
        match claimed {
            Ok(Ok(Claim::Claimed)) => {
                trail.count("claimed");
                return exchange(s, route, inner, request, id, owner, trail).await;
            }
            Ok(Ok(Claim::Mismatch)) => {
                return reject(
                    "mismatch_422",
                    IdempotencyError::KeyReused(route.mismatch_status),
                );
            }
            Ok(Ok(Claim::InFlight)) => {
                if tokio::time::Instant::now() + backoff < deadline {
                    // Jittered, growing from 25 to 250 ms.
                    let jitter = (owner as u64 % 16) * backoff.as_millis() as u64 / 32;
                    tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(250));
                    continue;
                }
                return reject("conflict_409", IdempotencyError::InProgress);
            }
            Ok(Ok(Claim::Done(stored))) => {
                trail.count("replayed");
                return replay(stored, true);
            }
            Ok(Ok(Claim::Tombstone(stored))) => {
                trail.count("replayed");
                if stored.status == 101 {
                    return problem(&IdempotencyError::NotStored, s.policy_url.as_ref());
                }
                return replay(stored, false);
            }
            Ok(Ok(Claim::Foreign)) => {
                if let Some(suppressed) = s.store_errors.admit() {
                    tracing::warn!(route = %route.name, suppressed, "idempotency record not written by attache; left untouched (store errors are logged at most once per telemetry.error_log_interval; `suppressed` counts those held back)");
                }
                return reject("store_error", IdempotencyError::StoreUnavailable);
            }
            Ok(Err(e)) => {
                if let Some(suppressed) = s.store_errors.admit() {
                    tracing::warn!(route = %route.name, error = %e, suppressed, "idempotency claim failed (store errors are logged at most once per telemetry.error_log_interval; `suppressed` counts those held back)");
                }
            }
            Err(_) => {
                if let Some(suppressed) = s.store_errors.admit() {
                    tracing::warn!(route = %route.name, timeout = ?s.store_timeout, suppressed, "idempotency claim timed out (store errors are logged at most once per telemetry.error_log_interval; `suppressed` counts those held back)");
                }
                // Best effort: the claim may have landed after all.
                let (store, id) = (s.store.clone(), id.clone());
                tokio::spawn(async move {
                    let _ = store.release(&id, owner).await;
                });
            }
        }
        // The store failed.
        trail.count("store_error");
        if route.fail_open {
            trail.count("failed_open");
            let mut inner = inner;
            let Ok(mut res) = inner.call(request).await;
            res.headers_mut()
                .insert(ENFORCED_MARKER, HeaderValue::from_static("false"));
            return res;
        }
        return problem(&IdempotencyError::StoreUnavailable, s.policy_url.as_ref());
    }
}

/// Runs a store operation within `store_timeout`, timing it in
/// `attache_idempotency_store_duration_seconds{op, result}`.
async fn timed<T>(
    s: &Settings,
    op: &'static str,
    fut: impl Future<Output = Result<T, StoreError>>,
    label: impl Fn(&T) -> &'static str,
) -> Result<Result<T, StoreError>, tokio::time::error::Elapsed> {
    let start = std::time::Instant::now();
    let out = tokio::time::timeout(s.store_timeout, fut).await;
    let result = match &out {
        Ok(Ok(v)) => label(v),
        Ok(Err(_)) => "error",
        Err(_) => "timeout",
    };
    s.metrics.store_op(op, result, start.elapsed());
    out
}

fn transition_label(t: &Transition) -> &'static str {
    match t {
        Transition::Done => "ok",
        Transition::LostLease => "lost_lease",
    }
}

use crate::read_limited;

/// The credentials besides `Authorization` that tell two principals apart
/// (`scope_credentials`): a session cookie, an API key.
pub const SCOPE_CREDENTIALS: [&str; 4] = ["cookie", "x-api-key", "api-key", "x-auth-token"];

fn record_id(
    s: &Settings,
    route: &RoutePolicy,
    parts: &http::request::Parts,
    key: &[u8],
) -> RecordId {
    let mut scope: Vec<Option<&[u8]>> = Vec::new();
    if route.scope_authorization {
        scope.push(
            parts
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        );
    }
    for h in &route.scope_headers {
        scope.push(parts.headers.get(h).map(|v| v.as_bytes()));
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(header::HOST).map(|v| v.as_bytes()));
    if route.scope_by_route {
        scope.push(Some(parts.method.as_str().as_bytes()));
        scope.push(authority);
        scope.push(Some(parts.uri.path().as_bytes()));
    }
    // Each credential present adds its name and its lines (HTTP/2 sends a cookie per field,
    // HTTP/1.1 one line: joined, they read the same). Absent ones add nothing, so a request
    // without any keeps the record id it had before these were part of the scope.
    let mut joined: Vec<(&[u8], Vec<u8>)> = Vec::new();
    if route.scope_credentials {
        for name in SCOPE_CREDENTIALS {
            let mut lines = parts.headers.get_all(name).iter();
            let Some(first) = lines.next() else { continue };
            let mut value = first.as_bytes().to_vec();
            for more in lines {
                value.extend_from_slice(b"; ");
                value.extend_from_slice(more.as_bytes());
            }
            joined.push((name.as_bytes(), value));
        }
    }
    for (name, value) in &joined {
        scope.push(Some(name));
        scope.push(Some(value));
    }
    RecordId {
        scope: hash::keyed(&s.secret, "attache-scope-v1", &scope),
        key: hash::keyed(&s.secret, "attache-key-v1", &[Some(key)]),
    }
}

fn fingerprint(route: &RoutePolicy, parts: &http::request::Parts, body: &[u8]) -> [u8; 32] {
    hash::fingerprint(&hash::Request {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        headers: route
            .fingerprint_headers
            .iter()
            .map(|h| {
                (
                    h.as_str(),
                    parts
                        .headers
                        .get_all(h)
                        .iter()
                        .map(|v| v.as_bytes())
                        .collect(),
                )
            })
            .collect(),
        body,
        json_canonical: route.json_canonical,
    })
}

/// A stored response, replayed: its status, stored header lines, body and markers.
fn replay(stored: Stored, with_body: bool) -> Response<Body> {
    let body = if with_body { stored.body } else { Bytes::new() };
    let len = body.len();
    let mut res = Response::new(crate::full(body));
    *res.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let h = res.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value),
        ) {
            h.append(n, v);
        }
    }
    // Replays bypass the app's authorization: never cache one unless the app said how.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(REPLAYED_MARKER, HeaderValue::from_static("true"));
    if !with_body {
        h.insert(STORED_MARKER, HeaderValue::from_static("false"));
    }
    res
}

/// The claimed request's exchange, in a task of its own: the client going away cannot cancel
/// the call or the record's outcome.
async fn exchange(
    s: Arc<Settings>,
    route: RoutePolicy,
    inner: Inner,
    request: Request<Body>,
    id: RecordId,
    owner: store::Owner,
    trail: Arc<Trail>,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut inner = inner;
    let call: BoxFuture = Box::pin(inner.call(request));
    tokio::spawn(async move {
        let run = Run {
            s,
            route,
            id,
            owner,
            trail,
        };
        let res = run.go(call).await;
        let _ = tx.send(res);
    });
    match rx.await {
        Ok(res) => res,
        Err(_) => problem_response(&crate::errors::ProxyError::Unavailable(
            "the idempotent exchange ended without a response".into(),
        )),
    }
}

struct Run {
    s: Arc<Settings>,
    route: RoutePolicy,
    id: RecordId,
    owner: store::Owner,
    trail: Arc<Trail>,
}

impl Run {
    fn outcome(&self, outcome: &'static str) {
        self.trail.count(outcome);
    }

    /// Runs `fut` while renewing the lease every lease/3.
    async fn renewing<F: Future>(&self, fut: F) -> F::Output {
        tokio::pin!(fut);
        let every = self.route.lease / 3;
        loop {
            tokio::select! {
                out = &mut fut => return out,
                () = tokio::time::sleep(every) => {
                    let renew = self.s.store.renew(&self.id, self.owner, self.route.lease);
                    match timed(&self.s, "renew", renew, transition_label).await {
                        Ok(Ok(Transition::Done)) => {}
                        Ok(Ok(Transition::LostLease)) => self.outcome("lost_lease"),
                        _ => self.outcome("store_error"),
                    }
                }
            }
        }
    }

    /// A complete, release or renew that fails is retried twice; one that finds another
    /// owner writes nothing.
    async fn settle(&self, what: Settle<'_>) {
        for _ in 0..3 {
            let op = async {
                match what {
                    Settle::Release => self.s.store.release(&self.id, self.owner).await,
                    Settle::Complete(stored, tomb) => {
                        self.s
                            .store
                            .complete(&self.id, self.owner, stored, tomb, self.route.retention)
                            .await
                    }
                }
            };
            let name = match what {
                Settle::Release => "release",
                Settle::Complete(..) => "complete",
            };
            match timed(&self.s, name, op, transition_label).await {
                Ok(Ok(Transition::Done)) => {
                    self.outcome(match what {
                        Settle::Release => "released",
                        Settle::Complete(_, true) => "tombstoned",
                        Settle::Complete(_, false) => "completed",
                    });
                    return;
                }
                Ok(Ok(Transition::LostLease)) => {
                    self.outcome("lost_lease");
                    return;
                }
                Ok(Err(StoreError::Unavailable(_) | StoreError::Full(_))) | Err(_) => {}
            }
        }
        self.outcome("store_error");
    }

    async fn go<F>(self, call: F) -> Response<Body>
    where
        F: Future<Output = Result<Response<Body>, Infallible>>,
    {
        let Ok(res) = self.renewing(call).await;
        let status = res.status().as_u16();

        // The forwarder's own answer when the app gave none.
        if let Some(err) = res.extensions().get::<UpstreamInfo>().and_then(|u| u.error) {
            if err == "connection_refused" || err == "dns" {
                // Nothing reached the app: the key is free again.
                self.settle(Settle::Release).await;
                return res;
            }
            // Bytes may have reached the app: the outcome is unknown until the lease ends.
            self.outcome("indeterminate");
            let status = if err == "timeout" {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            return problem(
                &IdempotencyError::OutcomeUnknown(status, self.route.lease),
                self.s.policy_url.as_ref(),
            );
        }

        if self.route.release_statuses.contains(&status) || (status >= 500 && !self.route.store_5xx)
        {
            self.settle(Settle::Release).await;
            return res;
        }

        let headers = self.stored_headers(res.headers());
        let declared = res
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let media = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let streaming = status == 101
            || media.starts_with("text/event-stream")
            || media.starts_with("application/grpc")
            || declared.is_some_and(|n| n > self.route.max_response_bytes);
        let tombstone = Stored {
            status,
            headers: headers.clone(),
            body: Bytes::new(),
        };
        if streaming {
            self.settle(Settle::Complete(&tombstone, true)).await;
            return res;
        }

        // Hold the response until it ends (or crosses the limit), while renewing.
        let limit = self.route.max_response_bytes;
        let (parts, mut body) = res.into_parts();
        let mut held = BytesMut::new();
        let mut trailers = None;
        let mut failed = None;
        let read = async {
            loop {
                match body.frame().await {
                    None => return true,
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            held.extend_from_slice(&data);
                            if held.len() as u64 > limit {
                                return false;
                            }
                        }
                        Err(frame) => {
                            trailers = frame.into_trailers().ok();
                            return true;
                        }
                    },
                    Some(Err(e)) => {
                        failed = Some(e);
                        return true;
                    }
                }
            }
        };
        let complete = self.renewing(read).await;
        let held = held.freeze();
        if let Some(e) = failed {
            // The body broke midway: the app ran, but what it answered is unknown.
            self.outcome("indeterminate");
            tracing::warn!(route = %self.route.name, error = %e, "response body failed; key held until the lease ends");
            return problem(
                &IdempotencyError::OutcomeUnknown(StatusCode::BAD_GATEWAY, self.route.lease),
                self.s.policy_url.as_ref(),
            );
        }
        if !complete || trailers.is_some() {
            // Too large, or trailers: the first caller gets it whole; retries, the headers.
            self.settle(Settle::Complete(&tombstone, true)).await;
            let rest = Chain {
                first: Some(held),
                trailers,
                rest: (!complete).then_some(body),
            };
            return Response::from_parts(parts, crate::boxed(rest));
        }
        let stored = Stored {
            status,
            headers,
            body: held.clone(),
        };
        self.settle(Settle::Complete(&stored, false)).await;
        Response::from_parts(parts, crate::full(held))
    }

    /// The allow-listed header lines, in order.
    fn stored_headers(&self, headers: &HeaderMap) -> Vec<(String, Bytes)> {
        headers
            .iter()
            .filter(|(n, _)| self.route.replayable(n.as_str()))
            .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
            .collect()
    }
}

#[derive(Clone, Copy)]
enum Settle<'a> {
    Release,
    Complete(&'a Stored, bool),
}

/// A response body that was partly read: what was held, then the rest (or the trailers).
struct Chain {
    first: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<Body>,
}

impl HttpBody for Chain {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take().filter(|b| !b.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if let Some(rest) = self.rest.as_mut() {
            return Pin::new(rest).poll_frame(cx);
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}
