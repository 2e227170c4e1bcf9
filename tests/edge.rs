//! The browser-facing edge over real sockets: client lists and trusted proxies, rate limits,
//! the `_td` cookie identifier, crawlers and consent. (Slow and oversized clients:
//! `slow_clients.rs`.)
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::Mutex;

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"offers\":{}}";
const EVENT: &str = r#"{"td_client_id":"v1","td_path":"/retail"}"#;

/// Held by the tests that read the identifier limiter's metrics, one series for every proxy in
/// the process: a counter each adds to, a gauge each sets.
static IDENTIFIER_LIMITER: Mutex<()> = Mutex::new(());

/// The identifier limiter's series of `metric`, from a scrape of `admin`.
fn identifier_limiter(admin: SocketAddr, metric: &str) -> f64 {
    let series = format!("{metric}{{limiter=\"identifier\"}} ");
    to(admin)
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series}is exported"))
}

#[test]
fn denied_and_unlisted_addresses_get_403_with_the_vendor_code() {
    let deny = Edge::start(
        OK,
        Setup::new("deny").set("clients.deny", vec!["127.0.0.1"]),
    );
    to(deny.addr)
        .event(PAGEVIEWS, EVENT)
        .assert_error(403, 3005);
    let allow = Edge::start(
        OK,
        Setup::new("allow").set("clients.allow", vec!["10.0.0.0/8"]),
    );
    to(allow.addr)
        .event(PAGEVIEWS, EVENT)
        .assert_error(403, 3005);
    let local = Edge::start(
        OK,
        Setup::new("allow_local").set("clients.allow", vec!["127.0.0.0/8"]),
    );
    assert_eq!(to(local.addr).event(PAGEVIEWS, EVENT).status, 200);
    assert!(deny.upstream.requests().is_empty());
    assert!(allow.upstream.requests().is_empty());
    assert_eq!(local.upstream.requests().len(), 1);
}

fn post_from(addr: SocketAddr, forwarded: &[(&str, &str)]) -> Response {
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(forwarded);
    to(addr)
        .post(PAGEVIEWS)
        .headers(&headers)
        .body(EVENT.as_bytes())
        .send()
}

#[test]
fn forwarding_headers_count_only_from_trusted_proxies_and_the_address_goes_upstream() {
    let clients = "[clients]\ndeny = [\"192.0.2.0/24\"]\nforward_address = true";
    let trusted = Setup::new("trusted")
        .merge(clients)
        .set("clients.trusted_proxies", vec!["127.0.0.1"]);
    let edge = Edge::start(OK, trusted);
    let (addr, upstream) = (edge.addr, &edge.upstream);
    post_from(addr, &[("X-Forwarded-For", "192.0.2.7")]).assert_error(403, 3005);
    // The balancer writes X-Forwarded-For (the default): a Forwarded is the client's own.
    let r = post_from(addr, &[("Forwarded", "for=192.0.2.8")]);
    assert_eq!(r.status, 200, "{}", r.text());
    upstream.seen.lock().unwrap().clear();
    // A client's own fake entry is skipped: the proxy appended the real address after it.
    let r = post_from(addr, &[("X-Forwarded-For", "192.0.2.7, 198.51.100.4")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].contains("X-Forwarded-For: 198.51.100.4\r\n"),
        "{}",
        seen[0]
    );
    assert!(!seen[0].contains("192.0.2.7"), "{}", seen[0]);

    // Not a trusted proxy: the headers are ignored and the peer's own address is forwarded.
    let untrusted = Edge::start(OK, Setup::new("untrusted").merge(clients));
    assert_eq!(
        post_from(untrusted.addr, &[("X-Forwarded-For", "192.0.2.7")]).status,
        200
    );
    let seen = untrusted.upstream.requests();
    assert!(
        seen[0].contains("X-Forwarded-For: 127.0.0.1\r\n"),
        "{}",
        seen[0]
    );
}

