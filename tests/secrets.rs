//! The API key and the tokens appear in no answer, no log line at any level, no `Debug` output.

mod common;

use common::*;
use p13n_edge::emulator::Emulator;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use std::io::Read;
use std::process::{Command, Stdio};

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
    let emu = free_port();
    let mut server = Server::new_with_opt_and_conf(
        None,
        ServerConf {
            threads: 1,
            ..ServerConf::default()
        },
    );
    server.bootstrap();
    p13n_edge::add_emulator(
        &mut server,
        &format!("127.0.0.1:{emu}"),
        Emulator::new(toml::from_str(&demo_rules()).unwrap()),
    );
    let emulator_addr = format!("127.0.0.1:{emu}").parse().unwrap();
    let _emulator = Running::start(server, &[emulator_addr]);

    let (proxy, admin) = (free_port(), free_port());
    let dir = scratch("secrets");
    std::fs::write(dir.join("key"), KEY).unwrap();
    let path = dir.join("p13n-edge.toml");
    std::fs::write(
        &path,
        config_toml(proxy, admin, &format!("http://127.0.0.1:{emu}"), ""),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_p13n-edge"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let proxy = format!("127.0.0.1:{proxy}").parse().unwrap();
    let admin = format!("127.0.0.1:{admin}").parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(admin).is_err()
        || std::net::TcpStream::connect(proxy).is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

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

    child.kill().unwrap();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let _ = child.wait();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging was not on:\n{logs}"
    );
    for answer in &answers {
        assert_clean("an answer", answer);
    }
    assert_clean("the logs", &logs);
}
