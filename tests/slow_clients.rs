//! Slow and oversized clients over real sockets: a stalled or trickled header is cut off at the
//! whole-header deadline (empty lines before the request line included), a 100 KB header block
//! gets 431, and an early error stays readable for a client that reads late.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"offers\":{}}";
const EVENT: &str = r#"{"td_client_id":"v1","td_path":"/retail"}"#;

/// A 1 s allowance for a whole request header, 2 s for an idle kept-alive connection.
fn header_deadlines(name: &str) -> Setup {
    Setup::new(name)
        .set("timeouts.client_header_ms", 1000)
        .set("timeouts.client_idle_ms", 2000)
}

/// Held by the tests that read `p13n_edge_slow_headers_total`: it is one counter for the whole
/// process, so a test's increase is its own only while no other test trickles a header.
static SLOW_HEADERS: Mutex<()> = Mutex::new(());

/// Seconds until the server closes `stream`, reading whatever it sends.
fn seconds_until_closed(stream: &mut TcpStream) -> f64 {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    start.elapsed().as_secs_f64()
}

#[test]
fn clients_stalled_mid_headers_are_cut_off_and_others_still_served() {
    let _alone = alone(&SLOW_HEADERS);
    let edge = Edge::start(OK, header_deadlines("stall"));
    let addr = edge.addr;
    // A new connection that stops in the middle of its first header.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled
        .write_all(b"POST /demo_db/pageviews HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .unwrap();
    // Meanwhile other clients are served.
    assert_eq!(to(addr).event(PAGEVIEWS, EVENT).status, 200);
    let waited = seconds_until_closed(&mut stalled);
    assert!((0.5..5.0).contains(&waited), "closed after {waited} s");

    // A kept-alive connection: one request answered, then silence inside the next header.
    let mut kept = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /demo_db/pageviews HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{EVENT}",
        EVENT.len()
    );
    kept.write_all(head.as_bytes()).unwrap();
    let first = read_message(&mut kept).expect("first answer");
    assert!(first.starts_with(b"HTTP/1.1 200"));
    kept.write_all(b"POST /demo_db/pag").unwrap();
    let waited = seconds_until_closed(&mut kept);
    assert!(waited < 6.0, "closed after {waited} s");
    assert_eq!(to(addr).event(PAGEVIEWS, EVENT).status, 200);
}

/// Write `bytes` one at a time, every `every`, until the server cuts the connection or
/// `give_up` has passed; then whether it was cut (or closes within a second after), after how
/// many seconds, and whether an answer came.
fn trickle(
    addr: SocketAddr,
    bytes: &[u8],
    every: Duration,
    give_up: Duration,
) -> (bool, f64, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    let mut cut = false;
    for byte in bytes {
        if s.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        // The client's pace, not a wait for the server: a slow writer is what is tested.
        std::thread::sleep(every);
        if start.elapsed() > give_up {
            break;
        }
    }
    let waited = start.elapsed().as_secs_f64();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let answered = read_message(&mut s).is_some_and(|m| m.starts_with(b"HTTP/1.1 200"));
    (cut || seconds_until_closed(&mut s) < 1.0, waited, answered)
}

fn slow_headers_counted(admin: SocketAddr) -> u64 {
    to(admin).counter("p13n_edge_slow_headers_total")
}

#[test]
fn a_client_trickling_its_header_is_cut_off_at_the_whole_header_deadline() {
    let _alone = alone(&SLOW_HEADERS);
    let edge = Edge::start(OK, header_deadlines("trickle"));
    let (addr, admin) = (edge.addr, edge.admin);
    // One byte every 150 ms: every read is quick, but the header would take 10 s.
    let head = format!(
        "POST /demo_db/pageviews HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{EVENT}",
        EVENT.len()
    );
    let counted = slow_headers_counted(admin);
    let every = Duration::from_millis(150);
    let (cut, waited, answered) = trickle(addr, head.as_bytes(), every, Duration::from_secs(4));
    assert!(!answered, "the trickled request was served");
    assert!(cut, "still open after {waited} s");
    assert!(waited < 4.0, "cut after {waited} s");
    assert!(edge.upstream.requests().is_empty());
    assert!(slow_headers_counted(admin) > counted, "not counted");
    // A kept-alive connection gets a fresh allowance per request.
    let mut kept = TcpStream::connect(addr).unwrap();
    for _ in 0..3 {
        kept.write_all(head.as_bytes()).unwrap();
        let answer = read_message(&mut kept).expect("an answer");
        assert!(answer.starts_with(b"HTTP/1.1 200"));
        // Idle between requests, as a browser is: three of these outlast one allowance.
        std::thread::sleep(Duration::from_millis(600));
    }
}

