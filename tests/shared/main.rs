//! The shared tier against a real redis-server, over real sockets: two p13n-edge processes
//! (the binary, `Daemon`) share one server in front of one emulator. A visitor warmed on one is
//! a `fast` hit on the other; one visitor limit holds for both; a stopped, slow or stalled
//! server costs no answer and adds at most its budget; sharing resumes after a restart; keys
//! that naive concatenation would confuse stay apart.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

#[path = "../common/mod.rs"]
mod common;
mod helpers;
mod valkey;

use common::*;
use helpers::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use valkey::Valkey;

const PASSWORD: &str = "test-only-password-9f1c";

/// Instance `instance` of the service `service`, in `fast` mode on `emulator`, sharing its offers
/// through the tier at `url` within `budget_ms`. Each instance has ports and a scratch directory
/// of its own; the service's name (the test's), and with it the keys of its offers in the tier,
/// is the same on every instance.
fn edge(service: &str, instance: &str, emulator: &Emulator, url: &str, budget_ms: i64) -> Setup {
    Setup::new(&format!("{service}_{instance}"))
        .service("name", service)
        .upstream(emulator.url())
        .fast()
        .set("shared.url", url)
        .set("shared.budget_ms", budget_ms)
}

#[test]
fn a_visitor_warmed_on_one_instance_is_a_fast_hit_on_another() {
    let server = Valkey::start_with("warm", Some(PASSWORD));
    let emulator = Emulator::start(&demo_rules());
    let edge = |instance| {
        edge("warm", instance, &emulator, &server.url(), 200)
            .set("shared.password_env", "P13N_EDGE_TEST_SHARED_PASSWORD")
    };
    let env = [("P13N_EDGE_TEST_SHARED_PASSWORD", PASSWORD)];
    let a = edge("a").spawn(&env);
    let b = edge("b").spawn(&env);

    let first = post(a.proxy, "returning");
    assert_eq!(cache_status(&first), "p13n-edge; fwd=miss; stored");
    // Written through off the answer path.
    let key = pageviews_key(&emulator, "warm", "returning");
    assert!(eventually(Duration::from_secs(5), || server.exists(&key)));

    // The upstream now takes 1.5 s: an answer that waited for it could not come sooner.
    emulator.faults(json!({"status": 0, "latency_ms": 1500}));
    let started = Instant::now();
    let hit = post(b.proxy, "returning");
    let took = started.elapsed();
    assert_eq!(hit.status, 200, "{}", hit.text());
    assert!(
        cache_status(&hit).starts_with("p13n-edge; hit"),
        "{}",
        hit.head
    );
    assert!(
        took < Duration::from_millis(1000),
        "{took:?}: waited for the upstream"
    );
    assert_eq!(hit.body, first.body);
    assert_eq!(
        metric(b.admin, "p13n_edge_shared_lookups_total", "result=\"hit\""),
        1.0
    );
    assert_eq!(
        metric(b.admin, "p13n_edge_cache_lookups_total", "result=\"miss\""),
        0.0
    );
    // Now in B's own cache: the next answer does not ask the shared tier again.
    assert!(cache_status(&post(b.proxy, "returning")).starts_with("p13n-edge; hit"));
    assert_eq!(metric(b.admin, "p13n_edge_shared_lookups_total", ""), 1.0);

    // B's events still reach the upstream, from its spool.
    emulator.clear_faults();
    assert!(eventually(Duration::from_secs(20), || emulator.ingested() == 3));
    // Replayed, the second view's answer is the shared copy's again (no offer yet): not
    // written a second time; the third's has the offer: written.
    let writes = |result: &str| {
        let label = format!("result=\"{result}\"");
        metric(b.admin, "p13n_edge_shared_writes_total", &label)
    };
    assert!(eventually(Duration::from_secs(5), || writes("ok") == 1.0));
    assert_eq!(writes("unchanged"), 1.0);
    let offered = server.get(&key).unwrap();
    assert!(String::from_utf8_lossy(&offered).contains("offer_for_high_loyalty"));
    assert_eq!(metric(a.admin, "p13n_edge_shared_errors_total", ""), 0.0);
}

#[test]
fn the_tier_speaks_tls_with_a_private_ca() {
    let server = Valkey::start_tls("tls");
    let emulator = Emulator::start(&demo_rules());
    let edge = |instance| {
        edge("tls", instance, &emulator, &server.url(), 200)
            .set("shared.ca_file", server.ca_file().display().to_string())
    };
    let (a, b) = (edge("a").spawn(&[]), edge("b").spawn(&[]));
    assert!(shares(&server, &emulator, "tls", [&a, &b], "over-tls"));
    assert_eq!(metric(a.admin, "p13n_edge_shared_errors_total", ""), 0.0);
}

