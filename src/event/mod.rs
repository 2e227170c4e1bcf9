//! The validate step: content type, and the body as a JSON object holding an identifier.
//! Whatever the upstream would reject is refused here, so no quota is spent on it.

mod members;
mod scan;

use crate::error::EdgeError;
use bytes::Bytes;
use http::HeaderValue;
use std::borrow::Cow;

pub use crate::vendor::VENDOR_CONTENT_TYPE;
pub use members::{object_members, with_member, write_object};
pub use scan::{scan, Scan, MAX_DEPTH};

/// Accept JSON, `text/plain` (lets browsers skip the preflight) and the vendor's type, with any
/// parameters (`; charset=utf-8`).
pub fn content_type_ok(value: Option<&[u8]>) -> bool {
    let Some(value) = value else { return false };
    let essence = value.split(|&b| b == b';').next().unwrap_or_default();
    let essence = essence.trim_ascii();
    [
        b"application/json".as_slice(),
        b"text/plain",
        VENDOR_CONTENT_TYPE.as_bytes(),
    ]
    .iter()
    .any(|t| essence.eq_ignore_ascii_case(t))
}

/// The identifier that names the visitor: the first configured field present in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier {
    pub field: String,
    pub value: String,
}

/// The field that names an event for de-duplication (the vendor's event schema has it).
pub const UUID_FIELD: &str = "uuid";

const NO_IDENTIFIER: EdgeError =
    EdgeError::InvalidEvent("no identifier (such as td_client_id) in the event");
const EMPTY_IDENTIFIER: EdgeError = EdgeError::InvalidEvent(
    "the identifier field is empty or null: send the visitor id, or leave the field out",
);
/// Check that `body` is a JSON object with a non-empty string (or number) under one of
/// `identifiers`, and return the first one found in `identifiers` order.
pub fn identify(body: &[u8], identifiers: &[String]) -> Result<Identifier, EdgeError> {
    scan(body, identifiers)?.identifier.ok_or(NO_IDENTIFIER)
}

/// The event and its identifier, taking the id from cookie `cookie` when the body has none
/// (the vendor SDK's anonymous mode strips `td_client_id` and keeps it in `_td`). The id is
/// then added to the body, as the first identifier field, for the upstream to see.
pub fn identify_with_cookie<'a>(
    body: Bytes,
    identifiers: &[String],
    cookie: Option<&str>,
    cookie_headers: impl Iterator<Item = &'a HeaderValue>,
) -> Result<Event, EdgeError> {
    let scanned = scan(&body, identifiers)?;
    let has_uuid = scanned.has_uuid;
    if let Some(visitor) = scanned.identifier {
        return Ok(Event {
            visitor,
            body,
            has_uuid,
        });
    }
    let name = cookie.ok_or(NO_IDENTIFIER)?;
    let value = cookie_value(cookie_headers, name).ok_or(NO_IDENTIFIER)?;
    if scanned.first_present {
        // Adding the cookie's id would repeat the field, and parsers disagree on which counts.
        return Err(EMPTY_IDENTIFIER);
    }
    let field = identifiers.first().ok_or(NO_IDENTIFIER)?;
    let body = with_member(&body, field, value);
    let visitor = Identifier {
        field: field.clone(),
        value: value.to_string(),
    };
    Ok(Event {
        visitor,
        body,
        has_uuid,
    })
}

/// The event of a visitor the edge identified itself (`[service.identity]` signed-cookie
/// mode): the body's identifiers all give way to `id`, sent as the first configured
/// identifier, so the upstream, the cache, the limiter and the spool all see the cookie's
/// visitor. With `refuse`, an identifier naming anyone else (not null, not `""`) is refused
/// instead. A body that already names `id`, and nothing else, goes as written.
pub fn claim(
    body: Bytes,
    identifiers: &[String],
    id: &str,
    refuse: bool,
) -> Result<Event, EdgeError> {
    // The same checks as any event: one object, valid UTF-8, bounded depth, no repeats.
    let scanned = scan(&body, identifiers)?;
    let first = identifiers.first().ok_or(NO_IDENTIFIER)?;
    let members = object_members(&body)?;
    // In any case: a field that differs from an identifier only by case may be read as one.
    let is_identifier = |name: &str| identifiers.iter().any(|i| i.eq_ignore_ascii_case(name));
    let (mut named, mut others) = (false, false);
    for (name, value) in members.iter().filter(|(n, _)| is_identifier(n)) {
        let text: Option<Cow<'_, str>> = serde_json::from_str(value.get()).ok();
        match text.as_deref() {
            Some(v) if v == id && name == first => named = true,
            Some(v) if v == id || v.is_empty() => others = true,
            _ if value.get() == "null" => others = true,
            _ if refuse => return Err(EdgeError::ForeignVisitor),
            _ => others = true,
        }
    }
    let body = if named && !others {
        body
    } else {
        let kept = members
            .iter()
            .filter(|(n, _)| !is_identifier(n))
            .map(|(n, v)| (n.as_str(), &**v));
        with_member(&write_object(kept, body.len()), first, id)
    };
    Ok(Event {
        visitor: Identifier {
            field: first.clone(),
            value: id.to_string(),
        },
        body,
        has_uuid: scanned.has_uuid,
    })
}

/// A validated event: who it names, and its body as it goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub visitor: Identifier,
    pub body: Bytes,
    /// Whether the body has a `uuid` member of its own.
    pub has_uuid: bool,
}

impl Event {
    /// Give the event a `uuid` member, unless it has one.
    pub fn with_uuid(mut self, uuid: &str) -> Event {
        if !self.has_uuid {
            self.body = with_member(&self.body, UUID_FIELD, uuid);
            self.has_uuid = true;
        }
        self
    }
}

/// The value of cookie `name`, if it looks like a visitor id: 1 to 128 of `[A-Za-z0-9._:-]`.
pub fn cookie_value<'a>(
    headers: impl Iterator<Item = &'a HeaderValue>,
    name: &str,
) -> Option<&'a str> {
    headers
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
}

#[cfg(test)]
mod tests;
