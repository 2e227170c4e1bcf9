//! Test harness: boots the real server (proxy, admin, emulator) in-process on free ports, and
//! speaks raw HTTP/1.1 to it, so that tests can send exactly the bytes they mean.
#![allow(dead_code)]
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use p13n_edge::config::Config;
use p13n_edge::emulator::Emulator;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub const KEY: &str = "1/0123456789abcdef0123456789abcdef01234567";
pub const TOKEN: &str = "1/1/00000000000000000000000000000001";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// A proxy config with one service `shop` on `upstream`, routes `demo_db/pageviews` (private)
/// and `demo_db/clicks` (public), and `extra` appended at the end: it may hold top-level tables
/// (`[upstream]`) or the service's own (`[service.retry]`, `[service.circuit]`).
pub fn config_toml(proxy: u16, admin: u16, upstream: &str, extra: &str) -> String {
    let spool = if extra.contains("[spool]") {
        ""
    } else {
        "[spool]\ndir = \"spool\""
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:{proxy}"
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
upgrade_sock = "/tmp/p13n-edge-test-{proxy}.sock"

[admin]
listen = "127.0.0.1:{admin}"

[timeouts]
upstream_ms = 1000
client_body_ms = 1000

{spool}

[[service]]
name = "shop"
base_url = "{upstream}"
account_id = "1"
instance_id = "1"
api_key_file = "key"
identifiers = ["td_client_id", "email"]

[service.tokens]
web = "{TOKEN}"

[[service.route]]
database = "demo_db"
table = "pageviews"
token = "web"

[[service.route]]
database = "demo_db"
table = "clicks"
public = true
token = "web"

{extra}
"#
    )
}

/// Load a config from TOML text, with the test key in a scratch `key` file beside it.
pub fn load_config(name: &str, toml: &str) -> Config {
    let dir = scratch(name);
    std::fs::write(dir.join("key"), format!("{KEY}\n")).unwrap();
    Config::from_toml(toml, &dir).unwrap_or_else(|e| panic!("config: {e}"))
}

struct Stop(Arc<Notify>);

