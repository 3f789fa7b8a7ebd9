//! Context restoration, `specs/trace-context.md` §5.
//!
//! Meshes make the app copy every context header onto its outbound calls. attache needs only
//! `traceparent`: the inbound leg records, under the trace id, what it forwarded to the app
//! (listed headers, baggage, `tracestate`, debug, and the trace formats to answer in); the
//! outbound leg adds back whatever the app's call for the same trace lacks, never overriding
//! what the app set.
//!
//! The table is in memory, per process: sharded hash maps, each with an LRU queue, so insert,
//! lookup and eviction are O(1) (amortized) and no lock is held across an `.await`. Entries live
//! `ttl` after their last write or hit; the least recently used go when `max_entries` or
//! `max_bytes` would be exceeded; records over `max_record_bytes` are not stored.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};

use super::TraceId;

const SHARDS: usize = 16;

/// What the inbound leg forwarded to the app, for one trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Headers listed in `restore.headers` (trace headers excluded).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The `baggage` lines forwarded.
    pub baggage: Vec<HeaderValue>,
    pub tracestate: Option<HeaderValue>,
    pub debug: bool,
    /// Trace formats to write on the outbound leg (indexed by `Format as usize`).
    pub formats: [bool; 4],
}

impl Record {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.baggage.is_empty()
            && self.tracestate.is_none()
            && !self.debug
            && !self.formats.contains(&true)
    }

    /// The record with its own copy of every value. A value parsed from a request is a slice
    /// of the connection's read buffer, and holding it would keep that whole buffer (8 KiB or
    /// more) allocated for as long as the entry lives, where `max_bytes` counts only the
    /// value; it would also make the connection allocate a new read buffer for its next
    /// request instead of reusing the one it has.
    pub fn detached(mut self) -> Record {
        let copy = |v: &HeaderValue| {
            // `from_bytes` copies; the bytes are those of a valid value, so it cannot fail.
            let mut c = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
            c.set_sensitive(v.is_sensitive());
            c
        };
        for (_, v) in &mut self.headers {
            *v = copy(v);
        }
        for v in &mut self.baggage {
            *v = copy(v);
        }
        if let Some(t) = &mut self.tracestate {
            *t = copy(t);
        }
        self
    }

    /// Bytes counted against `max_bytes`: the header bytes plus a fixed overhead per entry.
    pub fn size(&self) -> usize {
        64 + self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum::<usize>()
            + self.baggage.iter().map(HeaderValue::len).sum::<usize>()
            + self.tracestate.as_ref().map_or(0, HeaderValue::len)
    }
}

/// Table limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub ttl: Duration,
    pub max_entries: usize,
    pub max_bytes: usize,
    pub max_record_bytes: usize,
}

/// Why entries left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Ttl,
    Entries,
    Bytes,
}

pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Called for every eviction, with its reason (for metrics).
pub type OnEvict = Arc<dyn Fn(Eviction) + Send + Sync>;

pub struct Table {
    shards: Vec<Mutex<Shard>>,
    limits: Limits,
    clock: Clock,
    on_evict: Option<OnEvict>,
    entries: AtomicUsize,
    bytes: AtomicUsize,
}

struct Entry {
    record: Arc<Record>,
    size: usize,
    expires: Instant,
    stamp: u64,
}

/// Hashes trace ids for the table: a keyed multiply-fold of the 128 bits, far cheaper than
/// SipHash. The key is random per table, so callers, who choose trace ids, cannot aim
/// collisions at a bucket without seeing the key.
#[derive(Clone)]
struct KeyedIdHash {
    k0: u64,
    k1: u64,
}

impl Default for KeyedIdHash {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new();
        let mut h = random.build_hasher();
        h.write_u8(0);
        let k0 = h.finish();
        h.write_u8(1);
        Self {
            k0,
            k1: h.finish() | 1,
        }
    }
}

impl std::hash::BuildHasher for KeyedIdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            k0: self.k0,
            k1: self.k1,
            h: 0,
        }
    }
}

struct IdHasher {
    k0: u64,
    k1: u64,
    h: u64,
}

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        let m = u128::from(v ^ self.k0 ^ self.h) * u128::from(self.k1);
        self.h = (m as u64) ^ ((m >> 64) as u64);
    }
    fn write_u128(&mut self, v: u128) {
        self.write_u64(v as u64);
        self.write_u64((v >> 64) as u64);
    }
    fn finish(&self) -> u64 {
        self.h
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<TraceId, Entry, KeyedIdHash>,
    /// (key, stamp) in access order; entries whose stamp no longer matches are stale.
    lru: VecDeque<(TraceId, u64)>,
    next_stamp: u64,
    bytes: usize,
}

impl Table {
    pub fn new(limits: Limits) -> Self {
        Self::with_clock(limits, Arc::new(Instant::now))
    }

