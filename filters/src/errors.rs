//! Every response attache makes up itself is an RFC 9457 `application/problem+json` document
//! built here, so clients see one shape and one set of stable `type` URIs whatever failed.
//!
//! Each concern has its own error enum; it implements [`Problem`] to say which status, type and
//! title it maps to. [`problem_response`] is the only place that turns one into a response.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::Body;

/// 499, nginx's status for a client that closed its request before the answer: what access logs
/// and the `status_class="4xx"` series record for a client abort, so it never reads as a 5xx.
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// Base of the stable problem `type` URIs; each problem appends its slug.
pub const PROBLEM_BASE: &str = "https://attache.dev/problems/";

/// What an error needs to become a problem+json response.
pub trait Problem: std::fmt::Display {
    fn status(&self) -> StatusCode;
    /// Stable identifier appended to [`PROBLEM_BASE`]; never changes once released.
    fn slug(&self) -> &'static str;
    /// Short, constant summary of the problem type.
    fn title(&self) -> &'static str;
    /// Seconds a client should wait before retrying, for 429 and 503.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// The request id to quote (`request_id`), so a refused caller can name the request to
    /// whoever reads the logs.
    fn request_id(&self) -> Option<&str> {
        None
    }
}

/// Errors of the proxy core: client limits and upstream failures.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the request header section is {size} bytes; the limit is {limit}")]
    HeadersTooLarge { size: usize, limit: u64 },
    #[error("the request has {count} header fields; the limit is {limit}")]
    TooManyHeaders { count: usize, limit: u32 },
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the client did not send a complete request head within {0:?}")]
    HeaderReadTimeout(Duration),
    /// The client's body broke HTTP's framing (a bad chunk size or line ending, an oversized
    /// chunk extension, more or fewer bytes than its length): the client's fault, never the
    /// upstream's.
    #[error("the request body is malformed: {0}")]
    MalformedBody(String),
    /// A request body in a transfer coding attache does not decode (`gzip, chunked`): passed
    /// on, its bytes would reach the app coded and without their label (RFC 9112 §6.1).
    #[error(
        "the transfer coding `{0}` is not implemented; send the body chunked or with a Content-Length (a Content-Encoding is passed on as is)"
    )]
    UnsupportedTransferCoding(String),
    /// The client went away in the middle of its body (a closed connection, a reset stream).
    /// Nobody reads the answer; it is there for the access log and the metrics.
    #[error("the client closed the request before its body was complete")]
    ClientAborted,
    #[error("{0}")]
    BadRequest(String),
    /// A destination the forward proxy may not reach (its allowlist, a metadata address).
    #[error("{0}")]
    Forbidden(String),
    #[error("upstream `{upstream}` could not be reached: {reason}")]
    UpstreamUnreachable { upstream: String, reason: String },
    #[error("upstream `{upstream}` did not respond within {after:?}")]
    UpstreamTimeout { upstream: String, after: Duration },
    #[error("upstream `{upstream}` failed: {reason}")]
    UpstreamFailed { upstream: String, reason: String },
    #[error("{0}")]
    Unavailable(String),
    /// A request head that could not be parsed, answered before any request exists: the
    /// status hyper chose for it (400, or 414 and 431 for a target or head past its limits).
    #[error("{}", malformed_detail(*.0))]
    Malformed(StatusCode),
}

fn malformed_detail(status: StatusCode) -> &'static str {
    match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            "the request head is too large, or has too many header fields, to be read"
        }
        StatusCode::URI_TOO_LONG => "the request target is too long",
        _ => "the request head is not valid HTTP/1.1: a malformed request line or header field",
    }
}

