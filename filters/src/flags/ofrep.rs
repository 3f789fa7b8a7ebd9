//! OFREP v0.3.0 (specs/feature-flags.md §10): the OpenFeature Remote Evaluation Protocol, so an
//! app using an OpenFeature SDK with the OFREP provider resolves flags against attache with
//! only `OFREP_ENDPOINT=http://127.0.0.1:8016`.
//!
//! - `POST /ofrep/v1/evaluate/flags/{key}`: one flag;
//! - `POST /ofrep/v1/evaluate/flags`: every flag in the snapshot, with an `ETag` so a polling
//!   SDK gets 304 until a flag changes.
//!
//! The context is the body's `context`, then `static`, then the header-sourced attributes
//! (flagd's precedence, lowest first).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::context::ContextRules;
use super::count::{EvalPath, count};
use super::decision::{FlagDecision, FlagDecisions};
use super::eval::{Decision, ErrorCode, FlagSet, Kind};
use super::logic::FractionalVersion;
use super::settings::EventSettings;
use super::store::FlagStore;
use crate::Body;

const PREFIX: &str = "/ofrep/v1/evaluate/flags";

pub struct Ofrep {
    pub store: Arc<FlagStore>,
    pub fractional: FractionalVersion,
    /// `static` and the header-sourced attributes of `spec.flags.context`.
    pub context: ContextRules,
    /// The flag families of the proxy's registry (`Metrics::family`).
    pub metrics: Arc<super::metrics::FlagFamilies>,
    pub max_body_bytes: usize,
    pub clock: fn() -> u64,
    /// A single evaluation adds a `feature_flag.evaluation` event to the request's span.
    pub events: EventSettings,
}

enum Endpoint {
    Single(String),
    Bulk,
}

