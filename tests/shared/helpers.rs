//! What the shared tier's tests say in one word: a post, a key, a metric, readiness, and a
//! steady load.

use crate::common::*;
use p13n_edge::cache::CacheKey;
use p13n_edge::shared::offers_key;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub fn post_to(addr: SocketAddr, path: &str, visitor: &str) -> Response {
    let body = format!(r#"{{"td_client_id":"{visitor}","td_path":"/retail"}}"#);
    to(addr).event(path, &body)
}

pub fn post(addr: SocketAddr, visitor: &str) -> Response {
    post_to(addr, PAGEVIEWS, visitor)
}

/// The key of `visitor`'s offers from the service `service` on its route `route`
/// (`1/demo_db/{table}/{token}`), calling `emulator` with the test key and token.
pub fn stored_key(emulator: &Emulator, service: &str, route: &str, visitor: &str) -> Vec<u8> {
    let emulator = emulator.addr;
    let target = p13n_edge::upstream::UpstreamTarget {
        tls: false,
        host: emulator.ip().to_string(),
        port: emulator.port(),
        authority: emulator.to_string(),
    };
    let authorization = http::HeaderValue::from_str(&format!("TD1 {KEY}")).unwrap();
    let token = http::HeaderValue::from_static(TOKEN);
    let namespace = p13n_edge::upstream::Endpoint::fingerprint_of(&authorization, &token, &target);
    offers_key(
        "p13n-edge:",
        &namespace,
        &CacheKey::new(&service.into(), &route.into(), visitor),
    )
}

pub fn pageviews_key(emulator: &Emulator, service: &str, visitor: &str) -> Vec<u8> {
    stored_key(emulator, service, "1/demo_db/pageviews/web", visitor)
}

/// A metric of one daemon, summed over the series whose line holds `labels`.
pub fn metric(admin: SocketAddr, name: &str, labels: &str) -> f64 {
    to(admin)
        .metrics()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `/readyz`: its status and its warnings, joined.
#[derive(Debug)]
pub struct Readiness {
    pub status: u16,
    pub warnings: String,
}

pub fn readiness(admin: SocketAddr) -> Readiness {
    let r = to(admin).get("/readyz").send();
    Readiness {
        status: r.status,
        warnings: r.json()["warnings"].to_string(),
    }
}

/// Whether `/readyz` warns about the shared tier.
pub fn tier_warned(admin: SocketAddr) -> bool {
    readiness(admin).warnings.contains("shared tier")
}

pub fn cache_status(r: &Response) -> String {
    r.header("cache-status").unwrap_or_default()
}

/// Requests from two threads to `targets` in turn, for visitors `load-0..load-29`, until
/// finished; counts the answers that were not 200.
pub struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(targets: [SocketAddr; 2]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let threads = (0..2)
            .map(|t| {
                let (stop, failed, sent) = (stop.clone(), failed.clone(), sent.clone());
                std::thread::spawn(move || {
                    let mut i = t;
                    while !stop.load(Ordering::Relaxed) {
                        let r = post(targets[i % 2], &format!("load-{}", i % 30));
                        if r.status != 200 {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            stop,
            failed,
            sent,
            threads,
        }
    }

    /// Stop: how many requests went, and how many answers were not 200.
    pub fn finish(self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().for_each(|t| t.join().unwrap());
        Sent {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// What a `Load` sent: requests, and answers that were not 200.
pub struct Sent {
    pub sent: usize,
    pub failed: usize,
}
