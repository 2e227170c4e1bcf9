//! The spool's side of the cache step: an event appended and on disk before its answer goes
//! out; each visitor's count of events waiting, so that its new events queue behind them; a
//! record settled once replay has delivered or dead-lettered it.

use super::lane::Lane;
use super::record::Fields;
use super::writer::Job;
use super::{now_ms, visitor_key, EventId, Record, Spool, SpoolError, VisitorKey};
use crate::cache::CacheKey;
use crate::metrics;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use tokio::sync::{oneshot, watch};

/// A record the caller's own call is still delivering: report the outcome with `finish`.
pub struct InFlight(watch::Sender<Option<bool>>);

impl InFlight {
    pub fn finish(self, delivered: bool) {
        let _ = self.0.send(Some(delivered));
    }
}

impl Spool {
    /// Append an event and wait until it is on disk. With `in_flight`, the caller's call is
    /// still delivering it: the replayer waits for `InFlight::finish` before sending it again.
    pub async fn append(
        &self,
        key: &CacheKey,
        route: &str,
        event: EventId,
        body: bytes::Bytes,
        in_flight: bool,
    ) -> Result<Option<InFlight>, SpoolError> {
        let lane = self.lane(&key.service)?;
        let frame = Fields {
            run: event.run,
            seq: event.seq,
            enqueued_ms: now_ms(),
            service: &key.service,
            route,
            visitor: &key.visitor,
            body: &body,
            route_id: &key.route,
        }
        .encode();
        let handle = in_flight.then(|| {
            let (tx, rx) = watch::channel(None);
            self.inflight.insert((event.run, event.seq), rx);
            InFlight(tx)
        });
        let visitor = visitor_key(&key.service, &key.visitor);
        // Counted before the write, so the visitor's next event already queues behind it.
        *self.pending.entry(visitor.clone()).or_insert(0) += 1;
        // In the depth from before the write too: once the writer commits, replay may settle
        // the record before this append runs again. A refusal uncounts it: here if the writer
        // never took the job, the writer's own otherwise.
        self.count(&lane, 1);
        let (done, wait) = oneshot::channel();
        let result = match self.jobs.try_send(Job {
            lane: lane.clone(),
            frame,
            done,
        }) {
            Ok(()) => match wait.await {
                Ok(written) => written,
                // The writer dropped the job unanswered (it stopped).
                Err(_) => {
                    self.count(&lane, -1);
                    Err(SpoolError::Stopped)
                }
            },
            Err(refused) => {
                self.count(&lane, -1);
                Err(match refused {
                    mpsc::TrySendError::Full(_) => SpoolError::Full,
                    mpsc::TrySendError::Disconnected(_) => SpoolError::Stopped,
                })
            }
        };
        match result {
            Ok(()) => Ok(handle),
            Err(e) => {
                self.inflight.remove(&(event.run, event.seq));
                self.unpend(&visitor);
                metrics::SPOOL_REFUSED.inc();
                Err(e)
            }
        }
    }

    /// Whether the visitor has events waiting in the spool (in any of the service's routes).
    pub fn has_pending(&self, key: &CacheKey) -> bool {
        !self.pending.is_empty()
            && self
                .pending
                .contains_key(&visitor_key(&key.service, &key.visitor))
    }

    /// A record is delivered or dead-lettered: it leaves the visitor's queue.
    pub(super) fn settle(&self, lane: &Lane, record: &Record) {
        self.inflight.remove(&(record.run, record.seq));
        // A service's lane is named after it (the old root lane holds any service's records).
        let service = if *lane.name == *record.service {
            lane.name.clone()
        } else {
            Arc::from(record.service.as_str())
        };
        self.unpend(&visitor_key(&service, &record.visitor));
        self.count(lane, -1);
    }

    /// `n` records enter the depth (appended, adopted) or, negative, leave it (delivered,
    /// dead-lettered, refused): the lane's and the spool's, and the gauge.
    pub(super) fn count(&self, lane: &Lane, n: i64) {
        lane.depth.fetch_add(n, Ordering::Relaxed);
        metrics::SPOOL_DEPTH.set(self.depth.fetch_add(n, Ordering::Relaxed) + n);
    }

    pub(super) fn unpend(&self, key: &VisitorKey) {
        self.pending.remove_if_mut(key, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}
