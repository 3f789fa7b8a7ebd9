//! What a Context API call can fail with, each a problem+json answer with a stable type.

use std::time::Duration;

use http::StatusCode;

use crate::errors::Problem;

/// A refusal of the API (the caller's request) or of the store (Redis down).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContextError {
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the context `{0}` is not in spec.context.allow")]
    NotAllowed(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{object} is a {actual}, not a {wanted}")]
    TypeMismatch {
        object: String,
        actual: &'static str,
        wanted: &'static str,
    },
    /// `If-Match` did not match, or `If-None-Match: *` found the object.
    #[error("{reason}")]
    PreconditionFailed {
        reason: String,
        /// The object's current ETag, when it exists.
        current: Option<String>,
    },
    #[error("adding {by} to {value} leaves the bounds [{min}, {max}]; nothing changed")]
    OutOfBounds {
        value: i64,
        by: i64,
        min: i64,
        max: i64,
    },
    #[error("{what} is over its limit of {limit}")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("{what} is over its limit of {limit}")]
    TooMany { what: &'static str, limit: u64 },
    #[error("the Idempotency-Key was used for another request to this context")]
    KeyReused,
    #[error("the lock {0} is held by another lease")]
    LockHeld(String, Duration),
    #[error("the lease no longer holds the lock {0}: it ran out, or was released")]
    LeaseLost(String),
    #[error("fencing token {token} of lock {lock} is not its latest grant ({latest})")]
    StaleFence {
        lock: String,
        token: u64,
        latest: u64,
    },
    /// A batch refused because of one of its preconditions (`if[i]`) or ops (`ops[i]`):
    /// nothing was applied.
    #[error("batch {at}: {error}")]
    Batch {
        at: String,
        error: Box<ContextError>,
    },
    /// A capability this store does not have (per-field TTL needs Redis's `HEXPIRE`).
    #[error("{0}")]
    NotImplemented(String),
    #[error("no current context: {0}")]
    NoCurrentContext(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("the context store is unavailable: {0}")]
    Unavailable(String),
}

impl Problem for ContextError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Batch { error, .. } => error.status(),
            Self::InvalidName(_)
            | Self::InvalidRequest(_)
            | Self::TooMany { .. }
            | Self::NoCurrentContext(_) => StatusCode::BAD_REQUEST,
            Self::NotAllowed(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::TypeMismatch { .. }
            | Self::OutOfBounds { .. }
            | Self::LockHeld(..)
            | Self::LeaseLost(_) => StatusCode::CONFLICT,
            Self::StaleFence { .. } => StatusCode::PRECONDITION_FAILED,
            Self::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::Batch { error, .. } => error.slug(),
            Self::InvalidName(_) => "context-invalid-name",
            Self::InvalidRequest(_) => "context-invalid-request",
            Self::NotAllowed(_) => "context-not-allowed",
            Self::NotFound(_) => "context-not-found",
            Self::TypeMismatch { .. } => "type-mismatch",
            Self::PreconditionFailed { .. } => "precondition-failed",
            Self::OutOfBounds { .. } => "counter-out-of-bounds",
            Self::TooLarge { .. } => "context-too-large",
            Self::TooMany { .. } => "context-too-many",
            Self::KeyReused => "idempotency-key-reused",
            Self::LockHeld(..) => "lock-held",
            Self::LeaseLost(_) => "lease-lost",
            Self::StaleFence { .. } => "stale-fencing-token",
            Self::NoCurrentContext(_) => "no-current-context",
            Self::MethodNotAllowed(_) => "method-not-allowed",
            Self::Unavailable(_) => "context-store-unavailable",
            Self::NotImplemented(_) => "not-implemented",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::Batch { error, .. } => error.title(),
            Self::InvalidName(_) => "Invalid context or object name",
            Self::InvalidRequest(_) => "Invalid Context API request",
            Self::NotAllowed(_) => "Context not allowed",
            Self::NotFound(_) => "Not found",
            Self::TypeMismatch { .. } => "Object of another type",
            Self::PreconditionFailed { .. } => "Precondition failed",
            Self::OutOfBounds { .. } => "Counter out of bounds",
            Self::TooLarge { .. } => "Too large",
            Self::TooMany { .. } => "Too many members or fields",
            Self::KeyReused => "Idempotency-Key reused",
            Self::LockHeld(..) => "Lock held",
            Self::LeaseLost(_) => "Lease lost",
            Self::StaleFence { .. } => "Stale fencing token",
            Self::NoCurrentContext(_) => "No current context",
            Self::MethodNotAllowed(_) => "Method not allowed",
            Self::Unavailable(_) => "Context store unavailable",
            Self::NotImplemented(_) => "Not implemented by this store",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable(_) => Some(Duration::from_secs(1)),
            Self::LockHeld(_, left) => Some(*left),
            _ => None,
        }
    }
}
