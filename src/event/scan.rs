//! Reading an event the way the upstream will, in one pass with serde: one JSON object, valid
//! UTF-8 throughout, bounded depth, no identifier or `uuid` given twice.

use super::{Identifier, UUID_FIELD};
use crate::error::EdgeError;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Deepest nesting of arrays and objects accepted in an event. Events are flat rows with the
/// odd list; a body the upstream's parser might refuse for its depth is refused here instead.
pub const MAX_DEPTH: usize = 32;

/// What the validate step read from an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub identifier: Option<Identifier>,
    /// Whether the body carries a `uuid` member of its own.
    pub has_uuid: bool,
    /// Whether the first identifier field is present at all, usable or not (`""`, `null`).
    pub first_present: bool,
}

const NOT_AN_OBJECT: EdgeError = EdgeError::InvalidEvent(
    "the body must be a JSON object of valid UTF-8, nested at most 32 deep",
);

/// Read an event the way the upstream will: a JSON object whose every string is valid UTF-8
/// (no lone surrogate escapes), nested at most `MAX_DEPTH` deep, in which no identifier field
/// and no `uuid` appears twice (serde_json and most parsers keep the last of two, a proxy
/// keeping the first would cache one visitor's offers under another's name). An object
/// without an identifier has `identifier: None`.
pub fn scan(body: &[u8], identifiers: &[String]) -> Result<Scan, EdgeError> {
    let repeated = std::cell::Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = Top {
        identifiers,
        repeated: &repeated,
    }
    .deserialize(&mut de)
    .and_then(|scan| de.end().map(|()| scan));
    match (found, repeated.take()) {
        (_, Some(field)) => Err(EdgeError::RepeatedField(field)),
        (Ok(scan), None) => Ok(scan),
        (Err(_), None) => Err(NOT_AN_OBJECT),
    }
}

/// The top-level object: identifiers read, every other value checked by `Checked`.
struct Top<'a> {
    identifiers: &'a [String],
    /// Set to the field's name when an identifier or `uuid` appears twice.
    repeated: &'a std::cell::Cell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Scan;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Scan;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Position in `identifiers` of the best field found so far: earlier wins.
        let mut best: Option<(usize, Identifier)> = None;
        let mut seen = vec![false; self.identifiers.len()];
        let mut has_uuid = false;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let rank = self.identifiers.iter().position(|i| *i == key);
            let first = match rank {
                Some(rank) => !std::mem::replace(&mut seen[rank], true),
                None if key == UUID_FIELD => !std::mem::replace(&mut has_uuid, true),
                None => true,
            };
            if !first {
                self.repeated.set(Some(key.into_owned()));
                return Err(serde::de::Error::custom("repeated field"));
            }
            let seed = Checked {
                depth: 1,
                keep: rank.is_some(),
            };
            let (Some(rank), Some(value)) = (rank, map.next_value_seed(seed)?) else {
                continue;
            };
            if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                best = Some((
                    rank,
                    Identifier {
                        field: key.into_owned(),
                        value,
                    },
                ));
            }
        }
        Ok(Scan {
            identifier: best.map(|(_, id)| id),
            has_uuid,
            first_present: seen.first() == Some(&true),
        })
    }
}

/// Any JSON value at nesting depth `depth`, checked as the upstream will parse it: strings
/// decoded (valid UTF-8, escapes and surrogate pairs whole), depth bounded. serde_json's
/// `IgnoredAny` skips strings without decoding them, so it is not used. With `keep`, a
/// non-blank string or a number is returned as text (an identifier's value).
struct Checked {
    depth: usize,
    keep: bool,
}

impl Checked {
    fn inner(&self) -> Checked {
        Checked {
            depth: self.depth + 1,
            keep: false,
        }
    }

    fn number(&self, n: Option<serde_json::Number>) -> Option<String> {
        n.filter(|_| self.keep).map(|n| n.to_string())
    }
}

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(serde::de::Error::custom("nested too deep"));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.number(Some(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.number(Some(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.number(serde_json::Number::from_f64(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok((self.keep && !v.trim().is_empty()).then(|| v.to_owned()))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element_seed(self.inner())?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_key::<Cow<'de, str>>()?.is_some() {
            map.next_value_seed(self.inner())?;
        }
        Ok(None)
    }
}