impl Problem for ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            Self::HeadersTooLarge { .. } | Self::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeaderReadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BadRequest(_) | Self::MalformedBody(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::ClientAborted => CLIENT_CLOSED_REQUEST,
            Self::UnsupportedTransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            Self::UpstreamUnreachable { .. } | Self::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Malformed(status) => *status,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::HeadersTooLarge { .. } => "headers-too-large",
            Self::TooManyHeaders { .. } => "too-many-headers",
            Self::BodyTooLarge { .. } => "body-too-large",
            Self::HeaderReadTimeout(_) => "header-read-timeout",
            Self::BadRequest(_) => "bad-request",
            Self::Forbidden(_) => "destination-not-allowed",
            Self::MalformedBody(_) => "malformed-request",
            Self::ClientAborted => "client-closed-request",
            Self::UnsupportedTransferCoding(_) => "transfer-coding-not-implemented",
            Self::UpstreamUnreachable { .. } => "upstream-unreachable",
            Self::UpstreamTimeout { .. } => "upstream-timeout",
            Self::UpstreamFailed { .. } => "upstream-failed",
            Self::Unavailable(_) => "unavailable",
            Self::Malformed(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE) => "headers-too-large",
            Self::Malformed(StatusCode::URI_TOO_LONG) => "uri-too-long",
            Self::Malformed(_) => "malformed-request",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::HeadersTooLarge { .. } => "Request headers too large",
            Self::TooManyHeaders { .. } => "Too many request headers",
            Self::BodyTooLarge { .. } => "Request body too large",
            Self::HeaderReadTimeout(_) => "Request head not received in time",
            Self::BadRequest(_) => "Bad request",
            Self::Forbidden(_) => "Destination not allowed",
            Self::MalformedBody(_) => "Malformed request",
            Self::ClientAborted => "Client closed the request",
            Self::UnsupportedTransferCoding(_) => "Transfer coding not implemented",
            Self::UpstreamUnreachable { .. } => "Upstream unreachable",
            Self::UpstreamTimeout { .. } => "Upstream timed out",
            Self::UpstreamFailed { .. } => "Upstream failed",
            Self::Unavailable(_) => "Service unavailable",
            Self::Malformed(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE) => {
                "Request headers too large"
            }
            Self::Malformed(StatusCode::URI_TOO_LONG) => "Request target too long",
            Self::Malformed(_) => "Malformed request",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        matches!(self, Self::Unavailable(_)).then(|| Duration::from_secs(1))
    }
}

/// The problem+json document for `problem`.
pub fn problem_body(problem: &dyn Problem) -> Bytes {
    let status = problem.status();
    let mut doc = serde_json::json!({
        "type": format!("{PROBLEM_BASE}{}", problem.slug()),
        "title": problem.title(),
        "status": status.as_u16(),
        "detail": problem.to_string(),
    });
    if let (Some(id), Some(map)) = (problem.request_id(), doc.as_object_mut()) {
        map.insert("request_id".into(), id.into());
    }
    Bytes::from(doc.to_string())
}

/// The response for `problem`: status, `content-type: application/problem+json`, no caching,
/// and `retry-after` where it applies.
pub fn problem_response(problem: &dyn Problem) -> Response<Body> {
    let body = problem_body(problem);
    let mut res = Response::new(crate::full(body));
    *res.status_mut() = problem.status();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(after) = problem.retry_after() {
        h.insert(
            header::RETRY_AFTER,
            // Whole seconds, rounded up: a client must not come back too early.
            HeaderValue::from((after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1)),
        );
    }
    res
}

/// The same response as raw HTTP/1.1 bytes, ending the connection: for the few errors found
/// before a request exists to answer (a client too slow to send its request head, a head that
/// cannot be parsed).
pub fn problem_http1_bytes(problem: &dyn Problem) -> Vec<u8> {
    let body = problem_body(problem);
    let status = problem.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncache-control: no-store\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// An error and its sources, as one line: `a: b: c`, without repeating a source whose text an
/// earlier one already contains.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn responses_are_problem_json_with_stable_types() {
        let err = ProxyError::UpstreamTimeout {
            upstream: "app".into(),
            after: Duration::from_secs(2),
        };
        let res = problem_response(&err);
        assert_eq!(res.status(), 504);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "https://attache.dev/problems/upstream-timeout");
        assert_eq!(v["status"], 504);
        assert_eq!(v["detail"], "upstream `app` did not respond within 2s");
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let res = problem_response(&ProxyError::Unavailable("draining".into()));
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "1");
    }

    #[test]
    fn raw_http1_form_is_a_complete_response() {
        let raw = problem_http1_bytes(&ProxyError::HeaderReadTimeout(Duration::from_secs(10)));
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("header-read-timeout"));
    }
}