#[test]
fn one_visitor_limit_holds_across_instances() {
    let server = Valkey::start("limit");
    let emulator = Emulator::start(&demo_rules());
    let (rate, burst) = (10.0, 5.0);
    let edge = |instance| {
        // A budget no busy machine misses: this is about the limit, not the budget.
        edge("limit", instance, &emulator, &server.url(), 1000)
            .set("rate_limit.per_identifier_per_second", rate)
            .set("rate_limit.per_identifier_burst", burst)
    };
    let (a, b) = (edge("a").spawn(&[]), edge("b").spawn(&[]));
    // Until the tier has answered an instance, its limit checks may count locally.
    tier_warning_clears(&[&a, &b]);

    let (mut admitted, mut limited) = (0, 0);
    let started = Instant::now();
    for i in 0.. {
        if started.elapsed() >= Duration::from_secs(2) {
            break;
        }
        let r = post(if i % 2 == 0 { a.proxy } else { b.proxy }, "busy");
        match r.status {
            200 => admitted += 1,
            429 => limited += 1,
            _ => panic!("{}: {}", r.status, r.text()),
        }
    }
    let expected = burst + rate * started.elapsed().as_secs_f64();
    // Each instance alone would admit `expected`: twice that together.
    assert!(
        (admitted as f64) <= expected * 1.25 + 1.0 && (admitted as f64) >= expected * 0.75,
        "{admitted} admitted ({limited} limited), about {expected:.0} expected"
    );
    for admin in [a.admin, b.admin] {
        assert_eq!(
            metric(
                admin,
                "p13n_edge_shared_limit_checks_total",
                "result=\"local\""
            ),
            0.0
        );
        assert!(
            metric(
                admin,
                "p13n_edge_shared_limit_checks_total",
                "result=\"limited\""
            ) > 0.0
        );
    }
}

#[test]
fn the_tier_counts_as_connected_once_it_has_answered() {
    let server = Valkey::start("answered");
    server.pause();
    let emulator = Emulator::start(&demo_rules());
    // Connections are accepted by the kernel and never answered: the first ping waits its
    // whole connect timeout. Well within it, long after the warden has made the connections.
    let a = edge("answered", "a", &emulator, &server.url(), 100)
        .set("shared.connect_timeout_ms", 5000)
        .spawn(&[]);
    std::thread::sleep(Duration::from_millis(1500));
    let early = readiness(a.admin);
    assert_eq!(early.status, 200);
    assert!(early.warnings.contains("not connected yet"), "{:?}", early);
    server.resume();
    tier_warning_clears(&[&a]);
}

/// Every instance's `/readyz` warning about the tier clears.
fn tier_warning_clears(instances: &[&Daemon]) {
    for instance in instances {
        assert!(
            eventually(Duration::from_secs(20), || !tier_warned(instance.admin)),
            "{:?}",
            readiness(instance.admin)
        );
    }
}

/// Warm `visitor` on the first instance of `service` and wait for its write-through; then the
/// second answers it from the tier.
fn shares(
    server: &Valkey,
    emulator: &Emulator,
    service: &str,
    [a, b]: [&Daemon; 2],
    visitor: &str,
) -> bool {
    post(a.proxy, visitor);
    eventually(Duration::from_secs(5), || {
        server.exists(&pageviews_key(emulator, service, visitor))
    }) && cache_status(&post(b.proxy, visitor)).starts_with("p13n-edge; hit")
}

#[test]
fn a_stopped_server_fails_no_answer_and_sharing_resumes_after_its_restart() {
    let mut server = Valkey::start("restart");
    let emulator = Emulator::start(&demo_rules());
    let edge = |instance| edge("restart", instance, &emulator, &server.url(), 100);
    let (a, b) = (edge("a").spawn(&[]), edge("b").spawn(&[]));
    assert!(shares(&server, &emulator, "restart", [&a, &b], "before"));

    let load = Load::start([a.proxy, b.proxy]);
    server.stop();
    for admin in [a.admin, b.admin] {
        assert!(
            eventually(SECONDS_10, || tier_warned(admin)),
            "{:?}",
            readiness(admin)
        );
        let Readiness { status, warnings } = readiness(admin);
        assert_eq!(status, 200, "a warning, never a failure: {warnings}");
    }
    // The local caches serve what each instance holds.
    assert!(cache_status(&post(b.proxy, "before")).starts_with("p13n-edge; hit"));
    assert!(cache_status(&post(a.proxy, "before")).starts_with("p13n-edge; hit"));

    server.restart();
    tier_warning_clears(&[&a, &b]);
    // The emptied server fills again by write-through, and serves the other instance.
    assert!(shares(&server, &emulator, "restart", [&a, &b], "after"));
    assert!(shares(&server, &emulator, "restart", [&b, &a], "after-too"));
    let Sent { sent, failed } = load.finish();
    assert_eq!(failed, 0, "of {sent} answers under load");
    assert!(sent > 0);
    assert!(metric(a.admin, "p13n_edge_shared_errors_total", "") > 0.0);
}

