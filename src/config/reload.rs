//! Hot reload: SIGHUP re-reads and re-validates the file (key files included), then swaps the
//! config whole. In-flight requests finish on the config they loaded; a bad file changes nothing.

use super::{Config, ConfigErrors};
use crate::cache::OfferCache;
use crate::metrics;
use crate::shared::SharedSettings;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Load `path` and, if it is valid, swap it in. Cached offers of services whose routes or
/// tokens changed are dropped: they were fetched with what no longer applies.
pub fn reload(
    path: &Path,
    shared: &ArcSwap<Config>,
    cache: &OfferCache,
) -> Result<(), ConfigErrors> {
    let new = match Config::load(path) {
        Ok(new) => new,
        Err(errors) => {
            metrics::CONFIG_RELOADS.with_label_values(&["error"]).inc();
            for problem in &errors.0 {
                tracing::error!(path = %path.display(), problem = %problem, "reload refused; the running config stays");
            }
            return Err(errors);
        }
    };
    let old = shared.load();
    drop_changed_services(&old, &new, cache);
    warn_restart_only(&old, &new);
    shared.store(Arc::new(new));
    metrics::CONFIG_RELOADS.with_label_values(&["ok"]).inc();
    metrics::CONFIG_GENERATION.inc();
    tracing::info!(path = %path.display(), generation = metrics::CONFIG_GENERATION.get(), "config reloaded");
    Ok(())
}

/// Drop the cached offers of each service whose routes or tokens changed.
fn drop_changed_services(old: &Config, new: &Config, cache: &OfferCache) {
    for service in &old.services {
        if routing(old, &service.name) != routing(new, &service.name) {
            tracing::info!(service = %service.name, "routes or tokens changed: dropping its cached offers");
            cache.drop_service(&service.name);
        }
    }
}

/// Warn about each changed setting that only a restart applies.
fn warn_restart_only(old: &Config, new: &Config) {
    for (what, changed) in [
        ("server.listen", old.listen != new.listen),
        ("admin.listen", old.admin_listen != new.admin_listen),
        ("server.threads", old.threads != new.threads),
        (
            "spool",
            old.spool.dir != new.spool.dir || old.spool.max_bytes != new.spool.max_bytes,
        ),
        (
            "spool.replay_nice",
            old.spool.replay_nice != new.spool.replay_nice,
        ),
        (
            "cache",
            old.cache.max_entries != new.cache.max_entries
                || old.cache.max_bytes != new.cache.max_bytes,
        ),
        ("upstream.ca_file", old.ca_file != new.ca_file),
        ("upstream.protocol", old.protocol != new.protocol),
        (
            "shared",
            old.shared.as_ref().map(SharedSettings::restart_view)
                != new.shared.as_ref().map(SharedSettings::restart_view),
        ),
        (
            "limits.max_upstream_body_bytes (the shared tier's)",
            old.shared
                .as_ref()
                .zip(new.shared.as_ref())
                .is_some_and(|(a, b)| a.max_body != b.max_body),
        ),
        ("timeouts.dns_*", old.timeouts.dns != new.timeouts.dns),
        (
            "server.tls.listen",
            old.tls.as_ref().map(|t| (t.listen, t.h2))
                != new.tls.as_ref().map(|t| (t.listen, t.h2)),
        ),
        (
            "rate_limit.max_tracked",
            old.rate.max_tracked != new.rate.max_tracked,
        ),
    ] {
        if changed {
            tracing::warn!(key = what, "changed, but takes effect only at restart");
        }
    }
}

/// What a service's cached offers depend on: its (path, token name) routes, and its credentials.
type Routing = (BTreeSet<(String, String)>, Vec<String>);

fn routing(config: &Config, service: &str) -> Option<Routing> {
    let s = config.services.iter().find(|s| s.name == service)?;
    let routes = config
        .routes
        .values()
        .filter(|r| r.service.name == service)
        .map(|r| (r.endpoint.path.clone(), r.endpoint.token_name.clone()))
        .collect();
    let credentials = s
        .tokens
        .iter()
        .map(|(_, t)| t.expose().to_string())
        .chain([s.api_key.expose().to_string()])
        .collect();
    Some((routes, credentials))
}

/// Reloads on SIGHUP for as long as the server runs.
pub struct Reloader {
    pub path: PathBuf,
    pub config: Arc<ArcSwap<Config>>,
    pub cache: Arc<OfferCache>,
    /// Rung on each SIGHUP (`catch_hangups`).
    pub hangups: Arc<tokio::sync::Notify>,
}

/// Catch SIGHUP from now on, on a thread of its own, and ring the returned bell for each. Called
/// before any listener opens: SIGHUP's default action ends the process, and a reload service
/// that registered its own handler once the server ran left a window, just after the ports
/// opened, in which a `systemctl reload` killed the daemon.
pub fn catch_hangups() -> std::io::Result<Arc<tokio::sync::Notify>> {
    use tokio::signal::unix::{signal, SignalKind};
    let bell = Arc::new(tokio::sync::Notify::new());
    let ring = bell.clone();
    let (ready, registered) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("p13n-edge SIGHUP".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build();
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(e) => return drop(ready.send(Err(e))),
            };
            runtime.block_on(async move {
                match signal(SignalKind::hangup()) {
                    Ok(mut hangup) => {
                        let _ = ready.send(Ok(()));
                        while hangup.recv().await.is_some() {
                            ring.notify_one();
                        }
                    }
                    Err(e) => drop(ready.send(Err(e))),
                }
            });
        })?;
    registered
        .recv()
        .map_err(|_| std::io::Error::other("the SIGHUP thread ended"))??;
    Ok(bell)
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.hangups.notified() => {
                    let (path, config, cache) = (self.path.clone(), self.config.clone(), self.cache.clone());
                    let _ = tokio::task::spawn_blocking(move || reload(&path, &config, &cache)).await;
                }
            }
        }
    }
}
