//! The spool's writer: one thread that group-commits what the appends queue, each lane's part
//! of a batch in one write and one `fdatasync`, then acknowledges every append of it.

use super::lane::{open_segment, Lane};
use super::{Position, Spool, SpoolError, QUEUE};
use crate::metrics;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;
use tokio::sync::oneshot;

/// One append, waiting for the writer.
pub(super) struct Job {
    pub(super) lane: Arc<Lane>,
    pub(super) frame: Vec<u8>,
    pub(super) done: oneshot::Sender<Result<(), SpoolError>>,
}

type Done = oneshot::Sender<Result<(), SpoolError>>;

/// Each lane's open segment, by the lane's name.
type Open = HashMap<Arc<str>, Segment, ahash::RandomState>;

/// The writer thread: batch what is queued and hand it to `Spool::write_batch`, until the spool
/// is dropped.
pub(super) fn write_loop(spool: &std::sync::Weak<Spool>, jobs: mpsc::Receiver<Job>) {
    let mut open = Open::default();
    let Some(interval) = spool.upgrade().map(|s| s.settings.sync_interval) else {
        return;
    };
    loop {
        let first = match interval {
            None => jobs.recv().ok(),
            Some(d) => match jobs.recv_timeout(d) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    open.values_mut().for_each(Segment::sync_if_dirty);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            },
        };
        let (Some(first), Some(spool)) = (first, spool.upgrade()) else {
            open.values_mut().for_each(Segment::close);
            return;
        };
        let mut batch = vec![first];
        batch.extend(jobs.try_iter().take(QUEUE));
        spool.write_batch(&mut open, batch);
    }
}

impl Spool {
    /// Write a batch: each lane's part, one `fdatasync` per lane written, then acknowledge.
    fn write_batch(&self, open: &mut Open, batch: Vec<Job>) {
        // Each lane's frames, in arrival order, within the bound on disk.
        let mut groups: Vec<(Arc<Lane>, Vec<u8>, Vec<Done>)> = Vec::new();
        let mut total = self.disk_bytes.load(Ordering::Relaxed);
        for job in batch {
            if total + job.frame.len() as u64 > self.settings.max_bytes {
                self.refuse(&job.lane, job.done, SpoolError::Full);
                continue;
            }
            total += job.frame.len() as u64;
            match groups.iter_mut().find(|g| Arc::ptr_eq(&g.0, &job.lane)) {
                Some(group) => {
                    group.1.extend_from_slice(&job.frame);
                    group.2.push(job.done);
                }
                None => groups.push((job.lane, job.frame, vec![job.done])),
            }
        }
        for (lane, buf, dones) in groups {
            self.write_lane(open, &lane, &buf, dones);
        }
    }

