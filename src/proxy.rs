//! The request step, on pingora-core's `HttpServerApp`: pingora's own HTTP/1 and HTTP/2
//! sessions, without pingora-proxy's phases, which p13n-edge never used past `request_filter`
//! and which cost a request about 15,000 instructions (a future of some 14 KB copied into a box
//! per request, among the rest; `benches/` measures both). Every request is answered here:
//! route, guard, read, validate, then the cache step and the shared upstream client (`flow`).
//! Nothing here can send a request anywhere but to a configured route's upstream.
//!
//! A request's path: read the header (a malformed one gets pingora's 400 and the connection
//! closes) → `handle` (form checks, client address, route, CORS, method, address limit, content
//! type, body, identifier, visitor limit, uuid) → `Flow::deliver` (cache, upstream, spool) →
//! the answer written → one metric update and the access line → the connection back for reuse.

use crate::answer::{Answer, Detail};
use crate::config::{Config, Route, Service};
use crate::error::EdgeError;
use crate::event::{claim, content_type_ok, identify_with_cookie, Event};
use crate::flow::Flow;
use crate::guard::clients::address_key;
use crate::guard::identity::BodyIdentifier;
use crate::guard::rate::{BucketSpec, Limiter, Overflow, Verdict, VisitorKey};
use crate::guard::{IdentityPolicy, OriginCheck};
use crate::metrics;
use crate::upstream::ClientInfo;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, Method};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::ErrorType::InvalidHTTPHeader;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// The proxy's state: the config in force (swapped whole on reload), the request flow, and the
/// rate limiters (which outlive reloads; the config gives their rates).
pub struct Edge {
    pub config: Arc<ArcSwap<Config>>,
    pub flow: Flow,
    by_address: Limiter<IpAddr>,
    by_visitor: Limiter<(Arc<str>, VisitorKey)>,
    options: HttpServerOptions,
    /// Set when the service shuts down: connections waiting for their next request close.
    stopping: AtomicBool,
    stop: Notify,
}

/// What a connection is waiting for its request on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Just accepted: its first request.
    New,
    /// Kept alive after an answer (or an HTTP/2 stream): closed when the service stops.
    Reused,
}

/// Per-request facts for the metrics and the access line.
pub struct RequestCtx {
    start: Instant,
    route: Option<Arc<Route>>,
    code: Option<u32>,
    /// The browser origin to echo, once the guard allowed it.
    cors_origin: Option<http::HeaderValue>,
    /// Filled only when the access log is on.
    access: Option<(Option<String>, Option<u16>)>,
    /// Signed-cookie mode: the cookie to send, whatever the answer.
    set_cookie: Option<http::HeaderValue>,
}

#[async_trait]
impl HttpServerApp for Edge {
    /// HTTP/2 streams come here, from pingora; HTTP/1 requests call `serve_http` directly.
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        self.serve_http(session, shutdown, Waiting::Reused).await
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }

    async fn http_cleanup(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_waiters();
    }
}

