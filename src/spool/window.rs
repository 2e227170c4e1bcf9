//! How many records a replay lane has in flight at once: a window that adapts to what the
//! upstream sustains (additive increase, multiplicative decrease). It learns from a sample of
//! each window's worth of answers (about a round trip; `replay/segment.rs`). It doubles while it
//! has never had to shrink (slow start), then grows by one a sample while the upstream answers
//! near its fastest and without pushing back; it halves on a 429, a 5xx or a timeout, and
//! shrinks by a tenth when the sample's latency rises past twice the fastest seen.
//! `spool.replay_concurrency` is the ceiling. The fastest latency seen creeps up by 1% a sample,
//! so that it follows an upstream that moved farther away instead of remembering one good
//! moment for ever.

use std::time::Duration;

/// What one sample of replay calls (a window's worth of answers) saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    /// The slowest answer of the sample.
    pub latency: Duration,
    /// Whether the upstream pushed back (429, 5xx, a timeout).
    pub pushed_back: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Window {
    limit: f64,
    fastest: Option<Duration>,
    /// Still doubling: nothing has made it shrink yet.
    starting: bool,
}

/// Where a new window starts.
const START: f64 = 4.0;

impl Window {
    pub fn new() -> Window {
        Window {
            limit: START,
            fastest: None,
            starting: true,
        }
    }

    /// Records to have in flight now, at most `ceiling` (and at least one).
    pub fn size(&self, ceiling: usize) -> usize {
        (self.limit as usize).clamp(1, ceiling.max(1))
    }

    /// Learn from a sample taken with `ceiling` as the bound. A sample without an upstream call
    /// in it (its records were delivered by the live calls that accepted them, or held for a
    /// route and dead-lettered) says nothing: taken as the fastest latency, it would make every
    /// later one look slow for ever.
    pub fn record(&mut self, sample: Sample, ceiling: usize) {
        if sample == Sample::default() {
            return;
        }
        let ceiling = ceiling.max(1) as f64;
        let fastest = match self.fastest {
            Some(f) => f.mul_f64(1.01).min(sample.latency),
            None => sample.latency,
        };
        self.fastest = Some(fastest);
        let slow = sample.latency > fastest * 2 && sample.latency > Duration::from_millis(5);
        if sample.pushed_back {
            self.limit /= 2.0;
            self.starting = false;
        } else if slow {
            self.limit *= 0.9;
            self.starting = false;
        } else if self.starting {
            self.limit *= 2.0;
        } else {
            self.limit += 1.0;
        }
        self.limit = self.limit.clamp(1.0, ceiling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn calm(latency_ms: u64) -> Sample {
        Sample {
            latency: MS * latency_ms as u32,
            pushed_back: false,
        }
    }

    #[test]
    fn a_sample_without_a_call_teaches_nothing() {
        let mut w = Window::new();
        w.record(calm(20), 256);
        w.record(Sample::default(), 256);
        assert_eq!(w.size(256), 8, "unchanged by the empty sample");
        // Answers at 10 ms are not slow against a fastest of 20 ms (they were against zero).
        for _ in 0..3 {
            w.record(calm(10), 256);
        }
        assert_eq!(w.size(256), 64);
    }

    #[test]
    fn it_grows_fast_then_slowly_and_halves_on_push_back() {
        let mut w = Window::new();
        let sizes: Vec<usize> = (0..4)
            .map(|_| {
                w.record(calm(50), 256);
                w.size(256)
            })
            .collect();
        assert_eq!(sizes, [8, 16, 32, 64]);
        w.record(
            Sample {
                latency: MS * 50,
                pushed_back: true,
            },
            256,
        );
        assert_eq!(w.size(256), 32);
        w.record(calm(50), 256);
        assert_eq!(w.size(256), 33, "after a push back, one more a sample");
    }

    #[test]
    fn a_latency_rise_shrinks_it_and_the_ceiling_bounds_it() {
        let mut w = Window::new();
        for _ in 0..10 {
            w.record(calm(50), 32);
        }
        assert_eq!(w.size(32), 32);
        w.record(calm(150), 32);
        assert_eq!(w.size(32), 28);
        // A smaller ceiling (a reload) applies at once.
        assert_eq!(w.size(8), 8);
    }

    #[test]
    fn an_upstream_that_moved_away_becomes_the_new_normal() {
        let mut w = Window::new();
        w.record(calm(10), 64);
        // Now 50 ms away for good: it shrinks at first, then the fastest seen catches up and
        // it grows again.
        let mut sizes = Vec::new();
        for _ in 0..400 {
            w.record(calm(50), 64);
            sizes.push(w.size(64));
        }
        assert!(sizes[..10].iter().any(|&s| s < 8), "{sizes:?}");
        assert_eq!(*sizes.last().unwrap(), 64, "{sizes:?}");
    }

    proptest! {
        #[test]
        fn it_stays_within_one_and_the_ceiling(
            samples in proptest::collection::vec((0u64..2000, any::<bool>()), 1..200),
            ceiling in 0usize..300,
        ) {
            let mut w = Window::new();
            for (ms, pushed_back) in samples {
                w.record(Sample { latency: MS * ms as u32, pushed_back }, ceiling);
                let size = w.size(ceiling);
                prop_assert!(size >= 1 && size <= ceiling.max(1));
            }
        }

        #[test]
        fn push_back_never_grows_it(
            warm in 0usize..20,
            ceiling in 1usize..300,
        ) {
            let mut w = Window::new();
            for _ in 0..warm {
                w.record(calm(20), ceiling);
            }
            let before = w.size(ceiling);
            w.record(Sample { latency: MS * 20, pushed_back: true }, ceiling);
            prop_assert!(w.size(ceiling) <= before);
            prop_assert!(w.size(ceiling) >= before / 2);
        }
    }
}
