//! Retries, between the forwarder and the balancer: a call to an upstream that failed where a
//! retry is safe goes again, after a wait, within the call's deadline and the upstream's retry
//! budget.
//!
//! - **What may go again**: a request that may run twice: an idempotent method (GET, HEAD,
//!   OPTIONS, PUT, DELETE) or one that carries an `Idempotency-Key` (the callee's attache
//!   answers a repeat from its record; with `idempotency_key: generate`, a POST or PATCH
//!   without one is given a UUIDv7 before its first try), not an upgrade, with a body small enough to hold
//!   (`max_body_bytes`, and its length known up front). Anything else is sent once, as it is.
//! - **When**: no connection could be made (after the balancer's own failover), the
//!   connection was reset before a response, the try ran past `per_try_timeout`, or the
//!   response has one of `statuses` (its body is dropped unread). Never after a response
//!   attache refused, a request body over its limit, or the client's own fault.
//! - **How long to wait**: full jitter over an exponential bound (`backoff` doubling up to
//!   `max_backoff`), or the response's `Retry-After` (in seconds) when that is longer. A wait
//!   that would end past the call's deadline is not taken: the failed try is the answer.
//! - **How many**: `attempts` tries in all, and a budget per upstream: over the last ten
//!   seconds, retries may be `ratio` of the requests plus `min_per_second` a second, so that
//!   retries never multiply an outage.
//!
//! Each retry is counted in `attache_upstream_retries_total{upstream, reason}` and a refusal by
//! the budget in `attache_upstream_retry_budget_exhausted_total`; the CLIENT span's
//! `http.request.resend_count` counts every try after the first.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_config::Retry as RetryConfig;
use attache_filters::Body;
use attache_filters::trace_context::ids::{IdGenerator, RandomIds};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, header};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::balance::Balance;
use super::failure::{Failure, SendError};
use super::{Exchange, Outgoing, Unanswered};
use crate::metrics::ProxyFamilies;

/// What a retried exchange resolves to.
pub type Retrying = Pin<Box<dyn Future<Output = Result<Exchange, Unanswered>> + Send>>;

/// An upstream's retry policy, compiled from `spec.upstreams.<name>.retry`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub statuses: Vec<u16>,
    pub per_try_timeout: Option<Duration>,
    pub max_body_bytes: u64,
    /// POST and PATCH requests without a key get a generated one.
    pub generate_key: bool,
}

impl From<&RetryConfig> for Policy {
    fn from(r: &RetryConfig) -> Self {
        Self {
            attempts: r.attempts.max(1),
            backoff: r.backoff.get(),
            max_backoff: r.max_backoff.get(),
            statuses: r.statuses.clone(),
            per_try_timeout: r.per_try_timeout.map(|t| t.get()),
            max_body_bytes: r.max_body_bytes.0,
            generate_key: r.idempotency_key == attache_config::KeyGeneration::Generate,
        }
    }
}

/// The retry step of one upstream: its policy, its budget, and the balancer below it. Cheap
/// to clone.
#[derive(Clone)]
pub struct Retry {
    policy: Arc<Policy>,
    budget: Arc<Budget>,
    balance: Balance,
    upstream: Arc<str>,
    metrics: Arc<ProxyFamilies>,
}

impl Retry {
    pub fn new(
        config: &RetryConfig,
        balance: Balance,
        upstream: Arc<str>,
        metrics: Arc<ProxyFamilies>,
    ) -> Self {
        Self {
            policy: Arc::new(Policy::from(config)),
            budget: Arc::new(Budget::new(
                config.budget.ratio,
                config.budget.min_per_second,
            )),
            balance,
            upstream,
            metrics,
        }
    }

    /// Sends `out`, trying again where the policy allows.
    pub fn send(&self, out: Outgoing) -> Retrying {
        let this = self.clone();
        Box::pin(async move { this.exchange(out).await })
    }

