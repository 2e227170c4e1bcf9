//! p13n-edge: an edge daemon in front of Treasure Data's Real-time Personalization API.
//! `build_server` assembles the pingora services from a validated `Config`; `main` and the
//! integration tests both use it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod answer;
pub mod cache;
pub mod config;
pub mod emulator;
pub mod error;
pub mod event;
pub mod flow;
pub mod guard;
pub mod listener;
pub mod metrics;
pub mod probe;
pub mod proxy;
mod runtime;
pub mod schema;
pub mod secret;
pub mod shared;
pub mod site;
pub mod spool;
pub mod upstream;
pub mod vendor;

use arc_swap::ArcSwap;
use config::Config;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use spool::SpoolError;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

/// Lock a mutex, and go on with its data if a thread panicked while holding it: every value
/// these mutexes guard is valid between statements.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pingora's process settings for a config; `upgrade` takes the sockets of a running instance.
pub fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.graceful_shutdown_timeout.as_secs()),
        upgrade_sock: config.upgrade_sock.clone(),
        pid_file: config.pid_file.clone(),
        ..ServerConf::default()
    }
}

/// What the services of a proxy share, for reload and for tests; and the addresses its server
/// listens on, for the listeners added beside it.
pub struct Handles {
    pub config: Arc<ArcSwap<Config>>,
    pub cache: Arc<cache::OfferCache>,
    pub listeners: Listeners,
}

/// The addresses one pingora `Server` listens on, and what listens on each. No two listeners of
/// a `Server` may share one: pingora hands a listener on an address it has already bound the
/// first one's socket (meant for the sockets an upgrade passes on), so two services would accept
/// on one socket, and both would close it at shutdown, the second close hitting whatever took
/// the descriptor's number since (a debug build aborts). The config's own listeners are
/// validated with it; every other one is claimed here before it is added.
#[derive(Debug, Default)]
pub struct Listeners(Vec<(String, SocketAddr)>);

impl Listeners {
    /// The listeners of a validated config: its public, admin and TLS addresses.
    fn of(config: &Config) -> Listeners {
        let mut taken = vec![
            ("server.listen".to_string(), config.listen),
            ("admin.listen".to_string(), config.admin_listen),
        ];
        if let Some(tls) = &config.tls {
            taken.push(("server.tls.listen".to_string(), tls.listen));
        }
        Listeners(taken)
    }

    /// Claim `addr` (`host:port`) for `what`: its first address, the one pingora binds. Refused,
    /// naming both, where it would share a socket with one claimed before
    /// (`config::same_socket`), or where `addr` names no address.
    pub fn claim(&mut self, what: &str, addr: &str) -> Result<(), String> {
        let first = addr
            .to_socket_addrs()
            .map_err(|e| format!("{what} ({addr}): {e}"))?
            .next()
            .ok_or_else(|| format!("{what} ({addr}): names no address"))?;
        if let Some((other, at)) = self
            .0
            .iter()
            .find(|(_, old)| config::same_socket(old, &first))
        {
            return Err(config::overlap(what, addr, other, at));
        }
        self.0.push((what.to_string(), first));
        Ok(())
    }
}

/// A pingora server with the public proxy and the admin listener, ready for `run`. With `path`,
/// SIGHUP reloads the config from it.
pub fn build_server(
    config: Config,
    path: Option<PathBuf>,
    upgrade: bool,
) -> Result<(Server, Handles), SpoolError> {
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config));
    server.bootstrap();
    let handles = add_proxy(&mut server, config)?;
    if let Some(path) = path {
        let hangups = match config::catch_hangups() {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: hot reload is off");
                Arc::new(tokio::sync::Notify::new())
            }
        };
        let reloader = config::Reloader {
            path,
            config: handles.config.clone(),
            cache: handles.cache.clone(),
            hangups,
        };
        server.add_service(background_service("p13n-edge reload", reloader));
    }
    Ok((server, handles))
}

/// Add the proxy, its spool replay and the admin listener to a server. Fails when the spool
/// cannot be opened.
pub fn add_proxy(server: &mut Server, config: Config) -> Result<Handles, SpoolError> {
    add_proxy_resolving(server, config, Arc::new(upstream::SystemResolver))
}

/// `add_proxy`, with upstream names looked up by `resolver` (tests plug in slow or failing ones).
pub fn add_proxy_resolving(
    server: &mut Server,
    config: Config,
    resolver: Arc<dyn upstream::Resolve>,
) -> Result<Handles, SpoolError> {
    metrics::init();
    metrics::CONFIG_GENERATION.set(1);
    let listen = config.listen.to_string();
    let tls = config.tls.as_ref().map(|t| (t.listen.to_string(), t.h2));
    let idle = config.timeouts.client_idle;
    let admin_listen = config.admin_listen.to_string();
    let client = Arc::new(upstream::UpstreamClient::new(
        config.timeouts.dns,
        resolver,
        config.ca_file.clone(),
        config.protocol,
    ));
    let cache = Arc::new(cache::OfferCache::new(config.cache));
    let spool = spool::Spool::open(config.spool.clone())?;
    let tier = shared_tier(&config);
    let shared = Arc::new(ArcSwap::from_pointee(config));

    let flow = flow::Flow {
        client: client.clone(),
        cache: cache.clone(),
        spool: spool.clone(),
        shared: tier.clone(),
    };
    add_public(server, &shared, flow, &listen, tls, idle);
    add_background(server, &shared, &client, &cache, &spool, &tier);
    let admin_app = admin::Admin {
        config: shared.clone(),
        client,
        spool,
        shared: tier,
    };
    let mut admin = Service::new("p13n-edge admin".into(), admin_app);
    admin.add_tcp(&admin_listen);
    admin.threads = Some(1);
    server.add_service(admin);
    Ok(Handles {
        listeners: Listeners::of(&shared.load()),
        config: shared,
        cache,
    })
}

