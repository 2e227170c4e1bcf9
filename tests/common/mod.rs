//! The test harness. A test says what it runs and on which config, then what it sends:
//!
//! ```ignore
//! let stack = Stack::builder("name").fast().service("deadline_ms", 300).start();
//! stack.emulator.faults(json!({"status": 429, "rate": 1.0, "seconds": 1}));
//! let answer = stack.post(PAGEVIEWS, r#"{"td_client_id":"v"}"#);
//! assert!(eventually(SECONDS_10, || stack.emulator.ingested() == 1));
//! ```
//!
//! - `setup`: the config, edited as data (`Setup`).
//! - `stack`: what runs on it: `Stack` and `Proxy` in this process, `Daemon` the real binary.
//! - `upstreams`: the emulator's handle, a recording upstream, a relay that goes silent.
//! - `http`: one request family, `to(addr).post(path).json(body).send()`, raw bytes when a test
//!   means exactly those bytes.
//!
//! Every server binds 127.0.0.1 on a port picked here, and stops when its handle is dropped.
#![allow(dead_code)]
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod http;
mod setup;
mod stack;
mod upstreams;

pub use http::*;
pub use setup::*;
pub use stack::*;
pub use upstreams::*;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const KEY: &str = "1/0123456789abcdef0123456789abcdef01234567";
pub const TOKEN: &str = "1/1/00000000000000000000000000000001";

/// How long `eventually` waits for what every test waits for: a delivery, a reload.
pub const SECONDS_10: Duration = Duration::from_secs(10);

/// A port of 127.0.0.1 free now, and never handed out before in this process: two listeners
/// of one test given the same port would share a socket (`p13n_edge::Listeners`).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A scratch directory for one test, the same for every call with `name` in this process. The
/// process's start time is in the name too: a pid can come back in a later run, and a stale
/// directory (an old spool, say) would leak into the new test.
pub fn scratch(name: &str) -> PathBuf {
    static RUN: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("p13n-edge-test-{pid}-{run}-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The demo's emulator rules, so tests see the documented offers.
pub fn demo_rules() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/demo-rules.toml")).unwrap()
}

/// Poll `check` until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Hold `check` for the whole of `window`: for what must *not* happen (an event must not reach
/// the upstream while its visitor's earlier one is held). Returns whether it held throughout.
pub fn throughout(window: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        if !check() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    check()
}

/// Hold `lock` for a test that reads a process-wide metric (one series for every proxy in the
/// test binary), so that what it reads is its own doing; taken also after a holder failed.
pub fn alone(lock: &'static std::sync::Mutex<()>) -> std::sync::MutexGuard<'static, ()> {
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never started listening");
        std::thread::sleep(Duration::from_millis(10));
    }
}
