//! A `[[service]]` as written: its credentials' sources, policies, routes and their schemas.
//! `conf/p13n-edge.toml` documents every field here.

use crate::config::defaults::*;
use crate::config::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
pub struct CorsSection {
    /// Exact origins (`https://shop.example.com`) or subdomain patterns (`https://*.example.com`).
    /// Empty (the default): CORS is off for the service, and `Origin` is not checked.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Whether calls without `Origin` (server to server) are allowed when origins are listed.
    #[serde(default = "default_true")]
    pub allow_no_origin: bool,
    /// `Access-Control-Max-Age` of preflight answers.
    #[serde(default = "default_max_age")]
    pub max_age_seconds: u64,
}

#[derive(Debug, Deserialize)]
pub struct ServiceCacheSection {
    /// `pass-through` (always call the upstream, serve stale on failure), `fast` (answer a fresh
    /// entry at once, deliver the event in the background) or `off`.
    #[serde(default = "default_cache_mode")]
    pub mode: String,
    /// An entry younger than this is fresh.
    #[serde(default = "default_fresh_ms")]
    pub fresh_ms: u64,
    /// An entry younger than this may be served stale when the upstream fails.
    #[serde(default = "default_stale_ms")]
    pub stale_ms: u64,
    /// When a visitor has cached offers and the call passes `deadline_ms`, the visitor gets the
    /// cached offers and the call goes on in the background for up to this long.
    #[serde(default = "default_background_deadline_ms")]
    pub background_deadline_ms: u64,
    /// The spool lags when the event replay is working on for this service waited longer than
    /// this: `/readyz` warns, and `on_lag` decides what fast-mode hits do.
    #[serde(default = "default_max_lag_ms")]
    pub max_lag_ms: u64,
    /// While the spool lags: `serve-cached` (fast-mode hits keep answering from the cache, their
    /// events queued) or `pass-through` (new events of visitors with nothing queued go to the
    /// upstream at once, as in pass-through mode, and refresh their offers).
    #[serde(default = "default_on_lag")]
    pub on_lag: String,
}

#[derive(Debug, Deserialize)]
pub struct ServiceSection {
    /// Name of the service, `[0-9a-z_]{3,128}`; used in metrics and logs.
    pub name: String,
    /// One of `us01`, `eu01`, `ap01`, `ap03`. Exactly one of `region` and `base_url`.
    pub region: Option<String>,
    /// An explicit upstream, `https://host[:port]` or `http://host[:port]` (tests, private
    /// endpoints).
    pub base_url: Option<String>,
    /// The Treasure Data account id.
    pub account_id: String,
    /// The personalization instance id.
    pub instance_id: String,
    /// Environment variable holding the API key, `{account_id}/{40 hex}`.
    pub api_key_env: Option<String>,
    /// File holding the API key; relative paths are relative to this config file.
    pub api_key_file: Option<String>,
    /// Body fields that identify a visitor; at least one must be present.
    #[serde(default = "default_identifiers")]
    pub identifiers: Vec<String>,
    /// A cookie holding the visitor id when the body has none (td-js-sdk's anonymous mode
    /// keeps it in `_td`). Its value is added to the body as the first identifier; the cookie
    /// itself is never forwarded.
    pub identifier_cookie: Option<String>,
    /// Add a `uuid` member to every event that has none, derived from the event's spool
    /// identity, so that a repeat (a retry after a send, a replay after `kill -9`) is the same
    /// event to the upstream.
    #[serde(default = "default_true")]
    pub event_uuid: bool,
    /// Named personalization tokens, `{account_id}/{instance_id}/{32 hex}`. At most 50, counting
    /// `tokens_file` and `token_env` too; a name may be given by one source only.
    #[serde(default)]
    pub tokens: BTreeMap<String, Secret>,
    /// A file of more tokens, one `name = value` a line (blank lines and `#` comments allowed),
    /// so that the config can be shared without them. Relative to this config file; re-read on
    /// reload.
    pub tokens_file: Option<String>,
    /// Tokens held in environment variables: token name = variable name.
    #[serde(default)]
    pub token_env: BTreeMap<String, String>,
    /// The most calls a second this service makes to its upstream, live and replayed together
    /// (the vendor allows about 2,000 ingested events a second per customer by default). A
    /// call past it is treated like a 429 before it is sent: a visitor with cached offers gets
    /// them (the event spooled), another waits within the deadline or gets 429/2003 with
    /// `Retry-After`; replay waits. Unset (the default): no limit.
    pub max_events_per_second: Option<f64>,
    /// Deadline for a whole call, retries and backoff included: what a browser waits at most.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// How 429s and connection failures are retried.
    #[serde(default)]
    pub retry: RetrySection,
    /// When calls to this service's upstream are stopped for a while.
    #[serde(default)]
    pub circuit: CircuitSection,
    /// How this service uses the offer cache.
    #[serde(default)]
    pub cache: ServiceCacheSection,
    /// Which browser origins may call this service's routes.
    #[serde(default)]
    pub cors: CorsSection,
    /// Crawlers answered here, by their User-Agent.
    #[serde(default)]
    pub bots: BotsSection,
    /// What a visitor must have said before an event of theirs is forwarded or kept.
    #[serde(default)]
    pub consent: ConsentSection,
    /// Who says who the visitor is: the body (the default) or a cookie the edge signs.
    #[serde(default)]
    pub identity: IdentitySection,
    /// The routes this service exposes: `[[service.route]]` tables.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSection>,
}

