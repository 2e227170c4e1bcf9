//! The TOML file as written by operators: serde types with named defaults and no unknown keys.
//! `conf/p13n-edge.toml` documents every field here; keep the two in step.
//!
//! Unknown keys are refused, but through `serde_ignored` rather than `deny_unknown_fields`:
//! serde stops at the first unknown key, and operators want every problem in one run.

use super::defaults::*;

mod service;
use serde::Deserialize;
pub use service::*;

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
    /// How much higher than the daemon's own replay's nice value is, 0 to 19 (a lower
    /// priority): replay can wait, the answers cannot, so when the CPU is short replay gives
    /// way. Applied at start; Linux only.
    #[serde(default = "default_replay_nice")]
    pub replay_nice: i64,
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
