//! Which browser origins may call a route. Allowed
//! origins are exact (`https://shop.example.com`) or subdomain patterns
//! (`https://*.example.com`); the exact `Origin` is echoed, never `*`, so that the vendor SDK's
//! credentialed `fetch` works.

use http::HeaderValue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Exact(String),
    /// `scheme://*.suffix[:port]`: any host ending in `.suffix`, one label or more before it.
    Subdomain {
        scheme: String,
        suffix: String,
        port: Option<u16>,
    },
}

#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    /// Empty: CORS is off for the service (no headers, no origin check).
    pub origins: Vec<OriginPattern>,
    pub allow_no_origin: bool,
    pub max_age_seconds: u64,
}

/// The outcome of the origin check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginCheck {
    /// The service has no CORS policy.
    NotConfigured,
    /// A call without `Origin`, allowed by the policy (server to server).
    NoOrigin,
    /// An allowed origin, to echo.
    Allowed(HeaderValue),
    Refused,
}

/// `scheme://host[:port]` split, lowercased; `None` for anything else (paths, userinfo, `null`).
fn split_origin(origin: &str) -> Option<(String, String, Option<u16>)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https")
        || rest.is_empty()
        || rest.contains(['/', '@', '?', '#', ' '])
    {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !rest.ends_with(']') => (host, Some(port.parse().ok()?)),
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

impl OriginPattern {
    /// Parse a configured origin; `None` when it is not `http(s)://host[:port]` or
    /// `http(s)://*.domain[:port]`.
    pub fn parse(text: &str) -> Option<OriginPattern> {
        let (scheme, host, port) = split_origin(text)?;
        match host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') && suffix.contains('.') => {
                Some(OriginPattern::Subdomain {
                    scheme,
                    suffix: format!(".{suffix}"),
                    port,
                })
            }
            Some(_) => None,
            None if host.contains('*') => None,
            None => Some(OriginPattern::Exact(serialize(&scheme, &host, port))),
        }
    }

    fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        match self {
            OriginPattern::Exact(origin) => *origin == serialize(scheme, host, port),
            OriginPattern::Subdomain {
                scheme: s,
                suffix,
                port: p,
            } => {
                s == scheme
                    && *p == port
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && !host[..host.len() - suffix.len()].ends_with('.')
            }
        }
    }
}

fn serialize(scheme: &str, host: &str, port: Option<u16>) -> String {
    match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

impl CorsPolicy {
    pub fn check(&self, origin: Option<&HeaderValue>) -> OriginCheck {
        if self.origins.is_empty() {
            return OriginCheck::NotConfigured;
        }
        let Some(origin) = origin else {
            return if self.allow_no_origin {
                OriginCheck::NoOrigin
            } else {
                OriginCheck::Refused
            };
        };
        let allowed =
            origin
                .to_str()
                .ok()
                .and_then(split_origin)
                .is_some_and(|(scheme, host, port)| {
                    self.origins.iter().any(|p| p.matches(&scheme, &host, port))
                });
        if allowed {
            OriginCheck::Allowed(origin.clone())
        } else {
            OriginCheck::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str]) -> CorsPolicy {
        CorsPolicy {
            origins: origins
                .iter()
                .map(|o| OriginPattern::parse(o).unwrap())
                .collect(),
            allow_no_origin: false,
            max_age_seconds: 600,
        }
    }

    fn check(p: &CorsPolicy, origin: &str) -> bool {
        matches!(
            p.check(Some(&HeaderValue::from_str(origin).unwrap())),
            OriginCheck::Allowed(_)
        )
    }

    #[test]
    fn exact_and_subdomain_origins() {
        let p = policy(&["http://localhost:3000", "https://*.example.com"]);
        assert!(check(&p, "http://localhost:3000"));
        assert!(check(&p, "HTTP://LocalHost:3000"));
        assert!(check(&p, "https://shop.example.com"));
        assert!(check(&p, "https://a.b.example.com"));
        for refused in [
            "http://localhost:3001",
            "http://localhost",
            "https://localhost:3000",
            "https://example.com",
            "https://evil-example.com",
            "https://example.com.evil.net",
            "http://shop.example.com",
            "https://shop.example.com:8443",
            "https://.example.com",
            "null",
            "https://shop.example.com/path",
            "https://user@shop.example.com",
        ] {
            assert!(!check(&p, refused), "{refused}");
        }
        assert_eq!(p.check(None), OriginCheck::Refused);
        assert_eq!(
            CorsPolicy::default().check(None),
            OriginCheck::NotConfigured
        );
    }

    #[test]
    fn patterns_are_validated() {
        for bad in [
            "localhost:3000",
            "ftp://x.com",
            "https://*",
            "https://*.com",
            "https://a.*.com",
            "https://x.com/",
            "*",
        ] {
            assert!(OriginPattern::parse(bad).is_none(), "{bad}");
        }
    }
}
