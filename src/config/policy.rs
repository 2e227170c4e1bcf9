//! The policies of the config: per service retries and circuit, cache, CORS; for the listener
//! client addresses and rate limits. Each is checked here and built into the plain types its
//! module runs on.

use super::file::{ClientsSection, ForwardedHeaderName, RateLimitSection, ServiceSection};
use super::{CacheMode, CachePolicy, RateLimits};
use crate::guard::rate::BucketSpec;
use crate::guard::{ClientPolicy, CorsPolicy, ForwardedHeader, OriginPattern};
use crate::upstream::{Backoff, BudgetSettings, CallPolicy, CircuitSettings};
use std::time::Duration;

pub(super) fn cache_policy(
    s: &ServiceSection,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<CachePolicy> {
    let c = &s.cache;
    let mode = match c.mode.as_str() {
        "pass-through" => CacheMode::PassThrough,
        "fast" => CacheMode::Fast,
        "off" => CacheMode::Off,
        other => {
            problems.push(format!(
                "{at}: cache.mode {other:?} is not pass-through, fast or off"
            ));
            return None;
        }
    };
    let pass_through_on_lag = match c.on_lag.as_str() {
        "serve-cached" => false,
        "pass-through" => true,
        other => {
            problems.push(format!(
                "{at}: cache.on_lag {other:?} is not serve-cached or pass-through"
            ));
            return None;
        }
    };
    if c.fresh_ms > c.stale_ms {
        problems.push(format!(
            "{at}: cache.fresh_ms must not exceed cache.stale_ms"
        ));
        return None;
    }
    Some(CachePolicy {
        mode,
        fresh: Duration::from_millis(c.fresh_ms),
        stale: Duration::from_millis(c.stale_ms),
        background_deadline: Duration::from_millis(c.background_deadline_ms),
        max_lag: Duration::from_millis(c.max_lag_ms.max(1)),
        pass_through_on_lag,
    })
}

pub(super) fn call_policy(
    s: &ServiceSection,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<CallPolicy> {
    let ms = Duration::from_millis;
    let (r, c) = (&s.retry, &s.circuit);
    let before = problems.len();
    check_call_settings(s, at, problems);
    let backoff = Backoff::try_new(ms(r.backoff_base_ms), ms(r.backoff_cap_ms));
    if let Err(e) = &backoff {
        problems.push(format!("{at}: retry: {e}"));
    }
    if problems.len() > before {
        return None;
    }
    Some(CallPolicy {
        deadline: ms(s.deadline_ms),
        max_retries: r.max_retries,
        backoff: backoff.ok()?,
        budget: BudgetSettings {
            ratio: r.budget_ratio,
            floor_per_second: r.budget_floor_per_second,
            window: ms(r.budget_window_ms),
        },
        retry_after_send: r.after_send,
        quota: s.max_events_per_second,
        circuit: CircuitSettings {
            consecutive_failures: c.consecutive_failures,
            failure_rate: c.failure_rate,
            min_calls: c.min_calls,
            window: ms(c.window_ms),
            open_for: ms(c.open_ms),
        },
    })
}

/// The deadline, quota, retry and circuit settings, each within its range.
fn check_call_settings(s: &ServiceSection, at: &str, problems: &mut Vec<String>) {
    let (r, c) = (&s.retry, &s.circuit);
    let mut check = |ok: bool, what: &str| {
        if !ok {
            problems.push(format!("{at}: {what}"));
        }
    };
    check(s.deadline_ms > 0, "deadline_ms must be above 0");
    check(
        s.max_events_per_second
            .is_none_or(|n| n.is_finite() && (0.1..=1_000_000.0).contains(&n)),
        "max_events_per_second must be between 0.1 and 1000000",
    );
    check(r.max_retries <= 10, "retry.max_retries must be at most 10");
    check(
        (0.0..=1.0).contains(&r.budget_ratio),
        "retry.budget_ratio must be between 0 and 1",
    );
    check(
        (0.0..=1000.0).contains(&r.budget_floor_per_second),
        "retry.budget_floor_per_second must be between 0 and 1000",
    );
    check(
        r.budget_window_ms >= 1000,
        "retry.budget_window_ms must be at least 1000",
    );
    check(
        c.consecutive_failures >= 1,
        "circuit.consecutive_failures must be at least 1",
    );
    check(
        (0.0..=1.0).contains(&c.failure_rate) && c.failure_rate > 0.0,
        "circuit.failure_rate must be in (0, 1]",
    );
    check(
        c.window_ms >= 100 && c.open_ms >= 100,
        "circuit.window_ms and circuit.open_ms must be at least 100",
    );
}

pub(super) fn cors_policy(s: &ServiceSection, at: &str, problems: &mut Vec<String>) -> CorsPolicy {
    let mut origins = Vec::new();
    for origin in &s.cors.allowed_origins {
        match OriginPattern::parse(origin) {
            Some(p) => origins.push(p),
            None => problems.push(format!(
                "{at}: cors origin {origin:?} must be http(s)://host[:port] or http(s)://*.domain[:port]"
            )),
        }
    }
    CorsPolicy {
        origins,
        allow_no_origin: s.cors.allow_no_origin,
        max_age_seconds: s.cors.max_age_seconds,
    }
}

pub(super) fn client_policy(c: &ClientsSection, problems: &mut Vec<String>) -> ClientPolicy {
    let mut nets = |key: &str, list: &[String]| {
        list.iter()
            .filter_map(|text| {
                // A bare address is a network of one.
                let parsed = text
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                parsed
                    .map_err(|_| problems.push(format!("clients.{key}: {text:?} is not a CIDR")))
                    .ok()
            })
            .collect()
    };
    ClientPolicy {
        allow: nets("allow", &c.allow),
        deny: nets("deny", &c.deny),
        trusted_proxies: nets("trusted_proxies", &c.trusted_proxies),
        forward_address: c.forward_address,
        truncate_address: c.truncate_address,
        forwarded_header: match c.forwarded_header {
            ForwardedHeaderName::XForwardedFor => ForwardedHeader::XForwardedFor,
            ForwardedHeaderName::Forwarded => ForwardedHeader::Forwarded,
        },
    }
}

pub(super) fn rate_limits(r: &RateLimitSection, problems: &mut Vec<String>) -> RateLimits {
    let mut spec = |key: &str, rate: f64, burst: f64| {
        if rate == 0.0 {
            return None;
        }
        BucketSpec::try_new(rate, burst)
            .map_err(|e| problems.push(format!("rate_limit.{key}: {e}")))
            .ok()
    };
    let limits = RateLimits {
        per_address: spec("per_address", r.per_address_per_second, r.per_address_burst),
        per_identifier: spec(
            "per_identifier",
            r.per_identifier_per_second,
            r.per_identifier_burst,
        ),
        max_tracked: r.max_tracked,
    };
    if r.max_tracked == 0 {
        problems.push("rate_limit.max_tracked must be at least 1".into());
    }
    limits
}
