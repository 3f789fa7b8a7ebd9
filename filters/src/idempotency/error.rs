//! The answers of §5.3: each refusal the idempotency step gives, as a problem+json response
//! with its status, type, `Retry-After`, `Cache-Control: no-store`, and the policy link.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::Body;
use crate::errors::{Problem, problem_response};

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

/// The response for `err`, never cached, with the policy link when one is configured.
pub(super) fn problem(err: &IdempotencyError, policy_url: Option<&HeaderValue>) -> Response<Body> {
    let mut res = problem_response(err);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(url) = policy_url {
        res.headers_mut().insert(header::LINK, url.clone());
    }
    res
}
