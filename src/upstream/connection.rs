//! One attempt at one upstream address: a pooled connection (or a new one from pingora's
//! transport connector), the request written in one piece, and the whole answer read back by
//! `response::read`. Pingora's HTTP client flushes the request header apart from the body: two
//! sends where one does. The pingora peer is built only to open a connection; the pool is keyed
//! by address, TLS and host.

use super::pool::Pool;
use super::response::{self, ReadError};
use super::{Call, CallLimits, UpstreamError, UpstreamResponse};
use super::{Timeouts, UpstreamTarget};
use crate::metrics;
use crate::vendor::VENDOR_CONTENT_TYPE;
use bytes::{BufMut, Bytes, BytesMut};
use pingora::connectors::TransportConnector;
use pingora::protocols::{Stream, ALPN};
use pingora::upstreams::peer::HttpPeer;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio::io::AsyncWriteExt;

/// Send `call` to `addr`. A pooled connection that the upstream closed while idle fails before
/// any answer: only then is the call made again, once, on a new connection.
pub(super) async fn attempt(
    transport: &TransportConnector,
    pool: &Pool,
    addr: SocketAddr,
    call: &Call,
    limits: CallLimits,
) -> Result<UpstreamResponse, UpstreamError> {
    let target = &call.endpoint.target;
    let key = pool_key(addr, target);
    let request = request_bytes(call);
    let mut pooled = pool.take(key, limits.timeouts.upstream_idle);
    loop {
        let reused = pooled.is_some();
        let stream = match pooled.take() {
            Some(stream) => stream,
            None => connect(transport, addr, target, &limits.timeouts, ALPN::H1).await?,
        };
        match exchange(stream, &request, limits.max_body).await {
            Ok((response, reusable)) => {
                if let Some(stream) = reusable {
                    pool.put(key, stream, limits.timeouts.upstream_idle);
                }
                return Ok(response);
            }
            // A pooled connection closed while idle: nothing was processed.
            Err(Failure::Stale(_)) if reused => {}
            Err(failure) => return Err(failure.into_error(limits.max_body)),
        }
    }
}

/// A new connection to `addr`, offering `alpn` over TLS; an HTTP/2 one must get it.
/// Boxed: the connector's future (TLS included) is kilobytes, and inline it would make every
/// call's future that large, copied whenever it moves.
pub(super) fn connect<'a>(
    transport: &'a TransportConnector,
    addr: SocketAddr,
    target: &'a UpstreamTarget,
    timeouts: &'a Timeouts,
    alpn: ALPN,
) -> Pin<Box<dyn Future<Output = Result<Stream, UpstreamError>> + Send + 'a>> {
    Box::pin(connect_now(transport, addr, target, timeouts, alpn))
}

async fn connect_now(
    transport: &TransportConnector,
    addr: SocketAddr,
    target: &UpstreamTarget,
    timeouts: &Timeouts,
    alpn: ALPN,
) -> Result<Stream, UpstreamError> {
    let mut peer = peer(addr, target, timeouts);
    peer.options.alpn = alpn.clone();
    let stream = transport
        .new_stream(&peer)
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let h2 = matches!(alpn, ALPN::H2);
    if h2 && target.tls && stream.selected_alpn_proto() != Some(ALPN::H2) {
        return Err(UpstreamError::Connect(
            "the upstream did not agree to HTTP/2 (ALPN)".into(),
        ));
    }
    metrics::UPSTREAM_CONNECTIONS
        .with_label_values(&[if h2 { "h2" } else { "h1" }])
        .inc();
    Ok(stream)
}

/// Connections to the same address, with the same TLS and host name, are interchangeable.
pub(super) fn pool_key(addr: SocketAddr, target: &UpstreamTarget) -> u64 {
    static KEYS: std::sync::LazyLock<ahash::RandomState> =
        std::sync::LazyLock::new(ahash::RandomState::new);
    KEYS.hash_one((addr, target.tls, &target.host))
}

fn peer(addr: SocketAddr, target: &UpstreamTarget, t: &Timeouts) -> HttpPeer {
    // TLS peers verify the certificate against the host name (pingora's default).
    let sni = if target.tls {
        target.host.clone()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, target.tls, sni);
    peer.options.connection_timeout = Some(t.connect);
    peer.options.total_connection_timeout = Some(t.connect * 2);
    peer.options.idle_timeout = Some(t.upstream_idle);
    peer.options.read_timeout = Some(t.upstream);
    peer.options.write_timeout = Some(t.upstream);
    peer
}

enum Failure {
    /// The connection ended before any answer: on a pooled connection, safe to try again.
    Stale(String),
    Io(String),
    TooLarge,
}

impl Failure {
    fn into_error(self, max_body: usize) -> UpstreamError {
        match self {
            Failure::Stale(e) | Failure::Io(e) => UpstreamError::Io(e),
            Failure::TooLarge => UpstreamError::TooLarge(max_body),
        }
    }
}

/// The upstream request, header and body in one buffer: a fresh header set, so nothing a
/// client sent (credentials, cookies, hop-by-hop headers) can pass through. Every value is an
/// `HeaderValue`, checked when it was made, so none can break the framing.
pub fn request_bytes(call: &Call) -> Bytes {
    let route = &call.endpoint;
    let mut buf = BytesMut::with_capacity(320 + call.body.len());
    buf.put_slice(b"POST ");
    buf.put_slice(route.path.as_bytes());
    buf.put_slice(b" HTTP/1.1\r\n");
    let mut header = |name: &[u8], value: &[u8]| {
        buf.put_slice(name);
        buf.put_slice(b": ");
        buf.put_slice(value);
        buf.put_slice(b"\r\n");
    };
    header(b"Host", route.target.authority.as_bytes());
    header(b"Authorization", route.authorization.as_bytes());
    header(b"WP13n-Token", route.token.as_bytes());
    header(b"Content-Type", VENDOR_CONTENT_TYPE.as_bytes());
    header(
        b"Content-Length",
        itoa::Buffer::new().format(call.body.len()).as_bytes(),
    );
    header(b"Accept", b"application/json");
    if let Some(ua) = &call.client.user_agent {
        header(b"User-Agent", ua.as_bytes());
    }
    if let Some(address) = call.client.address {
        header(b"X-Forwarded-For", address.to_string().as_bytes());
    }
    buf.put_slice(b"\r\n");
    buf.put_slice(&call.body);
    buf.freeze()
}

/// Write the request, read the answer; the connection back when it can be reused.
async fn exchange(
    mut stream: Stream,
    request: &[u8],
    max_body: usize,
) -> Result<(UpstreamResponse, Option<Stream>), Failure> {
    let written = async {
        // Sends leave together: the upstream wakes once for the lot (see `write_soon`).
        crate::runtime::write_soon().await;
        stream.write_all(request).await?;
        stream.flush().await
    };
    written.await.map_err(|e| Failure::Stale(e.to_string()))?;
    let (response, reusable) =
        response::read(&mut stream, max_body)
            .await
            .map_err(|e| match e {
                ReadError::ClosedEarly(e) => Failure::Stale(e),
                ReadError::Broken(e) => Failure::Io(e),
                ReadError::TooLarge => Failure::TooLarge,
            })?;
    Ok((response, reusable.then_some(stream)))
}
