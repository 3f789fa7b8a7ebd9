//! Rate limits: each a rate with a burst (GCRA), kept per key, checked on every request it
//! matches; all must pass. A request over any of them gets `429 Too Many Requests` at once and
//! goes no further (never to the idempotency step, never to the app).
//!
//! - local limits ([`LocalLimiter`]): governor's GCRA over this process's state, per key in a
//!   bounded map (`keys.rs`); a check is a hash, a read lock and one atomic update;
//! - shared limits ([`SharedLimiter`]): the same GCRA in Redis, one script and one round trip,
//!   so that every replica draws on one budget. A check is bounded by the store timeout; when
//!   it fails, the limit allows (fail open, the default) or denies, and says so in a metric, a
//!   rate-limited log line and the request's span.
//!
//! Responses carry the IETF fields of draft-ietf-httpapi-ratelimit-headers-10:
//! `RateLimit-Policy: "<limit>";q=<burst>;w=<seconds to refill it>` and
//! `RateLimit: "<limit>";r=<left>;t=<seconds until the burst is whole>`, on a 429 always (with
//! `Retry-After`) and on allowed responses for limits that ask for it.
//!
//! - this file: the layer, its service and future, the 429;
//! - `key.rs`: what a limit counts per; `keys.rs`: the bounded keyed state; `local.rs`,
//!   `shared.rs`: the two kinds of limit; `metrics.rs`: the families.

mod key;
mod keys;
mod local;
pub mod metrics;
mod shared;

pub use key::{ConnReaders, KeySource, Trusted, local_hash};
pub use local::{Checked, LocalLimiter, quota};
pub use shared::SharedLimiter;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::Body;
use crate::errors::{Problem, problem_response};
use metrics::{LimitCounters, RateLimitFamilies};

const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// One check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `remaining`: shares of the burst left; `reset`: until the burst is whole again.
    Allowed { remaining: u32, reset: Duration },
    /// `retry_after`: until one share is back; `reset`: until the whole burst is.
    Limited {
        retry_after: Duration,
        reset: Duration,
    },
}

/// Where a limit's state lives.
#[derive(Clone)]
pub enum Check {
    Local(Arc<LocalLimiter>),
    Shared {
        limiter: Arc<SharedLimiter>,
        /// When the store fails: deny (429) rather than allow.
        deny_on_error: bool,
    },
}

/// One limit, as the layer takes it.
#[derive(Clone)]
pub struct Limit {
    pub name: Arc<str>,
    /// Methods matched (any when empty).
    pub methods: Vec<Method>,
    pub path_prefix: Option<String>,
    /// Matched against the whole path (anchor it).
    pub path_regex: Option<regex_lite::Regex>,
    pub key: KeySource,
    /// A request without the key skips the limit (else it counts in one shared bucket).
    pub skip_missing: bool,
    pub check: Check,
    /// `RateLimit-Policy` and `RateLimit` on allowed responses too.
    pub headers_on_allowed: bool,
}

impl Limit {
    fn applies<B>(&self, req: &Request<B>) -> bool {
        let path = req.uri().path();
        (self.methods.is_empty() || self.methods.contains(req.method()))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self.path_regex.as_ref().is_none_or(|re| re.is_match(path))
    }

    fn shape(&self) -> (u32, Duration) {
        match &self.check {
            Check::Local(l) => l.shape(),
            Check::Shared { limiter, .. } => limiter.shape(),
        }
    }
}

/// Everything the layer needs.
pub struct Settings {
    pub limits: Vec<Limit>,
    pub conn: ConnReaders,
    /// The most all of a request's shared checks may take together.
    pub store_timeout: Duration,
    /// Store failures are logged at most once per interval (each one is counted).
    pub store_errors: Arc<crate::log_throttle::LogThrottle>,
    pub metrics: Arc<RateLimitFamilies>,
}

/// A limit with what is made for it once: its policy field and its counters.
struct Compiled {
    limit: Limit,
    policy: HeaderValue,
    counters: LimitCounters,
}

