//! The guard step: rate-limit decisions, the limiter's memory under a flood of distinct
//! clients, the crawler filter's and the signed visitor id's cost per request. Run:
//! `cargo bench --bench guard`.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use p13n_edge::event::claim;
use p13n_edge::guard::rate::{BucketSpec, Limiter, Overflow, VisitorKey};
use p13n_edge::guard::{BotFilter, IdentityPolicy};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

const TRACKED: usize = 100_000;

fn address(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// RSS growth with 100k, then 1M and 3M distinct addresses: the limiter stops at `TRACKED`.
fn memory() {
    let spec = BucketSpec::try_new(1.0, 20.0).unwrap();
    let limiter = Limiter::new(TRACKED);
    let now = Instant::now();
    let before = rss_bytes();
    let mut sent = 0u32;
    for target in [100_000u32, 1_000_000, 3_000_000] {
        while sent < target {
            black_box(limiter.check(address(sent), spec, now));
            sent += 1;
        }
        let grown = rss_bytes().saturating_sub(before);
        println!(
            "limiter memory: {sent:>9} distinct addresses -> {:>6} tracked, RSS +{:.1} MiB ({} B per tracked key)",
            limiter.tracked(),
            grown as f64 / 1048576.0,
            grown / limiter.tracked().max(1)
        );
    }
}

/// The shipped crawler list with a few of a site's own, against a browser (the common case:
/// no match, the whole agent scanned) and a crawler.
fn crawlers(c: &mut Criterion) {
    let own = ["uptime-probe".to_string(), "internal-crawler".to_string()];
    let filter = BotFilter::new(true, &own, &["Googlebot-Image".to_string()]);
    let mut g = c.benchmark_group("crawler_filter");
    let browser = b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    let crawler = b"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    g.bench_function("browser agent", |b| {
        b.iter(|| black_box(filter.is_bot(black_box(browser))))
    });
    g.bench_function("crawler agent", |b| {
        b.iter(|| black_box(filter.is_bot(black_box(crawler))))
    });
    g.finish();
}

fn decisions(c: &mut Criterion) {
    memory();
    let spec = BucketSpec::try_new(1e9, 1e9).unwrap();
    let mut g = c.benchmark_group("rate_limit");
    let limiter = Limiter::new(TRACKED);
    let now = Instant::now();
    for i in 0..TRACKED as u32 {
        limiter.check(address(i), spec, now);
    }
    g.bench_function("known address", |b| {
        let mut i = 0u32;
        b.iter(|| {
            i = (i + 7919) % TRACKED as u32;
            black_box(limiter.check(address(i), spec, Instant::now()))
        })
    });
    g.bench_function("new address at the cap", |b| {
        let mut i = TRACKED as u32;
        b.iter(|| {
            i += 1;
            black_box(limiter.check(address(i), spec, Instant::now()))
        })
    });
    // Visitors: a full limiter lets new ones pass (their address limit holds them) instead of
    // sharing a bucket; and a long identifier becomes a digest.
    let visitors = Limiter::with_overflow(TRACKED, Overflow::Pass);
    for i in 0..TRACKED {
        visitors.check(VisitorKey::new(&format!("visitor-{i}")), spec, now);
    }
    g.bench_function("new visitor at the cap", |b| {
        let mut i = TRACKED;
        b.iter(|| {
            i += 1;
            black_box(visitors.check(
                VisitorKey::new(&format!("visitor-{i}")),
                spec,
                Instant::now(),
            ))
        })
    });
    let id = format!("{}-", "x".repeat(60))
        .repeat(16)
        .chars()
        .take(1000)
        .collect::<String>();
    g.bench_function("visitor key of a 36-byte id", |b| {
        b.iter(|| {
            black_box(VisitorKey::new(black_box(
                "6a8f0f4e-3c1d-4b8e-9a61-2f0c5d7e9b13",
            )))
        })
    });
    g.bench_function("visitor key of a 1000-byte id", |b| {
        b.iter(|| black_box(VisitorKey::new(black_box(&id))))
    });
    g.finish();
}

/// Signed-cookie mode: the visitor from a valid cookie (one HMAC-SHA256), a new visitor (an id
/// from the OS, a tag, a Set-Cookie), and the body given the visitor's id.
fn signed_visitor(c: &mut Criterion) {
    use http::header::{HeaderMap, COOKIE};
    let policy = IdentityPolicy::new(&[vec![7u8; 48]], "p13n_vid".into());
    let now = std::time::SystemTime::now();
    let issued = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let id = "0f4e1c2a-7b3d-4c5e-9f60-718293a4b5c6";
    let mut valid = HeaderMap::new();
    let cookie = format!("_ga=GA1.1.123; p13n_vid={}", policy.token(id, issued));
    valid.insert(COOKIE, cookie.parse().unwrap());
    let none = HeaderMap::new();
    let mut g = c.benchmark_group("signed_visitor");
    g.bench_function("valid cookie", |b| {
        b.iter(|| black_box(policy.visitor(black_box(&valid), true, now).unwrap()))
    });
    g.bench_function("new visitor", |b| {
        b.iter(|| black_box(policy.visitor(black_box(&none), true, now).unwrap()))
    });
    let ids = ["td_client_id".to_string()];
    let sdk_body = bytes::Bytes::from_static(
        br#"{"td_client_id":"sdk-client-id","td_path":"/retail/shop/women","product_category":"women"}"#,
    );
    g.bench_function("claim an SDK body", |b| {
        b.iter(|| black_box(claim(sdk_body.clone(), &ids, id, false).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, decisions, crawlers, signed_visitor);
criterion_main!(benches);
