//! Spool replay, one batch of a lane: its visitors at once, each visitor's records in order,
//! and the checkpoint moved past the delivered prefix.

use super::Replayer;
use crate::lock;
use crate::spool::lane::{CheckpointFile, Lane};
use crate::spool::{Position, Record};
use futures::stream::{self, StreamExt};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::Notify;

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
    /// Deliver a batch: its visitors at once, each visitor's records in order. The checkpoint
    /// moves past each record once it and every record before it are delivered, so that a
    /// crash repeats only the records in flight and those delivered ahead of one still in flight:
    /// at most one record for each visitor of the batch.
    pub(super) async fn deliver_batch(
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
        let visitors = by_visitor(&records);
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
                        passed(progress, advanced, i).await;
                    }
                }
            })
            .await;
    }
}

/// The batch's records by visitor (and service), each visitor's in order: indexes into
/// `records`, the visitors in the order of their first record. One map lookup a record: a
/// batch can hold the whole replay window's records, each of another visitor.
fn by_visitor(records: &[(Record, u64)]) -> Vec<Vec<usize>> {
    let mut visitors: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<(&str, &str), usize, ahash::RandomState> =
        HashMap::with_capacity_and_hasher(records.len(), ahash::RandomState::new());
    for (i, (record, _)) in records.iter().enumerate() {
        let key = (record.service.as_str(), record.visitor.as_str());
        match seen.get(&key) {
            Some(&queue) => visitors[queue].push(i),
            None => {
                seen.insert(key, visitors.len());
                visitors.push(vec![i]);
            }
        }
    }
    visitors
}

/// Wait until the delivered prefix has passed record `i`.
async fn passed(progress: &Mutex<Progress>, advanced: &Notify, i: usize) {
    loop {
        let notified = advanced.notified();
        if lock(progress).delivered > i {
            break;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(service: &str, visitor: &str) -> (Record, u64) {
        let record = Record {
            run: 1,
            seq: 0,
            enqueued_ms: 0,
            service: service.into(),
            route: "/db/t".into(),
            visitor: visitor.into(),
            body: bytes::Bytes::new(),
            route_id: String::new(),
        };
        (record, 0)
    }

    #[test]
    fn a_batch_is_split_by_service_and_visitor_in_order() {
        let records = [
            record("a", "v1"),
            record("a", "v2"),
            record("b", "v1"),
            record("a", "v1"),
            record("b", "v1"),
            record("a", "v3"),
        ];
        assert_eq!(
            by_visitor(&records),
            vec![vec![0, 3], vec![1], vec![2, 4], vec![5]]
        );
    }

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
}
