//! Operating the real binary: hot reload under load, a bad reload, key rotation, SIGTERM with
//! events in the spool, a graceful upgrade. (Its settings and metrics: `daemon_settings.rs`.)
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Two threads sending requests until stopped: how many went, how many did not get 200, and
/// when each started and how long its answer took.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    timings: Arc<std::sync::Mutex<Vec<(std::time::Instant, Duration)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// How many requests have been sent so far.
    fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Wait until `more` requests beyond those sent so far have been answered.
    fn runs_on(&self, more: usize) -> bool {
        let at = self.sent();
        eventually(SECONDS_10, || self.sent() >= at + more)
    }

    /// Stop and wait for the threads; the count of failed requests.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().for_each(|t| t.join().unwrap());
        self.failed.load(Ordering::Relaxed)
    }

    /// The slowest answer to a request started before `at` (`before`) or from it on.
    fn slowest(&self, at: std::time::Instant, before: bool) -> Duration {
        let timings = self.timings.lock().unwrap();
        timings
            .iter()
            .filter(|(start, _)| (*start < at) == before)
            .map(|(_, took)| *took)
            .max()
            .unwrap_or_default()
    }
}

/// `load_from` with a new visitor for every request.
fn load(addr: SocketAddr) -> Load {
    load_from(addr, usize::MAX)
}

/// Load from `visitors` visitors per thread, in turn.
fn load_from(addr: SocketAddr, visitors: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let timings = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads = (0..2)
        .map(|t| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let timings = timings.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let visitor = n % visitors;
                    let body =
                        format!(r#"{{"td_client_id":"load{t}-{visitor}","td_path":"/retail"}}"#);
                    let started = std::time::Instant::now();
                    let r = to(addr).post(PAGEVIEWS).json(&body).try_send();
                    timings.lock().unwrap().push((started, started.elapsed()));
                    sent.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Some(r) if r.status == 200 => {}
                        Some(r) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("failed: {} {}", r.status, r.text());
                        }
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("failed: no answer");
                        }
                    }
                }
            })
        })
        .collect();
    Load {
        stop,
        sent,
        failed,
        timings,
        threads,
    }
}

#[test]
fn reload_under_load_fails_no_request_and_a_bad_file_keeps_the_old_config() {
    let emulator = Emulator::start(&demo_rules());
    let setup = Setup::new("reload").upstream(emulator.url());
    let daemon = setup.spawn(&[]);
    let traffic = load(daemon.proxy);
    for deadline in [2000i64, 2500, 3000, 3500, 4000] {
        setup.clone().service("deadline_ms", deadline).write();
        daemon.signal("HUP");
        let want = ((deadline - 1500) / 500) as u64;
        assert!(eventually(SECONDS_10, || daemon.reloads("ok") == want));
    }
    // A bad file: refused, counted, and the old config keeps serving.
    setup.clone().set("server.bogus", 1).write();
    daemon.signal("HUP");
    assert!(eventually(SECONDS_10, || daemon.reloads("error") == 1));
    // Requests go on after the refused reload (the old config's), none failing (below).
    assert!(traffic.runs_on(10), "no load after the bad reload");
    let sent = traffic.sent();
    assert!(sent > 20, "too little load: {sent}");
    assert_eq!(traffic.finish(), 0);
    assert_eq!(post_view(daemon.proxy, "after").status, 200);
    assert!(to(daemon.admin)
        .metrics()
        .contains("p13n_edge_config_generation 6"));
    let logs = daemon.kill();
    assert!(logs.contains("unknown key `server.bogus`"), "{logs}");
}

#[test]
fn a_sighup_the_moment_the_ports_open_reloads_instead_of_ending_the_daemon() {
    let emulator = Emulator::start(&demo_rules());
    let setup = Setup::new("early_hup").upstream(emulator.url());
    // SIGHUP's default action ends a process: the handler must be in place before any port
    // opens. A reload service that registered its own once running lost this race now and then.
    // Before the fix this failed now and then, more often under load (the daemon ended by
    // signal 1); ten starts give the race ten chances.
    for _ in 0..10 {
        let mut daemon = setup.spawn(&[]);
        daemon.signal("HUP");
        assert!(eventually(SECONDS_10, || daemon.reloads("ok") == 1));
        assert!(!daemon.ended());
        daemon.kill();
    }
}

