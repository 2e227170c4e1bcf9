//! Route matching on hostile request targets, parsed as pingora parses them: a target reaches
//! a route only when its path is exactly that route's path. Forwarding headers and cookies in
//! the same request are parsed without a panic.
#![no_main]

use http::{HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use p13n_edge::config::Config;
use p13n_edge::event::cookie_value;
use p13n_edge::guard::{ClientPolicy, ForwardedHeader};
use std::sync::OnceLock;

const CONFIG: &str = r#"
[[service]]
name = "shop"
region = "us01"
account_id = "1"
instance_id = "1"
api_key_env = "P13N_EDGE_FUZZ_KEY"
tokens = { web = "1/1/00000000000000000000000000000001" }
[[service.route]]
database = "demo_db"
table = "pageviews"
token = "web"
[[service.route]]
database = "demo_db"
table = "clicks"
public = true
token = "web"
"#;

fn config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| {
        // Safety: set once, before any other thread reads the environment.
        unsafe {
            std::env::set_var(
                "P13N_EDGE_FUZZ_KEY",
                "1/0123456789abcdef0123456789abcdef01234567",
            )
        };
        Config::from_toml(CONFIG, std::path::Path::new("/nonexistent")).expect("fuzz config")
    })
}

fuzz_target!(|data: &[u8]| {
    let config = config();
    if let Ok(uri) = Uri::try_from(data) {
        if let Some(route) = config.route(uri.path()) {
            assert_eq!(route.endpoint.path, uri.path());
            assert!(["/demo_db/pageviews", "/public/demo_db/clicks"].contains(&uri.path()));
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut policy = ClientPolicy {
            trusted_proxies: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..ClientPolicy::default()
        };
        let peer = "127.0.0.1".parse().unwrap();
        let both = [value.clone()];
        let mut headers = http::HeaderMap::new();
        headers.insert("x-forwarded-for", value.clone());
        headers.insert("forwarded", value.clone());
        for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
            policy.forwarded_header = header;
            let _ = policy.client_address(peer, &headers);
        }
        if let Some(id) = cookie_value(both.iter(), "_td") {
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)));
        }
    }
});