#[test]
fn a_server_that_comes_up_after_the_daemons_is_used_once_it_does() {
    let mut server = Valkey::reserve("late", None);
    let emulator = Emulator::start(&demo_rules());
    let edge = |instance| edge("late", instance, &emulator, &server.url(), 100);
    let (a, b) = (edge("a").spawn(&[]), edge("b").spawn(&[]));
    // Nothing listens yet: each serves alone, ready, with a warning.
    let early = post(a.proxy, "early");
    assert_eq!(cache_status(&early), "p13n-edge; fwd=miss; stored");
    assert!(
        eventually(SECONDS_10, || tier_warned(b.admin)),
        "{:?}",
        readiness(b.admin)
    );
    assert_eq!(readiness(b.admin).status, 200);

    server.restart();
    tier_warning_clears(&[&a, &b]);
    assert!(shares(&server, &emulator, "late", [&a, &b], "late"));
}

/// Every answer to `count` new visitors on `addr`: 200, and each well within `bound`.
fn answers_within(addr: SocketAddr, prefix: &str, count: usize, bound: Duration) {
    for i in 0..count {
        let started = Instant::now();
        let r = post(addr, &format!("{prefix}-{i}"));
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(took < bound, "answer {i} took {took:?}");
    }
}

#[test]
fn a_slow_or_stalled_server_adds_at_most_its_budget() {
    let server = Valkey::start("slow");
    let emulator = Emulator::start(&demo_rules());
    // Both operations of a request: the visitor limit and the offer lookup.
    let a = edge("slow", "a", &emulator, &server.url(), 50)
        .set("rate_limit.per_identifier_per_second", 100)
        .spawn(&[]);
    assert_eq!(post(a.proxy, "warm").status, 200);
    let bound = Duration::from_millis(500);

    // Asleep for 2 s: every operation's reply waits.
    let sleeping = server.sleep(2.0);
    answers_within(a.proxy, "asleep", 20, bound);
    let timeouts = metric(a.admin, "p13n_edge_shared_errors_total", "kind=\"timeout\"");
    assert!(timeouts > 0.0);
    let Readiness { status, warnings } = readiness(a.admin);
    assert_eq!(status, 200);
    assert!(warnings.contains("shared tier"), "{warnings}");
    sleeping.join().unwrap();
    assert!(eventually(Duration::from_secs(20), || !tier_warned(
        a.admin
    )));

    // Stalled: connected, never answering.
    server.pause();
    answers_within(a.proxy, "stalled", 20, bound);
    assert!(eventually(SECONDS_10, || tier_warned(a.admin)));
    server.resume();
    assert!(eventually(Duration::from_secs(20), || !tier_warned(
        a.admin
    )));
    assert!(metric(a.admin, "p13n_edge_shared_errors_total", "kind=\"timeout\"") > timeouts);
}

#[test]
fn a_connection_gone_silent_is_replaced_and_sharing_resumes() {
    let server = Valkey::start("silent");
    let relay = Relay::start(server.addr());
    let emulator = Emulator::start(&demo_rules());
    let url = format!("redis://{}/0", relay.addr);
    let edge =
        |instance| edge("silent", instance, &emulator, &url, 100).set("shared.connections", 1);
    let (a, b) = (edge("a").spawn(&[]), edge("b").spawn(&[]));
    assert!(shares(&server, &emulator, "silent", [&a, &b], "before"));
    // The connections in place stop passing bytes, without a reset (a peer gone behind a
    // balancer); new ones pass. No error ever comes on the old ones, only timeouts.
    relay.freeze();
    for n in 0..20 {
        let r = post(b.proxy, &format!("silent{n}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(eventually(Duration::from_secs(20), || shares(
        &server,
        &emulator,
        "silent",
        [&a, &b],
        "after"
    )));
    assert!(!tier_warned(b.admin), "{:?}", readiness(b.admin));
}

