//! The validate step on hostile input: a `Cookie` header (first line) and a body (the rest).
//! Never a panic; and differential against serde_json: whatever the proxy accepts is a JSON
//! object that `serde_json::Value` (a last-wins parser, like the upstream's and the emulator's)
//! parses too, naming the same visitor. An accepted body is one the upstream can read.
#![no_main]

use bytes::Bytes;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use p13n_edge::event::{identify_with_cookie, scan};
use serde_json::Value;

/// The visitor as serde_json reads the body: the first configured field whose (last) value is
/// a non-blank string or a number.
fn reference(body: &[u8], ids: &[String]) -> Option<String> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    ids.iter().find_map(|id| match map.get(id)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(0);
    let (cookie, body) = data.split_at(split);
    let body = body.strip_prefix(b"\n").unwrap_or(body);
    let cookies: Vec<HeaderValue> = HeaderValue::from_bytes(cookie).into_iter().collect();
    let ids = ["td_client_id".to_string(), "email".to_string()];

    if let Ok(found) = scan(body, &ids) {
        let parsed = serde_json::from_slice::<Value>(body);
        assert!(
            matches!(parsed, Ok(Value::Object(_))),
            "accepted a body serde_json refuses"
        );
        assert_eq!(found.identifier.map(|i| i.value), reference(body, &ids));
    }

    let found = identify_with_cookie(
        Bytes::copy_from_slice(body),
        &ids,
        Some("_td"),
        cookies.iter(),
    );
    if let Ok(event) = found {
        // What goes upstream (with its uuid) names the same visitor, read either way, and is
        // not ambiguous.
        let visitor = event.visitor.value.clone();
        let sent = event.with_uuid("0190a3c2-7d1e-8000-8000-000000000001").body;
        let again = scan(&sent, &ids).expect("the event sent upstream is accepted again");
        assert!(again.has_uuid);
        assert_eq!(again.identifier.map(|i| i.value), Some(visitor.clone()));
        assert_eq!(reference(&sent, &ids), Some(visitor.clone()));
        assert!(!visitor.trim().is_empty());
    }
});