#[test]
fn a_100_kb_header_block_gets_431_and_the_process_stays_up() {
    let edge = Edge::start(OK, Setup::new("big_headers"));
    let addr = edge.addr;
    let big = "a".repeat(100 * 1024);
    let r = to(addr)
        .post(PAGEVIEWS)
        .headers(&[("Content-Type", "application/json"), ("X-Big", &big)])
        .body(EVENT.as_bytes())
        .send();
    r.assert_error(431, 431);
    // Many small headers adding up count the same.
    let many: Vec<(String, String)> = (0..200)
        .map(|i| (format!("X-H{i}"), "b".repeat(200)))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    to(addr)
        .post(PAGEVIEWS)
        .headers(&many)
        .body(EVENT.as_bytes())
        .send()
        .assert_error(431, 431);
    // Past pingora's own 1 MiB ceiling the request is refused before it is parsed.
    let huge = format!(
        "POST /demo_db/pageviews HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "c".repeat(2 << 20)
    );
    if let Some(r) = to(addr).try_raw(huge.as_bytes()) {
        assert_eq!(r.status, 400);
    }
    assert_eq!(to(addr).event(PAGEVIEWS, EVENT).status, 200);
    assert_eq!(edge.upstream.requests().len(), 1);
}

#[test]
fn an_early_error_is_still_readable_when_the_client_reads_late() {
    // Refused on its headers, with a body still unread: closing at once would send a reset
    // that destroys the answer in the client's buffers; the proxy drains the body first.
    let edge = Edge::start(OK, Setup::new("linger"));
    let addr = edge.addr;
    for _ in 0..3 {
        let body = "x".repeat(60_000);
        let head = format!(
            "POST /demo_db/pageviews HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            "b".repeat(40_000),
            body.len()
        );
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(body.as_bytes());
        // The client reads late: that lateness is the case tested, there is nothing to await.
        std::thread::sleep(Duration::from_millis(300));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let answer = read_message(&mut s).expect("the 431 answer, not a reset");
        assert!(answer.starts_with(b"HTTP/1.1 431"));
    }
}

#[test]
fn empty_lines_before_the_request_line_do_not_stop_the_whole_header_deadline() {
    let _alone = alone(&SLOW_HEADERS);
    let edge = Edge::start(OK, header_deadlines("blank_trickle"));
    let (addr, admin) = (edge.addr, edge.admin);
    // Pingora's parser skips empty lines before a request line; they are not a header's end.
    for blank in ["\r\n\r\n", "\n\n", "\r\n\n\r\n"] {
        let counted = slow_headers_counted(admin);
        let head = format!(
            "{blank}POST /demo_db/pageviews HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
            "a".repeat(1 << 20)
        );
        let every = Duration::from_millis(50);
        let (cut, waited, answered) = trickle(addr, head.as_bytes(), every, Duration::from_secs(5));
        assert!(!answered, "the trickled request was served");
        assert!(cut, "{blank:?}: still open after {waited} s");
        assert!(
            (0.8..3.0).contains(&waited),
            "{blank:?}: cut after {waited} s"
        );
        assert!(
            slow_headers_counted(admin) > counted,
            "{blank:?}: not counted"
        );
    }
    assert!(edge.upstream.requests().is_empty());
    // A request with a blank line before it, sent whole, is still served.
    let event = format!(
        "\r\nPOST /demo_db/pageviews HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{EVENT}",
        EVENT.len()
    );
    assert_eq!(to(addr).raw(event.as_bytes()).status, 200);
}
