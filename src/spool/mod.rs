//! The spool: the write-ahead home of every event answered 2xx without an upstream 2xx (stale
//! answers, `fast` hits, deadlines passed while a call is in flight). An event is on disk,
//! fsync'd, before its answer is sent; appends are group-committed by one writer thread, so a
//! burst shares one `fdatasync`. The log is a directory of checksummed segments, replayed by
//! `replay::Replayer` (each visitor's events in order) and bounded in bytes: when full, events
//! that would need it are refused, never dropped.
//!
//! A checksummed segment log rather than an embedded store: the access pattern is append and
//! read-once in order, which a log serves with one sequential write per batch and no compaction;
//! the format is 60 lines, torn tails are detected by construction, and it adds no dependency.

mod record;
mod replay;

pub use record::{read_frame, Frame, Record};
pub use replay::Replayer;

use crate::cache::CacheKey;
use crate::metrics;
use dashmap::DashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch, Notify};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full")]
    Full,
    #[error("spool I/O: {0}")]
    Io(String),
    #[error("the spool writer has stopped")]
    Stopped,
}

#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    /// `None`: `fdatasync` before acknowledging (survives power loss). `Some(d)`: acknowledge
    /// once written (survives a process crash) and `fdatasync` at most every `d`.
    pub sync_interval: Option<std::time::Duration>,
    /// Records replay sends at once (a visitor's own records one after another).
    pub replay_concurrency: usize,
}

/// Where the writer has committed up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

struct Job {
    frame: Vec<u8>,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

/// Largest number of appends waiting for the writer; past it appends are refused at once.
const QUEUE: usize = 4096;
const CHECKPOINT: &str = "checkpoint";

pub struct Spool {
    settings: SpoolSettings,
    /// Held for the life of the process: one process per spool directory.
    _lock: std::fs::File,
    jobs: mpsc::SyncSender<Job>,
    run: u64,
    next_seq: AtomicU64,
    /// Undelivered events per visitor: their new events queue behind these.
    pending: DashMap<CacheKey, u32>,
    depth: AtomicI64,
    disk_bytes: AtomicU64,
    committed: Mutex<Position>,
    wake: Notify,
    /// Records whose live call still runs: the replayer waits for its outcome.
    inflight: DashMap<(u64, u64), watch::Receiver<Option<bool>>>,
}

/// A record the caller's own call is still delivering: report the outcome with `finish`.
pub struct InFlight(watch::Sender<Option<bool>>);

impl InFlight {
    pub fn finish(self, delivered: bool) {
        let _ = self.0.send(Some(delivered));
    }
}

impl Spool {
    /// Open (or create) the spool in `settings.dir`, count what it holds, start the writer.
    pub fn open(settings: SpoolSettings) -> Result<Arc<Spool>, SpoolError> {
        let io = |e: std::io::Error| SpoolError::Io(format!("{}: {e}", settings.dir.display()));
        std::fs::create_dir_all(&settings.dir).map_err(io)?;
        let lock = lock(&settings.dir).map_err(io)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let segments = segments(&settings.dir).map_err(io)?;
        let first_new = segments.last().map_or(0, |s| s + 1);
        let spool = Arc::new(Spool {
            settings: settings.clone(),
            _lock: lock,
            jobs: tx,
            run: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            next_seq: AtomicU64::new(0),
            pending: DashMap::new(),
            depth: AtomicI64::new(0),
            disk_bytes: AtomicU64::new(0),
            committed: Mutex::new(Position {
                segment: first_new,
                offset: 0,
            }),
            wake: Notify::new(),
            inflight: DashMap::new(),
        });
        spool.recount(&segments).map_err(io)?;
        let file = open_segment(&settings.dir, first_new).map_err(io)?;
        let writer = spool.clone();
        std::thread::Builder::new()
            .name("p13n-edge spool".into())
            .spawn(move || writer.write_loop(rx, file, first_new))
            .map_err(io)?;
        Ok(spool)
    }

