//! `FileConfig` → `Config`: every check the daemon relies on, all problems collected at once.

use super::file::{FileConfig, TimeoutsSection};
use super::policy::{client_policy, rate_limits};
use super::service::{build_route, build_service, check_route};
use super::{credentials, identity};
use super::{Config, ConfigErrors, Route, Secret, Service, Timeouts, TlsListener};
use crate::cache::CacheLimits;
use crate::spool::SpoolSettings;
use crate::upstream::DnsPolicy;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The vendor's limit on tokens per personalization service.
pub const MAX_TOKENS_PER_SERVICE: usize = 50;
const MAX_BODY_LIMIT: usize = 65536;
pub(super) const REGIONS: [&str; 4] = ["us01", "eu01", "ap01", "ap03"];

/// Names of services, tokens, databases and tables: `[0-9a-z_]{3,128}`.
pub fn names_ok(name: &str) -> bool {
    (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'_')
}

pub(super) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(super) fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn build(
    file: FileConfig,
    base_dir: &Path,
    mut problems: Vec<String>,
) -> Result<Config, ConfigErrors> {
    let problems = &mut problems;
    let (listen, admin_listen, tls) = listeners(&file, base_dir, problems);
    if file.server.threads == 0 {
        problems.push("server.threads must be at least 1".into());
    }
    check_limits(&file, problems);
    let ca_file = ca_file(&file, base_dir, problems);
    let dns = dns_policy(&file.timeouts, problems);
    let clients = client_policy(&file.clients, problems);
    let rate = rate_limits(&file.rate_limit, problems);
    let cache = cache_limits(&file, problems);
    let spool = spool_settings(&file, base_dir, problems);
    let (services, routes, mut secrets) = services_and_routes(&file, base_dir, problems);
    let shared = file.shared.as_ref().and_then(|s| {
        let max_body = file.limits.max_upstream_body_bytes;
        super::shared::build(s, max_body, base_dir, problems, &mut secrets)
    });
    if !problems.is_empty() {
        return Err(ConfigErrors::redacted(std::mem::take(problems), &secrets));
    }
    let (server, limits) = (file.server, file.limits);
    Ok(Config {
        listen: listen.expect("checked above"),
        tls,
        admin_listen: admin_listen.expect("checked above"),
        threads: server.threads,
        grace_period: Duration::from_secs(server.grace_period_seconds),
        graceful_shutdown_timeout: Duration::from_secs(server.graceful_shutdown_timeout_seconds),
        upgrade_sock: server.upgrade_sock,
        pid_file: server.pid_file,
        max_body_bytes: limits.max_body_bytes,
        max_upstream_body_bytes: limits.max_upstream_body_bytes,
        max_header_bytes: limits.max_header_bytes,
        clients,
        rate,
        timeouts: timeouts(&file.timeouts, dns.expect("checked above")),
        ca_file: ca_file.map(|p| p.to_string_lossy().into_owned()),
        protocol: match file.upstream.protocol {
            super::file::UpstreamProtocol::Http1 => crate::upstream::Protocol::Http1,
            super::file::UpstreamProtocol::H2 => crate::upstream::Protocol::Http2,
        },
        cache,
        spool,
        access_log: file.log.access,
        shared,
        services,
        routes,
    })
}

/// `upstream.ca_file`, relative to the config's directory; it must exist.
fn ca_file(file: &FileConfig, base_dir: &Path, problems: &mut Vec<String>) -> Option<PathBuf> {
    let ca_file = file.upstream.ca_file.as_ref().map(|f| base_dir.join(f));
    if let Some(path) = &ca_file {
        if let Err(e) = std::fs::metadata(path) {
            problems.push(format!("upstream.ca_file {}: {e}", path.display()));
        }
    }
    ca_file
}

fn dns_policy(t: &TimeoutsSection, problems: &mut Vec<String>) -> Option<DnsPolicy> {
    DnsPolicy::try_new(
        Duration::from_millis(t.dns_ttl_ms),
        Duration::from_millis(t.dns_max_stale_ms),
        Duration::from_millis(t.dns_timeout_ms),
    )
    .map_err(|e| problems.push(format!("timeouts.dns_timeout_ms: {e}")))
    .ok()
}

