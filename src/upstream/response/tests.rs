//! Reading the upstream's HTTP/1 answer: tests over streams that trickle their bytes.

use super::*;
use proptest::prelude::*;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A stream that hands out `data` at most `step` bytes a read.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self
            .step
            .min(buf.remaining())
            .min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

fn read_all(
    data: &[u8],
    step: usize,
    max_body: usize,
) -> Result<(UpstreamResponse, bool), ReadError> {
    let mut stream = Trickle {
        data: data.to_vec(),
        at: 0,
        step,
    };
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(read(&mut stream, max_body))
}

fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        out.extend_from_slice(format!("{n:x};ext=1\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    out
}

#[test]
fn content_length_answers_keep_the_connection() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    for step in [1, 3, 1000] {
        let (a, reusable) = read_all(raw, step, 100).unwrap();
        assert_eq!((a.status, &a.body[..], reusable), (200, &b"{}"[..], true));
        assert_eq!(a.content_type.unwrap(), "application/json");
    }
}

#[test]
fn what_ends_the_connection_is_not_reused() {
    let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
    assert!(!read_all(close, 7, 100).unwrap().1);
    let old = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}";
    assert!(!read_all(old, 7, 100).unwrap().1);
    let old_kept = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}";
    assert!(read_all(old_kept, 7, 100).unwrap().1);
    let to_close = b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}";
    let (a, reusable) = read_all(to_close, 4, 100).unwrap();
    assert_eq!((&a.body[..], reusable), (&b"{\"a\":1}"[..], false));
    let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1";
    assert!(!read_all(extra, 100, 100).unwrap().1);
}

#[test]
fn interim_answers_are_skipped_and_errors_keep_their_headers() {
    let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n";
    let (a, reusable) = read_all(raw, 5, 100).unwrap();
    assert_eq!(a.status, 429);
    assert_eq!(a.retry_after.unwrap(), "3");
    assert!(reusable);
    let none = b"HTTP/1.1 204 No Content\r\n\r\n";
    assert_eq!(read_all(none, 5, 100).unwrap().0.body.len(), 0);
}

#[test]
fn early_closes_bad_answers_and_large_bodies_are_told_apart() {
    assert!(matches!(
        read_all(b"", 1, 100),
        Err(ReadError::ClosedEarly(_))
    ));
    assert!(matches!(
        read_all(b"HTTP/1.1 200", 1, 100),
        Err(ReadError::Broken(_))
    ));
    assert!(matches!(
        read_all(b"SMTP ready\r\n\r\n", 1, 100),
        Err(ReadError::Broken(_))
    ));
    let short = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}";
    assert!(matches!(read_all(short, 3, 100), Err(ReadError::Broken(_))));
    let large = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n";
    assert_eq!(read_all(large, 100, 100).err(), Some(ReadError::TooLarge));
    let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}";
    assert!(matches!(read_all(two, 100, 100), Err(ReadError::Broken(_))));
    let chunks = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        chunked(&[b'x'; 300], &[7]),
    ]
    .concat();
    assert_eq!(read_all(&chunks, 9, 100).err(), Some(ReadError::TooLarge));
    let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    assert!(matches!(read_all(bad, 9, 100), Err(ReadError::Broken(_))));
}

#[test]
fn chunked_framing_cannot_grow_without_bound() {
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    // Endless trailers.
    let trailers = [head.clone(), b"0\r\n".to_vec(), b"X-T: y\r\n".repeat(4000)].concat();
    assert!(matches!(
        read_all(&trailers, 4096, 100),
        Err(ReadError::Broken(_))
    ));
    // One-byte chunks, each with a long extension: the body stays small, the framing not.
    let chunk = [b"1;".to_vec(), vec![b'e'; 1000], b"\r\nx\r\n".to_vec()].concat();
    let padded = [head, chunk.repeat(200)].concat();
    assert!(matches!(
        read_all(&padded, 4096, 100),
        Err(ReadError::Broken(_))
    ));
}

proptest! {
    #[test]
    fn chunked_bodies_decode_whatever_the_chunk_and_read_sizes(
        body in proptest::collection::vec(any::<u8>(), 0..3000),
        sizes in proptest::collection::vec(1usize..700, 1..5),
        step in 1usize..300,
    ) {
        let raw = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n".to_vec(),
            chunked(&body, &sizes),
        ].concat();
        let (a, reusable) = read_all(&raw, step, 4096).unwrap();
        prop_assert_eq!(&a.body[..], &body[..]);
        prop_assert!(reusable);
    }

    #[test]
    fn any_bytes_after_a_status_line_end_in_an_answer_or_an_error(
        rest in proptest::collection::vec(any::<u8>(), 0..600),
        step in 1usize..64,
    ) {
        let raw = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n".to_vec(), rest].concat();
        if let Ok((a, _)) = read_all(&raw, step, 256) {
            prop_assert!(a.body.len() <= 256);
        }
    }
}
