//! The request step's phases, in order (a request leaves at the first that answers it):
//!
//! ```text
//!  form::check      header size, request target, Host, client address and lists   4xx
//!  route            the exact path among the configured routes                     404
//!  CORS, method     the origin against the service's; OPTIONS answered here        403, 204, 405
//!  limits.address   the client address's bucket                                    429
//!  content type, form::read_body                                                   415, 413, 408
//!  visitor::who     crawlers, consent (200 without payload); the visitor: the body's
//!                   identifier, or the edge's signed cookie                        400, 401, 403
//!  schema           the route's fields: dropped or refused                         400
//!  limits.visitor   the visitor's bucket (shared by every instance with [shared])  429
//!  uuid             one identity for every send of the event
//!  Flow::deliver    the cache step, the upstream, the spool                        2xx, 5xx
//! ```

use super::form::{self, read_body};
use super::visitor::{who, Who};
use super::{Edge, RequestCtx};
use crate::answer::Answer;
use crate::config::{Config, Route};
use crate::error::EdgeError;
use crate::event::{content_type_ok, Event};
use crate::guard::OriginCheck;
use crate::upstream::ClientInfo;
use http::{header, Method};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;

impl Edge {
    pub(super) async fn handle(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        config: &Config,
    ) -> Result<Answer, EdgeError> {
        let client = form::check(session, config)?;
        let req = session.req_header();
        let route = config
            .route(req.uri.path())
            .ok_or(EdgeError::UnknownRoute)?
            .clone();
        ctx.route = Some(route.clone());
        if let Some(preflight) = cors_and_method(&route, req, ctx)? {
            return Ok(preflight);
        }
        self.limits.address(config.rate.per_address, client)?;
        if !content_type_ok(req.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes())) {
            return Err(EdgeError::UnsupportedMediaType);
        }
        let info = ClientInfo {
            user_agent: req.headers.get(header::USER_AGENT).cloned(),
            address: config.clients.forwarded(client),
        };
        let body = read_body(session, config).await?;
        let mut event = match who(session, ctx, &route, body)? {
            Who::Event(event) => event,
            Who::Answered(answer) => return Ok(answer),
        };
        let service = &route.service;
        apply_schema(&route, &mut event)?;
        let shared = self.flow.shared.as_deref();
        let spec = config.rate.per_identifier;
        self.limits
            .visitor(spec, shared, &service.id, &event.visitor.value)
            .await?;
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

/// The origin against the service's CORS policy, then the method: `Some` for a preflight,
/// answered here.
fn cors_and_method(
    route: &Route,
    req: &RequestHeader,
    ctx: &mut RequestCtx,
) -> Result<Option<Answer>, EdgeError> {
    let cors = &route.service.cors;
    match cors.check(req.headers.get(header::ORIGIN)) {
        OriginCheck::Refused => return Err(EdgeError::ForeignOrigin),
        OriginCheck::Allowed(origin) => ctx.cors_origin = Some(origin),
        OriginCheck::NotConfigured | OriginCheck::NoOrigin => {}
    }
    match req.method {
        Method::POST => Ok(None),
        Method::OPTIONS => {
            let mut answer = Answer::preflight();
            answer.preflight_max_age = Some(cors.max_age_seconds);
            Ok(Some(answer))
        }
        _ => Err(EdgeError::MethodNotAllowed),
    }
}

/// The route's schema: fields it does not list are dropped or refused, before the event is
/// counted, cached or spooled. Identifiers and `uuid` always pass.
fn apply_schema(route: &Route, event: &mut Event) -> Result<(), EdgeError> {
    if let Some(schema) = &route.schema {
        let always: Vec<&str> = route
            .service
            .identifiers
            .iter()
            .map(String::as_str)
            .chain([crate::event::UUID_FIELD])
            .collect();
        if let Some(body) = schema.apply(&event.body, &always)? {
            event.body = body;
        }
    }
    Ok(())
}
