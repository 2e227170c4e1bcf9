//! The request path end to end: real server, real sockets, the emulator behind it.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn third_retail_view_gets_the_loyalty_offer_and_every_event_is_ingested() {
    let stack = Stack::start("offers");
    let view = r#"{"td_client_id":"v1","td_path":"/retail/shop/women","product_category":"women"}"#;
    let first = stack.post(PAGEVIEWS, view);
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(!first.text().contains("offer_for_high_loyalty"));
    assert!(first.json()["offers"]["offer_for_women"].is_object());
    stack.post(PAGEVIEWS, view);
    let third = stack.post(PAGEVIEWS, view);
    assert_eq!(third.status, 200);
    let offers = &third.json()["offers"];
    assert_eq!(
        offers["offer_for_high_loyalty"]["attributes"]["status"],
        "high"
    );
    assert_eq!(
        offers["offer_for_high_loyalty"]["batch_segments"],
        json!([{"id": "1588214"}])
    );
    assert_eq!(
        offers["offer_for_women"]["attributes"]["last_category"],
        "women"
    );

    // The public route of the same service, and a visitor with no offer: 200 without payload.
    let other = stack.post(
        "/public/demo_db/clicks",
        r#"{"email":"a@example.com","td_path":"/home"}"#,
    );
    assert_eq!(other.status, 200);
    assert!(other.body.is_empty(), "{}", other.text());

    // Refused events never reach the upstream: 4 accepted, 4 ingested.
    stack
        .post(PAGEVIEWS, r#"{"td_path":"/retail"}"#)
        .assert_error(400, 3004);
    assert_eq!(stack.emulator.ingested(), 4);
}

