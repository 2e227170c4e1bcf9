//! Event schemas per route (`[[service.route]] fields`): which fields an event may carry, of
//! what type and length. Identifiers and `uuid` are always allowed. Fields outside the schema
//! are dropped (the default) or refused (`unknown_fields = "refuse"`: 400, 3004, naming the
//! field), so that nothing the customer did not ask for reaches their event table through our
//! credentials. Members are kept as the client wrote them, in order, byte for byte; only a body
//! that loses a member is rebuilt. Runs after the body was checked (`event::scan`), so it is one
//! JSON object with no repeated identifier.

use crate::error::EdgeError;
use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// What a field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Number,
    Boolean,
    /// An array of strings.
    Strings,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub kind: FieldType,
    /// Most characters of a string, or of each string of an array.
    pub max_length: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Schema {
    pub fields: Vec<Field>,
    /// Refuse an event with a field outside the schema, instead of dropping the field.
    pub refuse_unknown: bool,
}

/// Longest piece of a client's field name quoted in an error.
const QUOTED: usize = 64;

impl Schema {
    /// `body` as the schema allows it: `None` when it already conforms (sent as it is).
    pub fn apply(&self, body: &[u8], always: &[&str]) -> Result<Option<Bytes>, EdgeError> {
        let members = object_members(body)?;
        let mut kept: Vec<&(String, Box<RawValue>)> = Vec::with_capacity(members.len());
        for member in &members {
            let name = member.0.as_str();
            if always.contains(&name) {
                kept.push(member);
                continue;
            }
            match self.fields.iter().find(|f| f.name == name) {
                Some(field) => {
                    check(field, &member.1)?;
                    kept.push(member);
                }
                None if self.refuse_unknown => {
                    return Err(violation(name, "is not in this route's schema"))
                }
                None => {}
            }
        }
        if kept.len() == members.len() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(body.len());
        out.push(b'{');
        for (i, (name, value)) in kept.into_iter().map(|m| (&m.0, &m.1)).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, name).expect("writing a string into a Vec cannot fail");
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
        Ok(Some(Bytes::from(out)))
    }
}

fn violation(name: &str, problem: &str) -> EdgeError {
    let quoted: String = name.chars().take(QUOTED).collect();
    EdgeError::SchemaViolation(format!("the field {quoted} {problem}"))
}

fn check(field: &Field, raw: &RawValue) -> Result<(), EdgeError> {
    let value: serde_json::Value = serde_json::from_str(raw.get())
        .map_err(|_| EdgeError::InvalidEvent("a value could not be read"))?;
    let long = |s: &str| field.max_length.is_some_and(|m| s.chars().count() > m);
    let ok = match (field.kind, &value) {
        (FieldType::String, serde_json::Value::String(s)) => {
            if long(s) {
                return Err(violation(&field.name, "is longer than this route allows"));
            }
            true
        }
        (FieldType::Number, serde_json::Value::Number(_)) => true,
        (FieldType::Boolean, serde_json::Value::Bool(_)) => true,
        (FieldType::Strings, serde_json::Value::Array(items)) => {
            for item in items {
                match item {
                    serde_json::Value::String(s) if long(s) => {
                        return Err(violation(
                            &field.name,
                            "holds a string longer than this route allows",
                        ))
                    }
                    serde_json::Value::String(_) => {}
                    _ => return Err(violation(&field.name, "must be an array of strings")),
                }
            }
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        let kind = match field.kind {
            FieldType::String => "must be a string",
            FieldType::Number => "must be a number",
            FieldType::Boolean => "must be true or false",
            FieldType::Strings => "must be an array of strings",
        };
        Err(violation(&field.name, kind))
    }
}

/// The top-level members of a JSON object, in order, each value as written.
fn object_members(body: &[u8]) -> Result<Vec<(String, Box<RawValue>)>, EdgeError> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, Box<RawValue>)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let members = de
        .deserialize_map(Members)
        .map_err(|_| EdgeError::InvalidEvent("the body must be a JSON object"))?;
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(refuse_unknown: bool) -> Schema {
        Schema {
            fields: vec![
                Field {
                    name: "td_path".into(),
                    kind: FieldType::String,
                    max_length: Some(8),
                },
                Field {
                    name: "qty".into(),
                    kind: FieldType::Number,
                    max_length: None,
                },
                Field {
                    name: "member".into(),
                    kind: FieldType::Boolean,
                    max_length: None,
                },
                Field {
                    name: "tags".into(),
                    kind: FieldType::Strings,
                    max_length: Some(3),
                },
            ],
            refuse_unknown,
        }
    }

    const ALWAYS: &[&str] = &["td_client_id", "uuid"];

    #[test]
    fn a_conforming_body_goes_as_written_and_unknown_fields_are_dropped_in_order() {
        let s = schema(false);
        let body =
            br#"{"td_client_id":"v","td_path":"/a","qty":2,"member":true,"tags":["x"],"uuid":"u"}"#;
        assert!(s.apply(body, ALWAYS).unwrap().is_none());
        let body =
            br#"{ "secret" : {"a":1}, "td_client_id":"v", "td_path":"/a\u0041", "other":[1] }"#;
        let kept = s.apply(body, ALWAYS).unwrap().unwrap();
        assert_eq!(&kept[..], br#"{"td_client_id":"v","td_path":"/a\u0041"}"#);
    }

    #[test]
    fn wrong_types_lengths_and_refused_fields_name_the_field() {
        let s = schema(false);
        for (body, field) in [
            (&br#"{"td_client_id":"v","qty":"2"}"#[..], "qty"),
            (br#"{"td_client_id":"v","member":1}"#, "member"),
            (br#"{"td_client_id":"v","td_path":"/too/long/"}"#, "td_path"),
            (br#"{"td_client_id":"v","tags":["ok","long"]}"#, "tags"),
            (br#"{"td_client_id":"v","tags":[1]}"#, "tags"),
        ] {
            let e = s.apply(body, ALWAYS).unwrap_err();
            assert_eq!(e.code(), 3004);
            assert!(
                e.to_string().contains(&format!("the field {field} ")),
                "{e}"
            );
        }
        let e = schema(true)
            .apply(br#"{"td_client_id":"v","extra":1}"#, ALWAYS)
            .unwrap_err();
        assert!(e.to_string().contains("the field extra is not in"), "{e}");
    }
}
