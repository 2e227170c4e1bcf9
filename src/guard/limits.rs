//! The limit step: token buckets per client address (IPv6 per /64) and per visitor (service
//! and identifier), with their metrics. A visitor's is counted by the shared tier when there is
//! one and it answers, for every instance together; locally when it does not. The limiters
//! outlive reloads: the config in force gives their rates.

use super::clients::address_key;
use super::rate::{BucketSpec, Limiter, Overflow, Verdict, VisitorKey};
use crate::error::EdgeError;
use crate::metrics;
use crate::shared::SharedTier;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

pub struct Limits {
    by_address: Limiter<IpAddr>,
    by_visitor: Limiter<(Arc<str>, VisitorKey)>,
}

impl Limits {
    /// Each limiter tracks at most `max_tracked` keys.
    pub fn new(max_tracked: usize) -> Self {
        Limits {
            by_address: Limiter::new(max_tracked),
            // Visitors past max_tracked have been through the address limit: that one holds.
            by_visitor: Limiter::with_overflow(max_tracked, Overflow::Pass),
        }
    }

    /// Count a request from `client` (when a rate is set).
    pub fn address(&self, spec: Option<BucketSpec>, client: IpAddr) -> Result<(), EdgeError> {
        match spec {
            Some(spec) => limit(&self.by_address, address_key(client), spec, "address"),
            None => Ok(()),
        }
    }

    /// Count an event of `visitor` of `service` (when a rate is set).
    pub async fn visitor(
        &self,
        spec: Option<BucketSpec>,
        shared: Option<&SharedTier>,
        service: &Arc<str>,
        visitor: &str,
    ) -> Result<(), EdgeError> {
        let Some(spec) = spec else { return Ok(()) };
        let verdict = match shared {
            Some(tier) => tier.limit(service, visitor, spec).await,
            None => None,
        };
        match verdict {
            Some(verdict) => limited(verdict, "identifier"),
            None => {
                let key = (service.clone(), VisitorKey::new(visitor));
                limit(&self.by_visitor, key, spec, "identifier")
            }
        }
    }
}

/// Count one request against a limiter; over the limit, say when to come back.
fn limit<K: std::hash::Hash + Eq>(
    limiter: &Limiter<K>,
    key: K,
    spec: BucketSpec,
    name: &str,
) -> Result<(), EdgeError> {
    let (verdict, overflowed) = limiter.check(key, spec, Instant::now());
    if overflowed {
        metrics::RATE_LIMIT_OVERFLOW
            .with_label_values(&[name])
            .inc();
    }
    metrics::RATE_LIMIT_TRACKED
        .with_label_values(&[name])
        .set(limiter.tracked() as i64);
    limited(verdict, name)
}

/// A limiter's verdict as the request's outcome: over the limit, when to come back.
fn limited(verdict: Verdict, name: &str) -> Result<(), EdgeError> {
    match verdict {
        Verdict::Allowed => Ok(()),
        Verdict::Limited(wait) => {
            metrics::RATE_LIMITED.with_label_values(&[name]).inc();
            Err(EdgeError::RateLimited(
                wait.as_secs_f64().ceil().max(1.0) as u64
            ))
        }
    }
}
