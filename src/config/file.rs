//! The TOML file as written by operators: serde types with named defaults and no unknown keys.
//! `conf/p13n-edge.toml` documents every field here; keep the two in step.
//!
//! Unknown keys are refused, but through `serde_ignored` rather than `deny_unknown_fields`:
//! serde stops at the first unknown key, and operators want every problem in one run.

use super::defaults::*;
use super::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
pub struct FileConfig {
    /// The public listener and the process.
    #[serde(default)]
    pub server: ServerSection,
    /// The admin listener: metrics and probes.
    #[serde(default)]
    pub admin: AdminSection,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Timeouts, in milliseconds.
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    /// How upstreams are called.
    #[serde(default)]
    pub upstream: UpstreamSection,
    /// Bounds of the offer cache, shared by all services.
    #[serde(default)]
    pub cache: CacheSection,
    /// Where accepted, undelivered events wait.
    #[serde(default)]
    pub spool: SpoolSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// Which client addresses may call, and who may speak for them.
    #[serde(default)]
    pub clients: ClientsSection,
    /// Token-bucket rate limits per client address and per visitor.
    #[serde(default)]
    pub rate_limit: RateLimitSection,
    /// The optional Valkey/Redis tier shared by every instance: offers and per-visitor limits.
    pub shared: Option<super::shared::SharedSection>,
    /// The personalization services this proxy fronts: `[[service]]` tables.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSection>,
}

#[derive(Debug, Deserialize)]
pub struct ServerSection {
    /// Address of the public (browser-facing) listener.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Worker threads of the public listener.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Seconds SIGTERM waits before shutting down (pingora's default is 300).
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    /// Seconds given to in-flight work once shutdown starts.
    #[serde(default = "default_grace")]
    pub graceful_shutdown_timeout_seconds: u64,
    /// Unix socket over which listening sockets are handed to a new binary (`run -u`).
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    /// Where the pid file is written.
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    /// A second public listener that terminates TLS (and HTTP/2): `[server.tls]`.
    pub tls: Option<TlsSection>,
}

