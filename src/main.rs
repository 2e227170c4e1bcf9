//! The `p13n-edge` command line: run, check-config, probe, spool, emulator, demo.
// The allocator shim (`src/alloc.rs`) is the one module this lint lets through; the library
// forbids it outright.
#![deny(unsafe_code)]

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use p13n_edge::config::Config;
use p13n_edge::emulator::Emulator;
use p13n_edge::site::DemoSite;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod alloc;

/// mimalloc instead of glibc's allocator: see Cargo.toml.
#[global_allocator]
static ALLOCATOR: alloc::MiMalloc = alloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "p13n-edge",
    version,
    about = "Edge proxy for Treasure Data's Real-time Personalization API"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Take over the listening sockets of a running instance (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a config file: exit 0, or print every problem and exit 1.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask the admin listener whether the daemon is alive (`/healthz`) or ready (`/readyz`):
    /// exit 0 on a 200, else 1 with the reason on stderr. For container health checks.
    Probe {
        #[command(flatten)]
        at: AdminAt,
        /// Ask `/readyz` instead of `/healthz`.
        #[arg(long)]
        ready: bool,
        /// Give up after this long, connect to answer.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Look into a spool directory (also a stopped daemon's), or requeue its dead letters.
    Spool {
        #[command(subcommand)]
        action: SpoolAction,
    },
    /// Run the upstream emulator.
    Emulator {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// Offer rules (TOML); without it the emulator ingests but matches no offer.
        #[arg(long)]
        rules: Option<PathBuf>,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// The newest `uuid`s remembered to count repeats (`duplicates` in its stats); older
        /// ones are forgotten first.
        #[arg(long, default_value_t = p13n_edge::emulator::UUIDS)]
        remember_uuids: usize,
        /// The most visitor profiles kept; past it one is forgotten for each new visitor.
        #[arg(long, default_value_t = p13n_edge::emulator::PROFILES)]
        max_profiles: usize,
    },
    /// Run the emulator (:8081), the proxy (:8080), its admin listener (:9090) and a demo site
    /// (http://localhost:3000) together.
    Demo {
        #[arg(long, default_value = "conf/demo.toml")]
        config: PathBuf,
        #[arg(long, default_value = "conf/demo-rules.toml")]
        rules: PathBuf,
        /// Where the demo site listens.
        #[arg(long, default_value = "127.0.0.1:3000")]
        site: String,
        /// Also serve the site over TLS here, with `[server.tls]`'s certificate: a page on
        /// https://localhost is same-site with the TLS listener, so its `_td` cookie is sent.
        #[arg(long)]
        site_tls: Option<String>,
        /// td-js-sdk's `dist/td.min.js`, served to the site's SDK page (`/sdk.html`).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SpoolAction {
    /// Events waiting for replay and dead letters: counts, oldest, per route (JSON).
    Inspect {
        #[command(flatten)]
        at: SpoolDir,
    },
    /// Send every dead letter back to its lane for replay (the daemon must be stopped).
    Requeue {
        #[command(flatten)]
        at: SpoolDir,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct SpoolDir {
    /// The spool directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A config file: its `spool.dir`.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
#[group(multiple = false)]
struct AdminAt {
    /// A config file: its `[admin] listen`, read alone (no key or token file is opened).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The admin listener's address, ip:port [default: 127.0.0.1:9090, the config's default].
    #[arg(long)]
    admin: Option<SocketAddr>,
}

impl AdminAt {
    fn resolve(self) -> anyhow::Result<SocketAddr> {
        let listen = match (self.admin, self.config) {
            (Some(addr), _) => addr,
            (None, Some(path)) => p13n_edge::config::admin_listen(&path)
                .map_err(|errors| anyhow::anyhow!("{}: {errors}", path.display()))?,
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 9090)),
        };
        Ok(p13n_edge::probe::target(listen))
    }
}

impl SpoolDir {
    fn resolve(self) -> anyhow::Result<PathBuf> {
        match (self.dir, self.config) {
            (Some(dir), _) => Ok(dir),
            (None, Some(config)) => Ok(load(&config)?.spool.dir),
            (None, None) => bail!("give --dir or --config"),
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Errors are for operators: the message and its causes, never a backtrace.
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, upgrade } => {
            let loaded = load(&config)?;
            let (server, _) = p13n_edge::build_server(loaded, Some(config), upgrade)?;
            server.run_forever();
        }
        Command::CheckConfig { config } => check_config(&config),
        Command::Probe {
            at,
            ready,
            timeout_ms,
        } => probe(at, ready, timeout_ms),
        Command::Spool { action } => spool(action),
        Command::Emulator {
            listen,
            rules,
            threads,
            remember_uuids,
            max_profiles,
        } => {
            let emulator = match rules {
                Some(path) => Emulator::from_file(&path).map_err(anyhow::Error::msg)?,
                None => Emulator::new(Default::default()),
            }
            .remembering(remember_uuids, max_profiles);
            let server = p13n_edge::emulator_server(&listen, emulator, threads)
                .map_err(anyhow::Error::msg)?;
            tracing::info!(%listen, "emulator listening");
            server.run_forever();
        }
        Command::Demo {
            config,
            rules,
            site,
            site_tls,
            sdk,
        } => demo(config, &rules, &site, site_tls, sdk),
    }
}

fn check_config(config: &Path) -> anyhow::Result<()> {
    let loaded = load(config)?;
    let shared = match &loaded.shared {
        Some(s) => format!(", shared tier {}", s.url),
        None => String::new(),
    };
    println!(
        "{}: ok ({} services, {} routes{shared})",
        config.display(),
        loaded.services.len(),
        loaded.routes.len()
    );
    Ok(())
}

fn probe(at: AdminAt, ready: bool, timeout_ms: u64) -> anyhow::Result<()> {
    let addr = at.resolve()?;
    let path = if ready { "/readyz" } else { "/healthz" };
    let timeout = std::time::Duration::from_millis(timeout_ms);
    p13n_edge::probe::probe(addr, path, timeout)
        .with_context(|| format!("probe http://{addr}{path}"))
}

fn spool(action: SpoolAction) -> anyhow::Result<()> {
    match action {
        SpoolAction::Inspect { at } => {
            let report = p13n_edge::spool::tools::inspect(&at.resolve()?)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        SpoolAction::Requeue { at } => {
            let dir = at.resolve()?;
            let count = p13n_edge::spool::tools::requeue(&dir)?;
            println!("{}: {count} dead letters requeued", dir.display());
            Ok(())
        }
    }
}

fn demo(
    config: PathBuf,
    rules: &Path,
    site: &str,
    site_tls: Option<String>,
    sdk: Option<PathBuf>,
) -> anyhow::Result<()> {
    let loaded = load(&config)?;
    let sdk = sdk
        .map(|path| std::fs::read(&path).with_context(|| path.display().to_string()))
        .transpose()?;
    let tls_port = loaded.tls.as_ref().map_or(0, |t| t.listen.port());
    let demo_site = DemoSite::new(
        &format!("http://localhost:{}", loaded.listen.port()),
        &format!("localhost:{tls_port}"),
        sdk,
    );
    let emulator = Emulator::from_file(rules).map_err(anyhow::Error::msg)?;
    let upstream = &loaded.services[0].upstream;
    let emulator_listen = if upstream.host.contains(':') {
        format!("[{}]:{}", upstream.host, upstream.port)
    } else {
        format!("{}:{}", upstream.host, upstream.port)
    };
    let proxy = loaded.listen;
    if site_tls.is_some() && loaded.tls.is_none() {
        bail!(
            "--site-tls needs a [server.tls] section in {}",
            config.display()
        );
    }
    let (mut server, mut handles) = p13n_edge::build_server(loaded, Some(config), false)?;
    p13n_edge::add_emulator(
        &mut server,
        &mut handles.listeners,
        &emulator_listen,
        emulator,
    )
    .map_err(anyhow::Error::msg)?;
    p13n_edge::add_demo_site(
        &mut server,
        &mut handles,
        site,
        site_tls.as_deref(),
        demo_site,
    )
    .map_err(anyhow::Error::msg)?;
    print_demo(&proxy.to_string(), site);
    server.run_forever();
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).or_else(|errors| {
        for problem in &errors.0 {
            eprintln!("{}: {problem}", path.display());
        }
        bail!("{}: {} problem(s) found", path.display(), errors.0.len())
    })
}

const CREDENTIAL_TRACERS: [&str; 2] = [
    "pingora_core::protocols::http::v1::client",
    "pingora_core::protocols::http::v2::client",
];

fn init_logging(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Pingora's HTTP clients trace the raw upstream request, credentials included. Cap them,
    // whatever RUST_LOG asks for: a key must never reach a log line.
    for target in CREDENTIAL_TRACERS {
        filter = filter.add_directive(format!("{target}=debug").parse().expect("valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print_demo(proxy: &str, site: &str) {
    let site_port = site.rsplit(':').next().unwrap_or(site);
    println!(
        r#"
p13n-edge demo: emulator on 127.0.0.1:8081, proxy on http://{proxy}, admin on 127.0.0.1:9090

Three /retail page views make visitor v1 a high-loyalty visitor; the third answer has the offer:

  for i in 1 2 3; do
    curl -s -X POST http://{proxy}/demo_db/pageviews \
      -H 'Content-Type: application/json' \
      -d '{{"td_client_id":"v1","td_path":"/retail/shop/women","product_category":"women"}}'; echo
  done

The demo shop, calling the proxy from the browser: http://localhost:{site_port}/

What the emulator ingested:   curl -s http://127.0.0.1:8081/_emulator/stats
Metrics:                      curl -s http://127.0.0.1:9090/metrics | grep p13n_edge_
Stop with Ctrl-C.
"#
    );
}