struct Shared {
    limits: Vec<Compiled>,
    conn: ConnReaders,
    store_timeout: Duration,
    store_errors: Arc<crate::log_throttle::LogThrottle>,
    metrics: Arc<RateLimitFamilies>,
}

/// Whole seconds, rounded up: a client told to wait must not come back early.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `"<name>";q=<burst>;w=<seconds the whole burst takes to come back>`.
fn policy_field(limit: &Limit) -> HeaderValue {
    let (burst, interval) = limit.shape();
    let window = ceil_secs(interval * burst).max(1);
    HeaderValue::from_str(&format!("\"{}\";q={burst};w={window}", limit.name))
        .unwrap_or_else(|_| HeaderValue::from_static("\"limit\";q=1;w=1"))
}

/// `"<name>";r=<remaining>;t=<seconds until the burst is whole>`.
fn ratelimit_field(name: &str, remaining: u32, reset: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{name}\";r={remaining};t={}", ceil_secs(reset)))
        .unwrap_or_else(|_| HeaderValue::from_static("\"limit\";r=0;t=1"))
}

// === impl RateLimitLayer ===

#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    pub fn new(settings: Settings) -> Self {
        let limits = settings
            .limits
            .into_iter()
            .map(|limit| Compiled {
                policy: policy_field(&limit),
                counters: settings.metrics.counters(&limit.name),
                limit,
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                limits,
                conn: settings.conn,
                store_timeout: settings.store_timeout,
                store_errors: settings.store_errors,
                metrics: settings.metrics,
            }),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// What the limits a request passed add to its response: (`RateLimit-Policy`, `RateLimit`).
type Advertised = Vec<(HeaderValue, HeaderValue)>;

impl<S> Service<Request<Body>> for RateLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RateLimitFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let s = &*self.shared;
        let mut advertised = Advertised::new();
        // Shared checks wait for Redis; they run after every local one has passed, so that a
        // request a local limit refuses costs no round trip.
        let mut pending: Vec<(usize, String)> = Vec::new();
        for (i, c) in s.limits.iter().enumerate() {
            if !c.limit.applies(&req) {
                continue;
            }
            let key = match c.limit.key.read(&req, &s.conn) {
                Some(key) => key,
                None if c.limit.skip_missing => continue,
                None => None,
            };
            match &c.limit.check {
                Check::Local(limiter) => {
                    let checked = limiter.check(local_hash(key.as_deref()));
                    if checked.allowed() && !c.limit.headers_on_allowed {
                        c.counters.allowed.inc();
                    } else if let Some(res) = c.decide(checked.verdict(), &mut advertised) {
                        return RateLimitFuture::Ready { res: Some(res) };
                    }
                }
                Check::Shared { limiter, .. } => {
                    pending.push((i, limiter.redis_key(key.as_deref())));
                }
            }
        }
        if pending.is_empty() {
            return RateLimitFuture::Inner {
                fut: self.inner.call(req),
                advertised,
                store_failed: None,
            };
        }
        // The inner service was made ready for this call: it goes into the future, and a
        // clone stays for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        RateLimitFuture::Checking {
            check: Box::pin(async move { shared.check_all_shared(pending, advertised).await }),
            next: Some((inner, req)),
        }
    }
}

/// What a request that passed its shared checks takes on to the app.
struct Passed {
    advertised: Advertised,
    /// Set when a shared store failed and its limit let the request through.
    store_failed: Option<RateLimitInfo>,
}

type CheckFuture = Pin<Box<dyn Future<Output = Result<Passed, Response<Body>>> + Send>>;

