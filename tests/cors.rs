//! CORS per service: exact and subdomain origins echoed with credentials, preflights answered
//! locally, foreign origins refused with 403/3007 and no CORS header.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;

const CORS: &str = "[service.cors]\nallowed_origins = [\"http://localhost:3000\", \"https://*.example.com\"]\nallow_no_origin = false\nmax_age_seconds = 300\n";
const EVENT: &str = r#"{"td_client_id":"v","td_path":"/retail"}"#;

fn post_from(stack: &Stack, origin: &str, body: &str) -> Response {
    let headers = [
        ("Content-Type", "text/plain;charset=UTF-8"),
        ("Origin", origin),
    ];
    to(stack.proxy)
        .post("/public/demo_db/clicks")
        .headers(&headers)
        .body(body.as_bytes())
        .send()
}

fn assert_cors(r: &Response, origin: &str) {
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some(origin),
        "{}",
        r.head
    );
    assert_eq!(
        r.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(r.header("vary").as_deref(), Some("Origin"));
}

#[test]
fn allowed_origins_are_echoed_with_credentials() {
    let stack = Stack::builder("cors_allowed").merge(CORS).start();
    for origin in ["http://localhost:3000", "https://shop.example.com"] {
        let r = post_from(&stack, origin, EVENT);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_cors(&r, origin);
    }
    // Errors reach an allowed page too, so its script can read them.
    let r = post_from(&stack, "http://localhost:3000", "{}");
    r.assert_error(400, 3004);
    assert_cors(&r, "http://localhost:3000");
    assert_eq!(stack.emulator.ingested(), 2);
}

#[test]
fn preflights_are_answered_locally() {
    let stack = Stack::builder("cors_preflight").merge(CORS).start();
    let headers = [
        ("Origin", "https://shop.example.com"),
        ("Access-Control-Request-Method", "POST"),
        (
            "Access-Control-Request-Headers",
            "content-type,authorization,wp13n-token",
        ),
    ];
    let r = to(stack.proxy)
        .method("OPTIONS", "/public/demo_db/clicks")
        .headers(&headers)
        .send();
    assert_eq!(r.status, 204);
    assert_cors(&r, "https://shop.example.com");
    assert_eq!(
        r.header("access-control-allow-methods").as_deref(),
        Some("POST, OPTIONS")
    );
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in ["content-type", "authorization", "wp13n-token"] {
        assert!(allowed.contains(h), "{allowed}");
    }
    assert_eq!(r.header("access-control-max-age").as_deref(), Some("300"));
    assert_eq!(stack.emulator.stats()["requests"], 0);
}

#[test]
fn foreign_origins_get_403_and_no_cors_headers() {
    let stack = Stack::builder("cors_foreign").merge(CORS).start();
    for origin in [
        "https://evil.test",
        "https://example.com",
        "http://shop.example.com",
        "null",
        "http://localhost:3001",
    ] {
        let r = post_from(&stack, origin, EVENT);
        r.assert_error(403, 3007);
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{}",
            r.head
        );
        let r = to(stack.proxy)
            .method("OPTIONS", "/public/demo_db/clicks")
            .headers(&[("Origin", origin)])
            .send();
        assert_eq!(r.status, 403);
        assert!(r.header("access-control-allow-origin").is_none());
    }
    // No Origin at all is refused when the service says so.
    to(stack.proxy)
        .event(PAGEVIEWS, EVENT)
        .assert_error(403, 3007);
    assert_eq!(stack.emulator.stats()["requests"], 0);
}

#[test]
fn without_a_cors_policy_origins_are_not_checked_and_no_header_is_sent() {
    let stack = Stack::start("cors_off");
    let r = post_from(&stack, "https://anywhere.test", EVENT);
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
}
