//! The validate step: content type, and the body as a JSON object holding an identifier.
//! Whatever the upstream would reject is refused here, so no quota is spent on it.

use crate::error::EdgeError;
use bytes::Bytes;
use http::HeaderValue;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

pub const VENDOR_CONTENT_TYPE: &str = "application/vnd.treasuredata.v1+json";

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

const NO_IDENTIFIER: EdgeError =
    EdgeError::InvalidEvent("no identifier (such as td_client_id) in the event");

/// Check that `body` is a JSON object with a non-empty string (or number) under one of
/// `identifiers`, and return the first one found in `identifiers` order.
pub fn identify(body: &[u8], identifiers: &[String]) -> Result<Identifier, EdgeError> {
    find_identifier(body, identifiers)?.ok_or(NO_IDENTIFIER)
}

/// As `identify`, but a JSON object without an identifier is `Ok(None)`.
pub fn find_identifier(
    body: &[u8],
    identifiers: &[String],
) -> Result<Option<Identifier>, EdgeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = Seed(identifiers)
        .deserialize(&mut de)
        .map_err(|_| EdgeError::InvalidEvent("the body must be a JSON object"))?;
    de.end()
        .map_err(|_| EdgeError::InvalidEvent("the body must be a JSON object"))?;
    Ok(found)
}

/// The event and its identifier, taking the id from cookie `cookie` when the body has none
/// (the vendor SDK's anonymous mode strips `td_client_id` and keeps it in `_td`). The id is
/// then added to the body, as the first identifier field, for the upstream to see.
pub fn identify_with_cookie<'a>(
    body: Bytes,
    identifiers: &[String],
    cookie: Option<&str>,
    cookie_headers: impl Iterator<Item = &'a HeaderValue>,
) -> Result<(Identifier, Bytes), EdgeError> {
    if let Some(found) = find_identifier(&body, identifiers)? {
        return Ok((found, body));
    }
    let name = cookie.ok_or(NO_IDENTIFIER)?;
    let value = cookie_value(cookie_headers, name).ok_or(NO_IDENTIFIER)?;
    let field = identifiers.first().ok_or(NO_IDENTIFIER)?;
    let body = with_member(&body, field, value);
    let found = Identifier {
        field: field.clone(),
        value: value.to_string(),
    };
    Ok((found, body))
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

/// `object` (a JSON object, already validated) with `"field": value` added last, so that it
/// wins over an empty or null member of the same name for parsers that keep the last.
fn with_member(object: &[u8], field: &str, value: &str) -> Bytes {
    let trimmed = object.trim_ascii();
    let inner = &trimmed[1..trimmed.len() - 1];
    let member = format!(
        "{}:{}",
        serde_json::Value::from(field),
        serde_json::Value::from(value)
    );
    let mut out = Vec::with_capacity(trimmed.len() + member.len() + 1);
    out.extend_from_slice(&trimmed[..trimmed.len() - 1]);
    if !inner.trim_ascii().is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(member.as_bytes());
    out.push(b'}');
    Bytes::from(out)
}

struct Seed<'a>(&'a [String]);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Option<Identifier>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Option<Identifier>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Position in `identifiers` of the best field found so far: earlier wins.
        let mut best: Option<(usize, Identifier)> = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let rank = self.0.iter().position(|i| *i == key);
            match rank {
                Some(rank) if best.as_ref().is_none_or(|(r, _)| rank < *r) => {
                    let value: serde_json::Value = map.next_value()?;
                    let text = match value {
                        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    };
                    if let Some(value) = text {
                        best = Some((
                            rank,
                            Identifier {
                                field: key.into_owned(),
                                value,
                            },
                        ));
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(best.map(|(_, id)| id))
    }
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
        let (id, body) = identify_with_cookie(
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
        let (_, body) =
            identify_with_cookie(Bytes::from_static(b"{}"), &ids(), Some("_td"), jar.iter())
                .unwrap();
        assert_eq!(&body[..], br#"{"td_client_id":"0f7c-11ee"}"#);
    }

    #[test]
    fn the_body_wins_over_the_cookie_and_odd_cookies_are_ignored() {
        let jar = cookies(&["_td=from-cookie"]);
        let body = Bytes::from_static(br#"{"td_client_id":"from-body"}"#);
        let (id, same) =
            identify_with_cookie(body.clone(), &ids(), Some("_td"), jar.iter()).unwrap();
        assert_eq!((id.value.as_str(), same), ("from-body", body));
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
    fn content_types() {
        assert!(content_type_ok(Some(b"application/json")));
        assert!(content_type_ok(Some(b"Application/JSON; charset=utf-8")));
        assert!(content_type_ok(Some(b"text/plain;charset=UTF-8")));
        assert!(content_type_ok(Some(VENDOR_CONTENT_TYPE.as_bytes())));
        assert!(!content_type_ok(Some(b"application/x-www-form-urlencoded")));
        assert!(!content_type_ok(Some(b"application/jsonx")));
        assert!(!content_type_ok(None));
    }
}