    async fn exchange(self, mut out: Outgoing) -> Result<Exchange, Unanswered> {
        self.budget.deposit(Instant::now());
        if self.policy.generate_key {
            give_key(&mut out.request);
        }
        if self.policy.attempts < 2 || !may_run_twice(&out.request) {
            return self.balance.send(out).await;
        }
        let Outgoing {
            request,
            started,
            deadline,
        } = out;
        let (head, body) = match hold(request, self.policy.max_body_bytes).await {
            Held::Whole(head, body) => (head, body),
            Held::Streaming(request) => {
                let out = Outgoing {
                    request,
                    started,
                    deadline,
                };
                return self.balance.send(out).await;
            }
            Held::Failed(error) => {
                return Err(Unanswered {
                    error,
                    unsent: None,
                    upstream: self.placeholder(),
                    failed_over: None,
                });
            }
        };
        let mut earlier = 0u32;
        let mut attempt = 1;
        loop {
            let now = Instant::now();
            let try_deadline = self
                .policy
                .per_try_timeout
                .map_or(deadline, |t| (now + t).min(deadline));
            let request = Request::from_parts(head.clone(), attache_filters::full(body.clone()));
            let out = Outgoing {
                request,
                started: now,
                deadline: try_deadline,
            };
            // A retried status's response is dropped unread below: its connection closes with
            // it, and the next try takes another.
            let result = self.balance.send(out).await;
            let Some((reason, after)) = self.retryable(&result, try_deadline < deadline) else {
                return with_earlier(result, earlier);
            };
            if attempt >= self.policy.attempts {
                return with_earlier(result, earlier);
            }
            let wait = self.wait(attempt).max(after.unwrap_or_default());
            if Instant::now() + wait >= deadline {
                return with_earlier(result, earlier);
            }
            if !self.budget.withdraw(Instant::now()) {
                self.metrics.retry_budget_exhausted(&self.upstream);
                return with_earlier(result, earlier);
            }
            self.metrics.upstream_retry(&self.upstream, reason);
            earlier += 1 + match &result {
                Ok(exchange) => exchange.upstream.resend_count,
                Err(unanswered) => unanswered.upstream.resend_count,
            };
            tracing::debug!(upstream = %self.upstream, reason, attempt, wait = ?wait, "retrying");
            drop(result);
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Why a try's result is retried (the metric's `reason`) and the wait its `Retry-After`
    /// asks for; `None` when it is the answer. `per_try`: the try had a deadline of its own,
    /// earlier than the call's.
    fn retryable(
        &self,
        result: &Result<Exchange, Unanswered>,
        per_try: bool,
    ) -> Option<(&'static str, Option<Duration>)> {
        match result {
            Ok(exchange) => {
                let status = exchange.response.status().as_u16();
                self.policy
                    .statuses
                    .contains(&status)
                    .then(|| ("status", retry_after(exchange.response.headers())))
            }
            Err(unanswered) => match Failure::of(&unanswered.error) {
                Failure::Refused | Failure::Dns | Failure::ConnectTimeout | Failure::Connect => {
                    Some(("connect", None))
                }
                Failure::Reset => Some(("reset", None)),
                Failure::Timeout if per_try => Some(("timeout", None)),
                _ => None,
            },
        }
    }

    /// The wait before retry number `attempt` (1 for the first): drawn at random below
    /// `backoff · 2^(attempt-1)`, capped at `max_backoff`.
    fn wait(&self, attempt: u32) -> Duration {
        let bound = self
            .policy
            .backoff
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(self.policy.max_backoff);
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(RandomIds::default().next_u64() % nanos)
    }

    /// The hop's facts when no try was made (the request's own body failed while held).
    fn placeholder(&self) -> attache_filters::facts::UpstreamInfo {
        attache_filters::facts::UpstreamInfo {
            name: self.upstream.clone(),
            url_base: Arc::from(""),
            host: Arc::from(""),
            port: 0,
            version: http::Version::HTTP_11,
            resend_count: 0,
            error: None,
        }
    }
}

/// The last try's result, with the tries before it counted as resends.
fn with_earlier(
    mut result: Result<Exchange, Unanswered>,
    earlier: u32,
) -> Result<Exchange, Unanswered> {
    match &mut result {
        Ok(exchange) => exchange.upstream.resend_count += earlier,
        Err(unanswered) => unanswered.upstream.resend_count += earlier,
    }
    result
}

/// A request that may run twice: an idempotent method (RFC 9110 §9.2.2), or an
/// `Idempotency-Key`; never an upgrade (its connection becomes a tunnel).
fn may_run_twice(req: &Request<Body>) -> bool {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    (idempotent || req.headers().contains_key(IDEMPOTENCY_KEY))
        && !req.headers().contains_key(header::UPGRADE)
}

/// A POST or PATCH without an `Idempotency-Key` gets a fresh one (a UUIDv7), so that it may
/// be tried again: a callee behind an attache with idempotency on answers a repeat whose first
/// try ran from its record.
fn give_key(req: &mut Request<Body>) {
    if !matches!(*req.method(), Method::POST | Method::PATCH)
        || req.headers().contains_key(IDEMPOTENCY_KEY)
    {
        return;
    }
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let key = attache_filters::idempotency::key::generate(&RandomIds::default(), unix_ms);
    req.headers_mut().insert(IDEMPOTENCY_KEY, key);
}

const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// `Retry-After` in seconds (the HTTP-date form is not waited for).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// A request readied for retries.
enum Held {
    /// Its head and whole body, to send as often as needed.
    Whole(http::request::Parts, Bytes),
    /// Too large, or of unknown length: sent once, as it came.
    Streaming(Request<Body>),
    /// Its body failed while being read.
    Failed(SendError),
}

/// Reads the body of `req` whole when its length is known and at most `limit`.
async fn hold(req: Request<Body>, limit: u64) -> Held {
    use http_body::Body as _;
    let known = req.body().size_hint().exact().or_else(|| {
        req.headers()
            .get(header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    });
    if req.body().is_end_stream() {
        let (head, _) = req.into_parts();
        return Held::Whole(head, Bytes::new());
    }
    match known {
        Some(n) if n <= limit => {}
        _ => return Held::Streaming(req),
    }
    let (head, body) = req.into_parts();
    match body.collect().await {
        Ok(collected) => Held::Whole(head, collected.to_bytes()),
        Err(e) => Held::Failed(SendError::ClientBody(e)),
    }
}

/// The retry budget of one upstream: deposits (requests) and withdrawals (retries) over a
/// window of ten one-second slots. A retry is allowed while
/// `ratio · requests + min_per_second · 10 − retries ≥ 1` over the window.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    window: Mutex<Window>,
    origin: Instant,
}

#[derive(Debug, Default)]
struct Window {
    /// Per slot: the second it holds, requests, retries.
    slots: [(u64, u64, u64); SLOTS],
}

const SLOTS: usize = 10;

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self {
            ratio,
            min_per_second,
            window: Mutex::default(),
            origin: Instant::now(),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// Counts a request.
    pub fn deposit(&self, now: Instant) {
        let second = self.second(now);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.slot(second).1 += 1;
    }

    /// Takes a retry from the budget, if it has one.
    pub fn withdraw(&self, now: Instant) -> bool {
        let second = self.second(now);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (mut requests, mut retries) = (0u64, 0u64);
        for &(at, req, ret) in &w.slots {
            if at + (SLOTS as u64) > second {
                requests += req;
                retries += ret;
            }
        }
        let allowed = self.ratio * requests as f64 + f64::from(self.min_per_second) * SLOTS as f64
            - retries as f64;
        if allowed < 1.0 {
            return false;
        }
        w.slot(second).2 += 1;
        true
    }
}

impl Window {
    /// The slot for `second`, emptied first when it last held an older second.
    fn slot(&mut self, second: u64) -> &mut (u64, u64, u64) {
        let slot = &mut self.slots[(second % SLOTS as u64) as usize];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_a_share_of_requests_plus_a_floor() {
        let t0 = Instant::now();
        // No floor: 20% of 10 requests is 2 retries.
        let b = Budget::new(0.2, 0);
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert!(b.withdraw(t0));
        assert!(b.withdraw(t0));
        assert!(!b.withdraw(t0), "a third retry is over 20% of 10");
        // Ten more requests a second later: two more retries.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            b.deposit(t1);
        }
        assert!(b.withdraw(t1) && b.withdraw(t1));
        assert!(!b.withdraw(t1));
        // Ten seconds on, the window has forgotten them: nothing deposited, nothing allowed.
        let later = t0 + Duration::from_secs(11);
        assert!(!b.withdraw(later));

        // The floor: 1 a second over the 10 s window, without any request.
        let floor = Budget::new(0.0, 1);
        let allowed = (0..20).filter(|_| floor.withdraw(t0)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn only_requests_that_may_run_twice_are_retried() {
        let req = |m: Method, key: bool| {
            let mut r = Request::builder().method(m);
            if key {
                r = r.header("idempotency-key", "\"k\"");
            }
            r.body(attache_filters::empty()).unwrap()
        };
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(may_run_twice(&req(m, false)));
        }
        assert!(!may_run_twice(&req(Method::POST, false)));
        assert!(!may_run_twice(&req(Method::PATCH, false)));
        assert!(may_run_twice(&req(Method::POST, true)));
        let mut upgrade = req(Method::GET, false);
        upgrade
            .headers_mut()
            .insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(!may_run_twice(&upgrade));
    }

    #[test]
    fn retry_after_in_seconds_and_nothing_else() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2026 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
