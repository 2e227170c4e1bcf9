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

mod adopt;
mod append;
mod dead;
mod lane;
mod reader;
mod record;
mod replay;
pub mod tools;
mod window;
mod writer;

pub use append::InFlight;
pub use record::{log_end, read_frame, wants_more, Frame, Record};
pub use replay::{Destination, Destinations, ReplaySettings, Replayer};

use crate::metrics;
use dashmap::DashMap;
use dead::DeadLetters;
use lane::Lane;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use writer::{write_loop, Job};

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
    /// Records replay sends at once in each lane (a visitor's own records one after another).
    pub replay_concurrency: usize,
    /// How much higher replay's nice value is than the daemon's (`spool.replay_nice`).
    pub replay_nice: u8,
    /// Most bytes of the dead-letter log.
    pub dead_letter_max_bytes: u64,
    /// How long a record whose route is gone waits before it becomes a dead letter.
    pub route_wait: std::time::Duration,
}

/// Where the writer has committed up to, in one lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// An accepted event's identity: the process run that accepted it and its number in that run.
/// Its `uuid` goes upstream with the event, so every send of it is recognisably the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId {
    pub run: u64,
    pub seq: u64,
}

impl EventId {
    /// A UUID (version 8, RFC 9562) holding all 64 bits of the run and the low 58 of the
    /// sequence: the same for every send of the event, distinct between events.
    pub fn uuid(&self) -> String {
        let payload = (u128::from(self.run) << 58) | (u128::from(self.seq) & ((1 << 58) - 1));
        let high = (payload >> 74) & ((1 << 48) - 1);
        let mid = (payload >> 62) & 0xfff;
        let low = payload & ((1 << 62) - 1);
        let u = (high << 80) | (0x8 << 76) | (mid << 64) | (0b10 << 62) | low;
        // Written digit by digit into a fixed buffer: `format!` cost a request some 3,000
        // instructions here, a `String` pushed one char at a time some 500.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // Where each byte's two digits go, the dashes between.
        const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut text = [b'-'; 36];
        for (byte, at) in u.to_be_bytes().into_iter().zip(AT) {
            text[at] = HEX[usize::from(byte >> 4)];
            text[at + 1] = HEX[usize::from(byte & 0xf)];
        }
        std::str::from_utf8(&text)
            .expect("hex digits and dashes are ASCII")
            .to_owned()
    }
}

/// Largest number of appends waiting for the writer; past it appends are refused at once.
const QUEUE: usize = 4096;
const LANES: &str = "lanes";

/// A visitor of a service: the unit whose events go upstream in order.
type VisitorKey = (Arc<str>, Box<str>);

pub struct Spool {
    settings: SpoolSettings,
    /// The directory's lock file. Its holder replays; during a graceful upgrade the new process
    /// serves (and appends to segments of its own) at once, and replays once the old one exits.
    lock: std::fs::File,
    /// Whether this process holds the lock.
    owns_lock: AtomicBool,
    /// The epoch of segment numbers this process writes in (see `lane::EPOCH`); a new one is
    /// claimed if a lane's writer reaches its end.
    epoch: AtomicU64,
    /// The claim files of the epochs this process has written in, locked for its life.
    claims: Mutex<Vec<(u64, std::fs::File)>>,
    jobs: mpsc::SyncSender<Job>,
    run: u64,
    next_seq: AtomicU64,
    /// Undelivered events per visitor: their new events queue behind these.
    pending: DashMap<VisitorKey, u32, ahash::RandomState>,
    depth: AtomicI64,
    disk_bytes: AtomicU64,
    lanes: DashMap<Arc<str>, Arc<Lane>, ahash::RandomState>,
    /// Lanes for the replayer to start, each sent once.
    new_lanes: tokio::sync::mpsc::UnboundedSender<Arc<Lane>>,
    lanes_to_start: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Arc<Lane>>>>,
    dead: DeadLetters,
    /// Records whose live call still runs: the replayer waits for its outcome.
    inflight: DashMap<(u64, u64), watch::Receiver<Option<bool>>, ahash::RandomState>,
}

