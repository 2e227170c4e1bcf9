//! Signed-cookie mode on hostile input: a `Cookie` header (first line) and a body (the rest).
//! Never a panic; a visitor is found only from a cookie the policy signed, or minted fresh; and
//! whatever goes upstream is an object that serde_json (a last-wins parser, like the upstream's)
//! reads as naming that visitor, and only that visitor, under every configured identifier.
#![no_main]

use bytes::Bytes;
use http::header::{HeaderMap, COOKIE};
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use p13n_edge::event::claim;
use p13n_edge::guard::IdentityPolicy;
use serde_json::Value;
use std::time::{Duration, UNIX_EPOCH};

const NOW: u64 = 1_800_000_000;
const KNOWN: &str = "0f4e1c2a-7b3d-4c5e-9f60-718293a4b5c6";

fuzz_target!(|data: &[u8]| {
    let policy = IdentityPolicy::new(
        &[b"a-secret-of-at-least-32-bytes-for-the-fuzzer".to_vec()],
        "vid".into(),
    );
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(0);
    let (cookie, body) = data.split_at(split);
    let body = body.strip_prefix(b"\n").unwrap_or(body);
    let mut headers = HeaderMap::new();
    // One valid token among the fuzzer's cookies half the time.
    if data.first().is_some_and(|b| b % 2 == 0) {
        let token = policy.token(KNOWN, NOW);
        headers.append(COOKIE, HeaderValue::from_str(&format!("vid={token}")).unwrap());
    }
    if let Ok(value) = HeaderValue::from_bytes(cookie) {
        headers.append(COOKIE, value);
    }
    let Ok(visitor) = policy.visitor(&headers, false, UNIX_EPOCH + Duration::from_secs(NOW)) else {
        return;
    };
    // The fuzzer cannot forge a tag: an id is the known one (from its valid token) or a new one.
    assert!(visitor.id == KNOWN || visitor.set_cookie.is_some());

    let ids = ["td_client_id".to_string(), "email".to_string()];
    for refuse in [false, true] {
        let Ok(event) = claim(Bytes::copy_from_slice(body), &ids, &visitor.id, refuse) else {
            continue;
        };
        assert_eq!(event.visitor.value, visitor.id);
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&event.body) else {
            panic!("a claimed event is not an object");
        };
        assert_eq!(map.get("td_client_id"), Some(&Value::String(visitor.id.clone())));
        for (name, _) in map.iter().filter(|(n, _)| *n != "td_client_id") {
            assert!(
                !ids.iter().any(|i| i.eq_ignore_ascii_case(name)),
                "{name} still names someone"
            );
        }
    }
});
