//! Every locally answered error: status, vendor-shaped JSON body, and the process stays up.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;

const EVENT: &str = r#"{"td_client_id":"v1","td_path":"/retail"}"#;

#[test]
fn unknown_routes_are_404_whatever_the_path_says() {
    let stack = Stack::start("routes");
    for path in [
        "/",
        "/demo_db",
        "/demo_db/other",
        "/demo_db/pageviews/",
        "/demo_db/pageviews/x",
        "/DEMO_DB/pageviews",
        "//demo_db/pageviews",
        "/demo_db//pageviews",
        "/public/demo_db/pageviews", // the private route has no public shape
        "/demo_db/clicks",           // the public route has no private shape
        "/x/../demo_db/pageviews",
        "/demo_db%2fpageviews",
        "/demo%5fdb/pageviews",
        "/_emulator/stats",
    ] {
        stack.post(path, EVENT).assert_error(404, 404);
    }
    // Still serving.
    assert_eq!(stack.post(PAGEVIEWS, EVENT).status, 200);
    assert_eq!(stack.emulator.ingested(), 1);
}

#[test]
fn methods_other_than_post_and_options_are_405() {
    let stack = Stack::start("methods");
    for method in ["GET", "PUT", "DELETE", "PATCH", "HEAD", "TRACE"] {
        let r = to(stack.proxy).method(method, PAGEVIEWS).send();
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow").as_deref(), Some("POST, OPTIONS"));
        if method != "HEAD" {
            r.assert_error(405, 3009);
        }
    }
    let r = to(stack.proxy).method("OPTIONS", PAGEVIEWS).send();
    assert_eq!(r.status, 204);
    assert_eq!(stack.emulator.ingested(), 0);
}

#[test]
fn bodies_over_64_kib_are_413_declared_or_chunked() {
    let stack = Stack::start("too_large");
    let big = format!(
        r#"{{"td_client_id":"v","pad":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    stack.post(PAGEVIEWS, &big).assert_error(413, 413);

    let mut raw = b"POST /demo_db/pageviews HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in big.as_bytes().chunks(10_000) {
        raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    to(stack.proxy).raw(&raw).assert_error(413, 413);

    // Exactly at the limit is fine.
    let pad = 65536 - r#"{"td_client_id":"v","pad":""}"#.len();
    let edge = format!(r#"{{"td_client_id":"v","pad":"{}"}}"#, "x".repeat(pad));
    assert_eq!(edge.len(), 65536);
    assert_eq!(stack.post(PAGEVIEWS, &edge).status, 200);
    assert_eq!(stack.emulator.ingested(), 1);
}

#[test]
fn content_types_other_than_json_text_and_vendor_are_415() {
    let stack = Stack::start("media");
    let post = |headers: &[(&str, &str)]| {
        to(stack.proxy)
            .post(PAGEVIEWS)
            .headers(headers)
            .body(EVENT.as_bytes())
            .send()
    };
    for ct in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "text/html",
    ] {
        post(&[("Content-Type", ct)]).assert_error(415, 415);
    }
    post(&[]).assert_error(415, 415);
    for ct in [
        "application/json",
        "text/plain;charset=UTF-8",
        "application/vnd.treasuredata.v1+json",
    ] {
        let r = post(&[("Content-Type", ct)]);
        assert_eq!(r.status, 200, "{ct}: {}", r.text());
    }
    assert_eq!(stack.emulator.ingested(), 3);
}

#[test]
fn bodies_without_an_identifier_are_3004() {
    let stack = Stack::start("invalid_event");
    for body in [
        "",
        "not json",
        "[]",
        "null",
        r#""td_client_id""#,
        r#"{"td_path":"/retail"}"#,
        r#"{"td_client_id":""}"#,
        r#"{"td_client_id":null}"#,
        r#"{"td_client_id":"v"} trailing"#,
        r#"{"td_client_id":"v""#,
    ] {
        stack.post(PAGEVIEWS, body).assert_error(400, 3004);
    }
    // A configured second identifier is enough.
    assert_eq!(stack.post(PAGEVIEWS, r#"{"email":"a@b.c"}"#).status, 200);
    assert_eq!(stack.emulator.ingested(), 1);
    assert_eq!(
        stack.emulator.stats()["by_status"]
            .as_object()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_client_that_stalls_mid_body_is_cut_off_with_408() {
    let stack = Stack::start("slow_client");
    let raw = b"POST /demo_db/pageviews HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"td_client_id\":";
    to(stack.proxy).raw(raw).assert_error(408, 408);
    assert_eq!(stack.post(PAGEVIEWS, EVENT).status, 200);
}

#[test]
fn an_event_that_names_its_visitor_twice_is_refused_and_never_reaches_the_upstream() {
    let stack = Stack::start("repeated_identifier");
    // Warm the victim's offers, so a mix-up would have something to show.
    let victim =
        r#"{"td_client_id":"victim","td_path":"/retail/shop/women","product_category":"women"}"#;
    assert_eq!(stack.post(PAGEVIEWS, victim).status, 200);
    for body in [
        r#"{"td_client_id":"victim","td_client_id":"attacker"}"#,
        r#"{"td_client_id":"victim","td_client\u005fid":"attacker"}"#,
        r#"{"td_client_id":"victim","uuid":"a","uuid":"b"}"#,
    ] {
        let r = stack.post(PAGEVIEWS, body);
        r.assert_error(400, 3004);
        assert!(r.text().contains("appears more than once"), "{}", r.text());
    }
    assert_eq!(stack.emulator.ingested(), 1);
}

#[test]
fn a_skipped_field_the_upstream_could_not_parse_is_refused_here() {
    let stack = Stack::start("unparseable_skipped_field");
    let deep = format!(
        r#"{{"td_client_id":"v","x":{}1{}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    for body in [
        r#"{"td_client_id":"v","td_url":"\ud800"}"#.to_string(),
        r#"{"td_client_id":"v","list":["ok","\udc01"]}"#.to_string(),
        deep,
    ] {
        stack.post(PAGEVIEWS, &body).assert_error(400, 3004);
    }
    let raw_bad_utf8 = b"POST /demo_db/pageviews HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n{\"td_client_id\":\"v\",\"x\":\"\xff\"}  ";
    to(stack.proxy).raw(raw_bad_utf8).assert_error(400, 3004);
    // Nothing was forwarded: the emulator was never asked.
    assert_eq!(stack.emulator.stats()["requests"], 0);
}
