//! The Context API (specs/context-api.md): typed shared state beside the app, on a loopback
//! HTTP API of its own, grouped under a context name.
//!
//! - this file: the service (`ContextApi::serve`): the body read within its limit, the
//!   context checked against `allow`, the operation run in the store within the store
//!   timeout, counted, and answered;
//! - `api.rs`: paths, methods and bodies into operations, outcomes into answers;
//! - `op.rs`: the operations every backend runs; `store.rs`: the store interface;
//!   `memory.rs`: the memory backend; `names.rs`: names and `allow` patterns;
//!   `error.rs`: the problem types; `metrics.rs`: the families.
//!
//! Built so far: counters, maps, sets and locks (leases, renewal, release, waiting, fencing
//! tokens and fenced writes), with versions (`ETag`, `If-Match`, `If-None-Match: *`), TTL
//! written with the data (`create`, `touch`, `keep`), retries applied once under an
//! `Idempotency-Key`, limits, the context's listing and deletion, and fresh context names.
//! Queues (leases with a visibility timeout, redelivery, dead letters, delays, dedupe), atomic
//! batches across objects of one context, the Redis backend (`redis_store.rs`), and
//! `_current` (`current.rs`). Push delivery to the app is the proxy's
//! (`proxy/src/context_push.rs`): it needs attache's own inbound listener.

pub mod api;
pub mod current;
pub mod error;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod op;
pub mod redis_store;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};

use crate::Body;
use crate::trace_context::ids::{IdGenerator, RandomIds};
use api::{Rules, Target};
use error::ContextError;
use op::Op;
use store::{Once, Store};

/// The API's OpenAPI 3.1 document, served at `/openapi.json`; `tests/tests/context.rs` checks
/// every operation it lists against the running API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Everything the service needs.
pub struct Settings {
    pub store: Arc<dyn Store>,
    pub allow: names::Allow,
    pub rules: Rules,
    /// How long a keyed request's outcome is kept for its retries.
    pub retention: Duration,
    /// The most one store operation may take; past it, 503.
    pub store_timeout: Duration,
    pub max_body_bytes: usize,
    pub metrics: Arc<metrics::ContextFamilies>,
    /// What resolves `_current` (`None` when context restoration is off).
    pub current: Option<current::Current>,
}

pub struct ContextApi {
    s: Settings,
    ids: RandomIds,
}

/// What one Context API call did, for its span.
#[derive(Debug, Clone)]
pub struct ContextInfo {
    pub context: String,
    pub operation: &'static str,
}

impl crate::facts::Fact for ContextInfo {
    fn attributes(&self, attr: crate::facts::Attributes<'_>) {
        use crate::facts::Value;
        attr("attache.context", Value::from(self.context.as_str()));
        attr("attache.context.operation", Value::from(self.operation));
    }
}

impl ContextApi {
    pub fn new(settings: Settings) -> Self {
        Self {
            s: settings,
            ids: RandomIds::default(),
        }
    }

