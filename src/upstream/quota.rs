//! A service's quota (`max_events_per_second`): calls spaced evenly, at least `1.01 / rate`
//! seconds apart, so that no second of the upstream's sees more than `rate` of them (the 1%
//! absorbs jitter on the way). A token bucket with a second's burst let through twice the rate
//! in the second after an idle spell.
//!
//! A call reserves its slot and sleeps once until it comes (no retry loop: with hundreds of
//! replay calls waiting, a loop woke them all for every slot), and waits only as long as leaves
//! it time to be answered before its deadline. Live calls reserve directly; replay calls queue
//! behind one another for a turn, and a turn takes only a slot that starts within an interval
//! (or 5 ms, the timer's granularity), so live calls arriving meanwhile go first: replay fills
//! what the quota leaves.
//!
//! What is spaced is the slots, taken before the connection is: a call that then waits for a
//! new connection (TLS to a distant upstream) leaves later than its slot, so under such spread
//! a second of the upstream's can see a few more calls than the rate. Two processes during a
//! graceful upgrade each keep their own schedule.

use super::{shared, CallLimits, UpstreamClient, UpstreamResponse};
use crate::lock;
use crate::metrics;
use http::HeaderValue;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a call may wait for its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaWait {
    /// Within the call's deadline (a visitor waits for its offers).
    UntilDeadline,
    /// Not at all: a slot free now, or a 429 (the caller has cached offers to answer with).
    Never,
    /// Behind the other replayed calls and after live ones, within the deadline.
    Behind,
}

/// The schedule of one service's calls.
#[derive(Debug)]
pub(crate) struct Pacer {
    rate: f64,
    interval: Duration,
    /// The earliest start of the next slot.
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(per_second: f64) -> Pacer {
        Pacer {
            rate: per_second,
            interval: Duration::from_secs_f64(1.01 / per_second),
            next: None,
        }
    }

