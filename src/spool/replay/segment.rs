//! Spool replay within one segment of a lane: up to the window's size of records in flight at
//! once, more read and sent as answers free room (not when a whole batch is answered), each
//! visitor's records in order, and the checkpoint moved past the delivered prefix.
//!
//! Sending in batches, the next one when the slowest record of the last was answered, sent the
//! upstream a burst of a window's calls every round trip. 50 ms away at 5,000 events/s those
//! were about 250 calls at once, 20 times a second: bursts of several milliseconds of work for
//! replay's thread and the upstream, during which the spool's writer and the answers waited for
//! a CPU (README, "What moved it"). A steady flow sends the same calls spread over the round trip.

use super::Replayer;
use crate::spool::lane::{CheckpointFile, Lane};
use crate::spool::reader::{next_batch, Batch, SegmentReader};
use crate::spool::window::Window;
use crate::spool::{Position, Record};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// While records are in flight and the window has room for a read, how long replay goes without
/// looking for more committed ones if none is answered meanwhile: the most a newly committed
/// record then waits to be read. With no room, it waits for an answer to make some.
const READ_AGAIN: Duration = Duration::from_millis(5);

/// Why a segment's flow stopped, with nothing in flight.
pub(super) enum Stop {
    /// Every record up to the writer's position is delivered: wait for more.
    CaughtUp,
    /// The segment is finished (the writer moved on) and every record of it delivered.
    Finished,
    /// The segment could not be read: try again later, skip nothing.
    Unreadable(std::io::Error),
}

/// One record read and not yet behind the checkpoint.
struct Slot {
    /// The offset just past it.
    end: u64,
    visitor: u64,
    enqueued_ms: u64,
    done: bool,
}

/// What the last read found, so that the flow neither reads again for nothing nor misses more.
enum Dry {
    /// The writer's position: read again once it moves.
    AtWriter(Position),
    /// The end of a finished segment: nothing more will come.
    SegmentEnd,
    /// Read again at the instant given.
    Unreadable(std::io::Error, tokio::time::Instant),
}

/// The lane's window and what it learns from: a sample of each window's worth of answers
/// (about a round trip), counted across segments and waits, as it was once per batch.
pub(super) struct Learning {
    window: Window,
    answered: usize,
    gauge: prometheus::IntGauge,
}

impl Learning {
    pub fn new(gauge: prometheus::IntGauge) -> Learning {
        Learning {
            window: Window::new(),
            answered: 0,
            gauge,
        }
    }

    /// One more answer; after a window's worth, the window learns from their sample. Whether
    /// it did.
    fn answer(&mut self, lane: &Lane, ceiling: usize) -> bool {
        self.answered += 1;
        if self.answered < self.window.size(ceiling) {
            return false;
        }
        self.answered = 0;
        let sample = std::mem::take(&mut *crate::lock(&lane.sample));
        self.window.record(sample, ceiling);
        self.gauge.set(self.window.size(ceiling) as i64);
        true
    }
}

/// The records of a segment from the checkpoint on: in log order, the delivered prefix dropped
/// as it grows; each visitor's records, the first of which is sent (or waiting to be) and the
/// others held until the checkpoint has passed the one before. A crash then repeats only the
/// records in flight and those delivered ahead of one still in flight: at most one record for
/// each visitor.
#[derive(Default)]
struct Flow {
    slots: VecDeque<Slot>,
    /// The number of `slots[0]` (records are numbered in the order read).
    base: u64,
    /// Each visitor's records in the flow, by number: the first one is sent or ready, the others
    /// held here.
    visitors: HashMap<u64, VecDeque<(u64, Option<Record>)>, ahash::RandomState>,
    /// Records that may be sent now, in log order.
    ready: VecDeque<(u64, Record)>,
}

impl Flow {
    fn add(&mut self, record: Record, end: u64, visitor: u64) {
        let number = self.base + self.slots.len() as u64;
        self.slots.push_back(Slot {
            end,
            visitor,
            enqueued_ms: record.enqueued_ms,
            done: false,
        });
        let queue = self.visitors.entry(visitor).or_default();
        if queue.is_empty() {
            queue.push_back((number, None));
            self.ready.push_back((number, record));
        } else {
            queue.push_back((number, Some(record)));
        }
    }