fn cache_limits(file: &FileConfig, problems: &mut Vec<String>) -> CacheLimits {
    let cache = CacheLimits {
        max_entries: file.cache.max_entries,
        max_bytes: file.cache.max_bytes,
    };
    if cache.max_entries == 0 || cache.max_bytes < 4096 {
        problems.push("cache.max_entries must be above 0 and cache.max_bytes at least 4096".into());
    }
    cache
}

fn timeouts(t: &TimeoutsSection, dns: DnsPolicy) -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(t.connect_ms),
        upstream: Duration::from_millis(t.upstream_ms),
        client_body: Duration::from_millis(t.client_body_ms),
        client_header: Duration::from_millis(t.client_header_ms),
        client_idle: Duration::from_millis(t.client_idle_ms),
        upstream_idle: Duration::from_millis(t.upstream_idle_ms),
        dns,
    }
}

/// The public, TLS and admin listeners: valid and distinct.
fn listeners(
    file: &FileConfig,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> (Option<SocketAddr>, Option<SocketAddr>, Option<TlsListener>) {
    let listen = parse_addr("server.listen", &file.server.listen, problems);
    let admin_listen = parse_addr("admin.listen", &file.admin.listen, problems);
    let tls = file
        .server
        .tls
        .as_ref()
        .and_then(|t| super::tls::tls_listener(t, base_dir, problems));
    let named = [
        ("server.listen", listen),
        ("admin.listen", admin_listen),
        ("server.tls.listen", tls.as_ref().map(|t| t.listen)),
    ];
    for (i, (key, addr)) in named.iter().enumerate() {
        for (other, other_addr) in &named[..i] {
            if let (Some(a), Some(b)) = (addr, other_addr) {
                if same_socket(a, b) {
                    problems.push(overlap(key, a, other, b));
                }
            }
        }
    }
    (listen, admin_listen, tls)
}

fn check_limits(file: &FileConfig, problems: &mut Vec<String>) {
    let limits = &file.limits;
    if limits.max_body_bytes == 0 || limits.max_body_bytes > MAX_BODY_LIMIT {
        problems.push(format!(
            "limits.max_body_bytes must be between 1 and {MAX_BODY_LIMIT}, not {}",
            limits.max_body_bytes
        ));
    }
    if limits.max_upstream_body_bytes < 1024 {
        problems.push("limits.max_upstream_body_bytes must be at least 1024".into());
    }
    if !(1024..=1 << 20).contains(&limits.max_header_bytes) {
        problems.push("limits.max_header_bytes must be between 1024 and 1048576".into());
    }
    let t = &file.timeouts;
    for (key, ms) in [
        ("connect_ms", t.connect_ms),
        ("upstream_ms", t.upstream_ms),
        ("client_body_ms", t.client_body_ms),
        ("client_header_ms", t.client_header_ms),
        ("client_idle_ms", t.client_idle_ms),
        ("upstream_idle_ms", t.upstream_idle_ms),
    ] {
        if ms == 0 {
            problems.push(format!("timeouts.{key} must be above 0"));
        }
    }
}

fn spool_settings(file: &FileConfig, base_dir: &Path, problems: &mut Vec<String>) -> SpoolSettings {
    let sp = &file.spool;
    if sp.segment_bytes < 4096 || sp.max_bytes < 2 * sp.segment_bytes {
        problems.push(
            "spool.segment_bytes must be at least 4096 and spool.max_bytes at least twice it"
                .into(),
        );
    }
    if sp.sync_interval_ms > 10_000 {
        problems.push("spool.sync_interval_ms must be at most 10000".into());
    }
    if !(1..=1024).contains(&sp.replay_concurrency) {
        problems.push("spool.replay_concurrency must be between 1 and 1024".into());
    }
    if !(0..=19).contains(&sp.replay_nice) {
        problems.push("spool.replay_nice must be between 0 and 19".into());
    }
    if sp.dead_letter_max_bytes < 1 << 20 {
        problems.push("spool.dead_letter_max_bytes must be at least 1048576 (1 MiB)".into());
    }
    if sp.route_wait_seconds == 0 {
        problems.push("spool.route_wait_seconds must be at least 1".into());
    }
    SpoolSettings {
        dir: base_dir.join(&sp.dir),
        max_bytes: sp.max_bytes,
        segment_bytes: sp.segment_bytes,
        sync_interval: (sp.sync_interval_ms > 0)
            .then(|| Duration::from_millis(sp.sync_interval_ms)),
        replay_concurrency: sp.replay_concurrency.clamp(1, 1024),
        replay_nice: sp.replay_nice.clamp(0, 19) as u8,
        dead_letter_max_bytes: sp.dead_letter_max_bytes,
        route_wait: Duration::from_secs(sp.route_wait_seconds),
    }
}

type Routes = HashMap<String, Arc<Route>, ahash::RandomState>;

/// Every service and its routes; a service with a problem is left out (its problems listed).
/// Also every credential loaded, to be scrubbed out of the problems.
fn services_and_routes(
    file: &FileConfig,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> (Vec<Arc<Service>>, Routes, Vec<Secret>) {
    if file.services.is_empty() {
        problems.push("no [[service]] is configured: the proxy would serve nothing".into());
    }
    let mut services = Vec::new();
    let mut routes = Routes::default();
    let mut secrets = Vec::new();
    let mut service_names = HashMap::new();
    for (i, section) in file.services.iter().enumerate() {
        let at = format!("service[{i}] ({:?})", section.name);
        if service_names.insert(section.name.clone(), i).is_some() {
            problems.push(format!("{at}: duplicate service name"));
        }
        let before = problems.len();
        let credentials = credentials::load(section, &at, base_dir, problems);
        secrets.extend(credentials.secrets().cloned());
        let token_names: BTreeSet<String> = credentials.tokens.keys().cloned().collect();
        let (identity, identity_secrets) = identity::load(section, &at, base_dir, problems);
        secrets.extend(identity_secrets);
        let service = build_service(section, &at, credentials, identity, problems);
        // Routes are checked even when the service is not, so every problem shows in one run.
        for (j, route) in section.routes.iter().enumerate() {
            check_route(&token_names, route, &format!("{at}: route[{j}]"), problems);
        }
        let Some(service) = service.filter(|_| problems.len() == before) else {
            continue;
        };
        let service = Arc::new(service);
        for (j, route) in section.routes.iter().enumerate() {
            let at = format!("{at}: route[{j}]");
            let Some(route) = build_route(&service, route) else {
                problems.push(format!("{at}: credentials are not valid header values"));
                continue;
            };
            let path = &route.endpoint.path;
            if routes.contains_key(path) {
                problems.push(format!("{at}: path {path} is already routed"));
            } else {
                routes.insert(path.clone(), Arc::new(route));
            }
        }
        services.push(service);
    }
    (services, routes, secrets)
}

/// Whether listeners on `a` and `b` would be one socket, or the second refused, as pingora binds
/// them (`SO_REUSEADDR`, IPv6 sockets dual-stack): the same port and address (an IPv4-mapped
/// IPv6 address is its IPv4 address), or `[::]` beside any address, or `0.0.0.0` beside any
/// IPv4 address. On port 0 each gets a port of its own, so only the same address collides.
pub fn same_socket(a: &SocketAddr, b: &SocketAddr) -> bool {
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    if a.port() != b.port() {
        return false;
    }
    if x == y {
        return true;
    }
    if a.port() == 0 {
        return false;
    }
    let everywhere = |ip: IpAddr, other: IpAddr| match ip {
        IpAddr::V6(v6) => v6.is_unspecified(),
        IpAddr::V4(v4) => v4.is_unspecified() && other.is_ipv4(),
    };
    everywhere(x, y) || everywhere(y, x)
}

/// Why a listener on `a` (for `what`) is refused beside one on `b` (for `other`).
pub fn overlap(what: &str, a: impl fmt::Display, other: &str, b: impl fmt::Display) -> String {
    format!("{what} ({a}) overlaps {other} ({b}): the same port on the same address, or on 0.0.0.0 or [::]")
}

fn parse_addr(key: &str, value: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    match value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(format!("{key}: {value:?} is not an ip:port address"));
            None
        }
    }
}
