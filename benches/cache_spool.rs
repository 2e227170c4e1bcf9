//! The offer cache under contention, and the spool's group commit.
//! Run: `cargo bench --bench cache_spool`.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use p13n_edge::cache::{CacheKey, CacheLimits, OfferCache, Offers};
use p13n_edge::spool::{Spool, SpoolSettings};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OFFERS: &[u8] = br#"{"offers":{"offer_for_high_loyalty":{"attributes":{"status":"high"},"batch_segments":[{"id":"1588214"}]}}}"#;
const VISITORS: usize = 100_000;

fn filled() -> (Arc<OfferCache>, Vec<CacheKey>) {
    let cache = Arc::new(OfferCache::new(CacheLimits {
        max_entries: VISITORS,
        max_bytes: 1 << 30,
    }));
    let service: Arc<str> = Arc::from("shop");
    let route: Arc<str> = Arc::from("1/demo_db/pageviews/web");
    let keys: Vec<CacheKey> = (0..VISITORS)
        .map(|i| {
            CacheKey::new(
                &service,
                &route,
                &format!("42a508e2-d9b1-4baa-9eb2-{i:012}"),
            )
        })
        .collect();
    for k in &keys {
        cache.insert(k.clone(), offers());
    }
    (cache, keys)
}

fn offers() -> Offers {
    Offers {
        status: 200,
        content_type: None,
        body: Bytes::from_static(OFFERS),
        fetched: Instant::now(),
        shared_at: 0,
    }
}

/// `threads` threads share `iters` operations: the time is wall time, so contention shows.
fn contended(threads: usize, iters: u64, op: impl Fn(usize) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let op = &op;
            s.spawn(move || {
                for i in 0..iters as usize / threads {
                    op(i * threads + t);
                }
            });
        }
    });
    start.elapsed()
}

fn cache(c: &mut Criterion) {
    let (cache, keys) = filled();
    let fresh = Duration::from_secs(60);
    let mut g = c.benchmark_group("cache");
    g.bench_function("get hit", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % VISITORS;
            black_box(cache.get(&keys[i], fresh, fresh, Instant::now()))
        })
    });
    g.bench_function("insert (refresh)", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % VISITORS;
            cache.insert(keys[i].clone(), offers())
        })
    });
    g.bench_function("2 threads, 90% get 10% insert", |b| {
        b.iter_custom(|iters| {
            contended(2, iters, |i| {
                let k = &keys[(i * 7919) % VISITORS];
                if i % 10 == 0 {
                    cache.insert(k.clone(), offers());
                } else {
                    black_box(cache.get(k, fresh, fresh, Instant::now()));
                }
            })
        })
    });
    g.finish();
}

fn spool(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("p13n-edge-bench-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let settings = SpoolSettings {
        sync_interval: None,
        dir: dir.clone(),
        max_bytes: 1 << 34,
        segment_bytes: 64 << 20,
        replay_concurrency: 8,
        replay_nice: 0,
        dead_letter_max_bytes: 1 << 20,
        route_wait: Duration::from_secs(60),
    };
    let spool = Spool::open(settings).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let key = CacheKey::new(
        &Arc::from("shop"),
        &Arc::from("1/demo_db/pageviews/web"),
        "42a508e2-d9b1-4baa-9eb2-6c3fb8bd5e16",
    );
    let body = Bytes::from_static(
        br#"{"td_client_id":"42a508e2-d9b1-4baa-9eb2-6c3fb8bd5e16","td_path":"/retail"}"#,
    );
    let mut g = c.benchmark_group("spool");
    g.sample_size(20);
    g.bench_function("append, alone (one fdatasync)", |b| {
        b.iter(|| {
            rt.block_on(spool.append(
                &key,
                "/demo_db/pageviews",
                spool.next_event(),
                body.clone(),
                false,
            ))
            .unwrap()
        })
    });
    g.bench_function("append, 64 at once (group commit), per batch", |b| {
        b.iter(|| {
            rt.block_on(async {
                let appends = (0..64).map(|_| {
                    let (spool, key, body) = (spool.clone(), key.clone(), body.clone());
                    tokio::spawn(async move {
                        let event = spool.next_event();
                        spool
                            .append(&key, "/demo_db/pageviews", event, body, false)
                            .await
                    })
                });
                for a in appends.collect::<Vec<_>>() {
                    a.await.unwrap().unwrap();
                }
            })
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, cache, spool);
criterion_main!(benches);
