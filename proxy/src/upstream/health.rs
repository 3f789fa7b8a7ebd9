//! Passive health (`spec.upstreams.<name>.ejection`): the balancer takes an endpoint that keeps
//! failing out of the balance for a while, and it comes back on its own.
//!
//! An endpoint that fails `consecutive_failures` times in a row (no connection, a reset or a
//! timeout before the response, a broken response, or a 5xx) is ejected for `base_time`,
//! doubled on each later ejection up to `max_time`. At most `max_ejected_percent` of the
//! endpoints are out at once (rounded down: an upstream with one endpoint never loses it, one
//! with two loses at most one at 50%). An ejected endpoint is skipped when the balancer picks
//! it; once its time is up it takes requests again, and a single failure does not put it back
//! out: it needs another run of failures.
//!
//! The request path pays one atomic load per pick while nothing is ejected (no clock read), and
//! one per answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use attache_config::Ejection;
use tokio::time::Instant;

use crate::metrics::ProxyFamilies;

/// The health of a target's endpoints.
pub struct Health {
    endpoints: Box<[State]>,
    after: u32,
    base: Duration,
    max: Duration,
    /// How many may be out at once.
    max_out: usize,
    /// Endpoints ejected and not yet seen back: while 0, a pick reads no clock.
    out: AtomicU32,
    origin: Instant,
    report: Option<Report>,
}

/// Where ejections are counted.
struct Report {
    metrics: Arc<ProxyFamilies>,
    upstream: Arc<str>,
    endpoints: Vec<String>,
}

#[derive(Default)]
struct State {
    consecutive: AtomicU32,
    /// Milliseconds since `origin` until which it is out; 0 while it is in.
    until: AtomicU64,
    ejections: AtomicU32,
}

impl Health {
    /// No ejection: every endpoint always takes requests (the inbound app).
    pub fn off(len: usize) -> Self {
        Self::new(
            len,
            &Ejection {
                consecutive_failures: 0,
                ..Ejection::default()
            },
            None,
        )
    }

    /// Health per `config` for `endpoints` (their `host:port`, for the metric) of `upstream`.
    pub fn of(
        config: &Ejection,
        upstream: Arc<str>,
        endpoints: Vec<String>,
        metrics: Arc<ProxyFamilies>,
    ) -> Self {
        let len = endpoints.len();
        Self::new(
            len,
            config,
            Some(Report {
                metrics,
                upstream,
                endpoints,
            }),
        )
    }

    fn new(len: usize, config: &Ejection, report: Option<Report>) -> Self {
        Self {
            endpoints: (0..len).map(|_| State::default()).collect(),
            after: config.consecutive_failures,
            base: config.base_time.get(),
            max: config.max_time.get(),
            max_out: len * config.max_ejected_percent.min(100) as usize / 100,
            out: AtomicU32::new(0),
            origin: Instant::now(),
            report,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `picked`, or the first endpoint after it (by `next`) that is not ejected; `picked`
    /// when all are.
    pub fn choose(&self, picked: usize, next: impl Fn(usize) -> usize) -> usize {
        if self.out.load(Ordering::Relaxed) == 0 {
            return picked;
        }
        let now = self.now_ms();
        let mut at = picked;
        for _ in 0..self.endpoints.len() {
            if !self.is_out(at, now) {
                return at;
            }
            at = next(at);
        }
        picked
    }

    /// Whether endpoint `i` is out at `now`; one whose time is up is taken back in.
    fn is_out(&self, i: usize, now: u64) -> bool {
        let state = &self.endpoints[i];
        let until = state.until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        if now < until {
            return true;
        }
        if state
            .until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.out.fetch_sub(1, Ordering::AcqRel);
            tracing::info!(endpoint = i, "an ejected endpoint takes requests again");
        }
        false
    }

    /// Records how a try at endpoint `i` went.
    pub fn record(&self, i: usize, failed: bool) {
        if self.after == 0 {
            return;
        }
        let state = &self.endpoints[i];
        if !failed {
            if state.consecutive.load(Ordering::Relaxed) != 0 {
                state.consecutive.store(0, Ordering::Relaxed);
            }
            return;
        }
        let n = state.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.after {
            self.eject(i);
        }
    }

    fn eject(&self, i: usize) {
        let now = self.now_ms();
        let state = &self.endpoints[i];
        let out_now = (0..self.endpoints.len())
            .filter(|&j| self.is_out(j, now))
            .count();
        if self.is_out(i, now) || out_now >= self.max_out {
            return;
        }
        let k = state.ejections.fetch_add(1, Ordering::AcqRel).min(16);
        let time = self.base.saturating_mul(1 << k).min(self.max);
        let until = now + u64::try_from(time.as_millis()).unwrap_or(u64::MAX).max(1);
        if state
            .until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        state.consecutive.store(0, Ordering::Relaxed);
        self.out.fetch_add(1, Ordering::AcqRel);
        if let Some(r) = &self.report {
            let endpoint = r.endpoints.get(i).map_or("", String::as_str);
            r.metrics.ejection(&r.upstream, endpoint);
            tracing::warn!(upstream = %r.upstream, endpoint, for_ = ?time, "endpoint ejected after consecutive failures");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(len: usize, after: u32, percent: u32) -> Health {
        Health::new(
            len,
            &Ejection {
                consecutive_failures: after,
                base_time: attache_config::Duration::millis(100),
                max_time: attache_config::Duration::millis(250),
                max_ejected_percent: percent,
            },
            None,
        )
    }

    fn next(len: usize) -> impl Fn(usize) -> usize {
        move |i| (i + 1) % len
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_a_time_that_grows_and_then_it_comes_back() {
        let h = health(3, 3, 50);
        // Two failures, a success, two failures: never three in a row.
        for failed in [true, true, false, true, true] {
            h.record(0, failed);
        }
        assert_eq!(h.choose(0, next(3)), 0);
        h.record(0, true);
        assert_eq!(h.choose(0, next(3)), 1, "the third in a row ejects it");
        tokio::time::advance(Duration::from_millis(101)).await;
        assert_eq!(h.choose(0, next(3)), 0, "back after base_time");
        // Ejected again: for twice as long.
        for _ in 0..3 {
            h.record(0, true);
        }
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(h.choose(0, next(3)), 1, "still out at 150 ms of 200");
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(h.choose(0, next(3)), 0);
        // A third time: capped at max_time (250 ms, not 400).
        for _ in 0..3 {
            h.record(0, true);
        }
        tokio::time::advance(Duration::from_millis(251)).await;
        assert_eq!(h.choose(0, next(3)), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_share_and_never_the_only_endpoint() {
        let h = health(2, 1, 50);
        h.record(0, true);
        h.record(1, true);
        assert_eq!(h.choose(0, next(2)), 1, "endpoint 0 is out");
        assert_eq!(
            h.choose(1, next(2)),
            1,
            "endpoint 1 stays: one of two is the share"
        );
        let one = health(1, 1, 50);
        one.record(0, true);
        assert_eq!(one.choose(0, next(1)), 0);
        let off = health(2, 0, 100);
        for _ in 0..10 {
            off.record(0, true);
        }
        assert_eq!(off.choose(0, next(2)), 0, "0 consecutive failures: off");
    }
}
