//! Metrics of the upstream client: answers, errors, connections, latency, token refusals,
//! retries and their budget, backoff, circuits, the quota, DNS.

use super::LATENCY_BUCKETS;
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};
use std::sync::LazyLock;

pub static UPSTREAM_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_upstream_requests_total",
        "Upstream calls that got an answer, by service, status class and vendor code.",
        &["service", "status_class", "code"]
    )
    .expect("metric registers once")
});

pub static UPSTREAM_CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_upstream_connections_opened_total",
        "Connections opened to upstreams, by protocol (h1, h2): churn shows here.",
        &["protocol"]
    )
    .expect("metric registers once")
});

pub static UPSTREAM_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_upstream_errors_total",
        "Upstream calls that got no usable answer, by service and kind.",
        &["service", "kind"]
    )
    .expect("metric registers once")
});

pub static UPSTREAM_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "p13n_edge_upstream_duration_seconds",
        "Duration of upstream calls, by service.",
        &["service"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static TOKEN_REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_upstream_token_rejections_total",
        "Upstream answers refusing a configured token (codes 3000-3003, 3006), by service, route and token name.",
        &["service", "route", "token", "code"]
    )
    .expect("metric registers once")
});

pub static UPSTREAM_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_upstream_retries_total",
        "Upstream retries, by service and reason (429, connect, after_send).",
        &["service", "reason"]
    )
    .expect("metric registers once")
});

pub static RETRY_BUDGET_EXHAUSTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_retry_budget_exhausted_total",
        "Retries refused because the service's retry budget was spent.",
        &["service"]
    )
    .expect("metric registers once")
});

pub static UPSTREAM_BACKOFF: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "p13n_edge_upstream_backoff_seconds",
        "Time spent backing off before a retry, by service.",
        &["service"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static CIRCUIT_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "p13n_edge_circuit_state",
        "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
        &["upstream"]
    )
    .expect("metric registers once")
});

pub static QUOTA_SPENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_quota_spent_total",
        "Upstream calls let through by the service's max_events_per_second, live and replayed.",
        &["service"]
    )
    .expect("metric registers once")
});

pub static QUOTA_DEFERRED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_quota_deferred_total",
        "Upstream calls that found the service's quota spent: they waited, or were answered 429 (or from the cache) without being sent.",
        &["service"]
    )
    .expect("metric registers once")
});

pub static DNS_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_dns_lookups_total",
        "Upstream name lookups ended, by host and result (ok, error, timeout).",
        &["host", "result"]
    )
    .expect("metric registers once")
});

pub static DNS_STALE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_dns_stale_total",
        "Upstream calls that used addresses past their TTL while a lookup refreshed them, by host.",
        &["host"]
    )
    .expect("metric registers once")
});
