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
mod dead;
mod lane;
mod reader;
mod record;
mod replay;
pub mod tools;
mod window;
mod writer;

pub use record::{read_frame, Frame, Record};
pub use replay::{Destination, Destinations, ReplaySettings, Replayer};

use crate::cache::CacheKey;
use crate::metrics;
use dashmap::DashMap;
use dead::DeadLetters;
use lane::Lane;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch};
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
        // Written digit by digit: `format!` cost a request some 3,000 instructions here.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(36);
        for i in 0..32 {
            if matches!(i, 8 | 12 | 16 | 20) {
                text.push('-');
            }
            text.push(HEX[((u >> (124 - 4 * i)) & 0xf) as usize] as char);
        }
        text
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
    lanes: DashMap<Arc<str>, Arc<Lane>>,
    /// Lanes for the replayer to start, each sent once.
    new_lanes: tokio::sync::mpsc::UnboundedSender<Arc<Lane>>,
    lanes_to_start: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Arc<Lane>>>>,
    dead: DeadLetters,
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
            lanes: DashMap::new(),
            new_lanes,
            lanes_to_start: Mutex::new(Some(lanes_to_start)),
            dead,
            inflight: DashMap::new(),
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
        let record = Record {
            run: event.run,
            seq: event.seq,
            enqueued_ms: now_ms(),
            service: key.service.to_string(),
            route: route.to_string(),
            visitor: key.visitor.to_string(),
            body,
            route_id: key.route.to_string(),
        };
        let handle = in_flight.then(|| {
            let (tx, rx) = watch::channel(None);
            self.inflight.insert((event.run, event.seq), rx);
            InFlight(tx)
        });
        let visitor = visitor_key(&key.service, &key.visitor);
        // Counted before the write, so the visitor's next event already queues behind it.
        *self.pending.entry(visitor.clone()).or_insert(0) += 1;
        let (done, wait) = oneshot::channel();
        let result = match self.jobs.try_send(Job {
            lane: lane.clone(),
            frame: record.encode(),
            done,
        }) {
            Ok(()) => wait.await.unwrap_or(Err(SpoolError::Stopped)),
            Err(mpsc::TrySendError::Full(_)) => Err(SpoolError::Full),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(SpoolError::Stopped),
        };
        match result {
            Ok(()) => {
                lane.depth.fetch_add(1, Ordering::Relaxed);
                metrics::SPOOL_DEPTH.set(self.depth.fetch_add(1, Ordering::Relaxed) + 1);
                Ok(handle)
            }
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

    /// A record is delivered or dead-lettered: it leaves the visitor's queue.
    fn settle(&self, lane: &Lane, record: &Record) {
        self.inflight.remove(&(record.run, record.seq));
        self.unpend(&visitor_key(
            &Arc::from(record.service.as_str()),
            &record.visitor,
        ));
        lane.depth.fetch_sub(1, Ordering::Relaxed);
        metrics::SPOOL_DEPTH.set(self.depth.fetch_sub(1, Ordering::Relaxed) - 1);
    }

    fn unpend(&self, key: &VisitorKey) {
        self.pending.remove_if_mut(key, |_, n| {
            *n -= 1;
            *n == 0
        });
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
mod tests {
    use super::*;

    proptest::proptest! {
        /// The UUID is version 8, variant 10, and spells the 128 bits as `format!` would.
        #[test]
        fn event_uuids_are_version_8_and_spell_their_bits(run: u64, seq: u64) {
            let id = EventId { run, seq };
            let text = id.uuid();
            let bits = u128::from_str_radix(&text.replace('-', ""), 16).unwrap();
            let hex = format!("{bits:032x}");
            let spelled = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
            proptest::prop_assert_eq!(&text, &spelled);
            proptest::prop_assert_eq!((bits >> 76) & 0xf, 8);
            proptest::prop_assert_eq!((bits >> 62) & 0b11, 0b10);
            // Distinct events, distinct UUIDs: the run whole and the sequence's low 58 bits.
            let other = EventId { run, seq: seq.wrapping_add(1) };
            proptest::prop_assert_ne!(text, other.uuid());
        }
    }

    fn settings(dir: &Path) -> SpoolSettings {
        SpoolSettings {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 24,
            segment_bytes: 1 << 20,
            sync_interval: None,
            replay_concurrency: 4,
            dead_letter_max_bytes: 1 << 20,
            route_wait: std::time::Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn two_processes_during_an_upgrade_never_write_one_segment() {
        let dir = std::env::temp_dir().join(format!("p13n-edge-epochs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The running process, and the new one started beside it (another open of the lock
        // file, as another process's would be: it does not get the lock).
        let old = Spool::open(settings(&dir)).unwrap();
        let new = Spool::open(settings(&dir)).unwrap();
        assert!(old.owns_lock.load(Ordering::Relaxed));
        assert!(!new.owns_lock.load(Ordering::Relaxed));
        // A service neither has spooled for yet: the new process writes first.
        let key = CacheKey::new(&Arc::from("svc"), &Arc::from("1/db/t/web"), "v");
        let body = bytes::Bytes::from_static(br#"{"td_client_id":"v"}"#);
        for spool in [&new, &old] {
            let event = spool.next_event();
            spool
                .append(&key, "/db/t", event, body.clone(), false)
                .await
                .unwrap();
        }
        let at = |s: &Spool| s.lanes.get("svc").unwrap().position();
        let (old_at, new_at) = (at(&old), at(&new));
        assert!(
            old_at.segment < new_at.segment,
            "old {old_at:?}, new {new_at:?}: the old one's segments come first"
        );
        let lane = dir.join(LANES).join("svc");
        for at in [old_at, new_at] {
            let data = std::fs::read(lane::segment_path(&lane, at.segment)).unwrap();
            assert_eq!(records(&data, 0).count(), 1, "one writer per segment");
        }
        drop((old, new));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_process_claims_an_epoch_of_its_own_even_before_it_writes() {
        let dir = std::env::temp_dir().join(format!("p13n-edge-claims-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Nothing is ever spooled: no segment tells the epochs apart.
        let first = Spool::open(settings(&dir)).unwrap();
        let second = Spool::open(settings(&dir)).unwrap();
        drop(first);
        let third = Spool::open(settings(&dir)).unwrap();
        let (b, c) = (second.epoch(), third.epoch());
        assert!(
            c > b,
            "the third process ({c}) shares no epoch with the second ({b})"
        );
        // A writer at the end of its epoch moves to a newly claimed one, never into another's.
        let last = (c + 1) * lane::EPOCH - 1;
        let next = third.segment_after(last).unwrap();
        assert!(next / lane::EPOCH > c && third.epoch() == next / lane::EPOCH);
        assert_eq!(third.segment_after(next).unwrap(), next + 1);
        drop((second, third));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_upgrades_in_a_row_leave_the_middle_processs_segments_alone_while_it_lives() {
        let dir = std::env::temp_dir().join(format!("p13n-edge-middle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Spool::open(settings(&dir)).unwrap();
        let middle = Spool::open(settings(&dir)).unwrap();
        let last = Spool::open(settings(&dir)).unwrap();
        let of = |s: &Spool| s.epoch() * lane::EPOCH;
        assert!(last.may_replay(of(&last)), "its own");
        assert!(
            !last.may_replay(of(&middle)),
            "the middle one still writes there"
        );
        // The first one exits; the last one takes over, but the middle one still lives.
        drop(first);
        last.adopt().unwrap();
        assert!(!last.may_replay(of(&middle)));
        assert!(dir.join("epochs").join(middle.epoch().to_string()).exists());
        // Once the middle one is gone too, what it left is the last one's to replay.
        let middle_epoch = of(&middle);
        drop(middle);
        assert!(last.may_replay(middle_epoch));
        drop(last);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_segment_below_the_checkpoint_is_replayed_not_skipped() {
        let dir = std::env::temp_dir().join(format!("p13n-edge-below-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (mut checkpoint, _) = lane::CheckpointFile::open(&dir);
        checkpoint.write(Position {
            segment: 5,
            offset: 0,
        });
        std::fs::write(lane::segment_path(&dir, 2), b"").unwrap();
        let at = lane::resume_point(&dir).unwrap();
        assert_eq!((at.segment, at.offset), (2, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
