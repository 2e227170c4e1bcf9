//! When to skip the shared tier: after `threshold` failures in a row it is left alone for a
//! while, doubling each time a probe fails (up to `max`), so that a dead or stalled Valkey costs
//! a request nothing, not a budget's wait. One request at a time probes it; a success closes it.
//! Plain data with the clock passed in, unit-tested without sockets.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierState {
    /// Operations go to the tier.
    Up,
    /// Skipped until a probe may go.
    Down,
    /// One probe is out: the others still skip.
    Probing,
}

impl TierState {
    /// Gauge value: 0 up, 1 probing, 2 down.
    pub fn as_gauge(self) -> i64 {
        match self {
            TierState::Up => 0,
            TierState::Probing => 1,
            TierState::Down => 2,
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    base: Duration,
    max: Duration,
    state: TierState,
    /// Failures in a row.
    failures: u32,
    /// How long it stays down this time.
    backoff: Duration,
    /// Down: when a probe may go; probing: when the probe is given up on (another may go).
    until: Instant,
}

impl Breaker {
    /// `threshold` failures in a row take the tier down for `base`, then twice as long after
    /// each failed probe, never longer than `max`.
    pub fn try_new(
        threshold: u32,
        base: Duration,
        max: Duration,
        now: Instant,
    ) -> Result<Self, String> {
        if threshold == 0 || base.is_zero() || max < base {
            return Err(format!(
                "a breaker needs a threshold above 0 and 0 < base <= max, not {threshold}, {base:?}, {max:?}"
            ));
        }
        Ok(Breaker {
            threshold,
            base,
            max,
            state: TierState::Up,
            failures: 0,
            backoff: base,
            until: now,
        })
    }

    pub fn state(&self) -> TierState {
        self.state
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long until a probe may go, while down.
    pub fn retry_in(&self, now: Instant) -> Duration {
        self.until.saturating_duration_since(now)
    }

    /// Whether an operation may go to the tier now. While down, the first caller past the
    /// backoff becomes the probe; a probe that never reports back is given up on after
    /// another backoff.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            TierState::Up => true,
            TierState::Down | TierState::Probing if now >= self.until => {
                self.state = TierState::Probing;
                self.until = now + self.backoff;
                true
            }
            TierState::Down | TierState::Probing => false,
        }
    }

    pub fn success(&mut self) {
        self.state = TierState::Up;
        self.failures = 0;
        self.backoff = self.base;
    }

    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        match self.state {
            TierState::Up if self.failures < self.threshold => {}
            TierState::Up => {
                self.state = TierState::Down;
                self.backoff = self.base;
                self.until = now + self.backoff;
            }
            // A failed probe (or a late failure of an operation started before it): longer.
            TierState::Probing | TierState::Down => {
                self.backoff = (self.backoff * 2).min(self.max);
                self.state = TierState::Down;
                self.until = now + self.backoff;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn breaker(now: Instant) -> Breaker {
        Breaker::try_new(3, 100 * MS, 400 * MS, now).unwrap()
    }

    #[test]
    fn refuses_a_shape_that_cannot_work() {
        let t = Instant::now();
        assert!(Breaker::try_new(0, MS, MS, t).is_err());
        assert!(Breaker::try_new(1, Duration::ZERO, MS, t).is_err());
        assert!(Breaker::try_new(1, 2 * MS, MS, t).is_err());
    }

    #[test]
    fn opens_after_the_threshold_and_a_success_resets_the_count() {
        let t = Instant::now();
        let mut b = breaker(t);
        b.failure(t);
        b.failure(t);
        b.success();
        b.failure(t);
        b.failure(t);
        assert!(b.allow(t), "two in a row are not three");
        b.failure(t);
        assert_eq!(b.state(), TierState::Down);
        assert!(!b.allow(t + 99 * MS));
        assert_eq!(b.retry_in(t + 40 * MS), 60 * MS);
    }

    #[test]
    fn one_probe_at_a_time_and_it_decides() {
        let t = Instant::now();
        let mut b = breaker(t);
        for _ in 0..3 {
            b.failure(t);
        }
        let later = t + 100 * MS;
        assert!(b.allow(later), "the first caller past the backoff probes");
        assert_eq!(b.state(), TierState::Probing);
        assert!(!b.allow(later), "the others still skip");
        b.success();
        assert_eq!(b.state(), TierState::Up);
        assert!(b.allow(later));
    }

    #[test]
    fn failed_probes_back_off_up_to_the_cap() {
        let t = Instant::now();
        let mut b = breaker(t);
        for _ in 0..3 {
            b.failure(t);
        }
        let mut now = t;
        let mut waits = Vec::new();
        for _ in 0..4 {
            now += b.retry_in(now);
            assert!(b.allow(now));
            b.failure(now);
            waits.push(b.retry_in(now));
        }
        assert_eq!(waits, [200 * MS, 400 * MS, 400 * MS, 400 * MS]);
        // Back up: the next outage starts from the base again.
        now += b.retry_in(now);
        assert!(b.allow(now));
        b.success();
        for _ in 0..3 {
            b.failure(now);
        }
        assert_eq!(b.retry_in(now), 100 * MS);
    }

    #[test]
    fn a_probe_that_never_reports_is_given_up_on() {
        let t = Instant::now();
        let mut b = breaker(t);
        for _ in 0..3 {
            b.failure(t);
        }
        assert!(b.allow(t + 100 * MS));
        assert!(!b.allow(t + 150 * MS));
        assert!(
            b.allow(t + 200 * MS),
            "another probe once the first is overdue"
        );
    }
}
