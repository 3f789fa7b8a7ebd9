//! Admission, steps 3 and 4 of §4: buffer the body, find the key (a CloudEvents route reads it
//! from the event), hash scope, key and fingerprint, and make the one atomic claim-or-read;
//! then act on what the store said (run the exchange, replay, refuse, wait, or fail open or
//! closed when the store failed).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use tower::Service;

use super::error::{IdempotencyError, problem};
use super::run::{exchange, replay, timed};
use super::store::{self, Claim, RecordId};
use super::{ENFORCED_MARKER, Inner, RoutePolicy, Settings, Trail, cloudevents, hash, key};
use crate::Body;
use crate::errors::problem_response;
use crate::read_limited;
use crate::trace_context::ids::{IdGenerator, RandomIds};

/// One keyed request's admission.
pub(super) struct Admission {
    pub s: Arc<Settings>,
    pub route: RoutePolicy,
    pub inner: Inner,
    pub trail: Arc<Trail>,
}

/// The record the request claims and what it must match.
struct Claiming {
    id: RecordId,
    fingerprint: [u8; 32],
    owner: store::Owner,
}

impl Admission {
    /// Counts `outcome` and answers with `err`.
    fn reject(&self, outcome: &'static str, err: IdempotencyError) -> Response<Body> {
        self.trail.count(outcome);
        problem(&err, self.s.policy_url.as_ref())
    }

    /// Steps 3 and 4 of admission, then the claim's consequences. `key` is the header's
    /// (empty on a CloudEvents route, which reads the event's).
    pub async fn run(self, req: Request<Body>, key: Vec<u8>) -> Response<Body> {
        // 3. Body, buffered up to the limit.
        let (parts, body) = match self.buffer(req).await {
            Ok(read) => read,
            Err(res) => return res,
        };
        // 4. Scope, key and fingerprint.
        let key = match self.route.cloudevents {
            None => key,
            Some(_) => match cloudevents::identity(&parts.headers, &body) {
                Ok(cloudevents::Identity::Event(k)) => k,
                Ok(cloudevents::Identity::Batch) => {
                    self.trail.count("passed_through");
                    return self
                        .pass(Request::from_parts(parts, crate::full(body)))
                        .await;
                }
                Err(key::KeyError::Missing) => {
                    return self.reject("rejected", IdempotencyError::KeyMissing);
                }
                Err(key::KeyError::Invalid(why)) => {
                    return self.reject("rejected", IdempotencyError::KeyInvalid(why));
                }
            },
        };
        let id = record_id(&self.s, &self.route, &parts, &key);
        self.trail
            .record
            .store((id.key >> 64) as u64, std::sync::atomic::Ordering::Relaxed);
        let claiming = Claiming {
            fingerprint: fingerprint(&self.route, &parts, &body),
            owner: RandomIds::default().trace_id().0,
            id,
        };
        self.claim(Request::from_parts(parts, crate::full(body)), claiming)
            .await
    }

