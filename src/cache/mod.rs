//! The offer cache: the upstream's last answer per (service, route, visitor), kept whole so that a
//! repeat visitor is answered at memory speed and an upstream failure can be answered stale.
//! Keys are stored in full (never a hash alone: a collision would show one visitor another's
//! offers). Bounded by entries and bytes; entries past their stale limit are dropped; when full,
//! the oldest inserted visitor goes first.

use crate::lock;
use crate::metrics;
use crate::upstream::UpstreamResponse;
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use http::HeaderValue;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bookkeeping bytes charged per entry beyond its key and body (map slot, queue slot, Arcs).
pub const ENTRY_OVERHEAD: usize = 176;

/// What decides an answer: the route (its `Route::id`: account, database, table, token) and
/// the visitor, within a service. Two routes of one service answer one visitor differently.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub service: Arc<str>,
    pub route: Arc<str>,
    pub visitor: Box<str>,
}

impl CacheKey {
    pub fn new(service: &Arc<str>, route: &Arc<str>, visitor: &str) -> Self {
        CacheKey {
            service: service.clone(),
            route: route.clone(),
            visitor: visitor.into(),
        }
    }

    fn size(&self) -> usize {
        self.visitor.len() + ENTRY_OVERHEAD
    }
}

/// The upstream's answer as received, and when.
#[derive(Debug, Clone)]
pub struct Offers {
    pub status: u16,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    pub fetched: Instant,
    /// When these offers were last written to the shared tier (`shared::stamp`), 0 if never:
    /// an unchanged answer is not written again for a while. In the struct's padding: free.
    pub shared_at: u32,
}

impl From<&UpstreamResponse> for Offers {
    /// The answer, fetched now.
    fn from(r: &UpstreamResponse) -> Offers {
        Offers {
            status: r.status,
            content_type: r.content_type.clone(),
            body: r.body.clone(),
            fetched: Instant::now(),
            shared_at: 0,
        }
    }
}

#[derive(Debug)]
struct Slot {
    offers: Offers,
    /// The generation of its queue item, and in the top bit (`REFRESHED`) whether it was
    /// refreshed since it was queued: then it gets a second chance. One word, not two: this
    /// is paid per cached visitor.
    tag: u64,
}

const REFRESHED: u64 = 1 << 63;

impl Slot {
    fn generation(&self) -> u64 {
        self.tag & !REFRESHED
    }
}

/// How fresh a cached answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    Stale,
}

#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
}

pub struct OfferCache {
    /// Keys are shared with the eviction queue: one copy of each visitor id, not two.
    /// Hashed with ahash's randomly keyed hasher: as hard to flood as SipHash, a third of its
    /// cost on these keys.
    map: DashMap<Arc<CacheKey>, Slot, ahash::RandomState>,
    /// Insertion order, for eviction: (key, generation). Touched only when a visitor is new.
    order: Mutex<VecDeque<(Arc<CacheKey>, u64)>>,
    bytes: AtomicUsize,
    /// Entries in `map`, kept here: `DashMap::len` visits every shard.
    entries: AtomicUsize,
    next_generation: AtomicU64,
    limits: CacheLimits,
}

impl OfferCache {
    pub fn new(limits: CacheLimits) -> Self {
        OfferCache {
            map: DashMap::with_hasher(ahash::RandomState::new()),
            order: Mutex::new(VecDeque::new()),
            bytes: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            next_generation: AtomicU64::new(0),
            limits,
        }
    }

    /// The entry for `key` if it is younger than `stale_for`, with its freshness.
    pub fn get(
        &self,
        key: &CacheKey,
        fresh_for: Duration,
        stale_for: Duration,
        now: Instant,
    ) -> Option<(Offers, Freshness)> {
        let slot = self.map.get(key)?;
        let age = now.saturating_duration_since(slot.offers.fetched);
        if age < fresh_for {
            return Some((slot.offers.clone(), Freshness::Fresh));
        }
        if age < stale_for {
            return Some((slot.offers.clone(), Freshness::Stale));
        }
        drop(slot);
        self.remove(key);
        None
    }

