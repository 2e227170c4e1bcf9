//! Signed visitor ids (`[service.identity] mode = "signed-cookie"`): the edge, not the body,
//! says who the visitor is. It issues a first-party cookie holding a random visitor id and an
//! HMAC-SHA256 tag over it; a request is that cookie's visitor and no other, so an event that
//! names someone else in its body cannot read their offers.
//!
//! A token is `1.{id}.{issued}.{tag}`: format version, a UUIDv4, the issue time in Unix
//! seconds, and base64url(HMAC-SHA256(secret, "p13n-edge visitor 1.{id}.{issued}")). The id is
//! not secret (it goes upstream as the visitor's identifier); the tag proves the edge made it.
//! Tags are checked with `ring::hmac::verify`, in constant time, under the current secret and
//! then each previous one, so a secret rotates without logging visitors out: a token made with
//! a previous secret is accepted, and re-issued under the current one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderMap, HeaderName, COOKIE};
use http::HeaderValue;
use ring::hmac;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Shortest secret accepted, in bytes: HMAC-SHA256's own output size.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest cookie lifetime browsers keep (RFC 6265bis caps Max-Age at 400 days).
pub const MAX_AGE_LIMIT: Duration = Duration::from_secs(400 * 86_400);
/// A token dated this far in the future is refused (clock skew between instances).
const FUTURE_SKEW_SECS: u64 = 300;
/// Longest token read; a real one is 93 bytes.
const MAX_TOKEN: usize = 128;
/// Most cookies of the name looked at in one request (each costs up to one HMAC per secret).
const MAX_COOKIES: usize = 4;
const VERSION: &str = "1";
const CONTEXT: &[u8] = b"p13n-edge visitor 1.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

/// What happens to an event whose body names a visitor other than the cookie's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyIdentifier {
    /// The body's identifiers are replaced by the cookie's id (the default).
    Overwrite,
    /// The event is refused (403).
    Refuse,
}

/// One service's signing keys and cookie attributes, built from the config.
pub struct IdentityPolicy {
    pub cookie: String,
    /// The current key first, then the previous ones still accepted.
    keys: Vec<hmac::Key>,
    /// `Some(flag)` sets `Secure` always or never; `None` sets it on TLS connections.
    pub secure: Option<bool>,
    pub same_site: SameSite,
    pub domain: Option<String>,
    pub max_age: Duration,
    pub refresh_after: Duration,
    pub body_identifier: BodyIdentifier,
    /// A request header carrying a token, for server-to-server callers.
    pub header: Option<HeaderName>,
}

impl fmt::Debug for IdentityPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys.
        f.debug_struct("IdentityPolicy")
            .field("cookie", &self.cookie)
            .field("keys", &self.keys.len())
            .field("same_site", &self.same_site)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

/// Who the request's visitor is, and the cookie to send back, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visitor {
    pub id: String,
    pub set_cookie: Option<HeaderValue>,
    pub outcome: Outcome,
}

/// How the visitor was found, for `p13n_edge_visitor_ids_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A valid cookie, sent back unchanged.
    Valid,
    /// A valid cookie, re-issued: older than `refresh_after`, or made with a previous secret.
    Refreshed,
    /// No cookie: a new visitor.
    Minted,
    /// A cookie that did not verify (forged, expired, another secret): a new visitor.
    Replaced,
    /// A valid token in the configured header (server-to-server).
    Header,
    /// Cookies of the name naming different visitors (one was planted): a new visitor.
    Conflict,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::Refreshed => "refreshed",
            Outcome::Minted => "minted",
            Outcome::Replaced => "replaced",
            Outcome::Header => "header",
            Outcome::Conflict => "conflict",
        }
    }
}

/// A header token that does not verify: the caller is told, not given a new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHeaderToken;

/// A token that verified: its id and issue time, and whether the current key made it.
struct Verified<'a> {
    id: &'a str,
    issued: u64,
    current_key: bool,
}

