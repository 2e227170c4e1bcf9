//! The image's layout without a container engine (none runs on these machines): the binary
//! with `conf/container.toml`, as the image's non-root user when the test runs as root, in a
//! tree that is read-only but for the spool volume and the run directory.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The image's user: distroless's `nonroot`.
const UID: u32 = 65532;
const KEY: &str = "12345/0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "12345/67890/0123456789abcdef0123456789abcdef";

fn container_toml() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/container.toml")).unwrap()
}

/// The image's tree under a scratch root, as `mount`ed in deploy/k8s/base.
struct Layout {
    root: PathBuf,
    config: PathBuf,
    bin: PathBuf,
    /// The two writable mounts: the spool volume and the run directory.
    writable: [PathBuf; 2],
    /// Whether the test runs as root, and so runs the binary as `UID`.
    as_root: bool,
}

impl Layout {
    fn new(name: &str, proxy: SocketAddr, admin: SocketAddr, upstream: &Emulator) -> Layout {
        let root = scratch(name);
        let at = |path: &str| root.join(path.trim_start_matches('/'));
        for dir in [
            "/usr/local/bin",
            "/etc/p13n-edge",
            "/run/secrets/p13n-edge",
            "/var/lib/p13n-edge",
            "/run/p13n-edge",
        ] {
            std::fs::create_dir_all(at(dir)).unwrap();
        }
        let bin = at("/usr/local/bin/p13n-edge");
        std::fs::copy(env!("CARGO_BIN_EXE_p13n-edge"), &bin).unwrap();
        // The shipped file itself is the subject, so it is edited as text, and only where the
        // image's paths and listeners must move under the scratch root.
        let mut toml = container_toml();
        let rewrites = [
            ("0.0.0.0:8080", proxy.to_string()),
            ("0.0.0.0:9090", admin.to_string()),
            (
                "region = \"us01\"",
                format!("base_url = \"{}\"", upstream.url()),
            ),
            (
                "\"/run/secrets/p13n-edge/",
                format!("\"{}/", at("/run/secrets/p13n-edge").display()),
            ),
            (
                "\"/var/lib/p13n-edge/",
                format!("\"{}/", at("/var/lib/p13n-edge").display()),
            ),
            (
                "\"/run/p13n-edge/",
                format!("\"{}/", at("/run/p13n-edge").display()),
            ),
        ];
        for (from, to) in rewrites {
            assert!(toml.contains(from), "conf/container.toml has no {from}");
            toml = toml.replace(from, &to);
        }
        let config = at("/etc/p13n-edge/p13n-edge.toml");
        std::fs::write(&config, toml).unwrap();
        std::fs::write(at("/run/secrets/p13n-edge/api_key"), format!("{KEY}\n")).unwrap();
        std::fs::write(
            at("/run/secrets/p13n-edge/tokens"),
            format!("web = {TOKEN}\n"),
        )
        .unwrap();
        let as_root = std::fs::metadata(&config).unwrap().uid() == 0;
        let writable = [at("/var/lib/p13n-edge"), at("/run/p13n-edge")];
        let layout = Layout {
            root,
            config,
            bin,
            writable,
            as_root,
        };
        layout.lock_down();
        layout
    }

    /// Everything read-only (dirs 0555, files 0444, the binary 0555) but the two writable
    /// mounts, which belong to the user the binary runs as. The secrets are 0440 and, under
    /// root, of `UID`'s group: a Secret volume with `defaultMode: 0440` and `fsGroup`.
    fn lock_down(&self) {
        for path in walk(&self.root) {
            let dir = path.is_dir();
            let mode = if self.writable.contains(&path) {
                if self.as_root {
                    std::os::unix::fs::chown(&path, Some(UID), Some(UID)).unwrap();
                }
                0o700
            } else if path.starts_with(self.root.join("run/secrets")) && !dir {
                if self.as_root {
                    std::os::unix::fs::chown(&path, Some(0), Some(UID)).unwrap();
                }
                0o440
            } else if dir || path == self.bin {
                0o555
            } else {
                0o444
            };
            set_mode(&path, mode);
        }
    }

    /// `p13n-edge args…` as the image runs it: as `UID` with no capabilities and no new
    /// privileges when the test is root, with only TMPDIR in its environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = if self.as_root {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65532",
                "--regid=65532",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ])
            .arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        command
            .args(args)
            .env_clear()
            .env("TMPDIR", &self.writable[1]);
        command
    }

    fn with_config(&self, args: &[&str]) -> Command {
        let mut command = self.command(args);
        command.arg("--config").arg(&self.config);
        command
    }

    /// Every path of the tree outside the writable mounts.
    fn read_only_paths(&self) -> Vec<PathBuf> {
        walk(&self.root)
            .into_iter()
            .filter(|p| !self.writable.iter().any(|w| p.starts_with(w) && p != w))
            .collect()
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // Writable again, so that whoever cleans the scratch directory can.
        for path in walk(&self.root) {
            if path.is_dir() {
                set_mode(&path, 0o755);
            }
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `root` and everything below it, directories before their contents, sorted.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut found = vec![root.to_path_buf()];
    let mut i = 0;
    while i < found.len() {
        if found[i].is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&found[i])
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            children.sort();
            found.extend(children);
        }
        i += 1;
    }
    found.sort();
    found
}

fn succeeds(mut command: Command) -> String {
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?}: {text}");
    text
}

#[test]
fn the_image_layout_serves_with_a_read_only_tree() {
    // An upstream that knows only the credentials mounted as secrets.
    let rules = demo_rules()
        .replace(common::KEY, KEY)
        .replace(common::TOKEN, TOKEN);
    let upstream = Emulator::start(&rules);
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (proxy, admin) = (local(free_port()), local(free_port()));
    let layout = Layout::new("container", proxy, admin, &upstream);
    let before = layout.read_only_paths();

    let checked = succeeds(layout.with_config(&["check-config"]));
    assert!(checked.contains("ok (1 services, 1 routes)"), "{checked}");
    let daemon = Daemon::spawn_command(layout.with_config(&["run"]), proxy, admin);
    succeeds(layout.with_config(&["probe"]));
    succeeds(layout.with_config(&["probe", "--ready"]));

    // The key and the token came from the mounted secrets: the upstream took the event.
    let answer = to(daemon.proxy)
        .post("/your_database/pageviews")
        .json(r#"{"td_client_id":"v1","td_path":"/retail/shop/women"}"#)
        .send();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(upstream.ingested(), 1, "{}", upstream.stats());

    // The spool was made on its volume, by the image's user; nothing else was written.
    let spool = layout.writable[0].join("spool");
    assert!(spool.is_dir());
    if layout.as_root {
        assert_eq!(std::fs::metadata(&spool).unwrap().uid(), UID);
    }
    assert_eq!(layout.read_only_paths(), before);
    let output = daemon.kill();
    assert!(
        !output.contains(&KEY[6..]) && !output.contains(&TOKEN[12..]),
        "{output}"
    );
}

#[test]
fn the_kubernetes_config_is_the_container_config() {
    let k8s = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/k8s/base/p13n-edge.toml"
    ))
    .unwrap();
    assert!(
        k8s == container_toml(),
        "deploy/k8s/base/p13n-edge.toml must be a copy of conf/container.toml"
    );
}
