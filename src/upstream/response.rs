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
    let head = read_head(stream, &mut buf).await?;
    let (body, reusable) = read_body(stream, &mut buf, &head, max_body).await?;
    let response = UpstreamResponse {
        status: head.status,
        content_type: head.content_type,
        retry_after: head.retry_after,
        body,
    };
    Ok((response, reusable && head.keepalive))
}

/// Read into `buf` until it holds a final answer's head; the body (or part of it) may follow.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Head, ReadError> {
    loop {
        if let Some(head) = parse_head(buf)? {
            // An interim answer (100 Continue and the like) is skipped; 101 is not expected.
            if (100..200).contains(&head.status) && head.status != 101 {
                buf.drain(..head.len);
                continue;
            }
            return Ok(head);
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Broken(
                "the upstream's header is too large".into(),
            ));
        }
        if fill(stream, buf).await? == 0 {
            return Err(if buf.is_empty() {
                ReadError::ClosedEarly("the upstream closed the connection before answering".into())
            } else {
                ReadError::Broken("the upstream closed the connection mid-header".into())
            });
        }
    }
}

/// The body after `head`, as its framing says; and whether nothing follows it on the
/// connection.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head: &Head,
    max_body: usize,
) -> Result<(Bytes, bool), ReadError> {
    let body_start = head.len;
    let no_body = head.status == 204 || head.status == 304;
    match head.framing {
        _ if no_body => Ok((Bytes::new(), buf.len() == body_start)),
        Framing::Length(n) => {
            if n > max_body {
                return Err(ReadError::TooLarge);
            }
            while buf.len() < body_start + n {
                if fill(stream, buf).await? == 0 {
                    return Err(ReadError::Broken("the upstream closed mid-body".into()));
                }
            }
            let extra = buf.len() > body_start + n;
            Ok((
                Bytes::copy_from_slice(&buf[body_start..body_start + n]),
                !extra,
            ))
        }
        Framing::Chunked => read_chunked(stream, buf, body_start, max_body).await,
        Framing::UntilClose => {
            while fill(stream, buf).await? > 0 {
                if buf.len() - body_start > max_body {
                    return Err(ReadError::TooLarge);
                }
            }
            Ok((Bytes::copy_from_slice(&buf[body_start..]), false))
        }
    }
}

/// A chunked body from `body_start` on, decoded as it arrives.
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    body_start: usize,
    max_body: usize,
) -> Result<(Bytes, bool), ReadError> {
    let mut chunks = Dechunker::default();
    loop {
        if let Some(used) = chunks.step(&buf[body_start..], max_body)? {
            // Exactly sized: the body may live on in the offer cache.
            let body = Bytes::from(chunks.body.into_boxed_slice());
            return Ok((body, body_start + used == buf.len()));
        }
        // Chunk lines and trailers are bounded one by one; bound their sum too.
        if buf.len() - body_start > 8 * max_body + 64 * 1024 {
            return Err(ReadError::Broken(
                "the upstream's chunked body has too much framing".into(),
            ));
        }
        if fill(stream, buf).await? == 0 {
            return Err(ReadError::Broken("the upstream closed mid-body".into()));
        }
    }
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
            length = Some(content_length(h.value, length)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides; anything but chunked is read to the close.
            chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
            if !chunked {
                keepalive = false;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            keepalive = connection(h.value, response.version, keepalive);
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

/// A `Content-Length` value, which must agree with any seen before it.
fn content_length(value: &[u8], before: Option<usize>) -> Result<usize, ReadError> {
    let n = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| ReadError::Broken("bad upstream Content-Length".into()))?;
    if before.is_some_and(|m| m != n) {
        return Err(ReadError::Broken(
            "conflicting upstream Content-Length".into(),
        ));
    }
    Ok(n)
}

/// Whether the connection stays open after a `Connection` header's tokens: `close` ends it,
/// `keep-alive` keeps an HTTP/1.0 one.
fn connection(value: &[u8], version: Option<u8>, mut keepalive: bool) -> bool {
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            keepalive = false;
        } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Some(0) {
            keepalive = true;
        }
    }
    keepalive
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
mod tests;
