//! Secrets (API keys, personalization tokens): held in a newtype that never prints itself, and
//! scrubbed out of text that may carry one (config errors, upstream answers).
//!
//! A key is `{account}/{40 hex}` and a token `{account}/{instance}/{32 hex}`: the account and
//! instance are ids found in the config anyway, so the secret part is a run of 32 or more hex
//! digits. Scrubbing replaces such runs, which also catches a secret written without its
//! prefix, in upper case, or with its `/` escaped as `\/` in JSON.

use bytes::Bytes;
use std::fmt;
use std::sync::Arc;

/// What a scrubbed secret becomes.
pub const REDACTED: &str = "***";
/// The shortest secret part: a token's 32 hex digits.
const SECRET_HEX: usize = 32;

/// A secret string. `Debug` and `Display` print `***`, so a secret cannot leak through a
/// `{:?}` in a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret's text. Call sites are few and easy to audit: header building only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The part that is secret: the hex after the last `/`, lower-cased (ids are not secret).
    pub fn secret_part(&self) -> Secret {
        let tail = self.0.rsplit('/').next().unwrap_or_default();
        Secret::new(tail.to_ascii_lowercase())
    }
}

/// `text` with every run of 32 or more hex digits, and every one of `known` (each at least 8
/// bytes), replaced by `***`: what an error message may print of a config.
pub fn redact_text(text: &str, known: &[Secret]) -> String {
    let mut text = text.to_string();
    for secret in known {
        let value = secret.expose();
        if value.len() >= 8 && text.contains(value) {
            text = text.replace(value, REDACTED);
        }
    }
    match scrub_hex_runs(text.as_bytes(), |_| true) {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => text,
    }
}

/// `body` with the runs of 32 or more hex digits that `secret(run)` picks replaced by `***`;
/// `None` when none is picked (the common case: the body goes on uncopied).
pub fn scrub(body: &[u8], secret: impl Fn(&[u8]) -> bool) -> Option<Bytes> {
    scrub_hex_runs(body, secret).map(Bytes::from)
}

/// Whether a hex run contains one of `known`'s secret parts, in any case.
pub fn contains_secret(run: &[u8], known: &[Secret]) -> bool {
    let run = run.to_ascii_lowercase();
    known
        .iter()
        .map(Secret::expose)
        .any(|k| k.len() >= SECRET_HEX && run.windows(k.len()).any(|w| w == k.as_bytes()))
}

/// Every upstream answer passes here, so it looks at one byte in `SECRET_HEX` where it can: a
/// run of that many hex digits starting at or after `i` must cover byte `i + SECRET_HEX - 1`,
/// so when that byte is not a hex digit the scan jumps past it. Only a hex digit there is
/// widened into its whole run.
fn scrub_hex_runs(bytes: &[u8], secret: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let hex = |i: usize| bytes[i].is_ascii_hexdigit();
    let mut out: Option<Vec<u8>> = None;
    let (mut copied, mut i) = (0, 0);
    while i + SECRET_HEX <= bytes.len() {
        let probe = i + SECRET_HEX - 1;
        if !hex(probe) {
            i = probe + 1;
            continue;
        }
        // Bytes before `i` were seen: the one at `i - 1`, if any, ends a run or is not hex.
        let mut start = probe;
        while start > i && hex(start - 1) {
            start -= 1;
        }
        i = probe + 1;
        while i < bytes.len() && hex(i) {
            i += 1;
        }
        if i - start >= SECRET_HEX && secret(&bytes[start..i]) {
            let out = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
            out.extend_from_slice(&bytes[copied..start]);
            out.extend_from_slice(REDACTED.as_bytes());
            copied = i;
        }
    }
    let mut out = out?;
    out.extend_from_slice(&bytes[copied..]);
    Some(out)
}

/// Inline tokens are read straight into a `Secret`, so that not even a `Debug` of the file's
/// types shows one.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        String::deserialize(de).map(Secret::new)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new("1/0123456789abcdef0123456789abcdef01234567");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert!(s.expose().starts_with("1/"));
    }

    const KEY: &str = "1/0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn text_loses_every_hex_run_and_every_known_value() {
        let known = [Secret::new("short-but-known")];
        let text = format!(
            "key {KEY}, upper 1/{}, known short-but-known",
            &KEY[2..].to_uppercase()
        );
        assert_eq!(
            redact_text(&text, &known),
            "key 1/***, upper 1/***, known ***"
        );
        assert_eq!(redact_text("line 3: deadbeef", &[]), "line 3: deadbeef");
    }

    /// The maximal runs of at least `SECRET_HEX` hex digits, found one byte at a time.
    fn runs_by_every_byte(bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .split(|b| !b.is_ascii_hexdigit())
            .filter(|run| run.len() >= SECRET_HEX)
            .map(<[u8]>::to_vec)
            .collect()
    }

    proptest::proptest! {
        /// The scan that skips ahead is offered exactly the runs a byte-by-byte scan finds, and
        /// redacts each one picked.
        #[test]
        fn skipping_ahead_misses_no_run(
            parts in proptest::collection::vec((0usize..70, proptest::sample::select(vec![b'"', b' ', b'x', b'/'])), 0..12)
        ) {
            let mut body = Vec::new();
            for (n, (run, sep)) in parts.iter().enumerate() {
                body.extend((0..*run).map(|k| b"0123456789abcdefABCDEF"[(k + n) % 22]));
                body.push(*sep);
            }
            // Half the bodies end in a run.
            if parts.len() % 2 == 1 {
                body.pop();
            }
            let seen = std::cell::RefCell::new(Vec::new());
            let scrubbed = scrub_hex_runs(&body, |run| {
                seen.borrow_mut().push(run.to_vec());
                true
            });
            let runs = runs_by_every_byte(&body);
            proptest::prop_assert_eq!(&*seen.borrow(), &runs);
            let redacted = scrubbed.unwrap_or_else(|| body.clone());
            proptest::prop_assert!(runs_by_every_byte(&redacted).is_empty());
        }
    }

    #[test]
    fn bodies_lose_only_picked_runs() {
        let key = Secret::new(KEY);
        let known = [key.secret_part()];
        let body = Bytes::from(format!(
            r#"{{"m":"1\/{}","id":"{}"}}"#,
            &KEY[2..],
            "f".repeat(32)
        ));
        let scrubbed = scrub(&body, |run| contains_secret(run, &known)).unwrap();
        assert_eq!(
            &scrubbed[..],
            format!(r#"{{"m":"1\/***","id":"{}"}}"#, "f".repeat(32)).as_bytes()
        );
        assert!(scrub(b"{\"offers\":{}}", |_| true).is_none());
        assert_eq!(
            &scrub(&body, |_| true).unwrap()[..],
            br#"{"m":"1\/***","id":"***"}"#
        );
    }
}
