//! `[shared]`: the optional Valkey/Redis tier shared by every instance (src/shared/): where it
//! is, its credentials (from the environment or a file, never the TOML or the URL), and how
//! long an operation may take before the request goes on without it.

use super::source::{self, Picked};
use super::Secret;
use crate::shared::SharedSettings;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Deserialize)]
pub struct SharedSection {
    /// `redis://host:port/db`, `rediss://` for TLS (`valkey://`, `valkeys://` too). No
    /// credentials in it: `username`, `password_env` or `password_file`.
    pub url: String,
    /// ACL user name (Redis 6+, Valkey); without it the password is the default user's.
    pub username: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (one line); relative to this config file.
    pub password_file: Option<String>,
    /// PEM file of the CAs trusted for a `rediss://` server instead of the system roots.
    pub ca_file: Option<String>,
    /// Most time one operation (a lookup, a write, a limit check) may take; past it the
    /// request goes on with the local cache and limits.
    #[serde(default = "default_budget_ms")]
    pub budget_ms: u64,
    /// Time to open a connection (and authenticate) before the attempt fails.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Connections kept open, each multiplexing every request's operations.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Prefix of every key this daemon writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Write-throughs of offers in flight at once; past it a write is dropped (and counted).
    #[serde(default = "default_max_writes_in_flight")]
    pub max_writes_in_flight: usize,
    /// Offers as a second cache tier.
    #[serde(default = "default_true")]
    pub offers: bool,
    /// The per-visitor rate limit (`rate_limit.per_identifier_per_second`) counted here, for
    /// all instances together.
    #[serde(default = "default_true")]
    pub rate_limits: bool,
}

fn default_budget_ms() -> u64 {
    5
}
fn default_connect_timeout_ms() -> u64 {
    1000
}
fn default_connections() -> usize {
    2
}
fn default_key_prefix() -> String {
    "p13n-edge:".into()
}
fn default_max_writes_in_flight() -> usize {
    256
}
fn default_true() -> bool {
    true
}

const SCHEMES: [&str; 4] = ["redis", "rediss", "valkey", "valkeys"];

/// Check `[shared]`; every problem goes to `problems`. The password, when loaded, goes to
/// `secrets` too, so that no message can quote it.
pub(super) fn build(
    section: &SharedSection,
    max_body: usize,
    base_dir: &Path,
    problems: &mut Vec<String>,
    secrets: &mut Vec<Secret>,
) -> Option<SharedSettings> {
    let before = problems.len();
    let tls = check_url(&section.url, problems);
    let password = load_password(section, base_dir, problems);
    secrets.extend(password.iter().cloned());
    let ca_file = section.ca_file.as_ref().map(|f| base_dir.join(f));
    if let Some(path) = &ca_file {
        if !tls {
            problems.push("shared.ca_file is only for rediss:// (or valkeys://) URLs".into());
        } else if let Err(e) = std::fs::read(path) {
            problems.push(format!("shared.ca_file {}: {e}", path.display()));
        }
    }
    if !(1..=1000).contains(&section.budget_ms) {
        problems.push("shared.budget_ms must be between 1 and 1000".into());
    }
    if !(1..=60_000).contains(&section.connect_timeout_ms) {
        problems.push("shared.connect_timeout_ms must be between 1 and 60000".into());
    }
    if !(1..=16).contains(&section.connections) {
        problems.push("shared.connections must be between 1 and 16".into());
    }
    if section.max_writes_in_flight == 0 {
        problems.push("shared.max_writes_in_flight must be at least 1".into());
    }
    let prefix = &section.key_prefix;
    // Never empty: the server may hold other keys, and ours must not be mistaken for theirs.
    if prefix.is_empty() || prefix.len() > 64 || prefix.bytes().any(|b| !b.is_ascii_graphic()) {
        problems.push("shared.key_prefix must be 1 to 64 printable ASCII characters".into());
    }
    if section.username.as_ref().is_some_and(|u| u.is_empty()) {
        problems.push("shared.username must not be empty".into());
    }
    (problems.len() == before).then(|| SharedSettings {
        url: section.url.clone(),
        username: section.username.clone(),
        password,
        ca_file,
        budget: Duration::from_millis(section.budget_ms),
        connect_timeout: Duration::from_millis(section.connect_timeout_ms),
        connections: section.connections,
        key_prefix: section.key_prefix.clone(),
        max_writes_in_flight: section.max_writes_in_flight,
        offers: section.offers,
        rate_limits: section.rate_limits,
        max_body,
    })
}

