//! The optional shared tier, on Valkey or Redis (`[shared]`), beside the cache step and the
//! visitor limit: offers as a second cache tier behind the local one, and per-visitor rate
//! limits counted for every instance together. Serving never depends on it: each operation
//! has a budget (`shared.budget_ms`), any error or timeout goes on with the local cache and
//! limits at once, and after a few failures in a row the tier is skipped for a backing-off
//! while (`breaker`), so that a dead Valkey costs a request nothing. The connections (redis-rs's
//! `ConnectionManager`) reconnect by themselves, and write-through refills an emptied server.

mod breaker;
mod codec;
mod connect;
mod limit;
mod offers;
mod settings;
mod warden;

pub use breaker::{Breaker, TierState};
pub use codec::{decode, encode, limit_key, offers_key, DecodeError};
pub use offers::Slot;
pub use settings::SharedSettings;
pub use warden::Warden;

use crate::lock;
use crate::metrics;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Failures in a row that take the tier down, and how long it then stays down (doubling per
/// failed probe).
pub(crate) const FAILURES_TO_SKIP: u32 = 3;
const SKIP_FIRST: Duration = Duration::from_millis(200);
const SKIP_AT_MOST: Duration = Duration::from_secs(5);

/// The operations, as labelled in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get = 0,
    Put = 1,
    Limit = 2,
    Ping = 3,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Limit => "limit",
            Op::Ping => "ping",
        }
    }
}

/// Error kinds, as labelled in `p13n_edge_shared_errors_total`.
pub const ERROR_KINDS: [&str; 8] = [
    "timeout", "refused", "io", "auth", "protocol", "server", "decode", "other",
];

/// One of the tier's connections, replaced when it stops answering: a connection whose peer
/// vanished without a reset (a dead pod behind a Service, a middlebox that keeps acknowledging)
/// sends no error, only timeouts, and redis-rs reconnects on errors alone.
struct Conn {
    /// The manager, and how many times it was made anew.
    manager: Mutex<(u64, ConnectionManager)>,
    /// Timeouts in a row on the current one.
    timeouts: std::sync::atomic::AtomicU32,
}

/// Which connection an operation went out on: its slot, and which of the slot's managers.
#[derive(Debug, Clone, Copy)]
struct Lease {
    slot: usize,
    generation: u64,
}

/// Timeouts in a row after which a connection is made anew.
const TIMEOUTS_TO_REPLACE: u32 = 3;

pub struct SharedTier {
    settings: SharedSettings,
    client: redis::Client,
    /// Made by the warden once a runtime runs (redis-rs spawns on the current one).
    connections: OnceLock<Vec<Conn>>,
    breaker: Mutex<Breaker>,
    writes_in_flight: Arc<AtomicUsize>,
    limiter: redis::Script,
    /// `p13n_edge_shared_duration_seconds` by `Op`, resolved once.
    durations: [prometheus::Histogram; 4],
    /// The last failure's kind, for `/readyz`.
    last_error: Mutex<Option<&'static str>>,
    /// Whether any operation has succeeded yet: until one has, the tier is not connected,
    /// whatever the breaker (which starts up) says.
    answered: AtomicBool,
}

impl SharedTier {
    /// The tier for `settings`; nothing connects until the warden starts.
    pub fn new(settings: SharedSettings) -> Result<Self, redis::RedisError> {
        let client = connect::client(&settings)?;
        for op in [Op::Get, Op::Put, Op::Limit, Op::Ping] {
            for kind in ERROR_KINDS {
                metrics::SHARED_ERRORS.with_label_values(&[op.label(), kind]);
            }
        }
        for result in ["hit", "miss", "error", "skipped"] {
            metrics::SHARED_LOOKUPS.with_label_values(&[result]);
        }
        for result in ["ok", "error", "dropped", "skipped", "unchanged"] {
            metrics::SHARED_WRITES.with_label_values(&[result]);
        }
        for result in ["allowed", "limited", "local"] {
            metrics::SHARED_LIMITS.with_label_values(&[result]);
        }
        metrics::SHARED_STATE.set(TierState::Down.as_gauge());
        Ok(SharedTier {
            settings,
            client,
            connections: OnceLock::new(),
            breaker: Mutex::new(
                Breaker::try_new(FAILURES_TO_SKIP, SKIP_FIRST, SKIP_AT_MOST, Instant::now())
                    .expect("constant breaker settings are valid"),
            ),
            writes_in_flight: Arc::new(AtomicUsize::new(0)),
            limiter: redis::Script::new(limit::GCRA),
            durations: [Op::Get, Op::Put, Op::Limit, Op::Ping]
                .map(|op| metrics::SHARED_DURATION.with_label_values(&[op.label()])),
            last_error: Mutex::new(None),
            answered: AtomicBool::new(false),
        })
    }

    pub fn settings(&self) -> &SharedSettings {
        &self.settings
    }

    /// Open the connections (lazily: the first operation on each connects it). Once only.
    fn connect(&self) -> Result<(), redis::RedisError> {
        let made = (0..self.settings.connections)
            .map(|_| {
                Ok(Conn {
                    manager: Mutex::new((0, connect::manager(&self.client, &self.settings)?)),
                    timeouts: std::sync::atomic::AtomicU32::new(0),
                })
            })
            .collect::<Result<Vec<_>, redis::RedisError>>()?;
        let _ = self.connections.set(made);
        Ok(())
    }

