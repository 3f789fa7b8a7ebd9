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
    #[error("the memory store is full ({0})")]
    Full(String),
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
    /// The bytes this record holds, as counted against `max_bytes`.
    size: usize,
}

/// What a record costs beyond its response: the map slot, ids and fingerprint, roughly.
const ENTRY_OVERHEAD: usize = 128;

impl Stored {
    /// The bytes a stored response holds in memory.
    fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 16)
                .sum::<usize>()
    }
}

struct Records {
    map: HashMap<RecordId, Entry>,
    /// The sum of the entries' `size`.
    bytes: usize,
}

impl Records {
    /// Drops expired records.
    fn purge(&mut self, now: Instant) {
        let mut freed = 0;
        self.map.retain(|_, e| {
            let live = e.expires > now;
            if !live {
                freed += e.size;
            }
            live
        });
        self.bytes -= freed;
    }

    fn remove(&mut self, id: &RecordId) {
        if let Some(e) = self.map.remove(id) {
            self.bytes -= e.size;
        }
    }
}

pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The in-process store: one map behind a lock, with the same semantics as Redis. Full at
/// `max_records` records or `max_bytes` of stored responses, it refuses new claims (a store
/// error) and never evicts a live record; a response that would pass `max_bytes` is kept as a
/// tombstone (status and headers), as an oversized one is. It is per process: never shared by
/// replicas.
pub struct MemoryStore {
    records: Mutex<Records>,
    max_records: usize,
    max_bytes: usize,
    clock: Clock,
}

impl MemoryStore {
    pub fn new(max_records: usize) -> Self {
        Self::with_clock(max_records, Arc::new(Instant::now))
    }

    pub fn with_clock(max_records: usize, clock: Clock) -> Self {
        Self {
            records: Mutex::new(Records {
                map: HashMap::new(),
                bytes: 0,
            }),
            max_records,
            max_bytes: usize::MAX,
            clock,
        }
    }

    /// Bounds the memory the records hold.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The bytes the records hold now.
    pub fn bytes(&self) -> usize {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    fn owned<R>(
        &self,
        id: &RecordId,
        owner: Owner,
        f: impl FnOnce(&mut Records, Instant) -> R,
    ) -> Option<R> {
        let now = (self.clock)();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        match records.map.get(id) {
            Some(e) if e.expires > now && matches!(e.state, State::Run(o) if o == owner) => {
                Some(f(&mut records, now))
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
            let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = records.map.get(id).filter(|e| e.expires > now) {
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
            let full = |r: &Records| {
                r.map.len() >= self.max_records || r.bytes + ENTRY_OVERHEAD > self.max_bytes
            };
            if full(&records) {
                records.purge(now);
                if records.map.len() >= self.max_records {
                    return Err(StoreError::Full(format!("{} records", self.max_records)));
                }
                if full(&records) {
                    return Err(StoreError::Full(format!(
                        "{} bytes of records",
                        self.max_bytes
                    )));
                }
            }
            // An expired record under the same id is replaced: its bytes go.
            records.remove(id);
            records.map.insert(
                id.clone(),
                Entry {
                    state: State::Run(owner),
                    fingerprint,
                    expires: now + lease,
                    size: ENTRY_OVERHEAD,
                },
            );
            records.bytes += ENTRY_OVERHEAD;
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
            let max_bytes = self.max_bytes;
            let done = self.owned(id, owner, |records, now| {
                let Some(e) = records.map.get_mut(id) else {
                    return;
                };
                let whole = ENTRY_OVERHEAD + response.size();
                // Held bytes without this record, to which its new size is added.
                let others = records.bytes - e.size;
                let (state, size) = if !tombstone && others + whole <= max_bytes {
                    (State::Done(response.clone()), whole)
                } else {
                    // Status and headers only, as Redis keeps a tombstone; also what a
                    // response gets when keeping it whole would pass `max_bytes`.
                    let tomb = Stored {
                        body: Bytes::new(),
                        ..response.clone()
                    };
                    let size = ENTRY_OVERHEAD + tomb.size();
                    (State::Tomb(tomb), size)
                };
                e.state = state;
                e.expires = now + retention;
                e.size = size;
                records.bytes = others + size;
            });
            Ok(done.map_or(Transition::LostLease, |()| Transition::Done))
        })
    }

    fn release<'a>(&'a self, id: &'a RecordId, owner: Owner) -> StoreFuture<'a, Transition> {
        Box::pin(async move {
            let done = self.owned(id, owner, |records, _| records.remove(id));
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
            let done = self.owned(id, owner, |records, now| {
                if let Some(e) = records.map.get_mut(id) {
                    e.expires = now + lease;
                }
            });
            Ok(done.map_or(Transition::LostLease, |()| Transition::Done))
        })
    }
}
