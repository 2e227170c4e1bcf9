//! A whole-header deadline for HTTP/1 connections. Pingora times each read on its own, so a
//! client that trickles a byte every few seconds could hold a connection (and up to 1 MiB of
//! header buffer) for as long as it likes. This stream wrapper gives each request header, from
//! its first byte to its blank line, `limit` in all; past it, reads fail and pingora closes the
//! connection. The header's end is found by watching for CRLF CRLF; after it (body, answer) the
//! watch is off until the answer has been written and the next request begins.

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
enum Phase {
    /// Between requests: the next byte starts a header.
    Idle,
    /// In a header; `matched` counts the bytes of CRLF CRLF seen last.
    Header { deadline: Instant, matched: u8 },
    /// Past the header, until the answer is written.
    Rest,
}

#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    /// Armed while a header is pending, to wake the reader at the deadline.
    timer: Option<Pin<Box<Sleep>>>,
}

impl HeaderDeadline {
    pub fn wrap(inner: Stream, limit: Duration) -> Stream {
        Box::new(HeaderDeadline {
            inner,
            limit,
            phase: Phase::Idle,
            timer: None,
        })
    }

    fn watch(&mut self, bytes: &[u8]) {
        let (deadline, matched) = match self.phase {
            Phase::Rest => return,
            Phase::Idle if bytes.is_empty() => return,
            Phase::Idle => (Instant::now() + self.limit, 0),
            Phase::Header { deadline, matched } => (deadline, matched),
        };
        self.phase = match scan(matched, bytes) {
            None => {
                self.timer = None;
                Phase::Rest
            }
            Some(matched) => Phase::Header { deadline, matched },
        };
    }
}

/// Look for the blank line ending a header: `None` once CRLF CRLF is complete, else how many
/// of its bytes the input ends with.
fn scan(mut matched: u8, bytes: &[u8]) -> Option<u8> {
    for &b in bytes {
        matched = match (matched, b) {
            (0 | 2, b'\r') => matched + 1,
            (1 | 3, b'\n') => matched + 1,
            (_, b'\r') => 1,
            _ => 0,
        };
        if matched == 4 {
            return None;
        }
    }
    Some(matched)
}

fn too_slow() -> io::Error {
    crate::metrics::SLOW_HEADERS.inc();
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request header not complete in time",
    )
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Phase::Header { deadline, .. } = this.phase {
            if Instant::now() >= deadline {
                return Poll::Ready(Err(too_slow()));
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.watch(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Phase::Header { deadline, .. } = this.phase else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(too_slow()));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            // An answer is going out: the next byte read begins the next request.
            this.phase = Phase::Idle;
            this.timer = None;
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::scan;

    fn ends(chunks: &[&[u8]]) -> bool {
        let mut matched = 0;
        for chunk in chunks {
            match scan(matched, chunk) {
                None => return true,
                Some(m) => matched = m,
            }
        }
        false
    }

    #[test]
    fn the_header_ends_at_crlf_crlf_across_reads() {
        assert!(!ends(&[b"POST / HTTP/1.1\r\nHost: x\r\n"]));
        assert!(ends(&[b"POST / HTTP/1.1\r\nHost: x\r\n\r\n{}"]));
        assert!(ends(&[b"POST / HTTP/1.1\r\nA: b\r", b"\n\r", b"\n"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\n\r\r\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\r\r\n\r\n"]));
        assert!(!ends(&[b"\n\n\n\n"]));
    }
}