fn endpoint(path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix(PREFIX)?;
    match rest {
        "" | "/" => Some(Endpoint::Bulk),
        _ => {
            let key = rest.strip_prefix('/')?;
            let key = key.strip_suffix('/').unwrap_or(key);
            (!key.is_empty() && !key.contains('/'))
                .then(|| Endpoint::Single(crate::codec::percent::decode_str(key, false)))
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut res = Response::new(crate::full(bytes));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn details(status: StatusCode, text: &str) -> Response<Body> {
    json_response(status, &json!({ "errorDetails": text }))
}

/// The body's `context`: absent or empty means an empty context; anything else that is not
/// a JSON object is `INVALID_CONTEXT`.
fn body_context(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    match doc {
        Value::Object(mut m) => match m.remove("context") {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(c)) => Ok(c),
            Some(_) => Err("`context` must be a JSON object".to_owned()),
        },
        _ => Err("the body must be a JSON object".to_owned()),
    }
}

/// One flag's result, as OFREP writes it in a single answer and in the bulk list.
fn result_object(key: &str, d: &Decision<'_>) -> (StatusCode, Value) {
    let metadata = Value::Object(d.metadata.clone());
    match &d.error {
        Some((code, message)) => {
            let status = match code {
                ErrorCode::FlagNotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            (
                status,
                json!({"key": key, "errorCode": code.as_str(), "errorDetails": message, "metadata": metadata}),
            )
        }
        None => match (&d.value, d.variant) {
            (Some(value), Some(variant)) => (
                StatusCode::OK,
                json!({"key": key, "value": value, "reason": d.reason.as_str(), "variant": variant, "metadata": metadata}),
            ),
            _ => (
                StatusCode::OK,
                json!({"key": key, "reason": d.reason.as_str(), "metadata": metadata}),
            ),
        },
    }
}

/// Whether `If-None-Match` matches `etag` under weak comparison.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || strip(t) == strip(etag))
}

impl Ofrep {
    /// The context of one OFREP request.
    fn context(&self, body: Map<String, Value>, uri: &Uri, headers: &HeaderMap) -> Value {
        let mut ctx = body;
        for (k, v) in &self.context.static_attributes {
            ctx.insert(k.clone(), v.clone());
        }
        self.context.add_attributes(&mut ctx, uri, headers);
        Value::Object(ctx)
    }

    /// Answers one OFREP request; `body` is `None` when it was over `max_body_bytes`.
    pub fn respond(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Option<Bytes>,
    ) -> Response<Body> {
        let Some(endpoint) = endpoint(uri.path()) else {
            return details(
                StatusCode::NOT_FOUND,
                "no such OFREP endpoint; use POST /ofrep/v1/evaluate/flags[/{key}]",
            );
        };
        if method != Method::POST {
            let mut res = details(StatusCode::METHOD_NOT_ALLOWED, "use POST");
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return res;
        }
        let Some(body) = body else {
            return details(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the request body is over {} bytes (spec.flags.ofrep.max_body_bytes)",
                    self.max_body_bytes
                ),
            );
        };
        let body_ctx = body_context(&body);
        let snap = self.store.snapshot();
        match endpoint {
            Endpoint::Single(key) => match body_ctx {
                Ok(c) => self.single(&snap, key, self.context(c, uri, headers)),
                Err(e) => json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"key": key, "errorCode": "INVALID_CONTEXT", "errorDetails": e}),
                ),
            },
            Endpoint::Bulk => match body_ctx {
                Ok(c) => self.bulk(&snap, &self.context(c, uri, headers), headers),
                Err(e) => json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"errorCode": "INVALID_CONTEXT", "errorDetails": e}),
                ),
            },
        }
    }

    /// One flag evaluated; its decision handed up for span events when they are on.
    fn single(&self, snap: &FlagSet, key: String, ctx: Value) -> Response<Body> {
        let d = snap.decide(&key, &ctx, (self.clock)(), Kind::Any, self.fractional);
        count(&self.metrics, &key, &d, EvalPath::Ofrep);
        let (status, body) = result_object(&key, &d);
        let mut res = json_response(status, &body);
        if self.events.enabled {
            let context_id = self
                .events
                .include_context_id
                .then(|| ctx.get("targetingKey").and_then(Value::as_str))
                .flatten()
                .map(str::to_owned);
            crate::facts::hand_up(
                res.extensions_mut(),
                Arc::new(FlagDecisions {
                    decisions: vec![FlagDecision::of(
                        Arc::from(key.as_str()),
                        snap.flags.get(&key),
                        &d,
                    )],
                    context_id,
                    events: self.events,
                }),
            );
        }
        res
    }

    /// Every flag evaluated, in key order, with the set's metadata; an `ETag` of the answer,
    /// and 304 when the caller already has it (`If-None-Match`).
    fn bulk(&self, snap: &FlagSet, ctx: &Value, headers: &HeaderMap) -> Response<Body> {
        let now = (self.clock)();
        let mut keys: Vec<&String> = snap.flags.keys().collect();
        keys.sort();
        let flags: Vec<Value> = keys
            .into_iter()
            .map(|key| {
                let d = snap.decide(key, ctx, now, Kind::Any, self.fractional);
                count(&self.metrics, key, &d, EvalPath::OfrepBulk);
                result_object(key, &d).1
            })
            .collect();
        let doc = json!({"flags": flags, "metadata": Value::Object(snap.metadata.clone())});
        let bytes = serde_json::to_vec(&doc).unwrap_or_default();
        let digest = Sha256::digest(&bytes);
        let mut etag = String::with_capacity(34);
        etag.push('"');
        crate::codec::hex::push(&mut etag, &digest[..16]);
        etag.push('"');
        let tag = HeaderValue::from_str(&etag).ok();
        let mut res = if none_match(headers, &etag) {
            let mut r = Response::new(crate::full(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            let mut r = Response::new(crate::full(bytes));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        };
        if let Some(tag) = tag {
            res.headers_mut().insert(header::ETAG, tag);
        }
        res
    }
}

impl Ofrep {
    /// Serves one OFREP request: reads its body (up to `max_body_bytes`) and answers.
    pub async fn serve(self: Arc<Self>, req: http::Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let limit = u64::try_from(self.max_body_bytes).unwrap_or(u64::MAX);
        match crate::read_limited(body, limit).await {
            Ok(body) => self.respond(&parts.method, &parts.uri, &parts.headers, body),
            Err(e) => details(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body failed: {e}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(matches!(
            endpoint("/ofrep/v1/evaluate/flags"),
            Some(Endpoint::Bulk)
        ));
        assert!(matches!(
            endpoint("/ofrep/v1/evaluate/flags/"),
            Some(Endpoint::Bulk)
        ));
        assert!(
            matches!(endpoint("/ofrep/v1/evaluate/flags/new%20one/"), Some(Endpoint::Single(k)) if k == "new one")
        );
        assert!(endpoint("/ofrep/v1/evaluate/flagsx").is_none());
        assert!(endpoint("/ofrep/v1/evaluate/flags/a/b").is_none());
    }

    #[test]
    fn contexts() {
        assert_eq!(body_context(b"").unwrap(), Map::new());
        assert_eq!(body_context(b"{}").unwrap(), Map::new());
        assert!(body_context(b"{\"context\": 3}").is_err());
        assert!(body_context(b"nope").is_err());
        let c = body_context(br#"{"context":{"targetingKey":"u"}}"#).unwrap();
        assert_eq!(c["targetingKey"], "u");
    }

    #[test]
    fn weak_comparison() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(none_match(&h, "\"abc\""));
        assert!(!none_match(&h, "\"abd\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(none_match(&h, "\"q\""));
    }
}