    /// Record `number` is delivered: the end of the delivered prefix, if that grew.
    fn finish(&mut self, number: u64) -> Option<u64> {
        self.slots[(number - self.base) as usize].done = true;
        let mut end = None;
        while self.slots.front().is_some_and(|s| s.done) {
            let slot = self.slots.pop_front().expect("a front slot");
            self.base += 1;
            end = Some(slot.end);
            let queue = self.visitors.get_mut(&slot.visitor).expect("its visitor");
            queue.pop_front();
            match queue.front_mut() {
                // The checkpoint has passed the visitor's record: its next one may go.
                Some((next, held)) => {
                    let record = held.take().expect("a held record");
                    self.ready.push_back((*next, record));
                }
                None => {
                    self.visitors.remove(&slot.visitor);
                }
            }
        }
        end
    }
}

impl Replayer {
    /// Replay segment `at.segment` from `at` until a `Stop`, the checkpoint moved past each
    /// record once it and every record before it are delivered.
    pub(super) async fn replay_segment(
        &self,
        lane: &Lane,
        reader: &mut SegmentReader,
        checkpoint: &mut CheckpointFile,
        at: &mut Position,
        learning: &mut Learning,
    ) -> Stop {
        let segment = at.segment;
        let mut read_to = at.offset;
        let mut flow = Flow::default();
        let mut running = FuturesUnordered::new();
        let mut dry: Option<Dry> = None;
        let visitor_of = ahash::RandomState::with_seeds(1, 2, 3, 4);
        loop {
            let ceiling = self.destinations.settings().concurrency.max(1);
            let size = learning.window.size(ceiling);
            let writer = lane.position();
            let read_again = match &dry {
                None => true,
                Some(Dry::AtWriter(seen)) => *seen != writer,
                Some(Dry::SegmentEnd) => false,
                Some(Dry::Unreadable(_, retry)) => tokio::time::Instant::now() >= *retry,
            };
            let room = readable(size, ceiling, running.len(), &flow);
            if room > 0 && read_again {
                let limit = if writer.segment == segment {
                    writer.offset
                } else {
                    u64::MAX
                };
                let from = Position {
                    segment,
                    offset: read_to,
                };
                match next_batch(reader, from, limit, room).await {
                    Batch::Records(records, next) => {
                        dry = None;
                        let was_empty = flow.slots.is_empty();
                        for (record, end) in records {
                            let visitor = visitor_of.hash_one((&record.service, &record.visitor));
                            flow.add(record, end, visitor);
                        }
                        read_to = next;
                        if flow.slots.is_empty() {
                            // Only corrupt frames: nothing to wait for.
                            at.offset = read_to;
                            checkpoint.write(*at);
                        } else if was_empty {
                            oldest(lane, &flow);
                            self.spool.publish_oldest();
                        }
                    }
                    Batch::End if writer.segment == segment => dry = Some(Dry::AtWriter(writer)),
                    Batch::End => dry = Some(Dry::SegmentEnd),
                    Batch::Unreadable(e) => {
                        let retry = tokio::time::Instant::now() + Duration::from_secs(1);
                        dry = Some(Dry::Unreadable(e, retry));
                    }
                }
            }
            while running.len() < size {
                let Some((number, record)) = flow.ready.pop_front() else {
                    break;
                };
                running.push(async move {
                    self.replay(lane, &record).await;
                    number
                });
            }
            if running.is_empty() {
                // Nothing in flight, so nothing held or ready either: every record read is
                // delivered and behind the checkpoint.
                match dry.take() {
                    Some(Dry::AtWriter(_)) => return Stop::CaughtUp,
                    Some(Dry::SegmentEnd) => return Stop::Finished,
                    Some(Dry::Unreadable(e, _)) => return Stop::Unreadable(e),
                    None => continue,
                }
            }
            // The next answer, or (none for a while, and room to read) a look for more
            // committed records: not a wake-up at each commit, which would cost replay's thread
            // one at each group commit while its calls are in flight. An unreadable segment is
            // tried again a second after it failed.
            let can_read = readable(size, ceiling, running.len(), &flow) > 0;
            let look = match &dry {
                // The last read found records, and there may be more: read again first.
                None if can_read => continue,
                Some(Dry::AtWriter(_)) if can_read => {
                    Some(tokio::time::Instant::now() + READ_AGAIN)
                }
                Some(Dry::Unreadable(_, retry)) if can_read => Some(*retry),
                _ => None,
            };
            let pause = tokio::time::sleep_until(look.unwrap_or_else(tokio::time::Instant::now));
            let number = tokio::select! {
                Some(number) = running.next() => number,
                _ = pause, if look.is_some() => continue,
            };
            if let Some(end) = flow.finish(number) {
                at.offset = if flow.slots.is_empty() { read_to } else { end };
                checkpoint.write(*at);
                oldest(lane, &flow);
            }
            if learning.answer(lane, ceiling) {
                // The spool's age gauge, as often: every lane is read for it.
                self.spool.publish_oldest();
            }
        }
    }
}