#[async_trait::async_trait]
impl ShutdownSignalWatch for Stop {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// A running server; stopped (and joined) on drop.
pub struct Running {
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    pub fn start(server: Server, wait_for: &[SocketAddr]) -> Running {
        let stop = Arc::new(Notify::new());
        let signal = Box::new(Stop(stop.clone()));
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: signal,
            })
        });
        for addr in wait_for {
            wait_listening(*addr);
        }
        Running {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An emulator alone, with `rules`; returns its address.
pub fn start_emulator(rules: &str) -> (Running, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = Server::new_with_opt_and_conf(None, quick_conf());
    server.bootstrap();
    p13n_edge::add_emulator(
        &mut server,
        &addr.to_string(),
        Emulator::new(toml::from_str(rules).unwrap()),
    );
    (Running::start(server, &[addr]), addr)
}

/// The real binary, `p13n-edge run`, as a child process this test owns; killed on drop.
pub struct Daemon {
    pub child: std::process::Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// What the process wrote, read as it goes: a full pipe would stall the daemon.
    output: Vec<std::thread::JoinHandle<String>>,
}

fn collect(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Daemon {
    /// Run the binary on the config at `path` (whose listeners are `proxy` and `admin`).
    pub fn spawn(path: &std::path::Path, proxy: u16, admin: u16, env: &[(&str, &str)]) -> Daemon {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_p13n-edge"));
        command
            .args(["run", "--config"])
            .arg(path)
            .envs(env.iter().copied());
        Self::spawn_command(command, proxy, admin)
    }

    /// Run `command` (`p13n-edge run …`, perhaps as another user) whose listeners are `proxy`
    /// and `admin`.
    pub fn spawn_command(mut command: std::process::Command, proxy: u16, admin: u16) -> Daemon {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let proxy = format!("127.0.0.1:{proxy}").parse().unwrap();
        let admin = format!("127.0.0.1:{admin}").parse().unwrap();
        let output = vec![
            collect(child.stderr.take().unwrap()),
            collect(child.stdout.take().unwrap()),
        ];
        wait_listening(admin);
        wait_listening(proxy);
        Daemon {
            child,
            proxy,
            admin,
            output,
        }
    }

    /// `kill -9`, and everything it wrote to stdout and stderr.
    pub fn kill(mut self) -> String {
        self.stop()
    }

    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output
            .drain(..)
            .map(|reader| reader.join().unwrap_or_default())
            .collect()
    }
}

/// Killed on drop; a failing test shows how its daemon had ended, if it had, and what it wrote.
impl Drop for Daemon {
    fn drop(&mut self) {
        let status = self.child.try_wait().ok().flatten();
        let output = self.stop();
        if std::thread::panicking() {
            eprintln!("daemon had ended: {status:?}; its output:\n{output}");
        }
    }
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

/// The proxy and its admin listener alone; returns the proxy's address.
pub fn start_proxy(config: Config) -> (Running, SocketAddr) {
    let addr = config.listen;
    let admin = config.admin_listen;
    let (server, _) = p13n_edge::build_server(config, None, false).unwrap();
    (Running::start(server, &[addr, admin]), addr)
}

/// The proxy and its admin listener, looking upstream names up with `resolver`.
pub fn start_proxy_resolving(
    config: Config,
    resolver: Arc<dyn p13n_edge::upstream::Resolve>,
) -> (Running, SocketAddr) {
    let (addr, admin) = (config.listen, config.admin_listen);
    let mut server = Server::new_with_opt_and_conf(None, quick_conf());
    server.bootstrap();
    p13n_edge::add_proxy_resolving(&mut server, config, resolver).unwrap();
    (Running::start(server, &[addr, admin]), addr)
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never started listening");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn quick_conf() -> ServerConf {
    ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// The proxy, its admin listener and an emulator (demo rules) behind it, all on free ports.
pub struct Stack {
    /// The service's name: the test's name.
    pub service: String,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub emulator: SocketAddr,
    /// The config in force and its file (for `reload`).
    pub handles: p13n_edge::Handles,
    pub config_path: PathBuf,
    _running: Running,
}

impl Stack {
    pub fn start(name: &str) -> Stack {
        Self::start_with(name, "")
    }

    /// `extra` is TOML for the config: its lines before the first table header are keys of
    /// the service (`deadline_ms = 800`), the rest is appended (see `config_toml`).
    pub fn start_with(name: &str, extra: &str) -> Stack {
        let (proxy, admin, emu) = (free_port(), free_port(), free_port());
        let emulator: SocketAddr = format!("127.0.0.1:{emu}").parse().unwrap();
        let split = extra.find('[').unwrap_or(extra.len());
        let (keys, tables) = extra.split_at(split);
        let toml = config_toml(proxy, admin, &format!("http://{emulator}"), tables)
            .replace("[service.tokens]", &format!("{keys}\n[service.tokens]"))
            // Metrics are per process: a service named after the test keeps its series apart.
            .replace("name = \"shop\"", &format!("name = \"{name}\""));
        let config = load_config(name, &toml);
        let config_path = scratch(name).join("p13n-edge.toml");
        std::fs::write(&config_path, &toml).unwrap();
        let (proxy, admin) = (config.listen, config.admin_listen);
        let mut server = Server::new_with_opt_and_conf(None, quick_conf());
        server.bootstrap();
        let handles = p13n_edge::add_proxy(&mut server, config).unwrap();
        let rules = toml::from_str(&demo_rules()).unwrap();
        p13n_edge::add_emulator(&mut server, &emulator.to_string(), Emulator::new(rules));
        let running = Running::start(server, &[proxy, admin, emulator]);
        Stack {
            service: name.to_string(),
            proxy,
            admin,
            emulator,
            handles,
            config_path,
            _running: running,
        }
    }

    /// Rewrite the config file with `edit` and reload it, as SIGHUP does.
    pub fn reload(&self, edit: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, edit(&text)).unwrap();
        p13n_edge::config::reload(&self.config_path, &self.handles.config, &self.handles.cache)
            .unwrap_or_else(|e| panic!("reload: {e}"));
    }

    /// The `warnings` of `/readyz`, joined.
    pub fn readiness_warnings(&self) -> String {
        let r = request(self.admin, "GET", "/readyz", &[], b"");
        r.json()["warnings"].to_string()
    }

    /// A metric's value from a scrape, summed over this stack's series (its service or its
    /// upstream) that also match `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let mine = [
            format!("service=\"{}\"", self.service),
            format!("upstream=\"{}\"", self.emulator),
        ];
        request(self.admin, "GET", "/metrics", &[], b"")
            .text()
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| mine.iter().any(|m| l.contains(m.as_str())))
            .filter(|l| labels.iter().all(|needle| l.contains(needle)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn emulator_stats(&self) -> serde_json::Value {
        let r = request(self.emulator, "GET", "/_emulator/stats", &[], b"");
        serde_json::from_slice(&r.body).unwrap()
    }

    pub fn set_faults(&self, plan: serde_json::Value) {
        let r = request(
            self.emulator,
            "POST",
            "/_emulator/faults",
            &[],
            plan.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// POST an event as JSON to the proxy.
    pub fn post(&self, path: &str, body: &str) -> Response {
        post_json_to(self.proxy, path, body)
    }
}

/// An unlabelled counter from a scrape of the admin listener at `admin`.
pub fn counter(admin: SocketAddr, name: &str) -> u64 {
    let metrics = request(admin, "GET", "/metrics", &[], b"").text();
    let prefix = format!("{name} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is exported"))
}

/// TOML for one more `[[service]]`, `name`, on `base_url`, with one route `demo_db/{table}`
/// (append it to a config: it must come after the tables of the service before it).
pub fn another_service(name: &str, base_url: &str, table: &str) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
base_url = "{base_url}"
account_id = "1"
instance_id = "1"
api_key_file = "key"

[service.tokens]
web = "{TOKEN}"

[[service.route]]
database = "demo_db"
table = "{table}"
token = "web"
"#
    )
}

/// A fake upstream: records each request's raw head and body, answers with `reply`, and counts
/// the connections it accepted.
pub struct Recorder {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Recorder {
    pub fn start(reply: &'static str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (log, accepted) = (seen.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let log = log.clone();
                std::thread::spawn(move || loop {
                    let Some(req) = read_message(&mut stream) else {
                        return;
                    };
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&req).into_owned());
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                });
            }
        });
        Recorder {
            addr,
            seen,
            connections,
        }
    }
}

