//! What a `Setup` starts: the server in this process on a thread of its own (`Stack`, `Proxy`),
//! or the real binary as a child process (`Daemon`). Each is stopped, and its ports released,
//! when it is dropped.

use super::{demo_rules, to, wait_listening, Emulator, Recorder, Response, Setup};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::Notify;

/// The base URL a `Setup` starts with, until a test names an upstream or starts an emulator.
const NO_UPSTREAM: &str = "http://127.0.0.1:9";

struct Stop(Arc<Notify>);

#[async_trait::async_trait]
impl ShutdownSignalWatch for Stop {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// A server running on a thread of this process; stopped (and joined) on drop.
pub struct Running {
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Run `server` and wait until each of `wait_for` accepts connections.
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

/// A pingora server with one thread and no grace period: tests end fast.
pub fn quick_server() -> Server {
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}

/// The proxy, its admin listener and an emulator behind it, in this process.
pub struct Stack {
    /// The service's name: the test's name.
    pub service: String,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub emulator: Emulator,
    /// The config in force and its file (for `reload`).
    pub handles: p13n_edge::Handles,
    pub config_path: PathBuf,
    setup: Mutex<Setup>,
    _running: Running,
}

impl Stack {
    /// The demo's rules behind the harness's config, as it is.
    pub fn start(name: &str) -> Stack {
        Setup::new(name).start()
    }

    /// A config to change before starting: `Stack::builder("x").fast().start()`.
    pub fn builder(name: &str) -> Setup {
        Setup::new(name)
    }

    /// The config in force, to change and `reload` (or to go back to).
    pub fn setup(&self) -> Setup {
        self.setup.lock().unwrap().clone()
    }

    /// Change the config with `edit`, write it and reload it, as SIGHUP does.
    pub fn reload(&self, edit: impl FnOnce(Setup) -> Setup) {
        let edited = edit(self.setup());
        std::fs::write(&self.config_path, edited.toml()).unwrap();
        *self.setup.lock().unwrap() = edited;
        p13n_edge::config::reload(&self.config_path, &self.handles.config, &self.handles.cache)
            .unwrap_or_else(|e| panic!("reload: {e}"));
    }

    /// The `warnings` of `/readyz`, joined.
    pub fn readiness_warnings(&self) -> String {
        to(self.admin).get("/readyz").send().json()["warnings"].to_string()
    }

    /// A metric's value from a scrape, summed over this stack's series (its service or its
    /// upstream) that also match `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let mine = [
            format!("service=\"{}\"", self.service),
            format!("upstream=\"{}\"", self.emulator.addr),
        ];
        to(self.admin)
            .metrics()
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| mine.iter().any(|m| l.contains(m.as_str())))
            .filter(|l| labels.iter().all(|needle| l.contains(needle)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// POST an event as JSON to the proxy.
    pub fn post(&self, path: &str, body: &str) -> Response {
        to(self.proxy).event(path, body)
    }
}

/// The proxy and its admin listener in this process, on the upstream the config names.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    _running: Running,
}

/// The proxy in this process in front of a `Recorder` answering every request with `reply`.
pub struct Edge {
    /// The proxy's public listener.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub upstream: Recorder,
    _proxy: Proxy,
}

impl Edge {
    pub fn start(reply: &'static str, setup: Setup) -> Edge {
        let upstream = Recorder::start(reply);
        let proxy = setup.upstream(upstream.url()).start_proxy();
        Edge {
            addr: proxy.addr,
            admin: proxy.admin,
            upstream,
            _proxy: proxy,
        }
    }
}

impl Setup {
    /// The proxy and admin in this process with an emulator on the demo's rules (or those of
    /// `rules`) behind them, unless the test named another upstream.
    pub fn start(self) -> Stack {
        self.start_with_rules(&demo_rules())
    }

    /// `start`, the emulator answering by `rules` (TOML, as in `conf/demo-rules.toml`).
    pub fn start_with_rules(mut self, rules: &str) -> Stack {
        let emulator = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        if self.base_url() == NO_UPSTREAM {
            self = self.upstream(format!("http://{emulator}"));
        }
        let config_path = self.write();
        let mut server = quick_server();
        let mut handles = p13n_edge::add_proxy(&mut server, self.config()).unwrap();
        let rules = toml::from_str(rules).unwrap();
        let emulated = p13n_edge::emulator::Emulator::new(rules);
        p13n_edge::add_emulator(
            &mut server,
            &mut handles.listeners,
            &emulator.to_string(),
            emulated,
        )
        .unwrap();
        let running = Running::start(server, &[self.proxy, self.admin, emulator]);
        Stack {
            service: self.name.clone(),
            proxy: self.proxy,
            admin: self.admin,
            emulator: Emulator::at(emulator),
            handles,
            config_path,
            setup: Mutex::new(self),
            _running: running,
        }
    }

    /// The proxy and admin in this process, on the upstream the config names.
    pub fn start_proxy(self) -> Proxy {
        let (server, _) = p13n_edge::build_server(self.config(), None, false).unwrap();
        self.running(server)
    }

    /// `start_proxy`, looking upstream names up with `resolver`.
    pub fn start_proxy_resolving(self, resolver: Arc<dyn p13n_edge::upstream::Resolve>) -> Proxy {
        let mut server = quick_server();
        p13n_edge::add_proxy_resolving(&mut server, self.config(), resolver).unwrap();
        self.running(server)
    }

    fn running(self, server: Server) -> Proxy {
        Proxy {
            addr: self.proxy,
            admin: self.admin,
            _running: Running::start(server, &[self.proxy, self.admin]),
        }
    }

    /// The real binary, `p13n-edge run`, on this config written to its file, with `env`.
    pub fn spawn(&self, env: &[(&str, &str)]) -> Daemon {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_p13n-edge"));
        command
            .args(["run", "--config"])
            .arg(self.write())
            .envs(env.iter().copied());
        Daemon::spawn_command(command, self.proxy, self.admin)
    }

    fn base_url(&self) -> String {
        self.doc["service"][0]["base_url"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// The real binary, `p13n-edge run`, as a child process this test owns; killed on drop.
pub struct Daemon {
    pub child: std::process::Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// What the process wrote, read as it goes: a full pipe would stall the daemon.
    output: Vec<JoinHandle<String>>,
}

fn collect(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Daemon {
    /// Run `command` (`p13n-edge run …`, perhaps as another user) whose listeners are `proxy`
    /// and `admin`, and wait until both accept connections.
    pub fn spawn_command(
        mut command: std::process::Command,
        proxy: SocketAddr,
        admin: SocketAddr,
    ) -> Daemon {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
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

    /// Send the signal `name` (`"HUP"`, `"TERM"`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// How many reloads have ended with `result` (`"ok"` or `"error"`).
    pub fn reloads(&self, result: &str) -> u64 {
        let needle = format!("p13n_edge_config_reloads_total{{result=\"{result}\"}} ");
        to(self.admin)
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix(needle.as_str())?.parse().ok())
            .unwrap_or(0)
    }

    /// Whether the process has ended.
    pub fn ended(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
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