    /// Answers one request of the Context API.
    pub async fn serve(self: Arc<Self>, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let limit = u64::try_from(self.s.max_body_bytes).unwrap_or(u64::MAX);
        let bytes = match crate::read_limited(body, limit).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return api::refuse(&ContextError::TooLarge {
                    what: "the request body",
                    limit,
                });
            }
            Err(e) => {
                return api::refuse(&ContextError::InvalidRequest(format!(
                    "reading the request body failed: {e}"
                )));
            }
        };
        let (mut res, info) = match self.answer(&parts, &bytes).await {
            Ok(answered) => answered,
            Err((e, info)) => (api::refuse(&e), info),
        };
        if let Some(info) = info {
            crate::facts::hand_up(res.extensions_mut(), Arc::new(info));
        }
        res
    }

    async fn answer(
        &self,
        parts: &http::request::Parts,
        bytes: &Bytes,
    ) -> Result<(Response<Body>, Option<ContextInfo>), (ContextError, Option<ContextInfo>)> {
        if parts.uri.path() == "/openapi.json" {
            if parts.method != Method::GET {
                return Err((
                    ContextError::MethodNotAllowed(parts.method.to_string()),
                    None,
                ));
            }
            let mut res = Response::new(crate::full(Bytes::from_static(OPENAPI.as_bytes())));
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return Ok((res, None));
        }
        // `_current`: the path with the name the inbound request's baggage gave.
        let resolved;
        let mut path = parts.uri.path();
        if let Some(rest) = path.strip_prefix("/v1/contexts/_current")
            && (rest.is_empty() || rest.starts_with('/'))
        {
            let name = self.current(&parts.headers).map_err(|e| (e, None))?;
            resolved = format!("/v1/contexts/{name}{rest}");
            path = &resolved;
        }
        let target = api::target(path).map_err(|e| (e, None))?;
        let (ctx, op, label, key, wait) = match target {
            Target::Contexts if parts.method == Method::POST => {
                return self
                    .new_context(bytes)
                    .map(|r| (r, None))
                    .map_err(|e| (e, None));
            }
            Target::Contexts => {
                return Err((
                    ContextError::MethodNotAllowed(parts.method.to_string()),
                    None,
                ));
            }
            Target::Context(ctx) => {
                names::context(ctx).map_err(|e| (e, None))?;
                let (op, label) = match parts.method {
                    Method::GET => (Op::List, "context_list"),
                    Method::DELETE => (Op::DeleteContext, "context_delete"),
                    _ => {
                        return Err((
                            ContextError::MethodNotAllowed(parts.method.to_string()),
                            None,
                        ));
                    }
                };
                let key = api::idempotency_key(&op, &parts.headers).map_err(|e| (e, None))?;
                (ctx.to_owned(), op, label, key, Duration::ZERO)
            }
            Target::Batch(ctx) => {
                if parts.method != Method::POST {
                    return Err((
                        ContextError::MethodNotAllowed(parts.method.to_string()),
                        None,
                    ));
                }
                names::context(ctx).map_err(|e| (e, None))?;
                let op = api::parse_batch(ctx, bytes, &self.s.rules, &|| self.lease_id())
                    .map_err(|e| (e, None))?;
                let key = api::idempotency_key(&op, &parts.headers).map_err(|e| (e, None))?;
                (ctx.to_owned(), op, "batch", key, Duration::ZERO)
            }
            Target::Object { .. } => {
                let p = api::parse(
                    &parts.method,
                    path,
                    parts.uri.query(),
                    &parts.headers,
                    bytes,
                    &self.s.rules,
                    self.lease_id(),
                )
                .map_err(|e| (e, None))?;
                (p.ctx, p.op, p.label, p.key, p.wait)
            }
        };
        let info = ContextInfo {
            context: ctx.clone(),
            operation: label,
        };
        if !self.s.allow.permits(&ctx) {
            self.s.metrics.count(label, "not_allowed");
            return Err((ContextError::NotAllowed(ctx), Some(info)));
        }
        // The target as resolved: a retry naming the context, or `_current`, is the same.
        let target = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let fingerprint = api::fingerprint(&parts.method, &target, bytes);
        let key_text = key.as_deref().map(String::from_utf8_lossy);
        let once = key_text.as_deref().map(|key| Once {
            key,
            fingerprint,
            retention: self.s.retention,
        });
        // An acquire that may wait asks again while the lock is held, until `wait` is over.
        let deadline = tokio::time::Instant::now() + wait;
        let ran = loop {
            let ran = tokio::time::timeout(self.s.store_timeout, self.s.store.run(&ctx, &op, once))
                .await
                .unwrap_or_else(|_| {
                    Err(ContextError::Unavailable(format!(
                        "no answer within {:?}",
                        self.s.store_timeout
                    )))
                });
            let now = tokio::time::Instant::now();
            match &ran {
                // A lease of an empty queue that may wait: ask again shortly.
                Ok(store::Ran {
                    outcome: op::Outcome::Messages(m),
                    ..
                }) if m.is_empty() && matches!(op, Op::Lease { .. }) && now < deadline => {
                    tokio::time::sleep(Duration::from_millis(50).min(deadline - now)).await;
                }
                Err(ContextError::LockHeld(_, left)) if now < deadline => {
                    let pause = (*left)
                        .min(Duration::from_millis(25))
                        .min(deadline - now)
                        .max(Duration::from_millis(1));
                    tokio::time::sleep(pause).await;
                }
                _ => break ran,
            }
        };
        match ran {
            Ok(ran) => {
                self.s
                    .metrics
                    .count(label, if ran.replayed { "replayed" } else { "ok" });
                let head = parts.method == Method::HEAD;
                Ok((api::respond(&ran.outcome, ran.replayed, head), Some(info)))
            }
            Err(e) => {
                self.s.metrics.count(label, metrics::outcome_of(&e));
                Err((e, Some(info)))
            }
        }
    }

    fn current(&self, headers: &http::HeaderMap) -> Result<String, ContextError> {
        let (result, label) = match &self.s.current {
            Some(current) => match current.resolve(headers, &self.s.allow) {
                Ok(name) => (Ok(name), "resolved"),
                Err((e, label)) => (Err(e), label),
            },
            None => (
                Err(ContextError::NoCurrentContext(
                    "context restoration is off (spec.trace.restore), so inbound requests are not remembered".into(),
                )),
                "off",
            ),
        };
        self.s
            .metrics
            .current
            .get_or_create(&metrics::CurrentLabels { result: label })
            .inc();
        result
    }

    /// `POST /v1/contexts {"prefix":"order-"}`: a fresh name, the prefix then a ULID.
    fn new_context(&self, bytes: &Bytes) -> Result<Response<Body>, ContextError> {
        let body: api::NewContext = if bytes.iter().all(u8::is_ascii_whitespace) {
            api::NewContext::default()
        } else {
            serde_json::from_slice(bytes)
                .map_err(|e| ContextError::InvalidRequest(format!("the request body: {e}")))?
        };
        let name = format!("{}{}", body.prefix, self.ulid());
        names::context(&name)?;
        if !self.s.allow.permits(&name) {
            return Err(ContextError::NotAllowed(name));
        }
        self.s.metrics.count("context_create", "ok");
        let mut res = Response::new(crate::full(Bytes::from(
            serde_json::json!({ "name": name }).to_string(),
        )));
        *res.status_mut() = StatusCode::CREATED;
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(res)
    }

    /// A lease's id: 128 random bits, in hex. Whoever holds it may renew and release the lock.
    fn lease_id(&self) -> String {
        format!("{:016x}{:016x}", self.ids.next_u64(), self.ids.next_u64())
    }

    /// A ULID: 48 bits of milliseconds and 80 random bits, in Crockford's base 32 (26
    /// characters, sorting by time).
    fn ulid(&self) -> String {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let random = (u128::from(self.ids.next_u64()) << 64 | u128::from(self.ids.next_u64()))
            & ((1u128 << 80) - 1);
        let value = (u128::from(store::now_ms()) & ((1 << 48) - 1)) << 80 | random;
        (0..26)
            .rev()
            .map(|i| ALPHABET[((value >> (i * 5)) & 31) as usize] as char)
            .collect()
    }
}

#[cfg(test)]
mod tests;
