//! The request's form, before its route is looked at: header size, request target and `Host`,
//! the client's address (trusted proxies, client lists); and later its body, within the limit
//! and the timeout.

use crate::config::Config;
use crate::error::EdgeError;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::protocols::http::ServerSession;
use std::net::IpAddr;

/// The form checks; the client's address when they pass.
pub(super) fn check(session: &ServerSession, config: &Config) -> Result<IpAddr, EdgeError> {
    let req = session.req_header();
    if header_block_len(req) > config.max_header_bytes {
        return Err(EdgeError::HeadersTooLarge(config.max_header_bytes));
    }
    request_target_ok(req)?;
    client_address(session, config)
}

/// Whether the request came over the TLS listener.
pub(super) fn over_tls(session: &ServerSession) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// The client's address (see `ClientPolicy::client_address`), if the client lists admit it.
fn client_address(session: &ServerSession, config: &Config) -> Result<IpAddr, EdgeError> {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let client = config
        .clients
        .client_address(peer, &session.req_header().headers);
    if config.clients.permits(client) {
        Ok(client)
    } else {
        Err(EdgeError::ClientRefused)
    }
}

/// HTTP/1 requests must name their target in origin-form (`/db/table`) with exactly one `Host`:
/// an absolute-form target or a second `Host` is someone probing for a forward proxy or for a
/// cache key mismatch, never a browser. HTTP/2 carries the authority in its own field.
fn request_target_ok(req: &pingora::http::RequestHeader) -> Result<(), EdgeError> {
    if req.version >= http::Version::HTTP_2 {
        return Ok(());
    }
    if req.uri.scheme().is_some() || req.uri.authority().is_some() {
        return Err(EdgeError::BadRequest(
            "absolute-form request targets are not served",
        ));
    }
    if req.version == http::Version::HTTP_11
        && req.headers.get_all(header::HOST).iter().count() != 1
    {
        return Err(EdgeError::BadRequest("exactly one Host header is required"));
    }
    Ok(())
}

/// Bytes of the request line and headers as sent (give or take whitespace).
fn header_block_len(req: &pingora::http::RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

/// Read the whole body, refusing more than the limit or a client slower than the timeout.
pub(super) async fn read_body(
    session: &mut ServerSession,
    config: &Config,
) -> Result<Bytes, EdgeError> {
    let limit = config.max_body_bytes;
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(EdgeError::BodyTooLarge(limit));
    }
    let read = async {
        let mut body = BytesMut::with_capacity(declared.unwrap_or(512) as usize);
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|_| EdgeError::InvalidEvent("the request body could not be read"))?
        {
            if body.len() + chunk.len() > limit {
                return Err(EdgeError::BodyTooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(config.timeouts.client_body, read)
        .await
        .map_err(|_| EdgeError::ClientTimeout)?
}
