//! Asynchronous, cached name resolution for upstream hosts. Pingora's `HttpPeer::new` resolves
//! with a blocking call and panics on failure, so peers are always built from a `SocketAddr`.

use dashmap::DashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct DnsError {
    pub host: String,
    pub reason: String,
}

struct Entry {
    addrs: Vec<SocketAddr>,
    resolved_at: Instant,
}

/// Resolved addresses per `(host, port)`, reused for `ttl`. When a refresh fails, the last good
/// answer is kept: a resolver hiccup should not take the upstream away.
pub struct DnsCache {
    ttl: Duration,
    entries: DashMap<(String, u16), Entry>,
    next: AtomicUsize,
}

impl DnsCache {
    pub fn new(ttl: Duration) -> Self {
        DnsCache {
            ttl,
            entries: DashMap::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// Every address of `host`, rotated so that successive calls start at the next one; the
    /// caller falls through to the others when a connect fails.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let key = (host.to_string(), port);
        if let Some(e) = self.entries.get(&key) {
            if e.resolved_at.elapsed() < self.ttl {
                return Ok(self.pick(&e.addrs));
            }
        }
        match tokio::net::lookup_host((host, port)).await {
            Ok(found) => {
                let addrs: Vec<SocketAddr> = found.collect();
                if addrs.is_empty() {
                    return self.fallback(&key, "no addresses".into());
                }
                let addr = self.pick(&addrs);
                self.entries.insert(
                    key,
                    Entry {
                        addrs,
                        resolved_at: Instant::now(),
                    },
                );
                Ok(addr)
            }
            Err(e) => self.fallback(&key, e.to_string()),
        }
    }

    fn fallback(&self, key: &(String, u16), reason: String) -> Result<Vec<SocketAddr>, DnsError> {
        match self.entries.get(key) {
            Some(e) => Ok(self.pick(&e.addrs)),
            None => Err(DnsError {
                host: key.0.clone(),
                reason,
            }),
        }
    }

    /// Rotate over the answers so that a multi-address upstream shares the load.
    fn pick(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let mut out = addrs.to_vec();
        out.rotate_left(self.next.fetch_add(1, Ordering::Relaxed) % addrs.len());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_localhost_resolve_without_network() {
        let dns = DnsCache::new(Duration::from_secs(30));
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(dns.resolve("127.0.0.1", 80).await.unwrap(), [v4]);
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(dns.resolve("::1", 80).await.unwrap(), [v6]);
        let local = dns.resolve("localhost", 8081).await.unwrap();
        assert!(local
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8081));
        assert!(dns.resolve("no-such-host.invalid", 80).await.is_err());
    }
}
