//! What stands upstream of the proxy in a test: the emulator (the product's own, with its
//! control routes behind a handle), a `Recorder` that keeps every request's bytes and counts
//! connections, a `Relay` that can make its connections go silent, and a `Stall` that holds
//! the requests that carry a marker.

use super::{quick_server, read_message, to, Running};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// An emulator: its address and its control routes (`/_emulator/...`).
pub struct Emulator {
    pub addr: SocketAddr,
    _running: Option<Running>,
}

impl std::fmt::Display for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

impl Emulator {
    /// An emulator alone, answering by `rules`, on a free port.
    pub fn start(rules: &str) -> Emulator {
        Emulator::serving(p13n_edge::emulator::Emulator::new(
            toml::from_str(rules).unwrap(),
        ))
    }

    /// `emulated` alone, on a free port.
    pub fn serving(emulated: p13n_edge::emulator::Emulator) -> Emulator {
        let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let mut server = quick_server();
        let mut listeners = p13n_edge::Listeners::default();
        p13n_edge::add_emulator(&mut server, &mut listeners, &addr.to_string(), emulated).unwrap();
        Emulator {
            addr,
            _running: Some(Running::start(server, &[addr])),
        }
    }

    /// The handle of an emulator that runs elsewhere (in a `Stack`'s server).
    pub fn at(addr: SocketAddr) -> Emulator {
        Emulator {
            addr,
            _running: None,
        }
    }

    /// Its base URL, for a config's `base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it has ingested and answered (`GET /_emulator/stats`).
    pub fn stats(&self) -> serde_json::Value {
        to(self.addr).get("/_emulator/stats").send().json()
    }

    /// `stats()["events_ingested"]`.
    pub fn ingested(&self) -> u64 {
        self.stats()["events_ingested"].as_u64().unwrap()
    }

    /// Answer by a fault plan (`{"status": 429, "rate": 1.0, "seconds": 2}`) from now on.
    pub fn faults(&self, plan: serde_json::Value) {
        let r = to(self.addr)
            .post("/_emulator/faults")
            .json(&plan.to_string())
            .send();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// Answer normally again.
    pub fn clear_faults(&self) {
        let r = to(self.addr).method("DELETE", "/_emulator/faults").send();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// Forget every profile, fault and count.
    pub fn reset(&self) {
        let r = to(self.addr).post("/_emulator/reset").send();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// A fake upstream: records each request's raw head and body, answers with `reply`, and counts
/// the connections it accepted.
pub struct Recorder {
    pub addr: SocketAddr,
    /// Each request, raw, and the number of the connection it came on (from 0).
    pub seen: Arc<Mutex<Vec<String>>>,
    on: Arc<Mutex<Vec<usize>>>,
    pub connections: Arc<AtomicUsize>,
}

impl Recorder {
    pub fn start(reply: &'static str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let on = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (log, came_on, accepted) = (seen.clone(), on.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let number = accepted.fetch_add(1, Ordering::Relaxed);
                let (log, came_on) = (log.clone(), came_on.clone());
                std::thread::spawn(move || loop {
                    let Some(req) = read_message(&mut stream) else {
                        return;
                    };
                    // One lock for both: a request and its connection are recorded together.
                    let mut log = log.lock().unwrap();
                    log.push(String::from_utf8_lossy(&req).into_owned());
                    came_on.lock().unwrap().push(number);
                    drop(log);
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                });
            }
        });
        Recorder {
            addr,
            seen,
            on,
            connections,
        }
    }

    /// Its base URL, for a config's `base_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The raw requests it received, in order.
    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The bodies of the requests it received, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.bodies_by_connection()
            .into_iter()
            .map(|(body, _)| body)
            .collect()
    }

    /// The bodies of the requests it received, each with the number of its connection.
    pub fn bodies_by_connection(&self) -> Vec<(String, usize)> {
        let seen = self.seen.lock().unwrap();
        let on = self.on.lock().unwrap();
        seen.iter()
            .zip(on.iter())
            .map(|(raw, n)| (raw.split("\r\n\r\n").nth(1).unwrap_or_default().into(), *n))
            .collect()
    }

    /// How many connections it accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// A relay to `upstream` whose connections open before `freeze` is called stop passing bytes,
/// without closing: a connection gone silent (a NAT or balancer that lost its state). Those
/// opened afterwards pass bytes as usual.
pub struct Relay {
    pub addr: SocketAddr,
    pub opened: Arc<AtomicUsize>,
    frozen_below: Arc<AtomicUsize>,
}

impl Relay {
    pub fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (opened, frozen_below) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (count, frozen) = (opened.clone(), frozen_below.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let id = count.fetch_add(1, Ordering::SeqCst);
                let server = TcpStream::connect(upstream).unwrap();
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let frozen = frozen.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = std::io::Read::read(&mut from, &mut buf) {
                            if n == 0 {
                                break;
                            }
                            if id >= frozen.load(Ordering::SeqCst) {
                                let _ = to.write_all(&buf[..n]);
                            }
                        }
                    });
                }
            }
        });
        Relay {
            addr,
            opened,
            frozen_below,
        }
    }

    pub fn freeze(&self) {
        self.frozen_below
            .store(self.opened.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// A relay to `upstream` that holds every request carrying `marker` until `release`: nothing of
/// it goes on and nothing comes back; then it closes that connection, unanswered. Requests
/// without the marker, and with it after the release, pass as usual.
pub struct Stall {
    pub addr: SocketAddr,
    held: Arc<AtomicUsize>,
    released: Arc<AtomicBool>,
}

impl Stall {
    pub fn start(upstream: SocketAddr, marker: &'static str) -> Stall {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (held, released) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (holding, release) = (held.clone(), released.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let mut server = TcpStream::connect(upstream).unwrap();
                let (mut back_from, mut back_to) =
                    (server.try_clone().unwrap(), client.try_clone().unwrap());
                std::thread::spawn(move || std::io::copy(&mut back_from, &mut back_to));
                let (held, released) = (holding.clone(), release.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = std::io::Read::read(&mut client, &mut buf) {
                        if n == 0 {
                            break;
                        }
                        let marked = buf[..n]
                            .windows(marker.len())
                            .any(|w| w == marker.as_bytes());
                        if marked && !released.load(Ordering::SeqCst) {
                            held.fetch_add(1, Ordering::SeqCst);
                            while !released.load(Ordering::SeqCst) {
                                std::thread::sleep(std::time::Duration::from_millis(10));
                            }
                            break;
                        }
                        if server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = server.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Stall {
            addr,
            held,
            released,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests it has held (released or not).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }
}
