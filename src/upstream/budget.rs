//! The retry budget: retries may be at most a fraction of recent requests plus a small floor,
//! so a 429 storm costs the upstream at most about (1 + ratio)× the client calls.

use crate::lock;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BUCKETS: usize = 10;

/// Settings of a budget: `ratio` of requests, plus `floor_per_second` retries over the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    pub ratio: f64,
    pub floor_per_second: f64,
    pub window: Duration,
}

/// Requests and retries counted over a sliding window of ten buckets.
#[derive(Debug)]
pub struct RetryBudget {
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// Index of the bucket that `start` falls in, counted from the budget's creation.
    head: u64,
    requests: [u64; BUCKETS],
    retries: [u64; BUCKETS],
}

impl RetryBudget {
    pub fn new(now: Instant) -> Self {
        RetryBudget {
            state: Mutex::new(Window {
                start: now,
                head: 0,
                requests: [0; BUCKETS],
                retries: [0; BUCKETS],
            }),
        }
    }

    /// Count a first attempt.
    pub fn deposit(&self, s: &BudgetSettings, now: Instant) {
        let mut w = self.lock();
        let i = w.advance(s, now);
        w.requests[i] += 1;
    }

    /// Take one retry from the budget, if it has one.
    pub fn try_withdraw(&self, s: &BudgetSettings, now: Instant) -> bool {
        let mut w = self.lock();
        let i = w.advance(s, now);
        let requests: u64 = w.requests.iter().sum();
        let retries: u64 = w.retries.iter().sum();
        let allowed = s.ratio * requests as f64 + s.floor_per_second * s.window.as_secs_f64();
        if (retries + 1) as f64 <= allowed {
            w.retries[i] += 1;
            true
        } else {
            false
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Counters stay consistent whatever a panicking holder did: recover them.
        lock(&self.state)
    }
}

impl Window {
    /// Drop buckets that left the window; return the bucket for `now`.
    fn advance(&mut self, s: &BudgetSettings, now: Instant) -> usize {
        let width = (s.window / BUCKETS as u32).max(Duration::from_millis(1));
        let bucket =
            (now.saturating_duration_since(self.start).as_nanos() / width.as_nanos()) as u64;
        let bucket = bucket.max(self.head);
        let expired = (bucket - self.head).min(BUCKETS as u64);
        for k in 1..=expired {
            let i = ((self.head + k) % BUCKETS as u64) as usize;
            self.requests[i] = 0;
            self.retries[i] = 0;
        }
        self.head = bucket;
        (bucket % BUCKETS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings(ratio: f64, floor: f64) -> BudgetSettings {
        BudgetSettings {
            ratio,
            floor_per_second: floor,
            window: Duration::from_secs(10),
        }
    }

    #[test]
    fn retries_follow_requests() {
        let s = settings(0.1, 0.0);
        let t = Instant::now();
        let b = RetryBudget::new(t);
        assert!(!b.try_withdraw(&s, t), "no requests, no floor: no retry");
        for _ in 0..100 {
            b.deposit(&s, t);
        }
        let granted = (0..50).filter(|_| b.try_withdraw(&s, t)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn the_floor_allows_retries_at_low_traffic_and_old_requests_expire() {
        let s = settings(0.0, 0.2); // 0.2/s over 10 s: 2 retries
        let t = Instant::now();
        let b = RetryBudget::new(t);
        assert_eq!((0..5).filter(|_| b.try_withdraw(&s, t)).count(), 2);
        // Eleven seconds on, the old retries have left the window.
        let later = t + Duration::from_secs(11);
        assert_eq!((0..5).filter(|_| b.try_withdraw(&s, later)).count(), 2);

        let s = settings(0.5, 0.0);
        for _ in 0..10 {
            b.deposit(&s, later);
        }
        assert!(b.try_withdraw(&s, later + Duration::from_secs(5)));
        assert!(
            !b.try_withdraw(&s, later + Duration::from_secs(11)),
            "the requests expired"
        );
    }

    proptest! {
        #[test]
        fn retries_never_exceed_ratio_times_requests_plus_floor(
            ratio in 0.0f64..1.0, floor in 0.0f64..2.0, events in proptest::collection::vec((any::<bool>(), 0u64..300), 1..400)
        ) {
            let s = settings(ratio, floor);
            let t0 = Instant::now();
            let b = RetryBudget::new(t0);
            let (mut requests, mut retries) = (0u64, 0u64);
            let mut now = t0;
            for (is_request, step_ms) in events {
                now += Duration::from_millis(step_ms);
                if is_request {
                    b.deposit(&s, now);
                    requests += 1;
                } else if b.try_withdraw(&s, now) {
                    retries += 1;
                }
            }
            // Over any span, granted retries stay within the budget of all requests seen, plus
            // the floor once per window the span covers.
            let windows = (now - t0).as_secs_f64() / 10.0 + 1.0;
            prop_assert!(retries as f64 <= ratio * requests as f64 + floor * 10.0 * windows + 1e-9);
        }
    }
}
