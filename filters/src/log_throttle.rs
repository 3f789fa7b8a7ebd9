//! Repeated errors logged at most once per interval, with a count of what was held back.
//!
//! A failing dependency (Redis down, a collector unreachable) fails every request that needs
//! it; one log line per request would bury the log (a probe counted 16,382 lines in 6 s) and
//! cost more than the request. The first error is logged at once, then at most one per
//! interval, each saying how many were suppressed since the last; the metrics still count
//! every one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(State::default()),
        }
    }

    /// `Some(n)` when this error should be logged, `n` being how many were held back since the
    /// last one logged; `None` (and one more held back) otherwise.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            s.suppressed += 1;
            return None;
        }
        s.last = Some(now);
        Some(std::mem::take(&mut s.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_is_logged_then_one_per_interval_with_the_count_held_back() {
        let t = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.admit_at(start), Some(0));
        for i in 1..=5 {
            assert_eq!(t.admit_at(start + Duration::from_secs(i)), None);
        }
        assert_eq!(t.admit_at(start + Duration::from_secs(10)), Some(5));
        assert_eq!(t.admit_at(start + Duration::from_secs(11)), None);
        assert_eq!(t.admit_at(start + Duration::from_secs(25)), Some(1));
    }
}
