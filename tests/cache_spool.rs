//! The offer cache and the spool, against the emulator's fault plans: stale offers for known
//! visitors, nothing lost, order kept per visitor, and a `kill -9` survived.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// A page view, the `n`th of `visitor`, sent as a page sends it: without a `uuid`, so that
/// the emulator's count of duplicates (by `uuid`) counts the proxy's own.
fn view(visitor: &str, n: usize) -> String {
    format!(r#"{{"td_client_id":"{visitor}","td_path":"/retail/x","n":{n}}}"#)
}

/// The spool's depth: its records not yet delivered, over all lanes.
fn spool_depth(stack: &Stack) -> f64 {
    let metrics = to(stack.admin).metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("p13n_edge_spool_depth "));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn ingested(stack: &Stack) -> u64 {
    stack.emulator.ingested()
}

#[test]
fn a_429_storm_serves_known_visitors_stale_and_loses_nothing() {
    let stack = Stack::start("storm");
    let first = stack.post(PAGEVIEWS, &view("known", 0));
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("cache-status").as_deref(),
        Some("p13n-edge; fwd=miss; stored")
    );

    stack
        .emulator
        .faults(json!({"status": 429, "code": 2013, "rate": 1.0}));
    let mut accepted = 1;
    for n in 1..=5 {
        let r = stack.post(PAGEVIEWS, &view("known", n));
        assert_eq!(r.status, 200, "{}", r.text());
        let status = r.header("cache-status").unwrap();
        if n == 1 {
            assert_eq!(status, "p13n-edge; fwd=stale; detail=upstream-429");
        } else {
            // Behind the first spooled event, the next ones queue without calling the upstream.
            assert!(
                status.starts_with("p13n-edge; hit; ttl=") && status.ends_with("; detail=queued"),
                "{status}"
            );
        }
        assert!(r.header("age").is_some());
        assert!(
            r.body.is_empty(),
            "the cached answer was the first one: no offer yet"
        );
        accepted += 1;
    }
    // A visitor the cache does not know gets the upstream's error: not accepted.
    stack
        .post(PAGEVIEWS, &view("stranger", 0))
        .assert_error(429, 2013);
    assert_eq!(ingested(&stack), 1);

    stack.emulator.clear_faults();
    assert!(
        eventually(Duration::from_secs(20), || ingested(&stack) == accepted),
        "{}",
        stack.emulator.stats()
    );
    assert_eq!(stack.emulator.stats()["duplicates"], 0);
    // Replay refreshed the cache: the next answer comes from the upstream with the offer.
    let r = stack.post(PAGEVIEWS, &view("known", 6));
    assert!(r.text().contains("offer_for_high_loyalty"), "{}", r.text());
    // Nothing is sent twice: the count stays where it is.
    assert!(throughout(Duration::from_millis(300), || ingested(&stack)
        == accepted + 1));
}

#[test]
fn a_5xx_burst_is_answered_stale() {
    let stack = Stack::start("burst");
    assert_eq!(stack.post(PAGEVIEWS, &view("k", 0)).status, 200);
    stack
        .emulator
        .faults(json!({"status": 502, "rate": 1.0, "seconds": 0.5}));
    let r = stack.post(PAGEVIEWS, &view("k", 1));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("cache-status").as_deref(),
        Some("p13n-edge; fwd=stale; detail=upstream-5xx")
    );
    assert!(eventually(Duration::from_secs(20), || ingested(&stack) == 2));
}

#[test]
fn past_the_deadline_a_known_visitor_gets_cached_offers_and_the_call_goes_on() {
    let stack = Stack::builder("deadline")
        .service("deadline_ms", 300)
        .start();
    assert_eq!(stack.post(PAGEVIEWS, &view("k", 0)).status, 200);
    stack
        .emulator
        .faults(json!({"status": 0, "latency_ms": 800, "seconds": 5}));
    let started = Instant::now();
    let r = stack.post(PAGEVIEWS, &view("k", 1));
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("cache-status").as_deref(),
        Some("p13n-edge; fwd=stale; detail=deadline")
    );
    assert!(took < Duration::from_millis(700), "waited {took:?}");
    // The call in the background delivers it; the spooled copy is not sent again.
    assert!(eventually(Duration::from_secs(10), || ingested(&stack) == 2));
    assert!(throughout(Duration::from_millis(1500), || ingested(&stack) == 2));
    let stats = stack.emulator.stats();
    assert_eq!(stats["events_ingested"], 2, "{stats}");
    assert_eq!(stats["duplicates"], 0);
    // Without a cached entry the client waits for the deadline and gets 504.
    stack
        .post(PAGEVIEWS, &view("new", 0))
        .assert_error(504, 504);
}

