//! HTTP/2 to the upstream (`upstream.protocol = "h2"`), cleartext with prior knowledge against
//! the emulator: many calls at once share one connection, answers (errors and `Retry-After`
//! included) arrive whole, and replay delivers over one of its own. A test binary with one
//! test: the connection counter is per process. (A connection the upstream closes:
//! `resilience.rs`.)
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

fn opened(stack: &Stack, protocol: &str) -> u64 {
    let metrics = to(stack.admin).metrics();
    let series = format!("p13n_edge_upstream_connections_opened_total{{protocol=\"{protocol}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// `n` new visitors' events posted at once.
fn at_once(stack: &Stack, n: usize) -> Vec<Response> {
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..n)
            .map(|v| {
                s.spawn(move || {
                    stack.post(
                        PAGEVIEWS,
                        &format!(r#"{{"td_client_id":"h2-{n}-{v}","product_category":"women"}}"#),
                    )
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

#[test]
fn calls_at_once_share_one_http2_connection_and_replay_keeps_one_of_its_own() {
    let stack = Stack::builder("over_h2")
        .service("deadline_ms", 3000)
        .set("upstream.protocol", "h2")
        .start();
    // 50 ms away: 48 visitors at once are 48 streams in flight together.
    stack
        .emulator
        .faults(json!({"status": 0, "latency_ms": 50}));
    let answers = at_once(&stack, 48);
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("offer_for_women"), "{}", r.text());
    }
    let stats = stack.emulator.stats();
    assert_eq!(stats["events_ingested"], 48, "{stats}");
    assert!(stats["max_in_flight"].as_u64().unwrap() >= 16, "{stats}");
    assert_eq!(opened(&stack, "h2"), 1);
    assert_eq!(opened(&stack, "h1"), 0);

    // 150 at once, 300 ms away, past the emulator's 100 streams a connection: one more.
    stack
        .emulator
        .faults(json!({"status": 0, "latency_ms": 300}));
    let answers = at_once(&stack, 150);
    assert!(answers.iter().all(|r| r.status == 200));
    assert_eq!(opened(&stack, "h2"), 2);

    // An error answer with Retry-After comes back whole over the stream.
    stack
        .emulator
        .faults(json!({"status": 429, "code": 2003, "rate": 1.0, "retry_after": "30"}));
    let r = stack.post(PAGEVIEWS, r#"{"td_client_id":"h2-new","td_path":"/x"}"#);
    r.assert_error(429, 2003);
    assert_eq!(r.header("retry-after").as_deref(), Some("30"));

    // Events spooled during an outage are replayed over a connection of replay's own (its
    // runtime drives it), opened once: a second outage's events go over it too.
    for (outage, expected) in [(0, 3), (1, 3)] {
        stack.emulator.faults(json!({"status": 503, "rate": 1.0}));
        for v in 0..8 {
            let r = stack.post(
                PAGEVIEWS,
                &format!(r#"{{"td_client_id":"h2-48-{v}","td_path":"/x","outage":{outage}}}"#),
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let before = stack.emulator.ingested();
        stack.emulator.clear_faults();
        assert!(
            eventually(Duration::from_secs(20), || {
                stack.emulator.ingested() == before + 8
            }),
            "{}",
            stack.emulator.stats()
        );
        assert_eq!(opened(&stack, "h2"), expected);
    }
}
