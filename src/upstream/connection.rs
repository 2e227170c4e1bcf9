//! One attempt at one upstream address: a pooled pingora connection, a fresh request header,
//! the body, and the whole answer read back.

use super::{Call, CallLimits, UpstreamError, UpstreamResponse};
use crate::config::{Timeouts, UpstreamTarget};
use crate::event::VENDOR_CONTENT_TYPE;
use bytes::Bytes;
use http::HeaderValue;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;

/// Send `call` to `addr`. A pooled connection that the upstream closed while idle fails on
/// first use, and pingora marks such errors retryable: only then is the call made again, once,
/// on a fresh connection.
pub(super) async fn attempt(
    connector: &Connector,
    addr: SocketAddr,
    call: &Call,
    limits: CallLimits,
) -> Result<UpstreamResponse, UpstreamError> {
    let peer = peer(addr, &call.route.service.upstream, &limits.timeouts);
    for _ in 0..2 {
        let (mut session, reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        match exchange(&mut session, call, limits.max_body).await {
            Ok(response) => {
                if session.response_done() {
                    let idle = Some(limits.timeouts.upstream_idle);
                    connector.release_http_session(session, &peer, idle).await;
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
pub fn request_header(call: &Call) -> Result<RequestHeader, Box<pingora::Error>> {
    let route = &call.route;
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
    if let Some(ua) = &call.client.user_agent {
        req.insert_header(http::header::USER_AGENT, ua.clone())?;
    }
    if let Some(address) = call.client.address {
        req.insert_header("X-Forwarded-For", address.to_string())?;
    }
    Ok(req)
}

async fn exchange(
    session: &mut HttpSession,
    call: &Call,
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
    // Own copies: a parsed header value shares the whole read buffer (kilobytes), and the
    // content type lives on in the offer cache.
    let owned = |name| {
        header
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| HeaderValue::from_bytes(v.as_bytes()).ok())
    };
    let content_type = owned(http::header::CONTENT_TYPE);
    let retry_after = owned(http::header::RETRY_AFTER);
    let mut body = Vec::new();
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
        // Exactly sized: the body may live on in the offer cache.
        body: Bytes::from(body.into_boxed_slice()),
    })
}
