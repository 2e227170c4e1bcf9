//! What a call needs to know of its route, as plain types the upstream owns: where it goes
//! (`UpstreamTarget`), with which timeouts, path, credentials and policy (`Endpoint`). The
//! config builds them; nothing here reads the config.

use super::{CallPolicy, DnsPolicy};
use crate::metrics::RouteSeries;
use crate::secret::Secret;
use http::HeaderValue;
use std::time::Duration;

/// Where a service's calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `Host` header value: the host, with the port when it is not the scheme's default.
    pub authority: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub upstream: Duration,
    pub client_body: Duration,
    pub client_header: Duration,
    pub client_idle: Duration,
    pub upstream_idle: Duration,
    pub dns: DnsPolicy,
}

/// One route's upstream side: every call on the route, live or replayed, is made from it.
#[derive(Debug)]
pub struct Endpoint {
    /// The service's name: its metric label, retry budget and quota.
    pub service: String,
    pub target: UpstreamTarget,
    pub policy: CallPolicy,
    /// The upstream path, identical to the public path.
    pub path: String,
    /// `db/table` (with a `public/` prefix when public): a bounded metric label.
    pub label: String,
    /// The token's name in the config, for logs and metrics (never its value).
    pub token_name: String,
    /// `TD1 {key}`, marked sensitive.
    pub authorization: HeaderValue,
    /// The route's token, marked sensitive.
    pub token: HeaderValue,
    /// The secret parts of the service's key and of every token, lower-cased: what is
    /// scrubbed out of the upstream's answers (`Endpoint::scrub`).
    pub secret_parts: Vec<Secret>,
    /// The route's metric series, resolved once.
    pub series: RouteSeries,
    /// 16 hex digits of a digest of what the route calls with (credentials, upstream): answers
    /// kept by another process under other ones are not this route's (`shared` keys hold it).
    pub fingerprint: String,
}

impl Endpoint {
    /// The `fingerprint` of a route with these credentials and target.
    pub fn fingerprint_of(
        authorization: &HeaderValue,
        token: &HeaderValue,
        target: &UpstreamTarget,
    ) -> String {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            &b"p13n-edge endpoint 1"[..],
            authorization.as_bytes(),
            token.as_bytes(),
            target.authority.as_bytes(),
            if target.tls { b"tls" } else { b"plain" },
        ] {
            digest.update(itoa::Buffer::new().format(part.len()).as_bytes());
            digest.update(b":");
            digest.update(part);
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        digest.finish().as_ref()[..8]
            .iter()
            .flat_map(|b| {
                [
                    HEX[usize::from(b >> 4)] as char,
                    HEX[usize::from(b & 0xf)] as char,
                ]
            })
            .collect()
    }

    /// `body` without this service's credentials. With `any_secret`, every key- or token-shaped
    /// run goes too, whoever's it is: for error answers, which have no business quoting one.
    /// `None` when nothing was found: the body goes on untouched, uncopied.
    pub fn scrub(&self, body: &[u8], any_secret: bool) -> Option<bytes::Bytes> {
        crate::secret::scrub(body, |run| {
            any_secret || crate::secret::contains_secret(run, &self.secret_parts)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_changes_with_any_credential_or_the_target() {
        let target = UpstreamTarget {
            tls: true,
            host: "us01.p13n.in.treasuredata.com".into(),
            port: 443,
            authority: "us01.p13n.in.treasuredata.com".into(),
        };
        let key = HeaderValue::from_static("TD1 1/aaaa");
        let token = HeaderValue::from_static("1/1/bbbb");
        let base = Endpoint::fingerprint_of(&key, &token, &target);
        assert_eq!(base.len(), 16);
        assert_eq!(base, Endpoint::fingerprint_of(&key, &token, &target));
        let other_token = HeaderValue::from_static("1/1/bbbc");
        let other_key = HeaderValue::from_static("TD1 1/aaab");
        let eu = UpstreamTarget {
            authority: "eu01.p13n.in.treasuredata.com".into(),
            ..target.clone()
        };
        for other in [
            Endpoint::fingerprint_of(&key, &other_token, &target),
            Endpoint::fingerprint_of(&other_key, &token, &target),
            Endpoint::fingerprint_of(&key, &token, &eu),
        ] {
            assert_ne!(other, base);
        }
    }
}
