//! Where records live (specs/idempotency.md §4, §7): the [`Store`] trait, its in-memory
//! implementation (the `attache dev` default), and the stored-response encoding.
//!
//! A record is absent, in flight (owner token, fingerprint; TTL = the lease), done (status,
//! headers, body; TTL = retention) or a tombstone (status, headers). Every transition after the
//! claim is made by its owner only: it compares the token first.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// 128-bit owner token of an in-flight record.
pub type Owner = u128;

/// A stored response: status, allow-listed header lines, body (empty for a tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stored {
    pub status: u16,
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
}

impl Stored {
    /// Header lines as one byte string: per line, a big-endian u32 name length, the name, a
    /// u32 value length and the value.
    pub fn encode_headers(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in &self.headers {
            out.extend_from_slice(&(n.len() as u32).to_be_bytes());
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    pub fn decode_headers(mut b: &[u8]) -> Option<Vec<(String, Bytes)>> {
        let mut out = Vec::new();
        let take = |b: &mut &[u8]| -> Option<Vec<u8>> {
            let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
            let v = b.get(4..4 + len)?.to_vec();
            *b = &b[4 + len..];
            Some(v)
        };
        while !b.is_empty() {
            let n = String::from_utf8(take(&mut b)?).ok()?;
            let v = take(&mut b)?;
            out.push((n, Bytes::from(v)));
        }
        Some(out)
    }
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Absent: now in flight, owned by the caller.
    Claimed,
    /// Another request's fingerprint (checked before the state).
    Mismatch,
    InFlight,
    Done(Stored),
    /// Headers only: the response was not storable.
    Tombstone(Stored),
    /// Not a record attache wrote (another type or schema); left untouched.
    Foreign,
}

/// Owner-checked transitions either happen or find another owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Done,
    LostLease,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the idempotency store is unavailable: {0}")]
    Unavailable(String),
    #[error("the memory store is full ({0} records)")]
    Full(usize),
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A record's identity in the store: `H(scope)` and `H(key)`, hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordId {
    pub scope: u128,
    pub key: u128,
}

/// The record operations, each atomic.
pub trait Store: Send + Sync {
    /// Absent: in flight for `owner` with TTL `lease`; else what is there. `fingerprint`
    /// `None` skips the comparison.
    fn claim<'a>(
        &'a self,
        id: &'a RecordId,
        fingerprint: Option<[u8; 32]>,
        owner: Owner,
        lease: Duration,
    ) -> StoreFuture<'a, Claim>;
    /// The owner's in-flight record becomes done (or, with `tombstone`, a tombstone).
    fn complete<'a>(
        &'a self,
        id: &'a RecordId,
        owner: Owner,
        response: &'a Stored,
        tombstone: bool,
        retention: Duration,
    ) -> StoreFuture<'a, Transition>;
    /// The owner's in-flight record is deleted.
    fn release<'a>(&'a self, id: &'a RecordId, owner: Owner) -> StoreFuture<'a, Transition>;
    /// The owner's in-flight record gets TTL `lease` again.
    fn renew<'a>(
        &'a self,
        id: &'a RecordId,
        owner: Owner,
        lease: Duration,
    ) -> StoreFuture<'a, Transition>;
}

// === Memory ===

#[derive(Debug, Clone)]
enum State {
    Run(Owner),
    Done(Stored),
    Tomb(Stored),
}

#[derive(Debug, Clone)]
struct Entry {
    state: State,
    fingerprint: Option<[u8; 32]>,
    expires: Instant,
}

pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The in-process store: one map behind a lock, with the same semantics as Redis. Full at
/// `max_records`, it refuses new claims (a store error) and never evicts a live record. It is
/// per process: never shared by replicas.
pub struct MemoryStore {
    records: Mutex<HashMap<RecordId, Entry>>,
    max_records: usize,
    clock: Clock,
}

impl MemoryStore {
    pub fn new(max_records: usize) -> Self {
        Self::with_clock(max_records, Arc::new(Instant::now))
    }

    pub fn with_clock(max_records: usize, clock: Clock) -> Self {
        Self {
            records: Mutex::new(HashMap::new()),
            max_records,
            clock,
        }
    }

    fn owned<R>(
        &self,
        id: &RecordId,
        owner: Owner,
        f: impl FnOnce(&mut HashMap<RecordId, Entry>, Instant) -> R,
    ) -> Option<R> {
        let now = (self.clock)();
        let mut map = self.records.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(id) {
            Some(e) if e.expires > now && matches!(e.state, State::Run(o) if o == owner) => {
                Some(f(&mut map, now))
            }
            _ => None,
        }
    }
}

impl Store for MemoryStore {
    fn claim<'a>(
        &'a self,
        id: &'a RecordId,
        fingerprint: Option<[u8; 32]>,
        owner: Owner,
        lease: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let now = (self.clock)();
            let mut map = self.records.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = map.get(id).filter(|e| e.expires > now) {
                if let (Some(want), Some(have)) = (fingerprint, e.fingerprint)
                    && want != have
                {
                    return Ok(Claim::Mismatch);
                }
                return Ok(match &e.state {
                    State::Run(_) => Claim::InFlight,
                    State::Done(s) => Claim::Done(s.clone()),
                    State::Tomb(s) => Claim::Tombstone(s.clone()),
                });
            }
            if map.len() >= self.max_records {
                map.retain(|_, e| e.expires > now);
                if map.len() >= self.max_records {
                    return Err(StoreError::Full(self.max_records));
                }
            }
            map.insert(
                id.clone(),
                Entry {
                    state: State::Run(owner),
                    fingerprint,
                    expires: now + lease,
                },
            );
            Ok(Claim::Claimed)
        })
    }

    fn complete<'a>(
        &'a self,
        id: &'a RecordId,
        owner: Owner,
        response: &'a Stored,
        tombstone: bool,
        retention: Duration,
    ) -> StoreFuture<'a, Transition> {
        Box::pin(async move {
            let done = self.owned(id, owner, |map, now| {
                if let Some(e) = map.get_mut(id) {
                    e.state = if tombstone {
                        // Status and headers only, as Redis keeps it.
                        State::Tomb(Stored {
                            body: Bytes::new(),
                            ..response.clone()
                        })
                    } else {
                        State::Done(response.clone())
                    };
                    e.expires = now + retention;
                }
            });
            Ok(done.map_or(Transition::LostLease, |()| Transition::Done))
        })
    }

    fn release<'a>(&'a self, id: &'a RecordId, owner: Owner) -> StoreFuture<'a, Transition> {
        Box::pin(async move {
            let done = self.owned(id, owner, |map, _| {
                map.remove(id);
            });
            Ok(done.map_or(Transition::LostLease, |()| Transition::Done))
        })
    }

    fn renew<'a>(
        &'a self,
        id: &'a RecordId,
        owner: Owner,
        lease: Duration,
    ) -> StoreFuture<'a, Transition> {
        Box::pin(async move {
            let done = self.owned(id, owner, |map, now| {
                if let Some(e) = map.get_mut(id) {
                    e.expires = now + lease;
                }
            });
            Ok(done.map_or(Transition::LostLease, |()| Transition::Done))
        })
    }
}
