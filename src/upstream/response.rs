//! Reading the upstream's HTTP/1 answer: the status line and header with `httparse`, then the
//! body framed by `Content-Length`, by chunked transfer coding, or by the end of the connection.
//! Only what the proxy uses is kept (status, `Content-Type`, `Retry-After`, the body), in one
//! read buffer per exchange. Pingora's client session, used before, built a full header map
//! and its case map for every answer; profiling put it among the largest user-space costs of
//! the pass-through path.

use super::UpstreamResponse;
use bytes::Bytes;
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most bytes of a status line and header.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The connection ended before any byte of an answer.
    ClosedEarly(String),
    /// Anything else that went wrong: the request may have been processed.
    Broken(String),
    /// The body is larger than allowed.
    TooLarge,
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// The parsed head: what the proxy keeps, how the body is framed, and where it starts.
struct Head {
    status: u16,
    content_type: Option<HeaderValue>,
    retry_after: Option<HeaderValue>,
    framing: Framing,
    keepalive: bool,
    len: usize,
}

/// Read one answer from `stream`, its body at most `max_body` bytes; and whether the
/// connection can carry another request.
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_body: usize,
) -> Result<(UpstreamResponse, bool), ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let head = loop {
        if let Some(head) = parse_head(&buf)? {
            // An interim answer (100 Continue and the like) is skipped; 101 is not expected.
            if (100..200).contains(&head.status) && head.status != 101 {
                buf.drain(..head.len);
                continue;
            }
            break head;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Broken(
                "the upstream's header is too large".into(),
            ));
        }
        if fill(stream, &mut buf).await? == 0 {
            return Err(if buf.is_empty() {
                ReadError::ClosedEarly("the upstream closed the connection before answering".into())
            } else {
                ReadError::Broken("the upstream closed the connection mid-header".into())
            });
        }
    };
    let body_start = head.len;
    let no_body = head.status == 204 || head.status == 304;
    let (body, reusable) = match head.framing {
        _ if no_body => (Bytes::new(), buf.len() == body_start),
        Framing::Length(n) => {
            if n > max_body {
                return Err(ReadError::TooLarge);
            }
            while buf.len() < body_start + n {
                if fill(stream, &mut buf).await? == 0 {
                    return Err(ReadError::Broken("the upstream closed mid-body".into()));
                }
            }
            let extra = buf.len() > body_start + n;
            (
                Bytes::copy_from_slice(&buf[body_start..body_start + n]),
                !extra,
            )
        }
        Framing::Chunked => {
            let mut chunks = Dechunker::default();
            loop {
                if let Some(used) = chunks.step(&buf[body_start..], max_body)? {
                    // Exactly sized: the body may live on in the offer cache.
                    let body = Bytes::from(chunks.body.into_boxed_slice());
                    break (body, body_start + used == buf.len());
                }
                // Chunk lines and trailers are bounded one by one; bound their sum too.
                if buf.len() - body_start > 8 * max_body + 64 * 1024 {
                    return Err(ReadError::Broken(
                        "the upstream's chunked body has too much framing".into(),
                    ));
                }
                if fill(stream, &mut buf).await? == 0 {
                    return Err(ReadError::Broken("the upstream closed mid-body".into()));
                }
            }
        }
        Framing::UntilClose => {
            while fill(stream, &mut buf).await? > 0 {
                if buf.len() - body_start > max_body {
                    return Err(ReadError::TooLarge);
                }
            }
            (Bytes::copy_from_slice(&buf[body_start..]), false)
        }
    };
    let response = UpstreamResponse {
        status: head.status,
        content_type: head.content_type,
        retry_after: head.retry_after,
        body,
    };
    Ok((response, reusable && head.keepalive))
}

/// Read more into `buf`; the number of bytes read (0 at the end of the stream).
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<usize, ReadError> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(buf.capacity().max(1024));
    }
    stream.read_buf(buf).await.map_err(|e| match e.kind() {
        // Reset before any answer: the same as a close.
        std::io::ErrorKind::ConnectionReset if buf.is_empty() => {
            ReadError::ClosedEarly(e.to_string())
        }
        _ => ReadError::Broken(e.to_string()),
    })
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ReadError::Broken(format!("bad upstream answer: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    let mut keepalive = response.version == Some(1);
    let (mut content_type, mut retry_after) = (None, None);
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for h in response.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| ReadError::Broken("bad upstream Content-Length".into()))?;
            if length.is_some_and(|m| m != n) {
                return Err(ReadError::Broken(
                    "conflicting upstream Content-Length".into(),
                ));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides; anything but chunked is read to the close.
            chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
            if !chunked {
                keepalive = false;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keepalive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0) {
                    keepalive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = HeaderValue::from_bytes(h.value).ok();
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = HeaderValue::from_bytes(h.value).ok();
        }
    }
    // Transfer-Encoding wins over Content-Length (RFC 9112, 6.3).
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        _ => Framing::UntilClose,
    };
    if matches!(framing, Framing::UntilClose) {
        keepalive = false;
    }
    Ok(Some(Head {
        status,
        content_type,
        retry_after,
        framing,
        keepalive,
        len,
    }))
}

fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Decodes a chunked body as its bytes arrive, resuming where the last call stopped, so that
/// an answer read in many small pieces is not parsed again from its start each time.
#[derive(Default)]
struct Dechunker {
    /// Where the next chunk's size line (or trailer line) starts in the data.
    at: usize,
    /// Where the trailers start, once the last chunk is read.
    trailers: Option<usize>,
    body: Vec<u8>,
}

impl Dechunker {
    /// Decode what `data` (the bytes after the head, so far) holds: `Some(used)` once the body
    /// and its trailers are complete, `None` while more bytes are needed.
    fn step(&mut self, data: &[u8], max_body: usize) -> Result<Option<usize>, ReadError> {
        let bad = || ReadError::Broken("bad chunked upstream body".into());
        loop {
            let Some(line_end) = find_crlf(&data[self.at..]) else {
                let pending = data.len() - self.at;
                let limit = if self.trailers.is_some() {
                    MAX_HEAD
                } else {
                    1024
                };
                return if pending > limit {
                    Err(bad())
                } else {
                    Ok(None)
                };
            };
            if let Some(from) = self.trailers {
                // Trailers, each a line, until an empty one.
                self.at += line_end + 2;
                if line_end == 0 {
                    return Ok(Some(self.at));
                }
                if self.at - from > MAX_HEAD {
                    return Err(bad());
                }
                continue;
            }
            let line = &data[self.at..self.at + line_end];
            let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
            let size_text = std::str::from_utf8(size_text.trim_ascii()).map_err(|_| bad())?;
            if size_text.is_empty() || size_text.len() > 8 {
                return Err(bad());
            }
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
            let start = self.at + line_end + 2;
            if size == 0 {
                self.at = start;
                self.trailers = Some(start);
                continue;
            }
            if self.body.len() + size > max_body {
                return Err(ReadError::TooLarge);
            }
            // Not there yet: this size line is read again next time (at most 1 KiB).
            if data.len() < start + size + 2 {
                return Ok(None);
            }
            if &data[start + size..start + size + 2] != b"\r\n" {
                return Err(bad());
            }
            self.body.extend_from_slice(&data[start..start + size]);
            self.at = start + size + 2;
        }
    }
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
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
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
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
}