    pub fn with_clock(limits: Limits, clock: Clock) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            limits,
            clock,
            on_evict: None,
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        }
    }

    pub fn on_evict(mut self, f: OnEvict) -> Self {
        self.on_evict = Some(f);
        self
    }

    /// Entries and bytes held (for the gauges).
    pub fn usage(&self) -> (usize, usize) {
        (
            self.entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn shard(&self, id: TraceId) -> &Mutex<Shard> {
        // Trace ids are random in their low bits (W3C Level 2); fold in the high half too.
        let h = (id.0 as u64) ^ ((id.0 >> 64) as u64);
        &self.shards[(h as usize) % SHARDS]
    }

    fn per_shard(&self, total: usize) -> usize {
        total.div_ceil(SHARDS).max(1)
    }

    /// Stores (or replaces) the record of a trace. Empty and oversized records are skipped.
    pub fn insert(&self, id: TraceId, record: Record) {
        if record.is_empty() {
            return;
        }
        let size = record.size();
        if size > self.limits.max_record_bytes {
            return;
        }
        let record = record.detached();
        let now = (self.clock)();
        let mut shard = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = shard.map.remove(&id) {
            shard.bytes -= old.size;
            self.entries.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(old.size, Ordering::Relaxed);
        }
        let max_entries = self.per_shard(self.limits.max_entries);
        let max_bytes = self.per_shard(self.limits.max_bytes);
        // Expired entries first, then the least recently used while over a limit.
        loop {
            let over = if shard.map.len() + 1 > max_entries {
                Some(Eviction::Entries)
            } else if shard.bytes + size > max_bytes {
                Some(Eviction::Bytes)
            } else {
                None
            };
            let Some((key, stamp)) = shard.lru.front().copied() else {
                break;
            };
            let live = shard.map.get(&key).filter(|e| e.stamp == stamp);
            let reason = match live {
                None => {
                    shard.lru.pop_front();
                    continue;
                }
                Some(e) if e.expires <= now => Eviction::Ttl,
                Some(_) => match over {
                    Some(reason) => reason,
                    None => break,
                },
            };
            shard.lru.pop_front();
            if let Some(e) = shard.map.remove(&key) {
                shard.bytes -= e.size;
                self.entries.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(e.size, Ordering::Relaxed);
                if let Some(f) = &self.on_evict {
                    f(reason);
                }
            }
        }
        let stamp = shard.next_stamp;
        shard.next_stamp += 1;
        shard.lru.push_back((id, stamp));
        shard.bytes += size;
        shard.map.insert(
            id,
            Entry {
                record: Arc::new(record),
                size,
                expires: now + self.limits.ttl,
                stamp,
            },
        );
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
        compact(&mut shard);
    }

    /// The record of a trace, if present and not expired; a hit refreshes its TTL and LRU
    /// position.
    pub fn get(&self, id: TraceId) -> Option<Arc<Record>> {
        let now = (self.clock)();
        let mut shard = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
        let stamp = shard.next_stamp;
        let entry = shard.map.get_mut(&id)?;
        if entry.expires <= now {
            let size = entry.size;
            shard.map.remove(&id);
            shard.bytes -= size;
            self.entries.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            if let Some(f) = &self.on_evict {
                f(Eviction::Ttl);
            }
            return None;
        }
        entry.expires = now + self.limits.ttl;
        entry.stamp = stamp;
        let record = entry.record.clone();
        shard.next_stamp += 1;
        shard.lru.push_back((id, stamp));
        compact(&mut shard);
        Some(record)
    }
}

/// Drops stale queue entries once they outnumber live ones, keeping the queue O(entries).
fn compact(shard: &mut Shard) {
    if shard.lru.len() > 2 * shard.map.len() + 64 {
        let map = &shard.map;
        shard
            .lru
            .retain(|(k, s)| map.get(k).is_some_and(|e| e.stamp == *s));
    }
}

/// The inbound requests in flight, for `correlation: single_in_flight`: an outbound call
/// without context is attributed to the inbound request only when exactly one is in flight.
#[derive(Default)]
pub struct InFlight {
    requests: Mutex<Vec<(u64, Active)>>,
    next: std::sync::atomic::AtomicU64,
}

/// What an outbound call attributed to an inbound request inherits from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Active {
    pub trace_id: TraceId,
    /// The inbound request's SERVER span: the parent of the attributed call.
    pub span_id: super::SpanId,
    pub sampled: bool,
    pub random: bool,
    pub debug: bool,
}

/// Removes its request from [`InFlight`] when dropped.
pub struct InFlightGuard {
    set: Arc<InFlight>,
    id: u64,
}

