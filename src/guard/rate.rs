//! Rate limits as token buckets, per client address and per visitor identifier. Memory is
//! bounded: at most `max_tracked` buckets per limiter, and visitor keys of at most
//! `MAX_KEY_BYTES`. A full bucket is the same as no bucket, so those are swept first; when every
//! tracked key is busy, what a new key gets is the limiter's `Overflow` policy.

use crate::lock;
use dashmap::DashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A bucket's shape: refill rate and capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketSpec {
    pub per_second: f64,
    pub burst: f64,
}

impl BucketSpec {
    pub fn try_new(per_second: f64, burst: f64) -> Result<Self, String> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(format!("rate must be above 0, not {per_second}"));
        }
        if !(burst.is_finite() && burst >= 1.0) {
            return Err(format!("burst must be at least 1, not {burst}"));
        }
        Ok(BucketSpec { per_second, burst })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(spec: BucketSpec, now: Instant) -> Self {
        Bucket {
            tokens: spec.burst,
            at: now,
        }
    }

    fn refill(&mut self, spec: BucketSpec, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * spec.per_second).min(spec.burst);
        self.at = now.max(self.at);
    }

    /// Take one token, or say how long until one is there.
    pub fn take(&mut self, spec: BucketSpec, now: Instant) -> Result<(), Duration> {
        self.refill(spec, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / spec.per_second,
            ))
        }
    }

    fn is_full(&self, spec: BucketSpec, now: Instant) -> bool {
        let mut b = *self;
        b.refill(spec, now);
        b.tokens >= spec.burst
    }
}

/// Longest visitor identifier kept as is in a limiter key: the `_td` cookie's own cap.
pub const MAX_KEY_BYTES: usize = 128;

/// A visitor's limiter key, at most `MAX_KEY_BYTES` long whatever the body held. A longer
/// identifier is kept as a 128-bit digest under a key chosen at random per process: cutting it
/// to a prefix would make every visitor sharing that prefix one bucket (a site whose ids start
/// with a long tenant prefix, or an attacker who picks a victim's), and a digest an outsider
/// cannot compute cannot be aimed at another visitor's bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VisitorKey {
    Id(Box<str>),
    Digest(u128),
}

impl VisitorKey {
    pub fn new(id: &str) -> Self {
        if id.len() <= MAX_KEY_BYTES {
            return VisitorKey::Id(id.into());
        }
        static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        let key = KEY.get_or_init(Default::default);
        // Two SipHash outputs of the same key, told apart by a first byte.
        let half = |domain: u8| {
            let mut h = key.build_hasher();
            h.write_u8(domain);
            h.write(id.as_bytes());
            h.finish()
        };
        VisitorKey::Digest(u128::from(half(0)) << 64 | u128::from(half(1)))
    }
}

/// What a limiter does with a new key once `max_tracked` keys are busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// New keys share one bucket. Right for addresses: nothing else limits them.
    Shared,
    /// New keys are not limited here: for visitors, whose requests have been through the
    /// per-address limit already. A shared bucket would let one address rotating ids push every
    /// new visitor, from anywhere, into 429.
    Pass,
}

/// Buckets by key, at most `max_tracked` of them.
pub struct Limiter<K: Hash + Eq> {
    /// Keyed by what clients send: ahash's randomly keyed hasher, like the offer cache's.
    buckets: DashMap<K, Bucket, ahash::RandomState>,
    /// `buckets.len()`, kept here: the map's own count visits every shard, on every request.
    tracked: AtomicUsize,
    max_tracked: usize,
    when_full: Overflow,
    overflow: Mutex<Option<Bucket>>,
    last_sweep: Mutex<Option<Instant>>,
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; a token is back after this long.
    Limited(Duration),
}

impl<K: Hash + Eq> Limiter<K> {
    /// A limiter whose new keys share one bucket when it is full.
    pub fn new(max_tracked: usize) -> Self {
        Self::with_overflow(max_tracked, Overflow::Shared)
    }

    pub fn with_overflow(max_tracked: usize, when_full: Overflow) -> Self {
        Limiter {
            buckets: DashMap::with_hasher(ahash::RandomState::new()),
            tracked: AtomicUsize::new(0),
            max_tracked: max_tracked.max(1),
            when_full,
            overflow: Mutex::new(None),
            last_sweep: Mutex::new(None),
        }
    }

    /// Count one request of `key`. `overflowed` is true when the key could not be tracked: it
    /// then shared the overflow bucket, or passed (see `Overflow`).
    pub fn check(&self, key: K, spec: BucketSpec, now: Instant) -> (Verdict, bool) {
        let verdict = |r: Result<(), Duration>| match r {
            Ok(()) => Verdict::Allowed,
            Err(wait) => Verdict::Limited(wait),
        };
        if let Some(mut bucket) = self.buckets.get_mut(&key) {
            return (verdict(bucket.take(spec, now)), false);
        }
        if self.tracked() >= self.max_tracked {
            self.sweep(spec, now);
        }
        if self.tracked() >= self.max_tracked {
            if self.when_full == Overflow::Pass {
                return (Verdict::Allowed, true);
            }
            let mut overflow = lock(&self.overflow);
            let bucket = overflow.get_or_insert_with(|| Bucket::full(spec, now));
            return (verdict(bucket.take(spec, now)), true);
        }
        let mut bucket = Bucket::full(spec, now);
        let result = bucket.take(spec, now);
        // A racing insert of the same key is harmless: both took from a full bucket.
        if self.buckets.insert(key, bucket).is_none() {
            self.tracked.fetch_add(1, Ordering::Relaxed);
        }
        (verdict(result), false)
    }

