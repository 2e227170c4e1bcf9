//! One `[[service]]` and its routes: identity, upstream and policies checked, then built with
//! the credentials (`credentials`) into `Service` and `Route`.

use super::credentials::Credentials;
use super::file::{RouteSection, ServiceSection};
use super::policy::{cache_policy, call_policy, cors_policy};
use super::validate::{is_id, names_ok, REGIONS};
use super::{Route, Secret, Service, UpstreamTarget};
use crate::upstream::Endpoint;
use http::HeaderValue;
use std::collections::BTreeSet;
use std::sync::Arc;

pub(super) fn build_service(
    s: &ServiceSection,
    at: &str,
    credentials: Credentials,
    identity: Option<Arc<crate::guard::IdentityPolicy>>,
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
    check_identifiers(s, at, problems);
    if s.routes.is_empty() {
        problems.push(format!("{at}: no [[service.route]] is configured"));
    }
    let policy = call_policy(s, at, problems);
    let cache = cache_policy(s, at, problems);
    let cors = cors_policy(s, at, problems);
    let bots = bot_filter(s, at, problems);
    let consent = consent_policy(s, at, problems);
    if problems.len() > before {
        return None;
    }
    let secret_parts = credentials.secrets().map(Secret::secret_part).collect();
    Some(Service {
        name: s.name.clone(),
        upstream: upstream?,
        account_id: s.account_id.clone(),
        instance_id: s.instance_id.clone(),
        api_key: credentials.key?,
        identifiers: s.identifiers.clone(),
        identifier_cookie: s.identifier_cookie.clone(),
        event_uuid: s.event_uuid,
        secret_parts,
        tokens: credentials.tokens.into_iter().collect(),
        policy: policy?,
        cache: cache?,
        cors,
        bots,
        consent,
        identity,
        id: Arc::from(s.name.as_str()),
    })
}

/// The identifier fields, and the cookie that may name the visitor instead.
fn check_identifiers(s: &ServiceSection, at: &str, problems: &mut Vec<String>) {
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
}

fn schema(r: &RouteSection) -> Option<crate::schema::Schema> {
    use super::file::{FieldKind, UnknownFields};
    use crate::schema::{Field, FieldType, Schema};
    if r.fields.is_empty() {
        return None;
    }
    let fields = r
        .fields
        .iter()
        .map(|f| Field {
            name: f.name.clone(),
            kind: match f.kind {
                FieldKind::String => FieldType::String,
                FieldKind::Number => FieldType::Number,
                FieldKind::Boolean => FieldType::Boolean,
                FieldKind::Strings => FieldType::Strings,
            },
            max_length: f.max_length,
        })
        .collect();
    Some(Schema {
        fields,
        refuse_unknown: r.unknown_fields == UnknownFields::Refuse,
    })
}

fn consent_policy(
    s: &ServiceSection,
    at: &str,
    problems: &mut Vec<String>,
) -> crate::guard::ConsentPolicy {
    let c = &s.consent;
    let cookie = match (&c.cookie, &c.cookie_value) {
        (None, None) => None,
        (Some(name), Some(value)) => {
            let token = |t: &str| {
                (1..=128).contains(&t.len())
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
            };
            if !token(name) || !token(value) {
                problems.push(format!(
                    "{at}: consent.cookie and consent.cookie_value must be 1 to 128 of [A-Za-z0-9._:-]"
                ));
            }
            Some((name.clone(), value.clone()))
        }
        _ => {
            problems.push(format!(
                "{at}: consent.cookie and consent.cookie_value go together"
            ));
            None
        }
    };
    crate::guard::ConsentPolicy {
        honor_gpc: c.honor_gpc,
        cookie,
    }
}

fn bot_filter(s: &ServiceSection, at: &str, problems: &mut Vec<String>) -> crate::guard::BotFilter {
    let b = &s.bots;
    for (key, list) in [("patterns", &b.patterns), ("exempt", &b.exempt)] {
        if list.len() > 256 || list.iter().any(|p| p.is_empty() || p.len() > 128) {
            problems.push(format!(
                "{at}: bots.{key} takes at most 256 entries of 1 to 128 characters"
            ));
        }
    }
    if b.filter {
        crate::guard::BotFilter::new(b.default_patterns, &b.patterns, &b.exempt)
    } else {
        crate::guard::BotFilter::off()
    }
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

fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

pub(super) fn check_route(
    tokens: &BTreeSet<String>,
    r: &RouteSection,
    at: &str,
    problems: &mut Vec<String>,
) {
    for (what, name) in [("database", &r.database), ("table", &r.table)] {
        if !names_ok(name) {
            problems.push(format!(
                "{at}: {what} {name:?} must match [0-9a-z_]{{3,128}}"
            ));
        }
    }
    if !tokens.contains(&r.token) {
        problems.push(format!(
            "{at}: token {:?} is not among the service's tokens",
            r.token
        ));
    }
    let mut names = BTreeSet::new();
    for f in &r.fields {
        if f.name.is_empty() || f.name.len() > 128 || !names.insert(f.name.as_str()) {
            problems.push(format!(
                "{at}: fields: {:?} must be a name of 1 to 128 characters, given once",
                f.name
            ));
        }
    }
    if r.fields.len() > 256 {
        problems.push(format!("{at}: fields: at most 256"));
    }
}

/// Build a route that `check_route` passed.
pub(super) fn build_route(service: &Arc<Service>, r: &RouteSection) -> Option<Route> {
    let token = service.tokens.iter().find(|(n, _)| *n == r.token);
    let prefix = if r.public { "/public" } else { "" };
    let path = format!("{prefix}/{}/{}", r.database, r.table);
    let authorization = sensitive(&format!("TD1 {}", service.api_key.expose()))?;
    let token = sensitive(token?.1.expose())?;
    let fingerprint = Endpoint::fingerprint_of(&authorization, &token, &service.upstream);
    let endpoint = Endpoint {
        fingerprint,
        service: service.name.clone(),
        target: service.upstream.clone(),
        policy: service.policy,
        token_name: r.token.clone(),
        series: crate::metrics::RouteSeries::new(&service.name, &path[1..]),
        label: path[1..].to_string(),
        path,
        authorization,
        token,
        secret_parts: service.secret_parts.clone(),
    };
    Some(Route {
        id: Arc::from(format!(
            "{}/{}/{}/{}",
            service.account_id, r.database, r.table, r.token
        )),
        service: service.clone(),
        database: r.database.clone(),
        table: r.table.clone(),
        public: r.public,
        schema: schema(r),
        endpoint: Arc::new(endpoint),
    })
}
