//! Metrics of the request step: answers, latency, local limits, header deadlines, crawlers,
//! consent, visitor ids, reloads, and the emulator's answers.

use super::LATENCY_BUCKETS;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::LazyLock;

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_requests_total",
        "Client requests answered, by service, route, status class and vendor code.",
        &["service", "route", "status_class", "code"]
    )
    .expect("metric registers once")
});

pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "p13n_edge_request_duration_seconds",
        "Time from request start to the answer, by service.",
        &["service"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static RATE_LIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_rate_limited_total",
        "Requests answered 429 by a local rate limit, by limiter (address, identifier).",
        &["limiter"]
    )
    .expect("metric registers once")
});

pub static RATE_LIMIT_OVERFLOW: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_rate_limit_overflow_total",
        "Requests whose key could not be tracked (max_tracked reached): an address shared the overflow bucket, a visitor was limited by its address only.",
        &["limiter"]
    )
    .expect("metric registers once")
});

pub static RATE_LIMIT_TRACKED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "p13n_edge_rate_limit_tracked",
        "Keys (addresses, visitors) with a bucket of their own, by limiter.",
        &["limiter"]
    )
    .expect("metric registers once")
});

pub static SLOW_HEADERS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "p13n_edge_slow_headers_total",
        "Connections closed because a request header (HTTP/2: the preface and first request header) took longer than timeouts.client_header_ms."
    )
    .expect("metric registers once")
});

pub static CRAWLERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_crawlers_total",
        "Events from crawlers (by User-Agent, [service.bots]) answered 200 without payload and \
         never forwarded, spooled or counted against the quota, by service.",
        &["service"]
    )
    .expect("metric registers once")
});

pub static NO_CONSENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_no_consent_total",
        "Events answered 200 without payload, neither forwarded nor kept, for want of consent \
         ([service.consent]), by service and reason (gpc, no_cookie).",
        &["service", "reason"]
    )
    .expect("metric registers once")
});

pub static VISITOR_IDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_visitor_ids_total",
        "Signed-cookie mode ([service.identity]): how each event's visitor was found, by service \
         and outcome (valid, refreshed, minted, replaced: a cookie that did not verify, header, \
         header_refused, body_refused).",
        &["service", "outcome"]
    )
    .expect("metric registers once")
});

pub static CONFIG_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_config_reloads_total",
        "Config reloads (SIGHUP), by result (ok, error).",
        &["result"]
    )
    .expect("metric registers once")
});

pub static CONFIG_GENERATION: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "p13n_edge_config_generation",
        "Generation of the config in use: 1 at start, plus one per successful reload."
    )
    .expect("metric registers once")
});

pub static EMULATOR_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "p13n_edge_emulator_requests_total",
        "Requests answered by the built-in upstream emulator, by status.",
        &["status"]
    )
    .expect("metric registers once")
});