/// How many records to read now: the room in the window, if it is worth a read (an eighth of
/// the window at least, or nothing in flight: one read an answer would cost a blocking-pool hop
/// each, as the writer commits a few records at a time), and never more than twice the ceiling
/// past the checkpoint: a record that waits (retried, or answered late) holds that many in
/// memory at most, and a crash repeats at most one of them a visitor.
fn readable(size: usize, ceiling: usize, running: usize, flow: &Flow) -> usize {
    let room = size.saturating_sub(running + flow.ready.len());
    let worth = room > 0 && (room >= size.div_ceil(8) || running == 0);
    let bound = (2 * ceiling).saturating_sub(flow.slots.len());
    if worth {
        room.min(bound)
    } else {
        0
    }
}

/// The lane's oldest record not yet delivered, for its lag bound and the spool's age.
fn oldest(lane: &Lane, flow: &Flow) {
    if let Some(front) = flow.slots.front() {
        lane.oldest_ms.store(
            front.enqueued_ms.max(1),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> Record {
        Record {
            run: 1,
            seq,
            enqueued_ms: seq,
            service: "a".into(),
            route: "/db/t".into(),
            visitor: String::new(),
            body: bytes::Bytes::new(),
            route_id: String::new(),
        }
    }

    fn ready(flow: &mut Flow) -> Vec<u64> {
        flow.ready.drain(..).map(|(n, _)| n).collect()
    }

    #[test]
    fn reads_stop_at_twice_the_ceiling_past_the_checkpoint() {
        let ceiling = 8;
        let mut flow = Flow::default();
        // One record waits at the front; 12 after it are delivered but not yet passed.
        for seq in 0..13 {
            flow.add(record(seq), seq + 1, seq);
        }
        flow.ready.clear();
        for seq in 1..13 {
            assert_eq!(flow.finish(seq), None);
        }
        // The window has room for 7 (one in flight), the bound for 3 more.
        assert_eq!(readable(ceiling, ceiling, 1, &flow), 3);
        // Less than an eighth of the window (4 of 64) is not worth a read while calls are in
        // flight; it is when none is.
        assert_eq!(readable(64, 64, 60, &flow), 0);
        assert_eq!(readable(64, 64, 0, &flow), 64);
    }

    #[test]
    fn a_visitors_next_record_waits_until_the_checkpoint_has_passed_the_one_before() {
        let mut flow = Flow::default();
        // Visitors 7, 8, 7, 9, 7.
        for (seq, visitor) in [7, 8, 7, 9, 7].into_iter().enumerate() {
            flow.add(record(seq as u64), 10 * (seq as u64 + 1), visitor);
        }
        assert_eq!(ready(&mut flow), vec![0, 1, 3]);
        // Record 1 (visitor 8) delivered first: no prefix yet, nothing new may go.
        assert_eq!(flow.finish(1), None);
        assert!(flow.ready.is_empty());
        // Record 0 delivered: the prefix is 0 and 1; visitor 7's next (2) may go.
        assert_eq!(flow.finish(0), Some(20));
        assert_eq!(ready(&mut flow), vec![2]);
        // 3 then 2: the prefix reaches 3, and 7's last (4) may go.
        assert_eq!(flow.finish(3), None);
        assert_eq!(flow.finish(2), Some(40));
        assert_eq!(ready(&mut flow), vec![4]);
        assert_eq!(flow.finish(4), Some(50));
        assert!(flow.slots.is_empty() && flow.visitors.is_empty());
        // Numbering goes on after the flow has emptied.
        flow.add(record(5), 60, 8);
        assert_eq!(ready(&mut flow), vec![5]);
    }
}
