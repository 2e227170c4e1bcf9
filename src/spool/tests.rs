//! The spool: event UUIDs, and processes sharing a spool directory across graceful upgrades.

use super::*;
use crate::cache::CacheKey;

/// A known answer: the layout, whatever the code computing it.
#[test]
fn an_event_uuid_is_its_run_and_sequence() {
    let id = EventId {
        run: 0x0123_4567_89ab_cdef,
        seq: 0x0fed_cba9_8765_4321,
    };
    assert_eq!(id.uuid(), "01234567-89ab-8cde-bfed-cba987654321");
}

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
        // The layout, pinned: a record replayed by another version must keep its UUID.
        let payload = (u128::from(run) << 58) | (u128::from(seq) & ((1 << 58) - 1));
        let expected = (((payload >> 74) & ((1 << 48) - 1)) << 80)
            | (0x8 << 76)
            | (((payload >> 62) & 0xfff) << 64)
            | (0b10 << 62)
            | (payload & ((1 << 62) - 1));
        proptest::prop_assert_eq!(bits, expected);
        // Distinct events, distinct UUIDs: the run whole and the sequence's low 58 bits.
        let other = EventId { run, seq: seq.wrapping_add(1) };
        proptest::prop_assert_ne!(text, other.uuid());
    }
}

/// A directory of this test process's own, `p13n-edge-{name}-{pid}`, empty.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("p13n-edge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn settings(dir: &Path) -> SpoolSettings {
    SpoolSettings {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 24,
        segment_bytes: 1 << 20,
        sync_interval: None,
        replay_concurrency: 4,
        replay_nice: 0,
        dead_letter_max_bytes: 1 << 20,
        route_wait: std::time::Duration::from_secs(60),
    }
}

