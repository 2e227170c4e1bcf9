//! The spool's on-disk frame: `[len: u32 LE][crc32 of payload: u32 LE][payload]`. A torn write
//! (a crash mid-append) or a flipped bit fails the length or checksum test and is skipped, never
//! replayed as garbage.

use bytes::Bytes;

/// Largest payload accepted when reading: a bigger length means a corrupt frame.
pub const MAX_PAYLOAD: usize = 1 << 20;
const HEADER: usize = 8;

/// One accepted event waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Process run and sequence: identifies the record while its process lives.
    pub run: u64,
    pub seq: u64,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub enqueued_ms: u64,
    pub service: String,
    /// The route's path, `/db/table` or `/public/db/table`.
    pub route: String,
    pub visitor: String,
    pub body: Bytes,
    /// The route's identity (`Route::id`); empty in records of versions before it was kept.
    pub route_id: String,
}

/// A record's fields, borrowed: what an append encodes, with no `Record` (and its four
/// `String`s) built for it.
pub struct Fields<'a> {
    pub run: u64,
    pub seq: u64,
    pub enqueued_ms: u64,
    pub service: &'a str,
    pub route: &'a str,
    pub visitor: &'a str,
    pub body: &'a [u8],
    pub route_id: &'a str,
}

impl Fields<'_> {
    /// The frame to append, built in one buffer: the checksum goes in once the payload is.
    pub fn encode(&self) -> Vec<u8> {
        let fields = [
            self.service.as_bytes(),
            self.route.as_bytes(),
            self.visitor.as_bytes(),
            self.body,
            self.route_id.as_bytes(),
        ];
        let len = 24 + fields.iter().map(|f| 4 + f.len()).sum::<usize>();
        let mut frame = Vec::with_capacity(HEADER + len);
        frame.extend_from_slice(&(len as u32).to_le_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&self.run.to_le_bytes());
        frame.extend_from_slice(&self.seq.to_le_bytes());
        frame.extend_from_slice(&self.enqueued_ms.to_le_bytes());
        for field in fields {
            frame.extend_from_slice(&(field.len() as u32).to_le_bytes());
            frame.extend_from_slice(field);
        }
        let crc = crc32fast::hash(&frame[HEADER..]);
        frame[4..HEADER].copy_from_slice(&crc.to_le_bytes());
        frame
    }
}

impl Record {
    /// The frame to append.
    pub fn encode(&self) -> Vec<u8> {
        Fields {
            run: self.run,
            seq: self.seq,
            enqueued_ms: self.enqueued_ms,
            service: &self.service,
            route: &self.route,
            visitor: &self.visitor,
            body: &self.body,
            route_id: &self.route_id,
        }
        .encode()
    }

    fn decode(payload: &[u8]) -> Option<Record> {
        let mut p = payload;
        let mut u64_field = || -> Option<u64> {
            let (head, rest) = p.split_first_chunk::<8>()?;
            p = rest;
            Some(u64::from_le_bytes(*head))
        };
        let (run, seq, enqueued_ms) = (u64_field()?, u64_field()?, u64_field()?);
        // Four fields, and since the route's identity was kept, a fifth.
        let mut fields = Vec::with_capacity(5);
        while fields.len() < 5 && (fields.len() < 4 || !p.is_empty()) {
            let (len, rest) = p.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            if rest.len() < len {
                return None;
            }
            fields.push(&rest[..len]);
            p = &rest[len..];
        }
        if !p.is_empty() {
            return None;
        }
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        Some(Record {
            run,
            seq,
            enqueued_ms,
            service: text(fields[0])?,
            route: text(fields[1])?,
            visitor: text(fields[2])?,
            body: Bytes::copy_from_slice(fields[3]),
            route_id: fields.get(4).map_or(Some(String::new()), |f| text(f))?,
        })
    }
}

/// What lies at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole, valid record, and the offset after it.
    Record(Record, usize),
    /// A frame whose checksum or contents are wrong, and the offset after it.
    Corrupt(usize),
    /// Nothing more can be read here: the end, a torn tail or an impossible length.
    End,
}

/// Read the frame at `offset` of `data`.
pub fn read_frame(data: &[u8], offset: usize) -> Frame {
    let Some(header) = data.get(offset..offset + HEADER) else {
        return Frame::End;
    };
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_PAYLOAD {
        return Frame::End;
    }
    let start = offset + HEADER;
    let Some(payload) = data.get(start..start + len) else {
        return Frame::End;
    };
    if crc32fast::hash(payload) != crc {
        return Frame::Corrupt(start + len);
    }
    match Record::decode(payload) {
        Some(record) => Frame::Record(record, start + len),
        None => Frame::Corrupt(start + len),
    }
}