#[test]
fn the_proxy_upstream_body_passes_through_untouched() {
    let upstream = Recorder::start(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 48\r\n\r\n{\"offers\":{\"x\":{\"batch_segments\":1588214}}}     ",
    );
    let proxy = Setup::new("passthrough")
        .upstream(upstream.url())
        .start_proxy();
    let r = to(proxy.addr)
        .post(PAGEVIEWS)
        .headers(&[("Content-Type", "text/plain")])
        .body(br#"{"td_client_id":"c"}"#)
        .send();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "{\"offers\":{\"x\":{\"batch_segments\":1588214}}}     "
    );
}

#[test]
fn a_chunked_upstream_answer_is_relayed_whole_and_sized() {
    let upstream = Recorder::start(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         b\r\n{\"offers\":{\r\n3;x=y\r\n}}\n\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    let proxy = Setup::new("chunked").upstream(upstream.url()).start_proxy();
    // Three calls: the connection, kept after a whole chunked answer, serves the next ones.
    for n in 0..3 {
        let r = to(proxy.addr).event(PAGEVIEWS, &format!(r#"{{"td_client_id":"c{n}"}}"#));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "{\"offers\":{}}\n");
        assert_eq!(r.header("content-length").as_deref(), Some("14"));
    }
    assert_eq!(upstream.requests().len(), 3);
    assert_eq!(
        upstream.connections(),
        1,
        "one connection served the three calls"
    );
}

#[test]
fn an_upstream_answer_with_endless_framing_is_refused_not_buffered() {
    // 20 KB of trailers after the last chunk: past the 16 KiB bound on trailers.
    let reply = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n{}\r\n",
        "X-Trailer: padding\r\n".repeat(1000)
    );
    let upstream = Recorder::start(Box::leak(reply.into_boxed_str()));
    let proxy = Setup::new("framing").upstream(upstream.url()).start_proxy();
    for n in 0..2 {
        let r = to(proxy.addr).event(PAGEVIEWS, &format!(r#"{{"td_client_id":"f{n}"}}"#));
        r.assert_error(502, 502);
    }
    assert_eq!(upstream.requests().len(), 2);
}

#[test]
fn client_credentials_are_replaced_and_cookies_dropped() {
    let upstream = Recorder::start("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let proxy = Setup::new("creds").upstream(upstream.url()).start_proxy();
    let body = br#"{"td_client_id":"c1","td_path":"/x"}"#;
    let r = to(proxy.addr)
        .post(PAGEVIEWS)
        .headers(&[
            ("Content-Type", "application/json"),
            ("Authorization", "TD1 9/evil"),
            ("WP13n-Token", "9/9/ffffffffffffffffffffffffffffffff"),
            ("Cookie", "session=secret"),
            ("X-Custom", "dropped"),
        ])
        .body(body)
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let sent = seen[0].to_ascii_lowercase();
    assert!(
        sent.starts_with("post /demo_db/pageviews http/1.1\r\n"),
        "{sent}"
    );
    assert!(
        sent.contains(&format!("\r\nauthorization: td1 {KEY}\r\n")),
        "{sent}"
    );
    assert!(
        sent.contains(&format!("\r\nwp13n-token: {TOKEN}\r\n")),
        "{sent}"
    );
    assert!(sent.contains("\r\ncontent-type: application/vnd.treasuredata.v1+json\r\n"));
    assert!(sent.contains(&format!("\r\nhost: {}\r\n", upstream.addr)));
    for gone in ["evil", "ffffffff", "cookie", "session=secret", "x-custom"] {
        assert!(!sent.contains(gone), "{gone} reached the upstream: {sent}");
    }
    // The body goes as sent, with the event's uuid added.
    let sent_body = sent.split("\r\n\r\n").nth(1).unwrap();
    assert!(
        sent_body.starts_with(r#"{"td_client_id":"c1","td_path":"/x","uuid":""#),
        "{sent}"
    );
}

/// The body each request reached `upstream` with.
#[test]
fn every_event_goes_upstream_with_a_uuid_unless_it_has_one_or_the_service_says_no() {
    let upstream = Recorder::start("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let on = Setup::new("uuid_on").upstream(upstream.url()).start_proxy();
    let addr = on.addr;
    for body in [
        r#"{"td_client_id":"u1"}"#,
        r#"{"td_client_id":"u1"}"#,
        r#"{"td_client_id":"u2","uuid":"mine-1"}"#,
    ] {
        assert_eq!(to(addr).event(PAGEVIEWS, body).status, 200);
    }
    let sent = upstream.bodies();
    let uuids: Vec<String> = sent
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["uuid"].as_str().unwrap().to_string()
        })
        .collect();
    assert_ne!(uuids[0], uuids[1], "two events, two uuids");
    assert!(uuids[..2]
        .iter()
        .all(|u| u.len() == 36 && &u[14..15] == "8"));
    assert_eq!(
        sent[2], r#"{"td_client_id":"u2","uuid":"mine-1"}"#,
        "untouched"
    );
    drop(on);

    let off = Setup::new("uuid_off")
        .upstream(upstream.url())
        .service("event_uuid", false)
        .start_proxy();
    let addr = off.addr;
    assert_eq!(
        to(addr).event(PAGEVIEWS, r#"{"td_client_id":"u3"}"#).status,
        200
    );
    assert_eq!(upstream.bodies()[3], r#"{"td_client_id":"u3"}"#);
}

#[test]
fn upstream_errors_keep_their_status_code_and_shape() {
    let stack = Stack::start("upstream_errors");
    stack
        .emulator
        .faults(json!({"status": 429, "code": 2013, "rate": 1.0, "retry_after": "2"}));
    let r = stack.post(PAGEVIEWS, r#"{"td_client_id":"v"}"#);
    r.assert_error(429, 2013);
    assert_eq!(r.header("retry-after").as_deref(), Some("2"));
    stack.emulator.faults(json!({"status": 500, "rate": 1.0}));
    stack
        .post(PAGEVIEWS, r#"{"td_client_id":"v"}"#)
        .assert_error(500, 2001);
    assert_eq!(stack.emulator.ingested(), 0);
}

#[test]
fn a_slow_upstream_gets_504_and_a_dead_one_502() {
    let stack = Stack::start("slow");
    stack
        .emulator
        .faults(json!({"status": 0, "latency_ms": 1500}));
    stack
        .post(PAGEVIEWS, r#"{"td_client_id":"v"}"#)
        .assert_error(504, 504);

    let dead = format!("http://127.0.0.1:{}", free_port());
    let proxy = Setup::new("dead").upstream(dead).start_proxy();
    let r = to(proxy.addr).event(PAGEVIEWS, r#"{"td_client_id":"v"}"#);
    r.assert_error(502, 502);
}

#[test]
fn a_pooled_connection_the_upstream_closed_is_replaced_without_losing_or_repeating_events() {
    // An upstream that answers with keep-alive, then closes the connection while it is idle.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let (received, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (count, closing) = (received.clone(), closed.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if read_message(&mut stream).is_some() {
                count.fetch_add(1, Ordering::SeqCst);
                let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"offers\":{}}";
                let _ = std::io::Write::write_all(&mut stream, reply.as_bytes());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            // Closed after the answer, as an upstream's idle timeout would.
            drop(stream);
            closing.fetch_add(1, Ordering::SeqCst);
        }
    });
    let proxy = Setup::new("stale_pool")
        .upstream(format!("http://{upstream}"))
        .start_proxy();
    for i in 0..5 {
        let r = to(proxy.addr).event(PAGEVIEWS, &format!(r#"{{"td_client_id":"p{i}"}}"#));
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        // The next call finds the pooled connection closed by the upstream.
        assert!(eventually(SECONDS_10, || closed.load(Ordering::SeqCst) == i + 1));
    }
    assert_eq!(received.load(Ordering::SeqCst), 5);
}

#[test]
fn a_routes_schema_drops_or_refuses_what_it_does_not_list_and_the_upstream_sees_only_the_rest() {
    let upstream = Recorder::start("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let routes = r#"
[[service.route]]
database = "demo_db"
table = "orders"
token = "web"
[[service.route.fields]]
name = "td_path"
type = "string"
max_length = 16
[[service.route.fields]]
name = "qty"
type = "number"

[[service.route]]
database = "demo_db"
table = "strict"
token = "web"
unknown_fields = "refuse"
[[service.route.fields]]
name = "tags"
type = "strings"
"#;
    let proxy = Setup::new("schema")
        .upstream(upstream.url())
        .service("event_uuid", false)
        .merge(routes)
        .start_proxy();
    let addr = proxy.addr;
    let post = |path: &str, body: &str| to(addr).event(path, body);
    // Dropped: a field outside the schema; the rest goes as written, in order.
    let r = post(
        "/demo_db/orders",
        r#"{"email":"a@b","secret_note":"x","td_path":"/cart","qty":2}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Refused: a wrong type, a value too long, a field outside a strict schema.
    post("/demo_db/orders", r#"{"email":"a@b","qty":"2"}"#).assert_error(400, 3004);
    let long = post(
        "/demo_db/orders",
        r#"{"email":"a@b","td_path":"/a/very/long/path"}"#,
    );
    long.assert_error(400, 3004);
    assert!(
        long.text().contains(r#"the field \"td_path\" is longer"#),
        "{}",
        long.text()
    );
    let strict = post(
        "/demo_db/strict",
        r#"{"email":"a@b","tags":["x"],"extra":1}"#,
    );
    strict.assert_error(400, 3004);
    assert!(
        strict.text().contains(r#"the field \"extra\" is not in"#),
        "{}",
        strict.text()
    );
    // A route without a schema sends the body as it came.
    assert_eq!(
        post(PAGEVIEWS, r#"{"email":"a@b","anything":[1]}"#).status,
        200
    );
    let sent = upstream.bodies();
    assert_eq!(
        sent,
        [
            r#"{"email":"a@b","td_path":"/cart","qty":2}"#,
            r#"{"email":"a@b","anything":[1]}"#
        ]
    );
}

/// The emulator's memory is bounded: past its limits it forgets the oldest `uuid`s (a repeat of
/// one is then not counted) and a profile for each new visitor, and says so in its stats.
#[test]
fn the_emulator_remembers_a_bounded_number_of_uuids_and_profiles() {
    let rules = toml::from_str(&demo_rules()).unwrap();
    let emulator = Emulator::serving(p13n_edge::emulator::Emulator::new(rules).remembering(3, 2));
    let ingest = |visitor: u32, uuid: u32| ingest_with_uuid(&emulator, visitor, uuid);
    for n in 0..3 {
        ingest(n % 2, n);
    }
    ingest(0, 1); // a repeat, remembered
    let s = emulator.stats();
    assert_eq!(
        (
            &s["duplicates"],
            &s["uuids_remembered"],
            &s["uuids_forgotten"]
        ),
        (&json!(1), &json!(3), &json!(0)),
        "{s}"
    );
    for n in 3..100 {
        ingest(n, n);
    }
    let s = emulator.stats();
    assert_eq!(
        (&s["profiles"], &s["profiles_forgotten"]),
        (&json!(2), &json!(97)),
        "{s}"
    );
    ingest(100, 0); // long forgotten: not counted as a repeat
    let s = emulator.stats();
    assert_eq!(s["events_ingested"], 102, "{s}");
    assert_eq!(s["duplicates"], 1, "{s}");
    assert_eq!(s["uuids_remembered"], 3, "{s}");
    assert_eq!(s["uuids_forgotten"], 98, "{s}");
    assert_eq!(
        (&s["profiles"], &s["profiles_forgotten"]),
        (&json!(2), &json!(98)),
        "{s}"
    );
}

/// An event of visitor `v{visitor}` with its own `uuid` (number `uuid`), straight to `emulator`.
fn ingest_with_uuid(emulator: &Emulator, visitor: u32, uuid: u32) {
    let body = format!(
        r#"{{"td_client_id":"v{visitor}","td_path":"/retail","uuid":"00000000-0000-0000-0000-{uuid:012}"}}"#
    );
    let r = to(emulator.addr)
        .post(PAGEVIEWS)
        .header(
            "Authorization",
            "TD1 1/0123456789abcdef0123456789abcdef01234567",
        )
        .header("WP13n-Token", "1/1/00000000000000000000000000000001")
        .header("Content-Type", "application/vnd.treasuredata.v1+json")
        .body(body.as_bytes())
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `p13n-edge emulator`, the real binary: its memory limits are flags.
#[test]
fn the_emulator_command_takes_its_memory_limits_as_flags() {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_p13n-edge"));
    command
        .args(["emulator", "--threads", "1", "--listen"])
        .arg(addr.to_string())
        .args(["--remember-uuids", "2", "--max-profiles", "1", "--rules"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/demo-rules.toml"));
    // Owned, killed and its output shown on a failure as a daemon's; it has one listener.
    let _emulator = Daemon::spawn_command(command, addr, addr);
    let emulator = Emulator::at(addr);
    for n in 0..3 {
        ingest_with_uuid(&emulator, n, n);
    }
    ingest_with_uuid(&emulator, 0, 0); // forgotten (the third pushed it out): no repeat
    ingest_with_uuid(&emulator, 0, 2); // still remembered: a repeat
    let s = emulator.stats();
    assert_eq!(s["events_ingested"], 5, "{s}");
    assert_eq!(s["duplicates"], 1, "{s}");
    assert_eq!(s["uuids_remembered"], 2, "{s}");
    assert_eq!(
        (&s["profiles"], &s["profiles_forgotten"]),
        (&json!(1), &json!(3)),
        "{s}"
    );
}
