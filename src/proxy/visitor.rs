//! Who sent the event, once its body is read: crawlers and visitors without consent are
//! answered here, unforwarded; otherwise the event and its visitor, from the body (and
//! `identifier_cookie`) or, in signed-cookie mode, from the edge's own cookie.

use super::form::over_tls;
use super::RequestCtx;
use crate::answer::{Answer, Detail};
use crate::config::{Route, Service};
use crate::error::EdgeError;
use crate::event::{claim, identify_with_cookie, Event};
use crate::guard::identity::BodyIdentifier;
use crate::guard::IdentityPolicy;
use crate::metrics;
use bytes::Bytes;
use http::header;
use pingora::protocols::http::ServerSession;

/// The event to deliver, or the answer that ends the request here.
pub(super) enum Who {
    Event(Event),
    Answered(Answer),
}

pub(super) fn who(
    session: &ServerSession,
    ctx: &mut RequestCtx,
    route: &Route,
    body: Bytes,
) -> Result<Who, EdgeError> {
    let service = &route.service;
    let headers = &session.req_header().headers;
    // A crawler's event would cost the customer's quota and fill a profile nobody has: it
    // gets the vendor's empty 200, read but never forwarded, spooled or counted.
    let agent = headers
        .get(header::USER_AGENT)
        .map_or(&b""[..], |ua| ua.as_bytes());
    if service.bots.is_bot(agent) {
        route.endpoint.series.crawlers.inc();
        return Ok(Who::Answered(Answer::without_payload(Detail::Crawler)));
    }
    // Without consent, the event is neither forwarded nor kept.
    if let Err(why) = service.consent.check(headers) {
        metrics::NO_CONSENT
            .with_label_values(&[&service.name, why.label()])
            .inc();
        // Consent withdrawn takes the edge's visitor cookie with it.
        if let Some(identity) = &service.identity {
            if identity.has_cookie(headers) {
                ctx.set_cookie = Some(identity.removal(over_tls(session)));
            }
        }
        return Ok(Who::Answered(Answer::without_payload(Detail::NoConsent)));
    }
    let event = match &service.identity {
        None => identify_with_cookie(
            body,
            &service.identifiers,
            service.identifier_cookie.as_deref(),
            headers.get_all(header::COOKIE).iter(),
        )?,
        Some(identity) => signed_visitor(session, ctx, service, identity, body)?,
    };
    Ok(Who::Event(event))
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
