//! The offer cache, tested: freshness, whole keys, routes of a service, the bounds.

use super::*;

fn offers(body: &str, fetched: Instant) -> Offers {
    Offers {
        status: 200,
        content_type: None,
        body: Bytes::from(body.to_string()),
        fetched,
        shared_at: 0,
    }
}

#[test]
fn the_shared_stamp_costs_no_byte() {
    assert!(std::mem::size_of::<Offers>() <= 96);
}

fn key(service: &str, visitor: &str) -> CacheKey {
    CacheKey::new(
        &Arc::from(service),
        &Arc::from("1/db/pageviews/web"),
        visitor,
    )
}

const S: Duration = Duration::from_secs(1);

#[test]
fn fresh_then_stale_then_gone() {
    let cache = OfferCache::new(CacheLimits {
        max_entries: 10,
        max_bytes: 1 << 20,
    });
    let t = Instant::now();
    cache.insert(key("a", "v"), offers("{}", t));
    assert_eq!(
        cache
            .get(&key("a", "v"), 10 * S, 60 * S, t + 5 * S)
            .unwrap()
            .1,
        Freshness::Fresh
    );
    assert_eq!(
        cache
            .get(&key("a", "v"), 10 * S, 60 * S, t + 30 * S)
            .unwrap()
            .1,
        Freshness::Stale
    );
    assert!(cache
        .get(&key("a", "v"), 10 * S, 60 * S, t + 61 * S)
        .is_none());
    assert!(cache.is_empty());
    assert_eq!(cache.bytes(), 0);
}

#[test]
fn keys_are_whole_and_per_service() {
    let cache = OfferCache::new(CacheLimits {
        max_entries: 10,
        max_bytes: 1 << 20,
    });
    let t = Instant::now();
    cache.insert(key("a", "v1"), offers("one", t));
    cache.insert(key("b", "v1"), offers("two", t));
    assert_eq!(cache.get(&key("a", "v1"), S, S, t).unwrap().0.body, "one");
    assert_eq!(cache.get(&key("b", "v1"), S, S, t).unwrap().0.body, "two");
    assert!(cache.get(&key("a", "v2"), S, S, t).is_none());
    cache.drop_service("a");
    assert!(cache.get(&key("a", "v1"), S, S, t).is_none());
    assert_eq!(cache.len(), 1);
}

#[test]
fn two_routes_of_one_service_keep_their_own_answers_and_go_together() {
    let cache = OfferCache::new(CacheLimits {
        max_entries: 10,
        max_bytes: 1 << 20,
    });
    let t = Instant::now();
    let service: Arc<str> = Arc::from("a");
    let views = CacheKey::new(&service, &Arc::from("1/db/pageviews/web"), "v1");
    let checkout = CacheKey::new(&service, &Arc::from("1/db/checkout/web"), "v1");
    cache.insert(views.clone(), offers("views", t));
    assert!(cache.get(&checkout, S, S, t).is_none());
    cache.insert(checkout.clone(), offers("checkout", t));
    assert_eq!(cache.get(&views, S, S, t).unwrap().0.body, "views");
    assert_eq!(cache.get(&checkout, S, S, t).unwrap().0.body, "checkout");
    cache.drop_service("a");
    assert!(cache.is_empty());
}

#[test]
fn bounded_by_entries_and_bytes_oldest_first() {
    let cache = OfferCache::new(CacheLimits {
        max_entries: 3,
        max_bytes: 1 << 20,
    });
    let t = Instant::now();
    for v in ["v1", "v2", "v3"] {
        cache.insert(key("a", v), offers("x", t));
    }
    cache.insert(key("a", "v1"), offers("refreshed", t)); // v1 gets a second chance
    cache.insert(key("a", "v4"), offers("x", t));
    assert!(
        cache.get(&key("a", "v2"), S, S, t).is_none(),
        "the oldest went first"
    );
    assert_eq!(cache.len(), 3);
    assert_eq!(
        cache.get(&key("a", "v1"), S, S, t).unwrap().0.body,
        "refreshed"
    );

    let per_entry = key("a", "v00").size() + 100;
    let cache = OfferCache::new(CacheLimits {
        max_entries: 1000,
        max_bytes: 5 * per_entry,
    });
    for i in 0..50 {
        cache.insert(key("a", &format!("v{i:02}")), offers(&"y".repeat(100), t));
        assert!(cache.bytes() <= 5 * per_entry);
    }
    assert_eq!(cache.len(), 5);
    // Refreshing one visitor many times leaves the books balanced.
    for _ in 0..10_000 {
        cache.insert(key("a", "v49"), offers(&"y".repeat(100), t));
    }
    assert_eq!(cache.len(), 5);
    assert_eq!(cache.bytes(), 5 * per_entry);
    // One queue item per visitor, however often it is refreshed.
    assert_eq!(cache.lock_order().len(), 5);
}

proptest::proptest! {
    #[test]
    fn the_counts_follow_the_map_whatever_the_operations(
        ops in proptest::collection::vec((0u8..4, 0u8..12, 0usize..40), 1..300),
    ) {
        let cache = OfferCache::new(CacheLimits {
            max_entries: 6,
            max_bytes: 400,
        });
        let t = Instant::now();
        for (op, visitor, len) in ops {
            let k = key("a", &format!("v{visitor}"));
            match op {
                0 | 1 => cache.insert(k, offers(&"z".repeat(len), t)),
                2 => cache.remove(&k),
                // Past its stale limit: the lookup removes it.
                _ => {
                    cache.get(&k, S, S, t + 2 * S);
                }
            }
            let bytes: usize = cache
                .map
                .iter()
                .map(|e| e.key().size() + e.value().offers.body.len())
                .sum();
            proptest::prop_assert_eq!(cache.len(), cache.map.len());
            proptest::prop_assert_eq!(cache.bytes(), bytes);
            proptest::prop_assert!(cache.len() <= 6 && cache.bytes() <= 400);
        }
    }
}