impl Edge {
    /// One request on `session`, and the connection back when it can serve another. Not the
    /// trait method for HTTP/1: `async_trait` boxes its future, a copy of some kilobytes per
    /// request, where the connection's own future (boxed once) can hold this one.
    pub async fn serve_http(
        &self,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
        waiting: Waiting,
    ) -> Option<ReusedHttpStream> {
        let read = match waiting {
            // Accepted before the service stopped: its request is on its way, and is served
            // (within the header timeout) even if the service stops meanwhile.
            Waiting::New => session.read_request().await,
            Waiting::Reused => tokio::select! {
                // Biased: a request already buffered is served, not dropped.
                biased;
                read = session.read_request() => read,
                _ = self.stopped() => return None,
            },
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                // As pingora-proxy does: a malformed header gets a plain 400, anything else
                // means the connection is broken.
                if matches!(e.etype, InvalidHTTPHeader) {
                    let _ = session.respond_error(400).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        // CONNECT changes how the message is framed: refused, and the connection closed.
        if session.req_header().method == Method::CONNECT {
            let _ = session.respond_error(405).await;
            session.shutdown().await;
            return None;
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let mut ctx = RequestCtx {
            start: Instant::now(),
            route: None,
            code: None,
            cors_origin: None,
            access: None,
            set_cookie: None,
        };
        let written = self.serve(&mut session, &mut ctx).await;
        log(&session, &ctx);
        if written.is_err() {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        let stream = session.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

/// One metric update per request, and the access line when it is on.
fn log(session: &ServerSession, ctx: &RequestCtx) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let (service, route) = match &ctx.route {
        Some(r) => (r.service.name.as_str(), r.endpoint.label.as_str()),
        None => ("", ""),
    };
    let class = metrics::status_class(status);
    let series = ctx.route.as_ref().map(|r| &r.endpoint.series);
    match series {
        Some(series) if class == "2xx" && ctx.code.is_none() => series.answered_2xx.inc(),
        _ => {
            let code = metrics::code_label(ctx.code);
            metrics::REQUESTS
                .with_label_values(&[service, route, class, &code])
                .inc();
        }
    }
    let elapsed = ctx.start.elapsed();
    match series {
        Some(series) => series.duration.observe(elapsed.as_secs_f64()),
        None => metrics::REQUEST_DURATION
            .with_label_values(&[service])
            .observe(elapsed.as_secs_f64()),
    }
    if let Some((cache_status, upstream_status)) = &ctx.access {
        // Never the client id, the body or a header: nothing here identifies a visitor.
        tracing::info!(
            target: "p13n_edge::access",
            service,
            route,
            status,
            cache_status = cache_status.as_deref().unwrap_or("-"),
            upstream_status = upstream_status.unwrap_or(0),
            ms = elapsed.as_secs_f64() * 1000.0,
        );
    }
}

impl Edge {
    /// `options` are pingora's for each connection (the HTTP/2 idle timeout).
    pub fn new(config: Arc<ArcSwap<Config>>, flow: Flow, options: HttpServerOptions) -> Self {
        let max_tracked = config.load().rate.max_tracked;
        Edge {
            config,
            flow,
            by_address: Limiter::new(max_tracked),
            // Visitors past max_tracked have been through the address limit: that one holds.
            by_visitor: Limiter::with_overflow(max_tracked, Overflow::Pass),
            options,
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
        }
    }

    /// Resolves once the service is shutting down.
    async fn stopped(&self) {
        let notified = self.stop.notified();
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// Answer one request, whatever it is; an error here is only the client gone.
    async fn serve(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // In-flight requests keep the config they started with, whatever a reload swaps in.
        let config = self.config.load_full();
        let mut answer = match self.handle(session, ctx, &config).await {
            Ok(answer) => answer,
            Err(e) => {
                // Unread request bytes may be left: do not reuse this connection.
                session.set_keepalive(None);
                Answer::error(&e)
            }
        };
        ctx.code = answer.code;
        answer.cors_origin = ctx.cors_origin.take();
        answer.set_cookie = ctx.set_cookie.take();
        if config.access_log {
            ctx.access = Some((answer.cache_status.clone(), answer.upstream_status));
        }
        crate::runtime::write_soon().await;
        answer.write(session).await
    }

    async fn handle(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        config: &Config,
    ) -> Result<Answer, EdgeError> {
        let req = session.req_header();
        let header_bytes = header_block_len(req);
        if header_bytes > config.max_header_bytes {
            return Err(EdgeError::HeadersTooLarge(config.max_header_bytes));
        }
        request_target_ok(req)?;
        let client = client_address(session, config)?;
        let req = session.req_header();
        let route = config
            .route(req.uri.path())
            .ok_or(EdgeError::UnknownRoute)?
            .clone();
        ctx.route = Some(route.clone());
        let cors = &route.service.cors;
        match cors.check(req.headers.get(header::ORIGIN)) {
            OriginCheck::Refused => return Err(EdgeError::ForeignOrigin),
            OriginCheck::Allowed(origin) => ctx.cors_origin = Some(origin),
            OriginCheck::NotConfigured | OriginCheck::NoOrigin => {}
        }
        match req.method {
            Method::POST => {}
            Method::OPTIONS => {
                let mut answer = Answer::preflight();
                answer.preflight_max_age = Some(cors.max_age_seconds);
                return Ok(answer);
            }
            _ => return Err(EdgeError::MethodNotAllowed),
        }
        if let Some(spec) = config.rate.per_address {
            limit(&self.by_address, address_key(client), spec, "address")?;
        }
        if !content_type_ok(req.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes())) {
            return Err(EdgeError::UnsupportedMediaType);
        }
        let info = ClientInfo {
            user_agent: req.headers.get(header::USER_AGENT).cloned(),
            address: config.clients.forwarded(client),
        };
        let body = read_body(session, config).await?;
        let service = &route.service;
        // A crawler's event would cost the customer's quota and fill a profile nobody has: it
        // gets the vendor's empty 200, read but never forwarded, spooled or counted.
        let agent = info
            .user_agent
            .as_ref()
            .map_or(&b""[..], |ua| ua.as_bytes());
        if service.bots.is_bot(agent) {
            route.endpoint.series.crawlers.inc();
            return Ok(Answer::without_payload(Detail::Crawler));
        }
        // Without consent, the event is neither forwarded nor kept.
        if let Err(why) = service.consent.check(&session.req_header().headers) {
            metrics::NO_CONSENT
                .with_label_values(&[&service.name, why.label()])
                .inc();
            // Consent withdrawn takes the edge's visitor cookie with it.
            if let Some(identity) = &service.identity {
                if identity.has_cookie(&session.req_header().headers) {
                    ctx.set_cookie = Some(identity.removal(over_tls(session)));
                }
            }
            return Ok(Answer::without_payload(Detail::NoConsent));
        }
        let mut event = match &service.identity {
            None => identify_with_cookie(
                body,
                &service.identifiers,
                service.identifier_cookie.as_deref(),
                session.req_header().headers.get_all(header::COOKIE).iter(),
            )?,
            Some(identity) => signed_visitor(session, ctx, service, identity, body)?,
        };
        // The route's schema: fields it does not list are dropped or refused, before the event
        // is counted, cached or spooled. Identifiers and `uuid` always pass.
        if let Some(schema) = &route.schema {
            let always: Vec<&str> = service
                .identifiers
                .iter()
                .map(String::as_str)
                .chain([crate::event::UUID_FIELD])
                .collect();
            if let Some(body) = schema.apply(&event.body, &always)? {
                event.body = body;
            }
        }
        if let Some(spec) = config.rate.per_identifier {
            // Shared by every instance when the shared tier answers; local when it does not.
            let shared = match &self.flow.shared {
                Some(tier) => tier.limit(&service.id, &event.visitor.value, spec).await,
                None => None,
            };
            match shared {
                Some(verdict) => limited(verdict, "identifier")?,
                None => {
                    let key = (service.id.clone(), VisitorKey::new(&event.visitor.value));
                    limit(&self.by_visitor, key, spec, "identifier")?;
                }
            }
        }
        // One identity for every send of this event: the live call, a retry, the spool's replay.
        let id = self.flow.spool.next_event();
        if service.event_uuid {
            event = event.with_uuid(&id.uuid());
        }
        self.flow
            .deliver(config, route, event.visitor.value, id, event.body, info)
            .await
    }
}

/// Signed-cookie mode: the visitor is the cookie's (or the signed header's), a new one when
/// neither is valid, and the event is theirs whatever its body says.
fn signed_visitor(
    session: &ServerSession,
    ctx: &mut RequestCtx,
    service: &Service,
    identity: &IdentityPolicy,
    body: Bytes,
) -> Result<Event, EdgeError> {
    let count = |outcome: &str| {
        metrics::VISITOR_IDS
            .with_label_values(&[&service.name, outcome])
            .inc()
    };
    let headers = &session.req_header().headers;
    let visitor = identity
        .visitor(headers, over_tls(session), std::time::SystemTime::now())
        .map_err(|_| {
            count("header_refused");
            EdgeError::BadVisitorToken
        })?;
    count(visitor.outcome.label());
    // Sent with the answer, error or not: a retry keeps the id.
    ctx.set_cookie = visitor.set_cookie;
    let refuse = identity.body_identifier == BodyIdentifier::Refuse;
    claim(body, &service.identifiers, &visitor.id, refuse).inspect_err(|e| {
        if *e == EdgeError::ForeignVisitor {
            count("body_refused");
        }
    })
}

/// Whether the request came over the TLS listener.
fn over_tls(session: &ServerSession) -> bool {
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

/// Count one request against a limiter; over the limit, say when to come back.
fn limit<K: std::hash::Hash + Eq>(
    limiter: &Limiter<K>,
    key: K,
    spec: BucketSpec,
    name: &str,
) -> Result<(), EdgeError> {
    let (verdict, overflowed) = limiter.check(key, spec, Instant::now());
    if overflowed {
        metrics::RATE_LIMIT_OVERFLOW
            .with_label_values(&[name])
            .inc();
    }
    metrics::RATE_LIMIT_TRACKED
        .with_label_values(&[name])
        .set(limiter.tracked() as i64);
    limited(verdict, name)
}

/// A limiter's verdict as the request's outcome: over the limit, when to come back.
fn limited(verdict: Verdict, name: &str) -> Result<(), EdgeError> {
    match verdict {
        Verdict::Allowed => Ok(()),
        Verdict::Limited(wait) => {
            metrics::RATE_LIMITED.with_label_values(&[name]).inc();
            Err(EdgeError::RateLimited(
                wait.as_secs_f64().ceil().max(1.0) as u64
            ))
        }
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
async fn read_body(session: &mut ServerSession, config: &Config) -> Result<Bytes, EdgeError> {
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
