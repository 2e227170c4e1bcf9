//! The config in force as replay's `Destinations`: which route a spooled record may go to now,
//! and the replay settings, read at every attempt so that a reload counts.

use super::{CacheMode, Config, Route};
use crate::cache::CacheKey;
use crate::spool::{Destination, Destinations, Record, ReplaySettings};
use crate::upstream::CallLimits;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// The config in force, shared with the proxy and swapped by reload.
pub struct InForce(pub Arc<ArcSwap<Config>>);

impl Destinations for InForce {
    fn find(&self, record: &Record) -> Option<Destination> {
        let config = self.0.load();
        let route = route_for(&config, record)?;
        let cache = route.service.cache;
        Some(Destination {
            shared_ttl: (cache.mode != CacheMode::Off).then_some((cache.fresh, cache.stale)),
            limits: config.call_limits(&route),
            key: CacheKey::new(&route.service.id, &route.id, &record.visitor),
            endpoint: route.endpoint.clone(),
        })
    }

    fn settings(&self) -> ReplaySettings {
        let config = self.0.load();
        ReplaySettings {
            concurrency: config.spool.replay_concurrency,
            route_wait: config.spool.route_wait,
        }
    }
}

impl Config {
    /// The limits of a call on `route` under this config, bounded by its service's deadline.
    pub fn call_limits(&self, route: &Route) -> CallLimits {
        CallLimits::new(self.timeouts, self.max_upstream_body_bytes, &route.endpoint)
    }
}

/// The route a record may go to: one of the record's service with the identity the record was
/// accepted for, at its path or (`/db/t` and `/public/db/t` share an identity) at the other;
/// records of older versions carry no identity and go only to their path.
fn route_for(config: &Config, record: &Record) -> Option<Arc<Route>> {
    let fits = |route: &Route| {
        route.service.name == record.service
            && (record.route_id.is_empty() || *route.id == *record.route_id)
    };
    if let Some(route) = config.route(&record.route).filter(|r| fits(r)) {
        return Some(route.clone());
    }
    if record.route_id.is_empty() {
        return None;
    }
    config.routes.values().find(|r| fits(r)).cloned()
}
