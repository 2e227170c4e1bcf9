//! Retry delays: exponential backoff with full jitter, and the upstream's `Retry-After`.

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    #[error("backoff base must be above zero")]
    ZeroBase,
    #[error("backoff cap must be at least the base")]
    CapBelowBase,
}

/// Exponential backoff with full jitter: attempt `n` waits a uniform random time in
/// `[0, min(cap, base · 2ⁿ)]`. Full jitter spreads a crowd of retries over the whole window, so
/// a 429 storm is not answered by a synchronized wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn try_new(base: Duration, cap: Duration) -> Result<Self, BackoffError> {
        if base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        if cap < base {
            return Err(BackoffError::CapBelowBase);
        }
        Ok(Backoff { base, cap })
    }

    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The ceiling for retry `attempt` (0 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay for retry `attempt`, given `unit`, a uniform sample from `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// `Retry-After` in either form: delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_bad_input() {
        let ms = Duration::from_millis;
        assert_eq!(Backoff::try_new(ms(0), ms(10)), Err(BackoffError::ZeroBase));
        assert_eq!(
            Backoff::try_new(ms(10), ms(5)),
            Err(BackoffError::CapBelowBase)
        );
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::try_new(Duration::from_millis(25), Duration::from_millis(1000)).unwrap();
        let ceilings: Vec<u128> = (0..8).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [25, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn retry_after_in_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after(b"3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(b" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            parse_retry_after(later.as_bytes(), now),
            Some(Duration::from_secs(7))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(
            parse_retry_after(past.as_bytes(), now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(b"-1", now), None);
        assert_eq!(parse_retry_after(b"soon", now), None);
        assert_eq!(parse_retry_after(b"\xff", now), None);
    }

    proptest! {
        #[test]
        fn delay_stays_within_the_jitter_window(
            base in 1u64..10_000, extra in 0u64..100_000, attempt in 0u32..200, unit in 0.0f64..1.0
        ) {
            let b = Backoff::try_new(Duration::from_millis(base), Duration::from_millis(base + extra)).unwrap();
            let d = b.delay(attempt, unit);
            prop_assert!(d <= b.ceiling(attempt));
            prop_assert!(d <= b.cap());
        }

        #[test]
        fn ceilings_never_shrink(base in 1u64..10_000, extra in 0u64..100_000, attempt in 0u32..200) {
            let b = Backoff::try_new(Duration::from_millis(base), Duration::from_millis(base + extra)).unwrap();
            prop_assert!(b.ceiling(attempt) <= b.ceiling(attempt + 1));
            prop_assert!(b.ceiling(attempt) >= Duration::from_millis(base));
        }
    }
}
