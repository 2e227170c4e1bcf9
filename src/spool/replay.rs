//! Spool replay: deliver spooled events through the same upstream client and retry policy as
//! live traffic, refresh the visitor's cached offers, and advance the checkpoint. Each lane (a
//! service's segments) replays on its own task, so a service whose upstream is down or refuses
//! our credentials holds only its own events. A lane's records are taken in batches of up to
//! `spool.replay_concurrency`; a batch's visitors are sent to at once,
//! each visitor's own records one after another, so the upstream sees every visitor's events in
//! order. A record waits for an upstream that fails; the next batch starts when the whole batch
//! is delivered, so nothing overtakes it by more than one batch, and the checkpoint only ever
//! moves past records delivered along with every record before them.
//!
//! A record is never given up. An upstream 429, 5xx or failure is retried with backoff; an
//! answer that says our side is wrong (401, 403, a token code, any other 4xx) holds the lane
//! and is retried until a reload fixes it, shown in `/readyz`; an answer that says the event is
//! bad (3004, 413) sends it to the dead-letter log. A record goes only to a route with the
//! service *and* identity it was accepted for; while there is none it waits, and after
//! `spool.route_wait_seconds` it becomes a dead letter.
//!
//! Segments are read in chunks from an open file, up to what the writer has committed, and the
//! checkpoint is one line rewritten in place (one `pwrite`): a record costs its upstream call and
//! little more.

use super::lane::{segment_path, segments, CheckpointFile, Lane};
use super::reader::{next_batch, Batch, SegmentReader};
use super::window::{Sample, Window};
use super::{Position, Record, Spool};
use crate::cache::{CacheKey, OfferCache, Offers};
use crate::error::vendor_code;
use crate::lock;
use crate::metrics;
use crate::upstream::{
    Backoff, Call, CallLimits, ClientInfo, Endpoint, QuotaWait, UpstreamClient, UpstreamError,
    UpstreamResponse,
};
use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Clone)]
pub struct Replayer {
    pub spool: Arc<Spool>,
    pub client: Arc<UpstreamClient>,
    /// Where records may go: asked at every attempt, so that a reload counts.
    pub destinations: Arc<dyn Destinations>,
    pub cache: Arc<OfferCache>,
    /// Refreshed offers are written through to the shared tier too, if there is one.
    pub shared: Option<Arc<crate::shared::SharedTier>>,
}

/// Where replay may send a record. The daemon answers from the config in force (`lib.rs`).
pub trait Destinations: Send + Sync {
    /// The endpoint a record may go to now, the limits of a call on it, and the cache key its
    /// answer refreshes; `None` while no route fits the record.
    fn find(&self, record: &Record) -> Option<Destination>;
    /// The replay settings in force.
    fn settings(&self) -> ReplaySettings;
}

/// A record's way to the upstream.
pub struct Destination {
    pub endpoint: Arc<Endpoint>,
    pub limits: CallLimits,
    pub key: CacheKey,
    /// How long refreshed offers stay fresh and then stale in the shared tier; `None` when the
    /// service keeps no offers (its cache is off).
    pub shared_ttl: Option<(Duration, Duration)>,
}

/// The reloadable part of `spool` settings that replay reads.
#[derive(Debug, Clone, Copy)]
pub struct ReplaySettings {
    /// The most records of a lane sent at once (`spool.replay_concurrency`).
    pub concurrency: usize,
    /// How long a record waits for its route to come back before the dead-letter log.
    pub route_wait: Duration,
}

