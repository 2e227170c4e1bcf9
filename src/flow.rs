//! The cache step, between validation and the upstream: answer from the offer cache, forward,
//! or both, and put in the spool every event answered 2xx without an upstream 2xx, before the
//! answer goes out. The contract: a 2xx means the event will reach the upstream; an error means
//! it was not accepted.

use crate::answer::Answer;
use crate::cache::{CacheKey, Freshness, OfferCache, Offers};
use crate::config::{CacheMode, Config, Route};
use crate::error::EdgeError;
use crate::metrics::{self, CacheLookup};
use crate::shared::SharedTier;
use crate::spool::{EventId, Spool};
use crate::upstream::{
    Call, ClientInfo, QuotaWait, UpstreamClient, UpstreamError, UpstreamResponse,
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

const FWD_MISS: &str = "p13n-edge; fwd=miss";
const FWD_BYPASS: &str = "p13n-edge; fwd=bypass";

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
        let service = &route.service;
        let policy = service.cache;
        let limits = config.call_limits(&route);
        if policy.mode == CacheMode::Off {
            let call = Call {
                endpoint: route.endpoint.clone(),
                body,
                client,
            };
            return self
                .client
                .send(&call, limits)
                .await
                .map(|r| Answer::relay(r, FWD_BYPASS))
                .map_err(edge_error);
        }
        let key = CacheKey::new(&service.id, &route.id, &visitor);
        let mut cached = self
            .cache
            .get(&key, policy.fresh, policy.stale, Instant::now());
        if let (None, Some(tier)) = (&cached, &self.shared) {
            // A local miss: another instance may have fetched them (within the tier's budget).
            cached = tier
                .fill(&self.cache, &key, policy.fresh, policy.stale)
                .await;
        }
        let lookup = |result| route.endpoint.series.lookup(result);

        // A visitor with events still in the spool queues behind them, so the upstream sees
        // each visitor's events in order.
        if self.spool.has_pending(&key) {
            let Some((offers, freshness)) = cached else {
                return Err(EdgeError::VisitorBacklog);
            };
            self.spool
                .append(&key, &route.endpoint.path, event, body, false)
                .await
                .map_err(|_| EdgeError::SpoolUnavailable)?;
            lookup(if freshness == Freshness::Fresh {
                CacheLookup::Hit
            } else {
                CacheLookup::StaleServed
            });
            return Ok(Answer::cached(
                offers,
                freshness,
                Some("queued"),
                policy.fresh,
            ));
        }
        let mut fallback = cached;
        // While the lane lags, the service may rather go upstream than answer from an entry
        // that replay will not refresh soon (nothing of this visitor's is queued: order holds).
        let lagging = policy.pass_through_on_lag && self.spool.lag(&service.name) > policy.max_lag;
        if lagging {
            metrics::SPOOL_LAG_PASSED
                .with_label_values(&[&service.name])
                .inc();
        }
        if policy.mode == CacheMode::Fast && !lagging {
            if let Some((offers, Freshness::Fresh)) = &fallback {
                let spooled = self
                    .spool
                    .append(&key, &route.endpoint.path, event, body.clone(), false)
                    .await;
                if spooled.is_ok() {
                    lookup(CacheLookup::Hit);
                    return Ok(Answer::cached(
                        offers.clone(),
                        Freshness::Fresh,
                        None,
                        policy.fresh,
                    ));
                }
                // A spool that cannot take the event (full, say, of another service's events
                // while its upstream is down) does not fail the hit: the event goes upstream
                // now, and the client waits for its answer. Not with the cached offers as a
                // fallback: that would spool again, and past the deadline answer an error
                // while the call goes on (a client's retry would then repeat the event).
                fallback = None;
            }
        }
        lookup(CacheLookup::Miss);
        let call = Call {
            endpoint: route.endpoint.clone(),
            body: body.clone(),
            client,
        };
        let Some((offers, _)) = fallback else {
            // Nothing to fall back on: the client waits for the upstream, within the deadline.
            let result = self.client.send(&call, limits).await;
            return self.settle(&key, &route, result).map_err(edge_error);
        };

        // With a fallback, the call runs on its own: past the deadline the client gets the
        // cached offers, and the call goes on in the background.
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
                return self
                    .answer_past_deadline(key, &route, event, body, offers, task)
                    .await;
            }
        };
        let why = match &outcome {
            Ok(r) if r.status == 429 => "upstream-429",
            Ok(r) if r.status >= 500 => "upstream-5xx",
            Ok(_) => return self.settle(&key, &route, outcome).map_err(edge_error),
            Err(UpstreamError::CircuitOpen) => "circuit-open",
            Err(UpstreamError::Timeout) => "timeout",
            Err(UpstreamError::TooLarge(_)) => return Err(EdgeError::BadUpstreamResponse),
            Err(_) => "unreachable",
        };
        // Stale-if-error: the event is spooled before the stale offers are sent.
        self.spool
            .append(&key, &route.endpoint.path, event, body, false)
            .await
            .map_err(|_| EdgeError::SpoolUnavailable)?;
        lookup(CacheLookup::StaleServed);
        Ok(Answer::cached(
            offers,
            Freshness::Stale,
            Some(why),
            policy.fresh,
        ))
    }

    /// The upstream answered in time: cache a 2xx, relay whatever it was.
    fn settle(
        &self,
        key: &CacheKey,
        route: &Route,
        result: Result<UpstreamResponse, UpstreamError>,
    ) -> Result<Answer, UpstreamError> {
        let response = result?;
        if response.status < 300 {
            let mut offers = Offers::from(&response);
            if let Some(tier) = &self.shared {
                let policy = &route.service.cache;
                tier.put(&self.cache, key, &mut offers, policy.fresh, policy.stale);
            }
            self.cache.insert(key.clone(), offers);
            return Ok(Answer::relay(response, "p13n-edge; fwd=miss; stored"));
        }
        Ok(Answer::relay(response, FWD_MISS))
    }

    async fn answer_past_deadline(
        &self,
        key: CacheKey,
        route: &Route,
        event: EventId,
        body: Bytes,
        offers: Offers,
        task: tokio::task::JoinHandle<Result<UpstreamResponse, UpstreamError>>,
    ) -> Result<Answer, EdgeError> {
        // If this append fails the call still runs: the client is told "not accepted", and a
        // retry from it may then duplicate the event.
        let in_flight = self
            .spool
            .append(&key, &route.endpoint.path, event, body, true)
            .await
            .map_err(|_| EdgeError::SpoolUnavailable)?;
        let cache = self.cache.clone();
        let (tier, policy) = (self.shared.clone(), route.service.cache);
        let finished_key = key.clone();
        tokio::spawn(async move {
            let delivered = match task.await {
                Ok(Ok(r)) if r.status < 300 => {
                    let mut offers = Offers::from(&r);
                    if let Some(tier) = &tier {
                        tier.put(
                            &cache,
                            &finished_key,
                            &mut offers,
                            policy.fresh,
                            policy.stale,
                        );
                    }
                    cache.insert(finished_key, offers);
                    true
                }
                _ => false,
            };
            if let Some(in_flight) = in_flight {
                in_flight.finish(delivered);
            }
        });
        route.endpoint.series.lookup(CacheLookup::StaleServed);
        Ok(Answer::cached(
            offers,
            Freshness::Stale,
            Some("deadline"),
            route.service.cache.fresh,
        ))
    }
}

fn edge_error(e: UpstreamError) -> EdgeError {
    match e {
        UpstreamError::Timeout => EdgeError::UpstreamTimeout,
        UpstreamError::TooLarge(_) => EdgeError::BadUpstreamResponse,
        UpstreamError::CircuitOpen => EdgeError::CircuitOpen,
        _ => EdgeError::UpstreamUnavailable,
    }
}
