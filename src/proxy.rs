//! The `ProxyHttp` implementation. Every request is answered in `request_filter`: route, guard,
//! read, validate, then one call through the shared upstream client. Pingora's own upstream
//! phase is never reached, so no client text can ever choose an upstream.

use crate::config::{Config, Route};
use crate::error::{error_body, vendor_code, EdgeError};
use crate::event::{content_type_ok, identify};
use crate::metrics;
use crate::upstream::{Call, CallLimits, UpstreamClient, UpstreamError, UpstreamResponse};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

const JSON: &str = "application/json";
const ALLOW: &str = "POST, OPTIONS";

/// The proxy's state: the config in force (swapped whole on reload) and the upstream client.
pub struct Edge {
    pub config: Arc<ArcSwap<Config>>,
    pub client: Arc<UpstreamClient>,
}

/// Per-request facts for the `logging` phase.
pub struct RequestCtx {
    start: Instant,
    route: Option<Arc<Route>>,
    code: Option<u32>,
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            route: None,
            code: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // In-flight requests keep the config they started with, whatever a reload swaps in.
        let config = self.config.load_full();
        let answer = match self.handle(session, ctx, &config).await {
            Ok(answer) => answer,
            Err(e) => {
                // Unread request bytes may be left: do not reuse this connection.
                session.set_keepalive(None);
                ctx.code = Some(e.code());
                Answer::error(&e)
            }
        };
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
        metrics::REQUEST_DURATION
            .with_label_values(&[service])
            .observe(ctx.start.elapsed().as_secs_f64());
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
        match req.method {
            Method::POST => {}
            Method::OPTIONS => return Ok(Answer::preflight()),
            _ => return Err(EdgeError::MethodNotAllowed),
        }
        if !content_type_ok(req.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes())) {
            return Err(EdgeError::UnsupportedMediaType);
        }
        let user_agent = req.headers.get(header::USER_AGENT).cloned();
        let body = read_body(session, config).await?;
        identify(&body, &route.service.identifiers)?;

        let call = Call {
            route: &route,
            body,
            user_agent: user_agent.as_ref(),
        };
        let limits = CallLimits {
            timeouts: config.timeouts,
            max_body: config.max_upstream_body_bytes,
        };
        match self.client.send(&call, limits).await {
            Ok(response) => Ok(relay(response, ctx)),
            Err(e) => Err(match e {
                UpstreamError::Timeout => EdgeError::UpstreamTimeout,
                UpstreamError::TooLarge(_) => EdgeError::BadUpstreamResponse,
                UpstreamError::CircuitOpen => EdgeError::CircuitOpen,
                _ => EdgeError::UpstreamUnavailable,
            }),
        }
    }
}

/// Pass the upstream's answer on: 2xx bodies untouched, errors in the vendor's shape.
fn relay(response: UpstreamResponse, ctx: &mut RequestCtx) -> Answer {
    let status = response.status;
    if status < 300 {
        let content_type = response
            .content_type
            .unwrap_or(HeaderValue::from_static(JSON));
        return Answer {
            status,
            content_type,
            body: response.body,
            retry_after: None,
        };
    }
    let code = vendor_code(&response.body);
    ctx.code = code;
    let body = match code {
        Some(_) => response.body,
        None => error_body(
            u32::from(status),
            &format!("upstream answered HTTP {status}"),
        ),
    };
    Answer {
        status,
        content_type: HeaderValue::from_static(JSON),
        body,
        retry_after: response.retry_after,
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

/// A complete answer, written in one go.
struct Answer {
    status: u16,
    content_type: HeaderValue,
    body: Bytes,
    retry_after: Option<HeaderValue>,
}

impl Answer {
    fn error(e: &EdgeError) -> Answer {
        Answer {
            status: e.status(),
            content_type: HeaderValue::from_static(JSON),
            body: e.body(),
            retry_after: None,
        }
    }

    fn preflight() -> Answer {
        Answer {
            status: 204,
            content_type: HeaderValue::from_static(JSON),
            body: Bytes::new(),
            retry_after: None,
        }
    }

    async fn write(self, session: &mut Session) -> Result<()> {
        let mut resp = ResponseHeader::build(self.status, Some(6))?;
        if !self.body.is_empty() {
            resp.insert_header(header::CONTENT_TYPE, self.content_type)?;
        }
        resp.insert_header(header::CONTENT_LENGTH, self.body.len())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        if matches!(self.status, 204 | 405) {
            resp.insert_header(header::ALLOW, ALLOW)?;
        }
        if let Some(retry_after) = self.retry_after {
            resp.insert_header(header::RETRY_AFTER, retry_after)?;
        }
        let empty = self.body.is_empty();
        session.write_response_header(Box::new(resp), empty).await?;
        if !empty {
            session.write_response_body(Some(self.body), true).await?;
        }
        Ok(())
    }
}