    fn write_lane(&self, open: &mut Open, lane: &Lane, buf: &[u8], dones: Vec<Done>) {
        let fail = |dones: Vec<Done>, e: &std::io::Error| {
            for done in dones {
                self.refuse(lane, done, SpoolError::Io(e.to_string()));
            }
        };
        let segment = match open.entry(lane.name.clone()) {
            std::collections::hash_map::Entry::Occupied(found) => found.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let number = lane.position().segment;
                match Segment::create(&lane.dir, number, self.settings.segment_bytes) {
                    Ok(segment) => slot.insert(segment),
                    Err(e) => {
                        tracing::error!(error = %e, lane = %lane.name, "cannot open a spool segment; refusing this batch");
                        return fail(dones, &e);
                    }
                }
            }
        };
        let started = Instant::now();
        let written = segment.write(buf, self.settings.sync_interval);
        metrics::SPOOL_COMMIT_DURATION.observe(started.elapsed().as_secs_f64());
        if let Err(e) = written {
            tracing::error!(error = %e, lane = %lane.name, "spool write failed; refusing this batch");
            return fail(dones, &e);
        }
        let total = self
            .disk_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed)
            + buf.len() as u64;
        metrics::SPOOL_BYTES.set(total as i64);
        metrics::SPOOL_COMMITS.inc();
        // The answers waiting on this commit first, then replay: its wake-up can wait.
        for done in dones {
            let _ = done.send(Ok(()));
        }
        lane.publish(Position {
            segment: segment.number,
            offset: segment.size,
        });
        if segment.size >= self.settings.segment_bytes {
            self.roll_over(lane, segment);
        }
    }

    /// An append refused: it no longer counts in the depth (it did from before it was queued).
    fn refuse(&self, lane: &Lane, done: Done, e: SpoolError) {
        self.count(lane, -1);
        let _ = done.send(Err(e));
    }

    /// A full segment: synced, and the lane's writes go on in the next one.
    fn roll_over(&self, lane: &Lane, segment: &mut Segment) {
        segment.close();
        let opened = self
            .segment_after(segment.number)
            .and_then(|number| Segment::create(&lane.dir, number, self.settings.segment_bytes));
        match opened {
            Ok(next) => {
                *segment = next;
                lane.publish(Position {
                    segment: segment.number,
                    offset: 0,
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot start a new spool segment"),
        }
    }
}

/// The segment a lane's writes go to.
pub(super) struct Segment {
    file: std::fs::File,
    number: u64,
    /// Where its records end.
    size: u64,
    /// The file's size: its records, and the zeros set aside after them (`make_room`).
    allocated: u64,
    /// The most set aside: the segment's `segment_bytes`, so that a full one ends at its last
    /// record; 0 once the file system has refused.
    most: u64,
    /// Written but not yet synced, in `sync_interval` mode: since when.
    dirty_since: Option<Instant>,
}

/// Disk set aside at a time after a segment's records: the most that a lane's open segment
/// (or one left by a crash, until the next start trims it) holds beyond them.
const SET_ASIDE: u64 = 1 << 20;

impl Segment {
    /// Segment `number` in `dir`, new, to hold `segment_bytes`.
    fn create(dir: &std::path::Path, number: u64, segment_bytes: u64) -> std::io::Result<Segment> {
        Ok(Segment {
            file: open_segment(dir, number)?,
            number,
            size: 0,
            allocated: 0,
            most: segment_bytes,
            dirty_since: None,
        })
    }

    /// Append `buf` whole, durable now or (in `sync_interval` mode) within the interval.
    fn write(&mut self, buf: &[u8], interval: Option<std::time::Duration>) -> std::io::Result<()> {
        self.make_room(buf.len() as u64);
        let written = self
            .file
            .write_all_at(buf, self.size)
            .and_then(|()| match interval {
                None => self.file.sync_data(),
                Some(d) => {
                    let since = *self.dirty_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= d {
                        self.dirty_since = None;
                        self.file.sync_data()
                    } else {
                        Ok(())
                    }
                }
            });
        if written.is_err() {
            // Nothing of a failed batch may stay behind to be replayed (the space set aside
            // goes with it; the next write sets more aside).
            let _ = self.file.set_len(self.size);
            self.allocated = self.size;
        } else {
            self.size += buf.len() as u64;
            self.allocated = self.allocated.max(self.size);
        }
        written
    }

    /// Before `len` more bytes are written: if they would pass the space set aside, set aside
    /// up to `SET_ASIDE` more, reading as zeros, which read as the end of the log
    /// (`record::read_frame`). Most appends then land inside the file and change neither its
    /// size nor its extents, so their `fdatasync` writes the data alone, not the inode too:
    /// on this machine's disk that made a commit's `fdatasync` about a fifth cheaper (README).
    /// Where the file system cannot allocate, the size alone is set (a sparse file); where even
    /// that fails, appends extend the file as before.
    fn make_room(&mut self, len: u64) {
        let end = self.size + len;
        if end <= self.allocated || self.allocated >= self.most {
            return;
        }
        let target = (end + SET_ASIDE).min(self.most);
        if target <= end {
            return;
        }
        #[cfg(target_os = "linux")]
        let set = rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::empty(),
            self.allocated,
            target - self.allocated,
        )
        .map_err(std::io::Error::from);
        #[cfg(not(target_os = "linux"))]
        let set: std::io::Result<()> = Err(std::io::ErrorKind::Unsupported.into());
        match set.or_else(|_| self.file.set_len(target)) {
            Ok(()) => self.allocated = target,
            Err(e) => {
                tracing::debug!(error = %e, "cannot set spool space aside; appends extend the segment");
                self.most = 0;
            }
        }
    }

    /// In `sync_interval` mode: make what was written durable, if anything is pending.
    fn sync_if_dirty(&mut self) {
        if self.dirty_since.take().is_some() {
            if let Err(e) = self.file.sync_data() {
                tracing::error!(error = %e, "spool fdatasync failed");
            }
        }
    }

    /// The writer stops: what was written made durable, the space set aside given back.
    fn close(&mut self) {
        self.sync_if_dirty();
        if self.allocated > self.size && self.file.set_len(self.size).is_ok() {
            self.allocated = self.size;
        }
    }
}