    /// Store an answer, replacing the visitor's previous one.
    pub fn insert(&self, key: CacheKey, offers: Offers) {
        let size = key.size() + offers.body.len();
        if size > self.limits.max_bytes {
            return;
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        // A returning visitor: no new key is made.
        if let Some(mut slot) = self.map.get_mut(&key) {
            self.refresh(&mut slot, &key, offers);
        } else {
            self.insert_new(key, offers);
        }
        // Over a bound, evict; the queue's lock is taken only then, or for a new visitor.
        if self.len() > self.limits.max_entries || self.bytes() > self.limits.max_bytes {
            self.evict();
        }
        self.publish();
    }

    /// A returning visitor is marked, not queued again: re-queuing on every refresh grew the
    /// queue with dead items, and pruning them was a pass over millions of items under the
    /// queue's lock (a stall for every request waiting on it).
    fn refresh(&self, slot: &mut Slot, key: &CacheKey, offers: Offers) {
        slot.tag |= REFRESHED;
        let old = std::mem::replace(&mut slot.offers, offers);
        self.bytes
            .fetch_sub(key.size() + old.body.len(), Ordering::Relaxed);
    }

    fn insert_new(&self, key: CacheKey, offers: Offers) {
        match self.map.entry(Arc::new(key)) {
            // Another request made it meanwhile.
            Entry::Occupied(mut slot) => {
                let key = slot.key().clone();
                self.refresh(slot.get_mut(), &key, offers);
            }
            Entry::Vacant(vacant) => {
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                let key = vacant.key().clone();
                // Counted while the shard is still locked, before anyone can remove the entry:
                // the count then never drops below zero.
                let entries = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
                vacant.insert(Slot {
                    offers,
                    tag: generation,
                });
                let mut order = self.lock_order();
                order.push_back((key, generation));
                // Queue items of removed entries are dropped once they reach the front; bound
                // their number so the queue cannot outgrow the map by much.
                if order.len() > 2 * entries + 1024 {
                    order.retain(|(k, g)| self.map.get(k).is_some_and(|s| s.generation() == *g));
                }
            }
        }
    }

    pub fn remove(&self, key: &CacheKey) {
        if let Some((k, slot)) = self.map.remove(key) {
            self.forget(&k, &slot);
            self.publish();
        }
    }

    /// Drop every entry of a service (its routes or tokens changed).
    pub fn drop_service(&self, service: &str) {
        let keys: Vec<Arc<CacheKey>> = self
            .map
            .iter()
            .filter(|e| &*e.key().service == service)
            .map(|e| e.key().clone())
            .collect();
        for key in keys {
            self.remove(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Account for an entry taken out of the map.
    fn forget(&self, key: &CacheKey, slot: &Slot) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes
            .fetch_sub(key.size() + slot.offers.body.len(), Ordering::Relaxed);
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn evict(&self) {
        let mut order = self.lock_order();
        while self.len() > self.limits.max_entries || self.bytes() > self.limits.max_bytes {
            let Some((key, generation)) = order.pop_front() else {
                break;
            };
            // Only the queue item of the entry's current generation evicts it; a refreshed
            // entry goes to the back once instead (second-chance FIFO).
            let mut again = false;
            let removed = self.map.remove_if_mut(&key, |_, slot| {
                if slot.generation() != generation {
                    return false;
                }
                again = slot.tag & REFRESHED != 0;
                slot.tag = generation;
                !again
            });
            if again {
                order.push_back((key, generation));
            } else if let Some((k, slot)) = removed {
                self.forget(&k, &slot);
                metrics::CACHE_EVICTIONS.inc();
            }
        }
    }

    fn publish(&self) {
        metrics::CACHE_ENTRIES.set(self.len() as i64);
        metrics::CACHE_BYTES.set(self.bytes() as i64);
    }

    fn lock_order(&self) -> std::sync::MutexGuard<'_, VecDeque<(Arc<CacheKey>, u64)>> {
        lock(&self.order)
    }
}

#[cfg(test)]
mod tests;
