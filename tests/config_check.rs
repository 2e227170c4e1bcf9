//! `p13n-edge check-config`: exit 0 for a good file, every problem and exit 1 otherwise.

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
    let text = config_toml(free_port(), free_port(), "http://127.0.0.1:9", "")
        .replace("[service.tokens]\n", &format!("[service.tokens]\n{tokens}"));
    let config = load_config("fifty", &text);
    assert_eq!(config.services[0].tokens.len(), 50);
}
