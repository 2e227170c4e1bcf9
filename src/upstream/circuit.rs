//! A circuit breaker per upstream: it opens on consecutive failures or on an error rate, fails
//! calls fast while open, and lets one probe through (half-open) to find out when to close.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitSettings {
    /// Consecutive failures that open the circuit.
    pub consecutive_failures: u32,
    /// Failure share over `window` that opens it, once `min_calls` were made.
    pub failure_rate: f64,
    pub min_calls: u32,
    pub window: Duration,
    /// How long it stays open before a probe is let through.
    pub open_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

#[derive(Debug)]
pub struct Circuit {
    state: CircuitState,
    consecutive: u32,
    window_start: Instant,
    calls: u32,
    failures: u32,
    /// When it opened, or when the half-open probe went out.
    since: Instant,
    /// The `open_for` it opened with: how long `since` keeps calls out.
    open_for: Duration,
}

impl Circuit {
    pub fn new(now: Instant) -> Self {
        Circuit {
            state: CircuitState::Closed,
            consecutive: 0,
            window_start: now,
            calls: 0,
            failures: 0,
            since: now,
            open_for: Duration::ZERO,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// The state as a caller would find it at `now`: an open circuit whose `open_for` has
    /// passed lets the next call through, so it counts as half-open. Readiness reads this one:
    /// a pod taken out of service for an open circuit gets no call that could move it on.
    pub fn state_at(&self, now: Instant) -> CircuitState {
        match self.state {
            CircuitState::Open if now.saturating_duration_since(self.since) >= self.open_for => {
                CircuitState::HalfOpen
            }
            state => state,
        }
    }

    /// Whether a call may go out now.
    pub fn allow(&mut self, s: &CircuitSettings, now: Instant) -> bool {
        match self.state {
            CircuitState::Closed => true,
            // A probe that never reported (its caller gave up) must not wedge the circuit.
            CircuitState::Open | CircuitState::HalfOpen
                if now.saturating_duration_since(self.since) >= s.open_for =>
            {
                self.state = CircuitState::HalfOpen;
                self.since = now;
                true
            }
            CircuitState::Open | CircuitState::HalfOpen => false,
        }
    }

    /// Record a call's outcome. Returns the new state when it changed.
    pub fn record(&mut self, s: &CircuitSettings, ok: bool, now: Instant) -> Option<CircuitState> {
        let before = self.state;
        match self.state {
            CircuitState::HalfOpen | CircuitState::Open => {
                if ok {
                    self.close(now);
                } else if self.state == CircuitState::HalfOpen {
                    self.open(s, now);
                }
            }
            CircuitState::Closed => {
                if now.saturating_duration_since(self.window_start) >= s.window {
                    self.window_start = now;
                    self.calls = 0;
                    self.failures = 0;
                }
                self.calls += 1;
                if ok {
                    self.consecutive = 0;
                } else {
                    self.consecutive += 1;
                    self.failures += 1;
                }
                let rate_tripped = self.calls >= s.min_calls
                    && f64::from(self.failures) >= s.failure_rate * f64::from(self.calls);
                if self.consecutive >= s.consecutive_failures || rate_tripped {
                    self.open(s, now);
                }
            }
        }
        (self.state != before).then_some(self.state)
    }

    fn open(&mut self, s: &CircuitSettings, now: Instant) {
        self.state = CircuitState::Open;
        self.since = now;
        self.open_for = s.open_for;
    }

    fn close(&mut self, now: Instant) {
        *self = Circuit::new(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> CircuitSettings {
        CircuitSettings {
            consecutive_failures: 3,
            failure_rate: 0.5,
            min_calls: 10,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
        }
    }

    #[test]
    fn opens_on_consecutive_failures_probes_and_recovers() {
        let s = settings();
        let t = Instant::now();
        let mut c = Circuit::new(t);
        assert_eq!(c.record(&s, false, t), None);
        assert_eq!(c.record(&s, false, t), None);
        assert_eq!(c.record(&s, false, t), Some(CircuitState::Open));
        assert!(!c.allow(&s, t + Duration::from_secs(1)));
        let probe = t + Duration::from_secs(5);
        assert!(c.allow(&s, probe));
        assert_eq!(c.state(), CircuitState::HalfOpen);
        assert!(!c.allow(&s, probe), "one probe at a time");
        assert_eq!(c.record(&s, false, probe), Some(CircuitState::Open));
        let probe = probe + Duration::from_secs(5);
        assert!(c.allow(&s, probe));
        assert_eq!(c.record(&s, true, probe), Some(CircuitState::Closed));
        assert!(c.allow(&s, probe));
    }

    #[test]
    fn opens_on_an_error_rate() {
        let s = settings();
        let t = Instant::now();
        let mut c = Circuit::new(t);
        for i in 0..9 {
            c.record(&s, i % 2 == 0, t); // alternate: never 3 in a row
            assert_eq!(c.state(), CircuitState::Closed);
        }
        assert_eq!(c.record(&s, false, t), Some(CircuitState::Open)); // 5 of 10
    }

    #[test]
    fn an_open_circuit_past_its_open_time_reads_as_half_open() {
        let s = settings();
        let t = Instant::now();
        let mut c = Circuit::new(t);
        for _ in 0..3 {
            c.record(&s, false, t);
        }
        assert_eq!(c.state_at(t + Duration::from_secs(4)), CircuitState::Open);
        assert_eq!(
            c.state_at(t + Duration::from_secs(5)),
            CircuitState::HalfOpen
        );
        assert_eq!(
            c.state(),
            CircuitState::Open,
            "reading it lets no call through"
        );
    }

    #[test]
    fn a_lost_probe_does_not_wedge_it() {
        let s = settings();
        let t = Instant::now();
        let mut c = Circuit::new(t);
        for _ in 0..3 {
            c.record(&s, false, t);
        }
        assert!(c.allow(&s, t + Duration::from_secs(5)));
        assert!(
            c.allow(&s, t + Duration::from_secs(10)),
            "a new probe after another open_for"
        );
    }

    proptest! {
        #[test]
        fn never_open_without_failures(oks in proptest::collection::vec(Just(true), 0..100)) {
            let s = settings();
            let t = Instant::now();
            let mut c = Circuit::new(t);
            for ok in oks {
                prop_assert!(c.allow(&s, t));
                c.record(&s, ok, t);
            }
            prop_assert_eq!(c.state(), CircuitState::Closed);
        }
    }
}
