//! `p13n-edge check-config`: exit 0 for a good file, every problem and exit 1 otherwise.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn check(path: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_p13n-edge"))
        .args(["check-config", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn every_shipped_config_passes() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let env = [(
        "P13N_EDGE_API_KEY",
        "12345/0123456789abcdef0123456789abcdef01234567",
    )];
    for file in ["p13n-edge.toml", "demo.toml"] {
        let (ok, text) = check(&conf.join(file), &env);
        assert!(ok, "{file}: {text}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = scratch("check_config_bad");
    std::fs::write(dir.join("key"), KEY).unwrap();
    let mut tokens = String::new();
    for i in 0..51 {
        tokens.push_str(&format!("t{i:03} = \"1/1/{i:032x}\"\n"));
    }
    let text = format!(
        r#"
bogus_top = 1
[server]
listen = "nowhere"
lisen = "typo"

[spool]
replay_nice = 20

[[service]]
name = "Bad-Name"
base_url = "http://127.0.0.1:9/some/path"
account_id = "1"
instance_id = "1"
api_key_file = "key"
colour = "blue"

[service.tokens]
{tokens}
bad_format = "1/1/nothex"
other_account = "2/1/0123456789abcdef0123456789abcdef"
x = "1/1/0123456789abcdef0123456789abcdef"

[[service.route]]
database = "Demo-DB"
table = "t"
token = "missing"
"#
    );
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let (ok, out) = check(&path, &[]);
    assert!(!ok);
    for expected in [
        "unknown key `bogus_top`",
        "unknown key `server.lisen`",
        "unknown key `service.0.colour`",
        "server.listen",
        "spool.replay_nice must be between 0 and 19",
        "name must match [0-9a-z_]{3,128}",
        "base_url",
        "54 tokens, but a personalization service allows at most 50",
        "token \"bad_format\" is not in {account_id}/{instance_id}/{32 hex} form",
        "token \"other_account\" belongs to account 2, not to the key's account 1",
        "token name \"x\" must match",
        "database \"Demo-DB\" must match",
        "table \"t\" must match",
        "token \"missing\" is not among the service's tokens",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("nothex"), "a token value was echoed:\n{out}");
    assert!(!out.contains("panicked"));
}

#[test]
fn keys_are_checked_for_form_account_and_presence() {
    let dir = scratch("check_config_keys");
    let service = |key: &str| {
        format!(
            r#"
[[service]]
name = "shop"
region = "eu01"
account_id = "1"
instance_id = "1"
{key}
[service.tokens]
web = "1/1/0123456789abcdef0123456789abcdef"
[[service.route]]
database = "demo_db"
table = "pageviews"
token = "web"
"#
        )
    };
    let cases = [
        (
            r#"api_key_env = "P13N_TEST_UNSET_VARIABLE""#,
            "P13N_TEST_UNSET_VARIABLE (api_key_env) is not set",
        ),
        (r#"api_key_file = "no-such-file""#, "api_key_file"),
        ("", "set exactly one of api_key_env and api_key_file"),
        (
            r#"api_key = "1/0123456789abcdef0123456789abcdef01234567""#,
            "unknown key `service.0.api_key`",
        ),
    ];
    for (i, (key, expected)) in cases.iter().enumerate() {
        let path = dir.join(format!("k{i}.toml"));
        std::fs::write(&path, service(key)).unwrap();
        let (ok, out) = check(&path, &[]);
        assert!(!ok && out.contains(expected), "{key}: {out}");
    }
    std::fs::write(
        dir.join("wrong_account"),
        "2/0123456789abcdef0123456789abcdef01234567",
    )
    .unwrap();
    std::fs::write(dir.join("short"), "1/abc").unwrap();
    for (file, expected) in [
        (
            "wrong_account",
            "the API key's account (2) is not account_id (1)",
        ),
        ("short", "the API key is not in {account_id}/{40 hex} form"),
    ] {
        let path = dir.join(format!("{file}.toml"));
        std::fs::write(&path, service(&format!("api_key_file = \"{file}\""))).unwrap();
        let (ok, out) = check(&path, &[]);
        assert!(!ok && out.contains(expected), "{file}: {out}");
        assert!(
            !out.contains("0123456789abcdef0123456789abcdef01234567"),
            "key echoed: {out}"
        );
    }
    let path = dir.join("good.toml");
    std::fs::write(&path, service(r#"api_key_env = "P13N_TEST_KEY""#)).unwrap();
    let (ok, out) = check(&path, &[("P13N_TEST_KEY", KEY)]);
    assert!(ok, "{out}");
}

#[test]
fn exactly_fifty_tokens_are_allowed() {
    let mut tokens = String::new();
    for i in 0..49 {
        tokens.push_str(&format!("t{i:03} = \"1/1/{i:032x}\"\n"));
    }
    let config = Setup::new("fifty")
        .merge(&format!("[service.tokens]\n{tokens}"))
        .config();
    assert_eq!(config.services[0].tokens.len(), 50);
}

const OTHER_TOKEN: &str = "1/1/fedcba9876543210fedcba9876543210";

/// A service whose `[service.tokens]` holds `tokens` and whose other keys are `keys`.
fn with_tokens(keys: &str, tokens: &str) -> String {
    format!(
        r#"[[service]]
name = "shop"
region = "eu01"
account_id = "1"
instance_id = "1"
api_key_file = "key"
{keys}
[service.tokens]
{tokens}
[[service.route]]
database = "demo_db"
table = "pageviews"
token = "web"
"#
    )
}

fn assert_no_secret(what: &str, out: &str) {
    for secret in [
        &KEY[2..],
        &TOKEN[4..],
        &OTHER_TOKEN[4..],
        "1234567890123456",
    ] {
        assert!(
            !out.contains(secret),
            "{what}: a secret was printed:\n{out}"
        );
    }
}

#[test]
fn no_config_error_prints_a_key_or_a_token() {
    let dir = scratch("check_config_secrets");
    std::fs::write(dir.join("key"), KEY).unwrap();
    let web = format!("web = \"{TOKEN}\"");
    let cases = [
        (
            "duplicate",
            with_tokens("", &format!("{web}\nweb = \"{OTHER_TOKEN}\"")),
            "line 10, column 1: duplicate key `web` in table `service.tokens`",
        ),
        (
            "integer",
            with_tokens("", &format!("{web}\napp = 1234567890123456")),
            "line 10, column 7: invalid type: integer, expected a string",
        ),
        (
            "array",
            with_tokens("", &format!("{web}\napp = [\"{OTHER_TOKEN}\"]")),
            "line 10, column 7: invalid type: sequence, expected a string",
        ),
        (
            "unquoted",
            with_tokens("", &format!("{web}\napp = {OTHER_TOKEN}")),
            "line 10, column",
        ),
        (
            "misplaced",
            with_tokens(&format!("deadline_ms = \"{OTHER_TOKEN}\""), &web),
            "line 7, column 15: invalid type: string, expected u64",
        ),
        (
            "as_a_key",
            with_tokens(
                "",
                &format!("{web}\n[service.retry]\n\"{OTHER_TOKEN}\" = 1"),
            ),
            "unknown key `service.0.retry.1/1/***`",
        ),
        (
            "bad_form",
            with_tokens("", &format!("{web}\napp = \"{}\"", &OTHER_TOKEN[..30])),
            "token \"app\" is not in {account_id}/{instance_id}/{32 hex} form",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let (ok, out) = check(&path, &[]);
        assert!(
            !ok && out.contains(expected),
            "{name}: want {expected:?} in:\n{out}"
        );
        assert_no_secret(name, &out);
        assert!(!out.contains(&OTHER_TOKEN[4..30]), "{name}: {out}");
    }
}

#[test]
fn tokens_from_a_file_and_the_environment_are_checked_like_inline_ones() {
    let dir = scratch("check_config_token_sources");
    std::fs::write(dir.join("key"), KEY).unwrap();
    let sources = "tokens_file = \"tokens\"\n[service.token_env]\napp = \"P13N_TEST_APP_TOKEN\"\n";
    let path = dir.join("good.toml");
    std::fs::write(&path, with_tokens(sources, "")).unwrap();
    std::fs::write(
        dir.join("tokens"),
        format!("# the web page's token\n\nweb = \"{TOKEN}\"\n"),
    )
    .unwrap();
    let (ok, out) = check(&path, &[("P13N_TEST_APP_TOKEN", OTHER_TOKEN)]);
    assert!(ok, "{out}");

    // A name twice across sources, a bad line, a wrong account, an unset variable.
    std::fs::write(
        dir.join("tokens"),
        format!(
            "web = \"{TOKEN}\"\napp = {OTHER_TOKEN}\n{OTHER_TOKEN}\nother = 2/1/{}\n",
            &TOKEN[4..]
        ),
    )
    .unwrap();
    let path = dir.join("bad.toml");
    let inline = format!("web = \"{TOKEN}\"");
    std::fs::write(&path, with_tokens(sources, &inline)).unwrap();
    let (ok, out) = check(&path, &[("P13N_TEST_APP_TOKEN", OTHER_TOKEN)]);
    assert!(!ok);
    for expected in [
        "token \"web\" is defined twice (tokens and tokens_file)",
        "token \"app\" is defined twice (tokens_file and token_env)",
        "line 3: expected `name = value`",
        "token \"other\" belongs to account 2",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert_no_secret("bad tokens_file", &out);
    let (ok, out) = check(&path, &[]);
    assert!(
        !ok && out.contains("P13N_TEST_APP_TOKEN (token_env.app) is not set"),
        "{out}"
    );

    // At most 50, whatever the source.
    let mut file = String::new();
    for i in 0..50 {
        file.push_str(&format!("t{i:03} = 1/1/{i:032x}\n"));
    }
    std::fs::write(dir.join("tokens"), file).unwrap();
    std::fs::write(&path, with_tokens("tokens_file = \"tokens\"", &inline)).unwrap();
    let (ok, out) = check(&path, &[]);
    assert!(
        !ok && out.contains("51 tokens, but a personalization service allows at most 50"),
        "{out}"
    );
    std::fs::remove_file(dir.join("tokens")).unwrap();
    let (ok, out) = check(&path, &[]);
    assert!(!ok && out.contains("tokens_file"), "{out}");
}

#[test]
fn signed_visitor_ids_need_a_long_secret_from_outside_the_file_and_sane_cookie_attributes() {
    let setup = Setup::new("check_config_identity");
    let dir = setup.dir();
    let secret = "an-identity-secret-that-must-never-be-printed";
    std::fs::write(dir.join("short.secret"), "too-short\n").unwrap();
    // Each case a file of its own beside the key: the harness's config with `identity` (and
    // whatever else it holds) merged in.
    let write_setup = |name: &str, setup: Setup| {
        let path = dir.join(name);
        std::fs::write(&path, setup.toml()).unwrap();
        path
    };
    let with_identity = |identity: &str| {
        setup
            .clone()
            .merge(&format!("[service.identity]\n{identity}\n"))
    };
    let write = |name: &str, identity: &str| write_setup(name, with_identity(identity));
    let good = write(
        "good.toml",
        "mode = \"signed-cookie\"\nsecret_env = \"VISITOR_SECRET\"\nprevious_secrets_env = [\"OLD_SECRET\"]",
    );
    let env = [("VISITOR_SECRET", secret), ("OLD_SECRET", secret)];
    let (ok, text) = check(&good, &env);
    assert!(ok, "{text}");
    let (ok, text) = check(&good, &[("VISITOR_SECRET", secret)]);
    assert!(
        !ok && text.contains("OLD_SECRET (previous_secrets_env) is not set"),
        "{text}"
    );

    let bad = write(
        "bad.toml",
        r#"mode = "signed-cookie"
secret_file = "short.secret"
cookie = "__Host-vid"
domain = "shop.example"
same_site = "sideways"
max_age_days = 401
refresh_after_days = 500
header = "Cookie""#,
    );
    let (ok, text) = check(&bad, &[]);
    assert!(!ok);
    for problem in [
        "the current secret is shorter than 32 bytes",
        "need secure = true",
        "a __Host- cookie cannot have a domain",
        "same_site must be Lax, Strict or None",
        "max_age_days must be 1 to 400",
        "refresh_after_days must be less than max_age_days",
        "header \"Cookie\" must be a header name the edge does not use itself",
    ] {
        assert!(text.contains(problem), "{problem}: {text}");
    }
    // A secret pasted where a variable's name goes is not quoted back; a bad domain, the
    // consent cookie's name, a schema that would refuse the edge's ids.
    let odd = write(
        "odd.toml",
        &format!(
            "mode = \"signed-cookie\"\nsecret_env = \"{secret}\"\ndomain = \".\"\ncookie = \"ok\"\n[service.consent]\ncookie = \"ok\"\ncookie_value = \"yes\"\n[[service.route]]\ndatabase = \"demo_db\"\ntable = \"typed\"\ntoken = \"web\"\n[[service.route.fields]]\nname = \"td_client_id\"\ntype = \"number\""
        ),
    );
    let (ok, text) = check(&odd, &[]);
    assert!(!ok);
    for problem in [
        "take environment variable names",
        "domain \".\" is not a host name",
        "cookie is the consent cookie's name",
        "route demo_db/typed lists td_client_id as other than a string",
    ] {
        assert!(text.contains(problem), "{problem}: {text}");
    }
    assert!(!text.contains(secret), "{text}");
    let inline = write("inline.toml", "mode = \"signed-cookie\"\nsecret = \"x\"");
    let (ok, text) = check(&inline, &[]);
    assert!(
        !ok && text.contains("set exactly one of secret_env and secret_file"),
        "{text}"
    );
    assert!(text.contains("secret"), "{text}");
    let both = write_setup(
        "both.toml",
        with_identity("mode = \"signed-cookie\"\nsecret_env = \"VISITOR_SECRET\"")
            .service("identifier_cookie", "_td"),
    );
    let (ok, text) = check(&both, &env);
    assert!(
        !ok && text.contains("identifier_cookie has no use"),
        "{text}"
    );
    assert!(
        !text.contains(secret) && !text.contains("too-short"),
        "{text}"
    );
}

/// `p13n-edge demo` adds the emulator and the site to the proxy's own server. On an address one
/// of its listeners has already, pingora handed the new listener the same socket: two services
/// accepted on it (the emulator answering the admin's scrapes, say), and both closed it at
/// shutdown. Now the demo refuses to start, naming both.
#[test]
fn the_demo_refuses_an_emulator_or_a_site_on_a_listener_s_address() {
    for (name, shared) in [
        ("demo_emulator_on_admin", "emulator"),
        ("demo_site_on_proxy", "site"),
    ] {
        let setup = Setup::new(name);
        let (proxy, admin) = (setup.proxy, setup.admin);
        let setup = match shared {
            "emulator" => setup.upstream(format!("http://{admin}")),
            _ => setup.upstream(format!("http://127.0.0.1:{}", free_port())),
        };
        let site = match shared {
            "site" => proxy.to_string(),
            _ => format!("127.0.0.1:{}", free_port()),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_p13n-edge"))
            .args([
                "demo",
                "--rules",
                "conf/demo-rules.toml",
                "--site",
                &site,
                "--config",
            ])
            .arg(setup.write())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let exited = eventually(SECONDS_10, || child.try_wait().unwrap().is_some());
        if !exited {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            exited,
            "{name}: the demo started with two listeners on one address"
        );
        assert!(!out.status.success(), "{name}: {stderr}");
        let (what, site_or_upstream, other) = match shared {
            "emulator" => ("the emulator", admin, format!("admin.listen ({admin})")),
            _ => ("the demo site", proxy, format!("server.listen ({proxy})")),
        };
        assert!(
            stderr.contains(&format!("{what} ({site_or_upstream}) overlaps {other}")),
            "{name}: {stderr}"
        );
    }
}

/// As pingora binds (dual-stack IPv6, SO_REUSEADDR): what would share a socket or fail to bind
/// is refused, what binds beside it is not.
#[test]
fn a_listener_is_refused_where_it_would_share_a_socket_and_only_there() {
    let mut listeners = p13n_edge::Listeners::default();
    for (what, addr) in [
        ("a", "127.0.0.1:7001"),
        ("another address", "127.0.0.2:7001"),
        ("another port", "127.0.0.1:7002"),
        ("IPv6 loopback", "[::1]:7001"),
        ("IPv4 everywhere, IPv6 not", "0.0.0.0:7004"),
        ("IPv6 beside 0.0.0.0", "[::1]:7004"),
        ("port 0", "127.0.0.1:0"),
        ("port 0 elsewhere", "127.0.0.2:0"),
    ] {
        listeners.claim(what, addr).unwrap();
    }
    for (what, addr, overlapped) in [
        ("again", "127.0.0.1:7001", "a (127.0.0.1:7001)"),
        ("IPv4 everywhere", "0.0.0.0:7002", "another port"),
        ("mapped", "[::ffff:127.0.0.1]:7001", "a (127.0.0.1:7001)"),
        ("IPv6 everywhere", "[::]:7001", "a (127.0.0.1:7001)"),
        (
            "beside 0.0.0.0",
            "127.0.0.9:7004",
            "IPv4 everywhere, IPv6 not",
        ),
        ("port 0 again", "127.0.0.1:0", "port 0 (127.0.0.1:0)"),
    ] {
        let refused = listeners.claim(what, addr).unwrap_err();
        assert!(
            refused.starts_with(&format!("{what} ({addr}) overlaps {overlapped}")),
            "{refused}"
        );
    }
    assert!(listeners.claim("no port", "127.0.0.1").is_err());
}

/// Listeners on one port, one of them on every address: they were checked only for equal
/// addresses, so the config passed and the daemon failed to bind. The pair is named.
#[test]
fn listeners_that_would_share_a_port_are_refused_by_name() {
    let setup = Setup::new("check_config_overlap");
    let port = setup.proxy.port();
    let overlapping = setup.set("admin.listen", format!("0.0.0.0:{port}"));
    let (ok, text) = check(&overlapping.write(), &[]);
    assert!(!ok, "{text}");
    let pair = format!("admin.listen (0.0.0.0:{port}) overlaps server.listen (127.0.0.1:{port})");
    assert!(text.contains(&pair), "{pair} in {text}");
}
