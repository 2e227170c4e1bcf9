//! Consent, per service: a visitor who sent `Sec-GPC: 1` (when the service honours Global
//! Privacy Control), or who lacks the consent cookie the site sets (when one is required), has
//! not consented. Their event is read, then answered with the vendor's "200 without payload":
//! not forwarded, not spooled, not cached.

use http::HeaderMap;

#[derive(Debug, Clone, Default)]
pub struct ConsentPolicy {
    pub honor_gpc: bool,
    /// The cookie and the value it must have.
    pub cookie: Option<(String, String)>,
}

/// Why a request has no consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoConsent {
    Gpc,
    NoCookie,
}

impl NoConsent {
    /// A bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            NoConsent::Gpc => "gpc",
            NoConsent::NoCookie => "no_cookie",
        }
    }
}

impl ConsentPolicy {
    pub fn check(&self, headers: &HeaderMap) -> Result<(), NoConsent> {
        // A balancer may fold repeated headers into one: `1, 1`.
        let gpc = headers
            .get_all("sec-gpc")
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|v| v.trim_ascii() == b"1");
        if self.honor_gpc && gpc {
            return Err(NoConsent::Gpc);
        }
        if let Some((name, value)) = &self.cookie {
            // Every cookie of that name must say yes: a stale domain-wide `yes` beside a newer
            // host-only `no` is a withdrawal, whichever the browser sends first.
            let mut given = headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|h| h.to_str().ok())
                .flat_map(|h| h.split(';'))
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k.trim() == name).then(|| v.trim().trim_matches('"'))
                })
                .peekable();
            if given.peek().is_none() || !given.all(|v| v == value) {
                return Err(NoConsent::NoCookie);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn gpc_and_the_cookie_decide_only_when_the_service_asks() {
        let none = ConsentPolicy::default();
        assert_eq!(none.check(&headers(&[("sec-gpc", "1")])), Ok(()));
        let gpc = ConsentPolicy {
            honor_gpc: true,
            cookie: None,
        };
        assert_eq!(
            gpc.check(&headers(&[("sec-gpc", "1")])),
            Err(NoConsent::Gpc)
        );
        assert_eq!(gpc.check(&headers(&[("sec-gpc", "0")])), Ok(()));
        assert_eq!(gpc.check(&headers(&[])), Ok(()));
        let cookie = ConsentPolicy {
            honor_gpc: false,
            cookie: Some(("consent".into(), "yes".into())),
        };
        assert_eq!(cookie.check(&headers(&[])), Err(NoConsent::NoCookie));
        assert_eq!(
            cookie.check(&headers(&[("cookie", "a=b; consent=no")])),
            Err(NoConsent::NoCookie)
        );
        assert_eq!(
            cookie.check(&headers(&[("cookie", "a=b; consent=yes")])),
            Ok(())
        );
        for both in ["consent=yes; consent=no", "consent=no; consent=yes"] {
            assert_eq!(
                cookie.check(&headers(&[("cookie", both)])),
                Err(NoConsent::NoCookie)
            );
        }
        assert_eq!(
            gpc.check(&headers(&[("sec-gpc", "1, 1")])),
            Err(NoConsent::Gpc)
        );
    }
}
