//! One attempt over HTTP/2 (`upstream.protocol = "h2"`): every call to an upstream address is a
//! stream on a shared connection (TLS with ALPN `h2`, or cleartext with prior knowledge for an
//! `http://` base URL), so that a replay window of hundreds of calls needs a few connections, not
//! hundreds. A call takes the least busy connection with a stream to spare under the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (often 100: at 50 ms, 2,000 calls a second a connection);
//! when all are full another is made, up to `MAX_CONNECTIONS`, past which calls wait for a
//! stream. Connections are made by pingora's transport connector, like HTTP/1.1's, and each is
//! driven by a task of its own.
//!
//! A call that fails before the server could have processed it (the connection was gone when
//! the stream opened, or the server refused the stream) moves to a new connection once, as an
//! HTTP/1.1 call on a stale pooled connection does.

use super::{Call, CallLimits, UpstreamError, UpstreamResponse};
use crate::lock;
use crate::vendor::VENDOR_CONTENT_TYPE;
use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderValue, Method, Request};
use pingora::protocols::Stream;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The connections to one upstream address; one is made at a time.
type Slot = Arc<tokio::sync::Mutex<Vec<Connection>>>;

/// Most HTTP/2 connections to one upstream address.
const MAX_CONNECTIONS: usize = 8;

#[derive(Clone)]
struct Connection {
    send: SendRequest<Bytes>,
    /// Streams open on it now.
    streams: Arc<AtomicUsize>,
    /// Set when its driver ended (the upstream closed it), or when a call on it failed after
    /// sending or was given up (a timeout): a connection gone silent would otherwise stay the
    /// least busy, and take every call.
    unusable: Arc<AtomicBool>,
}

/// A call on a connection; if it ends without an answer, the connection is not used again.
struct InFlight<'a> {
    connection: &'a Connection,
    answered: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.connection.unusable.store(true, Ordering::Relaxed);
        }
    }
}

/// One stream counted on its connection while it lasts.
struct OpenStream(Arc<AtomicUsize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connection {
    fn busy(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    fn has_room(&self) -> bool {
        self.busy() < self.send.current_max_send_streams()
    }

    fn usable(&self) -> bool {
        !self.unusable.load(Ordering::Relaxed)
    }

    fn open_stream(&self) -> OpenStream {
        self.streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(self.streams.clone())
    }
}

/// Shared HTTP/2 connections, up to `MAX_CONNECTIONS` per pool key (address, TLS, host). One the
/// upstream closed, or that failed a call, is dropped from the list when the next call looks.
#[derive(Default)]
pub(super) struct H2Pool {
    slots: Mutex<HashMap<u64, Slot, ahash::RandomState>>,
}

/// Why an exchange failed.
enum Failure {
    /// The server cannot have processed the request: safe on a new connection.
    Unsent(String),
    Sent(String),
    TooLarge,
}

impl H2Pool {
    /// Send `call` on a shared connection for `key`, made with `connect` when one is needed.
    pub(super) async fn attempt<C, F>(
        &self,
        key: u64,
        connect: C,
        call: &Call,
        limits: CallLimits,
    ) -> Result<UpstreamResponse, UpstreamError>
    where
        C: Fn() -> F,
        F: Future<Output = Result<Stream, UpstreamError>>,
    {
        let slot = self.slot(key);
        let mut fresh_tried = false;
        loop {
            let (connection, fresh) = self.connection(&slot, &connect).await?;
            let _stream = connection.open_stream();
            let mut in_flight = InFlight {
                connection: &connection,
                answered: false,
            };
            let result = exchange(connection.send.clone(), call, limits.max_body).await;
            // A refused stream or an oversized answer says nothing against the connection.
            in_flight.answered = !matches!(result, Err(Failure::Sent(_)));
            drop(in_flight);
            match result {
                Ok(response) => return Ok(response),
                Err(Failure::Unsent(e)) => {
                    connection.unusable.store(true, Ordering::Relaxed);
                    if fresh || fresh_tried {
                        return Err(UpstreamError::Connect(e));
                    }
                    fresh_tried = true;
                }
                Err(Failure::Sent(e)) => return Err(UpstreamError::Io(e)),
                Err(Failure::TooLarge) => return Err(UpstreamError::TooLarge(limits.max_body)),
            }
        }
    }

    /// The connections for `key`. A key seen for the first time (a new address of the upstream's
    /// host, say) first clears out the keys no call is using and no connection is left on, so
    /// that the map follows the addresses in use rather than every address ever resolved.
    fn slot(&self, key: u64) -> Slot {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get(&key) {
            return slot.clone();
        }
        slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot
                    .try_lock()
                    .map_or(true, |held| held.iter().any(Connection::usable))
        });
        slots.entry(key).or_default().clone()
    }

    /// The least busy of the slot's connections with a stream to spare, or a new one (whether it
    /// was made now is the second value), or, with `MAX_CONNECTIONS` all full, the least busy.
    /// Callers arriving while one is being made wait for it instead of making their own.
    async fn connection<C, F>(
        &self,
        slot: &Slot,
        connect: &C,
    ) -> Result<(Connection, bool), UpstreamError>
    where
        C: Fn() -> F,
        F: Future<Output = Result<Stream, UpstreamError>>,
    {
        let mut held = slot.lock().await;
        held.retain(Connection::usable);
        let least_busy = held.iter().min_by_key(|c| c.busy());
        if let Some(connection) = least_busy {
            if connection.has_room() || held.len() >= MAX_CONNECTIONS {
                return Ok((connection.clone(), false));
            }
        }
        let stream = connect().await?;
        let (send, driver) = h2::client::Builder::new()
            // Windows as large as the most we read, per stream and for the connection's streams
            // together, so that no answer stalls on flow control; headers bounded as HTTP/1.1's
            // are; no server push.
            .initial_window_size(1 << 20)
            .initial_connection_window_size(8 << 20)
            .max_header_list_size(16 * 1024)
            .enable_push(false)
            .handshake(stream)
            .await
            .map_err(|e| UpstreamError::Connect(format!("HTTP/2 handshake: {}", describe(&e))))?;
        let unusable = Arc::new(AtomicBool::new(false));
        let ended = unusable.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(error = %describe(&e), "upstream HTTP/2 connection ended");
            }
            ended.store(true, Ordering::Relaxed);
        });
        let connection = Connection {
            send,
            streams: Arc::new(AtomicUsize::new(0)),
            unusable,
        };
        held.push(connection.clone());
        Ok((connection, true))
    }
}

