//! The validate step: content type, and the body as a JSON object holding an identifier.
//! Whatever the upstream would reject is refused here, so no quota is spent on it.

use crate::error::EdgeError;
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

/// Check that `body` is a JSON object with a non-empty string (or number) under one of
/// `identifiers`, and return the first one found in `identifiers` order.
pub fn identify(body: &[u8], identifiers: &[String]) -> Result<Identifier, EdgeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = Seed(identifiers)
        .deserialize(&mut de)
        .map_err(|_| EdgeError::InvalidEvent("the body must be a JSON object"))?;
    de.end()
        .map_err(|_| EdgeError::InvalidEvent("the body must be a JSON object"))?;
    found.ok_or(EdgeError::InvalidEvent(
        "no identifier (such as td_client_id) in the event",
    ))
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
