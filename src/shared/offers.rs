//! The shared tier as a second cache tier behind the local one: a local miss filled from it,
//! an upstream's 2xx written through to it (off the answer path, skipped when unchanged).

use super::codec::{self, decode, encode, offers_key};
use super::{Op, SharedTier};
use crate::cache::{CacheKey, Freshness, OfferCache, Offers};
use crate::metrics;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

impl SharedTier {
    /// A local miss: the visitor's offers from the shared tier, put in the local cache and
    /// answered from there as if fetched here (their age is the stored fetch time's).
    pub async fn fill(&self, cache: &OfferCache, slot: Slot<'_>) -> Option<(Offers, Freshness)> {
        if !self.settings.offers {
            return None;
        }
        let Slot {
            key,
            namespace,
            fresh,
            stale,
        } = slot;
        let stored = offers_key(&self.settings.key_prefix, namespace, key);
        let Some((lease, mut conn)) = self.connection(&stored) else {
            metrics::SHARED_LOOKUPS
                .with_label_values(&["skipped"])
                .inc();
            return None;
        };
        // At most one byte past the longest value this edge writes: a longer one is not ours,
        // and is not read whole.
        let cap = codec::HEADER + codec::MAX_CONTENT_TYPE + self.settings.max_body + 1;
        let found: Option<Vec<u8>> = self
            .run(Op::Get, lease, async move {
                let mut get = redis::cmd("GETRANGE");
                get.arg(stored).arg(0).arg(cap - 1);
                get.query_async(&mut conn).await
            })
            .await;
        let result = |r: &str| metrics::SHARED_LOOKUPS.with_label_values(&[r]).inc();
        let value = match found {
            // GETRANGE answers "" for a missing key.
            Some(value) if !value.is_empty() => value,
            missing => {
                result(if missing.is_none() { "error" } else { "miss" });
                return None;
            }
        };
        let (offers, freshness) = self.decoded(&value, fresh, stale)?;
        result("hit");
        // As written there, about when it was fetched: not written back for a while.
        let offers = Offers {
            shared_at: stamp(offers.fetched),
            ..offers
        };
        cache.insert(key.clone(), offers.clone());
        Some((offers, freshness))
    }

    /// A stored value's offers, and how fresh they are; `None` (counted) when it does not
    /// decode or is past the stale limit.
    fn decoded(
        &self,
        value: &[u8],
        fresh: Duration,
        stale: Duration,
    ) -> Option<(Offers, Freshness)> {
        let result = |r: &str| metrics::SHARED_LOOKUPS.with_label_values(&[r]).inc();
        let now = Instant::now();
        let offers = match decode(value, self.settings.max_body, now, SystemTime::now()) {
            Ok(offers) => offers,
            Err(_) => {
                metrics::SHARED_ERRORS
                    .with_label_values(&[Op::Get.label(), "decode"])
                    .inc();
                result("error");
                return None;
            }
        };
        let age = now.saturating_duration_since(offers.fetched);
        let freshness = if age < fresh {
            Freshness::Fresh
        } else if age < stale {
            Freshness::Stale
        } else {
            result("miss");
            return None;
        };
        Some((offers, freshness))
    }

    /// Write an upstream's 2xx through, off the answer path, to expire with the service's stale
    /// limit; call before `offers` go in the local cache. An answer the same as the local one
    /// that was written less than half its freshness ago is not written again (a `fast` hit's
    /// replayed event would otherwise cost a write each): the shared copy stays fresh. Dropped
    /// (and counted) while too many writes are in flight or the tier is down.
    pub fn put(self: &Arc<Self>, cache: &OfferCache, slot: Slot<'_>, offers: &mut Offers) {
        if !self.settings.offers {
            return;
        }
        let Slot {
            key,
            namespace,
            fresh,
            stale,
        } = slot;
        let written = |r: &str| metrics::SHARED_WRITES.with_label_values(&[r]).inc();
        let now = Instant::now();
        if let Some((previous, _)) = cache.get(key, Duration::MAX, Duration::MAX, now) {
            let recent =
                stamp(now).saturating_sub(previous.shared_at) < (fresh / 2).as_secs() as u32;
            if previous.shared_at != 0 && recent && same_answer(&previous, offers) {
                offers.shared_at = previous.shared_at;
                return written("unchanged");
            }
        }
        let ttl = stale.saturating_sub(offers.fetched.elapsed());
        if ttl < Duration::from_millis(1) {
            return;
        }
        // Larger than what a lookup reads back (the limit when the tier was made): not stored.
        if offers.body.len() > self.settings.max_body {
            return written("dropped");
        }
        let Some(value) = encode(offers, now, SystemTime::now()) else {
            return written("dropped");
        };
        let in_flight = self.writes_in_flight.fetch_add(1, Ordering::AcqRel);
        if in_flight >= self.settings.max_writes_in_flight {
            self.writes_in_flight.fetch_sub(1, Ordering::AcqRel);
            return written("dropped");
        }
        let stored = offers_key(&self.settings.key_prefix, namespace, key);
        let Some((lease, mut conn)) = self.connection(&stored) else {
            self.writes_in_flight.fetch_sub(1, Ordering::AcqRel);
            return written("skipped");
        };
        offers.shared_at = stamp(now);
        let tier = self.clone();
        tokio::spawn(async move {
            let ms = ttl.as_millis() as u64;
            let mut set = redis::cmd("SET");
            set.arg(stored).arg(&value[..]).arg("PX").arg(ms);
            let done = tier
                .run(Op::Put, lease, set.query_async::<()>(&mut conn))
                .await;
            tier.writes_in_flight.fetch_sub(1, Ordering::AcqRel);
            written(if done.is_some() { "ok" } else { "error" });
        });
    }
}

/// Where a visitor's offers are kept in the tier, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    pub key: &'a CacheKey,
    /// The route's `Endpoint::fingerprint`.
    pub namespace: &'a str,
    pub fresh: Duration,
    pub stale: Duration,
}

/// A time as `Offers::shared_at`: whole seconds since a day before the first stamp, plus one
/// (0 is never). Coarse on purpose: it only decides when an unchanged answer is written again.
fn stamp(at: Instant) -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now)
    });
    let secs = at.saturating_duration_since(*epoch).as_secs();
    secs.min(u64::from(u32::MAX - 1)) as u32 + 1
}

fn same_answer(a: &Offers, b: &Offers) -> bool {
    a.status == b.status && a.content_type == b.content_type && a.body == b.body
}
