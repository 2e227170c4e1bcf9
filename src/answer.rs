//! The answer step: a complete response (status, body, `Cache-Status`, `Retry-After`), written
//! to the client in one go.

use crate::cache::{Freshness, Offers};
use crate::error::{error_body, vendor_code, EdgeError};
use crate::upstream::UpstreamResponse;
use bytes::Bytes;
use http::{header, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use std::time::Instant;

const JSON: &str = "application/json";
const ALLOW: &str = "POST, OPTIONS";

/// Why an answer came from the cache, or from the edge alone: `detail=` in `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// The visitor's earlier events are still queued: this one queued behind them.
    Queued,
    Upstream429,
    Upstream5xx,
    CircuitOpen,
    Timeout,
    Unreachable,
    /// The call passed the deadline and goes on in the background.
    Deadline,
    Crawler,
    NoConsent,
}

impl Detail {
    pub fn as_str(self) -> &'static str {
        match self {
            Detail::Queued => "queued",
            Detail::Upstream429 => "upstream-429",
            Detail::Upstream5xx => "upstream-5xx",
            Detail::CircuitOpen => "circuit-open",
            Detail::Timeout => "timeout",
            Detail::Unreachable => "unreachable",
            Detail::Deadline => "deadline",
            Detail::Crawler => "crawler",
            Detail::NoConsent => "no-consent",
        }
    }
}

/// How a relayed upstream answer passed the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// The service keeps no cache.
    Bypass,
    /// Not cached (not a 2xx).
    Miss,
    /// A 2xx, now in the cache.
    Stored,
}

impl Forwarded {
    fn cache_status(self) -> &'static str {
        match self {
            Forwarded::Bypass => "p13n-edge; fwd=bypass",
            Forwarded::Miss => "p13n-edge; fwd=miss",
            Forwarded::Stored => "p13n-edge; fwd=miss; stored",
        }
    }
}

pub struct Answer {
    pub status: u16,
    pub content_type: HeaderValue,
    pub body: Bytes,
    pub retry_after: Option<HeaderValue>,
    /// RFC 9211 `Cache-Status`, and `Age` in seconds for answers from the cache.
    pub cache_status: Option<String>,
    pub age: Option<u64>,
    /// The vendor code of an error answer, for metrics.
    pub code: Option<u32>,
    /// The upstream's status, when this answer relays it.
    pub upstream_status: Option<u16>,
    /// An allowed browser origin to echo (with credentials allowed).
    pub cors_origin: Option<HeaderValue>,
    /// For a CORS preflight: `Access-Control-Max-Age`.
    pub preflight_max_age: Option<u64>,
    /// Signed-cookie mode: the visitor's new or re-issued cookie.
    pub set_cookie: Option<HeaderValue>,
}

impl Answer {
    pub fn error(e: &EdgeError) -> Answer {
        Answer {
            status: e.status(),
            content_type: HeaderValue::from_static(JSON),
            body: e.body(),
            retry_after: e.retry_after().map(HeaderValue::from),
            cache_status: None,
            age: None,
            code: Some(e.code()),
            upstream_status: None,
            cors_origin: None,
            preflight_max_age: None,
            set_cookie: None,
        }
    }

    pub fn preflight() -> Answer {
        Answer {
            status: 204,
            content_type: HeaderValue::from_static(JSON),
            body: Bytes::new(),
            retry_after: None,
            cache_status: None,
            age: None,
            code: None,
            upstream_status: None,
            cors_origin: None,
            preflight_max_age: None,
            set_cookie: None,
        }
    }

    /// The vendor's "200 without payload", for an event not forwarded nor kept (a crawler's,
    /// or one without consent): `detail` says why in `Cache-Status`.
    pub fn without_payload(detail: Detail) -> Answer {
        Answer {
            status: 200,
            cache_status: Some(format!("p13n-edge; detail={}", detail.as_str())),
            ..Answer::preflight()
        }
    }

    /// The upstream's answer: 2xx bodies untouched, errors in the vendor's shape.
    pub fn relay(response: UpstreamResponse, forwarded: Forwarded) -> Answer {
        let status = response.status;
        let cache_status = Some(forwarded.cache_status().to_string());
        if status < 300 {
            let content_type = response
                .content_type
                .unwrap_or(HeaderValue::from_static(JSON));
            return Answer {
                status,
                content_type,
                body: response.body,
                retry_after: None,
                cache_status,
                age: None,
                code: None,
                upstream_status: Some(status),
                cors_origin: None,
                preflight_max_age: None,
                set_cookie: None,
            };
        }
        let code = vendor_code(&response.body);
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
            cache_status,
            age: None,
            code,
            upstream_status: Some(status),
            cors_origin: None,
            preflight_max_age: None,
            set_cookie: None,
        }
    }

    /// A cached answer: fresh (`hit`, with `detail` when it was not the mode's choice) or stale
    /// with why (`fwd=stale; detail=...`).
    pub fn cached(
        offers: Offers,
        freshness: Freshness,
        why: Option<Detail>,
        fresh_for: std::time::Duration,
    ) -> Answer {
        let why = why.map(Detail::as_str);
        let age = Instant::now().saturating_duration_since(offers.fetched);
        let ttl = fresh_for.saturating_sub(age).as_secs();
        let cache_status = match (freshness, why) {
            (Freshness::Fresh, None) => format!("p13n-edge; hit; ttl={ttl}"),
            (Freshness::Fresh, Some(why)) => format!("p13n-edge; hit; ttl={ttl}; detail={why}"),
            (Freshness::Stale, why) => {
                format!("p13n-edge; fwd=stale; detail={}", why.unwrap_or("stale"))
            }
        };
        Answer {
            status: offers.status,
            content_type: offers
                .content_type
                .unwrap_or(HeaderValue::from_static(JSON)),
            body: offers.body,
            retry_after: None,
            cache_status: Some(cache_status),
            age: Some(age.as_secs()),
            code: None,
            upstream_status: None,
            cors_origin: None,
            preflight_max_age: None,
            set_cookie: None,
        }
    }

    pub async fn write(self, session: &mut ServerSession) -> pingora::Result<()> {
        let mut resp = ResponseHeader::build(self.status, Some(8))?;
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
        if let Some(cache_status) = self.cache_status {
            resp.insert_header("Cache-Status", cache_status)?;
        }
        if let Some(age) = self.age {
            resp.insert_header(header::AGE, age)?;
        }
        if let Some(cookie) = self.set_cookie {
            resp.insert_header(header::SET_COOKIE, cookie)?;
        }
        if let Some(origin) = self.cors_origin {
            resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)?;
            resp.insert_header(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")?;
            resp.insert_header(header::VARY, "Origin")?;
            if let Some(max_age) = self.preflight_max_age {
                resp.insert_header(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW)?;
                // What the vendor SDK sends; its credentials are replaced by the route's own.
                resp.insert_header(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    "Content-Type, Authorization, WP13n-Token",
                )?;
                resp.insert_header(header::ACCESS_CONTROL_MAX_AGE, max_age)?;
            } else {
                // Lets a page read why it waited or what the cache did.
                resp.insert_header(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    "Cache-Status, Age, Retry-After",
                )?;
            }
        }
        session.write_response_header(Box::new(resp)).await?;
        if !self.body.is_empty() {
            session.write_response_body(self.body, true).await?;
        }
        Ok(())
    }
}
