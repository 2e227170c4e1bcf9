//! A service's credentials: its API key (from the environment or a file, never inline) and its
//! tokens (inline, from a `tokens_file` and from `token_env`), loaded and checked for form,
//! account and instance. No message here prints a value: they are all credentials.

use super::file::ServiceSection;
use super::source::{self, Picked};
use super::validate::{is_hex, is_id, names_ok, MAX_TOKENS_PER_SERVICE};
use super::Secret;
use std::collections::BTreeMap;
use std::path::Path;

pub(super) struct Credentials {
    /// The key, when it could be read; its form may still be wrong (`problems` says so).
    pub key: Option<Secret>,
    /// Every token found, by name, whatever its form.
    pub tokens: BTreeMap<String, Secret>,
}

impl Credentials {
    /// Every value loaded, for scrubbing out of error messages.
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.key.iter().chain(self.tokens.values())
    }
}

pub(super) fn load(
    s: &ServiceSection,
    at: &str,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> Credentials {
    let key = load_key(s, at, base_dir, problems);
    if let Some(key) = &key {
        check_key(key, s, at, problems);
    }
    let tokens = load_tokens(s, at, base_dir, problems);
    if tokens.len() > MAX_TOKENS_PER_SERVICE {
        problems.push(format!(
            "{at}: {} tokens, but a personalization service allows at most {MAX_TOKENS_PER_SERVICE}",
            tokens.len()
        ));
    }
    for (name, value) in &tokens {
        check_token(name, value, s, at, problems);
    }
    Credentials { key, tokens }
}

fn load_key(
    s: &ServiceSection,
    at: &str,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> Option<Secret> {
    let env = ("api_key_env", s.api_key_env.as_ref());
    let file = ("api_key_file", s.api_key_file.as_ref());
    let raw = match source::read(at, env, file, base_dir, problems) {
        Picked::Read(bytes) => source::text(at, "api_key_file", bytes, problems)?,
        Picked::Failed => return None,
        Picked::Neither | Picked::Both => {
            problems.push(format!(
                "{at}: set exactly one of api_key_env and api_key_file (keys are never inline)"
            ));
            return None;
        }
    };
    Some(Secret::new(raw.trim()))
}

fn check_key(key: &Secret, s: &ServiceSection, at: &str, problems: &mut Vec<String>) {
    match key.expose().split_once('/') {
        Some((account, rest)) if is_id(account) && is_hex(rest, 40) => {
            if account != s.account_id {
                problems.push(format!(
                    "{at}: the API key's account ({account}) is not account_id ({})",
                    s.account_id
                ));
            }
        }
        _ => problems.push(format!(
            "{at}: the API key is not in {{account_id}}/{{40 hex}} form"
        )),
    }
}

/// Inline tokens, then the file's, then the environment's; a name given twice is a problem.
fn load_tokens(
    s: &ServiceSection,
    at: &str,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> BTreeMap<String, Secret> {
    let mut found: Vec<(String, Secret, &str)> = s
        .tokens
        .iter()
        .map(|(name, value)| (name.clone(), value.clone(), "tokens"))
        .collect();
    if let Some(file) = &s.tokens_file {
        let path = base_dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let at = format!("{at}: tokens_file {}", path.display());
                for (name, value) in parse_tokens_file(&text, &at, problems) {
                    found.push((name, value, "tokens_file"));
                }
            }
            Err(e) => problems.push(format!("{at}: tokens_file {}: {e}", path.display())),
        }
    }
    for (name, var) in &s.token_env {
        match std::env::var(var) {
            Ok(value) => found.push((name.clone(), Secret::new(value.trim()), "token_env")),
            Err(_) => problems.push(format!(
                "{at}: environment variable {var} (token_env.{name}) is not set"
            )),
        }
    }
    let mut tokens = BTreeMap::new();
    let mut sources: BTreeMap<String, &str> = BTreeMap::new();
    for (name, value, source) in found {
        if let Some(first) = sources.get(&name) {
            problems.push(format!(
                "{at}: token {name:?} is defined twice ({first} and {source})"
            ));
            continue;
        }
        sources.insert(name.clone(), source);
        tokens.insert(name, value);
    }
    tokens
}

/// `name = value` lines (the value optionally in double quotes); blank lines and `#` comments
/// are skipped. A bad line is reported by number, never by content.
fn parse_tokens_file(text: &str, at: &str, problems: &mut Vec<String>) -> Vec<(String, Secret)> {
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once('=').and_then(|(name, value)| {
            let (name, value) = (name.trim(), value.trim());
            let value = match value.strip_prefix('"') {
                Some(quoted) => quoted.strip_suffix('"')?,
                None => value,
            };
            (!name.is_empty() && !value.is_empty()).then(|| (name.to_string(), Secret::new(value)))
        });
        match parsed {
            Some(token) => tokens.push(token),
            None => problems.push(format!(
                "{at}: line {}: expected `name = value` (the line is not shown: it may hold a token)",
                n + 1
            )),
        }
    }
    tokens
}

fn check_token(
    name: &str,
    value: &Secret,
    s: &ServiceSection,
    at: &str,
    problems: &mut Vec<String>,
) {
    if !names_ok(name) {
        problems.push(format!(
            "{at}: token name {name:?} must match [0-9a-z_]{{3,128}}"
        ));
    }
    let parts: Vec<&str> = value.expose().split('/').collect();
    match parts.as_slice() {
        [account, instance, token] if is_id(account) && is_id(instance) && is_hex(token, 32) => {
            if *account != s.account_id {
                problems.push(format!(
                    "{at}: token {name:?} belongs to account {account}, not to the key's account {}",
                    s.account_id
                ));
            }
            if *instance != s.instance_id {
                problems.push(format!(
                    "{at}: token {name:?} belongs to instance {instance}, not {}",
                    s.instance_id
                ));
            }
        }
        _ => problems.push(format!(
            "{at}: token {name:?} is not in {{account_id}}/{{instance_id}}/{{32 hex}} form"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_file_skips_comments_and_reports_bad_lines_by_number_only() {
        let mut problems = Vec::new();
        let text = "# web tokens\n\nweb = 1/1/abc\napp = \"1/1/def\"\nsecret-without-equals\n";
        let tokens = parse_tokens_file(text, "f", &mut problems);
        let names: Vec<_> = tokens
            .iter()
            .map(|(n, v)| (n.as_str(), v.expose()))
            .collect();
        assert_eq!(names, [("web", "1/1/abc"), ("app", "1/1/def")]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("line 5"), "{problems:?}");
        assert!(!problems[0].contains("secret-without"), "{problems:?}");
    }
}