#[test]
fn a_key_rotates_through_reload() {
    let upstream = Recorder::start("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let setup = Setup::new("rotate").upstream(upstream.url());
    let daemon = setup.spawn(&[]);
    assert_eq!(post_view(daemon.proxy, "v").status, 200);
    let new_key = "1/ffffffffffffffffffffffffffffffffffffffff";
    std::fs::write(setup.dir().join("key"), new_key).unwrap();
    daemon.signal("HUP");
    assert!(eventually(SECONDS_10, || daemon.reloads("ok") == 1));
    assert_eq!(post_view(daemon.proxy, "v").status, 200);
    let seen = upstream.requests();
    assert!(seen[0].contains(&format!("TD1 {KEY}")), "{}", seen[0]);
    assert!(
        seen.last().unwrap().contains(&format!("TD1 {new_key}")),
        "{}",
        seen.last().unwrap()
    );
    let logs = daemon.kill();
    assert!(
        !logs.contains("ffffffffffffffffffffffffffffffffffffffff"),
        "the new key was logged"
    );
}

#[test]
fn sigterm_with_events_in_the_spool_loses_none() {
    let emulator = Emulator::start(&demo_rules());
    let mut daemon = Setup::new("sigterm")
        .upstream(emulator.url())
        .set("server.grace_period_seconds", 3)
        .spawn(&[]);
    assert_eq!(post_view(daemon.proxy, "k").status, 200);
    emulator.faults(json!({"status": 503, "rate": 1.0, "seconds": 0.5}));
    for _ in 0..5 {
        assert_eq!(post_view(daemon.proxy, "k").status, 200);
    }
    daemon.signal("TERM");
    let exited = eventually(Duration::from_secs(15), || daemon.ended());
    assert!(exited, "the daemon did not exit after SIGTERM");
    assert_eq!(emulator.ingested(), 6, "{}", emulator.stats());
}

/// Whether the connection from `peer` to `listener` has been accepted by a process: the kernel
/// completes the handshake itself, and a connection still in the accept queue has no socket
/// inode in `/proc/net/tcp` until a process accepts it.
fn accepted(listener: SocketAddr, peer: SocketAddr) -> bool {
    let hex = |a: SocketAddr| format!(":{:04X}", a.port());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|f| {
            f.len() > 9
                && f[1].ends_with(&hex(listener))
                && f[2].ends_with(&hex(peer))
                && f[9] != "0"
        })
}

#[test]
fn a_connection_accepted_before_sigterm_has_its_first_request_served() {
    let emulator = Emulator::start(&demo_rules());
    // SIGTERM stops the listener at once, and in-flight work has the grace period.
    let daemon = Setup::new("accepted")
        .upstream(emulator.url())
        .set("server.grace_period_seconds", 3)
        .spawn(&[]);
    // A browser's connection is accepted, and its request is still on its way when the
    // service stops (as during an upgrade: the listener is handed over, the accepted stay).
    let mut tcp = std::net::TcpStream::connect(daemon.proxy).unwrap();
    let peer = tcp.local_addr().unwrap();
    assert!(
        eventually(SECONDS_10, || accepted(daemon.proxy, peer)),
        "the daemon never accepted the connection"
    );
    daemon.signal("TERM");
    assert!(
        eventually(SECONDS_10, || std::net::TcpStream::connect(daemon.proxy)
            .is_err()),
        "the listener still accepts after SIGTERM"
    );
    let body = r#"{"td_client_id":"late","td_path":"/retail"}"#;
    let raw = format!(
        "POST /demo_db/pageviews HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut tcp, raw.as_bytes()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let answer = read_message(&mut tcp).map(|m| String::from_utf8_lossy(&m).into_owned());
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "{answer:?}"
    );
}