impl InFlight {
    pub fn enter(self: &Arc<Self>, active: Active) -> InFlightGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, active));
        InFlightGuard {
            set: self.clone(),
            id,
        }
    }

    /// The one inbound request in flight; `Err(n)` with how many there are otherwise.
    pub fn single(&self) -> Result<Active, usize> {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        match requests.as_slice() {
            [(_, active)] => Ok(*active),
            other => Err(other.len()),
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut requests = self.set.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::AtomicU64;

    fn limits(max_entries: usize) -> Limits {
        Limits {
            ttl: Duration::from_secs(120),
            max_entries,
            max_bytes: 1 << 30,
            max_record_bytes: 16 * 1024,
        }
    }

    fn record(v: &'static str) -> Record {
        Record {
            headers: vec![(
                HeaderName::from_static("x-request-id"),
                HeaderValue::from_static(v),
            )],
            ..Record::default()
        }
    }

    /// Trace ids landing in one shard, so per-shard limits are exercised exactly.
    fn id(n: u128) -> TraceId {
        TraceId(n * SHARDS as u128)
    }

    #[test]
    fn case_31_miss_after_ttl_and_lru_eviction() {
        let now = Arc::new(AtomicU64::new(0));
        let base = Instant::now();
        let clock = {
            let now = now.clone();
            Arc::new(move || base + Duration::from_secs(now.load(Ordering::SeqCst))) as Clock
        };
        let evicted = Arc::new(Mutex::new(Vec::new()));
        let log = evicted.clone();
        let t = Table::with_clock(limits(2 * SHARDS), clock)
            .on_evict(Arc::new(move |r| log.lock().unwrap().push(r)));
        t.insert(id(1), record("a"));
        t.insert(id(2), record("b"));
        assert!(t.get(id(1)).is_some(), "a hit makes 1 the most recent");
        t.insert(id(3), record("c"));
        assert!(t.get(id(2)).is_none(), "2 was the least recently used");
        assert!(t.get(id(1)).is_some() && t.get(id(3)).is_some());
        assert_eq!(*evicted.lock().unwrap(), [Eviction::Entries]);
        assert!(t.get(id(9)).is_none(), "unknown trace: miss");

        now.store(119, Ordering::SeqCst);
        assert!(t.get(id(1)).is_some(), "a hit refreshes the TTL");
        now.store(238, Ordering::SeqCst);
        assert!(t.get(id(3)).is_none(), "3 expired");
        assert!(t.get(id(1)).is_some(), "1 was refreshed at 119 s");
        assert_eq!(t.usage().0, 1);
    }

    #[test]
    fn stored_values_do_not_hold_the_buffer_they_were_parsed_from() {
        // As hyper parses a request: every value a slice of one read buffer.
        let buffer =
            Bytes::from(b"x-request-id: r-1\r\nbaggage: k=v\r\ntracestate: a=b\r\n".to_vec());
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let slice = |from: usize, to: usize| {
            HeaderValue::from_maybe_shared(buffer.slice(from..to)).unwrap()
        };
        let mut sensitive = slice(14, 17);
        sensitive.set_sensitive(true);
        let rec = Record {
            headers: vec![(HeaderName::from_static("x-request-id"), sensitive)],
            baggage: vec![slice(28, 31)],
            tracestate: Some(slice(45, 48)),
            ..Record::default()
        };
        assert!(range.contains(&(rec.baggage[0].as_bytes().as_ptr() as usize)));
        let t = Table::new(limits(100));
        t.insert(id(1), rec);
        let got = t.get(id(1)).unwrap();
        let values = [
            &got.headers[0].1,
            &got.baggage[0],
            got.tracestate.as_ref().unwrap(),
        ];
        assert_eq!(values.map(|v| v.to_str().unwrap()), ["r-1", "k=v", "a=b"]);
        for v in values {
            let at = v.as_bytes().as_ptr() as usize;
            assert!(
                !range.contains(&at),
                "{v:?} still points into the read buffer"
            );
        }
        assert!(got.headers[0].1.is_sensitive(), "sensitivity is kept");
    }

    #[test]
    fn empty_and_oversized_records_are_not_stored_and_bytes_are_bounded() {
        let t = Table::new(limits(100));
        t.insert(id(1), Record::default());
        let big = Record {
            baggage: vec![HeaderValue::from_str(&"k=v,".repeat(5000)).unwrap()],
            ..Record::default()
        };
        t.insert(id(2), big);
        assert_eq!(t.usage(), (0, 0));

        let t = Table::new(Limits {
            max_bytes: SHARDS * 300,
            ..limits(1000)
        });
        for n in 0..10 {
            t.insert(id(n), record("0123456789"));
        }
        let (entries, bytes) = t.usage();
        assert!(bytes <= 300, "{bytes}");
        assert_eq!(entries, bytes / record("0123456789").size());
        assert!(t.get(id(9)).is_some(), "the newest stays");
    }

    #[test]
    fn a_later_request_replaces_the_entry() {
        let t = Table::new(limits(100));
        t.insert(id(1), record("a"));
        t.insert(id(1), record("b"));
        assert_eq!(t.get(id(1)).unwrap().headers[0].1, "b");
        assert_eq!(t.usage().0, 1);
    }

    #[test]
    fn the_recency_queue_stays_bounded_by_the_entries_under_lookups() {
        // Each lookup re-queues its entry; stale queue items are dropped so that the queue
        // never holds more than twice the entries (plus a small slack), however many lookups
        // a busy table serves. What lookups cost is measured by the restoration benches.
        let t = Table::new(limits(10_000));
        for n in 0..10_000u128 {
            t.insert(TraceId(n + 1), record("x"));
            t.get(TraceId(n / 2 + 1));
        }
        for s in &t.shards {
            let s = s.lock().unwrap();
            assert!(s.lru.len() <= 2 * s.map.len() + 65);
        }
    }
}