impl Compiled {
    /// Counts `verdict`; the 429 when it is a refusal, else `None` (and the limit's fields
    /// noted for the response when it advertises on allowed ones).
    fn decide(&self, verdict: Verdict, advertised: &mut Advertised) -> Option<Response<Body>> {
        match verdict {
            Verdict::Allowed { remaining, reset } => {
                self.counters.allowed.inc();
                if self.limit.headers_on_allowed {
                    advertised.push((
                        self.policy.clone(),
                        ratelimit_field(&self.limit.name, remaining, reset),
                    ));
                }
                None
            }
            Verdict::Limited { retry_after, reset } => {
                self.counters.limited.inc();
                let mut res = problem_response(&RateLimited {
                    limit: self.limit.name.clone(),
                    retry_after,
                    store_error: false,
                });
                let h = res.headers_mut();
                h.insert(POLICY, self.policy.clone());
                h.insert(RATELIMIT, ratelimit_field(&self.limit.name, 0, reset));
                crate::facts::hand_up(
                    res.extensions_mut(),
                    Arc::new(RateLimitInfo {
                        limit: self.limit.name.clone(),
                        limited: true,
                        store_error: None,
                    }),
                );
                Some(res)
            }
        }
    }
}

impl Shared {
    /// A request's shared checks, in order, all within one store timeout: the request passes
    /// (`Ok`) or gets its 429 (`Err`).
    async fn check_all_shared(
        &self,
        pending: Vec<(usize, String)>,
        mut advertised: Advertised,
    ) -> Result<Passed, Response<Body>> {
        let mut store_failed = None;
        let deadline = tokio::time::Instant::now() + self.store_timeout;
        for (i, redis_key) in pending {
            let Some(c) = self.limits.get(i) else {
                continue;
            };
            match self.check_shared(c, &redis_key, deadline).await {
                Ok(verdict) => {
                    if let Some(res) = c.decide(verdict, &mut advertised) {
                        return Err(res);
                    }
                }
                Err(error) => {
                    if let Some(res) = self.store_failed(c, error) {
                        return Err(res);
                    }
                    store_failed = Some(RateLimitInfo {
                        limit: c.limit.name.clone(),
                        limited: false,
                        store_error: Some(error),
                    });
                }
            }
        }
        Ok(Passed {
            advertised,
            store_failed,
        })
    }

    /// One shared check, within what is left of the request's store budget.
    async fn check_shared(
        &self,
        c: &Compiled,
        redis_key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Verdict, &'static str> {
        let Check::Shared { limiter, .. } = &c.limit.check else {
            return Err("unavailable");
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout_at(deadline, limiter.check(redis_key)).await;
        let took = started.elapsed();
        match outcome {
            Ok(Ok(verdict)) => {
                self.metrics.store_op("ok", took);
                Ok(verdict)
            }
            // The client's own response timeout is the store timeout too.
            Ok(Err(e)) if !e.is_timeout() => {
                self.metrics.store_op("error", took);
                if let Some(held_back) = self.store_errors.admit() {
                    tracing::warn!(limit = %c.limit.name, error = %e, held_back, "a shared rate limit could not be checked in Redis");
                }
                Err("unavailable")
            }
            Ok(Err(_)) | Err(_) => {
                self.metrics.store_op("timeout", took);
                if let Some(held_back) = self.store_errors.admit() {
                    tracing::warn!(limit = %c.limit.name, timeout = ?self.store_timeout, held_back, "a shared rate limit check took longer than the store timeout");
                }
                Err("timeout")
            }
        }
    }

    /// After a failed shared check: the 429 when the limit fails closed, else `None`.
    fn store_failed(&self, c: &Compiled, error: &'static str) -> Option<Response<Body>> {
        let deny = matches!(
            c.limit.check,
            Check::Shared {
                deny_on_error: true,
                ..
            }
        );
        let action = if deny { "denied" } else { "allowed" };
        self.metrics.store_error(&c.limit.name, error, action);
        if !deny {
            c.counters.allowed.inc();
            return None;
        }
        c.counters.limited.inc();
        let mut res = problem_response(&RateLimited {
            limit: c.limit.name.clone(),
            retry_after: Duration::from_secs(1),
            store_error: true,
        });
        res.headers_mut().insert(POLICY, c.policy.clone());
        crate::facts::hand_up(
            res.extensions_mut(),
            Arc::new(RateLimitInfo {
                limit: c.limit.name.clone(),
                limited: true,
                store_error: Some(error),
            }),
        );
        Some(res)
    }
}

fn advertise(res: &mut Response<Body>, advertised: Advertised) {
    for (policy, ratelimit) in advertised {
        let h = res.headers_mut();
        h.append(POLICY, policy);
        h.append(RATELIMIT, ratelimit);
    }
}

pin_project_lite::pin_project! {
    /// Requests with local limits only go straight to the inner future (or get their 429 at
    /// once); those with a shared limit wait for Redis first (`Checking`), then go on.
    #[project = RateLimitFutureProj]
    pub enum RateLimitFuture<S, F> {
        Inner { #[pin] fut: F, advertised: Advertised, store_failed: Option<RateLimitInfo> },
        Ready { res: Option<Response<Body>> },
        Checking { check: CheckFuture, next: Option<(S, Request<Body>)> },
    }
}

impl<S, F> Future for RateLimitFuture<S, F>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = F>,
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                RateLimitFutureProj::Inner {
                    fut,
                    advertised,
                    store_failed,
                } => {
                    let mut res = std::task::ready!(fut.poll(cx))?;
                    if !advertised.is_empty() {
                        advertise(&mut res, std::mem::take(advertised));
                    }
                    if let Some(info) = store_failed.take() {
                        crate::facts::hand_up(res.extensions_mut(), Arc::new(info));
                    }
                    return Poll::Ready(Ok(res));
                }
                RateLimitFutureProj::Ready { res } => {
                    return match res.take() {
                        Some(res) => Poll::Ready(Ok(res)),
                        None => Poll::Pending,
                    };
                }
                RateLimitFutureProj::Checking { check, next } => {
                    let next_state = match std::task::ready!(check.as_mut().poll(cx)) {
                        Err(res) => RateLimitFuture::Ready { res: Some(res) },
                        Ok(passed) => match next.take() {
                            Some((mut inner, req)) => RateLimitFuture::Inner {
                                fut: inner.call(req),
                                advertised: passed.advertised,
                                store_failed: passed.store_failed,
                            },
                            None => return Poll::Pending,
                        },
                    };
                    self.set(next_state);
                }
            }
        }
    }
}

