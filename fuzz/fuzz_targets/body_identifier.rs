//! The validate step on hostile input: a `Cookie` header (first line) and a body (the rest).
//! Never a panic; and whatever is accepted goes upstream as a JSON object naming the visitor.
#![no_main]

use bytes::Bytes;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use p13n_edge::event::{identify, identify_with_cookie};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(0);
    let (cookie, body) = data.split_at(split);
    let body = body.strip_prefix(b"\n").unwrap_or(body);
    let cookies: Vec<HeaderValue> = HeaderValue::from_bytes(cookie).into_iter().collect();
    let ids = ["td_client_id".to_string(), "email".to_string()];
    let found = identify_with_cookie(
        Bytes::copy_from_slice(body),
        &ids,
        Some("_td"),
        cookies.iter(),
    );
    if let Ok((visitor, sent)) = found {
        let again = identify(&sent, &ids).expect("the event sent upstream names its visitor");
        assert_eq!(again.value, visitor.value);
        assert!(!visitor.value.trim().is_empty());
    }
});
