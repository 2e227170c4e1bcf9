//! `FileConfig` → `Config`: every check the daemon relies on, all problems collected at once.

use super::file::{FileConfig, RouteSection, ServiceSection};
use super::policy::{cache_policy, call_policy, client_policy, cors_policy, rate_limits};
use super::{Config, ConfigErrors, Route, Secret, Service, Timeouts, UpstreamTarget};
use crate::cache::CacheLimits;
use crate::spool::SpoolSettings;
use http::HeaderValue;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The vendor's limit on tokens per personalization service.
pub const MAX_TOKENS_PER_SERVICE: usize = 50;
const MAX_BODY_LIMIT: usize = 65536;
const REGIONS: [&str; 4] = ["us01", "eu01", "ap01", "ap03"];

/// Names of services, tokens, databases and tables: `[0-9a-z_]{3,128}`.
pub fn names_ok(name: &str) -> bool {
    (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'_')
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit())
}

pub(super) fn build(
    file: FileConfig,
    base_dir: &Path,
    mut problems: Vec<String>,
) -> Result<Config, ConfigErrors> {
    let listen = parse_addr("server.listen", &file.server.listen, &mut problems);
    let admin_listen = parse_addr("admin.listen", &file.admin.listen, &mut problems);
    let tls = file
        .server
        .tls
        .as_ref()
        .and_then(|t| super::tls::tls_listener(t, base_dir, &mut problems));
    if tls
        .as_ref()
        .is_some_and(|t| Some(t.listen) == listen || Some(t.listen) == admin_listen)
    {
        problems.push("server.tls.listen must differ from server.listen and admin.listen".into());
    }
    if listen.is_some() && listen == admin_listen {
        problems.push("admin.listen must differ from server.listen".into());
    }
    if file.server.threads == 0 {
        problems.push("server.threads must be at least 1".into());
    }
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
    let ca_file = file.upstream.ca_file.as_ref().map(|f| base_dir.join(f));
    if let Some(path) = &ca_file {
        if let Err(e) = std::fs::metadata(path) {
            problems.push(format!("upstream.ca_file {}: {e}", path.display()));
        }
    }
    let clients = client_policy(&file.clients, &mut problems);
    let rate = rate_limits(&file.rate_limit, &mut problems);
    let cache = CacheLimits {
        max_entries: file.cache.max_entries,
        max_bytes: file.cache.max_bytes,
    };
    if cache.max_entries == 0 || cache.max_bytes < 4096 {
        problems.push("cache.max_entries must be above 0 and cache.max_bytes at least 4096".into());
    }
    let sp = &file.spool;
    if sp.segment_bytes < 4096 || sp.max_bytes < 2 * sp.segment_bytes {
        problems.push(
            "spool.segment_bytes must be at least 4096 and spool.max_bytes at least twice it"
                .into(),
        );
    }
    let spool = SpoolSettings {
        dir: base_dir.join(&sp.dir),
        max_bytes: sp.max_bytes,
        segment_bytes: sp.segment_bytes,
        sync_interval: (sp.sync_interval_ms > 0)
            .then(|| Duration::from_millis(sp.sync_interval_ms)),
    };
    if sp.sync_interval_ms > 10_000 {
        problems.push("spool.sync_interval_ms must be at most 10000".into());
    }
    if file.services.is_empty() {
        problems.push("no [[service]] is configured: the proxy would serve nothing".into());
    }

    let mut services = Vec::new();
    let mut routes: HashMap<String, Arc<Route>> = HashMap::new();
    let mut service_names = HashMap::new();
    for (i, section) in file.services.iter().enumerate() {
        let at = format!("service[{i}] ({:?})", section.name);
        if service_names.insert(section.name.clone(), i).is_some() {
            problems.push(format!("{at}: duplicate service name"));
        }
        let service = build_service(section, &at, base_dir, &mut problems);
        // Routes are checked even when the service is not, so every problem shows in one run.
        let route_problems = problems.len();
        for (j, route) in section.routes.iter().enumerate() {
            check_route(section, route, &format!("{at}: route[{j}]"), &mut problems);
        }
        let Some(service) = service.filter(|_| problems.len() == route_problems) else {
            continue;
        };
        let service = Arc::new(service);
        for (j, route) in section.routes.iter().enumerate() {
            let at = format!("{at}: route[{j}]");
            let Some(route) = build_route(&service, route) else {
                problems.push(format!("{at}: credentials are not valid header values"));
                continue;
            };
            if routes.contains_key(&route.path) {
                problems.push(format!("{at}: path {} is already routed", route.path));
            } else {
                routes.insert(route.path.clone(), Arc::new(route));
            }
        }
        services.push(service);
    }

    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    Ok(Config {
        listen: listen.expect("checked above"),
        tls,
        admin_listen: admin_listen.expect("checked above"),
        threads: file.server.threads,
        grace_period: Duration::from_secs(file.server.grace_period_seconds),
        graceful_shutdown_timeout: Duration::from_secs(
            file.server.graceful_shutdown_timeout_seconds,
        ),
        upgrade_sock: file.server.upgrade_sock,
        pid_file: file.server.pid_file,
        max_body_bytes: limits.max_body_bytes,
        max_upstream_body_bytes: limits.max_upstream_body_bytes,
        max_header_bytes: limits.max_header_bytes,
        clients,
        rate,
        timeouts: Timeouts {
            connect: Duration::from_millis(t.connect_ms),
            upstream: Duration::from_millis(t.upstream_ms),
            client_body: Duration::from_millis(t.client_body_ms),
            client_header: Duration::from_millis(t.client_header_ms),
            client_idle: Duration::from_millis(t.client_idle_ms),
            upstream_idle: Duration::from_millis(t.upstream_idle_ms),
            dns_ttl: Duration::from_millis(t.dns_ttl_ms),
        },
        ca_file: ca_file.map(|p| p.to_string_lossy().into_owned()),
        cache,
        spool,
        access_log: file.log.access,
        services,
        routes,
    })
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

fn build_service(
    s: &ServiceSection,
    at: &str,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> Option<Service> {
    let before = problems.len();
    if !names_ok(&s.name) {
        problems.push(format!("{at}: name must match [0-9a-z_]{{3,128}}"));
    }
    if !is_id(&s.account_id) {
        problems.push(format!("{at}: account_id must be digits"));
    }
    if !is_id(&s.instance_id) {
        problems.push(format!("{at}: instance_id must be digits"));
    }
    let upstream = upstream_target(s, at, problems);
    let api_key = load_key(s, at, base_dir, problems);
    if let Some(key) = &api_key {
        match key.expose().split_once('/') {
            Some((account, rest)) if is_id(account) && is_hex(rest, 40) => {
                if account != s.account_id {
                    problems.push(format!(
                        "{at}: the API key's account ({account}) is not account_id ({})",
                        s.account_id
                    ));
                }
            }
            _ => problems.push(format!(
                "{at}: the API key is not in {{account_id}}/{{40 hex}} form"
            )),
        }
    }
    if s.identifier_cookie.as_ref().is_some_and(|c| {
        c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    }) {
        problems.push(format!(
            "{at}: identifier_cookie must be a cookie name of letters, digits, `_`, `-` and `.`"
        ));
    }
    if s.identifiers.is_empty() || s.identifiers.iter().any(|i| i.is_empty() || i.len() > 128) {
        problems.push(format!(
            "{at}: identifiers must list 1 or more field names of 1 to 128 characters"
        ));
    }
    if s.tokens.len() > MAX_TOKENS_PER_SERVICE {
        problems.push(format!(
            "{at}: {} tokens, but a personalization service allows at most {MAX_TOKENS_PER_SERVICE}",
            s.tokens.len()
        ));
    }
    let mut tokens = Vec::new();
    for (name, value) in &s.tokens {
        if !names_ok(name) {
            problems.push(format!(
                "{at}: token name {name:?} must match [0-9a-z_]{{3,128}}"
            ));
        }
        // The value is never echoed: it is a credential.
        let parts: Vec<&str> = value.split('/').collect();
        match parts.as_slice() {
            [account, instance, token]
                if is_id(account) && is_id(instance) && is_hex(token, 32) =>
            {
                if *account != s.account_id {
                    problems.push(format!(
                        "{at}: token {name:?} belongs to account {account}, not to the key's account {}",
                        s.account_id
                    ));
                }
                if *instance != s.instance_id {
                    problems.push(format!(
                        "{at}: token {name:?} belongs to instance {instance}, not {}",
                        s.instance_id
                    ));
                }
            }
            _ => problems.push(format!(
                "{at}: token {name:?} is not in {{account_id}}/{{instance_id}}/{{32 hex}} form"
            )),
        }
        tokens.push((name.clone(), Secret::new(value.as_str())));
    }
    if s.routes.is_empty() {
        problems.push(format!("{at}: no [[service.route]] is configured"));
    }
    let policy = call_policy(s, at, problems);
    let cache = cache_policy(s, at, problems);
    let cors = cors_policy(s, at, problems);
    if problems.len() > before {
        return None;
    }
    Some(Service {
        name: s.name.clone(),
        upstream: upstream?,
        account_id: s.account_id.clone(),
        instance_id: s.instance_id.clone(),
        api_key: api_key?,
        identifiers: s.identifiers.clone(),
        identifier_cookie: s.identifier_cookie.clone(),
        tokens,
        policy: policy?,
        cache: cache?,
        cors,
        id: Arc::from(s.name.as_str()),
    })
}

fn upstream_target(
    s: &ServiceSection,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<UpstreamTarget> {
    match (&s.region, &s.base_url) {
        (Some(region), None) => {
            if !REGIONS.contains(&region.as_str()) {
                problems.push(format!(
                    "{at}: region {region:?} is not one of {}",
                    REGIONS.join(", ")
                ));
                return None;
            }
            let host = format!("{region}.p13n.in.treasuredata.com");
            Some(UpstreamTarget {
                tls: true,
                authority: host.clone(),
                host,
                port: 443,
            })
        }
        (None, Some(url)) => {
            let parsed = parse_base_url(url);
            if parsed.is_none() {
                problems.push(format!(
                    "{at}: base_url {url:?} must be http(s)://host[:port] with no path, query or user"
                ));
            }
            parsed
        }
        _ => {
            problems.push(format!("{at}: set exactly one of region and base_url"));
            None
        }
    }
}

/// `http(s)://host[:port]`, optionally with a trailing `/`: nothing that could smuggle a path.
pub(crate) fn parse_base_url(url: &str) -> Option<UpstreamTarget> {
    let uri: http::Uri = url.parse().ok()?;
    let tls = match uri.scheme_str()? {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || uri.query().is_some() || !matches!(uri.path(), "" | "/")
    {
        return None;
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    let default_port = if tls { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    Some(UpstreamTarget {
        tls,
        host: host.to_string(),
        port,
        authority: authority.as_str().to_string(),
    })
}

fn load_key(
    s: &ServiceSection,
    at: &str,
    base_dir: &Path,
    problems: &mut Vec<String>,
) -> Option<Secret> {
    let raw = match (&s.api_key_env, &s.api_key_file) {
        (Some(var), None) => match std::env::var(var) {
            Ok(v) => v,
            Err(_) => {
                problems.push(format!(
                    "{at}: environment variable {var} (api_key_env) is not set"
                ));
                return None;
            }
        },
        (None, Some(file)) => {
            let path = base_dir.join(file);
            match std::fs::read_to_string(&path) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{at}: api_key_file {}: {e}", path.display()));
                    return None;
                }
            }
        }
        _ => {
            problems.push(format!(
                "{at}: set exactly one of api_key_env and api_key_file (keys are never inline)"
            ));
            return None;
        }
    };
    Some(Secret::new(raw.trim()))
}

fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn check_route(s: &ServiceSection, r: &RouteSection, at: &str, problems: &mut Vec<String>) {
    for (what, name) in [("database", &r.database), ("table", &r.table)] {
        if !names_ok(name) {
            problems.push(format!(
                "{at}: {what} {name:?} must match [0-9a-z_]{{3,128}}"
            ));
        }
    }
    if !s.tokens.contains_key(&r.token) {
        problems.push(format!(
            "{at}: token {:?} is not among the service's tokens",
            r.token
        ));
    }
}

/// Build a route that `check_route` passed.
fn build_route(service: &Arc<Service>, r: &RouteSection) -> Option<Route> {
    let token = service.tokens.iter().find(|(n, _)| *n == r.token);
    let prefix = if r.public { "/public" } else { "" };
    let path = format!("{prefix}/{}/{}", r.database, r.table);
    let authorization = sensitive(&format!("TD1 {}", service.api_key.expose()))?;
    let token = sensitive(token?.1.expose())?;
    Some(Route {
        service: service.clone(),
        database: r.database.clone(),
        table: r.table.clone(),
        public: r.public,
        token_name: r.token.clone(),
        label: path[1..].to_string(),
        path,
        authorization,
        token,
    })
}
