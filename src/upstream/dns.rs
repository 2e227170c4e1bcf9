//! Asynchronous, cached name resolution for upstream hosts. Pingora's `HttpPeer::new` resolves
//! with a blocking call and panics on failure, so peers are always built from a `SocketAddr`.
//!
//! Stale-while-revalidate: past the TTL, calls keep the last good addresses while one lookup
//! per host runs in the background, so a slow or failing resolver costs no request anything.
//! Only a host's first lookup, and one whose last answer is older than `ttl + max_stale`, make
//! calls wait; even then a failed lookup leaves the last good answer in use.

use crate::lock;
use crate::metrics;
use async_trait::async_trait;
use dashmap::DashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct DnsError {
    pub host: String,
    pub reason: String,
}

/// Looks names up: `tokio::net::lookup_host` in production (`SystemResolver`); tests plug in
/// resolvers that fail or hang.
#[async_trait]
pub trait Resolve: Send + Sync + 'static {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo` on tokio's blocking pool).
pub struct SystemResolver;

#[async_trait]
impl Resolve for SystemResolver {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// How long answers are used, and how long one lookup may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsPolicy {
    /// An answer is used as is this long.
    pub ttl: Duration,
    /// Past the TTL, the answer is still used this long while a lookup refreshes it.
    pub max_stale: Duration,
    /// A lookup not answered by then has failed (and frees the host's lookup slot).
    pub timeout: Duration,
}

/// What an answer of a given age is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// No answer yet: wait for the first lookup.
    Missing,
    Fresh,
    /// Use it, and refresh it in the background.
    Stale,
    /// Too old to use without trying again: wait for a lookup; if it fails, use it anyway.
    Expired,
}

impl DnsPolicy {
    pub fn try_new(ttl: Duration, max_stale: Duration, timeout: Duration) -> Result<Self, String> {
        if timeout.is_zero() {
            return Err("the DNS lookup timeout must be above 0".into());
        }
        Ok(DnsPolicy {
            ttl,
            max_stale,
            timeout,
        })
    }

    /// The state of an answer obtained at `resolved_at` (`None`: never), seen at `now`.
    pub fn judge(&self, resolved_at: Option<Instant>, now: Instant) -> Freshness {
        let Some(at) = resolved_at else {
            return Freshness::Missing;
        };
        let age = now.saturating_duration_since(at);
        if age < self.ttl {
            Freshness::Fresh
        } else if age < self.ttl.saturating_add(self.max_stale) {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }
}

/// One host's last good answer and its lookup in flight.
#[derive(Default)]
struct Host {
    state: Mutex<HostState>,
    /// Woken when a lookup ends, well or not.
    settled: Notify,
}

#[derive(Default)]
struct HostState {
    last_good: Option<(Arc<[SocketAddr]>, Instant)>,
    in_flight: bool,
    /// Lookups ended so far: a waiting call returns once this moves.
    ended: u64,
    last_error: Option<String>,
}

/// Resolved addresses per `(host, port)`, under a `DnsPolicy`. Lookups run as tasks of their
/// own, at most one per host at a time, so a call that gives up (its deadline) cancels none.
pub struct DnsCache {
    policy: DnsPolicy,
    resolver: Arc<dyn Resolve>,
    hosts: DashMap<(String, u16), Arc<Host>>,
    next: AtomicUsize,
}

/// The clock of every decision here: tokio's, so that tests can pause it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl DnsCache {
    pub fn new(policy: DnsPolicy, resolver: Arc<dyn Resolve>) -> Self {
        DnsCache {
            policy,
            resolver,
            hosts: DashMap::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// Every address of `host`, rotated so that successive calls start at the next one; the
    /// caller falls through to the others when a connect fails.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let entry = self.host(host, port);
        let mut waited_for = None;
        loop {
            // Armed before the state is read, so that a lookup ending in between still wakes us.
            let settled = entry.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut state = lock(&entry.state);
                let at = state.last_good.as_ref().map(|(_, at)| *at);
                let waited = waited_for.is_some_and(|seen| seen != state.ended);
                match self.policy.judge(at, now()) {
                    Freshness::Fresh => return Ok(self.pick(&state)),
                    Freshness::Stale => {
                        metrics::DNS_STALE.with_label_values(&[host]).inc();
                        self.refresh(&entry, &mut state, host, port);
                        return Ok(self.pick(&state));
                    }
                    Freshness::Missing if waited => {
                        return Err(DnsError {
                            host: host.to_string(),
                            reason: state.last_error.clone().unwrap_or_default(),
                        })
                    }
                    // The lookup waited for failed: the old answer beats none.
                    Freshness::Expired if waited => return Ok(self.pick(&state)),
                    Freshness::Missing | Freshness::Expired => {
                        self.refresh(&entry, &mut state, host, port);
                        waited_for = Some(state.ended);
                    }
                }
            }
            settled.await;
        }
    }

    fn host(&self, host: &str, port: u16) -> Arc<Host> {
        let key = (host.to_string(), port);
        if let Some(found) = self.hosts.get(&key) {
            return found.clone();
        }
        self.hosts.entry(key).or_default().clone()
    }

    /// Start a lookup of `host` unless one is in flight.
    fn refresh(&self, entry: &Arc<Host>, state: &mut HostState, host: &str, port: u16) {
        if state.in_flight {
            return;
        }
        state.in_flight = true;
        let (entry, resolver, timeout) =
            (entry.clone(), self.resolver.clone(), self.policy.timeout);
        let host = host.to_string();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(timeout, resolver.lookup(&host, port)).await {
                Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
                Ok(Ok(_)) => Err(("error", "no addresses".to_string())),
                Ok(Err(e)) => Err(("error", e.to_string())),
                Err(_) => Err(("timeout", format!("no answer within {timeout:?}"))),
            };
            let outcome = result.as_ref().map_or_else(|(kind, _)| *kind, |_| "ok");
            metrics::DNS_LOOKUPS
                .with_label_values(&[&host, outcome])
                .inc();
            let mut state = lock(&entry.state);
            match result {
                Ok(addrs) => {
                    state.last_good = Some((addrs.into(), now()));
                    state.last_error = None;
                }
                Err((_, reason)) => {
                    let kept = state.last_good.is_some();
                    tracing::warn!(%host, %reason, last_answer_kept = kept, "upstream DNS lookup failed");
                    state.last_error = Some(reason);
                }
            }
            state.in_flight = false;
            state.ended += 1;
            drop(state);
            entry.settled.notify_waiters();
        });
    }

    /// The last good answer, rotated so that a multi-address upstream shares the load.
    fn pick(&self, state: &HostState) -> Vec<SocketAddr> {
        let Some((addrs, _)) = &state.last_good else {
            return Vec::new();
        };
        let mut out = addrs.to_vec();
        out.rotate_left(self.next.fetch_add(1, Ordering::Relaxed) % addrs.len());
        out
    }
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
