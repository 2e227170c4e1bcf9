//! Configuration: the TOML file (`file`), its validation into the internal `Config`
//! (`validate`), and the secrets it loads (`secret`).

mod credentials;
mod defaults;
mod destinations;
mod file;
mod identity;
mod policy;
mod reload;
mod service;
mod shared;
mod source;
mod tls;
mod validate;

pub(crate) use crate::secret::redact_text;
pub use crate::secret::Secret;
pub use crate::shared::SharedSettings;
pub use destinations::InForce;
pub use file::FileConfig;
pub use reload::{catch_hangups, reload, Reloader};
pub use tls::{CertFromConfig, TlsListener};
pub use validate::{names_ok, overlap, same_socket};

use crate::cache::CacheLimits;
use crate::guard::rate::BucketSpec;
use crate::guard::{ClientPolicy, CorsPolicy};
use crate::spool::SpoolSettings;
use crate::upstream::{CallPolicy, Endpoint};
pub use crate::upstream::{Timeouts, UpstreamTarget};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Every problem found in a config file, in file order. Built only through `redacted`, so that
/// no message carries a key or a token, whichever check wrote it.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

impl ConfigErrors {
    /// `problems` with every key-shaped or token-shaped text, and every value of `known`,
    /// replaced by `***`.
    pub(crate) fn redacted(problems: Vec<String>, known: &[Secret]) -> ConfigErrors {
        ConfigErrors(
            problems
                .iter()
                .map(|p| crate::secret::redact_text(p, known))
                .collect(),
        )
    }
}

/// The validated configuration. Built once per load or reload; shared behind `arc-swap`.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The TLS (and HTTP/2) public listener, if any.
    pub tls: Option<TlsListener>,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub upgrade_sock: String,
    pub pid_file: String,
    pub max_body_bytes: usize,
    pub max_upstream_body_bytes: usize,
    pub max_header_bytes: usize,
    pub timeouts: Timeouts,
    pub clients: ClientPolicy,
    pub rate: RateLimits,
    /// CAs for `https` upstreams instead of the system roots.
    pub ca_file: Option<String>,
    /// How calls travel to upstreams.
    pub protocol: crate::upstream::Protocol,
    pub cache: CacheLimits,
    pub spool: SpoolSettings,
    pub access_log: bool,
    /// The Valkey/Redis tier shared by every instance, if any. Read at start.
    pub shared: Option<SharedSettings>,
    pub services: Vec<Arc<Service>>,
    /// Exact request path (`/db/table` or `/public/db/table`) to its route.
    /// Looked up by each request's path: ahash, randomly keyed.
    pub routes: HashMap<String, Arc<Route>, ahash::RandomState>,
}

/// Token buckets; `None` is off.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    pub per_address: Option<BucketSpec>,
    pub per_identifier: Option<BucketSpec>,
    pub max_tracked: usize,
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    /// The name, shared by the cache keys of this service's visitors.
    pub id: Arc<str>,
    pub upstream: UpstreamTarget,
    pub account_id: String,
    pub instance_id: String,
    pub api_key: Secret,
    pub identifiers: Vec<String>,
    /// Cookie read for the first identifier when the body has none.
    pub identifier_cookie: Option<String>,
    /// Whether events without a `uuid` get one (see `event::UUID_FIELD`).
    pub event_uuid: bool,
    pub tokens: Vec<(String, Secret)>,
    /// The secret parts of the key and of every token, lower-cased: what is scrubbed out of
    /// the upstream's answers (each route's `Endpoint::scrub`).
    pub secret_parts: Vec<Secret>,
    pub policy: CallPolicy,
    pub cache: CachePolicy,
    pub cors: CorsPolicy,
    /// Crawlers answered without a call.
    pub bots: crate::guard::BotFilter,
    /// Events of visitors without consent are answered without a call.
    pub consent: crate::guard::ConsentPolicy,
    /// Signed-cookie mode: the edge names the visitor. `None`: the body does.
    pub identity: Option<Arc<crate::guard::IdentityPolicy>>,
}

/// How a service uses the offer cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Off,
    PassThrough,
    Fast,
}

#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    pub mode: CacheMode,
    pub fresh: Duration,
    pub stale: Duration,
    pub background_deadline: Duration,
    /// Past this, the service's spool lane lags.
    pub max_lag: Duration,
    /// While it lags, fast-mode hits of visitors with nothing queued go upstream at once.
    pub pass_through_on_lag: bool,
}

#[derive(Debug)]
pub struct Route {
    pub service: Arc<Service>,
    /// What decides an answer besides the visitor: `{account}/{database}/{table}/{token name}`.
    /// Cache keys and spooled records carry it: `/db/t` and `/public/db/t` with one token share
    /// answers, and replay sends a record only to a route of the same identity.
    pub id: Arc<str>,
    pub database: String,
    pub table: String,
    pub public: bool,
    /// Its upstream side: path, credentials, target, policy, metric series.
    pub endpoint: Arc<Endpoint>,
    /// The fields its events may carry, when it has a schema.
    pub schema: Option<crate::schema::Schema>,
}

impl Config {
    /// Read, parse and validate a config file. Every problem is reported together.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::redacted(vec![format!("{}: {e}", path.display())], &[]))?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base_dir)
    }

    /// Parse and validate TOML text; relative key files resolve against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        let mut unknown = Vec::new();
        let de = toml::Deserializer::new(text);
        let file: FileConfig =
            serde_ignored::deserialize(de, |path| unknown.push(format!("unknown key `{path}`")))
                .map_err(|e| ConfigErrors::redacted(vec![parse_error(&e, text)], &[]))?;
        validate::build(file, base_dir, unknown)
    }

    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.get(path)
    }
}

/// The admin listener's address from a config file, reading its `[admin]` table only: no key
/// or token file is opened and nothing else is validated, so that `p13n-edge probe` works
/// where the secrets are not readable (and never quotes one).
pub fn admin_listen(path: &Path) -> Result<SocketAddr, ConfigErrors> {
    #[derive(serde::Deserialize)]
    struct AdminOnly {
        #[serde(default)]
        admin: file::AdminSection,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::redacted(vec![e.to_string()], &[]))?;
    let only: AdminOnly = toml::from_str(&text)
        .map_err(|e| ConfigErrors::redacted(vec![parse_error(&e, &text)], &[]))?;
    let listen = only.admin.listen;
    listen.parse().map_err(|_| {
        ConfigErrors::redacted(
            vec![format!(
                "admin.listen: {listen:?} is not an ip:port address"
            )],
            &[],
        )
    })
}

/// Where and what, but not the source line: toml's `Display` quotes it, and on a `[service.tokens]`
/// line that is a token. serde's "invalid type/value" messages quote the value: it is dropped too.
fn parse_error(e: &toml::de::Error, text: &str) -> String {
    let message = without_value(e.message().trim());
    let Some(span) = e.span() else {
        return message;
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    format!("TOML error at line {line}, column {column}: {message}")
}

/// `invalid type: integer `5`, expected a string` becomes `invalid type: integer, expected a
/// string`.
fn without_value(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let (unexpected, expected) = rest.split_once(", expected").unwrap_or((rest, ""));
        let kind = unexpected
            .split(['`', '"', '\''])
            .next()
            .unwrap_or_default();
        let expected = if expected.is_empty() {
            String::new()
        } else {
            format!(", expected{expected}")
        };
        return format!("{prefix}{}{expected}", kind.trim());
    }
    message.to_string()
}
