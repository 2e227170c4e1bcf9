//! The cache step, between validation and the upstream: answer from the offer cache, forward,
//! or both, and put in the spool every event answered 2xx without an upstream 2xx, before the
//! answer goes out. The contract: a 2xx means the event will reach the upstream; an error means
//! it was not accepted.
//!
//! What to do is decided by pure functions (`plan`: before any call; `judge`: once an upstream
//! outcome is in while a cached entry waits), tested as tables; `Flow` carries them out.

mod plan;

pub use plan::{edge_error, judge, plan, Judgement, Plan};

use crate::answer::{Answer, Detail, Forwarded};
use crate::cache::{CacheKey, Freshness, OfferCache, Offers};
use crate::config::{CacheMode, CachePolicy, Config, Route};
use crate::error::EdgeError;
use crate::metrics::{self, CacheLookup};
use crate::shared::{SharedTier, Slot};
use crate::spool::{EventId, InFlight, Spool};
use crate::upstream::{
    Call, CallLimits, ClientInfo, QuotaWait, UpstreamClient, UpstreamError, UpstreamResponse,
};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// Everything a request needs beyond its config.
pub struct Flow {
    pub client: Arc<UpstreamClient>,
    pub cache: Arc<OfferCache>,
    pub spool: Arc<Spool>,
    /// The Valkey/Redis tier behind the local cache, if `[shared]` is configured.
    pub shared: Option<Arc<SharedTier>>,
}

/// One event in the cache step: where it goes and what it is.
struct Step<'a> {
    route: &'a Route,
    key: CacheKey,
    event: EventId,
    body: Bytes,
}

impl Step<'_> {
    /// The upstream call that carries this event.
    fn call(&self, client: &ClientInfo) -> Call {
        Call {
            endpoint: self.route.endpoint.clone(),
            body: self.body.clone(),
            client: client.clone(),
            replay: false,
        }
    }
}

impl Flow {
    pub async fn deliver(
        &self,
        config: &Config,
        route: Arc<Route>,
        visitor: String,
        event: EventId,
        body: Bytes,
        client: ClientInfo,
    ) -> Result<Answer, EdgeError> {
        let limits = config.call_limits(&route);
        let key = CacheKey::new(&route.service.id, &route.id, &visitor);
        let (decided, cached) = self.decide(&key, &route).await;
        let step = Step {
            route: &route,
            key,
            event,
            body,
        };
        self.carry_out(decided, cached, step, &client, limits).await
    }

    /// The plan for `key`, from its cached entry (if the cache is on), its backlog and the
    /// spool's lag; and the entry's offers.
    async fn decide(&self, key: &CacheKey, route: &Route) -> (Plan, Option<Offers>) {
        let service = &route.service;
        let policy = service.cache;
        let cache_off = policy.mode == CacheMode::Off;
        let cached = if cache_off {
            None
        } else {
            self.lookup(key, route).await
        };
        // With the cache off nothing is spooled: no backlog to look for, no lag to weigh.
        let backlog = !cache_off && self.spool.has_pending(key);
        let lagging = !cache_off
            && !backlog
            && policy.pass_through_on_lag
            && self.spool.lag(&service.name) > policy.max_lag;
        let freshness = cached.as_ref().map(|(_, f)| *f);
        let decided = plan(policy.mode, freshness, backlog, lagging);
        if lagging && decided != plan(policy.mode, freshness, backlog, false) {
            metrics::SPOOL_LAG_PASSED
                .with_label_values(&[&service.name])
                .inc();
        }
        (decided, cached.map(|(offers, _)| offers))
    }

    /// The plan carried out: forward, answer from the cached offers, or both.
    async fn carry_out(
        &self,
        decided: Plan,
        cached: Option<Offers>,
        step: Step<'_>,
        client: &ClientInfo,
        limits: CallLimits,
    ) -> Result<Answer, EdgeError> {
        let route = step.route;
        let (policy, series) = (route.service.cache, &route.endpoint.series);
        match (decided, cached) {
            (Plan::Bypass, _) => {
                let result = self.client.send(&step.call(client), limits).await;
                Ok(Answer::relay(
                    result.map_err(edge_error)?,
                    Forwarded::Bypass,
                ))
            }
            (Plan::Queue(freshness), Some(offers)) => {
                self.spool_it(&step, false).await?;
                series.lookup(match freshness {
                    Freshness::Fresh => CacheLookup::Hit,
                    Freshness::Stale => CacheLookup::StaleServed,
                });
                let why = Some(Detail::Queued);
                Ok(Answer::cached(offers, freshness, why, policy.fresh))
            }
            (Plan::Hit, Some(offers)) => {
                if self.spool_it(&step, false).await.is_ok() {
                    series.lookup(CacheLookup::Hit);
                    return Ok(Answer::cached(offers, Freshness::Fresh, None, policy.fresh));
                }
                // A spool that cannot take the event (full, say, of another service's events
                // while its upstream is down) does not fail the hit: the event goes upstream
                // now, and the client waits for its answer. Not with the cached offers as a
                // fallback: that would spool again, and past the deadline answer an error
                // while the call goes on (a client's retry would then repeat the event).
                series.lookup(CacheLookup::Miss);
                self.wait(&step, step.call(client), limits).await
            }
            (Plan::Forward { .. }, Some(offers)) => {
                series.lookup(CacheLookup::Miss);
                let call = step.call(client);
                self.forward(step, call, limits, offers).await
            }
            (Plan::Forward { .. }, None) => {
                series.lookup(CacheLookup::Miss);
                self.wait(&step, step.call(client), limits).await
            }
            // `plan` makes a queue or a hit only with an entry: this is the backlog.
            (Plan::Backlog, _) | (Plan::Queue(_) | Plan::Hit, None) => {
                Err(EdgeError::VisitorBacklog)
            }
        }
    }