#[test]
fn behind_a_balancer_writing_forwarded_a_client_cannot_choose_its_address_by_x_forwarded_for() {
    let clients = "[clients]\ndeny = [\"192.0.2.0/24\"]\nforward_address = true\n\
                   trusted_proxies = [\"127.0.0.1\"]\nforwarded_header = \"forwarded\"";
    let edge = Edge::start(OK, Setup::new("forwarded_only").merge(clients));
    let addr = edge.addr;
    post_from(addr, &[("Forwarded", "for=192.0.2.8")]).assert_error(403, 3005);
    // The client's own X-Forwarded-For names a denied address, then one of its choosing: both
    // ignored, the balancer's Forwarded names it.
    let r = post_from(
        addr,
        &[
            ("X-Forwarded-For", "192.0.2.7"),
            ("Forwarded", "for=198.51.100.4"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_from(addr, &[("X-Forwarded-For", "203.0.113.9")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = edge.upstream.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].contains("X-Forwarded-For: 198.51.100.4\r\n"),
        "{}",
        seen[0]
    );
    assert!(
        seen[1].contains("X-Forwarded-For: 127.0.0.1\r\n"),
        "{}",
        seen[1]
    );
}

#[test]
fn rate_limits_answer_429_with_retry_after_per_address_and_per_visitor() {
    let _alone = alone(&IDENTIFIER_LIMITER);
    let by_address = Edge::start(
        OK,
        Setup::new("rate_address")
            .set("rate_limit.per_address_per_second", 0.5)
            .set("rate_limit.per_address_burst", 3),
    );
    let addr = by_address.addr;
    for _ in 0..3 {
        assert_eq!(to(addr).event(PAGEVIEWS, EVENT).status, 200);
    }
    let r = to(addr).event(PAGEVIEWS, EVENT);
    r.assert_error(429, 429);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");

    let edge = Edge::start(
        OK,
        Setup::new("rate_visitor")
            .set("rate_limit.per_identifier_per_second", 0.5)
            .set("rate_limit.per_identifier_burst", 2)
            .set("rate_limit.max_tracked", 10),
    );
    let (addr, admin) = (edge.addr, edge.admin);
    let visitor = |id: &str| format!(r#"{{"td_client_id":"{id}"}}"#);
    assert_eq!(to(addr).event(PAGEVIEWS, &visitor("a")).status, 200);
    assert_eq!(to(addr).event(PAGEVIEWS, &visitor("a")).status, 200);
    to(addr)
        .event(PAGEVIEWS, &visitor("a"))
        .assert_error(429, 429);
    assert_eq!(to(addr).event(PAGEVIEWS, &visitor("b")).status, 200);
    // Limited events never reach the upstream.
    assert_eq!(edge.upstream.requests().len(), 3);
    // Thousands of distinct visitors: tracked keys stay at max_tracked.
    for i in 0..200 {
        let _ = to(addr).event(PAGEVIEWS, &visitor(&format!("v{i}")));
    }
    let tracked = identifier_limiter(admin, "p13n_edge_rate_limit_tracked");
    assert!(tracked <= 10.0, "{tracked}");
}

#[test]
fn an_address_rotating_visitor_ids_does_not_get_visitors_elsewhere_refused() {
    let _alone = alone(&IDENTIFIER_LIMITER);
    let edge = Edge::start(
        OK,
        Setup::new("rate_rotation")
            .set("clients.trusted_proxies", vec!["127.0.0.1"])
            .merge(
                "[rate_limit]\nper_identifier_per_second = 0.5\nper_identifier_burst = 1\n\
                 max_tracked = 4\nper_address_per_second = 0.5\nper_address_burst = 10",
            ),
    );
    let (addr, admin) = (edge.addr, edge.admin);
    let overflowed = identifier_limiter(admin, "p13n_edge_rate_limit_overflow_total");
    let from = |address: &str, id: &str| {
        to(addr)
            .post(PAGEVIEWS)
            .headers(&[
                ("Content-Type", "application/json"),
                ("X-Forwarded-For", address),
            ])
            .body(format!(r#"{{"td_client_id":"{id}"}}"#).as_bytes())
            .send()
    };
    // The attacker fills every tracked visitor slot, then keeps rotating: its address bucket
    // is what stops it.
    let statuses: Vec<u16> = (0..20)
        .map(|i| from("198.51.100.66", &format!("rotating-{i}")).status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    // An honest visitor elsewhere, new to the full limiter, is still served.
    let r = from("203.0.113.5", "honest");
    assert_eq!(r.status, 200, "{}", r.text());
    // The counter is per process and other tests add to it: this one's part is what it added.
    let overflowed = identifier_limiter(admin, "p13n_edge_rate_limit_overflow_total") - overflowed;
    assert!(overflowed >= 7.0, "{overflowed}");
}

#[test]
fn the_td_cookie_names_an_anonymous_visitor_and_is_never_forwarded() {
    let upstream = Recorder::start(OK);
    let anonymous = |addr| {
        to(addr)
            .post("/public/demo_db/clicks")
            .headers(&[
                ("Content-Type", "application/vnd.treasuredata.v1+json"),
                ("Cookie", "_td=3f1c0b9e-visitor; session=secret-session"),
            ])
            .body(br#"{"td_path":"/retail"}"#)
            .send()
    };
    // Not configured: the event has no identifier.
    let off = Setup::new("cookie").upstream(upstream.url()).start_proxy();
    anonymous(off.addr).assert_error(400, 3004);
    drop(off);
    let on = Setup::new("cookie_on")
        .upstream(upstream.url())
        .service("identifier_cookie", "_td")
        .start_proxy();
    let r = anonymous(on.addr);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let sent = &seen[0];
    // The id goes in as the first identifier, then the event's uuid (a version-8 UUID).
    let body = sent.split("\r\n\r\n").nth(1).unwrap();
    let prefix = r#"{"td_path":"/retail","td_client_id":"3f1c0b9e-visitor","uuid":""#;
    assert!(body.starts_with(prefix), "{sent}");
    let uuid = &body[prefix.len()..body.len() - 2];
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(&uuid[14..15], "8", "version 8: {uuid}");
    assert!(!sent.to_ascii_lowercase().contains("cookie"), "{sent}");
    assert!(!sent.contains("secret-session"), "{sent}");
}

#[test]
fn crawlers_get_an_empty_200_and_nothing_reaches_the_upstream_the_spool_or_the_quota() {
    let stack = Stack::builder("crawlers")
        .service("max_events_per_second", 100)
        .service("bots.patterns", vec!["uptime-probe"])
        .service("bots.exempt", vec!["Googlebot-Image"])
        .start();
    let post_as = |agent: &str, visitor: &str| {
        to(stack.proxy)
            .post(PAGEVIEWS)
            .headers(&[("Content-Type", "application/json"), ("User-Agent", agent)])
            .body(format!(r#"{{"td_client_id":"{visitor}","td_path":"/retail"}}"#).as_bytes())
            .send()
    };
    for agent in [
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "Uptime-Probe/1.0",
    ] {
        let r = post_as(agent, "crawled");
        assert_eq!(r.status, 200, "{agent}");
        assert!(r.body.is_empty(), "{agent}: {}", r.text());
        assert_eq!(
            r.header("cache-status").as_deref(),
            Some("p13n-edge; detail=crawler")
        );
    }
    let stats = stack.emulator.stats();
    assert_eq!(stats["requests"], 0, "{stats}");
    assert_eq!(stack.metric("p13n_edge_crawlers_total", &[]), 3.0);
    assert_eq!(stack.metric("p13n_edge_quota_spent_total", &[]), 0.0);
    assert_eq!(to(stack.admin).counter("p13n_edge_spool_depth"), 0);
    // An exempt agent and a browser go upstream as usual.
    for (agent, visitor) in [
        ("Googlebot-Image/1.0", "image-bot"),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "person",
        ),
    ] {
        let r = post_as(agent, visitor);
        assert_eq!(r.status, 200, "{agent}: {}", r.text());
        assert_eq!(
            r.header("cache-status")
                .as_deref()
                .map(|s| s.contains("fwd=")),
            Some(true),
            "{agent}"
        );
    }
    assert_eq!(stack.emulator.ingested(), 2);
}

#[test]
fn without_consent_an_event_is_neither_forwarded_nor_kept_and_a_forwarded_address_can_be_cut() {
    let upstream = Recorder::start(OK);
    let extra = "[service.consent]\nhonor_gpc = true\ncookie = \"consent\"\ncookie_value = \"yes\"\n[clients]\nforward_address = true\ntruncate_address = true\n";
    let proxy = Setup::new("consent")
        .upstream(upstream.url())
        .merge(extra)
        .start_proxy();
    let addr = proxy.addr;
    let post = |headers: &[(&str, &str)]| {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        to(addr)
            .post(PAGEVIEWS)
            .headers(&all)
            .body(EVENT.as_bytes())
            .send()
    };
    for headers in [
        &[][..],
        &[("Cookie", "consent=no")][..],
        &[("Cookie", "consent=yes"), ("Sec-GPC", "1")][..],
    ] {
        let r = post(headers);
        assert_eq!(r.status, 200, "{headers:?}");
        assert!(r.body.is_empty(), "{headers:?}: {}", r.text());
        assert_eq!(
            r.header("cache-status").as_deref(),
            Some("p13n-edge; detail=no-consent")
        );
    }
    assert!(upstream.requests().is_empty());
    let r = post(&[("Cookie", "other=1; consent=yes")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    // The client's address (127.0.0.1) leaves as its /24, and the cookie not at all.
    let sent = seen[0].to_ascii_lowercase();
    assert!(sent.contains("x-forwarded-for: 127.0.0.0\r\n"), "{sent}");
    assert!(!sent.contains("cookie"), "{sent}");
}
