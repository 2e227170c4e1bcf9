//! A JSON object's top-level members as written, and objects written back from them: how the
//! edge adds, drops or replaces a member without re-encoding the rest.

use crate::error::EdgeError;
use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// `object` (a JSON object, already validated, without a member `field`) with `"field": value`
/// added last.
pub fn with_member(object: &[u8], field: &str, value: &str) -> Bytes {
    let trimmed = object.trim_ascii();
    let inner = &trimmed[1..trimmed.len() - 1];
    let mut out = Vec::with_capacity(trimmed.len() + field.len() + value.len() + 8);
    out.extend_from_slice(&trimmed[..trimmed.len() - 1]);
    if !inner.trim_ascii().is_empty() {
        out.push(b',');
    }
    // serde_json escapes the strings as JSON strings, without building a `Value` or a `format!`.
    let written = serde_json::to_writer(&mut out, field).and_then(|()| {
        out.push(b':');
        serde_json::to_writer(&mut out, value)
    });
    written.expect("writing a string into a Vec cannot fail");
    out.push(b'}');
    Bytes::from(out)
}

/// The top-level members of a JSON object, in order, each value as written.
pub fn object_members(body: &[u8]) -> Result<Vec<(String, Box<RawValue>)>, EdgeError> {
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

/// A JSON object of `members`, each value as written; `size` is about its length.
pub fn write_object<'a>(
    members: impl Iterator<Item = (&'a str, &'a RawValue)>,
    size: usize,
) -> Bytes {
    let mut out = Vec::with_capacity(size);
    out.push(b'{');
    for (i, (name, value)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name).expect("writing a string into a Vec cannot fail");
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Bytes::from(out)
}
