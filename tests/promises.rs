//! The promises under attack and failure, over real sockets: a visitor sees only offers computed
//! for that visitor and route; an event answered 2xx is delivered, held for a fix, or kept as a
//! dead letter, never dropped; one service's failing upstream holds back only its own events.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

fn view(visitor: &str, n: usize) -> String {
    format!(
        r#"{{"td_client_id":"{visitor}","td_path":"/retail/shop/women","product_category":"women","n":{n}}}"#
    )
}

fn ingested(stack: &Stack) -> u64 {
    stack.emulator.ingested()
}

fn spool_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_p13n-edge"))
        .arg("spool")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_second_route_of_a_service_never_answers_with_the_first_routes_offers() {
    let stack = Stack::builder("per_route").fast().start();
    let warm = stack.post(PAGEVIEWS, &view("v1", 0));
    assert!(warm.text().contains("offer_for_women"), "{}", warm.text());
    // Same service, same visitor, another table: not a hit on the pageviews entry.
    let other = stack.post("/public/demo_db/clicks", &view("v1", 1));
    assert_eq!(other.status, 200);
    assert_eq!(
        other.header("cache-status").as_deref(),
        Some("p13n-edge; fwd=miss; stored")
    );
    // Each route now answers from its own entry.
    for path in [PAGEVIEWS, "/public/demo_db/clicks"] {
        let hit = stack.post(path, &view("v1", 2));
        assert!(hit.header("cache-status").unwrap().contains("; hit;"));
    }
}

#[test]
fn events_accepted_during_a_window_of_401s_are_held_then_delivered() {
    let stack = Stack::builder("held_401").fast().start();
    for v in ["a", "b", "c"] {
        assert_eq!(stack.post(PAGEVIEWS, &view(v, 0)).status, 200);
    }
    stack
        .emulator
        .faults(json!({"status": 401, "rate": 1.0, "seconds": 3}));
    for v in ["a", "b", "c"] {
        let r = stack.post(PAGEVIEWS, &view(v, 1));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(eventually(Duration::from_secs(5), || stack
        .readiness_warnings()
        .contains("refuses our credentials")));
    assert!(stack.metric("p13n_edge_spool_held_total", &["reason=\"credentials\""]) >= 1.0);
    // Once the upstream takes our credentials again, every held event arrives, once.
    assert!(
        eventually(Duration::from_secs(20), || ingested(&stack) == 6),
        "{}",
        stack.emulator.stats()
    );
    assert_eq!(stack.emulator.stats()["duplicates"], 0);
    assert!(eventually(Duration::from_secs(5), || !stack
        .readiness_warnings()
        .contains("spool lane")));
}

#[test]
fn an_event_the_upstream_calls_invalid_becomes_a_dead_letter_and_requeue_sends_it_again() {
    let name = "dead_letter";
    let spool = scratch(name).join("spool");
    let spool_arg = spool.to_str().unwrap().to_string();
    {
        let stack = Stack::builder(name).fast().start();
        assert_eq!(stack.post(PAGEVIEWS, &view("d", 0)).status, 200);
        stack
            .emulator
            .faults(json!({"status": 400, "code": 3004, "rate": 1.0}));
        assert_eq!(stack.post(PAGEVIEWS, &view("d", 1)).status, 200);
        assert!(eventually(Duration::from_secs(10), || stack.metric(
            "p13n_edge_spool_dead_lettered_total",
            &["reason=\"invalid_event\""]
        ) == 1.0));
        assert!(stack.readiness_warnings().contains("1 dead letters"));
        // Inspect works on a running daemon's spool; requeue refuses to.
        let out = spool_cli(&["inspect", "--dir", &spool_arg]);
        assert!(out.status.success());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["dead_letters"]["events"], 1, "{report}");
        assert_eq!(report["dead_letters"]["by_route"][0]["route"], PAGEVIEWS);
        assert_eq!(report["daemon_running"], true);
        assert_eq!(report["pending"]["events"], 0);
        let out = spool_cli(&["requeue", "--dir", &spool_arg]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));
    }
    // Stopped: the dead letter goes back to its lane, and the next start delivers it.
    let out = spool_cli(&["requeue", "--dir", &spool_arg]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 dead letters requeued"));
    let report: serde_json::Value =
        serde_json::from_slice(&spool_cli(&["inspect", "--dir", &spool_arg]).stdout).unwrap();
    assert_eq!(report["dead_letters"]["events"], 0, "{report}");
    assert_eq!(report["pending"]["events"], 1, "{report}");
    let stack = Stack::builder(name).fast().start();
    assert!(
        eventually(Duration::from_secs(10), || ingested(&stack) == 1),
        "{}",
        stack.emulator.stats()
    );
}

