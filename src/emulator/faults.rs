//! Fault plans for the emulator: a status (429 with 2003/2013, 5xx) for a fraction of ingestion
//! calls during a time window, plus added latency.

use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `POST /_emulator/faults` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Status of faulted answers; 0 means "no status fault, latency only".
    #[serde(default = "default_status")]
    pub status: u16,
    /// Vendor code in the faulted body; defaults by status (429 → 2003, 5xx → 2001).
    pub code: Option<u32>,
    /// Fraction of ingestion calls that get the fault, 0.0 to 1.0.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// How long the plan lasts; absent means until `DELETE /_emulator/faults`.
    pub seconds: Option<f64>,
    /// Added to every ingestion answer while the plan lasts.
    #[serde(default)]
    pub latency_ms: u64,
    /// A `Retry-After` header value to send with faulted answers.
    pub retry_after: Option<String>,
    /// The vendor's reserved concurrency: while more than this many ingestion calls are being
    /// answered at once, a call gets 429 with code 2013 and is not ingested.
    pub max_in_flight: Option<u64>,
}

fn default_status() -> u16 {
    429
}
fn default_rate() -> f64 {
    1.0
}

impl FaultSpec {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.rate) {
            return Err("rate must be between 0 and 1".into());
        }
        if self.status != 0 && !(400..=599).contains(&self.status) {
            return Err("status must be 0 or 400-599".into());
        }
        if self.seconds.is_some_and(|s| !(s > 0.0 && s < 86_400.0)) {
            return Err("seconds must be between 0 and 86400".into());
        }
        Ok(())
    }

    pub fn code(&self) -> u32 {
        self.code.unwrap_or(match self.status {
            429 => 2003,
            500..=599 => 2001,
            s => u32::from(s),
        })
    }
}

/// A plan in force. Which calls fail is spread evenly, not random: with rate 0.5 every other
/// call fails, so tests get the same outcome on every run.
#[derive(Debug)]
pub struct FaultPlan {
    pub spec: FaultSpec,
    until: Option<Instant>,
    seen: AtomicU64,
}

impl FaultPlan {
    pub fn new(spec: FaultSpec) -> Self {
        let until = spec
            .seconds
            .map(|s| Instant::now() + Duration::from_secs_f64(s));
        FaultPlan {
            spec,
            until,
            seen: AtomicU64::new(0),
        }
    }

    pub fn active(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| now < u)
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.spec.latency_ms)
    }

    /// Whether this call gets the fault: the n-th call fails when ⌊(n+1)·rate⌋ > ⌊n·rate⌋.
    pub fn strikes(&self) -> bool {
        if self.spec.status == 0 {
            return false;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.spec.rate).floor() > (n * self.spec.rate).floor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: f64) -> FaultPlan {
        FaultPlan::new(FaultSpec {
            status: 429,
            code: None,
            rate,
            seconds: None,
            latency_ms: 0,
            retry_after: None,
            max_in_flight: None,
        })
    }

    #[test]
    fn rate_is_spread_exactly() {
        for (rate, expected) in [(0.0, 0), (0.5, 50), (0.25, 25), (1.0, 100), (0.333, 33)] {
            let p = plan(rate);
            let hits = (0..100).filter(|_| p.strikes()).count();
            assert_eq!(hits, expected, "rate {rate}");
        }
        assert_eq!(plan(1.0).spec.code(), 2003);
    }
}
