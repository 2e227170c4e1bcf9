//! HTTP/2 to the upstream (`upstream.protocol = "h2"`), cleartext with prior knowledge against
//! the emulator: many calls at once share one connection, answers (errors and `Retry-After`
//! included) arrive whole, and replay delivers over it too. A test binary of its own: the
//! connection counter is per process.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

fn opened(stack: &Stack, protocol: &str) -> u64 {
    let metrics = request(stack.admin, "GET", "/metrics", &[], b"").text();
    let series = format!("p13n_edge_upstream_connections_opened_total{{protocol=\"{protocol}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn calls_at_once_share_one_http2_connection_and_replay_uses_it_too() {
    let stack = Stack::start_with(
        "over_h2",
        "deadline_ms = 3000\n[upstream]\nprotocol = \"h2\"\n",
    );
    // 50 ms away: 48 visitors at once are 48 streams in flight together.
    stack.set_faults(json!({"status": 0, "latency_ms": 50}));
    let answers: Vec<Response> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..48)
            .map(|v| {
                let stack = &stack;
                s.spawn(move || {
                    stack.post(
                        "/demo_db/pageviews",
                        &format!(r#"{{"td_client_id":"h2-{v}","product_category":"women"}}"#),
                    )
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("offer_for_women"), "{}", r.text());
    }
    let stats = stack.emulator_stats();
    assert_eq!(stats["events_ingested"], 48, "{stats}");
    assert!(stats["max_in_flight"].as_u64().unwrap() >= 16, "{stats}");
    assert_eq!(opened(&stack, "h2"), 1);
    assert_eq!(opened(&stack, "h1"), 0);

    // An error answer with Retry-After comes back whole over the stream.
    stack.set_faults(json!({"status": 429, "code": 2003, "rate": 1.0, "retry_after": "30"}));
    let r = stack.post(
        "/demo_db/pageviews",
        r#"{"td_client_id":"h2-new","td_path":"/x"}"#,
    );
    r.assert_error(429, 2003);
    assert_eq!(r.header("retry-after").as_deref(), Some("30"));

    // Events spooled during an outage are replayed over the same connection.
    stack.set_faults(json!({"status": 503, "rate": 1.0}));
    for v in 0..8 {
        let r = stack.post(
            "/demo_db/pageviews",
            &format!(r#"{{"td_client_id":"h2-{v}","td_path":"/x"}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let before = stack.emulator_stats()["events_ingested"].as_u64().unwrap();
    request(stack.emulator, "DELETE", "/_emulator/faults", &[], b"");
    assert!(
        eventually(Duration::from_secs(20), || {
            stack.emulator_stats()["events_ingested"].as_u64().unwrap() == before + 8
        }),
        "{}",
        stack.emulator_stats()
    );
    assert_eq!(opened(&stack, "h2"), 1);
}

/// An HTTP/2 upstream that answers one request per connection and then closes it (GOAWAY),
/// counting the connections it accepted.
fn one_request_per_connection() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    if let Some(Ok((request, mut respond))) = conn.accept().await {
                        drop(request);
                        let answer = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .body(())
                            .unwrap();
                        let mut body = respond.send_response(answer, false).unwrap();
                        body.send_data(bytes::Bytes::from_static(br#"{"offers":{}}"#), true)
                            .unwrap();
                    }
                    conn.graceful_shutdown();
                    while conn.accept().await.is_some() {}
                });
            }
        });
    });
    (addr, accepted)
}

#[test]
fn an_http2_connection_the_upstream_closed_is_replaced_without_a_failed_call() {
    use std::sync::atomic::Ordering;
    let (upstream, accepted) = one_request_per_connection();
    let toml = config_toml(
        free_port(),
        free_port(),
        &format!("http://{upstream}"),
        "[upstream]\nprotocol = \"h2\"",
    );
    let (_proxy, addr) = start_proxy(load_config("h2_closed", &toml));
    for n in 0..5 {
        let r = post_json(
            addr,
            &format!(r#"{{"td_client_id":"c{n}","td_path":"/x"}}"#),
        );
        assert_eq!(r.status, 200, "call {n}: {}", r.text());
        assert_eq!(r.text(), r#"{"offers":{}}"#);
        // Sometimes the next call starts before the GOAWAY arrives, sometimes after.
        if n % 2 == 1 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 5);
}