/// A request a limit refused.
#[derive(Debug)]
pub struct RateLimited {
    pub limit: Arc<str>,
    pub retry_after: Duration,
    /// Refused because the shared store failed and the limit fails closed.
    pub store_error: bool,
}

impl std::fmt::Display for RateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.store_error {
            write!(
                f,
                "the rate limit `{}` could not be checked and refuses requests until it can",
                self.limit
            )
        } else {
            write!(
                f,
                "the rate limit `{}` is exhausted; retry after {} s",
                self.limit,
                ceil_secs(self.retry_after).max(1)
            )
        }
    }
}

impl Problem for RateLimited {
    fn status(&self) -> StatusCode {
        StatusCode::TOO_MANY_REQUESTS
    }
    fn slug(&self) -> &'static str {
        "rate-limited"
    }
    fn title(&self) -> &'static str {
        "Too many requests"
    }
    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }
}

/// What the step did to a request it limited (or let through after its store failed), handed
/// up as a [`Fact`](crate::facts::Fact) for the span and the access log. Allowed requests hand
/// nothing up: they cost no allocation here.
#[derive(Debug, Clone)]
pub struct RateLimitInfo {
    pub limit: Arc<str>,
    pub limited: bool,
    /// `timeout` or `unavailable` when the shared store failed.
    pub store_error: Option<&'static str>,
}

impl crate::facts::Fact for RateLimitInfo {
    fn attributes(&self, attr: crate::facts::Attributes<'_>) {
        use crate::facts::Value;
        attr("attache.ratelimit.limit", Value::from(&*self.limit));
        attr("attache.ratelimit.limited", Value::Bool(self.limited));
        if let Some(error) = self.store_error {
            attr("attache.ratelimit.store_error", Value::from(error));
        }
    }

    fn log_fields(&self, field: crate::facts::Attributes<'_>) {
        use crate::facts::Value;
        if self.limited {
            field("rate_limited", Value::from(&*self.limit));
        }
        if let Some(error) = self.store_error {
            field("rate_limit_store_error", Value::from(error));
        }
    }
}

#[cfg(test)]
mod tests;
