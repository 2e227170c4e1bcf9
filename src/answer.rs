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
        let age = Instant::now().saturating_duration_since(offers.fetched);
        // Pieces pushed, not `format!`: a fast hit's answer is this and little more.
        let mut cache_status = String::with_capacity(64);
        cache_status.push_str("p13n-edge; ");
        match freshness {
            Freshness::Fresh => {
                let ttl = fresh_for.saturating_sub(age).as_secs();
                cache_status.push_str("hit; ttl=");
                cache_status.push_str(itoa::Buffer::new().format(ttl));
                if let Some(why) = why {
                    cache_status.push_str("; detail=");
                    cache_status.push_str(why.as_str());
                }
            }
            Freshness::Stale => {
                cache_status.push_str("fwd=stale; detail=");
                cache_status.push_str(why.map_or("stale", Detail::as_str));
            }
        }
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

    /// The answer's header built in an `http` header map with its names as constants, then
    /// handed to pingora without a case map: `ResponseHeader::insert_header` parses each name
    /// back from its bytes and keeps its case beside it, about 700 instructions a header
    /// (callgrind). Without a case map pingora writes the names it knows titled (`Content-Type`,
    /// `Age`, `Cache-Control`, ...) and the others in lower case, as it did for `http`'s
    /// constants before (`vary`, `retry-after`); only `cache-status`, given as a string then,
    /// was written `Cache-Status`. HTTP/2 sends every name in lower case; names are
    /// case-insensitive.
    pub async fn write(self, session: &mut ServerSession) -> pingora::Result<()> {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(self.status).map_err(|_| {
            pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "invalid status")
        })?;
        let headers = &mut parts.headers;
        headers.reserve(8);
        if !self.body.is_empty() {
            headers.insert(header::CONTENT_TYPE, self.content_type);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(self.status, 204 | 405) {
            headers.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        }
        if let Some(retry_after) = self.retry_after {
            headers.insert(header::RETRY_AFTER, retry_after);
        }
        if let Some(cache_status) = self.cache_status {
            let value = HeaderValue::try_from(cache_status).map_err(|_| {
                pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "invalid value")
            })?;
            headers.insert(CACHE_STATUS, value);
        }
        if let Some(age) = self.age {
            headers.insert(header::AGE, HeaderValue::from(age));
        }
        if let Some(cookie) = self.set_cookie {
            headers.insert(header::SET_COOKIE, cookie);
        }
        if let Some(origin) = self.cors_origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
            if let Some(max_age) = self.preflight_max_age {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(ALLOW),
                );
                // What the vendor SDK sends; its credentials are replaced by the route's own.
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static("Content-Type, Authorization, WP13n-Token"),
                );
                headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age));
            } else {
                // Lets a page read why it waited or what the cache did.
                headers.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static("Cache-Status, Age, Retry-After"),
                );
            }
        }
        session
            .write_response_header(Box::new(ResponseHeader::from(parts)))
            .await?;
        if !self.body.is_empty() {
            session.write_response_body(self.body, true).await?;
        }
        Ok(())
    }
}

/// RFC 9211's header, which `http` has no constant for.
const CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_cached_answer_says_how_fresh_and_why_in_cache_status() {
        // Fetched `ms` ago: a few seconds at most, so that the clock (the time since boot) has
        // them; half-seconds, so that the whole seconds stay put while the test runs.
        let offers = |ms: u64| Offers {
            status: 200,
            content_type: None,
            body: Bytes::from_static(b"{}"),
            fetched: Instant::now() - Duration::from_millis(ms),
            shared_at: 0,
        };
        let fresh = Duration::from_secs(60);
        let status = |o, f, why| Answer::cached(o, f, why, fresh).cache_status.unwrap();
        assert_eq!(
            status(offers(2_500), Freshness::Fresh, None),
            "p13n-edge; hit; ttl=57"
        );
        assert_eq!(
            status(offers(500), Freshness::Fresh, Some(Detail::Queued)),
            "p13n-edge; hit; ttl=59; detail=queued"
        );
        assert_eq!(
            status(offers(500), Freshness::Stale, Some(Detail::Upstream5xx)),
            "p13n-edge; fwd=stale; detail=upstream-5xx"
        );
        assert_eq!(
            status(offers(500), Freshness::Stale, None),
            "p13n-edge; fwd=stale; detail=stale"
        );
        assert_eq!(
            Answer::cached(offers(2_500), Freshness::Stale, None, fresh).age,
            Some(2)
        );
    }
}
