//! The `ProxyHttp` implementation. Every request is answered in `request_filter`: route, guard,
//! read, validate, then the cache step and the shared upstream client (`flow`). Pingora's own
//! upstream phase is never reached, so no client text can ever choose an upstream.

use crate::answer::Answer;
use crate::config::{Config, Route};
use crate::error::EdgeError;
use crate::event::{content_type_ok, identify};
use crate::flow::Flow;
use crate::guard::OriginCheck;
use crate::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, Method};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

/// The proxy's state: the config in force (swapped whole on reload) and the request flow.
pub struct Edge {
    pub config: Arc<ArcSwap<Config>>,
    pub flow: Flow,
}

/// Per-request facts for the `logging` phase.
pub struct RequestCtx {
    start: Instant,
    route: Option<Arc<Route>>,
    code: Option<u32>,
    /// The browser origin to echo, once the guard allowed it.
    cors_origin: Option<http::HeaderValue>,
    /// Filled only when the access log is on.
    access: Option<(Option<String>, Option<u16>)>,
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            route: None,
            code: None,
            cors_origin: None,
            access: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
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
        if config.access_log {
            ctx.access = Some((answer.cache_status.clone(), answer.upstream_status));
        }
        answer.write(session).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        // request_filter answers every request; reaching this is a bug, never a forward.
        Error::e_explain(
            InternalError,
            "p13n-edge never proxies through pingora's upstream phase",
        )
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut RequestCtx,
    ) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let (service, route) = match &ctx.route {
            Some(r) => (r.service.name.as_str(), r.label.as_str()),
            None => ("", ""),
        };
        let code = metrics::code_label(ctx.code);
        metrics::REQUESTS
            .with_label_values(&[service, route, metrics::status_class(status), &code])
            .inc();
        let elapsed = ctx.start.elapsed();
        metrics::REQUEST_DURATION
            .with_label_values(&[service])
            .observe(elapsed.as_secs_f64());
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
}

impl Edge {
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        config: &Config,
    ) -> Result<Answer, EdgeError> {
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
        if !content_type_ok(req.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes())) {
            return Err(EdgeError::UnsupportedMediaType);
        }
        let user_agent = req.headers.get(header::USER_AGENT).cloned();
        let body = read_body(session, config).await?;
        let visitor = identify(&body, &route.service.identifiers)?;
        self.flow
            .deliver(config, route, visitor.value, body, user_agent)
            .await
    }
}

/// Read the whole body, refusing more than the limit or a client slower than the timeout.
async fn read_body(session: &mut Session, config: &Config) -> Result<Bytes, EdgeError> {
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
