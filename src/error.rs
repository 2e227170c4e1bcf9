//! Every answer the proxy makes itself, in one place: HTTP status, vendor-style code, message.
//! Bodies follow the vendor's error shape, `{"code": <int>, "message": "<text>"}`.

use bytes::Bytes;

/// Errors the proxy answers locally. Where the vendor defines a code it is used; elsewhere the
/// code is the HTTP status, so clients can always read a number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    #[error("no such route")]
    UnknownRoute,
    #[error("method not allowed: use POST (or OPTIONS)")]
    MethodNotAllowed,
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("unsupported content type: use application/json, text/plain or application/vnd.treasuredata.v1+json")]
    UnsupportedMediaType,
    #[error("Invalid event object: {0}")]
    InvalidEvent(&'static str),
    /// A field the proxy reads (an identifier, `uuid`) appears twice: parsers disagree on which
    /// one counts, so the event is ambiguous. Holds the configured field name, never client text.
    #[error("Invalid event object: the field {0} appears more than once")]
    RepeatedField(String),
    /// The event breaks its route's schema: says which field and how (a client's field name,
    /// cut to 64 characters; JSON-escaped in the body like every message).
    #[error("Invalid event object: {0}")]
    SchemaViolation(String),
    #[error("timed out reading the request body")]
    ClientTimeout,
    #[error("upstream unreachable")]
    UpstreamUnavailable,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream sent an invalid response")]
    BadUpstreamResponse,
    #[error("upstream is failing; calls are paused (circuit open)")]
    CircuitOpen,
    #[error("cannot accept events now: the spool is full or failing")]
    SpoolUnavailable,
    #[error("this visitor's earlier events are still being delivered; retry shortly")]
    VisitorBacklog,
    #[error("Invalid or missing Origin")]
    ForeignOrigin,
    #[error("request origin not allowed by this proxy's client list")]
    ClientRefused,
    #[error("request header block is larger than {0} bytes")]
    HeadersTooLarge(usize),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("too many requests; retry after {0} s")]
    RateLimited(u64),
    /// Signed-cookie mode, `body_identifier = "refuse"`: the body names another visitor.
    #[error("the event names a visitor other than the one its signed cookie identifies")]
    ForeignVisitor,
    /// Signed-cookie mode: the configured header carries a token that does not verify.
    #[error("the visitor token header is invalid or expired")]
    BadVisitorToken,
}

impl EdgeError {
    pub fn status(&self) -> u16 {
        match self {
            EdgeError::UnknownRoute => 404,
            EdgeError::MethodNotAllowed => 405,
            EdgeError::ForeignOrigin | EdgeError::ClientRefused | EdgeError::ForeignVisitor => 403,
            EdgeError::BadVisitorToken => 401,
            EdgeError::HeadersTooLarge(_) => 431,
            EdgeError::RateLimited(_) => 429,
            EdgeError::BodyTooLarge(_) => 413,
            EdgeError::UnsupportedMediaType => 415,
            EdgeError::InvalidEvent(_)
            | EdgeError::RepeatedField(_)
            | EdgeError::SchemaViolation(_)
            | EdgeError::BadRequest(_) => 400,
            EdgeError::ClientTimeout => 408,
            EdgeError::UpstreamUnavailable | EdgeError::BadUpstreamResponse => 502,
            EdgeError::UpstreamTimeout => 504,
            EdgeError::CircuitOpen | EdgeError::SpoolUnavailable | EdgeError::VisitorBacklog => 503,
        }
    }

    pub fn code(&self) -> u32 {
        match self {
            // The vendor's codes: 3009 "unsupported method", 3004 "invalid event object".
            EdgeError::MethodNotAllowed => 3009,
            EdgeError::InvalidEvent(_)
            | EdgeError::RepeatedField(_)
            | EdgeError::SchemaViolation(_) => 3004,
            // The vendor's "invalid or missing Origin".
            EdgeError::ForeignOrigin => 3007,
            // The vendor's "request origin not in IP whitelist".
            EdgeError::ClientRefused => 3005,
            other => u32::from(other.status()),
        }
    }

    /// Seconds a client should wait before trying again, for errors that pass.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            EdgeError::CircuitOpen | EdgeError::SpoolUnavailable | EdgeError::VisitorBacklog => {
                Some(1)
            }
            EdgeError::RateLimited(seconds) => Some(*seconds),
            _ => None,
        }
    }

    pub fn body(&self) -> Bytes {
        error_body(self.code(), &self.to_string())
    }
}

/// `{"code": code, "message": message}`, JSON-escaped.
pub fn error_body(code: u32, message: &str) -> Bytes {
    let body = serde_json::json!({ "code": code, "message": message });
    Bytes::from(body.to_string())
}

/// Read the vendor code from an error body, if it has the vendor's shape: a JSON object with a
/// numeric `code` and a valid `message`. A body that does not start as an object (after
/// whitespace: an HTML error page, an array) is not parsed at all.
pub fn vendor_code(body: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Shape {
        code: u32,
        #[allow(dead_code)]
        message: serde_json::Value,
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Shape>(body).ok().map(|s| s.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_vendor_shape() {
        let v: serde_json::Value = serde_json::from_slice(&EdgeError::UnknownRoute.body()).unwrap();
        assert_eq!(v["code"], 404);
        assert_eq!(v["message"], "no such route");
        assert_eq!(EdgeError::InvalidEvent("x").code(), 3004);
        assert_eq!(vendor_code(br#"{"code":2013,"message":"m"}"#), Some(2013));
        assert_eq!(vendor_code(b"<html>"), None);
        assert_eq!(vendor_code(b" \n{\"message\":[1,{}],\"code\":7}"), Some(7));
        assert_eq!(vendor_code(br#"{"code":2013}"#), None);
        assert_eq!(vendor_code(br#"{"code":"2013","message":"m"}"#), None);
        // serde reads a struct from an array too: not the vendor's shape.
        assert_eq!(vendor_code(br#"[3004,"m"]"#), None);
        assert_eq!(vendor_code(b"{\"code\":2013,\"message\":\"\xff\"}"), None);
    }
}
