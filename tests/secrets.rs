//! The API key and the tokens appear in no answer, no log line at any level, no `Debug` output.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;

const KEY_SECRET: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN_SECRET: &str = "00000000000000000000000000000001";

fn assert_clean(what: &str, text: &str) {
    for secret in [KEY_SECRET, TOKEN_SECRET] {
        assert!(
            !text.contains(secret),
            "a secret leaked into {what}:\n{text}"
        );
    }
}

#[test]
fn debug_output_of_the_config_is_redacted() {
    let setup = Setup::new("debug");
    let text = format!("{:?}", setup.config());
    assert!(text.contains("api_key: ***"), "{text}");
    assert_clean("Debug of Config", &text);
    // The file's own types too: an inline token is a `Secret` from the moment it is read.
    let file: p13n_edge::config::FileConfig = toml::from_str(&setup.toml()).unwrap();
    let text = format!("{file:?}");
    assert!(text.contains("\"web\": ***"), "{text}");
    assert_clean("Debug of FileConfig", &text);
}

#[test]
fn no_answer_and_no_trace_log_carries_a_secret() {
    // The emulator in-process; the proxy as the real binary, logging everything to stderr.
    let emulator = Emulator::start(&demo_rules());
    // CORS, client lists and rate limits on, so that their answers are swept too.
    let guards = r#"
[service.cors]
allowed_origins = ["https://shop.example"]
[clients]
trusted_proxies = ["127.0.0.1"]
deny = ["192.0.2.0/24"]
[rate_limit]
per_identifier_per_second = 0.01
per_identifier_burst = 5
"#;
    let daemon = Setup::new("secrets")
        .upstream(emulator.url())
        .merge(guards)
        .spawn(&[("RUST_LOG", "trace")]);
    let (proxy, admin) = (daemon.proxy, daemon.admin);

    let json = [("Content-Type", "application/json")];
    let mut answers = Vec::new();
    let mut send = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        let r = to(proxy)
            .method(method, path)
            .headers(headers)
            .body(body.as_bytes())
            .send();
        answers.push(format!("{}\n{}", r.head, r.text()));
        r.status
    };
    for _ in 0..3 {
        assert_eq!(
            send(
                "POST",
                PAGEVIEWS,
                &json,
                r#"{"td_client_id":"v","td_path":"/retail"}"#
            ),
            200
        );
    }
    assert_eq!(
        send(
            "POST",
            "/public/demo_db/clicks",
            &[("Content-Type", "text/plain")],
            r#"{"email":"e"}"#
        ),
        200
    );
    assert_eq!(send("POST", "/nope/nope", &json, "{}"), 404);
    assert_eq!(send("GET", PAGEVIEWS, &[], ""), 405);
    assert_eq!(send("OPTIONS", PAGEVIEWS, &[], ""), 204);
    let shop = [("Origin", "https://shop.example")];
    let preflight = [
        ("Origin", "https://shop.example"),
        ("Access-Control-Request-Method", "POST"),
    ];
    assert_eq!(
        send("OPTIONS", "/public/demo_db/clicks", &preflight, ""),
        204
    );
    let event = r#"{"td_client_id":"c"}"#;
    let from_shop = [shop[0], json[0]];
    assert_eq!(
        send("POST", "/public/demo_db/clicks", &from_shop, event),
        200
    );
    let from_evil = [("Origin", "https://evil.example"), json[0]];
    assert_eq!(
        send("POST", "/public/demo_db/clicks", &from_evil, event),
        403
    );
    let denied = [("X-Forwarded-For", "192.0.2.1"), json[0]];
    assert_eq!(send("POST", PAGEVIEWS, &denied, event), 403);
    let big = "h".repeat(40_000);
    let huge = [("X-Big", big.as_str()), json[0]];
    assert_eq!(send("POST", PAGEVIEWS, &huge, event), 431);
    let statuses: Vec<u16> = (0..6)
        .map(|_| send("POST", PAGEVIEWS, &json, r#"{"td_client_id":"r"}"#))
        .collect();
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert_eq!(
        send("POST", PAGEVIEWS, &[("Content-Type", "image/png")], "{}"),
        415
    );
    assert_eq!(send("POST", PAGEVIEWS, &json, "[1]"), 400);
    assert_eq!(send("POST", PAGEVIEWS, &json, &"x".repeat(70_000)), 413);
    // An upstream error, relayed.
    emulator.faults(serde_json::json!({"status": 429, "code": 2013, "rate": 1.0}));
    // A known visitor gets stale offers (and the event goes to the spool); a new one the 429.
    assert_eq!(
        send("POST", PAGEVIEWS, &json, r#"{"td_client_id":"v"}"#),
        200
    );
    assert_eq!(
        send("POST", PAGEVIEWS, &json, r#"{"td_client_id":"new"}"#),
        429
    );
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = to(admin).get(path).send();
        assert_eq!(r.status, 200, "{path}");
        answers.push(r.text());
    }

    let logs = daemon.kill();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging was not on:\n{logs}"
    );
    for answer in &answers {
        assert_clean("an answer", answer);
    }
    assert_clean("the logs", &logs);
}

/// The proxy on a fake upstream answering `reply`; the answer to one event.
fn answer_from(name: &str, reply: &'static str) -> Response {
    let upstream = Recorder::start(reply);
    let proxy = Setup::new(name).upstream(upstream.url()).start_proxy();
    to(proxy.addr).event(PAGEVIEWS, r#"{"td_client_id":"v"}"#)
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

fn reply(status: &str, body: &str) -> &'static str {
    leak(format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

fn assert_length_right(r: &Response) {
    let length = r.header("content-length").unwrap();
    assert_eq!(length.parse::<usize>().unwrap(), r.body.len(), "{}", r.head);
}

#[test]
fn an_upstream_error_echoing_the_credentials_reaches_the_browser_scrubbed() {
    let body = format!(
        r#"{{"code":3001,"message":"token {TOKEN} (sent with TD1 {KEY}, key {}) is not in configuration"}}"#,
        KEY_SECRET.to_uppercase()
    );
    let r = answer_from("scrub_error", reply("400 Bad Request", &body));
    assert_eq!(r.status, 400);
    assert_clean("a relayed error", &r.text());
    assert_clean("a relayed error", &r.text().to_lowercase());
    assert_eq!(
        r.json()["message"],
        "token 1/1/*** (sent with TD1 1/***, key ***) is not in configuration"
    );
    assert_eq!(r.json()["code"], 3001);
    assert_length_right(&r);
}

#[test]
fn offers_lose_an_echoed_credential_and_nothing_else() {
    // A 2xx (offers, passed through as is) changes only where it quotes this service's key or
    // token; another 32-hex value is the upstream's business.
    let other = "ffffffffffffffffffffffffffffffff";
    let body = format!(
        r#"{{"offers":{{"echo":{{"attributes":{{"auth":"TD1 1\/{KEY_SECRET}","id":"{other}"}}}}}}}}"#
    );
    let r = answer_from("scrub_offers", reply("200 OK", &body));
    assert_eq!(r.status, 200);
    assert_clean("relayed offers", &r.text());
    assert_eq!(
        r.text(),
        format!(
            r#"{{"offers":{{"echo":{{"attributes":{{"auth":"TD1 1\/***","id":"{other}"}}}}}}}}"#
        )
    );
    assert_length_right(&r);
}