/// Whether more bytes after `data` could make the frame at its start whole: its header is cut
/// short, or its payload is (a frame larger than what was read). Not when its length reads as
/// the end (zeros set aside after a segment's records) or as impossible.
pub fn wants_more(data: &[u8]) -> bool {
    let Some(header) = data.first_chunk::<HEADER>() else {
        return true;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    len != 0 && len <= MAX_PAYLOAD && HEADER + len > data.len()
}

/// Where a segment's log ends: past its last whole record, and past the corrupt frames before
/// it, but not past corrupt frames with nothing after them but the end: those are the write a
/// crash tore (its length written, its payload not, in the space set aside after the records).
pub fn log_end(data: &[u8]) -> usize {
    let (mut offset, mut end) = (0, 0);
    loop {
        match read_frame(data, offset) {
            Frame::Record(_, next) => (offset, end) = (next, next),
            Frame::Corrupt(next) => offset = next,
            Frame::End => return end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The frame, byte for byte: the length, the payload's CRC-32, then the payload's three
    /// numbers and five length-prefixed fields, little-endian.
    #[test]
    fn a_frame_is_its_fields_in_order() {
        let r = record(3, "{}");
        let mut payload = Vec::new();
        for n in [7u64, 3, 1_700_000_000_000] {
            payload.extend_from_slice(&n.to_le_bytes());
        }
        for field in ["shop", "/demo_db/pageviews", "v1", "{}", &r.route_id] {
            payload.extend_from_slice(&(field.len() as u32).to_le_bytes());
            payload.extend_from_slice(field.as_bytes());
        }
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        assert_eq!(r.encode(), frame);
    }

    fn record(seq: u64, body: &str) -> Record {
        Record {
            run: 7,
            seq,
            enqueued_ms: 1_700_000_000_000,
            service: "shop".into(),
            route: "/demo_db/pageviews".into(),
            visitor: "v1".into(),
            body: Bytes::from(body.to_string()),
            route_id: "1/demo_db/pageviews/web".into(),
        }
    }

    #[test]
    fn records_of_the_version_before_route_ids_still_read() {
        let mut old = record(3, "{}");
        old.route_id.clear();
        // The frame as that version wrote it: four fields, no fifth.
        let full = old.encode();
        let payload = &full[8..full.len() - 4];
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        assert_eq!(read_frame(&frame, 0), Frame::Record(old, frame.len()));
    }

    #[test]
    fn round_trip_and_torn_tails() {
        let mut log = record(1, r#"{"td_client_id":"v1"}"#).encode();
        let first_end = log.len();
        log.extend(record(2, "{}").encode());
        let Frame::Record(r, next) = read_frame(&log, 0) else {
            panic!()
        };
        assert_eq!((r.seq, next), (1, first_end));
        let Frame::Record(r, end) = read_frame(&log, next) else {
            panic!()
        };
        assert_eq!((r.seq, end), (2, log.len()));
        assert_eq!(read_frame(&log, end), Frame::End);
        // Every truncation of the second frame reads as the end, never as a record.
        for cut in first_end..log.len() {
            assert_eq!(
                read_frame(&log[..cut], first_end),
                Frame::End,
                "cut at {cut}"
            );
        }
    }

    /// A crash tears the last write: its length is on disk, its payload partly zeros. The
    /// log ends before it; a corrupt frame with a record after it stays in the log (skipped).
    #[test]
    fn the_log_ends_before_a_torn_last_write_and_zeros() {
        let first = record(1, "{}").encode();
        let mut log = first.clone();
        log.extend(record(2, "{}").encode());
        let whole = log.len();
        log.extend_from_slice(&[0; 64]);
        assert_eq!(log_end(&log), whole, "zeros set aside");
        let mut torn = record(3, r#"{"td_client_id":"v3"}"#).encode();
        torn[20..].fill(0);
        log.splice(whole..whole, torn);
        assert!(matches!(read_frame(&log, whole), Frame::Corrupt(_)));
        assert_eq!(log_end(&log), whole, "a torn write");
        let mut middle = first.clone();
        let cut = middle.len() - 1;
        middle[cut] ^= 1;
        middle.extend(record(2, "{}").encode());
        assert_eq!(
            log_end(&middle),
            middle.len(),
            "a corrupt frame before a record"
        );
        assert_eq!(log_end(&[]), 0);
    }

    #[test]
    fn only_a_frame_cut_short_wants_more_bytes() {
        let frame = record(1, "{}").encode();
        assert!(wants_more(&frame[..3]), "a header cut short");
        assert!(wants_more(&frame[..frame.len() - 1]), "a payload cut short");
        assert!(!wants_more(&frame));
        assert!(!wants_more(&[0; 4096]), "zeros: the end");
        assert!(!wants_more(&[0xff; 16]), "an impossible length");
    }

    #[test]
    fn a_flipped_bit_is_skipped() {
        let mut log = record(1, "{}").encode();
        let len = log.len();
        log[len - 1] ^= 0x01;
        assert_eq!(read_frame(&log, 0), Frame::Corrupt(len));
    }

    proptest! {
        #[test]
        fn garbage_never_decodes_into_a_record(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            // Random bytes pass the CRC only by accident; when they do not, nothing is replayed.
            if let Frame::Record(r, _) = read_frame(&data, 0) {
                prop_assert_eq!(Record::decode(&data[8..8 + u32::from_le_bytes(data[..4].try_into().unwrap()) as usize]), Some(r));
            }
        }

        #[test]
        fn any_record_round_trips(seq in any::<u64>(), visitor in ".{0,40}", body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut r = record(seq, "");
            r.visitor = visitor;
            r.body = Bytes::from(body);
            let frame = r.encode();
            prop_assert_eq!(read_frame(&frame, 0), Frame::Record(r, frame.len()));
        }
    }
}
