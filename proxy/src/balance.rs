//! Balancing: which endpoint of an upstream a request goes to, and where it goes when no
//! connection to that one could be made. The forwarder asks a [`Balancer`] for the first
//! endpoint and, after a failed connection, for the next; this is the seam where other
//! policies (P2C over latency, sharding by key) plug in.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Picks endpoints, by index, out of `len`.
pub trait Balancer: Send + Sync {
    /// The endpoint for a new request.
    fn pick(&self, len: usize) -> usize;

    /// The endpoint to try after no connection to `failed` could be made (the request went
    /// nowhere, so it may go anywhere, whatever its method).
    fn next_after(&self, failed: usize, len: usize) -> usize {
        (failed + 1) % len
    }
}

/// Each request to the next endpoint in turn; a failover goes to the one after the failed.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn pick(&self, len: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % len.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_takes_turns_and_fails_over_to_the_next() {
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(rr.next_after(2, 3), 0);
        assert_eq!(rr.next_after(0, 3), 1);
        // One endpoint: every pick is it.
        let one = RoundRobin::default();
        assert_eq!((0..3).map(|_| one.pick(1)).collect::<Vec<_>>(), [0, 0, 0]);
    }
}
