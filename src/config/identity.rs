//! `[service.identity]`: the signing secrets (from the environment or a file, never inline)
//! and the cookie's attributes, checked and built into `guard::IdentityPolicy`. No message here
//! prints a secret.

use super::file::{BodyIdentifierSection, FieldKind, IdentityMode, ServiceSection};
use super::source::{self, Picked};
use super::Secret;
use crate::guard::identity::{BodyIdentifier, SameSite, MAX_AGE_LIMIT, MIN_SECRET_BYTES};
use crate::guard::IdentityPolicy;
use http::HeaderName;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Most secrets, current and previous, a service accepts.
const MAX_SECRETS: usize = 16;
/// Headers the edge, a browser or a balancer gives a meaning of their own: not a place for a
/// visitor token.
const RESERVED_HEADERS: &[&str] = &[
    "cookie",
    "set-cookie",
    "authorization",
    "wp13n-token",
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "origin",
    "referer",
    "user-agent",
    "sec-gpc",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "forwarded",
];

/// The policy of a service in signed-cookie mode (`None` in body mode, or when `problems` got
/// one), and the secrets loaded, for scrubbing out of error messages.
pub(super) fn load(
    s: &ServiceSection,
    at: &str,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> (Option<Arc<IdentityPolicy>>, Vec<Secret>) {
    let c = &s.identity;
    if c.mode == IdentityMode::Body {
        return (None, Vec::new());
    }
    let at = format!("{at}: identity");
    let before = problems.len();
    let secrets = secrets(s, &at, base_dir, problems);
    let loaded: Vec<Secret> = secrets
        .iter()
        .filter_map(|s| std::str::from_utf8(s).ok())
        .map(Secret::new)
        .collect();
    let same_site = check_cookie(s, &at, problems);
    let max_age = Duration::from_secs(c.max_age_days.saturating_mul(86_400));
    if c.max_age_days == 0 || max_age > MAX_AGE_LIMIT {
        problems.push(format!(
            "{at}: max_age_days must be 1 to 400 (browsers cap cookies at 400 days)"
        ));
    }
    if s.consent.cookie.as_deref() == Some(c.cookie.as_str()) {
        problems.push(format!("{at}: cookie is the consent cookie's name"));
    }
    check_routes_pass_id(s, &at, problems);
    if c.refresh_after_days >= c.max_age_days {
        problems.push(format!(
            "{at}: refresh_after_days must be less than max_age_days"
        ));
    }
    let header = header(c.header.as_deref(), &at, problems);
    if problems.len() > before {
        return (None, loaded);
    }
    let mut policy = IdentityPolicy::new(&secrets, c.cookie.clone());
    policy.secure = c.secure;
    policy.same_site = same_site;
    policy.domain = c.domain.clone();
    policy.max_age = max_age;
    policy.refresh_after = Duration::from_secs(c.refresh_after_days.saturating_mul(86_400));
    policy.body_identifier = match c.body_identifier {
        BodyIdentifierSection::Overwrite => BodyIdentifier::Overwrite,
        BodyIdentifierSection::Refuse => BodyIdentifier::Refuse,
    };
    policy.header = header;
    (Some(Arc::new(policy)), loaded)
}

/// The cookie's name and attributes: its SameSite, checked against its prefix, `secure` and
/// domain.
fn check_cookie(s: &ServiceSection, at: &str, problems: &mut Vec<String>) -> SameSite {
    let c = &s.identity;
    if s.identifier_cookie.is_some() {
        problems.push(format!(
            "{at}: identifier_cookie has no use in signed-cookie mode (the edge's cookie names the visitor)"
        ));
    }
    let cookie_ok = (1..=64).contains(&c.cookie.len())
        && c.cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !cookie_ok {
        problems.push(format!(
            "{at}: cookie must be 1 to 64 letters, digits, `_`, `-` and `.`"
        ));
    }
    let same_site = match c.same_site.to_ascii_lowercase().as_str() {
        "lax" => SameSite::Lax,
        "strict" => SameSite::Strict,
        "none" => SameSite::None,
        _ => {
            problems.push(format!("{at}: same_site must be Lax, Strict or None"));
            SameSite::Lax
        }
    };
    let prefixed = c.cookie.starts_with("__Host-") || c.cookie.starts_with("__Secure-");
    if (same_site == SameSite::None || prefixed) && c.secure != Some(true) {
        problems.push(format!(
            "{at}: SameSite=None and the __Host-/__Secure- prefixes need secure = true (browsers drop such a cookie without Secure)"
        ));
    }
    if c.cookie.starts_with("__Host-") && c.domain.is_some() {
        problems.push(format!("{at}: a __Host- cookie cannot have a domain"));
    }
    if let Some(domain) = &c.domain {
        // Host name labels, an old-style leading dot allowed.
        let labels = domain.strip_prefix('.').unwrap_or(domain);
        let ok = (1..=253).contains(&labels.len())
            && labels.split('.').all(|l| {
                (1..=63).contains(&l.len())
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            problems.push(format!("{at}: domain {domain:?} is not a host name"));
        }
    }
    same_site
}

/// The edge puts its id in the first identifier: a route schema must let it pass.
fn check_routes_pass_id(s: &ServiceSection, at: &str, problems: &mut Vec<String>) {
    let first = s.identifiers.first();
    for route in &s.routes {
        let field = route.fields.iter().find(|f| Some(&f.name) == first);
        let refuses_id = field.is_some_and(|f| {
            !matches!(f.kind, FieldKind::String) || f.max_length.is_some_and(|m| m < 36)
        });
        if refuses_id {
            problems.push(format!(
                "{at}: route {}/{} lists {} as other than a string of at least 36 characters: the edge's ids would be refused",
                route.database,
                route.table,
                first.map_or("", String::as_str)
            ));
        }
    }
}

/// The header a visitor token may come in, if one is set and the edge does not use it itself.
fn header(name: Option<&str>, at: &str, problems: &mut Vec<String>) -> Option<HeaderName> {
    name.and_then(|name| {
        let parsed = HeaderName::try_from(name).ok();
        match parsed {
            Some(h)
                if !RESERVED_HEADERS.contains(&h.as_str()) && !h.as_str().starts_with("sec-") =>
            {
                Some(h)
            }
            _ => {
                problems.push(format!(
                    "{at}: header {name:?} must be a header name the edge does not use itself"
                ));
                None
            }
        }
    })
}

/// The current secret first, then the previous ones; each checked for length.
fn secrets(
    s: &ServiceSection,
    at: &str,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> Vec<Vec<u8>> {
    let c = &s.identity;
    let mut secrets = Vec::new();
    // A name that is not one is never quoted: it may be a secret pasted in the wrong place.
    let names_ok = c
        .secret_env
        .iter()
        .chain(&c.previous_secrets_env)
        .all(|v| env_name(v));
    if !names_ok {
        problems.push(format!(
            "{at}: secret_env and previous_secrets_env take environment variable names ([A-Za-z_][A-Za-z0-9_]*), not secrets"
        ));
        return secrets;
    }
    read_current(s, at, base_dir, problems, &mut secrets);
    for var in &c.previous_secrets_env {
        match std::env::var(var) {
            Ok(v) => secrets.push(v.trim().as_bytes().to_vec()),
            Err(_) => problems.push(format!(
                "{at}: environment variable {var} (previous_secrets_env) is not set"
            )),
        }
    }
    check_secrets(&secrets, at, problems);
    secrets
}

/// `secret_env` or `secret_file`, whichever is set, into `secrets`.
fn read_current(
    s: &ServiceSection,
    at: &str,
    base_dir: &Path,
    problems: &mut Vec<String>,
    secrets: &mut Vec<Vec<u8>>,
) {
    let c = &s.identity;
    let env = ("secret_env", c.secret_env.as_ref());
    let file = ("secret_file", c.secret_file.as_ref());
    match source::read(at, env, file, base_dir, problems) {
        // From the environment: one secret. From a file: the current one, then the previous.
        Picked::Read(bytes) if c.secret_env.is_some() => {
            secrets.push(String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec())
        }
        Picked::Read(bytes) => {
            secrets.extend(
                bytes
                    .split(|&b| b == b'\n')
                    .map(<[u8]>::trim_ascii)
                    .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
                    .map(<[u8]>::to_vec),
            );
            if let (true, Some(file)) = (secrets.is_empty(), &c.secret_file) {
                let path = base_dir.join(file);
                problems.push(format!(
                    "{at}: secret_file {} holds no secret",
                    path.display()
                ));
            }
        }
        Picked::Failed => {}
        Picked::Neither | Picked::Both => problems.push(format!(
            "{at}: set exactly one of secret_env and secret_file (secrets are never inline)"
        )),
    }
}

/// Each secret long enough, and not too many of them.
fn check_secrets(secrets: &[Vec<u8>], at: &str, problems: &mut Vec<String>) {
    // Counted, never printed.
    if let Some(n) = secrets.iter().position(|s| s.len() < MIN_SECRET_BYTES) {
        let which = if n == 0 {
            "the current secret"
        } else {
            "a previous secret"
        };
        problems.push(format!(
            "{at}: {which} is shorter than {MIN_SECRET_BYTES} bytes (make one with `openssl rand -base64 48`)"
        ));
    }
    if secrets.len() > MAX_SECRETS {
        problems.push(format!(
            "{at}: at most {MAX_SECRETS} secrets, current and previous"
        ));
    }
}

fn env_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
