//! Power of two choices over peak-EWMA (`balance: p2c_ewma`), as Finagle and linkerd2-proxy
//! balance: each request looks at two endpoints drawn at random and takes the one with the
//! lower cost, where the cost is an endpoint's latency estimate times its requests in flight
//! (plus one). The estimate is a moving average of the time to the response head that decays
//! with a time constant (`DECAY`) and jumps to any slower sample at once (the peak), so a
//! slow or stalling endpoint is avoided quickly and tried again gradually.
//!
//! An endpoint with no sample yet costs the default estimate (`DEFAULT_RTT`), so new
//! endpoints take traffic at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use attache_filters::Body;
use attache_filters::trace_context::ids::{IdGenerator, RandomIds};
use http::Request;
use tokio::time::Instant;

use super::balance::Balancer;

/// How fast the estimate forgets: a sample's weight halves in about 7 s.
const DECAY: Duration = Duration::from_secs(10);
/// The estimate before the first sample.
const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// The p2c balancer of one upstream.
pub struct P2cEwma {
    endpoints: Box<[Load]>,
    random: RandomIds,
}

struct Load {
    pending: AtomicU32,
    /// The estimate in nanoseconds and when it was last updated.
    ewma: Mutex<(f64, Instant)>,
}

impl P2cEwma {
    pub fn new(len: usize) -> Self {
        let now = Instant::now();
        Self {
            endpoints: (0..len)
                .map(|_| Load {
                    pending: AtomicU32::new(0),
                    ewma: Mutex::new((DEFAULT_RTT.as_nanos() as f64, now)),
                })
                .collect(),
            random: RandomIds::default(),
        }
    }

    /// An endpoint's cost: its estimate decayed to now (time without samples lowers it, so an
    /// endpoint left alone is tried again), times its requests in flight plus one.
    fn cost(&self, i: usize) -> f64 {
        let load = &self.endpoints[i];
        let ewma = update(&load.ewma, 0.0, Instant::now());
        ewma * f64::from(load.pending.load(Ordering::Relaxed) + 1)
    }

    /// Takes a sample: the time a request at endpoint `i` took to its response head.
    fn sample(&self, i: usize, rtt: Duration) {
        update(
            &self.endpoints[i].ewma,
            rtt.as_nanos() as f64,
            Instant::now(),
        );
    }
}

/// Moves an estimate by a sample of `rtt` nanoseconds at `now`: a slower sample replaces it
/// (the peak); otherwise the two are averaged, the old one weighted by how recent it is. A
/// sample of 0 is how a read decays it.
fn update(slot: &Mutex<(f64, Instant)>, rtt: f64, now: Instant) -> f64 {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    let (ewma, at) = *slot;
    let next = if rtt > ewma {
        rtt
    } else {
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        let w = (-elapsed / DECAY.as_secs_f64()).exp();
        ewma * w + rtt * (1.0 - w)
    };
    *slot = (next, now);
    next
}

impl Balancer for P2cEwma {
    fn pick(&self, _: &Request<Body>, len: usize) -> Option<usize> {
        let len = len.min(self.endpoints.len());
        if len < 2 {
            return Some(0);
        }
        let r = self.random.next_u64();
        let a = (r % len as u64) as usize;
        // A second, different one.
        let b = (a + 1 + ((r >> 32) % (len as u64 - 1)) as usize) % len;
        Some(if self.cost(b) < self.cost(a) { b } else { a })
    }

    fn measures(&self) -> bool {
        true
    }

    fn started(&self, i: usize) {
        if let Some(load) = self.endpoints.get(i) {
            load.pending.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn finished(&self, i: usize, rtt: Duration) {
        if let Some(load) = self.endpoints.get(i) {
            load.pending.fetch_sub(1, Ordering::Relaxed);
            self.sample(i, rtt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request<Body> {
        Request::new(attache_filters::empty())
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_gets_few_requests_and_an_idle_cost_counts_in_flight() {
        let p = P2cEwma::new(3);
        // Endpoint 2 answers in 200 ms, the others in 5 ms.
        for _ in 0..20 {
            for i in 0..3 {
                p.started(i);
                let rtt = if i == 2 { 200 } else { 5 };
                p.finished(i, Duration::from_millis(rtt));
            }
        }
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            let i = p.pick(&req(), 3).unwrap();
            counts[i] += 1;
        }
        // Two distinct draws: the slow one loses every comparison it is in.
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1200 && counts[1] > 1200, "{counts:?}");

        // Requests in flight raise a fast endpoint's cost: with 50 pending at endpoint 0,
        // endpoint 1 wins every draw that includes it.
        for _ in 0..50 {
            p.started(0);
        }
        // Two draws in three include endpoint 1: about 2,000 of 3,000 picks (1,800 is nearly
        // eight standard deviations below that: 200 picks left it a 1-in-40 chance to fail).
        let ones = (0..3000).filter(|_| p.pick(&req(), 3) == Some(1)).count();
        assert!(ones > 1800, "{ones} of 3000");
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_jumps_to_a_peak_and_decays_back() {
        let p = P2cEwma::new(2);
        p.started(0);
        p.finished(0, Duration::from_millis(500));
        let peak = p.cost(0);
        assert!(
            (peak - 500e6).abs() < 1e3,
            "the peak counts at once: {peak}"
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        p.started(0);
        p.finished(0, Duration::from_millis(10));
        let after = p.cost(0);
        // exp(-2) of the old estimate is left: about 0.135 · 500 ms + 0.865 · 10 ms.
        assert!((after / 1e6 - 76.3).abs() < 1.0, "{}", after / 1e6);
    }
}
