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

    /// Keep `stream` for reuse, unless `peer` already has `per_peer` idle connections.
    pub fn put(&self, peer: u64, stream: Stream) {
        let mut idle = lock(&self.idle);
        let stack = idle.entry(peer).or_default();
        if stack.len() < self.per_peer {
            stack.push((stream, Instant::now()));
        }
    }
}