    /// Drop buckets that have refilled: forgetting them changes nothing. At most once a
    /// second, so a flood of new keys does not turn every request into a full scan.
    fn sweep(&self, spec: BucketSpec, now: Instant) {
        {
            let mut last = lock(&self.last_sweep);
            if last.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        self.buckets.retain(|_, b| !b.is_full(spec, now));
        self.tracked.store(self.buckets.len(), Ordering::Relaxed);
    }

    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(rate: f64, burst: f64) -> BucketSpec {
        BucketSpec::try_new(rate, burst).unwrap()
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let s = spec(2.0, 3.0);
        let t0 = Instant::now();
        let mut b = Bucket::full(s, t0);
        for _ in 0..3 {
            assert!(b.take(s, t0).is_ok());
        }
        let wait = b.take(s, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.take(s, t0 + Duration::from_millis(499)).is_err());
        assert!(b.take(s, t0 + Duration::from_millis(1000)).is_ok());
    }

    #[test]
    fn specs_refuse_nonsense() {
        assert!(BucketSpec::try_new(0.0, 1.0).is_err());
        assert!(BucketSpec::try_new(1.0, 0.5).is_err());
        assert!(BucketSpec::try_new(f64::NAN, 1.0).is_err());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_new_keys() {
        let s = spec(1.0, 1.0);
        let limiter = Limiter::new(100);
        let t0 = Instant::now();
        let mut overflowed = 0;
        for key in 0..10_000u32 {
            let (_, over) = limiter.check(key, s, t0);
            overflowed += usize::from(over);
        }
        assert_eq!(limiter.tracked(), 100);
        assert_eq!(overflowed, 9_900);
        // Once the tracked buckets have refilled, new keys get buckets of their own again.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(limiter.check(20_000, s, later), (Verdict::Allowed, false));
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn a_full_pass_limiter_lets_new_keys_through_and_still_limits_tracked_ones() {
        let s = spec(1.0, 1.0);
        let limiter = Limiter::with_overflow(2, Overflow::Pass);
        let t0 = Instant::now();
        assert_eq!(limiter.check(1, s, t0), (Verdict::Allowed, false));
        assert_eq!(limiter.check(2, s, t0), (Verdict::Allowed, false));
        for key in 3..100 {
            assert_eq!(limiter.check(key, s, t0), (Verdict::Allowed, true));
        }
        assert!(matches!(
            limiter.check(1, s, t0),
            (Verdict::Limited(_), false)
        ));
        assert_eq!(limiter.tracked(), 2);
    }

    #[test]
    fn long_visitor_ids_become_bounded_keys_that_stay_distinct() {
        let short = "v".repeat(MAX_KEY_BYTES);
        assert_eq!(
            VisitorKey::new(&short),
            VisitorKey::Id(short.clone().into())
        );
        let prefix = "x".repeat(10_000);
        let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
        assert!(matches!(VisitorKey::new(&a), VisitorKey::Digest(_)));
        assert_eq!(VisitorKey::new(&a), VisitorKey::new(&a));
        assert_ne!(VisitorKey::new(&a), VisitorKey::new(&b));
        let limiter = Limiter::new(10);
        let s = spec(1.0, 1.0);
        let t0 = Instant::now();
        assert_eq!(
            limiter.check(VisitorKey::new(&a), s, t0).0,
            Verdict::Allowed
        );
        assert_eq!(
            limiter.check(VisitorKey::new(&b), s, t0).0,
            Verdict::Allowed
        );
        assert!(matches!(
            limiter.check(VisitorKey::new(&a), s, t0).0,
            Verdict::Limited(_)
        ));
    }

    #[test]
    fn keys_are_limited_separately() {
        let s = spec(1.0, 1.0);
        let limiter = Limiter::new(10);
        let t0 = Instant::now();
        assert_eq!(limiter.check("a", s, t0).0, Verdict::Allowed);
        assert!(matches!(limiter.check("a", s, t0).0, Verdict::Limited(_)));
        assert_eq!(limiter.check("b", s, t0).0, Verdict::Allowed);
    }

    proptest! {
        /// Over any schedule, a bucket never lets through more than burst + rate × elapsed.
        #[test]
        fn never_more_than_burst_plus_rate(
            rate in 0.1f64..100.0,
            burst in 1.0f64..50.0,
            gaps in proptest::collection::vec(0u64..200, 1..300),
        ) {
            let s = spec(rate, burst);
            let t0 = Instant::now();
            let mut b = Bucket::full(s, t0);
            let mut now = t0;
            let mut passed = 0u64;
            for gap in gaps {
                now += Duration::from_millis(gap);
                if b.take(s, now).is_ok() {
                    passed += 1;
                }
            }
            let elapsed = now.duration_since(t0).as_secs_f64();
            prop_assert!(passed as f64 <= burst + rate * elapsed + 1e-9);
        }
    }
}