    /// The connection for `key` (always the same one, so that two writes of a key arrive in
    /// order), if the tier may be asked now.
    fn connection(&self, key: &[u8]) -> Option<(Lease, ConnectionManager)> {
        let connections = self.connections.get()?;
        if !lock(&self.breaker).allow(Instant::now()) {
            return None;
        }
        let slot = crc32fast::hash(key) as usize % connections.len();
        Some(self.lease(connections, slot))
    }

    fn lease(&self, connections: &[Conn], slot: usize) -> (Lease, ConnectionManager) {
        let held = lock(&connections[slot].manager);
        let lease = Lease {
            slot,
            generation: held.0,
        };
        (lease, held.1.clone())
    }

    /// Count a timeout (or an answer) on connection `i`; past `TIMEOUTS_TO_REPLACE` in a row
    /// it is made anew, on a new socket.
    fn note_timeout(&self, lease: Lease, timed_out: bool) {
        let Some(conn) = self.connections.get().and_then(|c| c.get(lease.slot)) else {
            return;
        };
        // An operation of a manager already replaced says nothing of the new one.
        if lock(&conn.manager).0 != lease.generation {
            return;
        }
        if !timed_out {
            conn.timeouts.store(0, Ordering::Relaxed);
            return;
        }
        if conn.timeouts.fetch_add(1, Ordering::Relaxed) + 1 < TIMEOUTS_TO_REPLACE {
            return;
        }
        conn.timeouts.store(0, Ordering::Relaxed);
        match connect::manager(&self.client, &self.settings) {
            Ok(fresh) => {
                let mut held = lock(&conn.manager);
                *held = (held.0 + 1, fresh);
                tracing::warn!(url = %self.settings.url, connection = lease.slot, "shared tier connection stopped answering: replaced");
            }
            Err(e) => tracing::warn!(
                kind = connect::error_kind(&e),
                "shared tier connection could not be replaced"
            ),
        }
    }

    /// Run `operation` within the budget, and count how it went.
    async fn run<T>(
        &self,
        op: Op,
        connection: Lease,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let started = Instant::now();
        // A ping is the warden's, off the request path: it may take a connection's time.
        let limit = match op {
            Op::Ping => self.settings.connect_timeout,
            _ => self.settings.budget,
        };
        let outcome = match tokio::time::timeout(limit, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(connect::error_kind(&e)),
            Err(_) => Err("timeout"),
        };
        self.note_timeout(connection, matches!(outcome, Err("timeout")));
        self.record(op, outcome.as_ref().err().copied(), started);
        outcome.ok()
    }

    fn record(&self, op: Op, error: Option<&'static str>, started: Instant) {
        let mut breaker = lock(&self.breaker);
        let was = breaker.state();
        match error {
            None => {
                breaker.success();
                self.answered.store(true, Ordering::Relaxed);
                self.durations[op as usize].observe(started.elapsed().as_secs_f64());
            }
            Some(kind) => {
                breaker.failure(Instant::now(), started);
                *lock(&self.last_error) = Some(kind);
                metrics::SHARED_ERRORS
                    .with_label_values(&[op.label(), kind])
                    .inc();
            }
        }
        let now = breaker.state();
        metrics::SHARED_STATE.set(now.as_gauge());
        let url = &self.settings.url;
        match (was, now) {
            (TierState::Up, TierState::Down) => tracing::warn!(
                url = %url,
                kind = error.unwrap_or_default(),
                "shared tier failing: serving from the local cache and limits"
            ),
            (TierState::Down | TierState::Probing, TierState::Up) => {
                tracing::info!(url = %url, "shared tier back")
            }
            _ => {}
        }
    }

    /// A round trip on the `i`th connection, for the warden: it connects the connection, and
    /// probes a tier that is down. `false` when it failed or was not sent (the tier is skipped).
    async fn ping(&self, i: usize) -> bool {
        let Some(connections) = self.connections.get() else {
            return false;
        };
        if !lock(&self.breaker).allow(Instant::now()) {
            return false;
        }
        let (lease, mut conn) = self.lease(connections, i % connections.len());
        let pong: Option<String> = self
            .run(Op::Ping, lease, async move {
                redis::cmd("PING").query_async(&mut conn).await
            })
            .await;
        pong.is_some()
    }

    /// `/readyz` warnings: never a reason, since serving goes on without the tier.
    pub fn warnings(&self) -> Vec<String> {
        let breaker = lock(&self.breaker);
        let why = lock(&self.last_error).unwrap_or("not connected yet");
        let at = &self.settings.url;
        match breaker.state() {
            TierState::Up if self.answered.load(Ordering::Relaxed) => Vec::new(),
            TierState::Up => vec![format!("shared tier {at}: not connected yet")],
            TierState::Down | TierState::Probing => vec![format!(
                "shared tier {at}: failing ({why}, {} failures in a row), retried in {} ms; \
                 serving from the local cache and limits",
                breaker.failures(),
                breaker.retry_in(Instant::now()).as_millis()
            )],
        }
    }

    pub fn state(&self) -> TierState {
        lock(&self.breaker).state()
    }
}