/// One stream: the request header and body, then the whole answer.
async fn exchange(
    send: SendRequest<Bytes>,
    call: &Call,
    max_body: usize,
) -> Result<UpstreamResponse, Failure> {
    let mut send = send
        .ready()
        .await
        .map_err(|e| Failure::Unsent(describe(&e)))?;
    let (answer, mut body) = send
        .send_request(request(call), false)
        .map_err(|e| unsent_if_refused(e, true))?;
    body.send_data(call.body.clone(), true)
        .map_err(|e| unsent_if_refused(e, false))?;
    let answer = answer.await.map_err(|e| unsent_if_refused(e, false))?;
    let (parts, mut stream) = answer.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(Failure::TooLarge);
    }
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    while let Some(chunk) = stream.data().await {
        let chunk = chunk.map_err(|e| Failure::Sent(describe(&e)))?;
        let _ = stream.flow_control().release_capacity(chunk.len());
        let read = first.as_ref().map_or(0, Bytes::len) + rest.len() + chunk.len();
        if read > max_body {
            return Err(Failure::TooLarge);
        }
        // One DATA frame (the usual answer) is kept as it came, without a copy.
        match &first {
            None => first = Some(chunk),
            Some(f) => {
                if rest.is_empty() {
                    rest.extend_from_slice(f);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    let body = if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    };
    Ok(UpstreamResponse {
        status: parts.status.as_u16(),
        content_type: parts.headers.get(CONTENT_TYPE).cloned(),
        retry_after: parts.headers.get(RETRY_AFTER).cloned(),
        body,
    })
}

/// A stream the server refused was not processed: `REFUSED_STREAM`, or a graceful `GOAWAY`
/// (`NO_ERROR`) that accepted only streams below it (the h2 crate fails exactly those with the
/// GOAWAY; streams it accepted and left unanswered end with the connection, as I/O errors).
/// `opening` says the stream was never sent at all.
fn unsent_if_refused(e: h2::Error, opening: bool) -> Failure {
    let refused = e.reason() == Some(h2::Reason::REFUSED_STREAM)
        || (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR));
    if opening || refused {
        Failure::Unsent(describe(&e))
    } else {
        Failure::Sent(describe(&e))
    }
}

/// An HTTP/2 error for logs and answers: its kind and reason code only. Its `Display` would add
/// a GOAWAY's debug data, which the upstream writes and which nothing here has scrubbed.
fn describe(e: &h2::Error) -> String {
    match (e.reason(), e.get_io()) {
        (_, Some(io)) => format!("HTTP/2 connection I/O: {}", io.kind()),
        (Some(reason), None) if e.is_go_away() => format!("HTTP/2 GOAWAY ({reason:?})"),
        (Some(reason), None) => format!("HTTP/2 stream reset ({reason:?})"),
        (None, None) => "HTTP/2 connection error".to_string(),
    }
}

/// The request header: the same fresh header set as HTTP/1.1's (`connection::request_bytes`),
/// with the authority as a pseudo-header instead of `Host`.
fn request(call: &Call) -> Request<()> {
    let route = &call.endpoint;
    let target = &route.target;
    let scheme = if target.tls { "https" } else { "http" };
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = http::Uri::builder()
        .scheme(scheme)
        .authority(target.authority.as_str())
        .path_and_query(route.path.as_str())
        .build()
        .expect("the route's path and authority were checked when the config was read");
    let headers = request.headers_mut();
    headers.insert(AUTHORIZATION, route.authorization.clone());
    headers.insert("wp13n-token", route.token.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(VENDOR_CONTENT_TYPE));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(call.body.len()));
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(ua) = &call.client.user_agent {
        headers.insert(USER_AGENT, ua.clone());
    }
    if let Some(address) = call.client.address {
        if let Ok(v) = HeaderValue::from_str(&address.to_string()) {
            headers.insert("x-forwarded-for", v);
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_left_without_a_connection_or_a_caller_are_forgotten() {
        let pool = H2Pool::default();
        let refused = || async { Err(UpstreamError::Connect("refused".into())) };
        // A thousand addresses, one after another, none of them reachable.
        for key in 0..1000 {
            let slot = pool.slot(key);
            assert!(pool.connection(&slot, &refused).await.is_err());
        }
        assert!(lock(&pool.slots).len() <= 1, "{}", lock(&pool.slots).len());
        // A key some call still holds stays.
        let held = pool.slot(5000);
        let _ = pool.slot(5001);
        assert!(lock(&pool.slots).contains_key(&5000));
        drop(held);
    }
}