    /// Append an event and wait until it is on disk. With `in_flight`, the caller's call is
    /// still delivering it: the replayer waits for `InFlight::finish` before sending it again.
    pub async fn append(
        &self,
        key: &CacheKey,
        route: &str,
        body: bytes::Bytes,
        in_flight: bool,
    ) -> Result<Option<InFlight>, SpoolError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let record = Record {
            run: self.run,
            seq,
            enqueued_ms: now_ms(),
            service: key.service.to_string(),
            route: route.to_string(),
            visitor: key.visitor.to_string(),
            body,
        };
        let handle = in_flight.then(|| {
            let (tx, rx) = watch::channel(None);
            self.inflight.insert((self.run, seq), rx);
            InFlight(tx)
        });
        // Counted before the write, so the visitor's next event already queues behind it.
        *self.pending.entry(key.clone()).or_insert(0) += 1;
        let (done, wait) = oneshot::channel();
        let result = match self.jobs.try_send(Job {
            frame: record.encode(),
            done,
        }) {
            Ok(()) => wait.await.unwrap_or(Err(SpoolError::Stopped)),
            Err(mpsc::TrySendError::Full(_)) => Err(SpoolError::Full),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(SpoolError::Stopped),
        };
        match result {
            Ok(()) => {
                metrics::SPOOL_DEPTH.set(self.depth.fetch_add(1, Ordering::Relaxed) + 1);
                Ok(handle)
            }
            Err(e) => {
                self.inflight.remove(&(self.run, seq));
                self.unpend(key);
                metrics::SPOOL_REFUSED.inc();
                Err(e)
            }
        }
    }

    /// Whether the visitor has events waiting in the spool.
    pub fn has_pending(&self, key: &CacheKey) -> bool {
        !self.pending.is_empty() && self.pending.contains_key(key)
    }

    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Whether the spool directory can be written (for readiness).
    pub fn writable(&self) -> bool {
        let probe = self.settings.dir.join(".probe");
        let ok = std::fs::write(&probe, b"").is_ok();
        let _ = std::fs::remove_file(probe);
        ok
    }

    /// A record is delivered, or given up: it leaves the visitor's queue.
    fn settle(&self, record: &Record) {
        self.inflight.remove(&(record.run, record.seq));
        self.unpend(&CacheKey::new(
            &Arc::from(record.service.as_str()),
            &record.visitor,
        ));
        metrics::SPOOL_DEPTH.set(self.depth.fetch_sub(1, Ordering::Relaxed) - 1);
    }

    fn unpend(&self, key: &CacheKey) {
        self.pending.remove_if_mut(key, |_, n| {
            *n -= 1;
            *n == 0
        });
    }

    fn position(&self) -> Position {
        *crate::lock(&self.committed)
    }

    /// Count what a previous run left: pending per visitor, depth and bytes.
    fn recount(&self, segments: &[u64]) -> std::io::Result<()> {
        let start = read_checkpoint(&self.settings.dir);
        for &segment in segments {
            let data = std::fs::read(segment_path(&self.settings.dir, segment))?;
            self.disk_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            if segment < start.segment {
                continue;
            }
            let mut offset = if segment == start.segment {
                start.offset as usize
            } else {
                0
            };
            loop {
                match read_frame(&data, offset) {
                    Frame::Record(r, next) => {
                        let key = CacheKey::new(&Arc::from(r.service.as_str()), &r.visitor);
                        *self.pending.entry(key).or_insert(0) += 1;
                        self.depth.fetch_add(1, Ordering::Relaxed);
                        offset = next;
                    }
                    Frame::Corrupt(next) => offset = next,
                    Frame::End => break,
                }
            }
        }
        metrics::SPOOL_DEPTH.set(self.depth());
        metrics::SPOOL_BYTES.set(self.disk_bytes.load(Ordering::Relaxed) as i64);
        Ok(())
    }