impl Recorder {
    /// The bodies of the requests it received, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|raw| raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
            .collect()
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// Assert the vendor's error shape with this status and code.
    pub fn assert_error(&self, status: u16, code: u64) {
        assert_eq!(self.status, status, "{}\n{}", self.head, self.text());
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/json")
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
}

/// POST a JSON event to the test config's `demo_db/pageviews` route at `addr`.
pub fn post_json(addr: SocketAddr, body: &str) -> Response {
    post_json_to(addr, "/demo_db/pageviews", body)
}

/// POST a JSON event to `path` at `addr`.
pub fn post_json_to(addr: SocketAddr, path: &str, body: &str) -> Response {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// Send one request (adding Host and Content-Length) and read the answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    if method == "HEAD" {
        return exchange(addr, &raw, true);
    }
    raw_request(addr, &raw)
}

/// Send raw bytes and read one response.
pub fn raw_request(addr: SocketAddr, raw: &[u8]) -> Response {
    exchange(addr, raw, false)
}

/// Send raw bytes; `None` when the connection fails or closes without a whole response.
pub fn try_raw_request(addr: SocketAddr, raw: &[u8]) -> Option<Response> {
    try_exchange(addr, raw, false)
}

fn exchange(addr: SocketAddr, raw: &[u8], head_only: bool) -> Response {
    try_exchange(addr, raw, head_only).expect("a response")
}

/// Send a request; `None` when the connection fails or closes without a whole response.
pub fn try_request(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Option<Response> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    try_exchange(addr, &raw, false)
}

fn try_exchange(addr: SocketAddr, raw: &[u8], head_only: bool) -> Option<Response> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(raw);
    let msg = read_head_and_body(&mut stream, head_only)?;
    let split = msg.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&msg[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Response {
        status,
        head,
        body: msg[split + 4..].to_vec(),
    })
}

/// Read one HTTP/1.1 message delimited by Content-Length (or none).
pub fn read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    read_head_and_body(stream, false)
}

fn read_head_and_body(stream: &mut TcpStream, head_only: bool) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let len = if head_only { 0 } else { len };
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.truncate(end + 4 + len);
            return Some(buf);
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A relay to `upstream` whose connections open before `freeze` is called stop passing bytes,
/// without closing: a connection gone silent (a NAT or balancer that lost its state). Those
/// opened afterwards pass bytes as usual.
pub struct Relay {
    pub addr: std::net::SocketAddr,
    pub opened: Arc<std::sync::atomic::AtomicUsize>,
    frozen_below: Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    pub fn start(upstream: std::net::SocketAddr) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (opened, frozen_below) = (
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        );
        let (count, frozen) = (opened.clone(), frozen_below.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let id = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let server = std::net::TcpStream::connect(upstream).unwrap();
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
                            if id >= frozen.load(std::sync::atomic::Ordering::SeqCst) {
                                let _ = std::io::Write::write_all(&mut to, &buf[..n]);
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
        self.frozen_below.store(
            self.opened.load(std::sync::atomic::Ordering::SeqCst),
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}
