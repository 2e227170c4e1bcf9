//! A replay lane: one service's segments, checkpoint and replay position, in a directory of
//! its own (`lanes/{service}/`), so that a service whose upstream refuses or fails holds only
//! its own events back. Segments that an older version left in the spool's root form a lane
//! that is only read (`""`), its records routed by the service they name.

use super::Position;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

const CHECKPOINT: &str = "checkpoint";

/// Segment numbers come in epochs of this many. Each process (and each `spool requeue`) writes
/// in an epoch of its own, claimed when it opens the spool: above every epoch claimed or used
/// before, by a file created exclusively in `epochs/`. During a graceful upgrade two processes
/// then never write one file, and the old one's segments, numbered below the new one's, are
/// replayed first; replay never goes to a segment at or past its own writer's.
pub(crate) const EPOCH: u64 = 1 << 20;
const EPOCHS: &str = "epochs";

/// Claim an epoch of segment numbers in the spool at `dir`, above every one claimed or used.
/// The claim file comes back locked: its process holds it for its whole life, so others can
/// tell a live writer's epoch from a dead one's (`epoch_alive`).
pub(crate) fn claim_epoch(dir: &Path) -> std::io::Result<(u64, std::fs::File)> {
    let claims = dir.join(EPOCHS);
    std::fs::create_dir_all(&claims)?;
    let used = highest_segment(dir)?.map_or(0, |h| h / EPOCH + 1);
    let mut epoch = claimed(&claims)?.last().map_or(0, |c| c + 1).max(used);
    loop {
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(claims.join(epoch.to_string()));
        match made {
            Ok(file) => {
                file.try_lock().map_err(std::io::Error::other)?;
                std::fs::File::open(&claims)?.sync_all()?;
                return Ok((epoch, file));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => epoch += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Whether another live process writes in `epoch`: its claim file is locked. (This process's
/// own claims are locked too: callers ask only about epochs not their own.)
pub(crate) fn epoch_alive(dir: &Path, epoch: u64) -> bool {
    match std::fs::File::open(dir.join(EPOCHS).join(epoch.to_string())) {
        Ok(file) => file.try_lock_shared().is_err(),
        Err(_) => false,
    }
}

/// Forget the claims of epochs below `epoch` whose processes are gone (a live one, say the
/// middle of two upgrades in a row, keeps its claim); the highest claim stays, so later claims
/// stay above it. Best effort: what cannot be removed stays.
pub(crate) fn forget_epochs_below(dir: &Path, epoch: u64) {
    let claims = dir.join(EPOCHS);
    for old in claimed(&claims)
        .unwrap_or_default()
        .into_iter()
        .filter(|&c| c < epoch)
    {
        let path = claims.join(old.to_string());
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        if file.try_lock().is_ok() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old epoch claim");
            }
        }
    }
}

fn claimed(claims: &Path) -> std::io::Result<Vec<u64>> {
    let mut found = Vec::new();
    match std::fs::read_dir(claims) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name();
                // Only names this code writes: digits, no leading zero.
                let parsed = name
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok().filter(|p| p.to_string() == n));
                found.extend(parsed);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    found.sort_unstable();
    Ok(found)
}

/// Where replay of a lane resumes: its checkpoint, or a segment still present below it. Replay
/// deletes a segment before its checkpoint moves past it, so such a segment was never
/// delivered (a failed delete, or a spool from before `next_segment`): it is read again, at the
/// price of duplicates, never skipped.
pub(crate) fn resume_point(dir: &Path) -> std::io::Result<Position> {
    let at = read_checkpoint(dir);
    match segments(dir)?.first() {
        Some(&first) if first < at.segment => {
            tracing::warn!(dir = %dir.display(), segment = first, "a spool segment below the checkpoint: replaying it");
            Ok(Position {
                segment: first,
                offset: 0,
            })
        }
        _ => Ok(at),
    }
}

pub(crate) struct Lane {
    /// The service whose events it holds; `""` for the root's segments of an older version.
    pub name: Arc<str>,
    pub dir: PathBuf,
    /// Whether the writer appends to it (every lane but the root's).
    pub writes: bool,
    /// Where the writer has committed up to.
    committed: Mutex<Position>,
    /// Woken when the writer commits.
    pub wake: Notify,
    /// Records accepted and not yet delivered or dead-lettered.
    pub depth: AtomicI64,
    /// Why replay is holding this lane's next record, for `/readyz`.
    waiting: Mutex<Option<String>>,
    /// When the record replay is working on was accepted (ms since the epoch); 0 when caught up.
    pub oldest_ms: std::sync::atomic::AtomicU64,
    /// What the upstream did to replay's calls since the window last learned.
    pub sample: Mutex<super::window::Sample>,
}

impl Lane {
    /// The lane in `dir`, writing (if `writes`) into its next segment of `epoch`.
    pub fn open(name: &str, dir: PathBuf, writes: bool, epoch: u64) -> std::io::Result<Lane> {
        std::fs::create_dir_all(&dir)?;
        let next = next_segment(&dir, epoch)?;
        Ok(Lane {
            name: Arc::from(name),
            dir,
            writes,
            committed: Mutex::new(Position {
                segment: next,
                offset: 0,
            }),
            wake: Notify::new(),
            depth: AtomicI64::new(0),
            waiting: Mutex::new(None),
            oldest_ms: std::sync::atomic::AtomicU64::new(0),
            sample: Mutex::new(Default::default()),
        })
    }

    pub fn position(&self) -> Position {
        *crate::lock(&self.committed)
    }

    pub fn publish(&self, position: Position) {
        *crate::lock(&self.committed) = position;
        self.wake.notify_one();
    }

    /// Replay is holding the lane's next record, and why (`None`: it is not).
    pub fn set_waiting(&self, why: Option<String>) {
        *crate::lock(&self.waiting) = why;
    }

    pub fn waiting(&self) -> Option<String> {
        crate::lock(&self.waiting).clone()
    }

    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }
}

/// The number of the next segment to write in `dir`, in `epoch`: past every segment of the
/// epoch present, and never behind the checkpoint (segments there are all delivered and
/// deleted; one numbered below it would never be read).
pub(crate) fn next_segment(dir: &Path, epoch: u64) -> std::io::Result<u64> {
    let base = epoch.saturating_mul(EPOCH);
    let end = base.saturating_add(EPOCH);
    let at = read_checkpoint(dir);
    let after_checkpoint = at.segment + u64::from(at.offset > 0);
    let after_files = segments(dir)?
        .into_iter()
        .rfind(|s| *s < end)
        .map_or(0, |s| s + 1);
    Ok(base.max(after_checkpoint).max(after_files))
}

/// The highest segment number a spool in `dir` has used (in a file or a checkpoint), in its
/// root or any lane.
pub(crate) fn highest_segment(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut highest = None;
    for lane in lane_dirs(dir)? {
        let at = read_checkpoint(&lane);
        let top = segments(&lane)?.last().copied().max(Some(at.segment));
        highest = highest.max(top);
    }
    Ok(highest)
}

/// The directories of a spool's lanes: the root (segments of older versions) and each
/// directory under `lanes/` (anything else there is ignored).
pub(crate) fn lane_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = vec![dir.to_path_buf()];
    match std::fs::read_dir(dir.join(super::LANES)) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    found.push(entry.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(found)
}

pub(crate) fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

/// Create segment `segment` in `dir`: a new file, never one another writer has.
pub(crate) fn open_segment(dir: &Path, segment: u64) -> std::io::Result<std::fs::File> {
    let path = segment_path(dir, segment);
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    // The new name must survive a crash too; if that cannot be made sure, the empty file goes,
    // so that the next attempt can create it again.
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

/// Segment numbers present in `dir`, in order.
pub(crate) fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        match entry.file_type() {
            Ok(kind) if kind.is_file() => {}
            // Not a file, or just deleted (by another process's replay).
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Where replay resumes: `segment offset`, or the start.
pub(crate) fn read_checkpoint(dir: &Path) -> Position {
    let text = std::fs::read_to_string(dir.join(CHECKPOINT)).unwrap_or_default();
    let mut parts = text.split_whitespace().map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(segment), Some(offset)) => Position { segment, offset },
        _ => Position {
            segment: 0,
            offset: 0,
        },
    }
}

/// A checkpoint line's length: two 20-digit numbers, a space and a newline.
const CHECKPOINT_LINE: usize = 42;

/// `at` as a checkpoint line: `{:020} {:020}\n` (u64's 20 digits at most), without `format!`:
/// replay writes one after each delivered record. The line starts as zeros and only a number's
/// own digits are written over them (seven or eight, not twenty).
fn checkpoint_line(at: Position) -> [u8; CHECKPOINT_LINE] {
    let mut line = [b'0'; CHECKPOINT_LINE];
    for (mut n, end) in [(at.segment, 20), (at.offset, 41)] {
        for digit in line[end - 20..end].iter_mut().rev() {
            if n == 0 {
                break;
            }
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    line[20] = b' ';
    line[41] = b'\n';
    line
}

/// Replay's progress, rewritten in place: a fixed-width `segment offset` line, so that an update
/// is one 42-byte write at offset 0, within one disk sector, that never leaves part of an older
/// line behind. It is not synced: a crash of the OS can repeat events, never lose them.
pub(crate) struct CheckpointFile {
    dir: PathBuf,
    file: Option<std::fs::File>,
    /// What the file holds, as last written: the same position is not written again.
    written: Option<Position>,
}

impl CheckpointFile {
    /// The checkpoint file of `dir`, and where replay resumes.
    pub fn open(dir: &Path) -> (CheckpointFile, Position) {
        let at = resume_point(dir).unwrap_or_else(|_| read_checkpoint(dir));
        let mut checkpoint = CheckpointFile {
            dir: dir.to_path_buf(),
            file: None,
            written: None,
        };
        // Rewritten at once, in the fixed width, whatever an older version left.
        checkpoint.write(at);
        (checkpoint, at)
    }

    pub fn write(&mut self, at: Position) {
        use std::os::unix::fs::FileExt;
        if self.written == Some(at) {
            return;
        }
        let line = checkpoint_line(at);
        if self.file.is_none() {
            self.file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.dir.join(CHECKPOINT))
                .and_then(|f| f.set_len(CHECKPOINT_LINE as u64).map(|()| f))
                .ok();
        }
        let written = self
            .file
            .as_ref()
            .is_some_and(|f| f.write_all_at(&line, 0).is_ok());
        self.written = written.then_some(at);
        if !written {
            // Opened again next time.
            self.file = None;
            tracing::error!(
                "cannot write the spool checkpoint; a restart may deliver events twice"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_line_is_the_fixed_width_format() {
        for (segment, offset) in [
            (0, 0),
            (1, 42),
            (u64::MAX, 7),
            (123_456, u64::MAX),
            (100, 1 << 20),
            (10 << 20, 1_000_000),
        ] {
            let line = checkpoint_line(Position { segment, offset });
            assert_eq!(
                line.to_vec(),
                format!("{segment:020} {offset:020}\n").into_bytes()
            );
        }
    }

    #[test]
    fn a_checkpoint_is_written_once_for_a_position() {
        let dir = std::env::temp_dir().join(format!("p13n-edge-checkpoint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (mut checkpoint, at) = CheckpointFile::open(&dir);
        let next = Position {
            segment: at.segment,
            offset: 42,
        };
        checkpoint.write(next);
        assert_eq!(read_checkpoint(&dir), next);
        // Changed behind its back: writing the position it last wrote is no write at all.
        std::fs::write(dir.join(CHECKPOINT), checkpoint_line(at)).unwrap();
        checkpoint.write(next);
        assert_eq!(read_checkpoint(&dir), at, "not written again");
        let later = Position { offset: 43, ..next };
        checkpoint.write(later);
        assert_eq!(read_checkpoint(&dir), later);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
