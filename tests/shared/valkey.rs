//! A real `redis-server` (Debian's, from scripts/setup) for one test: on a free loopback port,
//! without persistence, in a scratch directory; stopped, restarted on the same port, slowed or
//! paused on request, and killed when dropped. Only the process it started is ever signalled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Valkey {
    pub port: u16,
    password: Option<String>,
    /// With TLS only (`start_tls`): the CA's PEM, for the test's own connections.
    ca: Option<Vec<u8>>,
    dir: PathBuf,
    child: Option<Child>,
}

impl Valkey {
    pub fn start(name: &str) -> Valkey {
        Self::start_with(name, None)
    }

    /// A server that wants `password` (`requirepass`) from its clients.
    pub fn start_with(name: &str, password: Option<&str>) -> Valkey {
        let mut server = Self::reserve(name, password);
        server.spawn();
        server
    }

    /// A port and a directory for a server not started yet (`restart` starts it).
    pub fn reserve(name: &str, password: Option<&str>) -> Valkey {
        Valkey {
            port: crate::common::free_port(),
            password: password.map(str::to_string),
            ca: None,
            dir: crate::common::scratch(&format!("{name}-valkey")),
            child: None,
        }
    }

    /// A server that speaks TLS only, with a certificate for `localhost` from a CA of its own,
    /// written to `ca.pem` in its directory.
    pub fn start_tls(name: &str) -> Valkey {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let mut server = Self::reserve(name, None);
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let leaf = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(server.dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(server.dir.join("leaf.pem"), leaf.pem()).unwrap();
        std::fs::write(server.dir.join("leaf.key"), key.serialize_pem()).unwrap();
        server.ca = Some(ca_cert.pem().into_bytes());
        server.spawn();
        server
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Store `value` under `key`, as another writer would.
    pub fn set(&self, key: &[u8], value: &[u8]) {
        let mut conn = self.connection(Duration::from_secs(2)).unwrap();
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(60_000)
            .query::<()>(&mut conn)
            .unwrap();
    }

    pub fn url(&self) -> String {
        match self.ca {
            Some(_) => format!("rediss://localhost:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        match self.ca {
            None => command.args(["--port", &port]),
            Some(_) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(self.dir.join("leaf.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("leaf.key")),
        };
        command
            .args(["--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "local",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .spawn()
            .expect("redis-server runs (scripts/setup installs it)");
        self.child = Some(child);
        assert!(
            crate::common::eventually(Duration::from_secs(10), || self.ping()),
            "redis-server never answered on port {}",
            self.port
        );
    }

    /// A connection of the test's own, beside the daemons'.
    pub fn connection(&self, timeout: Duration) -> redis::RedisResult<redis::Connection> {
        let url = match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => self.url(),
        };
        let client = match &self.ca {
            None => redis::Client::open(url)?,
            Some(ca) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )?,
        };
        let con = client.get_connection_with_timeout(timeout)?;
        con.set_read_timeout(Some(timeout))?;
        Ok(con)
    }

    /// Whether the server answers a PING within 100 ms.
    pub fn ping(&self) -> bool {
        self.connection(Duration::from_millis(100))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    pub fn exists(&self, key: &[u8]) -> bool {
        let mut con = self.connection(Duration::from_secs(1)).unwrap();
        redis::cmd("EXISTS")
            .arg(key)
            .query::<i64>(&mut con)
            .unwrap()
            == 1
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut con = self.connection(Duration::from_secs(1)).unwrap();
        redis::cmd("GET").arg(key).query(&mut con).unwrap()
    }

    pub fn dbsize(&self) -> i64 {
        let mut con = self.connection(Duration::from_secs(1)).unwrap();
        redis::cmd("DBSIZE").query(&mut con).unwrap()
    }

    /// `kill -9`: as a crash or a lost node would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new, empty server on the same port (or the first, after `reserve`).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// `DEBUG SLEEP secs` from a side connection: the server answers no one meanwhile. Returns
    /// once the server is asleep; the thread ends when it wakes.
    pub fn sleep(&self, secs: f64) -> std::thread::JoinHandle<()> {
        let mut con = self.connection(Duration::from_secs(10)).unwrap();
        let thread = std::thread::spawn(move || {
            let _: redis::RedisResult<String> =
                redis::cmd("DEBUG").arg("SLEEP").arg(secs).query(&mut con);
        });
        assert!(
            crate::common::eventually(Duration::from_secs(2), || !self.ping()),
            "the server never went to sleep"
        );
        thread
    }

    /// SIGSTOP: connections stay open and nothing is answered, as a stalled host would.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Valkey {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
