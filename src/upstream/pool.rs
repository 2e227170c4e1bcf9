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
    idle: Mutex<HashMap<u64, Vec<(Stream, Instant)>>>,
    per_peer: usize,
}

impl Pool {
    pub fn new(per_peer: usize) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            per_peer,
        }
    }

    /// The most recently used connection to `peer` idle for less than `max_idle`; older ones
    /// are closed on the way.
    pub fn take(&self, peer: u64, max_idle: Duration) -> Option<Stream> {
        let mut idle = lock(&self.idle);
        let stack = idle.get_mut(&peer)?;
        while let Some((stream, since)) = stack.pop() {
            if since.elapsed() < max_idle {
                return Some(stream);
            }
        }
        None
    }

    /// Keep `stream` for reuse, unless `peer` already has `per_peer` idle connections. A peer
    /// seen for the first time (a new address of the upstream's host, say) first closes the
    /// connections idle for `max_idle` or more and forgets the peers left with none: no call
    /// would take them, and an address no longer resolved would keep them open for good.
    pub fn put(&self, peer: u64, stream: Stream, max_idle: Duration) {
        let mut idle = lock(&self.idle);
        if let Some(stack) = idle.get_mut(&peer) {
            if stack.len() < self.per_peer {
                stack.push((stream, Instant::now()));
            }
            return;
        }
        idle.retain(|_, stack| {
            stack.retain(|(_, since)| since.elapsed() < max_idle);
            !stack.is_empty()
        });
        idle.insert(peer, vec![(stream, Instant::now())]);
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
    async fn a_new_peer_closes_what_idled_too_long_elsewhere_and_forgets_empty_peers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(4);
        let hour = Duration::from_secs(3600);
        pool.put(1, connected(&listener).await, hour);
        pool.put(1, connected(&listener).await, hour);
        // Another peer, its calls idling no time at all: peer 1's connections are all past it.
        pool.put(2, connected(&listener).await, Duration::ZERO);
        assert!(!lock(&pool.idle).contains_key(&1));
        // A peer already known sweeps nothing.
        pool.put(2, connected(&listener).await, Duration::ZERO);
        assert_eq!(lock(&pool.idle)[&2].len(), 2);
        // Within max_idle, a new peer leaves the others their connections.
        pool.put(3, connected(&listener).await, hour);
        assert_eq!(lock(&pool.idle)[&2].len(), 2);
        assert!(pool.take(2, hour).is_some());
    }
}