#[tokio::test]
async fn two_processes_during_an_upgrade_never_write_one_segment() {
    let dir = scratch("epochs");
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
    let dir = scratch("claims");
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
    let dir = scratch("middle");
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
    let dir = scratch("below");
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

/// Replay can settle a record as soon as the writer has committed it, before the append that
/// wrote it runs again: the depth must count the record from the start, or it reads low (and
/// a shutdown drain, waiting for a depth of zero, ends with a record undelivered).
#[tokio::test]
async fn a_record_settled_before_its_append_resumes_is_still_counted() {
    use std::future::Future;
    let dir = scratch("depth");
    let spool = Spool::open(settings(&dir)).unwrap();
    let key = CacheKey::new(&Arc::from("svc"), &Arc::from("1/db/t/web"), "v");
    let body = bytes::Bytes::from_static(br#"{"td_client_id":"v"}"#);
    let event = spool.next_event();
    let mut append = Box::pin(spool.append(&key, "/db/t", event, body, false));
    // Queued with the writer; not polled again until replay has settled the record.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(append.as_mut().poll(&mut cx).is_pending());
    let lane = spool.lanes.get("svc").unwrap().clone();
    until(|| lane.position().offset > 0);
    let record = Record {
        run: event.run,
        seq: event.seq,
        enqueued_ms: 0,
        service: "svc".into(),
        route: "/db/t".into(),
        visitor: "v".into(),
        body: bytes::Bytes::new(),
        route_id: String::new(),
    };
    spool.settle(&lane, &record);
    assert_eq!(spool.depth(), 0, "the depth reads low");
    assert_eq!(lane.depth(), 0);
    append.await.unwrap();
    assert_eq!(spool.depth(), 0, "the record is counted once");
    assert_eq!(lane.depth(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Wait for `done`, 10 s at most.
fn until(done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "never"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

async fn append_for(spool: &Spool, visitor: &str) {
    let key = CacheKey::new(&Arc::from("svc"), &Arc::from("1/db/t/web"), visitor);
    let body = bytes::Bytes::from(format!(r#"{{"td_client_id":"{visitor}"}}"#));
    let event = spool.next_event();
    spool
        .append(&key, "/db/t", event, body, false)
        .await
        .unwrap();
}

/// A segment sets disk aside after its records, so that most appends change no file size (a
/// cheaper `fdatasync`). The zeros read as its end, to replay; `max_bytes` counts the records,
/// not the space set aside; a writer that stops gives the space back, and what a crash leaves
/// (zeros, and a write it tore) the next process trims, and counts and replays the records.
#[tokio::test]
async fn a_segment_sets_space_aside_and_what_follows_its_records_reads_as_its_end() {
    let dir = scratch("prealloc");
    let settings = |dir: &Path| SpoolSettings {
        segment_bytes: 4 << 20,
        ..settings(dir)
    };
    let spool = Spool::open(settings(&dir)).unwrap();
    for visitor in ["a", "b", "c"] {
        append_for(&spool, visitor).await;
    }
    let lane = spool.lanes.get("svc").unwrap().clone();
    // The writer publishes its position just after it acknowledges.
    until(|| lane.position().offset == spool.disk_bytes.load(Ordering::Relaxed));
    let at = lane.position();
    let path = lane::segment_path(&lane.dir, at.segment);
    let size = || std::fs::metadata(&path).unwrap().len();
    // The first append (one record, as long as each of the others) set 1 MiB aside past it.
    assert_eq!(size(), (1 << 20) + at.offset / 3, "space set aside");
    assert!(at.offset > 0 && at.offset < size());
    spool.measure().unwrap();
    assert_eq!(
        spool.disk_bytes.load(Ordering::Relaxed),
        at.offset,
        "its own segment is measured by its records"
    );
    // Replay reads the records, then the end: not a corrupt frame at the zeros.
    let mut reader = reader::SegmentReader::new(lane.dir.clone());
    let from = Position {
        segment: at.segment,
        offset: 0,
    };
    let reader::Batch::Records(found, end) =
        reader::next_batch(&mut reader, from, u64::MAX, 512).await
    else {
        panic!("no records")
    };
    let visitors: Vec<&str> = found.iter().map(|(r, _)| r.visitor.as_str()).collect();
    assert_eq!((visitors, end), (vec!["a", "b", "c"], at.offset));
    let after = Position {
        segment: at.segment,
        offset: end,
    };
    assert!(matches!(
        reader::next_batch(&mut reader, after, u64::MAX, 512).await,
        reader::Batch::End
    ));
    // The writer holds the spool only while it writes; once it is gone, the writer stops.
    until(|| Arc::strong_count(&spool) == 1);
    drop(spool);
    until(|| size() == at.offset);
    // A crash instead: the space set aside, and a torn write in it.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(1 << 20).unwrap();
    let mut torn = record_for("d", 9).encode();
    torn[20..].fill(0);
    std::os::unix::fs::FileExt::write_all_at(&file, &torn, at.offset).unwrap();
    let next = Spool::open(settings(&dir)).unwrap();
    assert_eq!(next.depth(), 3, "the three records, not the torn one");
    assert_eq!(size(), at.offset, "trimmed after its last record");
    assert_eq!(next.disk_bytes.load(Ordering::Relaxed), at.offset);
    drop(next);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The space set aside stops at `segment_bytes` and appends past it extend the segment, so a
/// segment rolls over full and ends at its last record: what it weighs when replay deletes it
/// is what was counted for it.
#[tokio::test]
async fn a_full_segment_ends_at_its_last_record() {
    let dir = scratch("rollover");
    let spool = Spool::open(SpoolSettings {
        segment_bytes: 4096,
        ..settings(&dir)
    })
    .unwrap();
    let mut n = 0;
    let lane = loop {
        append_for(&spool, &format!("visitor-{n}")).await;
        n += 1;
        let lane = spool.lanes.get("svc").unwrap().clone();
        if lane.position().segment > lane::segments(&lane.dir).unwrap()[0] {
            break lane;
        }
    };
    let first = lane::segments(&lane.dir).unwrap()[0];
    let data = std::fs::read(lane::segment_path(&lane.dir, first)).unwrap();
    assert!(data.len() >= 4096);
    assert_eq!(log_end(&data), data.len(), "no zeros after the last record");
    let count = records(&data, 0).count();
    // The writer acknowledges before it rolls over: the last append may be in the next one.
    until(|| {
        let written = data.len() as u64 + lane.position().offset;
        spool.disk_bytes.load(Ordering::Relaxed) == written
    });
    let at = lane.position();
    let rest = std::fs::read(lane::segment_path(&lane.dir, at.segment)).unwrap();
    assert_eq!(count + records(&rest[..at.offset as usize], 0).count(), n);
    drop(spool);
    let _ = std::fs::remove_dir_all(&dir);
}

fn record_for(visitor: &str, seq: u64) -> Record {
    Record {
        run: 1,
        seq,
        enqueued_ms: 0,
        service: "svc".into(),
        route: "/db/t".into(),
        visitor: visitor.into(),
        body: bytes::Bytes::from(format!(r#"{{"td_client_id":"{visitor}"}}"#)),
        route_id: String::new(),
    }
}

/// Only a segment whose writer has ended is trimmed: not one a live process still writes (the
/// middle one of two upgrades in a row), and never before where replay resumes: a record
/// already delivered that rots does not take the undelivered ones after it along.
#[tokio::test]
async fn only_an_ended_writers_segment_is_trimmed_and_from_where_replay_resumes() {
    let dir = scratch("trim");
    let first = Spool::open(settings(&dir)).unwrap();
    let middle = Spool::open(settings(&dir)).unwrap();
    append_for(&middle, "m").await;
    let lane_dir = dir.join(LANES).join("svc");
    let live = lane::segment_path(&lane_dir, middle.epoch() * lane::EPOCH);
    let set_aside = std::fs::metadata(&live).unwrap().len();
    // The first exits; the last adopts while the middle one still writes.
    drop(first);
    let last = Spool::open(settings(&dir)).unwrap();
    assert!(last.owns_lock.load(Ordering::Relaxed));
    assert_eq!(
        std::fs::metadata(&live).unwrap().len(),
        set_aside,
        "trimmed while it lives"
    );
    drop((middle, last));

    // A segment an ended writer left: three records and zeros; replay resumes after the first,
    // whose length has since rotted to zero (it reads as the end from the segment's start).
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&lane_dir).unwrap();
    let frames: Vec<Vec<u8>> = ["x", "y", "z"]
        .iter()
        .zip(1..)
        .map(|(v, seq)| record_for(v, seq).encode())
        .collect();
    let mut data = frames.concat();
    let records_end = data.len() as u64;
    data.resize(data.len() + 4096, 0);
    data[..4].fill(0);
    let segment = 5;
    std::fs::write(lane::segment_path(&lane_dir, segment), &data).unwrap();
    let (mut checkpoint, _) = lane::CheckpointFile::open(&lane_dir);
    checkpoint.write(Position {
        segment,
        offset: frames[0].len() as u64,
    });
    let spool = Spool::open(settings(&dir)).unwrap();
    assert_eq!(spool.depth(), 2, "the two undelivered records");
    let size = std::fs::metadata(lane::segment_path(&lane_dir, segment))
        .unwrap()
        .len();
    assert_eq!(
        size, records_end,
        "trimmed after the last record, not the rotted one"
    );
    drop(spool);
    let _ = std::fs::remove_dir_all(&dir);
}
