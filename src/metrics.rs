//! Every metric the daemon exports, registered once in the default registry. Names follow
//! `p13n_edge_<thing>_<unit>`; labels are bounded (service, route, status class, code) and
//! never carry a client id or a raw path.

use prometheus::{
    register_gauge, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Gauge, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::LazyLock;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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
        "Accepted events in the spool, not yet delivered."
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

pub static SPOOL_COMMIT_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "p13n_edge_spool_commit_seconds",
        "Time to write one lane's batch to its segment, its fdatasync included (unless \
         spool.sync_interval_ms is set): what a spooled answer waits for the disk.",
        vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5]
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

/// `2xx`, `4xx`, ... as a static label.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The series a request on one route touches when all goes well, resolved once when the route
/// is built: `with_label_values` hashes every label and takes a lock, and the request path
/// would otherwise pay that (and a `String` for the code) five times a request.
#[derive(Debug, Clone)]
pub struct RouteSeries {
    /// `p13n_edge_requests_total{service, route, "2xx", ""}`.
    pub answered_2xx: IntCounter,
    /// `p13n_edge_request_duration_seconds{service}`.
    pub duration: Histogram,
    /// `p13n_edge_upstream_requests_total{service, "2xx", ""}`.
    pub upstream_2xx: IntCounter,
    /// `p13n_edge_upstream_duration_seconds{service}`.
    pub upstream_duration: Histogram,
    /// `p13n_edge_cache_lookups_total{service, result}`, by `CacheLookup`.
    pub lookups: [IntCounter; 3],
    /// `p13n_edge_crawlers_total{service}`.
    pub crawlers: IntCounter,
}

/// What a cache lookup found, as counted in `p13n_edge_cache_lookups_total`.
#[derive(Debug, Clone, Copy)]
pub enum CacheLookup {
    Hit = 0,
    Miss = 1,
    StaleServed = 2,
}

impl CacheLookup {
    pub fn label(self) -> &'static str {
        match self {
            CacheLookup::Hit => "hit",
            CacheLookup::Miss => "miss",
            CacheLookup::StaleServed => "stale_served",
        }
    }
}

impl RouteSeries {
    pub fn new(service: &str, route: &str) -> Self {
        let lookup = |l: CacheLookup| CACHE_LOOKUPS.with_label_values(&[service, l.label()]);
        RouteSeries {
            answered_2xx: REQUESTS.with_label_values(&[service, route, "2xx", ""]),
            duration: REQUEST_DURATION.with_label_values(&[service]),
            upstream_2xx: UPSTREAM_REQUESTS.with_label_values(&[service, "2xx", ""]),
            upstream_duration: UPSTREAM_DURATION.with_label_values(&[service]),
            lookups: [
                lookup(CacheLookup::Hit),
                lookup(CacheLookup::Miss),
                lookup(CacheLookup::StaleServed),
            ],
            crawlers: CRAWLERS.with_label_values(&[service]),
        }
    }

    pub fn lookup(&self, result: CacheLookup) {
        self.lookups[result as usize].inc();
    }
}

/// A code label that stays bounded whatever an upstream sends.
pub fn code_label(code: Option<u32>) -> String {
    match code {
        None => String::new(),
        Some(c) if c < 10_000 => c.to_string(),
        Some(_) => "other".into(),
    }
}

/// Touch every metric so that a scrape lists the whole catalog from the start.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&UPSTREAM_REQUESTS);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&UPSTREAM_CONNECTIONS);
    LazyLock::force(&UPSTREAM_DURATION);
    LazyLock::force(&TOKEN_REJECTIONS);
    LazyLock::force(&UPSTREAM_RETRIES);
    LazyLock::force(&RETRY_BUDGET_EXHAUSTED);
    LazyLock::force(&UPSTREAM_BACKOFF);
    LazyLock::force(&CIRCUIT_STATE);
    LazyLock::force(&CACHE_LOOKUPS);
    LazyLock::force(&CACHE_EVICTIONS);
    LazyLock::force(&CACHE_ENTRIES);
    LazyLock::force(&CACHE_BYTES);
    LazyLock::force(&SPOOL_DEPTH);
    LazyLock::force(&SPOOL_BYTES);
    LazyLock::force(&SPOOL_OLDEST_AGE);
    LazyLock::force(&SPOOL_REPLAYED);
    LazyLock::force(&SPOOL_HELD);
    LazyLock::force(&SPOOL_DEAD_LETTERED);
    LazyLock::force(&SPOOL_DEAD_LETTERS);
    LazyLock::force(&SPOOL_REFUSED);
    LazyLock::force(&SPOOL_CORRUPT);
    LazyLock::force(&SPOOL_COMMITS);
    LazyLock::force(&SPOOL_COMMIT_DURATION);
    LazyLock::force(&CRAWLERS);
    LazyLock::force(&NO_CONSENT);
    LazyLock::force(&VISITOR_IDS);
    LazyLock::force(&CONFIG_GENERATION);
    LazyLock::force(&SLOW_HEADERS);
    LazyLock::force(&DNS_LOOKUPS);
    LazyLock::force(&DNS_STALE);
    for limiter in ["address", "identifier"] {
        RATE_LIMITED.with_label_values(&[limiter]);
        RATE_LIMIT_OVERFLOW.with_label_values(&[limiter]);
        RATE_LIMIT_TRACKED.with_label_values(&[limiter]);
    }
    for result in ["ok", "error"] {
        CONFIG_RELOADS.with_label_values(&[result]);
    }
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    encoder
        .encode(&prometheus::gather(), &mut out)
        .expect("text encoding into a Vec does not fail");
    out
}