/// The public listener (plain, and TLS if configured): the request step on `flow`.
fn add_public(
    server: &mut Server,
    shared: &Arc<ArcSwap<Config>>,
    flow: flow::Flow,
    listen: &str,
    tls: Option<(String, bool)>,
    idle: std::time::Duration,
) {
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(idle);
    let edge = proxy::Edge::new(shared.clone(), flow, options);
    let app = listener::PublicApp {
        edge: Arc::new(edge),
        config: shared.clone(),
    };
    let mut public = Service::new("p13n-edge".into(), app);
    public.add_tcp(listen);
    if let Some((tls_listen, h2)) = tls {
        public.add_tls_with_settings(&tls_listen, None, tls_settings(shared.clone(), h2));
    }
    server.add_service(public);
}

/// The spool's replay, and the shared tier's warden if there is a tier.
fn add_background(
    server: &mut Server,
    shared: &Arc<ArcSwap<Config>>,
    client: &Arc<upstream::UpstreamClient>,
    cache: &Arc<cache::OfferCache>,
    spool: &Arc<spool::Spool>,
    tier: &Option<Arc<shared::SharedTier>>,
) {
    let replayer = spool::Replayer {
        spool: spool.clone(),
        client: client.clone(),
        destinations: Arc::new(config::InForce(shared.clone())),
        cache: cache.clone(),
        shared: tier.clone(),
    };
    server.add_service(background_service("p13n-edge spool replay", replayer));
    if let Some(tier) = tier {
        let warden = shared::Warden { tier: tier.clone() };
        server.add_service(background_service("p13n-edge shared tier", warden));
    }
}

/// The shared tier of `[shared]`, if configured. Validated with the config, so a failure here is
/// unexpected: logged, and the daemon serves without it.
fn shared_tier(config: &Config) -> Option<Arc<shared::SharedTier>> {
    let settings = config.shared.clone()?;
    match shared::SharedTier::new(settings) {
        Ok(tier) => Some(Arc::new(tier)),
        Err(e) => {
            tracing::error!(kind = ?e.kind(), "[shared] cannot be used: serving without it");
            None
        }
    }
}

/// Add the upstream emulator on `listen`. It speaks HTTP/1.1 and, with prior knowledge,
/// cleartext HTTP/2 (h2c), as an `upstream.protocol = "h2"` proxy calls an `http://` upstream.
pub fn add_emulator(
    server: &mut Server,
    listeners: &mut Listeners,
    listen: &str,
    emulator: emulator::Emulator,
) -> Result<(), String> {
    listeners.claim("the emulator", listen)?;
    let mut app = pingora::apps::http_app::HttpServer::new_app(emulator);
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    app.server_options = Some(options);
    let mut service = Service::new("p13n-edge emulator".into(), app);
    service.add_tcp(listen);
    server.add_service(service);
    Ok(())
}

/// Add the demo site on `listen`, and over TLS on `tls_listen` with the certificate of the
/// proxy's own TLS listener.
pub fn add_demo_site(
    server: &mut Server,
    handles: &mut Handles,
    listen: &str,
    tls_listen: Option<&str>,
    site: site::DemoSite,
) -> Result<(), String> {
    handles.listeners.claim("the demo site", listen)?;
    if let Some(tls_listen) = tls_listen {
        handles.listeners.claim("the demo site's TLS", tls_listen)?;
    }
    let mut service = Service::new("p13n-edge demo site".into(), site);
    service.add_tcp(listen);
    if let Some(tls_listen) = tls_listen {
        service.add_tls_with_settings(
            tls_listen,
            None,
            tls_settings(handles.config.clone(), false),
        );
    }
    service.threads = Some(1);
    server.add_service(service);
    Ok(())
}

/// TLS settings that take the certificate of the config in force at each handshake.
fn tls_settings(config: Arc<ArcSwap<Config>>, h2: bool) -> TlsSettings {
    // Paths are not read: a resolver is set.
    let mut settings =
        TlsSettings::intermediate("", "").expect("TLS settings without files cannot fail");
    settings.set_cert_resolver(Arc::new(config::CertFromConfig(config)));
    if h2 {
        settings.enable_h2();
    }
    settings
}

/// A server holding only the emulator, with a short grace period.
pub fn emulator_server(
    listen: &str,
    emulator: emulator::Emulator,
    threads: usize,
) -> Result<Server, String> {
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    add_emulator(&mut server, &mut Listeners::default(), listen, emulator)?;
    Ok(server)
}
