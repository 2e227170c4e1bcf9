//! What the real binary reads and shows: every metric in the README's catalog, tokens from a
//! file and the environment (and a reload rereading them), and replay's priority.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_scrape_parses_and_lists_the_catalog() {
    let stack = Stack::start("scrape");
    stack.post(PAGEVIEWS, r#"{"td_client_id":"m"}"#);
    // Request metrics are recorded in the logging phase, just after the answer is sent.
    let scrape = || to(stack.admin).metrics();
    assert!(eventually(SECONDS_10, || scrape()
        .contains("p13n_edge_requests_total{")));
    let text = scrape();
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            assert!(
                comment.starts_with(" HELP ") || comment.starts_with(" TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{line}"
        );
        names.insert(name.to_string());
    }
    for name in [
        "p13n_edge_requests_total",
        "p13n_edge_request_duration_seconds_bucket",
        "p13n_edge_upstream_requests_total",
        "p13n_edge_upstream_duration_seconds_bucket",
        "p13n_edge_cache_lookups_total",
        "p13n_edge_cache_entries",
        "p13n_edge_cache_bytes",
        "p13n_edge_spool_depth",
        "p13n_edge_spool_bytes",
        "p13n_edge_spool_oldest_age_seconds",
        "p13n_edge_spool_replayed_total",
        "p13n_edge_circuit_state",
        "p13n_edge_config_generation",
        "p13n_edge_config_reloads_total",
    ] {
        assert!(names.contains(name), "{name} missing from:\n{text}");
    }
    // Every metric exported is in the README's catalog (histograms by their base name).
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for name in names.iter().filter(|n| n.starts_with("p13n_edge_")) {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            readme.contains(&format!("`{base}`")),
            "{base} is exported but not in the README"
        );
    }
    assert!(
        !text.contains("td_client_id") && !text.contains("\"m\""),
        "a client id in metrics"
    );
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(to(stack.admin).get(probe).send().status, 200, "{probe}");
    }
}

/// The token each request the fake upstream saw carried.
fn tokens_seen(upstream: &Recorder) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .map(|r| r.to_ascii_lowercase())
        .filter_map(|r| {
            let at = r.find("\r\nwp13n-token: ")? + "\r\nwp13n-token: ".len();
            Some(r[at..].split("\r\n").next()?.to_string())
        })
        .collect()
}

