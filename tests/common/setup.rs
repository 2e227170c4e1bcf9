//! A test's config, said by what it changes: `Setup::new("name").fast().service("deadline_ms",
//! 300).merge("[service.cors] ...")`. It is a TOML document edited as data, so no test depends
//! on the text of another's config. Its results are the config itself (`.config()`, `.write()`)
//! or what runs on it: `.start()` (proxy, admin and an emulator in this process),
//! `.start_proxy()` (proxy and admin, on the upstream given), `.spawn()` (the real binary).

use super::{free_port, scratch, KEY, TOKEN};
use p13n_edge::config::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use toml::{Table, Value};

#[derive(Clone)]
pub struct Setup {
    /// The test's name: its scratch directory and its service's name (metrics are per process,
    /// so a service named after its test keeps its series apart).
    pub name: String,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub(super) doc: Table,
}

/// The base every test starts from: one service on the upstream (`base_url` is filled in when
/// the test names it or starts an emulator), a private route `demo_db/pageviews`, a public one
/// `demo_db/clicks`, a spool in the scratch directory, 1 s timeouts, no grace period.
fn base(name: &str, proxy: SocketAddr, admin: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "{proxy}"
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
upgrade_sock = "/tmp/p13n-edge-test-{port}.sock"

[admin]
listen = "{admin}"

[timeouts]
upstream_ms = 1000
client_body_ms = 1000

[spool]
dir = "spool"

[[service]]
name = "{name}"
base_url = "http://127.0.0.1:9"
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
"#,
        port = proxy.port()
    )
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Setup {
    pub fn new(name: &str) -> Setup {
        let (proxy, admin) = (local(free_port()), local(free_port()));
        Setup {
            name: name.to_string(),
            proxy,
            admin,
            doc: toml::from_str(&base(name, proxy, admin)).unwrap(),
        }
    }

    /// The first service's upstream base URL.
    pub fn upstream(self, base_url: impl std::fmt::Display) -> Setup {
        self.service("base_url", base_url.to_string())
    }

    /// The first service answers from memory (`[service.cache] mode = "fast"`).
    pub fn fast(self) -> Setup {
        self.set("service.cache.mode", "fast")
    }

    /// A key of the first service: `.service("deadline_ms", 300)`.
    pub fn service(self, key: &str, value: impl Into<Value>) -> Setup {
        self.set(&format!("service.{key}"), value)
    }

    /// One more private route `demo_db/{table}` of the first service.
    pub fn route(self, table: &str) -> Setup {
        self.merge(&format!(
            "[[service.route]]\ndatabase = \"demo_db\"\ntable = \"{table}\"\ntoken = \"web\"\n"
        ))
    }

    /// One more service, `name`, on `base_url`, with one private route `demo_db/{table}`.
    pub fn another_service(self, name: &str, base_url: &str, table: &str) -> Setup {
        self.merge(&format!(
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
        ))
    }

    /// Set the value at a dotted path, making the tables on the way: `"timeouts.upstream_ms"`.
    /// An array of tables on the way is entered at its first element, or at the one a number
    /// names (`"service.1.cache.mode"`).
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> Setup {
        let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
        table_at(&mut self.doc, parent).insert(last.to_string(), value.into());
        self
    }

    /// Remove the value at a dotted path (walked as `set` walks it); it must be there.
    pub fn remove(mut self, path: &str) -> Setup {
        let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
        let removed = table_at(&mut self.doc, parent).remove(last);
        assert!(removed.is_some(), "{path} is not in the config");
        self
    }

    /// Merge a TOML fragment: its tables into the config's (a `[service.x]` table into the first
    /// service), its arrays of tables after the config's (`[[service.route]]` adds a route,
    /// `[[service]]` a service), its other values over the config's.
    pub fn merge(mut self, fragment: &str) -> Setup {
        let more: Table = toml::from_str(fragment).unwrap_or_else(|e| panic!("{e}: {fragment}"));
        merge(&mut self.doc, more);
        self
    }

    /// The config as TOML text.
    pub fn toml(&self) -> String {
        toml::to_string(&self.doc).unwrap()
    }

    /// The test's scratch directory, with the test key in its `key` file unless the test has
    /// written another there.
    pub fn dir(&self) -> PathBuf {
        let dir = scratch(&self.name);
        let key = dir.join("key");
        if !key.exists() {
            std::fs::write(key, format!("{KEY}\n")).unwrap();
        }
        dir
    }

    /// Write the config to `p13n-edge.toml` in the scratch directory; its path.
    pub fn write(&self) -> PathBuf {
        let path = self.dir().join("p13n-edge.toml");
        std::fs::write(&path, self.toml()).unwrap();
        path
    }

    /// The config, loaded as the daemon loads it.
    pub fn config(&self) -> Config {
        let dir = self.dir();
        Config::from_toml(&self.toml(), &dir).unwrap_or_else(|e| panic!("config: {e}"))
    }
}

fn table_at<'a>(mut table: &'a mut Table, path: &str) -> &'a mut Table {
    let mut parts = path.split('.').filter(|p| !p.is_empty()).peekable();
    while let Some(part) = parts.next() {
        let entry = table
            .entry(part)
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            Value::Array(items) => {
                let index = parts.next_if(|p| p.parse::<usize>().is_ok());
                let index: usize = index.map_or(0, |p| p.parse().unwrap());
                items[index].as_table_mut().unwrap()
            }
            other => panic!("{path}: {part} is {other}, not a table"),
        };
    }
    table
}

fn merge(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(mine)), Value::Table(theirs)) => merge(mine, theirs),
            (Some(Value::Array(mine)), Value::Table(theirs)) if tables(mine) => {
                merge(mine[0].as_table_mut().unwrap(), theirs)
            }
            (Some(Value::Array(mine)), Value::Array(theirs)) if tables(mine) => mine.extend(theirs),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn tables(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(Value::is_table)
}
