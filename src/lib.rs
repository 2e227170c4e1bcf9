//! p13n-edge: an edge daemon in front of Treasure Data's Real-time Personalization API.
//! `build_server` assembles the pingora services from a validated `Config`; `main` and the
//! integration tests both use it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod emulator;
pub mod error;
pub mod event;
pub mod metrics;
pub mod proxy;
pub mod upstream;

use arc_swap::ArcSwap;
use config::Config;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;
use std::sync::Arc;

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

/// A pingora server with the public proxy and the admin listener, ready for `run`.
pub fn build_server(config: Config, upgrade: bool) -> (Server, Arc<ArcSwap<Config>>) {
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config));
    server.bootstrap();
    let shared = add_proxy(&mut server, config);
    (server, shared)
}

/// Add the proxy and admin services to a server; returns the swappable config they share.
pub fn add_proxy(server: &mut Server, config: Config) -> Arc<ArcSwap<Config>> {
    metrics::init();
    metrics::CONFIG_GENERATION.set(1);
    let listen = config.listen.to_string();
    let admin_listen = config.admin_listen.to_string();
    let client = Arc::new(upstream::UpstreamClient::new(
        config.timeouts.dns_ttl,
        config.ca_file.clone(),
    ));
    let shared = Arc::new(ArcSwap::from_pointee(config));

    let edge = proxy::Edge {
        config: shared.clone(),
        client: client.clone(),
    };
    let mut public =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, edge, "p13n-edge");
    public.add_tcp(&listen);
    server.add_service(public);

    let mut admin = Service::new(
        "p13n-edge admin".into(),
        admin::Admin {
            config: shared.clone(),
            client,
        },
    );
    admin.add_tcp(&admin_listen);
    admin.threads = Some(1);
    server.add_service(admin);
    shared
}

/// Add the upstream emulator on `listen`.
pub fn add_emulator(server: &mut Server, listen: &str, emulator: emulator::Emulator) {
    let mut service = Service::new("p13n-edge emulator".into(), emulator);
    service.add_tcp(listen);
    server.add_service(service);
}

/// A server holding only the emulator, with a short grace period.
pub fn emulator_server(listen: &str, emulator: emulator::Emulator, threads: usize) -> Server {
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    add_emulator(&mut server, listen, emulator);
    server
}