#[test]
fn tokens_come_from_a_file_and_the_environment_and_a_reload_rereads_them() {
    let upstream = Recorder::start("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let (from_file, from_env, rotated) = (
        "1/1/00000000000000000000000000000002",
        "1/1/00000000000000000000000000000003",
        "1/1/00000000000000000000000000000004",
    );
    // Nothing secret is left in the config: `web` is in a file, `app` in the environment (and
    // the public route's token).
    let setup = Setup::new("token_sources")
        .upstream(upstream.url())
        .remove("service.tokens.web")
        .service("tokens_file", "tokens")
        .set("service.token_env.app", "P13N_TEST_APP_TOKEN")
        .set("service.route.1.token", "app");
    let tokens = setup.dir().join("tokens");
    std::fs::write(&tokens, format!("# private\n\nweb = {from_file}\n")).unwrap();
    let daemon = setup.spawn(&[("P13N_TEST_APP_TOKEN", from_env)]);
    assert_eq!(post_view(daemon.proxy, "v").status, 200);
    let click = to(daemon.proxy)
        .post("/public/demo_db/clicks")
        .json(r#"{"td_client_id":"v"}"#)
        .send();
    assert_eq!(click.status, 200);

    // A reload re-reads the file.
    std::fs::write(&tokens, format!("web = \"{rotated}\"\n")).unwrap();
    daemon.signal("HUP");
    assert!(eventually(SECONDS_10, || daemon.reloads("ok") == 1));
    assert_eq!(post_view(daemon.proxy, "w").status, 200);
    assert_eq!(tokens_seen(&upstream), [from_file, from_env, rotated]);

    // Bad reloads, refused without printing a token: a name twice in the file, then twice in
    // the TOML (whose parse error would quote the line: the config text itself is the subject,
    // as no TOML document can hold a key twice).
    std::fs::write(&tokens, format!("web = {from_file}\nweb = {from_env}\n")).unwrap();
    daemon.signal("HUP");
    assert!(eventually(SECONDS_10, || daemon.reloads("error") == 1));
    std::fs::write(&tokens, format!("web = {rotated}\n")).unwrap();
    let text = setup.toml();
    let table = "\n[service.tokens]\n";
    assert!(text.contains(table), "{text}");
    let twice = format!("{table}dup = \"{from_file}\"\ndup = \"{from_env}\"\n");
    std::fs::write(setup.write(), text.replacen(table, &twice, 1)).unwrap();
    daemon.signal("HUP");
    assert!(eventually(SECONDS_10, || daemon.reloads("error") == 2));
    assert_eq!(post_view(daemon.proxy, "x").status, 200);
    assert_eq!(
        tokens_seen(&upstream).last().map(String::as_str),
        Some(rotated)
    );
    let logs = daemon.kill();
    for expected in [
        "token \"web\" is defined twice (tokens_file and tokens_file)",
        "duplicate key `dup` in table `service.tokens`",
    ] {
        assert!(logs.contains(expected), "missing {expected:?} in:\n{logs}");
    }
    for secret in [from_file, from_env, rotated] {
        assert!(!logs.contains(&secret[4..]), "a token was logged:\n{logs}");
    }
}

/// A thread's name and nice value from its `stat` line: "tid (name) state ppid ...", where
/// the name may hold spaces and the fields after it do not; nice is the line's field 19.
fn name_and_nice(stat: &str) -> (String, i64) {
    let (head, rest) = stat.rsplit_once(") ").unwrap();
    let name = head.split_once(" (").unwrap().1.to_string();
    (name, rest.split(' ').nth(16).unwrap().parse().unwrap())
}

/// Each thread of process `pid`: its name and its nice value (`/proc/{pid}/task/*/stat`).
fn threads_nice(pid: u32) -> Vec<(String, i64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .map(|stat| name_and_nice(&stat))
        .collect()
}

#[test]
fn replay_gives_way_to_answers_by_its_nice_value_and_the_rest_keeps_the_daemons() {
    let emulator = Emulator::start(&demo_rules());
    let daemon = Setup::new("replay_nice")
        .upstream(emulator.url())
        .set("spool.replay_nice", 7)
        .spawn(&[]);
    let pid = daemon.child.id();
    // Replay's runtime (pingora names a background service's threads after it) takes its
    // priority when it starts; every other thread keeps the daemon's own, whatever that is.
    let is_replay = |name: &str| name.starts_with("BG p13n-edge sp");
    // The main thread's: the daemon's own.
    let own = |_: &[(String, i64)]| {
        name_and_nice(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap()).1
    };
    let replay = |threads: &[(String, i64)]| {
        threads
            .iter()
            .find(|(name, _)| is_replay(name))
            .map(|(_, nice)| *nice)
    };
    assert!(
        eventually(SECONDS_10, || {
            let threads = threads_nice(pid);
            replay(&threads) == Some((own(&threads) + 7).min(19))
        }),
        "{:?}",
        threads_nice(pid)
    );
    let threads = threads_nice(pid);
    let others: Vec<_> = threads
        .iter()
        .filter(|(name, _)| !is_replay(name))
        .collect();
    assert!(others.len() >= 3, "{threads:?}");
    assert!(
        others.iter().all(|(_, nice)| *nice == own(&threads)),
        "{threads:?}"
    );
    // Replay still delivers: an event spooled while the upstream fails arrives once it is back.
    assert_eq!(post_view(daemon.proxy, "n").status, 200);
    emulator.faults(json!({"status": 503, "rate": 1.0}));
    assert_eq!(post_view(daemon.proxy, "n").status, 200);
    let depth = || to(daemon.admin).counter("p13n_edge_spool_depth");
    assert!(eventually(SECONDS_10, || depth() == 1));
    emulator.clear_faults();
    assert!(eventually(SECONDS_10, || depth() == 0 && emulator.ingested() == 2));
}