impl IdentityPolicy {
    /// `secrets`: the current one first. Each must be at least `MIN_SECRET_BYTES` long (the
    /// config checks; this only builds).
    pub fn new(secrets: &[Vec<u8>], cookie: String) -> Self {
        IdentityPolicy {
            cookie,
            keys: secrets
                .iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s))
                .collect(),
            secure: None,
            same_site: SameSite::Lax,
            domain: None,
            max_age: Duration::from_secs(365 * 86_400),
            refresh_after: Duration::from_secs(7 * 86_400),
            body_identifier: BodyIdentifier::Overwrite,
            header: None,
        }
    }

    /// The request's visitor, at `now`. `tls`: whether the request came over TLS.
    pub fn visitor(
        &self,
        headers: &HeaderMap,
        tls: bool,
        now: SystemTime,
    ) -> Result<Visitor, BadHeaderToken> {
        let now = unix_seconds(now);
        if let Some(name) = &self.header {
            if let Some(value) = headers.get(name) {
                let token = value.to_str().map_err(|_| BadHeaderToken)?;
                let verified = self.verify(token.trim(), now).ok_or(BadHeaderToken)?;
                let id = verified.id.to_string();
                // A server relaying the visitor's cookie relays the renewed one back.
                let set_cookie = self
                    .due(&verified, now)
                    .then(|| self.set_cookie(&id, now, tls));
                return Ok(Visitor {
                    id,
                    set_cookie,
                    outcome: Outcome::Header,
                });
            }
        }
        let (chosen, conflict, seen) = self.verified_cookie(headers, now);
        if let Some(verified) = chosen.filter(|_| !conflict) {
            let id = verified.id.to_string();
            if !self.due(&verified, now) {
                return Ok(Visitor {
                    id,
                    set_cookie: None,
                    outcome: Outcome::Valid,
                });
            }
            return Ok(Visitor {
                set_cookie: Some(self.set_cookie(&id, now, tls)),
                id,
                outcome: Outcome::Refreshed,
            });
        }
        let id = new_id();
        Ok(Visitor {
            set_cookie: Some(self.set_cookie(&id, now, tls)),
            id,
            outcome: match (conflict, seen) {
                (true, _) => Outcome::Conflict,
                (false, true) => Outcome::Replaced,
                (false, false) => Outcome::Minted,
            },
        })
    }

    /// The verified token of the request's cookies of the name; whether valid ones named
    /// different ids; whether there was any cookie of the name.
    fn verified_cookie<'a>(
        &'a self,
        headers: &'a HeaderMap,
        now: u64,
    ) -> (Option<Verified<'a>>, bool, bool) {
        // A browser may send several cookies of the name (one per path or domain). Ours are
        // set for `Path=/` on one domain, so more than one valid id means one was planted (by
        // a sibling host, or a page's script with a longer path): no side is taken, and the
        // visitor starts afresh rather than risk becoming the planter's.
        let (mut seen, mut conflict) = (false, false);
        let mut chosen: Option<Verified<'_>> = None;
        for token in cookie_values(headers, &self.cookie).take(MAX_COOKIES) {
            seen = true;
            let Some(verified) = self.verify(token, now) else {
                continue;
            };
            match &chosen {
                None => chosen = Some(verified),
                Some(first) => conflict |= first.id != verified.id,
            }
        }
        (chosen, conflict, seen)
    }

    /// Whether a valid token is re-issued: made with a previous secret, or old.
    fn due(&self, verified: &Verified<'_>, now: u64) -> bool {
        !verified.current_key || now.saturating_sub(verified.issued) >= self.refresh_after.as_secs()
    }

    /// Whether the request carries a cookie of the name, valid or not.
    pub fn has_cookie(&self, headers: &HeaderMap) -> bool {
        cookie_values(headers, &self.cookie).next().is_some()
    }

    /// A `Set-Cookie` that removes the visitor's cookie (consent withdrawn).
    pub fn removal(&self, tls: bool) -> HeaderValue {
        self.cookie_header("", 0, tls)
    }

    /// A token for `id` issued at `now` (Unix seconds), under the current key.
    pub fn token(&self, id: &str, now: u64) -> String {
        let mut issued = itoa::Buffer::new();
        let issued = issued.format(now);
        let tag = hmac::sign(&self.keys[0], &signed_text(id, issued));
        let mut out = String::with_capacity(MAX_TOKEN);
        for part in [VERSION, ".", id, ".", issued, "."] {
            out.push_str(part);
        }
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut out);
        out
    }

    fn verify<'a>(&self, token: &'a str, now: u64) -> Option<Verified<'a>> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let mut parts = token.split('.');
        let (version, id, issued_text, tag) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != VERSION || parts.next().is_some() || !id_form(id) {
            return None;
        }
        let issued: u64 = issued_text.parse().ok()?;
        if issued > now + FUTURE_SKEW_SECS || now.saturating_sub(issued) > self.max_age.as_secs() {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let text = signed_text(id, issued_text);
        let index = self
            .keys
            .iter()
            .position(|key| hmac::verify(key, &text, &tag).is_ok())?;
        Some(Verified {
            id,
            issued,
            current_key: index == 0,
        })
    }

    fn set_cookie(&self, id: &str, now: u64, tls: bool) -> HeaderValue {
        self.cookie_header(&self.token(id, now), self.max_age.as_secs(), tls)
    }

    fn cookie_header(&self, token: &str, max_age: u64, tls: bool) -> HeaderValue {
        let mut value = String::with_capacity(256);
        for part in [&self.cookie, "=", token, "; Path=/; Max-Age="] {
            value.push_str(part);
        }
        value.push_str(itoa::Buffer::new().format(max_age));
        if let Some(domain) = &self.domain {
            value.push_str("; Domain=");
            value.push_str(domain);
        }
        value.push_str("; HttpOnly");
        if self.secure.unwrap_or(tls) {
            value.push_str("; Secure");
        }
        value.push_str(match self.same_site {
            SameSite::Lax => "; SameSite=Lax",
            SameSite::Strict => "; SameSite=Strict",
            SameSite::None => "; SameSite=None",
        });
        // Every part is checked ASCII (the config checks names and domains; the rest is ours).
        HeaderValue::from_str(&value).expect("a Set-Cookie value of checked ASCII")
    }
}

fn signed_text(id: &str, issued: &str) -> Vec<u8> {
    let mut text = Vec::with_capacity(CONTEXT.len() + id.len() + issued.len() + 1);
    text.extend_from_slice(CONTEXT);
    text.extend_from_slice(id.as_bytes());
    text.push(b'.');
    text.extend_from_slice(issued.as_bytes());
    text
}

/// The values of every cookie named `name`, in the order sent.
fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// A minted id's form: 36 characters of lower-case hex and dashes.
fn id_form(id: &str) -> bool {
    id.len() == 36
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-')
}

/// A random UUIDv4 from the operating system's generator (never a predictable one: the id
/// names the visitor's profile upstream).
fn new_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random generator works");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(HEX[usize::from(b >> 4)] as char);
        id.push(HEX[usize::from(b & 0xf)] as char);
    }
    id
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