impl Spool {
    /// Open (or create) the spool in `settings.dir`, count what it holds, start the writer.
    pub fn open(settings: SpoolSettings) -> Result<Arc<Spool>, SpoolError> {
        let io = |e: std::io::Error| SpoolError::Io(format!("{}: {e}", settings.dir.display()));
        std::fs::create_dir_all(settings.dir.join(LANES)).map_err(io)?;
        let lock = lock_file(&settings.dir).map_err(io)?;
        let owns_lock = lock.try_lock().is_ok();
        let (epoch, claim) = lane::claim_epoch(&settings.dir).map_err(io)?;
        if !owns_lock {
            tracing::warn!(dir = %settings.dir.display(), "another p13n-edge holds this spool: serving now, replaying once it exits");
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (new_lanes, lanes_to_start) = tokio::sync::mpsc::unbounded_channel();
        let dead = DeadLetters::open(&settings.dir, settings.dead_letter_max_bytes).map_err(io)?;
        let spool = Arc::new(Spool {
            settings: settings.clone(),
            lock,
            owns_lock: AtomicBool::new(owns_lock),
            epoch: AtomicU64::new(epoch),
            claims: Mutex::new(vec![(epoch, claim)]),
            jobs: tx,
            run: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            next_seq: AtomicU64::new(0),
            pending: DashMap::with_hasher(ahash::RandomState::new()),
            depth: AtomicI64::new(0),
            disk_bytes: AtomicU64::new(0),
            lanes: DashMap::default(),
            new_lanes,
            lanes_to_start: Mutex::new(Some(lanes_to_start)),
            dead,
            inflight: DashMap::default(),
        });
        if owns_lock {
            spool.adopt().map_err(io)?;
        } else {
            // Counted for the bound on disk now; what the other process leaves is counted
            // when the lock is ours.
            spool.measure().map_err(io)?;
        }
        // The writer holds the spool weakly: once the last user drops it, the job channel closes,
        // the writer ends and the directory's lock is released (a test's server, stopped).
        let writer = Arc::downgrade(&spool);
        std::thread::Builder::new()
            .name("p13n-edge spool".into())
            .spawn(move || write_loop(&writer, rx))
            .map_err(io)?;
        Ok(spool)
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// How long the record replay is working on in `service`'s lane has waited (zero when the
    /// lane is caught up).
    pub fn lag(&self, service: &str) -> std::time::Duration {
        let oldest = self
            .lanes
            .get(service)
            .map_or(0, |l| l.oldest_ms.load(Ordering::Relaxed));
        let ms = if oldest == 0 {
            0
        } else {
            now_ms().saturating_sub(oldest)
        };
        std::time::Duration::from_millis(ms)
    }

    /// Publish the age of the oldest record replay is working on, over every lane.
    fn publish_oldest(&self) {
        let oldest = self
            .lanes
            .iter()
            .map(|l| l.oldest_ms.load(Ordering::Relaxed))
            .filter(|&ms| ms > 0)
            .min();
        let age = oldest.map_or(0, |ms| now_ms().saturating_sub(ms));
        metrics::SPOOL_OLDEST_AGE.set(age as f64 / 1000.0);
    }

    /// `len` bytes of segments were removed.
    fn forget_bytes(&self, len: u64) {
        let before = self
            .disk_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(len))
            })
            .unwrap_or(0);
        metrics::SPOOL_BYTES.set(before.saturating_sub(len) as i64);
    }

    /// A new event's identity (and so its `uuid`).
    pub fn next_event(&self) -> EventId {
        EventId {
            run: self.run,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        }
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

    /// What an operator should know, for `/readyz`: lanes whose replay is held, dead letters.
    pub fn warnings(&self) -> Vec<String> {
        let mut found: Vec<String> = self
            .lanes
            .iter()
            .filter_map(|lane| {
                let why = lane.waiting()?;
                let name = if lane.name.is_empty() {
                    "(root)"
                } else {
                    &lane.name
                };
                Some(format!(
                    "spool lane {name}: {} events wait: {why}",
                    lane.depth()
                ))
            })
            .collect();
        found.sort();
        if !self.owns_lock.load(Ordering::Acquire) {
            found.push(
                "spool: replay waits for the previous p13n-edge to release the spool (graceful upgrade)"
                    .to_string(),
            );
        }
        let letters = self.dead.count();
        if letters > 0 {
            found.push(format!(
                "{letters} dead letters in {}: see `p13n-edge spool inspect`",
                self.dead.path().display()
            ));
        }
        found
    }

    /// The lane of `service`, made (and handed to the replayer) on first use.
    fn lane(&self, service: &Arc<str>) -> Result<Arc<Lane>, SpoolError> {
        if let Some(lane) = self.lanes.get(service) {
            return Ok(lane.clone());
        }
        let dir = self.settings.dir.join(LANES).join(&**service);
        let made = Lane::open(service, dir, true, self.epoch()).and_then(|lane| {
            // The lane's directory must survive a crash like the segment in it.
            std::fs::File::open(self.settings.dir.join(LANES))?.sync_all()?;
            Ok(lane)
        });
        let lane = made.map_err(|e| SpoolError::Io(e.to_string()))?;
        Ok(self.add_lane(lane))
    }

    fn add_lane(&self, lane: Lane) -> Arc<Lane> {
        let lane = Arc::new(lane);
        match self.lanes.entry(lane.name.clone()) {
            dashmap::mapref::entry::Entry::Occupied(found) => found.get().clone(),
            dashmap::mapref::entry::Entry::Vacant(slot) => {
                slot.insert(lane.clone());
                let _ = self.new_lanes.send(lane.clone());
                lane
            }
        }
    }

    /// The lanes for the replayer to run: those present now and every one made later.
    fn take_lanes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Arc<Lane>>> {
        crate::lock(&self.lanes_to_start).take()
    }
}

fn visitor_key(service: &Arc<str>, visitor: &str) -> VisitorKey {
    (service.clone(), Box::from(visitor))
}

/// Every whole record of a segment's bytes from `offset` on, corrupt frames skipped.
pub(crate) fn records(data: &[u8], mut offset: usize) -> impl Iterator<Item = Record> + '_ {
    std::iter::from_fn(move || loop {
        match read_frame(data, offset) {
            Frame::Record(r, next) => {
                offset = next;
                return Some(r);
            }
            Frame::Corrupt(next) => offset = next,
            Frame::End => return None,
        }
    })
}

/// The spool's lock file (not locked yet).
fn lock_file(dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
