//! A local limit: governor's GCRA over this process's state, one bucket for the whole limit or
//! one per key ([`Keys`]). Generic over governor's clock so that tests drive a fake one.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{NotUntil, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;

use super::Verdict;
use super::keys::Keys;

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;
type Keyed<C> = RateLimiter<u64, SharedKeys, C, StateInformationMiddleware>;

/// The limiter's store, shared with the limit that evicts from it and counts it (governor
/// lends its store out only by value).
struct SharedKeys(Arc<Keys>);

impl StateStore for SharedKeys {
    type Key = u64;
    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

enum State<C: Clock> {
    Whole(Direct<C>),
    PerKey {
        limiter: Keyed<C>,
        keys: Arc<Keys>,
        /// The clock's reading just after the limiter was made: the limiter counts its
        /// states' times from its own start, a moment earlier, so times measured from here
        /// are never ahead of the limiter's (eviction never drops a key too early).
        start: C::Instant,
    },
}

/// One local limit's state: a rate, a burst, and a bucket per key or for all.
pub struct LocalLimiter<C: Clock = DefaultClock> {
    state: State<C>,
    clock: C,
    /// The time one request's share of the burst takes to come back.
    interval: Duration,
    burst: u32,
}

/// One check's outcome, as governor reports it.
pub struct Checked<'a, C: Clock> {
    limiter: &'a LocalLimiter<C>,
    outcome: Result<StateSnapshot, NotUntil<C::Instant>>,
}

impl<C: Clock + Clone> Checked<'_, C> {
    pub fn allowed(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The outcome with what is left of the burst and when it is whole again.
    pub fn verdict(&self) -> Verdict {
        let l = self.limiter;
        match &self.outcome {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Verdict::Allowed {
                    remaining,
                    // Each share taken comes back after one interval.
                    reset: l.interval * (l.burst - remaining.min(l.burst)),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(l.clock.now());
                Verdict::Limited {
                    retry_after: wait,
                    reset: wait + l.interval * (l.burst - 1),
                }
            }
        }
    }
}

/// governor's quota for `count` requests per `per`, `burst` at once.
pub fn quota(count: u32, per: Duration, burst: u32) -> Quota {
    let interval = (per / count.max(1)).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(interval)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl LocalLimiter<DefaultClock> {
    /// A limit of `count` per `per` with `burst`: keyed (at most `max_keys` keys, the rest
    /// sharing an overflow bucket counted in `overflowed`) or one bucket for all.
    pub fn new(count: u32, per: Duration, burst: u32, keyed: Option<(usize, Counter)>) -> Self {
        Self::with_clock(count, per, burst, keyed, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LocalLimiter<C> {
    pub fn with_clock(
        count: u32,
        per: Duration,
        burst: u32,
        keyed: Option<(usize, Counter)>,
        clock: C,
    ) -> Self {
        let quota = quota(count, per, burst);
        let state = match keyed {
            None => State::Whole(Direct::new(quota, InMemoryState::default(), clock.clone())),
            Some((max, overflowed)) => {
                let keys = Arc::new(Keys::new(max, overflowed));
                let limiter = Keyed::new(quota, SharedKeys(keys.clone()), clock.clone());
                State::PerKey {
                    limiter,
                    keys,
                    start: clock.now(),
                }
            }
        };
        Self {
            state,
            clock,
            interval: quota.replenish_interval(),
            burst: quota.burst_size().get(),
        }
    }

    /// Checks one request under `key` (ignored by a limit without keys), taking its share of
    /// the burst when allowed. What is left of the burst is worked out only when asked for
    /// ([`Checked::verdict`]): most allowed requests never need it.
    pub fn check(&self, key: u64) -> Checked<'_, C> {
        let outcome = match &self.state {
            State::Whole(l) => l.check(),
            State::PerKey { limiter, .. } => limiter.check_key(&key),
        };
        Checked {
            limiter: self,
            outcome,
        }
    }
    /// The burst and the interval after which one share of it comes back.
    pub fn shape(&self) -> (u32, Duration) {
        (self.burst, self.interval)
    }

    /// Keys tracked now (0 for a limit without keys).
    pub fn keys(&self) -> usize {
        match &self.state {
            State::Whole(_) => 0,
            State::PerKey { keys, .. } => keys.len(),
        }
    }

    /// Drops the keys whose full burst is back.
    pub fn evict_idle(&self) {
        if let State::PerKey { keys, start, .. } = &self.state {
            keys.evict_idle(self.clock.now().duration_since(*start));
        }
    }
}