#[test]
fn after_a_reload_moves_a_path_to_another_service_no_record_goes_out_with_its_key() {
    let name = "moved_route";
    let stack = Stack::builder(name).fast().start();
    assert_eq!(stack.post(PAGEVIEWS, &view("m", 0)).status, 200);
    stack.emulator.faults(json!({"status": 503, "rate": 1.0}));
    assert_eq!(stack.post(PAGEVIEWS, &view("m", 1)).status, 200);
    // Replay has tried once and is waiting to try again.
    assert!(eventually(Duration::from_secs(5), || !stack
        .emulator
        .stats()["by_status"]["503"]
        .is_null()));
    // The path now belongs to another account's service.
    std::fs::write(
        scratch(name).join("key2"),
        "2/0123456789abcdef0123456789abcdef01234567\n",
    )
    .unwrap();
    let original = stack.setup();
    stack.reload(|setup| {
        setup
            .service("name", "someone_else")
            .service("account_id", "2")
            .service("api_key_file", "key2")
            .set("service.tokens.web", "2/1/00000000000000000000000000000001")
    });
    stack.emulator.clear_faults();
    let before = stack.emulator.stats()["requests"].as_u64().unwrap();
    assert!(
        eventually(Duration::from_secs(8), || stack
            .readiness_warnings()
            .contains("gone or changed")),
        "{} {}",
        stack.readiness_warnings(),
        stack.emulator.stats()
    );
    let sent = || stack.emulator.stats()["requests"].as_u64().unwrap();
    assert!(
        throughout(Duration::from_millis(1500), || sent() == before),
        "a record went out under another service: {}",
        stack.emulator.stats()
    );
    // Moved back, the record goes out with its own service's key.
    stack.reload(|_| original);
    assert!(
        eventually(Duration::from_secs(10), || ingested(&stack) == 2),
        "{}",
        stack.emulator.stats()
    );
}

#[test]
fn one_service_whose_upstream_fails_holds_back_only_its_own_events() {
    let other = Emulator::start(&demo_rules());
    let stack = Stack::builder("failing_lane")
        .fast()
        .another_service("failing_lane_b", &other.url(), "checkout")
        .set("service.1.cache.mode", "fast")
        .start();
    for v in ["x", "y"] {
        assert_eq!(stack.post(PAGEVIEWS, &view(v, 0)).status, 200);
        assert_eq!(stack.post("/demo_db/checkout", &view(v, 0)).status, 200);
    }
    other.faults(json!({"status": 503, "rate": 1.0}));
    for n in 1..=3 {
        for v in ["x", "y"] {
            assert_eq!(stack.post("/demo_db/checkout", &view(v, n)).status, 200);
            assert_eq!(stack.post(PAGEVIEWS, &view(v, n)).status, 200);
        }
    }
    // Service b's events wait; ours arrive meanwhile, all of them.
    assert!(
        eventually(Duration::from_secs(10), || ingested(&stack) == 8),
        "{}",
        stack.emulator.stats()
    );
    assert_eq!(other.ingested(), 2);
    other.clear_faults();
    assert!(eventually(Duration::from_secs(15), || other.ingested() == 8));
}

