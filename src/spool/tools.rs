//! `p13n-edge spool inspect` and `p13n-edge spool requeue`, for operators: what a spool
//! directory holds (events waiting per route, dead letters), and dead letters sent back to
//! their lanes once their cause is fixed. They work on the directory alone, so on a stopped
//! daemon's spool too; `requeue` insists on it, since it writes segments of its own.

use super::dead::FILE as DEAD_LETTERS;
use super::lane::{self, open_segment, segment_path, segments};
use super::{now_ms, records, Record, LANES};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("a running p13n-edge holds {0}: stop it first")]
    Running(String),
    #[error("a dead letter names service {0:?}, which cannot be a lane")]
    BadService(String),
    #[error("{0} is not a p13n-edge spool (no lanes/ and no dead-letters.log)")]
    NotASpool(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ToolError + '_ {
    move |e| ToolError::Io(path.display().to_string(), e)
}

/// Events counted per (service, route), with the oldest.
#[derive(Default)]
struct Tally {
    events: u64,
    oldest_ms: Option<u64>,
    by_route: BTreeMap<(String, String), u64>,
}

impl Tally {
    fn add(&mut self, r: &Record) {
        self.events += 1;
        self.oldest_ms = Some(
            self.oldest_ms
                .map_or(r.enqueued_ms, |o| o.min(r.enqueued_ms)),
        );
        *self
            .by_route
            .entry((r.service.clone(), r.route.clone()))
            .or_insert(0) += 1;
    }

    fn to_json(&self) -> Value {
        let now = now_ms();
        json!({
            "events": self.events,
            "oldest_age_seconds": self.oldest_ms.map(|o| now.saturating_sub(o) as f64 / 1000.0),
            "by_route": self.by_route.iter().map(|((service, route), n)| {
                json!({"service": service, "route": route, "events": n})
            }).collect::<Vec<_>>(),
        })
    }
}

fn lane_dirs(dir: &Path) -> Result<Vec<PathBuf>, ToolError> {
    lane::lane_dirs(dir).map_err(io(dir))
}

fn read(path: &Path) -> Result<Vec<u8>, ToolError> {
    match std::fs::read(path) {
        Ok(data) => Ok(data),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Whether a daemon holds the spool's lock.
fn running(dir: &Path) -> bool {
    std::fs::File::open(dir.join("lock")).is_ok_and(|f| f.try_lock().is_err())
}

/// What the spool in `dir` holds: events waiting for replay and dead letters, per route.
pub fn inspect(dir: &Path) -> Result<Value, ToolError> {
    let mut pending = Tally::default();
    for lane in lane_dirs(dir)? {
        let start = lane::resume_point(&lane).map_err(io(&lane))?;
        for segment in segments(&lane).map_err(io(&lane))? {
            if segment < start.segment {
                continue;
            }
            let data = read(&segment_path(&lane, segment))?;
            let from = if segment == start.segment {
                start.offset as usize
            } else {
                0
            };
            records(&data, from).for_each(|r| pending.add(&r));
        }
    }
    let mut dead = Tally::default();
    records(&read(&dir.join(DEAD_LETTERS))?, 0).for_each(|r| dead.add(&r));
    Ok(json!({
        "dir": dir.display().to_string(),
        "daemon_running": running(dir),
        "pending": pending.to_json(),
        "dead_letters": dead.to_json(),
    }))
}

/// Send every dead letter back to its service's lane, as a new segment after those there, and
/// empty the dead-letter log; the number requeued. The daemon must be stopped.
pub fn requeue(dir: &Path) -> Result<usize, ToolError> {
    if !dir.join(LANES).is_dir() && !dir.join(DEAD_LETTERS).is_file() {
        return Err(ToolError::NotASpool(dir.display().to_string()));
    }
    let lock_path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(ToolError::Running(dir.display().to_string()));
    }
    let path = dir.join(DEAD_LETTERS);
    let data = read(&path)?;
    // Written like a daemon that opens the spool: in an epoch of its own, after all before.
    let (epoch, _claim) = lane::claim_epoch(dir).map_err(io(dir))?;
    let mut by_service: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut count = 0;
    for record in records(&data, 0) {
        let safe = !record.service.is_empty()
            && record
                .service
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !safe {
            return Err(ToolError::BadService(record.service));
        }
        by_service
            .entry(record.service.clone())
            .or_default()
            .extend_from_slice(&record.encode());
        count += 1;
    }
    for (service, frames) in &by_service {
        let lane = dir.join(LANES).join(service);
        std::fs::create_dir_all(&lane).map_err(io(&lane))?;
        let next = lane::next_segment(&lane, epoch).map_err(io(&lane))?;
        let mut file = open_segment(&lane, next).map_err(io(&lane))?;
        file.write_all(frames)
            .and_then(|()| file.sync_all())
            .map_err(io(&lane))?;
    }
    if path.exists() {
        std::fs::remove_file(&path).map_err(io(&path))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(count)
}
