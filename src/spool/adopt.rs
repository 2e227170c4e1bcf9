//! Taking over a spool that other processes wrote: epochs (which process owns which segments,
//! across graceful upgrades), adopting the lanes, records and bytes they left, and the segment a
//! writer moves on to.

use super::lane::{self, segments, Lane};
use super::{records, visitor_key, Position, Spool, VisitorKey};
use crate::metrics;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Spool {
    /// Wait until this process holds the spool's lock (at once, but during a graceful upgrade),
    /// then take over what the previous holder left: its lanes and their records.
    pub(crate) async fn acquire(self: &Arc<Self>) -> std::io::Result<()> {
        if self.owns_lock.load(Ordering::Acquire) {
            return Ok(());
        }
        loop {
            let file = self.lock.try_clone()?;
            match tokio::task::spawn_blocking(move || file.lock()).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot take the spool's lock; trying again");
                }
                Err(e) => tracing::error!(error = %e, "cannot take the spool's lock; trying again"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        tracing::info!(dir = %self.settings.dir.display(), "the previous p13n-edge released the spool: replaying");
        loop {
            let spool = self.clone();
            match tokio::task::spawn_blocking(move || spool.adopt()).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot take over the spool's records; trying again");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot take over the spool's records; trying again")
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        // Only now: until then `/readyz` says replay waits.
        self.owns_lock.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether replay may read (and, once done, delete) `segment`: it is this process's own, or
    /// its writer is gone. During two upgrades in a row the middle process may still write
    /// while this one already holds the spool.
    pub(super) fn may_replay(&self, segment: u64) -> bool {
        self.writes_in(segment) || self.writer_ended(segment)
    }

    /// Whether `segment` is in one of this process's epochs.
    fn writes_in(&self, segment: u64) -> bool {
        let epoch = segment / lane::EPOCH;
        crate::lock(&self.claims).iter().any(|(e, _)| *e == epoch)
    }

    /// The segment after `number` for a writer: the next one, or, at the end of this process's
    /// epoch, the first of a newly claimed one.
    pub(super) fn segment_after(&self, number: u64) -> std::io::Result<u64> {
        let next = number + 1;
        if !next.is_multiple_of(lane::EPOCH) {
            return Ok(next);
        }
        let (epoch, claim) = lane::claim_epoch(&self.settings.dir)?;
        crate::lock(&self.claims).push((epoch, claim));
        self.epoch.store(epoch, Ordering::Relaxed);
        Ok(epoch * lane::EPOCH)
    }

    /// Count what other processes left in the spool (their lanes, records and bytes), with
    /// the lock held: nothing writes there any more but this process.
    pub(super) fn adopt(&self) -> std::io::Result<()> {
        if !segments(&self.settings.dir)?.is_empty() && !self.lanes.contains_key("") {
            self.add_lane(Lane::open(
                "",
                self.settings.dir.clone(),
                false,
                self.epoch(),
            )?);
        }
        for dir in lane::lane_dirs(&self.settings.dir)?.into_iter().skip(1) {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !name.is_empty() && !self.lanes.contains_key(name) {
                let lane = Lane::open(name, dir.clone(), true, self.epoch())?;
                self.add_lane(lane);
            }
        }
        self.dead.recount()?;
        lane::forget_epochs_below(&self.settings.dir, self.epoch());
        // Everything is read before anything is counted: a retry after an error counts once.
        let lanes: Vec<Arc<Lane>> = self.lanes.iter().map(|l| l.clone()).collect();
        let mut found = Vec::with_capacity(lanes.len());
        for lane in lanes {
            let visitors = self.left_by_others(&lane)?;
            found.push((lane, visitors));
        }
        self.measure()?;
        for (lane, visitors) in found {
            let n = visitors.len() as i64;
            for visitor in visitors {
                *self.pending.entry(visitor).or_insert(0) += 1;
            }
            self.count(&lane, n);
        }
        Ok(())
    }

    /// Whether `segment`'s writer has ended: another process's, gone (a crash, a stop, the
    /// process before an upgrade). Nothing will write to it again.
    fn writer_ended(&self, segment: u64) -> bool {
        !self.writes_in(segment) && !lane::epoch_alive(&self.settings.dir, segment / lane::EPOCH)
    }

    /// Set the bytes on disk from the segments present: their sizes, but for the segments this
    /// process is writing, the records in them (the space set aside after those is not counted:
    /// the writer counts what it writes, and a full segment is deleted at its final size).
    pub(super) fn measure(&self) -> std::io::Result<()> {
        let writing: Vec<(PathBuf, Position)> = self
            .lanes
            .iter()
            .filter(|l| l.writes)
            .map(|l| (l.dir.clone(), l.position()))
            .collect();
        let mut total = 0;
        for dir in lane::lane_dirs(&self.settings.dir)? {
            for segment in segments(&dir)? {
                let own = writing
                    .iter()
                    .find(|(d, at)| *d == dir && at.segment == segment);
                if let Some((_, at)) = own {
                    total += at.offset;
                    continue;
                }
                // Another process's replay may have just deleted it.
                match std::fs::metadata(lane::segment_path(&dir, segment)) {
                    Ok(m) => total += m.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.disk_bytes.store(total, Ordering::Relaxed);
        metrics::SPOOL_DEPTH.set(self.depth());
        metrics::SPOOL_BYTES.set(total as i64);
        Ok(())
    }

    /// The visitors of the records other runs left in a lane, one per record (this run's own
    /// records are counted as they are appended).
    pub(super) fn left_by_others(&self, lane: &Lane) -> std::io::Result<Vec<VisitorKey>> {
        let mut visitors = Vec::new();
        let start = lane::resume_point(&lane.dir)?;
        for segment in segments(&lane.dir)? {
            if segment < start.segment {
                continue;
            }
            let path = lane::segment_path(&lane.dir, segment);
            // Whether its writer is gone, asked before it is read: then the bytes read are final.
            let ended = self.writer_ended(segment);
            let data = std::fs::read(&path)?;
            let from = if segment == start.segment {
                start.offset as usize
            } else {
                0
            };
            if ended {
                trim(&path, &data, from);
            }
            visitors.extend(
                records(&data, from)
                    .filter(|r| r.run != self.run)
                    .map(|r| visitor_key(&Arc::from(r.service.as_str()), &r.visitor)),
            );
        }
        Ok(visitors)
    }
}

/// A segment whose writer has ended loses what follows the end of its log as replay reads it
/// (from `from`, where replay resumes): the space its writer set aside, and a write a crash
/// tore, neither of which replay would deliver. Its size is then what it holds, for
/// `max_bytes`.
fn trim(path: &std::path::Path, data: &[u8], from: usize) {
    let end = from + super::log_end(&data[from.min(data.len())..]);
    if end >= data.len() {
        return;
    }
    let trimmed = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(end as u64));
    let (segment, bytes) = (path.display(), data.len() - end);
    match trimmed {
        Ok(()) if data[end..].iter().all(|&b| b == 0) => {
            tracing::debug!(%segment, bytes, "gave back the space set aside after a spool segment's records")
        }
        Ok(()) => {
            tracing::warn!(%segment, bytes, "trimmed what a crash left after a spool segment's last record (a torn write)")
        }
        Err(e) => tracing::warn!(%segment, error = %e, "cannot trim a spool segment"),
    }
}