#[test]
fn events_spooled_after_a_drained_restart_survive_the_next_restart() {
    let name = "renumbered";
    let lane = scratch(name).join("spool").join("lanes").join(name);
    let segments = || {
        std::fs::read_dir(&lane)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
                })
                .count()
            })
            .unwrap_or(0)
    };
    // An incident: an event spooled, then delivered.
    {
        let stack = Stack::builder(name).fast().start();
        assert_eq!(stack.post(PAGEVIEWS, &view("r", 0)).status, 200);
        stack
            .emulator
            .faults(json!({"status": 503, "rate": 1.0, "seconds": 0.3}));
        assert_eq!(stack.post(PAGEVIEWS, &view("r", 1)).status, 200);
        assert!(eventually(Duration::from_secs(10), || ingested(&stack) == 2));
    }
    // A quiet run: replay drops the delivered segment; the lane holds no segment now.
    {
        let _stack = Stack::builder(name).fast().start();
        assert!(eventually(Duration::from_secs(10), || segments() == 0));
    }
    // Another incident, and a restart while the upstream still fails.
    {
        let stack = Stack::builder(name).fast().start();
        assert_eq!(stack.post(PAGEVIEWS, &view("r", 2)).status, 200);
        stack.emulator.faults(json!({"status": 503, "rate": 1.0}));
        for n in 3..6 {
            assert_eq!(stack.post(PAGEVIEWS, &view("r", n)).status, 200);
        }
    }
    // The next run delivers them: they were not written below the checkpoint.
    let stack = Stack::builder(name).fast().start();
    assert!(
        eventually(Duration::from_secs(10), || ingested(&stack) == 3),
        "{}",
        stack.emulator.stats()
    );
}

