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
mod tests {
    use super::*;

    fn ids() -> Vec<String> {
        vec!["td_client_id".into(), "email".into()]
    }

    fn cookies(values: &[&str]) -> Vec<HeaderValue> {
        values
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect()
    }

    #[test]
    fn the_cookie_names_the_visitor_when_the_body_does_not() {
        let jar = cookies(&["a=1; _td=0f7c-11ee", "_td_global=x"]);
        let Event {
            visitor: id, body, ..
        } = identify_with_cookie(
            Bytes::from_static(b" { \"td_path\":\"/\" } "),
            &ids(),
            Some("_td"),
            jar.iter(),
        )
        .unwrap();
        assert_eq!(id.value, "0f7c-11ee");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["td_client_id"], "0f7c-11ee");
        assert_eq!(v["td_path"], "/");
        let event =
            identify_with_cookie(Bytes::from_static(b"{}"), &ids(), Some("_td"), jar.iter())
                .unwrap();
        assert_eq!(&event.body[..], br#"{"td_client_id":"0f7c-11ee"}"#);
        let with = event.with_uuid("u-1");
        assert_eq!(
            &with.body[..],
            br#"{"td_client_id":"0f7c-11ee","uuid":"u-1"}"#
        );
        // A body's own uuid is kept.
        let own = identify_with_cookie(
            Bytes::from_static(br#"{"uuid":"mine"}"#),
            &ids(),
            Some("_td"),
            jar.iter(),
        )
        .unwrap()
        .with_uuid("u-2");
        let v: serde_json::Value = serde_json::from_slice(&own.body).unwrap();
        assert_eq!(v["uuid"], "mine");
    }

    #[test]
    fn the_body_wins_over_the_cookie_and_odd_cookies_are_ignored() {
        let jar = cookies(&["_td=from-cookie"]);
        let body = Bytes::from_static(br#"{"td_client_id":"from-body"}"#);
        let event = identify_with_cookie(body.clone(), &ids(), Some("_td"), jar.iter()).unwrap();
        assert_eq!(
            (event.visitor.value.as_str(), event.body),
            ("from-body", body)
        );
        for odd in ["_td=", "_td=a b", "_td=<script>", "x_td=abc", "_td=\"a,b\""] {
            let jar = cookies(&[odd]);
            let r =
                identify_with_cookie(Bytes::from_static(b"{}"), &ids(), Some("_td"), jar.iter());
            assert_eq!(r.unwrap_err(), NO_IDENTIFIER, "{odd}");
        }
        let r = identify_with_cookie(Bytes::from_static(b"{}"), &ids(), None, jar.iter());
        assert_eq!(r.unwrap_err(), NO_IDENTIFIER);
        let r = identify_with_cookie(Bytes::from_static(b"[1]"), &ids(), Some("_td"), jar.iter());
        assert!(r.is_err());
    }

    #[test]
    fn finds_the_first_configured_identifier() {
        let id = identify(
            br#"{"email":"a@b","td_path":"/x","td_client_id":"c1"}"#,
            &ids(),
        )
        .unwrap();
        assert_eq!(
            id,
            Identifier {
                field: "td_client_id".into(),
                value: "c1".into()
            }
        );
        let id = identify(br#"{"email":"a@b"}"#, &ids()).unwrap();
        assert_eq!(id.value, "a@b");
        let id = identify(br#"{"td_client_id":"a\"b"}"#, &ids()).unwrap();
        assert_eq!(id.value, "a\"b");
    }

    #[test]
    fn refuses_what_the_upstream_would_refuse() {
        for bad in [
            &b"[]"[..],
            b"\"td_client_id\"",
            b"{",
            b"{} {}",
            b"",
            br#"{"td_client_id":""}"#,
            br#"{"td_client_id":null}"#,
            br#"{"td_client_id":{"a":1}}"#,
            br#"{"other":"x"}"#,
            b"\xff\xfe",
        ] {
            let err = identify(bad, &ids()).unwrap_err();
            assert_eq!(err.code(), 3004, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_repeated_identifier_or_uuid_is_refused_whatever_its_values() {
        for body in [
            &br#"{"td_client_id":"victim","td_client_id":"attacker"}"#[..],
            br#"{"td_client_id":"","td_client_id":"attacker"}"#,
            br#"{"email":"a@b","td_client_id":"v","email":"c@d"}"#,
            br#"{"td_client_id":"v","td_client\u005fid":"w"}"#,
            br#"{"td_client_id":"v","uuid":"1","uuid":"2"}"#,
        ] {
            let err = scan(body, &ids()).unwrap_err();
            assert!(
                matches!(err, EdgeError::RepeatedField(_)),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(err.code(), 3004);
        }
        // Other fields may repeat: they name nothing the proxy acts on.
        let ok = scan(br#"{"td_client_id":"v","a":1,"a":2}"#, &ids()).unwrap();
        assert_eq!(ok.identifier.unwrap().value, "v");
    }

    #[test]
    fn every_string_is_checked_even_in_fields_the_proxy_skips() {
        for bad in [
            &br#"{"td_client_id":"v","x":"\ud800"}"#[..],
            br#"{"td_client_id":"v","x":["\udc00 lone trail"]}"#,
            br#"{"td_client_id":"v","x":{"y":"\ud800\u0041"}}"#,
            b"{\"td_client_id\":\"v\",\"x\":\"\xff\"}",
            b"{\"td_client_id\":\"v\",\"x\":{\"\xc3\":1}}",
        ] {
            assert!(
                scan(bad, &ids()).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let pair = br#"{"td_client_id":"v","x":"\ud83d\ude00"}"#;
        assert!(scan(pair, &ids()).is_ok());
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |depth: usize| {
            format!(
                r#"{{"td_client_id":"v","x":{}1{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert!(scan(nested(MAX_DEPTH - 1).as_bytes(), &ids()).is_ok());
        assert!(scan(nested(MAX_DEPTH).as_bytes(), &ids()).is_err());
        assert!(scan(nested(100_000).as_bytes(), &ids()).is_err());
    }

    #[test]
    fn a_uuid_of_the_body_is_seen() {
        assert!(
            scan(br#"{"td_client_id":"v","uuid":"x"}"#, &ids())
                .unwrap()
                .has_uuid
        );
        assert!(!scan(br#"{"td_client_id":"v"}"#, &ids()).unwrap().has_uuid);
    }

    #[test]
    fn an_empty_identifier_is_not_filled_from_the_cookie_into_a_second_member() {
        let jar = cookies(&["_td=from-cookie"]);
        let r = identify_with_cookie(
            Bytes::from_static(br#"{"td_client_id":""}"#),
            &ids(),
            Some("_td"),
            jar.iter(),
        );
        assert_eq!(r.unwrap_err(), EMPTY_IDENTIFIER);
    }

    #[test]
    fn content_types() {
        assert!(content_type_ok(Some(b"application/json")));
        assert!(content_type_ok(Some(b"Application/JSON; charset=utf-8")));
        assert!(content_type_ok(Some(b"text/plain;charset=UTF-8")));
        assert!(content_type_ok(Some(VENDOR_CONTENT_TYPE.as_bytes())));
        assert!(!content_type_ok(Some(b"application/x-www-form-urlencoded")));
        assert!(!content_type_ok(Some(b"application/jsonx")));
        assert!(!content_type_ok(None));
    }

    #[test]
    fn a_claimed_event_names_only_the_edges_visitor() {
        let ids = ["td_client_id".to_string(), "email".to_string()];
        let me = "0f4e1c2a-7b3d-4c5e-9f60-718293a4b5c6";
        let claimed = |body: &str, refuse| {
            claim(Bytes::from(body.to_string()), &ids, me, refuse)
                .map(|e| (String::from_utf8(e.body.to_vec()).unwrap(), e.visitor.value))
        };
        // A body that names the visitor, and only them, goes as written.
        let mine = format!(r#"{{"td_client_id":"{me}","a":1}}"#);
        assert_eq!(claimed(&mine, true), Ok((mine.clone(), me.to_string())));
        // Someone else's id, in any identifier, is replaced (or refused).
        for body in [
            r#"{"td_client_id":"victim","a":1}"#,
            r#"{"a":1,"email":"victim@example.com"}"#,
            r#"{"td_client_id":42,"a":1}"#,
        ] {
            let expected = format!(r#"{{"a":1,"td_client_id":"{me}"}}"#);
            assert_eq!(
                claimed(body, false),
                Ok((expected, me.to_string())),
                "{body}"
            );
            assert_eq!(
                claimed(body, true),
                Err(EdgeError::ForeignVisitor),
                "{body}"
            );
        }
        // Nor under another case.
        assert_eq!(
            claimed(r#"{"TD_Client_ID":"victim","a":1}"#, false),
            Ok((
                format!(r#"{{"a":1,"td_client_id":"{me}"}}"#),
                me.to_string()
            ))
        );
        // No id, an empty one or null: the visitor's is added, refused or not.
        for body in [
            r#"{"a":1}"#,
            r#"{"td_client_id":"","a":1}"#,
            r#"{"a":1,"td_client_id":null}"#,
        ] {
            let expected = format!(r#"{{"a":1,"td_client_id":"{me}"}}"#);
            assert_eq!(
                claimed(body, true),
                Ok((expected, me.to_string())),
                "{body}"
            );
        }
        // The checks of any event still hold.
        assert!(matches!(
            claimed(r#"{"td_client_id":"x","td_client_id":"y"}"#, false),
            Err(EdgeError::RepeatedField(_))
        ));
        assert!(claimed("[1]", false).is_err());
    }
}
