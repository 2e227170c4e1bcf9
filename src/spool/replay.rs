//! Spool replay: deliver spooled events in order, through the same upstream client and retry
//! policy as live traffic, refresh the visitor's cached offers, and advance the checkpoint
//! after each one. A record waits for an upstream that fails; nothing behind it overtakes it.

use super::{
    read_checkpoint, segment_path, segments, write_checkpoint, Frame, Position, Record, Spool,
};
use crate::cache::{CacheKey, OfferCache, Offers};
use crate::config::Config;
use crate::metrics;
use crate::upstream::{Call, CallLimits, ClientInfo, UpstreamClient};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Replayer {
    pub spool: Arc<Spool>,
    pub client: Arc<UpstreamClient>,
    pub config: Arc<ArcSwap<Config>>,
    pub cache: Arc<OfferCache>,
}

#[async_trait]
impl BackgroundService for Replayer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let run = self.run();
        tokio::pin!(run);
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = &mut run => return,
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
                _ = &mut run => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

/// What became of a record.
enum Outcome {
    Delivered,
    /// The upstream refused it for good (a 4xx other than 429), or its route is gone.
    Dropped(&'static str),
}

impl Replayer {
    async fn run(&self) {
        let dir = self.spool.settings.dir.clone();
        let mut at = read_checkpoint(&dir);
        let mut data: Vec<u8> = Vec::new();
        let mut loaded = None;
        loop {
            let writer = self.spool.position();
            if at.segment > writer.segment {
                at = Position {
                    segment: writer.segment,
                    offset: 0,
                };
            }
            let current = at.segment == writer.segment;
            let limit = if current { writer.offset } else { u64::MAX };
            if loaded != Some(at.segment)
                || (data.len() as u64) < limit.min(self.file_len(at.segment).await)
            {
                data = tokio::fs::read(segment_path(&dir, at.segment))
                    .await
                    .unwrap_or_default();
                loaded = Some(at.segment);
            }
            let readable = &data[..(limit.min(data.len() as u64)) as usize];
            match super::read_frame(readable, at.offset as usize) {
                Frame::Record(record, next) => {
                    self.replay(&record).await;
                    at.offset = next as u64;
                    self.checkpoint(at).await;
                }
                Frame::Corrupt(next) => {
                    metrics::SPOOL_CORRUPT.inc();
                    tracing::error!(
                        segment = at.segment,
                        offset = at.offset,
                        "skipping a corrupt spool record"
                    );
                    at.offset = next as u64;
                    self.checkpoint(at).await;
                }
                Frame::End if current => {
                    metrics::SPOOL_OLDEST_AGE.set(0.0);
                    // Caught up: wait for the writer (or look again soon, in case of a race).
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), self.spool.wake.notified())
                            .await;
                }
                Frame::End => {
                    // A finished segment (torn tail, if any, skipped): drop it, go to the next.
                    let len = self.file_len(at.segment).await;
                    if tokio::fs::remove_file(segment_path(&dir, at.segment))
                        .await
                        .is_ok()
                    {
                        let left = self.spool.disk_bytes.fetch_sub(len, Ordering::Relaxed) - len;
                        metrics::SPOOL_BYTES.set(left as i64);
                    }
                    let next = segments(&dir)
                        .ok()
                        .and_then(|s| s.into_iter().find(|&s| s > at.segment));
                    at = Position {
                        segment: next.unwrap_or(writer.segment),
                        offset: 0,
                    };
                    self.checkpoint(at).await;
                }
            }
        }
    }

    async fn file_len(&self, segment: u64) -> u64 {
        let path = segment_path(&self.spool.settings.dir, segment);
        tokio::fs::metadata(path).await.map_or(0, |m| m.len())
    }

    async fn checkpoint(&self, at: Position) {
        let dir = self.spool.settings.dir.clone();
        let written = tokio::task::spawn_blocking(move || write_checkpoint(&dir, at)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!(
                "cannot write the spool checkpoint; a restart may deliver events twice"
            );
        }
    }

    /// Deliver one record, waiting out upstream failures; then it leaves the visitor's queue.
    async fn replay(&self, record: &Record) {
        let age = crate::spool::now_ms().saturating_sub(record.enqueued_ms);
        metrics::SPOOL_OLDEST_AGE.set(age as f64 / 1000.0);
        let in_flight = self
            .spool
            .inflight
            .get(&(record.run, record.seq))
            .map(|r| r.clone());
        let outcome = match in_flight {
            // The live call that accepted it may still deliver it itself.
            Some(mut rx) => match rx.wait_for(Option::is_some).await.map(|v| *v) {
                Ok(Some(true)) => Outcome::Delivered,
                _ => self.deliver(record).await,
            },
            None => self.deliver(record).await,
        };
        match outcome {
            Outcome::Delivered => metrics::SPOOL_REPLAYED.inc(),
            Outcome::Dropped(reason) => {
                metrics::SPOOL_FAILED.with_label_values(&[reason]).inc();
                tracing::error!(service = %record.service, route = %record.route, reason, "a spooled event could not be delivered and was dropped");
            }
        }
        self.spool.settle(record);
    }

    async fn deliver(&self, record: &Record) -> Outcome {
        let mut wait = Duration::from_millis(100);
        loop {
            let config = self.config.load_full();
            let Some(route) = config.route(&record.route).cloned() else {
                return Outcome::Dropped("route_gone");
            };
            let limits = CallLimits::new(&config, &route);
            let call = Call {
                route,
                body: record.body.clone(),
                client: ClientInfo::default(),
            };
            match self.client.send(&call, limits).await {
                Ok(r) if r.status < 300 => {
                    let key = CacheKey::new(&Arc::from(record.service.as_str()), &record.visitor);
                    let offers = Offers {
                        status: r.status,
                        content_type: r.content_type,
                        body: r.body,
                        fetched: Instant::now(),
                    };
                    self.cache.insert(key, offers);
                    return Outcome::Delivered;
                }
                Ok(r) if r.status != 429 && r.status < 500 => return Outcome::Dropped("rejected"),
                _ => {}
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}
