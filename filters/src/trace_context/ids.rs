//! Trace, span and request ids. Injectable so tests can use a seeded generator.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{SpanId, TraceId};

/// Where new ids come from.
pub trait IdGenerator: Send + Sync + 'static {
    /// 64 random bits.
    fn next_u64(&self) -> u64;

    /// 16 random bytes, never all zero.
    fn trace_id(&self) -> TraceId {
        loop {
            let id = u128::from(self.next_u64()) << 64 | u128::from(self.next_u64());
            if id != 0 {
                return TraceId(id);
            }
        }
    }

    /// 8 random bytes, never all zero.
    fn span_id(&self) -> SpanId {
        loop {
            let id = self.next_u64();
            if id != 0 {
                return SpanId(id);
            }
        }
    }

    /// A lowercase UUID v4, as `x-request-id` carries it: one allocation (the value's bytes).
    fn request_id(&self) -> http::HeaderValue {
        let text = self.request_id_text();
        http::HeaderValue::from_bytes(&text).unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }

    /// The text of a lowercase UUID v4, without allocating.
    fn request_id_text(&self) -> [u8; 36] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .encode_lower(&mut buf);
        buf
    }
}

/// The production generator: SipHash-1-3 over a counter, keyed from the operating system's
/// randomness at start (std's `RandomState`). A keyed PRF gives unpredictable, uniformly
/// distributed ids at a few nanoseconds each, without a lock or a system call per id.
pub struct RandomIds {
    keys: std::collections::hash_map::RandomState,
    counter: AtomicU64,
}

impl Default for RandomIds {
    fn default() -> Self {
        Self {
            keys: std::collections::hash_map::RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }
}

impl IdGenerator for RandomIds {
    fn next_u64(&self) -> u64 {
        self.keys
            .hash_one(self.counter.fetch_add(1, Ordering::Relaxed))
    }
}

/// A deterministic generator for tests (splitmix64).
pub struct SeededIds(AtomicU64);

impl SeededIds {
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }
}

impl IdGenerator for SeededIds {
    fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_nonzero_distinct_and_request_ids_are_uuid_v4() {
        let g = RandomIds::default();
        let a = (g.trace_id(), g.span_id());
        let b = (g.trace_id(), g.span_id());
        assert_ne!(a, b);
        let r = g.request_id().to_str().unwrap().to_owned();
        assert_eq!(r.len(), 36);
        assert_eq!(&r[14..15], "4", "version 4: {r}");
        assert!(
            matches!(&r[19..20], "8" | "9" | "a" | "b"),
            "RFC 4122 variant: {r}"
        );
        assert_eq!(r, r.to_lowercase());
    }

    #[test]
    fn seeded_ids_repeat() {
        assert_eq!(SeededIds::new(7).trace_id(), SeededIds::new(7).trace_id());
    }
}