    /// The body, read whole up to the route's limit.
    async fn buffer(
        &self,
        req: Request<Body>,
    ) -> Result<(http::request::Parts, Bytes), Response<Body>> {
        let limit = self.route.max_request_bytes;
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(self.reject("rejected", IdempotencyError::RequestTooLarge(limit)));
        }
        match read_limited(body, limit).await {
            Ok(Some(b)) => Ok((parts, b)),
            Ok(None) => Err(self.reject("rejected", IdempotencyError::RequestTooLarge(limit))),
            Err(e) => Err(problem_response(&crate::errors::ProxyError::BadRequest(
                format!("the request body could not be read: {e}"),
            ))),
        }
    }

    /// The request, passed to the app without enforcement.
    async fn pass(self, request: Request<Body>) -> Response<Body> {
        let mut inner = self.inner;
        let Ok(res) = inner.call(request).await;
        res
    }

    /// The claim, repeated while another request holds the key and the route waits.
    async fn claim(self, request: Request<Body>, c: Claiming) -> Response<Body> {
        let (s, route) = (&self.s, &self.route);
        let deadline = tokio::time::Instant::now() + route.in_flight_wait;
        let mut backoff = Duration::from_millis(25);
        loop {
            // A resent event may differ elsewhere: CloudEvents routes compare the fingerprint
            // only when `strict`.
            let fingerprint = (route.cloudevents != Some(false)).then_some(c.fingerprint);
            let op = s.store.claim(&c.id, fingerprint, c.owner, route.lease);
            let claimed = match timed(s, "claim", op, |_| "ok").await {
                Ok(Ok(claimed)) => claimed,
                Ok(Err(e)) => {
                    self.store_error(format_args!("idempotency claim failed: {e}"));
                    return self.store_failed(request).await;
                }
                Err(_) => {
                    self.store_error(format_args!(
                        "idempotency claim timed out after {:?}",
                        s.store_timeout
                    ));
                    // Best effort: the claim may have landed after all.
                    let (store, id, owner) = (s.store.clone(), c.id.clone(), c.owner);
                    tokio::spawn(async move {
                        let _ = store.release(&id, owner).await;
                    });
                    return self.store_failed(request).await;
                }
            };
            match claimed {
                Claim::Claimed => {
                    self.trail.count("claimed");
                    let Self {
                        s,
                        route,
                        inner,
                        trail,
                    } = self;
                    return exchange(s, route, inner, request, c.id, c.owner, trail).await;
                }
                Claim::Mismatch => {
                    let status = route.mismatch_status;
                    return self.reject("mismatch_422", IdempotencyError::KeyReused(status));
                }
                Claim::InFlight => {
                    if tokio::time::Instant::now() + backoff < deadline {
                        // Jittered, growing from 25 to 250 ms.
                        let jitter = (c.owner as u64 % 16) * backoff.as_millis() as u64 / 32;
                        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                        backoff = (backoff * 2).min(Duration::from_millis(250));
                        continue;
                    }
                    return self.reject("conflict_409", IdempotencyError::InProgress);
                }
                Claim::Done(stored) => {
                    self.trail.count("replayed");
                    return replay(stored, true);
                }
                Claim::Tombstone(stored) => {
                    self.trail.count("replayed");
                    if stored.status == 101 {
                        return problem(&IdempotencyError::NotStored, s.policy_url.as_ref());
                    }
                    return replay(stored, false);
                }
                Claim::Foreign => {
                    self.store_error(format_args!(
                        "idempotency record not written by attache; left untouched"
                    ));
                    return self.reject("store_error", IdempotencyError::StoreUnavailable);
                }
            }
        }
    }

    /// Logs a store failure, at most once per `telemetry.error_log_interval`.
    fn store_error(&self, what: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.s.store_errors.admit() {
            tracing::warn!(route = %self.route.name, suppressed, "{what} (store errors are logged at most once per telemetry.error_log_interval; `suppressed` counts those held back)");
        }
    }

    /// The store failed: the request goes to the app unenforced (`fail_open`), or is refused.
    async fn store_failed(self, request: Request<Body>) -> Response<Body> {
        self.trail.count("store_error");
        if self.route.fail_open {
            self.trail.count("failed_open");
            let mut res = self.pass(request).await;
            res.headers_mut()
                .insert(ENFORCED_MARKER, HeaderValue::from_static("false"));
            return res;
        }
        problem(
            &IdempotencyError::StoreUnavailable,
            self.s.policy_url.as_ref(),
        )
    }
}

/// The credentials besides `Authorization` that tell two principals apart
/// (`scope_credentials`): a session cookie, an API key.
pub const SCOPE_CREDENTIALS: [&str; 4] = ["cookie", "x-api-key", "api-key", "x-auth-token"];

/// The record a request claims: its scope (credentials, and the route when scoped by
/// route) and its key, each hashed with the secret.
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

/// What a retry must match: method, target, content type, the configured headers, the body.
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
