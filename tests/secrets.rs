//! The API key and the tokens appear in no answer, no log line at any level, no `Debug` output.

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
    let config = load_config(
        "debug",
        &config_toml(free_port(), free_port(), "http://127.0.0.1:9", ""),
    );
    let text = format!("{config:?}");
    assert!(text.contains("api_key: ***"), "{text}");
    assert_clean("Debug of Config", &text);
}

#[test]
fn no_answer_and_no_trace_log_carries_a_secret() {
    // The emulator in-process; the proxy as the real binary, logging everything to stderr.
    let (_emulator, emulator_addr) = start_emulator(&demo_rules());
    let (proxy, admin) = (free_port(), free_port());
    let dir = scratch("secrets");
    std::fs::write(dir.join("key"), KEY).unwrap();
    let path = dir.join("p13n-edge.toml");
    let upstream = format!("http://{emulator_addr}");
    std::fs::write(&path, config_toml(proxy, admin, &upstream, "")).unwrap();
    let daemon = Daemon::spawn(&path, proxy, admin, &[("RUST_LOG", "trace")]);
    let (proxy, admin) = (daemon.proxy, daemon.admin);

    let json = [("Content-Type", "application/json")];
    let mut answers = Vec::new();
    let mut send = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        let r = request(proxy, method, path, headers, body.as_bytes());
        answers.push(format!("{}\n{}", r.head, r.text()));
        r.status
    };
    for _ in 0..3 {
        assert_eq!(
            send(
                "POST",
                "/demo_db/pageviews",
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
    assert_eq!(send("GET", "/demo_db/pageviews", &[], ""), 405);
    assert_eq!(send("OPTIONS", "/demo_db/pageviews", &[], ""), 204);
    assert_eq!(
        send(
            "POST",
            "/demo_db/pageviews",
            &[("Content-Type", "image/png")],
            "{}"
        ),
        415
    );
    assert_eq!(send("POST", "/demo_db/pageviews", &json, "[1]"), 400);
    assert_eq!(
        send("POST", "/demo_db/pageviews", &json, &"x".repeat(70_000)),
        413
    );
    // An upstream error, relayed.
    let plan = r#"{"status":429,"code":2013,"rate":1.0}"#;
    request(
        emulator_addr,
        "POST",
        "/_emulator/faults",
        &[],
        plan.as_bytes(),
    );
    // A known visitor gets stale offers (and the event goes to the spool); a new one the 429.
    assert_eq!(
        send(
            "POST",
            "/demo_db/pageviews",
            &json,
            r#"{"td_client_id":"v"}"#
        ),
        200
    );
    assert_eq!(
        send(
            "POST",
            "/demo_db/pageviews",
            &json,
            r#"{"td_client_id":"new"}"#
        ),
        429
    );
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = request(admin, "GET", path, &[], b"");
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