#[test]
fn a_poisoned_value_is_never_served() {
    let server = Valkey::start("poisoned");
    let emulator = Emulator::start(&demo_rules());
    let a = edge("poisoned", "a", &emulator, &server.url(), 200).spawn(&[]);
    // Written by someone else: a 101, a page, a body too large to be ours.
    let stored = |status: u16, content_type: &[u8], body: &[u8]| {
        let mut v = vec![1];
        v.extend_from_slice(&status.to_be_bytes());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        v.extend_from_slice(&now.to_be_bytes());
        v.extend_from_slice(&(content_type.len() as u16).to_be_bytes());
        v.extend_from_slice(content_type);
        v.extend_from_slice(body);
        v
    };
    let json = b"application/json";
    for (n, value) in [
        stored(101, json, b"HTTP/1.1 200 OK\r\nSet-Cookie: x=1\r\n\r\n"),
        stored(200, b"text/html", b"<script>alert(1)</script>"),
        stored(200, json, &vec![b' '; (1 << 20) + 1]),
        stored(500, json, b"{}"),
    ]
    .into_iter()
    .enumerate()
    {
        let visitor = format!("poisoned{n}");
        server.set(&pageviews_key(&emulator, "poisoned", &visitor), &value);
        let r = post(a.proxy, &visitor);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(cache_status(&r), "p13n-edge; fwd=miss; stored", "{n}");
        let poison = r.header("set-cookie").is_some() || r.text().contains("<script>");
        assert!(!poison, "{n}: {}", r.text());
    }
    assert!(metric(a.admin, "p13n_edge_shared_errors_total", "kind=\"decode\"") >= 3.0);
}

#[test]
fn keys_that_naive_concatenation_would_confuse_keep_their_own_offers() {
    let server = Valkey::start("collide");
    let emulator = Emulator::start(&demo_rules());
    // A second route of the service, public, with token `web2`: its id is the first route's
    // followed by "2". Route id + visitor, concatenated, would make visitor "2x" of the first
    // and visitor "x" of the second one key.
    let edge = |instance| {
        edge("collide", instance, &emulator, &server.url(), 200)
            .set("service.tokens.web2", TOKEN)
            .merge("[[service.route]]\ndatabase = \"demo_db\"\ntable = \"pageviews\"\npublic = true\ntoken = \"web2\"\n")
    };
    let (a, b) = (edge("a").spawn(&[]), edge("b").spawn(&[]));

    // "2x" earns an offer on the private route (three retail views); "x" has none on the public.
    for _ in 0..3 {
        assert_eq!(post(a.proxy, "2x").status, 200);
    }
    assert_eq!(
        post_to(a.proxy, "/public/demo_db/pageviews", "x").status,
        200
    );
    let offered = pageviews_key(&emulator, "collide", "2x");
    let plain = stored_key(&emulator, "collide", "1/demo_db/pageviews/web2", "x");
    assert_ne!(offered, plain);
    let has_offer = |v: Option<Vec<u8>>| {
        v.is_some_and(|v| String::from_utf8_lossy(&v).contains("offer_for_high_loyalty"))
    };
    // Replay delivers the hits' events and writes the refreshed offers through.
    assert!(eventually(Duration::from_secs(20), || has_offer(
        server.get(&offered)
    )));
    assert!(eventually(Duration::from_secs(5), || server.exists(&plain)));
    assert!(!has_offer(server.get(&plain)));
    assert_eq!(server.dbsize(), 2);

    let theirs = post(b.proxy, "2x");
    assert!(
        cache_status(&theirs).starts_with("p13n-edge; hit"),
        "{}",
        theirs.head
    );
    assert!(
        theirs.text().contains("offer_for_high_loyalty"),
        "{}",
        theirs.text()
    );
    let own = post_to(b.proxy, "/public/demo_db/pageviews", "x");
    assert!(
        cache_status(&own).starts_with("p13n-edge; hit"),
        "{}",
        own.head
    );
    assert!(
        !own.text().contains("offer_for_high_loyalty"),
        "{}",
        own.text()
    );
}

#[test]
fn the_kubernetes_overlay_runs_base_config_with_the_shared_tier() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s");
    let base = std::fs::read_to_string(format!("{dir}/base/p13n-edge.toml")).unwrap();
    let overlay = std::fs::read_to_string(format!("{dir}/shared/p13n-edge.toml")).unwrap();
    let (above, shared) = overlay
        .split_once("\n[shared]\n")
        .expect("a [shared] section");
    assert!(
        above.ends_with(&base),
        "deploy/k8s/shared/p13n-edge.toml must be base's plus [shared]"
    );
    assert!(
        shared.contains("url = \"redis://p13n-edge-valkey:6379/0\""),
        "{shared}"
    );
}
