//! The store interface every backend implements: one operation, on one context, atomically,
//! applied at most once under an `Idempotency-Key`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::error::ContextError;
use super::op::{Op, Outcome};

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ContextError>> + Send + 'a>>;

/// What a store holds at most (spec §2); over one, the write is refused and nothing changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// One map field's value, or one set member, serialized.
    pub max_value_bytes: usize,
    /// A whole map: its field names and values, serialized.
    pub max_map_bytes: usize,
    pub max_map_fields: usize,
    pub max_set_members: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_bytes: 64 * 1024,
            max_map_bytes: 1024 * 1024,
            max_map_fields: 10_000,
            max_set_members: 100_000,
        }
    }
}

/// A mutating request's `Idempotency-Key`: applied once; a retry with the same key and the
/// same request gets the first outcome, with another request `idempotency-key-reused`.
#[derive(Debug, Clone, Copy)]
pub struct Once<'a> {
    pub key: &'a str,
    /// SHA-256 of the request (method, path, body).
    pub fingerprint: [u8; 32],
    /// How long the outcome is kept for retries.
    pub retention: Duration,
}

/// An operation's outcome, and whether it is a stored one given back to a retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Ran {
    pub outcome: Outcome,
    pub replayed: bool,
}

pub trait Store: Send + Sync {
    /// Runs `op` on the context `ctx` as one atomic step.
    fn run<'a>(&'a self, ctx: &'a str, op: &'a Op, once: Option<Once<'a>>) -> StoreFuture<'a, Ran>;
}

/// Milliseconds since the Unix epoch: expiries are wall-clock times, as Redis keeps them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
