//! Deadlines on the slow start of a request, for what pingora times only read by read. A
//! client that trickles a byte every few seconds passes every per-read timeout, and pingora's
//! HTTP/2 handshake has no timeout at all; both could hold a connection (and its buffers) for
//! as long as they liked. This stream wrapper gives a watched part of the stream `limit` in
//! all; past it, reads fail and pingora closes the connection.
//!
//! - HTTP/1 ([`http1`]): each request header, from its first byte (leading empty lines
//!   included) to its end as pingora's parser sees it ([`h1`]). After it (body, answer) the
//!   watch is off until the answer has been written and the next request begins.
//! - HTTP/2 ([`http2`]): a new connection, from the moment it is handed over (after TLS) to the
//!   end of its first request's header block ([`h2`]): the preface, settings and first
//!   HEADERS. Then the watch is off for good; an established connection's streams come and go
//!   under pingora's h2 idle timeout.

mod h1;
mod h2;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What a deadline watches for: the bytes read feed it until it says the part is complete.
trait Watch: Copy + Default + Debug + Send + Sync + Unpin + 'static {
    /// `Err(n)` once the watched part ends after `n` of `bytes`, else the state to go on from.
    fn scan(self, bytes: &[u8]) -> Result<Self, usize>;
    /// Whether writing an answer starts a new watched part with the next byte read.
    const EACH_REQUEST: bool;
}

/// Where the watched part ends, if it does, when `chunks` are read one after another.
#[cfg(test)]
fn end_of<W: Watch>(chunks: &[&[u8]]) -> Option<usize> {
    let (mut state, mut offset) = (W::default(), 0);
    for chunk in chunks {
        match state.scan(chunk) {
            Err(n) => return Some(offset + n),
            Ok(next) => state = next,
        }
        offset += chunk.len();
    }
    None
}

impl Watch for h1::Header {
    fn scan(self, bytes: &[u8]) -> Result<Self, usize> {
        h1::Header::scan(self, bytes)
    }
    const EACH_REQUEST: bool = true;
}

impl Watch for h2::FirstRequest {
    fn scan(self, bytes: &[u8]) -> Result<Self, usize> {
        h2::FirstRequest::scan(self, bytes)
    }
    const EACH_REQUEST: bool = false;
}

#[derive(Debug)]
enum Phase<W> {
    /// Between requests: the next byte starts a watched part.
    Idle,
    /// In a watched part, which must end by `deadline`.
    Watching { deadline: Instant, state: W },
    /// Past it (until the answer is written, for HTTP/1).
    Off,
}

#[derive(Debug)]
struct Deadline<W> {
    inner: Stream,
    limit: Duration,
    phase: Phase<W>,
    /// Armed while a part is pending, to wake the reader at the deadline.
    timer: Option<Pin<Box<Sleep>>>,
}

/// An HTTP/1 connection whose every request header must arrive within `limit`.
pub fn http1(inner: Stream, limit: Duration) -> Stream {
    Box::new(Deadline::<h1::Header> {
        inner,
        limit,
        phase: Phase::Idle,
        timer: None,
    })
}

/// An HTTP/2 connection that must send its preface and first request header within `limit`
/// from now.
pub fn http2(inner: Stream, limit: Duration) -> Stream {
    Box::new(Deadline::<h2::FirstRequest> {
        inner,
        limit,
        phase: Phase::Watching {
            deadline: Instant::now() + limit,
            state: h2::FirstRequest::default(),
        },
        timer: None,
    })
}

impl<W: Watch> Deadline<W> {
    fn watch(&mut self, bytes: &[u8]) {
        let (deadline, state) = match self.phase {
            Phase::Off => return,
            Phase::Idle if bytes.is_empty() => return,
            Phase::Idle => (Instant::now() + self.limit, W::default()),
            Phase::Watching { deadline, state } => (deadline, state),
        };
        self.phase = match state.scan(bytes) {
            Err(_) => {
                self.timer = None;
                Phase::Off
            }
            Ok(state) => Phase::Watching { deadline, state },
        };
    }
}

fn too_slow() -> io::Error {
    crate::metrics::SLOW_HEADERS.inc();
    io::Error::new(
        io::ErrorKind::TimedOut,
        "request header not complete in time",
    )
}

impl<W: Watch> AsyncRead for Deadline<W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Phase::Watching { deadline, .. } = this.phase {
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
                let Phase::Watching { deadline, .. } = this.phase else {
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

impl<W: Watch> AsyncWrite for Deadline<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if W::EACH_REQUEST && matches!(written, Poll::Ready(Ok(n)) if n > 0) {
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
impl<W: Watch> Shutdown for Deadline<W> {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl<W: Watch> UniqueID for Deadline<W> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<W: Watch> Ssl for Deadline<W> {
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

impl<W: Watch> GetTimingDigest for Deadline<W> {
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

impl<W: Watch> GetProxyDigest for Deadline<W> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl<W: Watch> GetSocketDigest for Deadline<W> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl<W: Watch> Peek for Deadline<W> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
