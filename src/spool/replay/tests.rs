//! Spool replay: reading a lane's segments in batches.

use super::*;
use crate::spool::reader::{next_batch, Batch, CHUNK};

#[tokio::test]
async fn a_missing_segment_ends_and_an_unreadable_one_is_retried_not_skipped() {
    let dir = std::env::temp_dir().join(format!("p13n-edge-unreadable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut reader = SegmentReader::new(dir.clone());
    let at = Position {
        segment: 0,
        offset: 0,
    };
    assert!(matches!(
        next_batch(&mut reader, at, u64::MAX, 8).await,
        Batch::End
    ));
    // A directory in the segment's place: opening works, reading fails.
    std::fs::create_dir(segment_path(&dir, 1)).unwrap();
    let at = Position {
        segment: 1,
        offset: 0,
    };
    assert!(matches!(
        next_batch(&mut reader, at, u64::MAX, 8).await,
        Batch::Unreadable(_)
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

fn record(seq: u64, body: Vec<u8>) -> Record {
    Record {
        run: 1,
        seq,
        enqueued_ms: 0,
        service: "shop".into(),
        route: "/demo_db/pageviews".into(),
        visitor: "v".into(),
        body: body.into(),
        route_id: String::new(),
    }
}

#[tokio::test]
async fn batches_span_records_larger_than_a_chunk_and_stop_at_the_limit() {
    let dir = std::env::temp_dir().join(format!("p13n-edge-batches-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let small = record(1, b"{}".to_vec()).encode();
    let big = record(2, vec![b' '; CHUNK - 200]).encode();
    let mut log = [small.clone(), big.clone(), small.clone(), small.clone()].concat();
    log.extend_from_slice(&[9, 0, 0]); // a torn tail
    std::fs::write(segment_path(&dir, 0), &log).unwrap();
    let mut reader = SegmentReader::new(dir.clone());
    let start = Position {
        segment: 0,
        offset: 0,
    };
    // Every batch until the end, up to `limit`: the sequence numbers read, and where it ended.
    async fn drain(reader: &mut SegmentReader, mut at: Position, limit: u64) -> (Vec<u64>, u64) {
        let mut seqs = Vec::new();
        while let Batch::Records(records, next) = next_batch(reader, at, limit, 8).await {
            seqs.extend(records.iter().map(|(r, _)| r.seq));
            at.offset = next;
        }
        (seqs, at.offset)
    }
    // The writer has committed the first three records only.
    let committed = (2 * small.len() + big.len()) as u64;
    assert_eq!(
        drain(&mut reader, start, committed).await,
        (vec![1, 2, 1], committed)
    );
    // Once the segment is finished: read to its end, the torn tail left out.
    let at = Position {
        segment: 0,
        offset: committed,
    };
    let end = log.len() as u64 - 3;
    assert_eq!(drain(&mut reader, at, u64::MAX).await, (vec![1], end));
    // A reader starting afresh in the middle reads the same.
    let mut fresh = SegmentReader::new(dir.clone());
    let second = Position {
        segment: 0,
        offset: small.len() as u64,
    };
    assert_eq!(
        drain(&mut fresh, second, u64::MAX).await,
        (vec![2, 1, 1], end)
    );
    std::fs::remove_dir_all(dir).unwrap();
}