/// A spool record as every version writes it (the frame of `spool::Record` without the route
/// identity newer versions add), for `service` at `route`.
fn spool_frame(service: &str, route: &str, body: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    for n in [1u64, 0, 0] {
        payload.extend_from_slice(&n.to_le_bytes());
    }
    for field in [service, route, "ghost", body] {
        payload.extend_from_slice(&(field.len() as u32).to_le_bytes());
        payload.extend_from_slice(field.as_bytes());
    }
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

#[test]
fn a_graceful_upgrade_drops_no_request_and_the_new_process_serves_at_once() {
    let emulator = Emulator::start(&demo_rules());
    // A second service whose upstream is down, with an event in the spool: the old process
    // spends its whole shutdown timeout trying to deliver it, holding the spool.
    let dead = format!("http://127.0.0.1:{}", free_port());
    // In `fast` mode, most answers come from the cache and their events go through the spool,
    // written by both processes while both serve.
    let setup = Setup::new("upgrade")
        .upstream(emulator.url())
        .fast()
        // Small segments: each process moves to new ones often while the other writes too.
        .set("spool.segment_bytes", 4096)
        .another_service("down", &dead, "down_table")
        // As in production: in-flight requests get a grace period, and shutdown some time.
        .set("server.grace_period_seconds", 1)
        .set("server.graceful_shutdown_timeout_seconds", 3);
    let spool = setup.dir().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(
        spool.join(format!("{:020}.seg", 0)),
        spool_frame("down", "/demo_db/down_table", r#"{"td_client_id":"ghost"}"#),
    )
    .unwrap();
    let mut old = setup.spawn(&[]);
    let traffic = load_from(old.proxy, 16);
    // Answers before the upgrade, to compare those during it with.
    assert!(traffic.runs_on(50), "no load before the upgrade");
    let upgrade = std::time::Instant::now();
    // The new binary waits for the sockets on the upgrade socket; SIGQUIT makes the old one
    // hand them over. The socket's file is there once the new one is bound to it.
    let handover =
        std::path::PathBuf::from(format!("/tmp/p13n-edge-test-{}.sock", setup.proxy.port()));
    assert!(setup.toml().contains(&handover.display().to_string()));
    let _ = std::fs::remove_file(&handover);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_p13n-edge"));
    command.args(["run", "-u", "--config"]).arg(setup.write());
    let mut new = Daemon::spawn_command(command, setup.proxy, setup.admin);
    assert!(
        eventually(SECONDS_10, || handover.exists()),
        "the new process never waited for the sockets"
    );
    old.signal("QUIT");
    assert!(
        eventually(Duration::from_secs(20), || old.ended()),
        "the old process did not exit"
    );
    // Answers from the new process alone.
    assert!(traffic.runs_on(50), "no load after the upgrade");
    let (before, during) = (
        traffic.slowest(upgrade, true),
        traffic.slowest(upgrade, false),
    );
    let counted = traffic.sent.clone();
    let failed = traffic.finish();
    let sent = counted.load(Ordering::Relaxed);
    let unique = |s: &serde_json::Value| {
        s["events_ingested"].as_u64().unwrap() - s["duplicates"].as_u64().unwrap()
    };
    println!("upgrade under load: {sent} requests, slowest answer {before:?} before, {during:?} during and after");
    assert_eq!(failed, 0, "of {sent}");
    // Every event answered 200, by either process, from the cache or not, arrives.
    assert!(
        eventually(Duration::from_secs(20), || unique(&emulator.stats())
            == sent as u64),
        "{sent} answered 200: {}",
        emulator.stats()
    );
    // The new process serves at once: no answer waits for the old one to exit (it used to, for
    // the old one's grace period and more: seconds).
    assert!(
        during < before + Duration::from_secs(1),
        "slowest answer {during:?} during the upgrade, {before:?} before"
    );
    assert!(!new.ended(), "the new process is not running");
    assert_eq!(post_view(new.proxy, "after-upgrade").status, 200);
}
