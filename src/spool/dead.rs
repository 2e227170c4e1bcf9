//! The dead-letter log: spooled events the upstream refused as invalid (3004, 413), or whose
//! route stayed gone, kept on disk beside the spool in the spool's own record format, so an
//! event answered 2xx is never thrown away. Bounded in bytes: past the bound, replay holds the
//! record in its lane instead. `p13n-edge spool inspect` shows them and `requeue` sends them
//! back to their lanes once the cause is fixed.

use super::{records, Record};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub(crate) const FILE: &str = "dead-letters.log";

pub(crate) struct DeadLetters {
    path: PathBuf,
    max_bytes: u64,
    bytes: AtomicU64,
    count: AtomicU64,
    /// One append at a time, so that records never interleave.
    writing: Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DeadLetterError {
    #[error("the dead-letter log is full")]
    Full,
    #[error("dead-letter log: {0}")]
    Io(#[from] std::io::Error),
}

impl DeadLetters {
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<DeadLetters> {
        let letters = DeadLetters {
            path: dir.join(FILE),
            max_bytes,
            bytes: AtomicU64::new(0),
            count: AtomicU64::new(0),
            writing: Mutex::new(()),
        };
        letters.recount()?;
        Ok(letters)
    }

    /// Count what the log holds (at open, and once another process that wrote it is gone).
    pub fn recount(&self) -> std::io::Result<()> {
        let _one = crate::lock(&self.writing);
        let data = match std::fs::read(&self.path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let count = records(&data, 0).count() as u64;
        self.bytes.store(data.len() as u64, Ordering::Relaxed);
        self.count.store(count, Ordering::Relaxed);
        crate::metrics::SPOOL_DEAD_LETTERS.set(count as i64);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Append a record and make it durable (blocking: call from a blocking thread).
    pub fn append(&self, record: &Record) -> Result<(), DeadLetterError> {
        let frame = record.encode();
        let _one = crate::lock(&self.writing);
        let bytes = self.bytes.load(Ordering::Relaxed);
        if bytes + frame.len() as u64 > self.max_bytes {
            return Err(DeadLetterError::Full);
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let written = file.write_all(&frame).and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = file.set_len(bytes);
            return Err(e.into());
        }
        if bytes == 0 {
            // A new file: its name must survive a crash too.
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        self.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::SPOOL_DEAD_LETTERS.set(count as i64);
        Ok(())
    }
}
