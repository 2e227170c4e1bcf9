//! Metrics of the offer cache and the spool.

use prometheus::{
    register_gauge, register_histogram, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Gauge, Histogram, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec,
};
use std::sync::LazyLock;

pub static CACHE_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_cache_lookups_total",
        "Offer cache lookups, by service and result (hit, miss, stale_served).",
        &["service", "result"]
    )
    .expect("metric registers once")
});

pub static CACHE_EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "p13n_edge_cache_evictions_total",
        "Cache entries evicted to stay within bounds."
    )
    .expect("metric registers once")
});

pub static CACHE_ENTRIES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("p13n_edge_cache_entries", "Visitors in the offer cache.")
        .expect("metric registers once")
});

pub static CACHE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "p13n_edge_cache_bytes",
        "Bytes charged to the offer cache (keys, bodies, overhead)."
    )
    .expect("metric registers once")
});

pub static SPOOL_DEPTH: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "p13n_edge_spool_depth",
        "Events in the spool (being written or on disk), not yet delivered."
    )
    .expect("metric registers once")
});

pub static SPOOL_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("p13n_edge_spool_bytes", "Bytes of spool segments on disk.")
        .expect("metric registers once")
});

pub static SPOOL_OLDEST_AGE: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "p13n_edge_spool_oldest_age_seconds",
        "Age of the event replay is working on; 0 when the spool is drained."
    )
    .expect("metric registers once")
});

pub static SPOOL_REPLAYED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "p13n_edge_spool_replayed_total",
        "Spooled events delivered to the upstream."
    )
    .expect("metric registers once")
});

pub static SPOOL_LAG_PASSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_spool_lag_passed_total",
        "Fast-mode events sent upstream at once because the service's spool lane lagged past cache.max_lag_ms (cache.on_lag = pass-through).",
        &["service"]
    )
    .expect("metric registers once")
});

pub static SPOOL_REPLAY_WINDOW: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "p13n_edge_spool_replay_window",
        "Records a replay lane sends at once now: it adapts to the upstream, up to spool.replay_concurrency.",
        &["service"]
    )
    .expect("metric registers once")
});

pub static SPOOL_HELD: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_spool_held_total",
        "Replay attempts held back for a fix on our side, by reason (credentials: 401, 403 or a token code; refused: another 4xx; route_gone: no route of the record's identity; dead_letter_full). The events wait; none is dropped.",
        &["service", "reason"]
    )
    .expect("metric registers once")
});

pub static SPOOL_DEAD_LETTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_spool_dead_lettered_total",
        "Spooled events moved to the dead-letter log, by reason (invalid_event: 3004; too_large: 413; answer_too_large: an answer past limits.max_upstream_body_bytes; route_gone: past spool.route_wait_seconds).",
        &["service", "reason"]
    )
    .expect("metric registers once")
});

pub static SPOOL_DEAD_LETTERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "p13n_edge_spool_dead_letters",
        "Events in the dead-letter log (see `p13n-edge spool inspect`)."
    )
    .expect("metric registers once")
});

pub static SPOOL_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "p13n_edge_spool_refused_total",
        "Events the spool could not take (full, or failing to write): the client got an error, or, for a fast-mode hit, the event went to the upstream at once."
    )
    .expect("metric registers once")
});

pub static SPOOL_CORRUPT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "p13n_edge_spool_corrupt_total",
        "Spool records skipped for a bad checksum or form."
    )
    .expect("metric registers once")
});

pub static SPOOL_COMMITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "p13n_edge_spool_commits_total",
        "Batches written to the spool (each with one fdatasync unless spool.sync_interval_ms is set)."
    )
    .expect("metric registers once")
});

pub static SPOOL_COMMIT_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "p13n_edge_spool_commit_seconds",
        "Time to write one lane's batch to its segment, its fdatasync included (unless \
         spool.sync_interval_ms is set): what a spooled answer waits for the disk.",
        vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5]
    )
    .expect("metric registers once")
});
