//! Local limits on governor's fake clock, and the layer's answers.

use std::time::Duration;

use governor::clock::FakeRelativeClock;
use prometheus_client::metrics::counter::Counter;

use super::*;

fn limiter(
    count: u32,
    per: Duration,
    burst: u32,
    keyed: Option<usize>,
) -> (LocalLimiter<FakeRelativeClock>, FakeRelativeClock, Counter) {
    let clock = FakeRelativeClock::default();
    let overflowed = Counter::default();
    let keyed = keyed.map(|max| (max, overflowed.clone()));
    (
        LocalLimiter::with_clock(count, per, burst, keyed, clock.clone()),
        clock,
        overflowed,
    )
}

fn allowed(v: Verdict) -> bool {
    matches!(v, Verdict::Allowed { .. })
}

#[test]
fn a_burst_passes_whole_then_the_rate_paces_what_follows() {
    // 10 per second: one share back every 100 ms; 5 at once.
    let (l, clock, _) = limiter(10, Duration::from_secs(1), 5, None);
    let verdicts: Vec<Verdict> = (0..7).map(|_| l.check(0).verdict()).collect();
    assert_eq!(verdicts.iter().filter(|v| allowed(**v)).count(), 5);
    assert_eq!(
        verdicts[0],
        Verdict::Allowed {
            remaining: 4,
            reset: Duration::from_millis(100)
        }
    );
    assert_eq!(
        verdicts[4],
        Verdict::Allowed {
            remaining: 0,
            reset: Duration::from_millis(500)
        }
    );
    assert_eq!(
        verdicts[5],
        Verdict::Limited {
            retry_after: Duration::from_millis(100),
            reset: Duration::from_millis(500)
        }
    );
    // One interval later, exactly one more.
    clock.advance(Duration::from_millis(100));
    assert!(allowed(l.check(0).verdict()));
    assert!(!allowed(l.check(0).verdict()));
    // After a whole burst's time, the whole burst again.
    clock.advance(Duration::from_millis(500));
    assert_eq!((0..6).filter(|_| allowed(l.check(0).verdict())).count(), 5);
}

#[test]
fn keys_have_buckets_of_their_own() {
    let (l, _clock, overflowed) = limiter(1, Duration::from_secs(60), 2, Some(100));
    for key in [1u64, 2, 3] {
        assert!(allowed(l.check(key).verdict()), "{key}");
        assert!(allowed(l.check(key).verdict()), "{key}");
        assert!(!allowed(l.check(key).verdict()), "{key}");
    }
    assert_eq!(l.keys(), 3);
    assert_eq!(overflowed.get(), 0);
}

#[test]
fn idle_keys_are_evicted_once_their_burst_is_back_and_not_before() {
    let (l, clock, _) = limiter(1, Duration::from_secs(1), 3, Some(100));
    for key in 1..=10u64 {
        l.check(key).verdict();
    }
    // Key 5 takes its whole burst: three shares, back after 3 s.
    l.check(5).verdict();
    l.check(5).verdict();
    assert_eq!(l.keys(), 10);
    clock.advance(Duration::from_secs(1));
    l.evict_idle();
    assert_eq!(l.keys(), 1, "only the key still owed time stays");
    // Key 5 kept its state: it has one share back, not three.
    assert!(allowed(l.check(5).verdict()));
    assert!(!allowed(l.check(5).verdict()));
    clock.advance(Duration::from_secs(3));
    l.evict_idle();
    assert_eq!(l.keys(), 0);
    // A key evicted comes back as a fresh one, with its whole burst.
    assert_eq!((0..4).filter(|_| allowed(l.check(5).verdict())).count(), 3);
}

#[test]
fn past_max_keys_new_keys_share_one_overflow_bucket_and_are_counted() {
    let (l, _clock, overflowed) = limiter(1, Duration::from_secs(60), 2, Some(3));
    for key in 1..=3u64 {
        assert!(allowed(l.check(key).verdict()));
    }
    assert_eq!(l.keys(), 3);
    // A flood of new keys: they all draw on the one overflow bucket (a burst of 2).
    let passed = (100..1100u64)
        .filter(|k| allowed(l.check(*k).verdict()))
        .count();
    assert_eq!(passed, 2);
    assert_eq!(l.keys(), 3, "memory does not grow past max_keys");
    assert_eq!(overflowed.get(), 1000);
    // Tracked keys keep their own buckets.
    assert!(allowed(l.check(2).verdict()));
    assert!(!allowed(l.check(2).verdict()));
}

#[test]
fn fields_follow_the_draft() {
    let (l, _, _) = limiter(100, Duration::from_secs(1), 250, None);
    let limit = Limit {
        name: "api".into(),
        methods: vec![],
        path_prefix: None,
        path_regex: None,
        key: KeySource::None,
        skip_missing: false,
        check: Check::Local(std::sync::Arc::new(LocalLimiter::new(
            100,
            Duration::from_secs(1),
            250,
            None,
        ))),
        headers_on_allowed: false,
    };
    assert_eq!(l.shape(), (250, Duration::from_millis(10)));
    assert_eq!(policy_field(&limit), "\"api\";q=250;w=3");
    assert_eq!(
        ratelimit_field("api", 7, Duration::from_millis(2001)),
        "\"api\";r=7;t=3"
    );
}