#[derive(Debug, Deserialize)]
pub struct IdentitySection {
    /// `"body"` (the default: the visitor is the body's first identifier, as the vendor's API
    /// has it) or `"signed-cookie"` (the visitor is the id in a cookie the edge issues and
    /// signs; the body's identifiers are overwritten or refused).
    #[serde(default = "default_identity_mode")]
    pub mode: IdentityMode,
    /// The cookie's name. Default `p13n_vid`; `__Host-p13n_vid` on a TLS-only site pins it to
    /// the edge's own host.
    #[serde(default = "default_identity_cookie")]
    pub cookie: String,
    /// Environment variable holding the signing secret (at least 32 bytes). Exactly one of
    /// `secret_env` and `secret_file`.
    pub secret_env: Option<String>,
    /// File holding the signing secret on its first line, and previous secrets still accepted
    /// on the lines after it (blank lines and `#` comments skipped). Relative to this config
    /// file; re-read on reload.
    pub secret_file: Option<String>,
    /// Environment variables holding previous secrets, still accepted (and re-signed with the
    /// current one) so that rotating the secret logs nobody out.
    #[serde(default)]
    pub previous_secrets_env: Vec<String>,
    /// `Secure` on the cookie: unset (the default) sets it on answers over TLS; `true` always
    /// (behind a TLS-terminating balancer), `false` never.
    pub secure: Option<bool>,
    /// `SameSite`: `"Lax"` (the default), `"Strict"` or `"None"` (needs `Secure`).
    #[serde(default = "default_same_site")]
    pub same_site: String,
    /// `Domain`, to share the cookie with sibling hosts. Default: none (this host only).
    pub domain: Option<String>,
    /// The cookie's `Max-Age`, and the oldest token accepted, in days: at most 400. Default 365.
    #[serde(default = "default_identity_max_age_days")]
    pub max_age_days: u64,
    /// A valid cookie older than this many days is re-issued (same id). Default 7.
    #[serde(default = "default_identity_refresh_days")]
    pub refresh_after_days: u64,
    /// A body identifier naming another visitor: `"overwrite"` (the default) or `"refuse"`
    /// (403). td-js-sdk sends its own `td_client_id`: keep `"overwrite"` for it.
    #[serde(default)]
    pub body_identifier: BodyIdentifierSection,
    /// A request header carrying a visitor token, for server-to-server callers that relay the
    /// visitor's cookie value. A token there that does not verify gets 401. Default: none.
    pub header: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityMode {
    Body,
    SignedCookie,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyIdentifierSection {
    #[default]
    Overwrite,
    Refuse,
}

#[derive(Debug, Default, Deserialize)]
pub struct ConsentSection {
    /// A request with `Sec-GPC: 1` (Global Privacy Control) has not consented. Default false.
    #[serde(default)]
    pub honor_gpc: bool,
    /// A cookie the site sets once the visitor consents: without it (name and exact value),
    /// no consent. Default: none required.
    pub cookie: Option<String>,
    pub cookie_value: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct BotsSection {
    /// Answer crawlers here with 200 and no payload: never forwarded, spooled or counted
    /// against the quota.
    #[serde(default = "default_true")]
    pub filter: bool,
    /// Include the shipped list of well-known crawlers (`guard::bots::DEFAULT_PATTERNS`).
    #[serde(default = "default_true")]
    pub default_patterns: bool,
    /// More patterns: case-insensitive substrings of the User-Agent.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Agents never filtered, whatever else they match (substrings too).
    #[serde(default)]
    pub exempt: Vec<String>,
}

impl Default for BotsSection {
    fn default() -> Self {
        BotsSection {
            filter: true,
            default_patterns: true,
            patterns: Vec::new(),
            exempt: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct RetrySection {
    /// Retries after the first attempt.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First backoff ceiling; it doubles per retry, with full jitter.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// Largest backoff ceiling.
    #[serde(default = "default_backoff_cap_ms")]
    pub backoff_cap_ms: u64,
    /// Retries may be at most this fraction of the requests in the budget window...
    #[serde(default = "default_budget_ratio")]
    pub budget_ratio: f64,
    /// ...plus this many per second of the window: a reserve for quiet periods, small next to
    /// a busy site's request rate (as in Finagle's RetryBudget).
    #[serde(default = "default_budget_floor")]
    pub budget_floor_per_second: f64,
    /// The budget's sliding window.
    #[serde(default = "default_window_ms")]
    pub budget_window_ms: u64,
    /// Also retry timeouts and I/O errors after the request was sent. The upstream may have
    /// ingested the event, so this can duplicate it.
    #[serde(default)]
    pub after_send: bool,
}

#[derive(Debug, Deserialize)]
pub struct CircuitSection {
    /// Consecutive failures (5xx, connection errors, timeouts) that open the circuit.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Failure share over the window that opens it...
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    /// ...once this many calls were made in the window.
    #[serde(default = "default_min_calls")]
    pub min_calls: u32,
    /// The error-rate window.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// How long it stays open before one probe is let through.
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
}

#[derive(Debug, Deserialize)]
pub struct RouteSection {
    /// Database name, `[0-9a-z_]{3,128}`.
    pub database: String,
    /// Table name, `[0-9a-z_]{3,128}`.
    pub table: String,
    /// Served as `/public/{database}/{table}` when true, `/{database}/{table}` otherwise.
    #[serde(default)]
    pub public: bool,
    /// Name of the token (from `tokens`) this route sends.
    pub token: String,
    /// The event's fields, when this route has a schema: `[[service.route.fields]]`.
    /// Identifiers and `uuid` are always allowed. Default: no schema, the body goes as sent.
    #[serde(default)]
    pub fields: Vec<FieldSection>,
    /// With a schema, what a field outside it gets: `"drop"` (the default) or `"refuse"`
    /// (400, code 3004, naming the field).
    #[serde(default)]
    pub unknown_fields: UnknownFields,
}

#[derive(Debug, Deserialize)]
pub struct FieldSection {
    pub name: String,
    /// `"string"`, `"number"`, `"boolean"` or `"strings"` (an array of strings).
    #[serde(rename = "type")]
    pub kind: FieldKind,
    /// Most characters of a string, or of each string of an array.
    pub max_length: Option<usize>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    String,
    Number,
    Boolean,
    Strings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    #[default]
    Drop,
    Refuse,
}
