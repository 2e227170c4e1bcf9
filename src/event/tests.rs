//! The validate step, tested: content types, bodies, identifiers, uuids and claims.

use super::*;

fn ids() -> Vec<String> {
    vec!["td_client_id".into(), "email".into()]
}

fn cookies(values: &[&str]) -> Vec<HeaderValue> {
    values
        .iter()
        .map(|v| HeaderValue::from_str(v).unwrap())
        .collect()
}

#[test]
fn the_cookie_names_the_visitor_when_the_body_does_not() {
    let jar = cookies(&["a=1; _td=0f7c-11ee", "_td_global=x"]);
    let Event {
        visitor: id, body, ..
    } = identify_with_cookie(
        Bytes::from_static(b" { \"td_path\":\"/\" } "),
        &ids(),
        Some("_td"),
        jar.iter(),
    )
    .unwrap();
    assert_eq!(id.value, "0f7c-11ee");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["td_client_id"], "0f7c-11ee");
    assert_eq!(v["td_path"], "/");
    let event =
        identify_with_cookie(Bytes::from_static(b"{}"), &ids(), Some("_td"), jar.iter()).unwrap();
    assert_eq!(&event.body[..], br#"{"td_client_id":"0f7c-11ee"}"#);
    let with = event.with_uuid("u-1");
    assert_eq!(
        &with.body[..],
        br#"{"td_client_id":"0f7c-11ee","uuid":"u-1"}"#
    );
    // A body's own uuid is kept.
    let own = identify_with_cookie(
        Bytes::from_static(br#"{"uuid":"mine"}"#),
        &ids(),
        Some("_td"),
        jar.iter(),
    )
    .unwrap()
    .with_uuid("u-2");
    let v: serde_json::Value = serde_json::from_slice(&own.body).unwrap();
    assert_eq!(v["uuid"], "mine");
}

#[test]
fn the_body_wins_over_the_cookie_and_odd_cookies_are_ignored() {
    let jar = cookies(&["_td=from-cookie"]);
    let body = Bytes::from_static(br#"{"td_client_id":"from-body"}"#);
    let event = identify_with_cookie(body.clone(), &ids(), Some("_td"), jar.iter()).unwrap();
    assert_eq!(
        (event.visitor.value.as_str(), event.body),
        ("from-body", body)
    );
    for odd in ["_td=", "_td=a b", "_td=<script>", "x_td=abc", "_td=\"a,b\""] {
        let jar = cookies(&[odd]);
        let r = identify_with_cookie(Bytes::from_static(b"{}"), &ids(), Some("_td"), jar.iter());
        assert_eq!(r.unwrap_err(), NO_IDENTIFIER, "{odd}");
    }
    let r = identify_with_cookie(Bytes::from_static(b"{}"), &ids(), None, jar.iter());
    assert_eq!(r.unwrap_err(), NO_IDENTIFIER);
    let r = identify_with_cookie(Bytes::from_static(b"[1]"), &ids(), Some("_td"), jar.iter());
    assert!(r.is_err());
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
fn a_repeated_identifier_or_uuid_is_refused_whatever_its_values() {
    for body in [
        &br#"{"td_client_id":"victim","td_client_id":"attacker"}"#[..],
        br#"{"td_client_id":"","td_client_id":"attacker"}"#,
        br#"{"email":"a@b","td_client_id":"v","email":"c@d"}"#,
        br#"{"td_client_id":"v","td_client\u005fid":"w"}"#,
        br#"{"td_client_id":"v","uuid":"1","uuid":"2"}"#,
    ] {
        let err = scan(body, &ids()).unwrap_err();
        assert!(
            matches!(err, EdgeError::RepeatedField(_)),
            "{}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(err.code(), 3004);
    }
    // Other fields may repeat: they name nothing the proxy acts on.
    let ok = scan(br#"{"td_client_id":"v","a":1,"a":2}"#, &ids()).unwrap();
    assert_eq!(ok.identifier.unwrap().value, "v");
}

#[test]
fn every_string_is_checked_even_in_fields_the_proxy_skips() {
    for bad in [
        &br#"{"td_client_id":"v","x":"\ud800"}"#[..],
        br#"{"td_client_id":"v","x":["\udc00 lone trail"]}"#,
        br#"{"td_client_id":"v","x":{"y":"\ud800\u0041"}}"#,
        b"{\"td_client_id\":\"v\",\"x\":\"\xff\"}",
        b"{\"td_client_id\":\"v\",\"x\":{\"\xc3\":1}}",
    ] {
        assert!(
            scan(bad, &ids()).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let pair = br#"{"td_client_id":"v","x":"\ud83d\ude00"}"#;
    assert!(scan(pair, &ids()).is_ok());
}

#[test]
fn nesting_is_bounded() {
    let nested = |depth: usize| {
        format!(
            r#"{{"td_client_id":"v","x":{}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    assert!(scan(nested(MAX_DEPTH - 1).as_bytes(), &ids()).is_ok());
    assert!(scan(nested(MAX_DEPTH).as_bytes(), &ids()).is_err());
    assert!(scan(nested(100_000).as_bytes(), &ids()).is_err());
}

#[test]
fn a_uuid_of_the_body_is_seen() {
    assert!(
        scan(br#"{"td_client_id":"v","uuid":"x"}"#, &ids())
            .unwrap()
            .has_uuid
    );
    assert!(!scan(br#"{"td_client_id":"v"}"#, &ids()).unwrap().has_uuid);
}

#[test]
fn an_empty_identifier_is_not_filled_from_the_cookie_into_a_second_member() {
    let jar = cookies(&["_td=from-cookie"]);
    let r = identify_with_cookie(
        Bytes::from_static(br#"{"td_client_id":""}"#),
        &ids(),
        Some("_td"),
        jar.iter(),
    );
    assert_eq!(r.unwrap_err(), EMPTY_IDENTIFIER);
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

#[test]
fn a_claimed_event_names_only_the_edges_visitor() {
    let ids = ["td_client_id".to_string(), "email".to_string()];
    let me = "0f4e1c2a-7b3d-4c5e-9f60-718293a4b5c6";
    let claimed = |body: &str, refuse| {
        claim(Bytes::from(body.to_string()), &ids, me, refuse)
            .map(|e| (String::from_utf8(e.body.to_vec()).unwrap(), e.visitor.value))
    };
    // A body that names the visitor, and only them, goes as written.
    let mine = format!(r#"{{"td_client_id":"{me}","a":1}}"#);
    assert_eq!(claimed(&mine, true), Ok((mine.clone(), me.to_string())));
    // Someone else's id, in any identifier, is replaced (or refused).
    for body in [
        r#"{"td_client_id":"victim","a":1}"#,
        r#"{"a":1,"email":"victim@example.com"}"#,
        r#"{"td_client_id":42,"a":1}"#,
    ] {
        let expected = format!(r#"{{"a":1,"td_client_id":"{me}"}}"#);
        assert_eq!(
            claimed(body, false),
            Ok((expected, me.to_string())),
            "{body}"
        );
        assert_eq!(
            claimed(body, true),
            Err(EdgeError::ForeignVisitor),
            "{body}"
        );
    }
    // Nor under another case.
    assert_eq!(
        claimed(r#"{"TD_Client_ID":"victim","a":1}"#, false),
        Ok((
            format!(r#"{{"a":1,"td_client_id":"{me}"}}"#),
            me.to_string()
        ))
    );
    // No id, an empty one or null: the visitor's is added, refused or not.
    for body in [
        r#"{"a":1}"#,
        r#"{"td_client_id":"","a":1}"#,
        r#"{"a":1,"td_client_id":null}"#,
    ] {
        let expected = format!(r#"{{"a":1,"td_client_id":"{me}"}}"#);
        assert_eq!(
            claimed(body, true),
            Ok((expected, me.to_string())),
            "{body}"
        );
    }
    // The checks of any event still hold.
    assert!(matches!(
        claimed(r#"{"td_client_id":"x","td_client_id":"y"}"#, false),
        Err(EdgeError::RepeatedField(_))
    ));
    assert!(claimed("[1]", false).is_err());
}