#[test]
fn fast_mode_answers_hits_from_memory_and_delivers_in_the_background() {
    let stack = Stack::builder("fast").fast().start();
    let r = stack.post(PAGEVIEWS, &view("f", 0));
    assert_eq!(
        r.header("cache-status").as_deref(),
        Some("p13n-edge; fwd=miss; stored")
    );
    for n in 1..=3 {
        let r = stack.post(PAGEVIEWS, &view("f", n));
        assert_eq!(r.status, 200);
        let status = r.header("cache-status").unwrap();
        assert!(status.starts_with("p13n-edge; hit; ttl="), "{status}");
    }
    assert!(eventually(Duration::from_secs(10), || ingested(&stack) == 4));
    // The background deliveries refreshed the entry: four /retail views earn the offer.
    assert!(eventually(Duration::from_secs(5), || {
        stack
            .post(PAGEVIEWS, &view("f", 100))
            .text()
            .contains("offer_for_high_loyalty")
    }));
    assert_eq!(stack.emulator.stats()["duplicates"], 0);
}

#[test]
fn a_visitors_events_reach_the_upstream_in_order() {
    let stack = Stack::start("order");
    let event = |category: &str, n: usize| {
        format!(
            r#"{{"td_client_id":"o","td_path":"/x","product_category":"{category}","uuid":"o{n}"}}"#
        )
    };
    assert_eq!(stack.post(PAGEVIEWS, &event("kids", 0)).status, 200);
    stack.emulator.faults(json!({"status": 503, "rate": 1.0}));
    for (n, category) in ["men", "kids", "women"].iter().enumerate() {
        assert_eq!(stack.post(PAGEVIEWS, &event(category, n + 1)).status, 200);
    }
    stack.emulator.clear_faults();
    assert!(eventually(Duration::from_secs(20), || ingested(&stack) == 4));
    // The last category the upstream saw is the last one sent: "women".
    let r = stack.post(PAGEVIEWS, r#"{"td_client_id":"o","td_path":"/x"}"#);
    assert!(r.text().contains("offer_for_women"), "{}", r.text());
}

#[test]
fn replay_sends_to_several_visitors_at_once_and_keeps_each_in_order() {
    let stack = Stack::builder("replay_concurrency")
        .set("spool.replay_concurrency", 8)
        .start();
    let visitors = ["ra", "rb", "rc", "rd", "re", "rf"];
    let event = |visitor: &str, category: &str, n: usize| {
        format!(
            r#"{{"td_client_id":"{visitor}","td_path":"/x","product_category":"{category}","uuid":"{visitor}{n}"}}"#
        )
    };
    for v in visitors {
        assert_eq!(stack.post(PAGEVIEWS, &event(v, "kids", 0)).status, 200);
    }
    // Spooled in this order: every visitor's "men", then every "kids", then every "women". The
    // first batch of 8 holds two events of "ra" and of "rb", which must still go in order.
    stack.emulator.faults(json!({"status": 503, "rate": 1.0}));
    for (n, category) in ["men", "kids", "women"].iter().enumerate() {
        for v in visitors {
            let r = stack.post(PAGEVIEWS, &event(v, category, n + 1));
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    let spooled = visitors.len() * 3;
    // A slow upstream, and from now on only replay calls it: a visitor's event is answered
    // before the next is sent, and other visitors' events are sent meanwhile.
    stack
        .emulator
        .faults(json!({"status": 0, "latency_ms": 150}));
    let total = (visitors.len() + spooled) as u64;
    assert!(
        eventually(Duration::from_secs(30), || ingested(&stack) == total),
        "{}",
        stack.emulator.stats()
    );
    let stats = stack.emulator.stats();
    let most = stats["max_in_flight"].as_u64().unwrap();
    assert!((2..=8).contains(&most), "{stats}");
    assert_eq!(stats["duplicates"], 0);
    stack.emulator.clear_faults();
    // The last category the upstream saw for each visitor is the last one sent: "women".
    for v in visitors {
        let r = stack.post(
            PAGEVIEWS,
            &format!(r#"{{"td_client_id":"{v}","td_path":"/x"}}"#),
        );
        assert!(r.text().contains("offer_for_women"), "{v}: {}", r.text());
    }
}

#[test]
fn a_record_that_waits_upstream_does_not_hold_back_the_records_after_it() {
    // One visitor's event is held upstream (its call answered late, within the timeouts) until
    // released. Replay sent in batches, the next when the whole last one was answered: every
    // event spooled behind the held one waited for it.
    let emulator = Emulator::start(&demo_rules());
    let stall = Stall::start(emulator.addr, "/held-back");
    let stack = Stack::builder("overtaken")
        .fast()
        .upstream(stall.url())
        .set("timeouts.upstream_ms", 60_000)
        .service("deadline_ms", 60_000)
        .start();
    let visitors = 40;
    for v in 0..=visitors {
        let r = stack.post(PAGEVIEWS, &view(&format!("o{v}"), 0));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let held = r#"{"td_client_id":"o0","td_path":"/held-back"}"#;
    assert_eq!(stack.post(PAGEVIEWS, held).status, 200);
    assert!(eventually(SECONDS_10, || stall.held() > 0));
    for v in 1..=visitors {
        let r = stack.post(PAGEVIEWS, &view(&format!("o{v}"), 1));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let before = (visitors + 1) as u64;
    assert!(
        eventually(SECONDS_10, || emulator.ingested()
            == before + visitors as u64),
        "the events after the held one waited for it: {} depth {} held {}",
        emulator.stats(),
        spool_depth(&stack),
        stall.held()
    );
    // The held one alone is left (the others settle once replay has read their answers).
    assert!(eventually(SECONDS_10, || spool_depth(&stack) == 1.0));
    stall.release();
    assert!(
        eventually(SECONDS_10, || emulator.ingested()
            == before + visitors as u64 + 1),
        "{}",
        emulator.stats()
    );
    assert_eq!(emulator.stats()["duplicates"], 0);
    assert!(eventually(SECONDS_10, || spool_depth(&stack) == 0.0));
}

#[test]
fn a_full_spool_refuses_events_instead_of_dropping_them() {
    let stack = Stack::builder("full")
        .set("spool.segment_bytes", 4096)
        .set("spool.max_bytes", 8192)
        .start();
    assert_eq!(stack.post(PAGEVIEWS, &view("k", 0)).status, 200);
    stack
        .emulator
        .faults(json!({"status": 429, "code": 2003, "rate": 1.0}));
    let (mut accepted, mut refused) = (1, 0);
    for n in 1..200 {
        let r = stack.post(PAGEVIEWS, &view("k", n));
        match r.status {
            200 => accepted += 1,
            _ => {
                r.assert_error(503, 503);
                assert!(r.header("retry-after").is_some());
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0 && accepted > 10,
        "accepted {accepted}, refused {refused}"
    );
    stack.emulator.clear_faults();
    assert!(
        eventually(Duration::from_secs(20), || ingested(&stack) == accepted),
        "{}",
        stack.emulator.stats()
    );
}

#[test]
fn kill_9_with_events_in_the_spool_then_restart_delivers_every_accepted_event() {
    // The default replay sends up to 32 events at once, here one for each of the 10 visitors: a
    // kill -9 can repeat those 10.
    kill_9_then_restart(Setup::new("kill9"), 10);
}

#[test]
fn with_a_sync_interval_a_kill_9_before_any_fdatasync_loses_nothing() {
    // Acknowledged once written to the OS: a crash of the process keeps the page cache.
    let setup = Setup::new("kill9_interval")
        .set("spool.sync_interval_ms", 10000)
        .set("spool.replay_concurrency", 1);
    kill_9_then_restart(setup, 1);
}

/// `window`: the most events replay has in flight at once, so the most a kill -9 repeats.
fn kill_9_then_restart(setup: Setup, window: u64) {
    let emulator = Emulator::start(&demo_rules());
    let stats = || emulator.stats();
    let setup = setup.upstream(emulator.url());
    let daemon = setup.spawn(&[]);

    let visitors = 10;
    for v in 0..visitors {
        assert_eq!(
            to(daemon.proxy)
                .event(PAGEVIEWS, &view(&format!("v{v}"), 0))
                .status,
            200
        );
    }
    emulator.faults(json!({"status": 429, "code": 2013, "rate": 1.0}));
    let mut accepted = visitors;
    for n in 1..=5 {
        for v in 0..visitors {
            if to(daemon.proxy)
                .event(PAGEVIEWS, &view(&format!("v{v}"), n))
                .status
                == 200
            {
                accepted += 1;
            }
        }
    }
    assert_eq!(accepted, 60);
    daemon.kill();

    // A torn write: half a frame after the last record of the newest segment, in the space
    // set aside after it (zeros), as a crash mid-write leaves it.
    let spool = setup.dir().join("spool").join("lanes").join(&setup.name);
    let mut segments: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let newest = segments.last().unwrap();
    let mut data = std::fs::read(newest).unwrap();
    let end = p13n_edge::spool::log_end(&data);
    let torn = [0x40, 0, 0, 0, 1, 2, 3, 4, b'{'];
    data.resize(data.len().max(end + 4096), 0);
    data[end..end + torn.len()].copy_from_slice(&torn);
    std::fs::write(newest, data).unwrap();

    // Restart with a slow upstream, and kill -9 again in the middle of the replay: the records
    // delivered but not yet checkpointed are the duplicate window.
    emulator.faults(json!({"status": 0, "latency_ms": 40}));
    let daemon = setup.spawn(&[]);
    assert!(eventually(Duration::from_secs(30), || stats()
        ["events_ingested"]
        .as_u64()
        .unwrap()
        >= 30));
    // The torn write was trimmed at the start, never read as a corrupt record.
    let mut corrupt = to(daemon.admin).counter("p13n_edge_spool_corrupt_total");
    daemon.kill();

    emulator.clear_faults();
    let daemon = setup.spawn(&[]);
    // Duplicates count in events_ingested: wait for every accepted event itself.
    let unique = |s: &serde_json::Value| {
        s["events_ingested"].as_u64().unwrap() - s["duplicates"].as_u64().unwrap()
    };
    let done = eventually(Duration::from_secs(30), || unique(&stats()) >= accepted);
    let s = stats();
    println!(
        "kill -9: {accepted} accepted, {} ingested, {} duplicates",
        s["events_ingested"], s["duplicates"]
    );
    assert!(done, "{s}");
    assert_eq!(
        unique(&s),
        accepted,
        "every accepted event arrived once at least: {s}"
    );
    assert!(s["duplicates"].as_u64().unwrap() <= window, "{s}");
    assert_eq!(
        s["by_status"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["200", "429"],
        "garbage reached the upstream: {s}"
    );
    corrupt += to(daemon.admin).counter("p13n_edge_spool_corrupt_total");
    assert_eq!(corrupt, 0, "a torn write counted as a corrupt record");
    daemon.kill();
}

#[test]
fn replay_adapts_its_window_to_the_upstreams_reserved_concurrency() {
    let stack = Stack::builder("adaptive")
        .fast()
        .set("spool.replay_concurrency", 128)
        .start();
    let visitors = 200;
    for v in 0..visitors {
        assert_eq!(
            stack.post(PAGEVIEWS, &view(&format!("w{v}"), 0)).status,
            200
        );
    }
    // The upstream fails for a moment while every visitor's next event is spooled.
    stack.emulator.faults(json!({"status": 503, "rate": 1.0}));
    for v in 0..visitors {
        assert_eq!(
            stack.post(PAGEVIEWS, &view(&format!("w{v}"), 1)).status,
            200
        );
    }
    // Back, 50 ms away, with a reserved concurrency of 16: more at once get 429/2013.
    stack
        .emulator
        .faults(json!({"status": 0, "latency_ms": 50, "max_in_flight": 16}));
    assert!(
        eventually(Duration::from_secs(30), || ingested(&stack) == 2 * visitors),
        "{}",
        stack.emulator.stats()
    );
    let stats = stack.emulator.stats();
    let refused = stats["by_code"]["2013"].as_u64().unwrap_or(0);
    println!("adaptive replay: {visitors} events, {refused} answers 429/2013, {stats}");
    // A fixed window of 128 would send 128 at once: 112 refused in its first batch alone.
    assert!(refused < 60, "{refused} refused: {stats}");
    assert_eq!(stats["duplicates"], 0);
    let window = stack.metric("p13n_edge_spool_replay_window", &[]);
    assert!((1.0..=40.0).contains(&window), "window {window}");
}

#[test]
fn a_lagging_spool_sends_fast_hits_upstream_when_the_service_says_so() {
    for on_lag in ["pass-through", "serve-cached"] {
        let name = format!("lag_{}", on_lag.replace('-', "_"));
        let stack = Stack::builder(&name)
            .fast()
            .set("service.cache.max_lag_ms", 200)
            .set("service.cache.on_lag", on_lag)
            .start();
        for v in ["l1", "l2"] {
            assert_eq!(stack.post(PAGEVIEWS, &view(v, 0)).status, 200);
        }
        // Replay's call takes 800 ms: its event waits longer than max_lag_ms meanwhile.
        stack
            .emulator
            .faults(json!({"status": 0, "latency_ms": 800}));
        assert_eq!(stack.post(PAGEVIEWS, &view("l1", 1)).status, 200);
        assert!(
            eventually(Duration::from_secs(3), || stack
                .readiness_warnings()
                .contains("lags")),
            "{}",
            stack.readiness_warnings()
        );
        let r = stack.post(PAGEVIEWS, &view("l2", 1));
        assert_eq!(r.status, 200, "{}", r.text());
        let status = r.header("cache-status").unwrap();
        match on_lag {
            "pass-through" => assert_eq!(status, "p13n-edge; fwd=miss; stored"),
            _ => assert!(status.starts_with("p13n-edge; hit; ttl="), "{status}"),
        }
        assert!(eventually(Duration::from_secs(10), || ingested(&stack) == 4));
    }
}

#[test]
fn replay_keeps_its_upstream_connections_apart_from_the_answers() {
    // Replay runs on a runtime of its own at a lower priority (spool.replay_nice): an answer on
    // a connection replay opened would be woken by replay's thread, so neither takes the
    // other's idle connections.
    let edge = Edge::start(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"offers\":{}}",
        Setup::new("apart").fast(),
    );
    let send = |visitor: &str, n: usize| {
        let r = to(edge.addr).event(PAGEVIEWS, &view(visitor, n));
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("cache-status").unwrap()
    };
    for round in 0..3 {
        // A new visitor: answered by the upstream. Then a hit: replayed in the background.
        let fresh = format!("new{round}");
        assert!(send(&fresh, 0).contains("fwd=miss"));
        assert!(send(&fresh, 1).contains("; hit;"));
        let sent = 2 * (round + 1);
        assert!(eventually(SECONDS_10, || edge.upstream.requests().len() == sent));
    }
    let (answers, replayed): (Vec<_>, Vec<_>) = edge
        .upstream
        .bodies_by_connection()
        .into_iter()
        .partition(|(body, _)| body.contains(r#""n":0"#));
    assert_eq!(
        (answers.len(), replayed.len()),
        (3, 3),
        "{answers:?} {replayed:?}"
    );
    let on = |calls: &[(String, usize)]| calls.iter().map(|c| c.1).collect::<Vec<_>>();
    let (mine, theirs) = (on(&answers), on(&replayed));
    assert!(
        mine.iter().all(|c| !theirs.contains(c)),
        "answers on {mine:?}, replay on {theirs:?}"
    );
}
