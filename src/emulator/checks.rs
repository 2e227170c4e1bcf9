//! The upstream stand-in's checks of an ingest request, made as the vendor's API makes them:
//! method, path, IP allow list, credentials and token, content type.

use super::{vendor_message, Emulator, Reply};
use http::header;
use pingora::protocols::http::ServerSession;

impl Emulator {
    /// The request may be ingested, or the vendor's answer to it.
    pub(super) fn admit(&self, session: &ServerSession) -> Result<(), Reply> {
        let req = session.req_header();
        if req.method != http::Method::POST {
            return Err(Reply::error(405, 3009, "Unsupported method"));
        }
        if !is_ingest_path(req.uri.path()) {
            return Err(Reply::error(404, 404, "Not Found"));
        }
        if !self.rules.ip_allow.is_empty() {
            let ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string());
            if !ip.is_some_and(|ip| self.rules.ip_allow.contains(&ip)) {
                return Err(Reply::error(
                    400,
                    3005,
                    "Request origin not in IP whitelist",
                ));
            }
        }
        self.check_credentials(session)?;
        let content_type = session
            .get_header(header::CONTENT_TYPE)
            .map(|v| v.as_bytes());
        if content_type != Some(VENDOR_CONTENT_TYPE.as_bytes()) {
            return Err(Reply::error(415, 415, "Unsupported Media Type"));
        }
        Ok(())
    }

    fn check_credentials(&self, session: &ServerSession) -> Result<(), Reply> {
        let auth = session
            .get_header(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let key = auth.and_then(|a| a.strip_prefix("TD1 "));
        let Some((key_account, _)) = key.and_then(|k| k.split_once('/')) else {
            return Err(Reply::error(
                401,
                401,
                "Authentication required: Authorization: TD1 {account_id}/{apikey}",
            ));
        };
        if !self.rules.api_keys.is_empty()
            && !self.rules.api_keys.iter().any(|k| Some(k.as_str()) == key)
        {
            return Err(Reply::error(401, 401, "Invalid API key"));
        }
        let Some(token) = session.get_header("wp13n-token") else {
            return Err(Reply::error(400, 3000, vendor_message(3000)));
        };
        let token = token.to_str().unwrap_or_default();
        let parts: Vec<&str> = token.split('/').collect();
        let well_formed = matches!(parts.as_slice(), [a, i, t]
            if !a.is_empty() && !i.is_empty() && t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()));
        if !well_formed {
            return Err(Reply::error(400, 3003, vendor_message(3003)));
        }
        if parts[0] != key_account {
            return Err(Reply::error(400, 3002, vendor_message(3002)));
        }
        if !self.rules.tokens.is_empty() && !self.rules.tokens.iter().any(|t| t == token) {
            return Err(Reply::error(400, 3001, vendor_message(3001)));
        }
        Ok(())
    }
}

/// The content type the vendor's API requires. The emulator keeps its own copies of the
/// vendor's rules (this, the path form, the error shape) rather than the proxy's, so that a
/// mistake in the proxy's is caught by it instead of agreed with.
const VENDOR_CONTENT_TYPE: &str = "application/vnd.treasuredata.v1+json";

/// `/{db}/{table}` or `/public/{db}/{table}`: the vendor's database and table names are 3 to 128
/// lower-case letters, digits and underscores.
fn is_ingest_path(path: &str) -> bool {
    let name = |s: &str| {
        let chars = s.chars().count();
        (3..=128).contains(&chars) && s.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
    };
    let rest = match path.strip_prefix("/public/") {
        Some(rest) => rest,
        None => match path.strip_prefix('/') {
            Some(rest) => rest,
            None => return false,
        },
    };
    match rest.split_once('/') {
        Some((db, table)) => name(db) && name(table),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_paths() {
        assert!(is_ingest_path("/demo_db/pageviews"));
        assert!(is_ingest_path("/public/demo_db/pageviews"));
        assert!(!is_ingest_path("/demo_db/pageviews/x"));
        assert!(!is_ingest_path("/Demo/pageviews"));
        assert!(!is_ingest_path("/public/demo_db"));
        assert!(!is_ingest_path("//demo_db/pageviews"));
        assert!(is_ingest_path("/public_db/pageviews"));
        assert!(!is_ingest_path("/ab/pageviews"));
        assert!(!is_ingest_path(&format!("/{}/pageviews", "a".repeat(129))));
        assert!(!is_ingest_path("demo_db/pageviews"));
    }
}
