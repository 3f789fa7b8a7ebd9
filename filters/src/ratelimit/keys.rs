//! The keyed state of a local limit: governor's GCRA state (`InMemoryState`, one atomic word:
//! the theoretical arrival time) per key, in a map of attache's own, bounded.
//!
//! governor's own keyed stores grow with every key they see; one limit keyed by a header a
//! client chooses would let that client grow attache's memory without end. Here:
//! - keys are 64-bit hashes (`SipHash` with a per-process random key), so the map's entries
//!   have a fixed size whatever the key, and a client cannot aim collisions without the key;
//! - past `max` keys, a new key shares one overflow bucket (and is counted) instead of getting
//!   one of its own;
//! - [`Keys::evict_idle`] drops keys whose state equals a fresh one (their full burst is
//!   back), so the map holds only keys active within one burst's refill time.
//!
//! The map is split into shards, each behind its own lock, so that checks of different keys
//! on different cores do not contend; a check of a known key takes a read lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use prometheus_client::metrics::counter::Counter;

const SHARDS: usize = 16;

/// The map's keys are hashes already: hashing them again would only cost time.
#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = RwLock<HashMap<u64, InMemoryState, BuildHasherDefault<Prehashed>>>;

/// A bounded keyed state store for governor's `RateLimiter`.
pub struct Keys {
    shards: Box<[Shard]>,
    len: AtomicUsize,
    max: usize,
    overflow: InMemoryState,
    /// Checks that went to the overflow bucket.
    overflowed: Counter,
}

impl Keys {
    pub fn new(max: usize, overflowed: Counter) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            len: AtomicUsize::new(0),
            max: max.max(1),
            overflow: InMemoryState::default(),
            overflowed,
        }
    }

    fn shard(&self, key: u64) -> &Shard {
        // The high bits: the map inside uses the low ones.
        &self.shards[(key >> 60) as usize % SHARDS]
    }

    /// Keys tracked now.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Drops every key whose theoretical arrival time is at or before `now` (nanoseconds on
    /// the limiter's clock, from its start): its full burst is back, so a fresh state is the
    /// same.
    pub fn evict_idle(&self, now: Nanos) {
        for shard in &*self.shards {
            let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, state| tat(state).is_some_and(|t| t > now));
            let dropped = before - map.len();
            if map.len() * 4 < map.capacity() {
                map.shrink_to_fit();
            }
            drop(map);
            self.len.fetch_sub(dropped, Ordering::Relaxed);
        }
    }
}

/// The state's theoretical arrival time (`None` before its first check).
fn tat(state: &InMemoryState) -> Option<Nanos> {
    // governor reads the state only through `measure_and_replace`: a closure that refuses to
    // replace anything reports what it saw.
    match state.measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>) {
        Err(seen) => seen,
        Ok(()) => None,
    }
}

impl StateStore for Keys {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let shard = self.shard(*key);
        {
            let map = shard.read().unwrap_or_else(|p| p.into_inner());
            if let Some(state) = map.get(key) {
                return state.measure_and_replace(&NotKeyed::NonKey, f);
            }
        }
        // A key not seen (or evicted): a slot of its own while there is room, else the
        // overflow bucket. The count is reserved first so that racing inserts cannot overshoot.
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.overflowed.inc();
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
        let mut inserted = false;
        let state = map.entry(*key).or_insert_with(|| {
            inserted = true;
            InMemoryState::default()
        });
        let result = state.measure_and_replace(&NotKeyed::NonKey, f);
        drop(map);
        if !inserted {
            // Another check inserted it between the two locks.
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }
}