/// Whether the URL asks for TLS. Its text is never quoted: it may hold a password by mistake.
fn check_url(url: &str, problems: &mut Vec<String>) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        problems.push("shared.url must be redis://host:port/db (or rediss://)".into());
        return false;
    };
    if !SCHEMES.contains(&scheme) {
        problems.push(format!(
            "shared.url: scheme {scheme:?} is not one of {}",
            SCHEMES.join(", ")
        ));
        return false;
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        problems.push(
            "shared.url must not hold credentials: set shared.username, and shared.password_env \
             or shared.password_file"
                .into(),
        );
    }
    if rest.contains(['?', '#']) {
        problems.push("shared.url must not have a query or a fragment".into());
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    if host.is_empty() {
        problems.push("shared.url names no host".into());
    }
    // The error's kind alone: its detail may quote the URL.
    if let Err(e) = redis::Client::open(url) {
        problems.push(format!("shared.url is not a valid URL ({:?})", e.kind()));
    }
    matches!(scheme, "rediss" | "valkeys")
}

fn load_password(
    section: &SharedSection,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> Option<Secret> {
    let env = ("password_env", section.password_env.as_ref());
    let file = ("password_file", section.password_file.as_ref());
    let raw = match source::read("shared", env, file, base_dir, problems) {
        Picked::Neither | Picked::Failed => return None,
        Picked::Read(bytes) => source::text("shared", "password_file", bytes, problems)?,
        Picked::Both => {
            problems.push("shared: set at most one of password_env and password_file".into());
            return None;
        }
    };
    let password = raw.trim();
    if password.is_empty() {
        problems.push("shared: the password is empty".into());
        return None;
    }
    Some(Secret::new(password))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(url: &str) -> SharedSection {
        toml::from_str(&format!("url = {url:?}")).unwrap()
    }

    fn problems_of(s: &SharedSection) -> Vec<String> {
        let mut problems = Vec::new();
        build(s, 65536, Path::new("."), &mut problems, &mut Vec::new());
        problems
    }

    #[test]
    fn defaults_and_a_plain_url() {
        let s = section("redis://127.0.0.1:6379/0");
        let mut problems = Vec::new();
        let settings = build(&s, 65536, Path::new("."), &mut problems, &mut Vec::new()).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(settings.budget, Duration::from_millis(5));
        assert_eq!(settings.key_prefix, "p13n-edge:");
        assert_eq!(settings.connections, 2);
        assert!(settings.offers && settings.rate_limits && settings.password.is_none());
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_being_quoted() {
        for url in [
            "redis://:hunter22@127.0.0.1:6379",
            "redis://user:hunter22@127.0.0.1",
        ] {
            let problems = problems_of(&section(url));
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains("credentials"), "{problems:?}");
            assert!(!problems[0].contains("hunter22"), "{problems:?}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let mut s = section("http://127.0.0.1:6379");
        s.budget_ms = 0;
        s.connections = 0;
        s.key_prefix = "has space".into();
        s.password_env = Some("P13N_EDGE_TEST_UNSET_PASSWORD".into());
        s.ca_file = Some("nowhere.pem".into());
        let problems = problems_of(&s);
        assert_eq!(problems.len(), 6, "{problems:?}");
        for needle in [
            "scheme",
            "budget_ms",
            "connections",
            "key_prefix",
            "P13N_EDGE_TEST_UNSET_PASSWORD",
            "ca_file",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle}: {problems:?}"
            );
        }
        let problems = problems_of(&section("redis://127.0.0.1?insecure"));
        assert!(problems[0].contains("query"), "{problems:?}");
        // A CA is for TLS only: redis:// is not rediss://.
        let mut s = section("redis://127.0.0.1:6379");
        s.ca_file = Some("ca.pem".into());
        let problems = problems_of(&s);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("only for rediss://"), "{problems:?}");
    }

    #[test]
    fn the_password_comes_from_a_file_and_is_kept_secret() {
        let dir = std::env::temp_dir().join(format!("p13n-edge-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret-value\n").unwrap();
        let mut s = section("rediss://redis.internal:6380/2");
        s.password_file = Some("pw".into());
        let (mut problems, mut secrets) = (Vec::new(), Vec::new());
        let settings = build(&s, 65536, &dir, &mut problems, &mut secrets).unwrap();
        assert_eq!(settings.password.as_ref().unwrap().expose(), "s3cret-value");
        assert_eq!(format!("{settings:?}").matches("s3cret").count(), 0);
        assert_eq!(secrets.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
