//! Upstream resilience against the emulator's fault plans: retries, Retry-After, the budget,
//! the deadline and the circuit breaker; a resolver that hangs. (An HTTP/2 upstream that closes
//! its connections or refuses streams: `upstream_h2_faults.rs`.)
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn half_429s_nearly_every_visitor_succeeds_and_each_accepted_event_is_ingested_once() {
    let stack = Stack::start("half_429");
    stack
        .emulator
        .faults(json!({"status": 429, "code": 2013, "rate": 0.5}));
    let mut ok = 0;
    for i in 0..60 {
        let r = stack.post(
            PAGEVIEWS,
            &format!(r#"{{"td_client_id":"fresh{i}","td_path":"/retail"}}"#),
        );
        match r.status {
            200 => ok += 1,
            _ => {
                r.assert_error(429, 2013);
                assert!(r.header("retry-after").is_some(), "{}", r.head);
            }
        }
    }
    assert!(ok >= 52, "only {ok} of 60 got 200");
    let stats = stack.emulator.stats();
    assert_eq!(stats["events_ingested"], ok);
    assert_eq!(stats["duplicates"], 0);
    let retries = stack.metric("p13n_edge_upstream_retries_total", &[r#"reason="429""#]);
    assert!(retries >= 1.0, "no retry was counted");
    // Every 429 the upstream sent was either retried or handed to the visitor.
    let upstream_429 = stats["by_status"]["429"].as_f64().unwrap();
    assert_eq!(upstream_429, retries + f64::from(60 - ok));
}

#[test]
fn all_429s_the_client_gets_429_with_retry_after_within_the_deadline() {
    let stack = Stack::builder("all_429")
        .service("deadline_ms", 800)
        .start();
    stack
        .emulator
        .faults(json!({"status": 429, "code": 2003, "rate": 1.0}));
    let started = Instant::now();
    let r = stack.post(PAGEVIEWS, r#"{"td_client_id":"v"}"#);
    let took = started.elapsed();
    r.assert_error(429, 2003);
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert!(took < Duration::from_millis(800 + 500), "took {took:?}");
    assert_eq!(stack.emulator.ingested(), 0);
}

#[test]
fn the_budget_caps_retry_amplification() {
    let stack = Stack::builder("budget")
        .merge("[service.retry]\nmax_retries = 3\nbackoff_base_ms = 1\nbackoff_cap_ms = 2\nbudget_ratio = 0.1\nbudget_floor_per_second = 0.0\n")
        .start();
    stack
        .emulator
        .faults(json!({"status": 429, "code": 2013, "rate": 1.0}));
    let calls = 100;
    for i in 0..calls {
        stack
            .post(PAGEVIEWS, &format!(r#"{{"td_client_id":"b{i}"}}"#))
            .assert_error(429, 2013);
    }
    let upstream_calls = stack.emulator.stats()["requests"].as_u64().unwrap();
    let amplification = upstream_calls as f64 / calls as f64;
    println!(
        "429 storm: {calls} client calls cost the upstream {upstream_calls} ({amplification:.2}x)"
    );
    // Without the budget, 3 retries each would cost 4x.
    assert!(amplification <= 1.1 + 1e-9, "amplification {amplification}");
    assert!(upstream_calls > calls, "the budget allowed no retry at all");
    assert!(stack.metric("p13n_edge_retry_budget_exhausted_total", &[]) >= 1.0);
}

#[test]
fn retry_after_is_honoured() {
    let stack = Stack::builder("retry_after")
        .service("deadline_ms", 3000)
        .set("service.cache.mode", "off")
        .start();
    // The first attempt meets the plan; the retry, after the 1 s the upstream asked for, does not.
    stack.emulator.faults(
        json!({"status": 429, "code": 2013, "rate": 1.0, "seconds": 0.3, "retry_after": "1"}),
    );
    let started = Instant::now();
    let r = stack.post(PAGEVIEWS, r#"{"td_client_id":"v"}"#);
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        took >= Duration::from_secs(1),
        "retried after {took:?}, before Retry-After"
    );
    assert_eq!(stack.emulator.ingested(), 1);

    // A Retry-After past the deadline is not waited for: the client gets the 429 at once.
    stack
        .emulator
        .faults(json!({"status": 429, "code": 2013, "rate": 1.0, "retry_after": "60"}));
    let started = Instant::now();
    let r = stack.post(PAGEVIEWS, r#"{"td_client_id":"v"}"#);
    r.assert_error(429, 2013);
    assert_eq!(r.header("retry-after").as_deref(), Some("60"));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn the_circuit_opens_on_a_5xx_storm_and_recovers_when_it_ends() {
    let stack = Stack::builder("circuit")
        // Without the cache, so that failures reach the client instead of stale offers. Open
        // long enough for /readyz to be read before it lets a call through (and reads ready).
        .merge("[service.circuit]\nconsecutive_failures = 3\nopen_ms = 1000\n")
        .set("service.cache.mode", "off")
        .start();
    let event = r#"{"td_client_id":"v"}"#;
    assert_eq!(stack.post(PAGEVIEWS, event).status, 200);
    let ready = || to(stack.admin).get("/readyz").send();
    assert_eq!(ready().status, 200);

    stack
        .emulator
        .faults(json!({"status": 503, "code": 2001, "rate": 1.0}));
    for _ in 0..3 {
        stack.post(PAGEVIEWS, event).assert_error(503, 2001);
    }
    let before = stack.emulator.stats()["requests"].as_u64().unwrap();
    let r = stack.post(PAGEVIEWS, event);
    r.assert_error(503, 503);
    assert!(r.text().contains("circuit open"), "{}", r.text());
    assert_eq!(
        stack.emulator.stats()["requests"].as_u64().unwrap(),
        before,
        "an open circuit still called"
    );
    let readiness = ready();
    assert_eq!(readiness.status, 503, "{}", readiness.text());
    assert!(readiness.text().contains("every upstream circuit is open"));
    assert_eq!(stack.metric("p13n_edge_circuit_state", &[]), 2.0);

    // The storm ends; after open_ms one probe goes through and closes the circuit.
    stack.emulator.clear_faults();
    // The breaker's own clock: no signal comes before open_ms has passed.
    std::thread::sleep(Duration::from_millis(1050));
    assert_eq!(stack.post(PAGEVIEWS, event).status, 200);
    assert_eq!(ready().status, 200);
    assert_eq!(stack.metric("p13n_edge_circuit_state", &[]), 0.0);
}

#[test]
fn a_refused_token_is_reported_not_retried() {
    // The emulator knows another token than the one the proxy is configured with.
    let rules = demo_rules().replace(TOKEN, "1/1/ffffffffffffffffffffffffffffffff");
    let stack = Stack::builder("token_refused").start_with_rules(&rules);

    let r = stack.post(PAGEVIEWS, r#"{"td_client_id":"v"}"#);
    r.assert_error(400, 3001);
    let stats = stack.emulator.stats();
    assert_eq!(stats["requests"], 1, "a token error was retried");
    let readiness = to(stack.admin).get("/readyz").send().text();
    assert!(
        readiness.contains("route demo_db/pageviews: token web refused (3001)"),
        "{readiness}"
    );
    let scrape = to(stack.admin).metrics();
    assert!(
        scrape.contains(r#"p13n_edge_upstream_token_rejections_total{code="3001",route="demo_db/pageviews",service="token_refused",token="web"} 1"#),
        "{scrape}"
    );
}

/// Answers its first lookup with `addr`; every later one hangs until dropped.
struct HangsAfterFirst {
    addr: std::net::SocketAddr,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

struct Leaving<'a>(&'a AtomicUsize);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl p13n_edge::upstream::Resolve for HangsAfterFirst {
    async fn lookup(&self, _: &str, _: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let _leaving = Leaving(&self.in_flight);
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return Ok(vec![self.addr]);
        }
        std::future::pending().await
    }
}

#[test]
fn a_hanging_resolver_past_the_dns_ttl_costs_no_request_anything() {
    let upstream = Recorder::start(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"offers\":{}}",
    );
    let setup = Setup::new("dns_stale")
        .upstream(format!("http://dns-stale.test:{}", upstream.addr.port()))
        .set("service.cache.mode", "off")
        .set("timeouts.dns_ttl_ms", 100)
        .set("timeouts.dns_timeout_ms", 300);
    let resolver = Arc::new(HangsAfterFirst {
        addr: upstream.addr,
        calls: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
    });
    let proxy = setup.start_proxy_resolving(resolver.clone());
    let (addr, admin) = (proxy.addr, proxy.admin);
    let event = r#"{"td_client_id":"v"}"#;
    assert_eq!(to(addr).event(PAGEVIEWS, event).status, 200);

    // 1.5 s: 15 TTLs and 5 lookup timeouts, from three clients at once.
    let until = Instant::now() + Duration::from_millis(1500);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                while Instant::now() < until {
                    let started = Instant::now();
                    let r = to(addr).event(PAGEVIEWS, event);
                    assert_eq!(r.status, 200, "{}", r.text());
                    slowest = slowest.max(started.elapsed());
                }
                slowest
            })
        })
        .collect();
    for client in clients {
        let slowest = client.join().unwrap();
        assert!(
            slowest < Duration::from_millis(800),
            "a request took {slowest:?}"
        );
    }
    let calls = resolver.calls.load(Ordering::SeqCst);
    assert!((2..=7).contains(&calls), "{calls} lookups");
    assert_eq!(resolver.most_in_flight.load(Ordering::SeqCst), 1);
    let metrics = to(admin).metrics();
    let value = |line: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        value(r#"p13n_edge_dns_lookups_total{host="dns-stale.test",result="ok"}"#),
        1.0
    );
    assert!(value(r#"p13n_edge_dns_lookups_total{host="dns-stale.test",result="timeout"}"#) >= 2.0);
    assert!(value(r#"p13n_edge_dns_stale_total{host="dns-stale.test"}"#) >= 10.0);
}
