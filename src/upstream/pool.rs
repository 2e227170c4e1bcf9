//! Idle upstream connections, by peer. Pingora's own pool costs each request a peek and a
//! `getpeername` on reuse, another peek on release and a spawned idle watcher; profiling showed
//! them on the pass-through path. Here an idle connection is a stack entry with a timestamp: one
//! the upstream closed meanwhile fails on first use, before any answer, and the call moves to a
//! fresh connection (see `connection::attempt`).

use crate::lock;
use pingora::protocols::Stream;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Idle HTTP/1 connections and HTTP/2 connections, by address: one set for the answers and one
/// for replay (`UpstreamClient`).
pub(super) struct Pools {
    pub(super) h1: Pool,
    pub(super) h2: super::h2::H2Pool,
}

impl Pools {
    pub(super) fn new(per_peer: usize) -> Pools {
        Pools {
            h1: Pool::new(per_peer),
            h2: super::h2::H2Pool::default(),
        }
    }
}

pub struct Pool {
    idle: Mutex<Idle>,
    per_peer: usize,
}

struct Idle {
    by_peer: HashMap<u64, Vec<(Stream, Instant)>, ahash::RandomState>,
    /// When connections past their idle time are next closed everywhere.
    next_sweep: Instant,
}

impl Pool {
    pub fn new(per_peer: usize) -> Self {
        Pool {
            idle: Mutex::new(Idle {
                by_peer: HashMap::default(),
                next_sweep: Instant::now(),
            }),
            per_peer,
        }
    }

    /// The most recently used connection to `peer` idle for less than `max_idle`; older ones
    /// are closed on the way.
    pub fn take(&self, peer: u64, max_idle: Duration) -> Option<Stream> {
        let mut idle = lock(&self.idle);
        let stack = idle.by_peer.get_mut(&peer)?;
        while let Some((stream, since)) = stack.pop() {
            if since.elapsed() < max_idle {
                return Some(stream);
            }
        }
        None
    }

    /// Keep `stream` for reuse, unless `peer` already has `per_peer` idle connections.
    pub fn put(&self, peer: u64, stream: Stream, max_idle: Duration) {
        let expired = {
            let mut idle = lock(&self.idle);
            let now = Instant::now();
            let stack = idle.by_peer.entry(peer).or_default();
            if stack.len() < self.per_peer {
                stack.push((stream, now));
            }
            idle.sweep_if_due(now, max_idle)
        };
        drop(expired);
    }

    /// Close, once every `max_idle`, the connections idle that long to any peer, and forget the
    /// peers left with none: a peer no call takes from any more (an address DNS no longer
    /// gives) would otherwise keep its connections open for good. The other pool's calls
    /// sweep this one too, so that a pool its own calls left alone is swept all the same; they
    /// skip it while this pool's own calls hold its lock (those calls sweep it themselves).
    pub fn sweep_if_due(&self, max_idle: Duration) {
        let Ok(mut idle) = self.idle.try_lock() else {
            return;
        };
        let expired = idle.sweep_if_due(Instant::now(), max_idle);
        drop(idle);
        drop(expired);
    }
}

impl Idle {
    /// The connections to close (after the lock is released), if a sweep is due.
    fn sweep_if_due(&mut self, now: Instant, max_idle: Duration) -> Vec<Stream> {
        if now < self.next_sweep {
            return Vec::new();
        }
        self.next_sweep = now + max_idle;
        let mut expired = Vec::new();
        self.by_peer.retain(|_, stack| {
            let (kept, old): (Vec<_>, Vec<_>) = std::mem::take(stack)
                .into_iter()
                .partition(|(_, since)| now.duration_since(*since) < max_idle);
            *stack = kept;
            expired.extend(old.into_iter().map(|(stream, _)| stream));
            !stack.is_empty()
        });
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connected(listener: &tokio::net::TcpListener) -> Stream {
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, _) = tokio::join!(client, listener.accept());
        Box::new(pingora::protocols::l4::stream::Stream::from(
            client.unwrap(),
        ))
    }

    #[tokio::test]
    async fn every_max_idle_the_connections_idle_that_long_close_and_empty_peers_go() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(4);
        let hour = Duration::from_secs(3600);
        // The first put sweeps (nothing yet) and sets the next sweep an hour away.
        pool.put(1, connected(&listener).await, hour);
        pool.put(1, connected(&listener).await, hour);
        // Not due: a sweep with any max_idle leaves them.
        pool.sweep_if_due(Duration::ZERO);
        assert_eq!(lock(&pool.idle).by_peer[&1].len(), 2);
        // Due (the peer DNS stopped giving is idle past max_idle): closed, and the peer gone,
        // while another peer's fresh connection stays.
        lock(&pool.idle).next_sweep = Instant::now();
        pool.put(2, connected(&listener).await, Duration::from_millis(50));
        assert_eq!(lock(&pool.idle).by_peer[&1].len(), 2, "younger than 50 ms");
        std::thread::sleep(Duration::from_millis(60));
        lock(&pool.idle).next_sweep = Instant::now();
        pool.put(2, connected(&listener).await, Duration::from_millis(50));
        let idle = lock(&pool.idle);
        assert!(!idle.by_peer.contains_key(&1));
        assert_eq!(idle.by_peer[&2].len(), 1, "the one just put");
    }
}
