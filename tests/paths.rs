//! No route outside the config is reachable, whatever the request says: a sweep of path, Host,
//! request-line and header tricks against a proxy whose upstream records everything it gets.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use std::net::SocketAddr;

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"offers\":{}}";
const EVENT: &str = r#"{"td_client_id":"v1"}"#;

/// Send a request line (and extra header lines) with a JSON event; the status, or `None` when
/// the connection closed without an answer.
fn status_of(addr: SocketAddr, line: &str, headers: &str) -> Option<u16> {
    let raw = format!(
        "{line}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{EVENT}",
        EVENT.len()
    );
    to(addr).try_raw(raw.as_bytes()).map(|r| r.status)
}

#[test]
fn every_path_trick_gets_400_or_404_and_nothing_reaches_the_upstream() {
    let upstream = Recorder::start(OK);
    let proxy = Setup::new("paths").upstream(upstream.url()).start_proxy();
    let addr = proxy.addr;
    let host = "Host: edge.example\r\n";
    let targets = [
        "/demo_db/../demo_db/pageviews",
        "/demo_db/./pageviews",
        "/other_db/../demo_db/pageviews",
        "/demo_db/pageviews/..",
        "/demo_db/pageviews/",
        "/demo_db/pageviews/x",
        "/demo_db%2fpageviews",
        "/demo_db%2Fpageviews",
        "/demo_db/%70ageviews",
        "/%2e%2e/demo_db/pageviews",
        "/demo_db/pageviews%00",
        "/demo_db/pageviews%0d%0a",
        "/demo_db/pageviews;x",
        "/demo_db/pageviews..;/",
        "/demo_db\\pageviews",
        "//demo_db/pageviews",
        "/demo_db//pageviews",
        "///demo_db/pageviews",
        "/DEMO_DB/pageviews",
        "/demo_db/PageViews",
        "/Public/demo_db/clicks",
        "/public/demo_db/pageviews",
        "/public//demo_db/clicks",
        "/public/public/demo_db/clicks",
        "/public/../demo_db/pageviews",
        "/public%2fdemo_db/clicks",
        "/demo_db/clicks",
        "/public",
        "/public/",
        "/public/demo_db",
        "/demo_db",
        "/",
        "*",
        "demo_db/pageviews",
        "/demo_db/%C0%AFpageviews",
        "/demo_db/pageviews%23",
        "/metrics",
        "/_emulator/stats",
        "http://evil.example/demo_db/pageviews",
        "https://evil.example:443/demo_db/pageviews",
        "//evil.example/demo_db/pageviews",
    ];
    for target in targets {
        let status = status_of(addr, &format!("POST {target} HTTP/1.1"), host);
        assert!(
            matches!(status, Some(400 | 404)),
            "{target}: {status:?} (want 400 or 404)"
        );
    }
    // Host games: none, two, or one that disagrees with an absolute target.
    let line = "POST /demo_db/pageviews HTTP/1.1";
    for headers in [
        "",
        "Host: a\r\nHost: b\r\n",
        "Host: edge.example\r\nhost: evil.example\r\n",
    ] {
        assert_eq!(status_of(addr, line, headers), Some(400), "{headers:?}");
    }
    let absolute = "POST http://127.0.0.1/demo_db/pageviews HTTP/1.1";
    assert_eq!(
        status_of(addr, absolute, "Host: evil.example\r\n"),
        Some(400)
    );
    // Header tricks: a bare CR, obsolete line folding, NUL, and a header with no name.
    for headers in [
        "Host: x\r\nX-A: a\rb\r\n",
        "Host: x\r\nX-A: a\r\n b\r\n",
        "Host: x\r\nX-A: a\0b\r\n",
        "Host: x\r\n: empty\r\n",
        "Host: x\r\nHost x\r\n",
    ] {
        let status = status_of(addr, line, headers);
        assert!(
            matches!(status, Some(400) | None),
            "{headers:?}: {status:?}"
        );
    }
    // Methods other than POST and OPTIONS, in any case, are refused on a real route.
    for method in ["post", "Post", "GET", "PUT", "PATCH", "TRACE", "DELETE"] {
        let status = status_of(addr, &format!("{method} /demo_db/pageviews HTTP/1.1"), host);
        assert!(matches!(status, Some(400 | 405)), "{method}: {status:?}");
    }
    let seen = upstream.requests();
    assert!(seen.is_empty(), "{seen:?}");

    // The configured route, with a Host that names someone else: the upstream still gets its
    // own path and Host. A query string is dropped, never forwarded.
    for target in [PAGEVIEWS, "/demo_db/pageviews?next=/admin"] {
        assert_eq!(
            status_of(addr, &format!("POST {target} HTTP/1.1"), host),
            Some(200)
        );
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    for sent in &seen {
        let expected = format!(
            "POST /demo_db/pageviews HTTP/1.1\r\nHost: {}\r\n",
            upstream.addr
        );
        assert!(sent.starts_with(&expected), "{sent}");
        assert!(
            !sent.contains("edge.example") && !sent.contains("admin"),
            "{sent}"
        );
    }
}
