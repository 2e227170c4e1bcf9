//! Metrics of the shared tier (`[shared]`).

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge, HistogramVec,
    IntCounterVec, IntGauge,
};
use std::sync::LazyLock;

pub static SHARED_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_shared_errors_total",
        "Shared-tier operations that failed and fell back to the local cache or limits, by \
         operation (get, put, limit, ping) and kind (timeout, refused, io, auth, protocol, \
         server, decode, other).",
        &["op", "kind"]
    )
    .expect("metric registers once")
});

pub static SHARED_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_shared_lookups_total",
        "Local cache misses looked up in the shared tier, by result (hit, miss, error, skipped: \
         the tier was down and not asked).",
        &["result"]
    )
    .expect("metric registers once")
});

pub static SHARED_WRITES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_shared_writes_total",
        "Upstream answers written through to the shared tier, by result (ok, error, dropped: \
         too many in flight, skipped: the tier was down, unchanged: the same as the copy written \
         less than half its freshness ago).",
        &["result"]
    )
    .expect("metric registers once")
});

pub static SHARED_LIMITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_shared_limit_checks_total",
        "Per-visitor limit checks, by where they were decided: allowed or limited by the shared \
         tier, or local (the tier failed or was down).",
        &["result"]
    )
    .expect("metric registers once")
});

pub static SHARED_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "p13n_edge_shared_duration_seconds",
        "Duration of shared-tier operations that succeeded, by operation: what a lookup adds to a \
         local miss.",
        &["op"],
        vec![0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0]
    )
    .expect("metric registers once")
});

pub static SHARED_STATE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "p13n_edge_shared_state",
        "The shared tier: 0 up, 1 probing, 2 down (skipped; the local cache and limits serve)."
    )
    .expect("metric registers once")
});
