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
    /// When the probe now out was let through.
    probe_at: Instant,
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
            probe_at: now,
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
                self.probe_at = now;
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

    /// An operation that started at `started` failed at `now`.
    pub fn failure(&mut self, now: Instant, started: Instant) {
        self.failures = self.failures.saturating_add(1);
        match self.state {
            TierState::Up if self.failures < self.threshold => {}
            TierState::Up => {
                self.state = TierState::Down;
                self.backoff = self.base;
                self.until = now + self.backoff;
            }
            // The probe (or an operation let through after it) failed: down, for longer.
            TierState::Probing if started >= self.probe_at => {
                self.backoff = (self.backoff * 2).min(self.max);
                self.state = TierState::Down;
                self.until = now + self.backoff;
            }
            // Operations that were out before the tier went down fail late: already counted.
            TierState::Probing | TierState::Down => {}
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
        b.failure(t, t);
        b.failure(t, t);
        b.success();
        b.failure(t, t);
        b.failure(t, t);
        assert!(b.allow(t), "two in a row are not three");
        b.failure(t, t);
        assert_eq!(b.state(), TierState::Down);
        assert!(!b.allow(t + 99 * MS));
        assert_eq!(b.retry_in(t + 40 * MS), 60 * MS);
    }

    #[test]
    fn one_probe_at_a_time_and_it_decides() {
        let t = Instant::now();
        let mut b = breaker(t);
        for _ in 0..3 {
            b.failure(t, t);
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
            b.failure(t, t);
        }
        let mut now = t;
        let mut waits = Vec::new();
        for _ in 0..4 {
            now += b.retry_in(now);
            assert!(b.allow(now));
            b.failure(now, now);
            waits.push(b.retry_in(now));
        }
        assert_eq!(waits, [200 * MS, 400 * MS, 400 * MS, 400 * MS]);
        // Back up: the next outage starts from the base again.
        now += b.retry_in(now);
        assert!(b.allow(now));
        b.success();
        for _ in 0..3 {
            b.failure(now, now);
        }
        assert_eq!(b.retry_in(now), 100 * MS);
    }

    #[test]
    fn a_probe_that_never_reports_is_given_up_on() {
        let t = Instant::now();
        let mut b = breaker(t);
        for _ in 0..3 {
            b.failure(t, t);
        }
        assert!(b.allow(t + 100 * MS));
        assert!(!b.allow(t + 150 * MS));
        assert!(
            b.allow(t + 200 * MS),
            "another probe once the first is overdue"
        );
    }

    #[test]
    fn late_failures_of_operations_from_before_the_trip_do_not_lengthen_it() {
        let t = Instant::now();
        let mut b = breaker(t);
        // 60 operations out at once, all failing after the trip.
        for _ in 0..60 {
            b.failure(t + 50 * MS, t);
        }
        assert_eq!(
            b.retry_in(t + 50 * MS),
            100 * MS,
            "down for the base, not the cap"
        );
        let probe = t + 150 * MS;
        assert!(b.allow(probe));
        // One more from before the probe fails: the probe still decides.
        b.failure(probe + MS, t);
        assert_eq!(b.state(), TierState::Probing);
        b.failure(probe + 2 * MS, probe);
        assert_eq!(b.retry_in(probe + 2 * MS), 200 * MS);
    }
}
