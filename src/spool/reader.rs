//! Replay's reader: a lane's segments read in chunks from an open file, up to what the writer
//! has committed, and cut into batches of whole records (corrupt frames skipped and counted).

use super::lane::segment_path;
use super::{Frame, Position, Record};
use crate::metrics;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Bytes read from a segment at a time.
pub(super) const CHUNK: usize = 1 << 20;

/// A window on one segment file: `buf` holds its bytes from `base` on.
pub(super) struct SegmentReader {
    dir: PathBuf,
    segment: Option<u64>,
    file: Option<Arc<std::fs::File>>,
    base: u64,
    buf: Vec<u8>,
}

impl SegmentReader {
    pub(super) fn new(dir: PathBuf) -> SegmentReader {
        SegmentReader {
            dir,
            segment: None,
            file: None,
            base: 0,
            buf: Vec::new(),
        }
    }

    /// The bytes of `at.segment` from `at.offset`, up to `limit` or the end of the file, with at
    /// least `want` of them when there are that many; and whether that is all there is. A
    /// missing segment reads as empty; any other read error is returned, and nothing is skipped.
    pub(super) async fn view(
        &mut self,
        at: Position,
        limit: u64,
        want: usize,
    ) -> std::io::Result<(&[u8], bool)> {
        let end = self.base + self.buf.len() as u64;
        if self.segment != Some(at.segment) || at.offset < self.base || at.offset > end {
            self.restart_at(at);
            self.segment = Some(at.segment);
        } else if at.offset - self.base >= CHUNK as u64 {
            // Drop what was replayed, now and then rather than after every record.
            self.buf.drain(..(at.offset - self.base) as usize);
            self.base = at.offset;
        }
        let target = limit.min(at.offset.saturating_add(want as u64));
        let mut complete = self.base + self.buf.len() as u64 >= limit;
        if !complete && self.base + (self.buf.len() as u64) < target {
            let path = segment_path(&self.dir, at.segment);
            let file = self.file.take();
            let mut buf = std::mem::take(&mut self.buf);
            let base = self.base;
            let read = tokio::task::spawn_blocking(move || {
                let file = match file {
                    Some(f) => f,
                    None => Arc::new(std::fs::File::open(path)?),
                };
                let at_eof = read_until(&file, base, &mut buf, target)?;
                Ok::<_, std::io::Error>((file, buf, at_eof))
            })
            .await;
            match read {
                Ok(Ok((file, buf, at_eof))) => {
                    self.file = Some(file);
                    self.buf = buf;
                    complete = at_eof || self.base + self.buf.len() as u64 >= limit;
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.restart_at(at);
                    complete = true;
                }
                Ok(Err(e)) => {
                    self.restart_at(at);
                    return Err(e);
                }
                Err(e) => {
                    self.restart_at(at);
                    return Err(std::io::Error::other(e));
                }
            }
        }
        Ok((self.buffered(at, limit), complete))
    }

    /// The bytes of `at.segment` from `at.offset` already read, up to `limit`: no I/O.
    pub(super) fn buffered(&self, at: Position, limit: u64) -> &[u8] {
        let end = self.base + self.buf.len() as u64;
        if self.segment != Some(at.segment) || at.offset < self.base || at.offset > end {
            return &[];
        }
        let from = (at.offset - self.base) as usize;
        let upto = (limit.min(end) - self.base) as usize;
        &self.buf[from..upto.max(from)]
    }

    /// Forget what was read: the next view opens the segment again at `at`.
    pub(super) fn restart_at(&mut self, at: Position) {
        self.segment = None;
        self.file = None;
        self.base = at.offset;
        self.buf.clear();
    }
}

/// Append the file's bytes from `base + buf.len()` to `buf`, until `target` or the end of the
/// file; whether the end was reached.
fn read_until(
    file: &std::fs::File,
    base: u64,
    buf: &mut Vec<u8>,
    target: u64,
) -> std::io::Result<bool> {
    loop {
        let at = base + buf.len() as u64;
        if at >= target {
            return Ok(false);
        }
        let len = buf.len();
        let more = (target - at).min(CHUNK as u64) as usize;
        buf.resize(len + more, 0);
        let n = file.read_at(&mut buf[len..], at)?;
        buf.truncate(len + n);
        if n == 0 {
            return Ok(true);
        }
    }
}

/// What one pass over the spool found.
pub(super) enum Batch {
    /// Records to deliver, each with the offset just past it, and where the log stands after
    /// them (corrupt frames skipped).
    Records(Vec<(Record, u64)>, u64),
    /// Nothing more in this segment for now.
    End,
    /// The segment could not be read: try again later, skip nothing.
    Unreadable(std::io::Error),
}

/// Up to `most` records from `at`, skipping corrupt frames. From what was already read when
/// that holds `most` whole records: replay reads a few records at a time as answers free room,
/// and a read in the blocking pool for each would cost a thread's wake-up (and under load
/// milliseconds) every time.
pub(super) async fn next_batch(
    reader: &mut SegmentReader,
    at: Position,
    limit: u64,
    most: usize,
) -> Batch {
    if let Some(batch) = cut(reader.buffered(at, limit), at, most, true) {
        return batch;
    }
    let mut want = CHUNK;
    loop {
        let (data, complete) = match reader.view(at, limit, want).await {
            Ok(view) => view,
            Err(e) => return Batch::Unreadable(e),
        };
        if let Some(batch) = cut(data, at, most, false) {
            return batch;
        }
        if complete || data.len() < want || !super::wants_more(data) {
            return Batch::End;
        }
        // A record larger than what was read: read more.
        want = want.saturating_mul(2);
    }
}

/// The records of `data` (the segment's bytes from `at`), up to `most`, corrupt frames skipped;
/// `None` if it holds none. With `whole`, only if it holds `most` of them, and corrupt frames
/// are neither counted nor skipped yet: they are once read for good (`whole` false).
fn cut(data: &[u8], at: Position, most: usize, whole: bool) -> Option<Batch> {
    let mut records = Vec::new();
    let mut offset = 0;
    while records.len() < most {
        match super::read_frame(data, offset) {
            Frame::Record(record, next) => {
                records.push((record, at.offset + next as u64));
                offset = next;
            }
            Frame::Corrupt(_) if whole => return None,
            Frame::Corrupt(next) => {
                metrics::SPOOL_CORRUPT.inc();
                tracing::error!(
                    segment = at.segment,
                    offset = at.offset + offset as u64,
                    "skipping a corrupt spool record"
                );
                offset = next;
            }
            Frame::End => break,
        }
    }
    if whole && records.len() < most {
        return None;
    }
    (offset > 0).then(|| Batch::Records(records, at.offset + offset as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_reads_stop_at_the_target_or_the_end() {
        let dir = std::env::temp_dir().join(format!("p13n-edge-read-until-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("seg");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut buf = b"234".to_vec();
        assert!(!read_until(&file, 2, &mut buf, 7).unwrap());
        assert_eq!(buf, b"23456");
        assert!(read_until(&file, 2, &mut buf, 100).unwrap());
        assert_eq!(buf, b"23456789");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
