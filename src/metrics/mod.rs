//! Every metric the daemon exports, registered once in the default registry. Names follow
//! `p13n_edge_<thing>_<unit>`; labels are bounded (service, route, status class, code) and
//! never carry a client id or a raw path.

use prometheus::{Histogram, IntCounter};
use std::sync::LazyLock;

mod request;
mod shared;
mod store;
mod upstream;

pub use request::*;
pub use shared::*;
pub use store::*;
pub use upstream::*;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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