#[async_trait]
impl BackgroundService for Replayer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut lanes) = self.spool.take_lanes() else {
            return;
        };
        // During a graceful upgrade the old process replays until it exits; then this one.
        tokio::select! {
            _ = shutdown.changed() => return,
            taken = self.spool.acquire() => if let Err(e) = taken {
                tracing::error!(error = %e, "cannot take the spool's lock: not replaying");
                return;
            },
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                lane = lanes.recv() => match lane {
                    Some(lane) => self.start_lane(lane),
                    None => return,
                },
            }
        }
        // Shutting down: keep delivering until the spool is empty. Pingora stops the runtime at
        // the end of the grace period; what is left then stays on disk for the next start.
        tracing::info!(depth = self.spool.depth(), "draining the spool before exit");
        loop {
            if self.spool.depth() <= 0 {
                tracing::info!("spool drained");
                return;
            }
            tokio::select! {
                Some(lane) = lanes.recv() => self.start_lane(lane),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

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
    let code = vendor_code(&r.body);
    match (r.status, code) {
        (200..=299, _) => Verdict::Delivered,
        (429, _) | (500.., _) => Verdict::Retry,
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

/// Which records of a batch are delivered, and how many from its start without a gap.
struct Progress {
    done: Vec<bool>,
    delivered: usize,
}

impl Progress {
    /// Record `i` is delivered; the new length of the delivered prefix, if it grew.
    fn finish(&mut self, i: usize) -> Option<usize> {
        self.done[i] = true;
        let before = self.delivered;
        while self.done.get(self.delivered) == Some(&true) {
            self.delivered += 1;
        }
        (self.delivered > before).then_some(self.delivered)
    }
}

impl Replayer {
    fn start_lane(&self, lane: Arc<Lane>) {
        let replayer = self.clone();
        tokio::spawn(async move { replayer.run_lane(lane).await });
    }

    async fn run_lane(&self, lane: Arc<Lane>) {
        let dir = lane.dir.clone();
        let (checkpoint, mut at) = CheckpointFile::open(&dir);
        let checkpoint = Mutex::new(checkpoint);
        let mut reader = SegmentReader::new(dir.clone());
        let mut window = Window::new();
        loop {
            let writer = lane.position();
            if at.segment > writer.segment {
                at = Position {
                    segment: writer.segment,
                    offset: 0,
                };
            }
            if !self.spool.may_replay(at.segment) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let current = at.segment == writer.segment;
            let limit = if current { writer.offset } else { u64::MAX };
            let ceiling = self.destinations.settings().concurrency;
            match next_batch(&mut reader, at, limit, window.size(ceiling)).await {
                Batch::Records(records, next) => {
                    *lock(&lane.sample) = Sample::default();
                    self.deliver_batch(&lane, records, at.segment, &checkpoint)
                        .await;
                    window.record(*lock(&lane.sample), ceiling);
                    metrics::SPOOL_REPLAY_WINDOW
                        .with_label_values(&[&lane.name])
                        .set(window.size(ceiling) as i64);
                    at.offset = next;
                    lock(&checkpoint).write(at);
                }
                Batch::Unreadable(e) => {
                    tracing::error!(segment = at.segment, error = %e, "cannot read a spool segment; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Batch::End if current && !lane.writes => return,
                Batch::End if current => {
                    lane.oldest_ms
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                    self.spool.publish_oldest();
                    // Caught up: wait for the writer (or look again soon, in case of a race).
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), lane.wake.notified()).await;
                }
                Batch::End => {
                    // A finished segment (torn tail, if any, skipped): drop it, go to the next.
                    reader.restart_at(at);
                    let path = segment_path(&dir, at.segment);
                    let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                    if std::fs::remove_file(&path).is_ok() {
                        self.spool.forget_bytes(len);
                    }
                    // Never a segment at or past this process's writer: during a graceful
                    // upgrade those are the new process's, still being written. Nor one whose
                    // writer still lives (two upgrades in a row): wait for it to exit.
                    let next = segments(&dir).ok().and_then(|s| {
                        s.into_iter()
                            .find(|&s| s > at.segment && s < writer.segment)
                    });
                    if next.is_some_and(|s| !self.spool.may_replay(s)) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    at = Position {
                        segment: next.unwrap_or(writer.segment),
                        offset: 0,
                    };
                    lock(&checkpoint).write(at);
                }
            }
        }
    }

    /// Deliver a batch: its visitors at once, each visitor's records in order. The checkpoint
    /// moves past each record once it and every record before it are delivered, so that a
    /// crash repeats only the records in flight and those delivered ahead of one still in flight:
    /// at most one record for each visitor of the batch.
    async fn deliver_batch(
        &self,
        lane: &Lane,
        records: Vec<(Record, u64)>,
        segment: u64,
        checkpoint: &Mutex<CheckpointFile>,
    ) {
        if let Some((first, _)) = records.first() {
            lane.oldest_ms.store(
                first.enqueued_ms.max(1),
                std::sync::atomic::Ordering::Relaxed,
            );
            self.spool.publish_oldest();
        }
        let mut visitors: Vec<Vec<usize>> = Vec::new();
        for (i, (record, _)) in records.iter().enumerate() {
            let same = visitors.iter_mut().find(|v| {
                let seen = &records[v[0]].0;
                seen.visitor == record.visitor && seen.service == record.service
            });
            match same {
                Some(queue) => queue.push(i),
                None => visitors.push(vec![i]),
            }
        }
        let progress = Mutex::new(Progress {
            done: vec![false; records.len()],
            delivered: 0,
        });
        let advanced = Notify::new();
        let width = visitors.len();
        let (records, progress, advanced) = (&records, &progress, &advanced);
        stream::iter(visitors)
            .for_each_concurrent(width, |queue| async move {
                let last = queue.last().copied();
                for i in queue {
                    self.replay(lane, &records[i].0).await;
                    let caught_up = {
                        let mut p = lock(progress);
                        if let Some(upto) = p.finish(i) {
                            let at = Position {
                                segment,
                                offset: records[upto - 1].1,
                            };
                            lock(checkpoint).write(at);
                            advanced.notify_waiters();
                        }
                        p.delivered > i
                    };
                    // A visitor's next record waits until the checkpoint has passed this one:
                    // each visitor then holds at most one record that a crash would repeat.
                    if !caught_up && Some(i) != last {
                        loop {
                            let notified = advanced.notified();
                            if lock(progress).delivered > i {
                                break;
                            }
                            notified.await;
                        }
                    }
                }
            })
            .await;
    }

    /// Deliver one record, or dead-letter it; then it leaves the visitor's queue.
    async fn replay(&self, lane: &Lane, record: &Record) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::reader::CHUNK;

    #[test]
    fn the_checkpoint_moves_only_past_a_delivered_prefix() {
        let mut p = Progress {
            done: vec![false; 4],
            delivered: 0,
        };
        assert_eq!(p.finish(1), None);
        assert_eq!(p.finish(2), None);
        assert_eq!(p.finish(0), Some(3));
        assert_eq!(p.finish(3), Some(4));
    }

    #[tokio::test]
    async fn a_missing_segment_ends_and_an_unreadable_one_is_retried_not_skipped() {
        let dir = std::env::temp_dir().join(format!("p13n-edge-unreadable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut reader = SegmentReader::new(dir.clone());
        let at = Position {
            segment: 0,
            offset: 0,
        };
        assert!(matches!(
            next_batch(&mut reader, at, u64::MAX, 8).await,
            Batch::End
        ));
        // A directory in the segment's place: opening works, reading fails.
        std::fs::create_dir(segment_path(&dir, 1)).unwrap();
        let at = Position {
            segment: 1,
            offset: 0,
        };
        assert!(matches!(
            next_batch(&mut reader, at, u64::MAX, 8).await,
            Batch::Unreadable(_)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn record(seq: u64, body: Vec<u8>) -> Record {
        Record {
            run: 1,
            seq,
            enqueued_ms: 0,
            service: "shop".into(),
            route: "/demo_db/pageviews".into(),
            visitor: "v".into(),
            body: body.into(),
            route_id: String::new(),
        }
    }

    #[tokio::test]
    async fn batches_span_records_larger_than_a_chunk_and_stop_at_the_limit() {
        let dir = std::env::temp_dir().join(format!("p13n-edge-batches-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = record(1, b"{}".to_vec()).encode();
        let big = record(2, vec![b' '; CHUNK - 200]).encode();
        let mut log = [small.clone(), big.clone(), small.clone(), small.clone()].concat();
        log.extend_from_slice(&[9, 0, 0]); // a torn tail
        std::fs::write(segment_path(&dir, 0), &log).unwrap();
        let mut reader = SegmentReader::new(dir.clone());
        let start = Position {
            segment: 0,
            offset: 0,
        };
        // Every batch until the end, up to `limit`: the sequence numbers read, and where it ended.
        async fn drain(
            reader: &mut SegmentReader,
            mut at: Position,
            limit: u64,
        ) -> (Vec<u64>, u64) {
            let mut seqs = Vec::new();
            while let Batch::Records(records, next) = next_batch(reader, at, limit, 8).await {
                seqs.extend(records.iter().map(|(r, _)| r.seq));
                at.offset = next;
            }
            (seqs, at.offset)
        }
        // The writer has committed the first three records only.
        let committed = (2 * small.len() + big.len()) as u64;
        assert_eq!(
            drain(&mut reader, start, committed).await,
            (vec![1, 2, 1], committed)
        );
        // Once the segment is finished: read to its end, the torn tail left out.
        let at = Position {
            segment: 0,
            offset: committed,
        };
        let end = log.len() as u64 - 3;
        assert_eq!(drain(&mut reader, at, u64::MAX).await, (vec![1], end));
        // A reader starting afresh in the middle reads the same.
        let mut fresh = SegmentReader::new(dir.clone());
        let second = Position {
            segment: 0,
            offset: small.len() as u64,
        };
        assert_eq!(
            drain(&mut fresh, second, u64::MAX).await,
            (vec![2, 1, 1], end)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
