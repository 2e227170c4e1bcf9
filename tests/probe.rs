//! `p13n-edge probe`, the binary itself against a running daemon (also the real binary) and
//! against listeners that refuse or never answer.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn probe(args: &[&str]) -> Outcome {
    let start = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p13n-edge"))
        .arg("probe")
        .args(args)
        .env_remove("P13N_EDGE_API_KEY")
        .output()
        .unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

/// A failed probe: exit 1, nothing on stdout, one line on stderr that says `why`.
fn assert_fails(outcome: &Outcome, why: &str) {
    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    assert_eq!(outcome.stdout, "");
    assert_eq!(outcome.stderr.lines().count(), 1, "{:?}", outcome.stderr);
    assert!(outcome.stderr.contains(why), "{:?}", outcome.stderr);
}

fn assert_ok(outcome: &Outcome) {
    assert_eq!(outcome.code, Some(0), "{}", outcome.stderr);
    assert_eq!(outcome.stdout, "");
    assert_eq!(outcome.stderr, "");
}

/// The daemon, and the file of the config it runs on.
struct Probed {
    daemon: Daemon,
    config: PathBuf,
}

fn daemon(setup: Setup) -> Probed {
    Probed {
        daemon: setup.spawn(&[]),
        config: setup.write(),
    }
}

/// A circuit that opens at the first failure and stays open `open_ms`, on an upstream where
/// nothing listens.
fn nowhere(name: &str, open_ms: i64) -> Setup {
    Setup::new(name)
        .upstream(format!("http://127.0.0.1:{}", free_port()))
        .set("service.circuit.consecutive_failures", 1)
        .set("service.circuit.open_ms", open_ms)
}

#[test]
fn a_serving_daemon_is_healthy_and_ready() {
    let emulator = Emulator::start(&demo_rules());
    let Probed { daemon, config } = daemon(Setup::new("probe_ready").upstream(emulator.url()));
    let config = config.to_str().unwrap();
    assert_ok(&probe(&["--config", config]));
    assert_ok(&probe(&["--config", config, "--ready"]));
    let admin = daemon.admin.to_string();
    assert_ok(&probe(&["--admin", &admin, "--ready"]));
}

#[test]
fn the_config_is_read_for_its_admin_address_alone() {
    let emulator = Emulator::start(&demo_rules());
    let Probed {
        daemon: _daemon,
        config,
    } = daemon(Setup::new("probe_nokey").upstream(emulator.url()));
    // The same config elsewhere, where its key file is not: `run` would refuse it, the probe
    // needs only `[admin]`.
    let elsewhere = scratch("probe-nokey-copy").join("p13n-edge.toml");
    std::fs::copy(&config, &elsewhere).unwrap();
    assert!(!elsewhere.with_file_name("key").exists());
    assert_ok(&probe(&[
        "--config",
        elsewhere.to_str().unwrap(),
        "--ready",
    ]));
}

#[test]
fn a_daemon_whose_every_circuit_is_open_is_alive_but_not_ready() {
    let Probed { daemon, .. } = daemon(nowhere("probe_circuit", 60000));
    let admin = daemon.admin.to_string();
    assert_ok(&probe(&["--admin", &admin, "--ready"]));
    let answer = to(daemon.proxy).event(PAGEVIEWS, r#"{"td_client_id":"v1"}"#);
    assert!(answer.status >= 500, "{}", answer.status);
    let not_ready = probe(&["--admin", &admin, "--ready"]);
    assert_fails(&not_ready, "answered 503: every upstream circuit is open");
    assert!(not_ready.stderr.contains("/readyz"), "{}", not_ready.stderr);
    assert_ok(&probe(&["--admin", &admin]));
}

#[test]
fn nothing_listening_fails_at_once() {
    let addr = format!("127.0.0.1:{}", free_port());
    let outcome = probe(&["--admin", &addr, "--timeout-ms", "5000"]);
    assert_fails(&outcome, "cannot connect");
    assert!(outcome.took < Duration::from_secs(2), "{:?}", outcome.took);
}

#[test]
fn a_listener_that_never_answers_is_given_up_on_at_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    // Accept and hold the connection, reading nothing and answering nothing.
    let held = std::thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let outcome = probe(&["--admin", &addr.to_string(), "--timeout-ms", "300"]);
    assert_fails(&outcome, "no answer within 300 ms");
    assert!(
        outcome.took >= Duration::from_millis(300),
        "{:?}",
        outcome.took
    );
    assert!(outcome.took < Duration::from_secs(3), "{:?}", outcome.took);
    drop(held.join());
}

#[test]
fn a_broken_config_is_reported_without_its_secrets() {
    // An unterminated string on the token's line: the parser's own message would quote it.
    // The config's text is the subject here.
    let setup = Setup::new("probe_broken").upstream("http://127.0.0.1:1");
    let good = format!("web = \"{TOKEN}\"");
    let text = setup.toml();
    assert!(text.contains(&good), "{text}");
    let path = setup.write();
    std::fs::write(&path, text.replace(&good, &format!("web = \"{TOKEN}"))).unwrap();
    let outcome = probe(&["--config", path.to_str().unwrap()]);
    assert_fails(&outcome, "TOML error at line");
    assert!(!outcome.stderr.contains(TOKEN.rsplit('/').next().unwrap()));
    let bad = Path::new(&path).with_file_name("bad-admin.toml");
    std::fs::write(&bad, "[admin]\nlisten = \"localhost:9090\"\n").unwrap();
    assert_fails(
        &probe(&["--config", bad.to_str().unwrap()]),
        "admin.listen: \"localhost:9090\" is not an ip:port address",
    );
}

#[test]
fn readiness_returns_once_the_circuit_would_let_a_call_through() {
    // Out of a Service for its open circuit, a pod gets no call that could close it: readiness
    // must not wait for one.
    let Probed { daemon, .. } = daemon(nowhere("probe_halfopen", 1500));
    let admin = daemon.admin.to_string();
    to(daemon.proxy).event(PAGEVIEWS, r#"{"td_client_id":"v1"}"#);
    assert!(eventually(SECONDS_10, || {
        probe(&["--admin", &admin, "--ready"]).code == Some(0)
    }));
    let readyz = to(daemon.admin).get("/readyz").send().json();
    assert!(
        readyz["warnings"].to_string().contains("circuit half-open"),
        "{readyz}"
    );
}