    /// Follow a rate changed by a reload; the slots already taken stay.
    pub fn set_rate(&mut self, per_second: f64) {
        if per_second != self.rate {
            self.rate = per_second;
            self.interval = Duration::from_secs_f64(1.01 / per_second);
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Take the next slot if it starts within `max_wait` of `now`: `Ok(wait until it)`, else
    /// `Err(the wait it would take)` and nothing is taken.
    pub fn reserve(&mut self, now: Instant, max_wait: Duration) -> Result<Duration, Duration> {
        let slot = self.next.map_or(now, |next| next.max(now));
        let wait = slot - now;
        if wait > max_wait {
            return Err(wait);
        }
        self.next = Some(slot + self.interval);
        Ok(wait)
    }
}

/// The time a call keeps for its attempt after waiting for the quota: its upstream timeout, or
/// half its deadline when that is shorter.
fn attempt_budget(limits: CallLimits) -> Duration {
    limits.timeouts.upstream.min(limits.deadline / 2)
}

/// A service's quota: its schedule, and the queue of replayed calls waiting for a turn.
pub(super) struct Quota {
    pacer: Mutex<Pacer>,
    replay_turn: tokio::sync::Mutex<()>,
}

impl UpstreamClient {
    /// Take a slot of the service's quota, waiting for it when `limits` say so; otherwise how
    /// long until one is free. A call waits only as long as leaves it `attempt_budget` before
    /// its deadline: one that slept until its deadline would be sent with no time left to be
    /// answered (a timeout, counted against the circuit, for an event the upstream may have
    /// ingested).
    pub(super) async fn take_quota(
        &self,
        service: &str,
        rate: f64,
        deadline: Instant,
        limits: CallLimits,
    ) -> Result<(), Duration> {
        let quota = shared(&self.quotas, service, || Quota {
            pacer: Mutex::new(Pacer::new(rate)),
            replay_turn: tokio::sync::Mutex::new(()),
        });
        let keep = attempt_budget(limits);
        let may_wait = || {
            deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(keep)
        };
        let reserve = |max_wait: Duration| {
            let mut pacer = lock(&quota.pacer);
            // A reload may have changed the rate.
            pacer.set_rate(rate);
            (pacer.reserve(Instant::now(), max_wait), pacer.interval())
        };
        let wait = match limits.quota_wait {
            QuotaWait::Never => reserve(Duration::ZERO).0,
            QuotaWait::UntilDeadline => reserve(may_wait()).0,
            QuotaWait::Behind => {
                // One replayed call at a time looks for a slot, and takes only one that starts
                // soon (an interval, or the timer's few milliseconds: a turn that slept to the
                // very start of its slot would wake past it, and the schedule would drift), so
                // live calls keep theirs. Waiting for the turn counts against the deadline too.
                let turn = tokio::time::timeout(may_wait(), quota.replay_turn.lock()).await;
                match turn {
                    Err(_) => Err(Duration::ZERO),
                    Ok(_turn) => loop {
                        let soon = lock(&quota.pacer).interval().max(Duration::from_millis(5));
                        let (reserved, _) = reserve(soon.min(may_wait()));
                        match reserved {
                            Ok(wait) => break Ok(wait),
                            Err(wait) if wait >= may_wait() => break Err(wait),
                            Err(wait) => tokio::time::sleep(wait.saturating_sub(soon)).await,
                        }
                    },
                }
            }
        };
        match wait {
            Ok(Duration::ZERO) => {}
            Ok(wait) => {
                metrics::QUOTA_DEFERRED.with_label_values(&[service]).inc();
                tokio::time::sleep(wait).await;
            }
            Err(wait) => {
                metrics::QUOTA_DEFERRED.with_label_values(&[service]).inc();
                return Err(wait);
            }
        }
        metrics::QUOTA_SPENT.with_label_values(&[service]).inc();
        Ok(())
    }
}

/// What a call past the quota gets instead of being sent: the vendor's 429 for an ingestion
/// limit (2003), with `Retry-After`.
pub(super) fn quota_answer(wait: Duration) -> UpstreamResponse {
    UpstreamResponse {
        status: 429,
        content_type: Some(HeaderValue::from_static("application/json")),
        retry_after: Some(HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64)),
        body: crate::error::error_body(
            2003,
            "Too many events a second for this service's quota (max_events_per_second); retry later",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_second_slot_waits_an_interval_and_a_refused_one_takes_nothing() {
        let t = Instant::now();
        let mut p = Pacer::new(100.0);
        assert_eq!(p.reserve(t, Duration::ZERO), Ok(Duration::ZERO));
        let gap = p.interval();
        assert_eq!(p.reserve(t, Duration::ZERO), Err(gap));
        assert_eq!(p.reserve(t, gap), Ok(gap));
        // Idle for a while: the next call goes at once, and only one.
        let later = t + Duration::from_secs(5);
        assert_eq!(p.reserve(later, Duration::ZERO), Ok(Duration::ZERO));
        assert!(p.reserve(later, Duration::ZERO).is_err());
    }

    #[test]
    fn a_new_rate_spaces_the_slots_after_the_ones_taken() {
        let t = Instant::now();
        let mut p = Pacer::new(100.0);
        assert!(p.reserve(t, Duration::ZERO).is_ok());
        p.set_rate(1.0);
        let first = p.reserve(t, Duration::from_secs(5)).unwrap();
        let second = p.reserve(t, Duration::from_secs(5)).unwrap();
        assert!(first < Duration::from_millis(20));
        assert!(second - first >= Duration::from_secs(1));
    }

    proptest! {
        /// However calls arrive and however long they may wait, the slots granted are an
        /// interval apart, and no window of one second holds more than the rate.
        #[test]
        fn no_second_holds_more_than_the_rate(
            rate in 1u32..3000,
            arrivals in proptest::collection::vec((0u64..2_000_000, 0u64..3_000_000), 1..400),
        ) {
            let t0 = Instant::now();
            let mut p = Pacer::new(f64::from(rate));
            let mut at = 0;
            let mut slots = Vec::new();
            for (gap_us, max_wait_us) in arrivals {
                at += gap_us / 64;
                let now = t0 + Duration::from_micros(at);
                if let Ok(wait) = p.reserve(now, Duration::from_micros(max_wait_us)) {
                    prop_assert!(wait <= Duration::from_micros(max_wait_us));
                    slots.push(now + wait);
                }
            }
            for pair in slots.windows(2) {
                prop_assert!(pair[1] >= pair[0] + p.interval());
            }
            for (i, start) in slots.iter().enumerate() {
                let in_second = slots[i..].iter().take_while(|s| **s < *start + Duration::from_secs(1)).count();
                prop_assert!(in_second <= rate as usize, "{in_second} slots in a second at {rate}/s");
            }
        }
    }
}