    /// Nothing to fall back on: the client waits for the upstream, within the deadline.
    async fn wait(
        &self,
        step: &Step<'_>,
        call: Call,
        limits: CallLimits,
    ) -> Result<Answer, EdgeError> {
        let result = self.client.send(&call, limits).await;
        self.settle(step, result).map_err(edge_error)
    }

    /// The local entry, or on a local miss the shared tier's (within its budget).
    async fn lookup(&self, key: &CacheKey, route: &Route) -> Option<(Offers, Freshness)> {
        let policy = route.service.cache;
        let cached = self
            .cache
            .get(key, policy.fresh, policy.stale, Instant::now());
        match (&cached, &self.shared) {
            (None, Some(tier)) => {
                let slot = slot(key, &route.endpoint.fingerprint, policy);
                tier.fill(&self.cache, slot).await
            }
            _ => cached,
        }
    }

    /// With a fallback entry the call runs on its own: past the deadline the client gets the
    /// entry and the call goes on in the background; an upstream failure gets it too, stale.
    async fn forward(
        &self,
        step: Step<'_>,
        call: Call,
        limits: CallLimits,
        offers: Offers,
    ) -> Result<Answer, EdgeError> {
        let policy = step.route.service.cache;
        let mut background = limits;
        background.deadline = background.deadline.max(policy.background_deadline);
        // Past the quota, the cached offers answer at once rather than after a wait.
        background.quota_wait = QuotaWait::Never;
        let client = self.client.clone();
        // Polled here, and moved to a task of its own only if the deadline passes: no spawn on
        // the common path.
        let mut call = Box::pin(async move { client.send(&call, background).await });
        let outcome = match tokio::time::timeout(limits.deadline, &mut call).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let task = tokio::spawn(call);
                return self.answer_past_deadline(step, offers, task).await;
            }
        };
        match judge(&outcome) {
            Judgement::Relay => self.settle(&step, outcome).map_err(edge_error),
            Judgement::Fail(e) => Err(e),
            Judgement::Stale(why) => {
                // Stale-if-error: the event is spooled before the stale offers are sent.
                self.spool_it(&step, false).await?;
                step.route.endpoint.series.lookup(CacheLookup::StaleServed);
                Ok(Answer::cached(
                    offers,
                    Freshness::Stale,
                    Some(why),
                    policy.fresh,
                ))
            }
        }
    }

    /// Put the event in the spool; an error means it was not accepted.
    async fn spool_it(
        &self,
        step: &Step<'_>,
        in_flight: bool,
    ) -> Result<Option<InFlight>, EdgeError> {
        let path = &step.route.endpoint.path;
        self.spool
            .append(&step.key, path, step.event, step.body.clone(), in_flight)
            .await
            .map_err(|_| EdgeError::SpoolUnavailable)
    }

    /// The upstream answered in time: cache a 2xx (here and in the shared tier), relay
    /// whatever it was.
    fn settle(
        &self,
        step: &Step<'_>,
        result: Result<UpstreamResponse, UpstreamError>,
    ) -> Result<Answer, UpstreamError> {
        let response = result?;
        if response.status < 300 {
            let slot = slot(
                &step.key,
                &step.route.endpoint.fingerprint,
                step.route.service.cache,
            );
            store(&self.cache, self.shared.as_ref(), slot, &response);
            return Ok(Answer::relay(response, Forwarded::Stored));
        }
        Ok(Answer::relay(response, Forwarded::Miss))
    }

    async fn answer_past_deadline(
        &self,
        step: Step<'_>,
        offers: Offers,
        task: tokio::task::JoinHandle<Result<UpstreamResponse, UpstreamError>>,
    ) -> Result<Answer, EdgeError> {
        // If this append fails the call still runs: the client is told "not accepted", and a
        // retry from it may then duplicate the event.
        let in_flight = self.spool_it(&step, true).await?;
        let (cache, tier) = (self.cache.clone(), self.shared.clone());
        let (policy, key) = (step.route.service.cache, step.key.clone());
        let endpoint = step.route.endpoint.clone();
        tokio::spawn(async move {
            let delivered = match task.await {
                Ok(Ok(r)) if r.status < 300 => {
                    let slot = slot(&key, &endpoint.fingerprint, policy);
                    store(&cache, tier.as_ref(), slot, &r);
                    true
                }
                _ => false,
            };
            if let Some(in_flight) = in_flight {
                in_flight.finish(delivered);
            }
        });
        let route = step.route;
        route.endpoint.series.lookup(CacheLookup::StaleServed);
        let fresh = route.service.cache.fresh;
        Ok(Answer::cached(
            offers,
            Freshness::Stale,
            Some(Detail::Deadline),
            fresh,
        ))
    }
}

/// Where `key`'s offers go in the shared tier, and for how long.
fn slot<'a>(key: &'a CacheKey, namespace: &'a str, policy: CachePolicy) -> Slot<'a> {
    Slot {
        key,
        namespace,
        fresh: policy.fresh,
        stale: policy.stale,
    }
}

/// A 2xx's offers into the local cache, written through to the shared tier first.
fn store(
    cache: &OfferCache,
    tier: Option<&Arc<SharedTier>>,
    slot: Slot<'_>,
    response: &UpstreamResponse,
) {
    let mut offers = Offers::from(response);
    if let Some(tier) = tier {
        tier.put(cache, slot, &mut offers);
    }
    cache.insert(slot.key.clone(), offers);
}
