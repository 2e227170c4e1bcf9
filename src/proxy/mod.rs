//! The request step, on pingora-core's `HttpServerApp`: pingora's own HTTP/1 and HTTP/2
//! sessions, without pingora-proxy's phases, which p13n-edge never used past `request_filter`
//! and which cost a request about 15,000 instructions (a future of some 14 KB copied into a box
//! per request, among the rest; `benches/` measures both). Every request is answered here:
//! route, guard, read, validate, then the cache step and the shared upstream client (`flow`).
//! Nothing here can send a request anywhere but to a configured route's upstream.
//!
//! A request's path: read the header (a malformed one gets pingora's 400 and the connection
//! closes) → `handle` (request.rs: its phase chart, each phase a step of its own: form.rs,
//! the guards, visitor.rs, the schema, `Flow::deliver`) → the answer written → one metric
//! update and the access line → the connection back for reuse. This file only hands off.

mod form;
mod request;
mod visitor;

use crate::answer::Answer;
use crate::config::{Config, Route};
use crate::flow::Flow;
use crate::guard::Limits;
use crate::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Method;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::ErrorType::InvalidHTTPHeader;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// The proxy's state: the config in force (swapped whole on reload), the request flow, and the
/// rate limiters (which outlive reloads; the config gives their rates).
pub struct Edge {
    pub config: Arc<ArcSwap<Config>>,
    pub flow: Flow,
    limits: Limits,
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
            limits: Limits::new(max_tracked),
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
}
