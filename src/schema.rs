//! Event schemas per route (`[[service.route]] fields`): which fields an event may carry, of
//! what type and length. Identifiers and `uuid` are always allowed. Fields outside the schema
//! are dropped (the default) or refused (`unknown_fields = "refuse"`: 400, 3004, naming the
//! field), so that nothing the customer did not ask for reaches their event table through our
//! credentials. Members are kept as the client wrote them, in order, byte for byte; only a body
//! that loses a member is rebuilt. Runs after the body was checked (`event::scan`), so it is one
//! JSON object with no repeated identifier.

use crate::error::EdgeError;
use crate::event::{object_members, write_object};
use bytes::Bytes;
use serde_json::value::RawValue;

/// What a field may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Number,
    Boolean,
    /// An array of strings.
    Strings,
    /// An identifier or `uuid`: a string or a number.
    Id,
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
            match self.fields.iter().find(|f| f.name == name) {
                Some(field) => {
                    check(field, &member.1)?;
                    kept.push(member);
                }
                // An identifier or `uuid` the schema does not describe: always kept, but only as
                // what it is (a string or a number, short), not as a way around the schema.
                None if always.contains(&name) => {
                    check(&owned(name), &member.1)?;
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
        Ok(Some(write_object(
            kept.into_iter().map(|m| (m.0.as_str(), &*m.1)),
            body.len(),
        )))
    }
}

fn violation(name: &str, problem: &str) -> EdgeError {
    let quoted: String = name.chars().take(QUOTED).collect();
    EdgeError::SchemaViolation(format!("the field {quoted:?} {problem}"))
}

/// The rule for an identifier or `uuid` that the schema does not list.
fn owned(name: &str) -> Field {
    Field {
        name: name.to_string(),
        kind: FieldType::Id,
        max_length: Some(MAX_ID),
    }
}

/// Most characters of an identifier or `uuid` kept under a schema.
const MAX_ID: usize = 256;

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
        (FieldType::Id, serde_json::Value::String(s)) => !long(s),
        (FieldType::Id, serde_json::Value::Number(n)) => n.to_string().len() <= MAX_ID,
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
            FieldType::Id => "must be a string or a number of at most 256 characters",
        };
        Err(violation(&field.name, kind))
    }
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
                e.to_string().contains(&format!("the field {field:?} ")),
                "{e}"
            );
        }
        let e = schema(true)
            .apply(br#"{"td_client_id":"v","extra":1}"#, ALWAYS)
            .unwrap_err();
        assert!(
            e.to_string().contains(r#"the field "extra" is not in"#),
            "{e}"
        );
    }

    #[test]
    fn identifiers_and_uuid_pass_only_as_short_strings_or_numbers() {
        let s = schema(false);
        assert!(s
            .apply(br#"{"td_client_id":42,"uuid":"u"}"#, ALWAYS)
            .unwrap()
            .is_none());
        for body in [
            &br#"{"td_client_id":"v","uuid":{"ssn":"123"}}"#[..],
            br#"{"td_client_id":["a"]}"#,
        ] {
            assert_eq!(s.apply(body, ALWAYS).unwrap_err().code(), 3004);
        }
        let long = format!(r#"{{"td_client_id":"{}"}}"#, "x".repeat(257));
        assert!(s.apply(long.as_bytes(), ALWAYS).is_err());
        // A field of the schema named like an identifier sets its rule.
        let strict = Schema {
            fields: vec![Field {
                name: "td_client_id".into(),
                kind: FieldType::String,
                max_length: Some(4),
            }],
            refuse_unknown: false,
        };
        assert!(strict
            .apply(br#"{"td_client_id":"12345"}"#, ALWAYS)
            .is_err());
    }
}
