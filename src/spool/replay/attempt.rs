//! Spool replay, one record: sent until the upstream takes it or says it is bad (then a dead
//! letter), the answer read as a verdict, the refreshed offers cached.

use super::{Destination, Replayer};
use crate::cache::Offers;
use crate::error::vendor_code;
use crate::lock;
use crate::metrics;
use crate::spool::lane::Lane;
use crate::spool::Record;
use crate::upstream::{Backoff, Call, ClientInfo, QuotaWait, UpstreamError, UpstreamResponse};
use std::time::Duration;

/// What replay does with a record after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Delivered,
    /// The upstream failed or is busy: try again after a backoff.
    Retry,
    /// The upstream refused our side (credentials, configuration) or the route is gone: hold
    /// the record and try again after a backoff; the label and what `/readyz` says.
    Hold(&'static str, String),
    /// The upstream says the event itself is bad: a dead letter, with the label.
    DeadLetter(&'static str),
}

/// How replay reads an upstream answer.
fn verdict(result: &Result<UpstreamResponse, UpstreamError>) -> Verdict {
    let r = match result {
        Ok(r) => r,
        // The upstream answered, beyond what we read: it may well have ingested the event, so
        // sending it again could repeat it for ever. Kept, for an operator to look at.
        Err(UpstreamError::TooLarge(_)) => return Verdict::DeadLetter("answer_too_large"),
        Err(_) => return Verdict::Retry,
    };
    match r.status {
        200..=299 => return Verdict::Delivered,
        429 | 500.. => return Verdict::Retry,
        _ => {}
    }
    // Only a refusal's body is read for its vendor code.
    let code = vendor_code(&r.body);
    match (r.status, code) {
        (413, _) => Verdict::DeadLetter("too_large"),
        (400, Some(3004)) => Verdict::DeadLetter("invalid_event"),
        (401 | 403, _) | (400, Some(3000..=3003 | 3006)) => Verdict::Hold(
            "credentials",
            format!(
                "the upstream refuses our credentials ({} {}): fix the key or token, then reload",
                r.status,
                code.map_or(String::new(), |c| format!("code {c}"))
            ),
        ),
        (status, code) => Verdict::Hold(
            "refused",
            format!(
                "the upstream refuses the calls ({status} {}): fix the configuration, then reload",
                code.map_or(String::new(), |c| format!("code {c}"))
            ),
        ),
    }
}

/// Waits between attempts at one record: 100 ms doubling to 5 s.
fn retry_backoff() -> Backoff {
    Backoff::try_new(Duration::from_millis(100), Duration::from_secs(5)).expect("valid backoff")
}

impl Replayer {
    /// Deliver one record, or dead-letter it; then it leaves the visitor's queue.
    pub(super) async fn replay(&self, lane: &Lane, record: &Record) {
        let in_flight = self
            .spool
            .inflight
            .get(&(record.run, record.seq))
            .map(|r| r.clone());
        let outcome = match in_flight {
            // The live call that accepted it may still deliver it itself.
            Some(mut rx) => match rx.wait_for(Option::is_some).await.map(|v| *v) {
                Ok(Some(true)) => Ok(()),
                _ => self.deliver(lane, record).await,
            },
            None => self.deliver(lane, record).await,
        };
        match outcome {
            Ok(()) => metrics::SPOOL_REPLAYED.inc(),
            Err(reason) => self.dead_letter(lane, record, reason).await,
        }
        lane.set_waiting(None);
        self.spool.settle(lane, record);
    }

    /// Send a record until the upstream takes it (`Ok`) or says it is bad (`Err(label)`).
    async fn deliver(&self, lane: &Lane, record: &Record) -> Result<(), &'static str> {
        let backoff = retry_backoff();
        let mut attempt = 0;
        loop {
            let verdict = match self.destinations.find(record) {
                Some(destination) => self.attempt(lane, destination, record).await,
                None if crate::spool::now_ms().saturating_sub(record.enqueued_ms)
                    >= self.destinations.settings().route_wait.as_millis() as u64 =>
                {
                    Verdict::DeadLetter("route_gone")
                }
                None => Verdict::Hold(
                    "route_gone",
                    format!(
                        "no route {} of service {} as accepted (gone or changed); a reload can bring it back",
                        record.route, record.service
                    ),
                ),
            };
            match verdict {
                Verdict::Delivered => return Ok(()),
                Verdict::DeadLetter(reason) => return Err(reason),
                Verdict::Retry => {}
                Verdict::Hold(reason, why) => {
                    metrics::SPOOL_HELD
                        .with_label_values(&[&record.service, reason])
                        .inc();
                    lane.set_waiting(Some(why));
                }
            }
            tokio::time::sleep(backoff.ceiling(attempt)).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, lane: &Lane, destination: Destination, record: &Record) -> Verdict {
        let Destination {
            endpoint,
            mut limits,
            key,
            shared_ttl,
        } = destination;
        limits.quota_wait = QuotaWait::Behind;
        let shared = self.shared.as_ref().zip(shared_ttl);
        let endpoint_fingerprint = endpoint.fingerprint.clone();
        let call = Call {
            endpoint,
            body: record.body.clone(),
            client: ClientInfo::default(),
            replay: true,
        };
        let started = std::time::Instant::now();
        let mut paced = Duration::ZERO;
        let result = self.client.send_paced(&call, limits, &mut paced).await;
        {
            let mut sample = lock(&lane.sample);
            let latency = started.elapsed().saturating_sub(paced);
            sample.latency = sample.latency.max(latency);
            sample.pushed_back |= match &result {
                Ok(r) => r.status == 429 || r.status >= 500,
                Err(e) => matches!(e, UpstreamError::Timeout | UpstreamError::CircuitOpen),
            };
        }
        let verdict = verdict(&result);
        if let (Verdict::Delivered, Ok(r)) = (&verdict, result) {
            let mut offers = Offers::from(&r);
            if let Some((tier, (fresh, stale))) = shared {
                let slot = crate::shared::Slot {
                    key: &key,
                    namespace: &endpoint_fingerprint,
                    fresh,
                    stale,
                };
                tier.put(&self.cache, slot, &mut offers);
            }
            self.cache.insert(key, offers);
        }
        verdict
    }

    /// Keep a record the upstream will not take in the dead-letter log, waiting while the log
    /// is full or failing: it is never dropped.
    async fn dead_letter(&self, lane: &Lane, record: &Record, reason: &'static str) {
        let backoff = retry_backoff();
        let mut attempt = 0;
        loop {
            let spool = self.spool.clone();
            let copy = record.clone();
            let written = tokio::task::spawn_blocking(move || spool.dead.append(&copy)).await;
            match written {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    metrics::SPOOL_HELD
                        .with_label_values(&[&record.service, "dead_letter_full"])
                        .inc();
                    lane.set_waiting(Some(format!(
                        "an event the upstream refused ({reason}) cannot be kept: {e}; requeue or raise spool.dead_letter_max_bytes"
                    )));
                }
                Err(e) => tracing::error!(error = %e, "dead-letter append panicked"),
            }
            tokio::time::sleep(backoff.ceiling(attempt)).await;
            attempt += 1;
        }
        metrics::SPOOL_DEAD_LETTERED
            .with_label_values(&[&record.service, reason])
            .inc();
        tracing::warn!(service = %record.service, route = %record.route, reason, "a spooled event went to the dead-letter log");
    }
}