#[test]
fn requeue_into_a_drained_lane_writes_where_replay_reads() {
    let dir = scratch("requeue_drained").join("spool");
    let lane = dir.join("lanes").join("requeue_drained");
    std::fs::create_dir_all(&lane).unwrap();
    // Replay was past segment 7 when the daemon stopped; the lane holds no segment.
    std::fs::write(lane.join("checkpoint"), format!("{:020} {:020}\n", 7, 0)).unwrap();
    let record = p13n_edge::spool::Record {
        run: 1,
        seq: 2,
        enqueued_ms: 1,
        service: "requeue_drained".into(),
        route: PAGEVIEWS.into(),
        visitor: "q".into(),
        body: bytes::Bytes::from_static(br#"{"td_client_id":"q"}"#),
        route_id: "1/demo_db/pageviews/web".into(),
    };
    std::fs::write(dir.join("dead-letters.log"), record.encode()).unwrap();
    let spool_arg = dir.to_str().unwrap();
    assert!(spool_cli(&["requeue", "--dir", spool_arg]).status.success());
    let report: serde_json::Value =
        serde_json::from_slice(&spool_cli(&["inspect", "--dir", spool_arg]).stdout).unwrap();
    assert_eq!(report["pending"]["events"], 1, "{report}");
    assert_eq!(report["dead_letters"]["events"], 0, "{report}");
    // A directory that is not a spool is left alone.
    let elsewhere = scratch("requeue_elsewhere");
    let out = spool_cli(&["requeue", "--dir", elsewhere.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!elsewhere.join("lock").exists());
}

#[test]
fn a_spool_filled_by_another_services_outage_does_not_fail_fast_hits() {
    let other = Emulator::start(&demo_rules());
    let stack = Stack::builder("full_spool")
        .fast()
        .set("spool.segment_bytes", 4096)
        .set("spool.max_bytes", 8192)
        .another_service("full_spool_b", &other.url(), "checkout")
        .set("service.1.cache.mode", "fast")
        .start();
    assert_eq!(stack.post(PAGEVIEWS, &view("a", 0)).status, 200);
    assert_eq!(stack.post("/demo_db/checkout", &view("b", 0)).status, 200);
    // Service b's upstream fails: its fast hits fill the spool, until it refuses them.
    other.faults(json!({"status": 503, "rate": 1.0}));
    let mut n = 1;
    while stack.post("/demo_db/checkout", &view("b", n)).status == 200 {
        n += 1;
        assert!(n < 500, "the spool never filled");
    }
    // Our service's hits still succeed: the spool cannot take them, so they go upstream now.
    let before = ingested(&stack);
    for n in 1..=3 {
        let r = stack.post(PAGEVIEWS, &view("a", n));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("cache-status").as_deref(),
            Some("p13n-edge; fwd=miss; stored")
        );
    }
    assert_eq!(ingested(&stack), before + 3);
}

#[test]
fn a_service_quota_is_shaped_before_the_upstream_never_hit() {
    let stack = Stack::builder("quota")
        .service("max_events_per_second", 2)
        .service("deadline_ms", 200)
        .start();
    // One goes; the next new visitor would wait past the deadline for its slot: 429/2003.
    assert_eq!(stack.post(PAGEVIEWS, &view("q0", 0)).status, 200);
    let refused = stack.post(PAGEVIEWS, &view("q1", 0));
    refused.assert_error(429, 2003);
    assert!(refused.header("retry-after").is_some());
    // A visitor with cached offers gets them at once, and its event is spooled.
    let known = stack.post(PAGEVIEWS, &view("q0", 1));
    assert_eq!(known.status, 200);
    assert_eq!(
        known.header("cache-status").as_deref(),
        Some("p13n-edge; fwd=stale; detail=upstream-429")
    );
    // Replay delivers it within the quota; the upstream never answered a 429.
    assert!(
        eventually(Duration::from_secs(10), || ingested(&stack) == 2),
        "{}",
        stack.emulator.stats()
    );
    let stats = stack.emulator.stats();
    assert_eq!(stats["by_status"].as_object().unwrap().len(), 1, "{stats}");
    assert!(stack.metric("p13n_edge_quota_deferred_total", &[]) >= 2.0);
    assert!(stack.metric("p13n_edge_quota_spent_total", &[]) >= 2.0);
}

#[test]
fn a_quota_lets_no_second_of_the_upstreams_see_more_than_its_rate_even_after_idling() {
    let stack = Stack::builder("quota_burst")
        .service("max_events_per_second", 10)
        .start();
    // 20 new visitors at once after an idle start: each waits for its slot (100 ms apart, all
    // within the 3 s deadline), once, and the upstream's busiest second holds at most 10.
    let answers: Vec<u16> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..20)
            .map(|v| {
                let stack = &stack;
                s.spawn(move || stack.post(PAGEVIEWS, &view(&format!("b{v}"), 0)).status)
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    let stats = stack.emulator.stats();
    assert_eq!(stats["events_ingested"], 20, "{stats}");
    assert!(stats["max_per_second"].as_u64().unwrap() <= 10, "{stats}");
    // Each call that waited was deferred once, not once per slot it watched go by.
    assert_eq!(stack.metric("p13n_edge_quota_deferred_total", &[]), 19.0);
    assert_eq!(stack.metric("p13n_edge_quota_spent_total", &[]), 20.0);
}

#[test]
fn under_sustained_overload_a_quota_answers_200_or_429_never_a_timeout() {
    let stack = Stack::builder("quota_overload")
        .service("max_events_per_second", 20)
        .service("deadline_ms", 1000)
        .start();
    stack
        .emulator
        .faults(json!({"status": 0, "latency_ms": 200}));
    // 32 clients posting new visitors as fast as they are answered: a queue for the quota
    // longer than the deadline.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..32)
            .map(|c| {
                let stack = &stack;
                s.spawn(move || {
                    let mut seen = Vec::new();
                    let mut n = 0;
                    while std::time::Instant::now() < until {
                        n += 1;
                        let r = stack.post(PAGEVIEWS, &view(&format!("o{c}-{n}"), 0));
                        seen.push(r.status);
                    }
                    seen
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    // A call admitted by the quota keeps time to be answered: none times out (504), and the
    // circuit never opens on such timeouts (503).
    let others: Vec<&u16> = statuses
        .iter()
        .filter(|s| !matches!(s, 200 | 429))
        .collect();
    assert!(
        others.is_empty(),
        "{ok} answered, {refused} refused, and {others:?}"
    );
    assert!(ok >= 20 && refused > 0, "{ok} answered, {refused} refused");
    assert_eq!(stack.metric("p13n_edge_upstream_errors_total", &[]), 0.0);
}

#[test]
fn a_reload_changes_the_quotas_rate() {
    let stack = Stack::builder("quota_reload")
        .service("max_events_per_second", 10)
        .start();
    assert_eq!(stack.post(PAGEVIEWS, &view("r0", 0)).status, 200);
    stack.reload(|setup| setup.service("max_events_per_second", 2));
    // The peaks are counted again from here.
    stack.emulator.faults(json!({"status": 0, "latency_ms": 0}));
    std::thread::scope(|s| {
        for v in 0..10 {
            let stack = &stack;
            s.spawn(move || stack.post(PAGEVIEWS, &view(&format!("r{v}x"), 0)));
        }
    });
    let stats = stack.emulator.stats();
    assert!(stats["max_per_second"].as_u64().unwrap() <= 2, "{stats}");
}