    /// The writer thread: batch what is queued, write it, one `fdatasync`, then acknowledge.
    fn write_loop(
        self: Arc<Self>,
        jobs: mpsc::Receiver<Job>,
        mut file: std::fs::File,
        mut segment: u64,
    ) {
        let mut size = 0u64;
        // Written but not yet synced, in `sync_interval` mode: since when.
        let mut dirty_since: Option<Instant> = None;
        let interval = self.settings.sync_interval;
        loop {
            let first = match interval {
                None => jobs.recv().ok(),
                Some(d) => match jobs.recv_timeout(d) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        sync_if_dirty(&file, &mut dirty_since);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                },
            };
            let Some(first) = first else {
                sync_if_dirty(&file, &mut dirty_since);
                return;
            };
            let mut batch = vec![first];
            batch.extend(jobs.try_iter().take(QUEUE));
            let mut buf = Vec::new();
            let mut accepted = Vec::with_capacity(batch.len());
            let on_disk = self.disk_bytes.load(Ordering::Relaxed);
            for job in batch {
                if on_disk + (buf.len() + job.frame.len()) as u64 > self.settings.max_bytes {
                    let _ = job.done.send(Err(SpoolError::Full));
                } else {
                    buf.extend_from_slice(&job.frame);
                    accepted.push(job.done);
                }
            }
            if accepted.is_empty() {
                continue;
            }
            let written = file.write_all(&buf).and_then(|()| match interval {
                None => file.sync_data(),
                Some(d) => {
                    let since = *dirty_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= d {
                        dirty_since = None;
                        file.sync_data()
                    } else {
                        Ok(())
                    }
                }
            });
            if let Err(e) = written {
                tracing::error!(error = %e, "spool write failed; refusing this batch");
                let _ = file.set_len(size);
                for done in accepted {
                    let _ = done.send(Err(SpoolError::Io(e.to_string())));
                }
                continue;
            }
            size += buf.len() as u64;
            let total = self
                .disk_bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed)
                + buf.len() as u64;
            metrics::SPOOL_BYTES.set(total as i64);
            metrics::SPOOL_COMMITS.inc();
            self.publish(Position {
                segment,
                offset: size,
            });
            for done in accepted {
                let _ = done.send(Ok(()));
            }
            if size >= self.settings.segment_bytes {
                sync_if_dirty(&file, &mut dirty_since);
                match open_segment(&self.settings.dir, segment + 1) {
                    Ok(next) => {
                        file = next;
                        segment += 1;
                        size = 0;
                        self.publish(Position { segment, offset: 0 });
                    }
                    Err(e) => tracing::error!(error = %e, "cannot start a new spool segment"),
                }
            }
        }
    }

    fn publish(&self, position: Position) {
        *crate::lock(&self.committed) = position;
        self.wake.notify_one();
    }
}

/// In `sync_interval` mode: make what was written durable, if anything is pending.
fn sync_if_dirty(file: &std::fs::File, dirty_since: &mut Option<Instant>) {
    if dirty_since.take().is_some() {
        if let Err(e) = file.sync_data() {
            tracing::error!(error = %e, "spool fdatasync failed");
        }
    }
}

/// Take the spool's lock, waiting while another process holds it: during a graceful upgrade the
/// new process starts replaying only once the old one has exited.
fn lock(dir: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    if file.try_lock().is_err() {
        tracing::warn!(dir = %dir.display(), "another p13n-edge holds this spool; waiting for it to exit");
        file.lock()?;
    }
    Ok(file)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

fn open_segment(dir: &Path, segment: u64) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, segment))?;
    // The new name must survive a crash too.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Segment numbers present in `dir`, in order.
fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Where replay resumes: `segment offset`, or the start.
fn read_checkpoint(dir: &Path) -> Position {
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

/// Replay's progress, rewritten in place: a fixed-width `segment offset` line, so that an update
/// is one 42-byte write at offset 0, within one disk sector, that never leaves part of an older
/// line behind. It is not synced: a crash of the OS can repeat events, never lose them.
struct CheckpointFile {
    dir: PathBuf,
    file: Option<std::fs::File>,
}

impl CheckpointFile {
    /// The checkpoint file of `dir`, and where replay resumes.
    fn open(dir: &Path) -> (CheckpointFile, Position) {
        let at = read_checkpoint(dir);
        let mut checkpoint = CheckpointFile {
            dir: dir.to_path_buf(),
            file: None,
        };
        // Rewritten at once, in the fixed width, whatever an older version left.
        checkpoint.write(at);
        (checkpoint, at)
    }

    fn write(&mut self, at: Position) {
        use std::os::unix::fs::FileExt;
        let line = format!("{:020} {:020}\n", at.segment, at.offset);
        if self.file.is_none() {
            self.file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.dir.join(CHECKPOINT))
                .and_then(|f| f.set_len(line.len() as u64).map(|()| f))
                .ok();
        }
        let written = self
            .file
            .as_ref()
            .is_some_and(|f| f.write_all_at(line.as_bytes(), 0).is_ok());
        if !written {
            // Opened again next time.
            self.file = None;
            tracing::error!(
                "cannot write the spool checkpoint; a restart may deliver events twice"
            );
        }
    }
}
