//! The upstream step: one client for every call to the personalization API. Live traffic uses
//! it now; background delivery and spool replay are meant to share it, so that connection
//! reuse, DNS and (later) the retry policy live in one place.

mod dns;

pub use dns::{DnsCache, DnsError};

use crate::config::{Route, Timeouts, UpstreamTarget};
use crate::event::VENDOR_CONTENT_TYPE;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use std::time::Duration;

/// What an upstream call can fail with, before an answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// The request was not (fully) sent: safe to try again.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The request may have reached the upstream: it may have ingested the event.
    #[error("failed after sending: {0}")]
    Io(String),
    #[error("upstream call passed its deadline")]
    Timeout,
    #[error("upstream response exceeds {0} bytes")]
    TooLarge(usize),
}

impl UpstreamError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Dns(_) => "dns",
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Io(_) => "io",
            UpstreamError::Timeout => "timeout",
            UpstreamError::TooLarge(_) => "too_large",
        }
    }
}

/// The upstream's answer, body untouched.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: u16,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
}

/// One event to send: the route supplies the path and credentials, the body is sent as is.
pub struct Call<'a> {
    pub route: &'a Route,
    pub body: Bytes,
    pub user_agent: Option<&'a HeaderValue>,
}

/// Limits of one call, taken from the config in force when the request started.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub timeouts: Timeouts,
    pub max_body: usize,
}

/// Connection pool and DNS cache, shared by every call for the life of the process.
pub struct UpstreamClient {
    connector: Connector,
    dns: DnsCache,
}

impl UpstreamClient {
    /// `ca_file` replaces the system roots for `https` upstreams.
    pub fn new(dns_ttl: Duration, ca_file: Option<String>) -> Self {
        let mut options = ConnectorOptions::new(POOL_SIZE);
        options.ca_file = ca_file;
        UpstreamClient {
            connector: Connector::new(Some(options)),
            dns: DnsCache::new(dns_ttl),
        }
    }

    /// Send one event, within the deadline.
    pub async fn send(
        &self,
        call: &Call<'_>,
        limits: CallLimits,
    ) -> Result<UpstreamResponse, UpstreamError> {
        match tokio::time::timeout(limits.timeouts.upstream, self.send_inner(call, limits)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    async fn send_inner(
        &self,
        call: &Call<'_>,
        limits: CallLimits,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let target = &call.route.service.upstream;
        let addrs = self.dns.resolve(&target.host, target.port).await?;
        let mut last = None;
        for addr in addrs {
            match self.send_to(addr, call, limits).await {
                // Nothing was sent: the next address of the host may answer.
                Err(e @ UpstreamError::Connect(_)) => last = Some(e),
                other => return other,
            }
        }
        Err(last.expect("resolve returns at least one address"))
    }

    async fn send_to(
        &self,
        addr: std::net::SocketAddr,
        call: &Call<'_>,
        limits: CallLimits,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let target = &call.route.service.upstream;
        let peer = peer(addr, target, &limits.timeouts);
        // A pooled connection the upstream closed while idle fails on first use; pingora marks
        // such errors retryable. Only then is the call made again, on a fresh connection.
        for _ in 0..2 {
            let (mut session, reused) = self
                .connector
                .get_http_session(&peer)
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            match exchange(&mut session, call, limits.max_body).await {
                Ok(response) => {
                    if session.response_done() {
                        let idle = Some(limits.timeouts.upstream_idle);
                        self.connector
                            .release_http_session(session, &peer, idle)
                            .await;
                    }
                    return Ok(response);
                }
                Err(Failure::Pingora(mut e)) => {
                    e.retry.decide_reuse(reused);
                    if !(reused && e.retry()) {
                        return Err(UpstreamError::Io(e.to_string()));
                    }
                }
                Err(Failure::TooLarge) => return Err(UpstreamError::TooLarge(limits.max_body)),
            }
        }
        Err(UpstreamError::Io("stale pooled connections".into()))
    }
}

/// Idle upstream connections kept per process.
const POOL_SIZE: usize = 256;

fn peer(addr: std::net::SocketAddr, target: &UpstreamTarget, t: &Timeouts) -> HttpPeer {
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
    Pingora(Box<pingora::Error>),
    TooLarge,
}

impl From<Box<pingora::Error>> for Failure {
    fn from(e: Box<pingora::Error>) -> Self {
        Failure::Pingora(e)
    }
}

/// Build the upstream request: a fresh header set, so nothing a client sent (credentials,
/// cookies, hop-by-hop headers) can pass through.
pub fn request_header(call: &Call<'_>) -> Result<RequestHeader, Box<pingora::Error>> {
    let route = call.route;
    let mut req = RequestHeader::build("POST", route.path.as_bytes(), Some(6))?;
    req.insert_header(
        http::header::HOST,
        route.service.upstream.authority.as_str(),
    )?;
    req.insert_header(http::header::AUTHORIZATION, route.authorization.clone())?;
    req.insert_header("WP13n-Token", route.token.clone())?;
    req.insert_header(http::header::CONTENT_TYPE, VENDOR_CONTENT_TYPE)?;
    req.insert_header(http::header::CONTENT_LENGTH, call.body.len())?;
    req.insert_header(http::header::ACCEPT, "application/json")?;
    if let Some(ua) = call.user_agent {
        req.insert_header(http::header::USER_AGENT, ua.clone())?;
    }
    Ok(req)
}

async fn exchange(
    session: &mut HttpSession,
    call: &Call<'_>,
    max_body: usize,
) -> Result<UpstreamResponse, Failure> {
    session
        .write_request_header(Box::new(request_header(call)?))
        .await?;
    session.write_request_body(call.body.clone(), true).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    let header = session.response_header().expect("read above");
    let status = header.status.as_u16();
    let content_type = header.headers.get(http::header::CONTENT_TYPE).cloned();
    let retry_after = header.headers.get(http::header::RETRY_AFTER).cloned();
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await? {
        if body.len() + chunk.len() > max_body {
            return Err(Failure::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(UpstreamResponse {
        status,
        content_type,
        retry_after,
        body: body.freeze(),
    })
}