#[derive(Debug, Deserialize)]
pub struct TlsSection {
    /// Address of the TLS listener, ip:port.
    pub listen: String,
    /// PEM certificate chain, leaf first; relative to this config file. Re-read on reload.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); relative to this config file. Re-read on reload.
    pub key_file: String,
    /// Offer HTTP/2 through ALPN (browsers then multiplex their calls on one connection).
    #[serde(default = "default_true")]
    pub h2: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct ClientsSection {
    /// CIDRs allowed to call; empty: every address that is not denied.
    #[serde(default)]
    pub allow: Vec<String>,
    /// CIDRs refused (403, code 3005), whatever `allow` says.
    #[serde(default)]
    pub deny: Vec<String>,
    /// CIDRs of proxies in front of this one. Only their `forwarded_header` is read; from
    /// anyone else forwarding headers are ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies append the client's address to: `x-forwarded-for` or
    /// `forwarded` (RFC 7239). The other one is never read: a client could write it itself.
    #[serde(default)]
    pub forwarded_header: ForwardedHeaderName,
    /// Send the client's address upstream as `X-Forwarded-For`.
    #[serde(default)]
    pub forward_address: bool,
    /// With `forward_address`, send only its network: IPv4 /24, IPv6 /48.
    #[serde(default)]
    pub truncate_address: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeaderName {
    #[default]
    XForwardedFor,
    Forwarded,
}

#[derive(Debug, Deserialize)]
pub struct RateLimitSection {
    /// Requests per second each client address (IPv6: each /64) may make; 0 turns it off.
    #[serde(default)]
    pub per_address_per_second: f64,
    /// Requests an address may make at once above its rate.
    #[serde(default = "default_address_burst")]
    pub per_address_burst: f64,
    /// Events per second each visitor (service and identifier) may send; 0 turns it off.
    #[serde(default)]
    pub per_identifier_per_second: f64,
    /// Events a visitor may send at once above its rate.
    #[serde(default = "default_identifier_burst")]
    pub per_identifier_burst: f64,
    /// Most addresses, and most visitors, tracked; past it, new addresses share one bucket and
    /// new visitors are limited by their address only.
    #[serde(default = "default_max_tracked")]
    pub max_tracked: usize,
}

#[derive(Debug, Deserialize)]
pub struct AdminSection {
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`). Keep it on loopback.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
}

#[derive(Debug, Deserialize)]
pub struct LimitsSection {
    /// Largest accepted request body. At most 65536: pingora's retry buffer and browsers'
    /// keepalive requests both stop at 64 KiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest upstream response body read. The vendor documents at most 10 KB.
    #[serde(default = "default_max_upstream_body")]
    pub max_upstream_body_bytes: usize,
    /// Largest request header block (request line and headers); larger gets 431.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: usize,
}

#[derive(Debug, Deserialize)]
pub struct TimeoutsSection {
    /// TCP (and TLS) connect timeout to the upstream.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Timeout of one upstream attempt: connect, send, and read the answer. A service's
    /// `deadline_ms` bounds all attempts together.
    #[serde(default = "default_upstream_ms")]
    pub upstream_ms: u64,
    /// How long a client may take to send its request body.
    #[serde(default = "default_client_body_ms")]
    pub client_body_ms: u64,
    /// Longest silence allowed while a client sends a new connection's first request header,
    /// and the most time any HTTP/1 request header may take in all (for HTTP/2: the preface and
    /// first request header); past it the connection is closed.
    #[serde(default = "default_client_header_ms")]
    pub client_header_ms: u64,
    /// How long a kept-alive client connection may wait for its next request (and stay silent
    /// inside its header).
    #[serde(default = "default_client_idle_ms")]
    pub client_idle_ms: u64,
    /// How long an idle upstream connection is kept for reuse. Keep it below the upstream's own.
    #[serde(default = "default_upstream_idle_ms")]
    pub upstream_idle_ms: u64,
    /// How long a resolved upstream address is used before it is looked up again.
    #[serde(default = "default_dns_ttl_ms")]
    pub dns_ttl_ms: u64,
    /// Past the TTL, the last good addresses are still used this long while one background
    /// lookup refreshes them; past it, calls wait for a lookup (and use the old addresses if it
    /// fails).
    #[serde(default = "default_dns_max_stale_ms")]
    pub dns_max_stale_ms: u64,
    /// A lookup not answered by then has failed, and another may start.
    #[serde(default = "default_dns_timeout_ms")]
    pub dns_timeout_ms: u64,
}

#[derive(Debug, Default, Deserialize)]
pub struct UpstreamSection {
    /// PEM file of the CAs trusted for `https` upstreams, instead of the system roots (a private
    /// endpoint's CA). Relative to this config file. Read at start.
    pub ca_file: Option<String>,
    /// `"http1.1"` (a pool of connections, one call each at a time) or `"h2"` (every call a
    /// stream on a few shared connections per upstream address). Read at start.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UpstreamProtocol {
    #[default]
    #[serde(rename = "http1.1")]
    Http1,
    #[serde(rename = "h2")]
    H2,
}

#[derive(Debug, Default, Deserialize)]
pub struct LogSection {
    /// One line per request (target `p13n_edge::access`): service, route, status, cache status,
    /// upstream status and time.
    #[serde(default)]
    pub access: bool,
}

#[derive(Debug, Deserialize)]
pub struct CacheSection {
    /// Most visitors kept.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// Most bytes kept: keys, bodies and per-entry overhead.
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: usize,
}

#[derive(Debug, Deserialize)]
pub struct SpoolSection {
    /// Directory of the spool's segments; relative paths are relative to this config file.
    #[serde(default = "default_spool_dir")]
    pub dir: String,
    /// Most bytes on disk; past it, events that would need the spool are refused.
    #[serde(default = "default_spool_bytes")]
    pub max_bytes: u64,
    /// Size at which a new segment is started.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// 0: `fdatasync` before an event is acknowledged (survives power loss). Above 0: acknowledge
    /// once written to the OS (survives a crash of the process) and `fdatasync` at most this
    /// often; an OS crash or power loss can lose that window.
    #[serde(default)]
    pub sync_interval_ms: u64,
    /// The most spooled events a lane's replay sends at once; below it the window adapts to
    /// the upstream. A visitor's own events still go one after another, in order.
    #[serde(default = "default_replay_concurrency")]
    pub replay_concurrency: usize,
    /// Most bytes of the dead-letter log (events the upstream refused as invalid, 3004 or 413,
    /// and events whose route stayed gone). Past it, such events are held in the spool instead.
    #[serde(default = "default_dead_letter_bytes")]
    pub dead_letter_max_bytes: u64,
    /// How long a spooled event whose route is gone (or now names another service, account,
    /// table or token) waits for a reload to bring it back before it goes to the dead letters.
    /// While it waits, its service's lane waits behind it.
    #[serde(default = "default_route_wait_seconds")]
    pub route_wait_seconds: u64,
}

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

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect("every field has a default")
            }
        }
    )*};
}
default_from_serde!(
    ServerSection,
    AdminSection,
    LimitsSection,
    TimeoutsSection,
    RetrySection,
    CircuitSection,
    CacheSection,
    SpoolSection,
    ServiceCacheSection,
    CorsSection,
    RateLimitSection,
    IdentitySection
);
