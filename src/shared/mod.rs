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
mod settings;
mod warden;

pub use breaker::{Breaker, TierState};
pub use codec::{decode, encode, limit_key, offers_key, DecodeError};
pub use settings::SharedSettings;
pub use warden::Warden;

use crate::cache::{CacheKey, Freshness, OfferCache, Offers};
use crate::lock;
use crate::metrics;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

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

    /// A local miss: the visitor's offers from the shared tier, put in the local cache and
    /// answered from there as if fetched here (their age is the stored fetch time's).
    pub async fn fill(&self, cache: &OfferCache, slot: Slot<'_>) -> Option<(Offers, Freshness)> {
        if !self.settings.offers {
            return None;
        }
        let Slot {
            key,
            namespace,
            fresh,
            stale,
        } = slot;
        let stored = offers_key(&self.settings.key_prefix, namespace, key);
        let Some((lease, mut conn)) = self.connection(&stored) else {
            metrics::SHARED_LOOKUPS
                .with_label_values(&["skipped"])
                .inc();
            return None;
        };
        // At most one byte past the longest value this edge writes: a longer one is not ours,
        // and is not read whole.
        let cap = codec::HEADER + codec::MAX_CONTENT_TYPE + self.settings.max_body + 1;
        let found: Option<Vec<u8>> = self
            .run(Op::Get, lease, async move {
                let mut get = redis::cmd("GETRANGE");
                get.arg(stored).arg(0).arg(cap - 1);
                get.query_async(&mut conn).await
            })
            .await;
        let result = |r: &str| metrics::SHARED_LOOKUPS.with_label_values(&[r]).inc();
        let value = match found {
            // GETRANGE answers "" for a missing key.
            Some(value) if !value.is_empty() => value,
            missing => {
                result(if missing.is_none() { "error" } else { "miss" });
                return None;
            }
        };
        let now = Instant::now();
        let offers = match decode(&value, self.settings.max_body, now, SystemTime::now()) {
            Ok(offers) => offers,
            Err(_) => {
                metrics::SHARED_ERRORS
                    .with_label_values(&[Op::Get.label(), "decode"])
                    .inc();
                result("error");
                return None;
            }
        };
        let age = now.saturating_duration_since(offers.fetched);
        let freshness = if age < fresh {
            Freshness::Fresh
        } else if age < stale {
            Freshness::Stale
        } else {
            result("miss");
            return None;
        };
        result("hit");
        // As written there, about when it was fetched: not written back for a while.
        let offers = Offers {
            shared_at: stamp(offers.fetched),
            ..offers
        };
        cache.insert(key.clone(), offers.clone());
        Some((offers, freshness))
    }

    /// Write an upstream's 2xx through, off the answer path, to expire with the service's stale
    /// limit; call before `offers` go in the local cache. An answer the same as the local one
    /// that was written less than half its freshness ago is not written again (a `fast` hit's
    /// replayed event would otherwise cost a write each): the shared copy stays fresh. Dropped
    /// (and counted) while too many writes are in flight or the tier is down.
    pub fn put(self: &Arc<Self>, cache: &OfferCache, slot: Slot<'_>, offers: &mut Offers) {
        if !self.settings.offers {
            return;
        }
        let Slot {
            key,
            namespace,
            fresh,
            stale,
        } = slot;
        let written = |r: &str| metrics::SHARED_WRITES.with_label_values(&[r]).inc();
        let now = Instant::now();
        if let Some((previous, _)) = cache.get(key, Duration::MAX, Duration::MAX, now) {
            let recent =
                stamp(now).saturating_sub(previous.shared_at) < (fresh / 2).as_secs() as u32;
            if previous.shared_at != 0 && recent && same_answer(&previous, offers) {
                offers.shared_at = previous.shared_at;
                return written("unchanged");
            }
        }
        let ttl = stale.saturating_sub(offers.fetched.elapsed());
        if ttl < Duration::from_millis(1) {
            return;
        }
        // Larger than what a lookup reads back (the limit when the tier was made): not stored.
        if offers.body.len() > self.settings.max_body {
            return written("dropped");
        }
        let Some(value) = encode(offers, now, SystemTime::now()) else {
            return written("dropped");
        };
        let in_flight = self.writes_in_flight.fetch_add(1, Ordering::AcqRel);
        if in_flight >= self.settings.max_writes_in_flight {
            self.writes_in_flight.fetch_sub(1, Ordering::AcqRel);
            return written("dropped");
        }
        let stored = offers_key(&self.settings.key_prefix, namespace, key);
        let Some((lease, mut conn)) = self.connection(&stored) else {
            self.writes_in_flight.fetch_sub(1, Ordering::AcqRel);
            return written("skipped");
        };
        offers.shared_at = stamp(now);
        let tier = self.clone();
        tokio::spawn(async move {
            let ms = ttl.as_millis() as u64;
            let mut set = redis::cmd("SET");
            set.arg(stored).arg(&value[..]).arg("PX").arg(ms);
            let done = tier
                .run(Op::Put, lease, set.query_async::<()>(&mut conn))
                .await;
            tier.writes_in_flight.fetch_sub(1, Ordering::AcqRel);
            written(if done.is_some() { "ok" } else { "error" });
        });
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
            TierState::Up if self.connections.get().is_some() => Vec::new(),
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

/// Where a visitor's offers are kept in the tier, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    pub key: &'a CacheKey,
    /// The route's `Endpoint::fingerprint`.
    pub namespace: &'a str,
    pub fresh: Duration,
    pub stale: Duration,
}

/// A time as `Offers::shared_at`: whole seconds since a day before the first stamp, plus one
/// (0 is never). Coarse on purpose: it only decides when an unchanged answer is written again.
fn stamp(at: Instant) -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now)
    });
    let secs = at.saturating_duration_since(*epoch).as_secs();
    secs.min(u64::from(u32::MAX - 1)) as u32 + 1
}

fn same_answer(a: &Offers, b: &Offers) -> bool {
    a.status == b.status && a.content_type == b.content_type && a.body == b.body
}
