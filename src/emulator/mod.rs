//! The upstream stand-in: checks requests like the real service (3000-3005, 415), keeps a
//! real-time profile per visitor, answers every matching offer, injects faults on demand, and
//! reports what it ingested at `GET /_emulator/stats`. No global lock on the ingestion path:
//! profiles live in a `DashMap`, counters are atomics, the fault plan sits behind `arc-swap`.

mod checks;
mod faults;
mod recent;
mod rules;

pub use faults::{FaultPlan, FaultSpec};
pub use recent::UUIDS;
pub use rules::{Profile, Rules};

use recent::Recent;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use dashmap::DashMap;
use http::{header, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const MAX_BODY: usize = 1 << 20;

/// Visitors' profiles kept by default; past it, one is forgotten for each new visitor.
pub const PROFILES: usize = 1 << 20;

pub struct Emulator {
    rules: Rules,
    profiles: DashMap<String, Profile>,
    /// The most profiles kept: the emulator's memory stays bounded however many visitors come.
    max_profiles: usize,
    faults: ArcSwapOption<FaultPlan>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    events_ingested: AtomicU64,
    by_status: DashMap<u16, AtomicU64>,
    by_code: DashMap<u32, AtomicU64>,
    /// The newest events' `uuid`s, to count redeliveries.
    uuids: Recent,
    duplicates: AtomicU64,
    profiles_forgotten: AtomicU64,
    /// Ingest requests being answered now, and the most at once since the last reset or fault
    /// plan.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Ingest calls received in the current wall-clock second (the second in the high 32 bits,
    /// the count in the low), and the most in any one second since the last reset or fault plan:
    /// what a quota on the vendor's side would see.
    this_second: AtomicU64,
    max_per_second: AtomicU64,
}

/// One ingest request being answered: counted in `in_flight` until dropped.
struct Answering<'a>(&'a Stats);

impl Stats {
    fn answering(&self) -> Answering<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() & 0xffff_ffff);
        let mut seen = self.this_second.load(Ordering::Relaxed);
        let count = loop {
            let next = if seen >> 32 == second {
                seen + 1
            } else {
                (second << 32) | 1
            };
            match self.this_second.compare_exchange_weak(
                seen,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break next & 0xffff_ffff,
                Err(actual) => seen = actual,
            }
        };
        self.max_per_second.fetch_max(count, Ordering::Relaxed);
        Answering(self)
    }

    /// The peaks are counted again from now.
    fn restart_peaks(&self) {
        self.max_in_flight
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        self.this_second.store(0, Ordering::Relaxed);
        self.max_per_second.store(0, Ordering::Relaxed);
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One answer: status, optional vendor code (for stats), body, extra header.
struct Reply {
    status: u16,
    code: Option<u32>,
    body: Vec<u8>,
    retry_after: Option<String>,
}

impl Reply {
    fn error(status: u16, code: u32, message: &str) -> Reply {
        Reply {
            status,
            code: Some(code),
            body: serde_json::json!({ "code": code, "message": message })
                .to_string()
                .into_bytes(),
            retry_after: None,
        }
    }
}

impl Emulator {
    pub fn new(rules: Rules) -> Self {
        Emulator {
            rules,
            profiles: DashMap::new(),
            max_profiles: PROFILES,
            faults: ArcSwapOption::empty(),
            stats: Stats::default(),
        }
    }

    /// Remembering at most `uuids` event ids (to count repeats) and `profiles` visitors, the
    /// oldest id and any one profile forgotten past them (defaults `UUIDS`, `PROFILES`).
    pub fn remembering(mut self, uuids: usize, profiles: usize) -> Self {
        self.stats.uuids = Recent::new(uuids);
        self.max_profiles = profiles.max(1);
        self
    }

    /// Load rules from a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rules = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Emulator::new(rules))
    }

    pub fn stats_json(&self) -> Value {
        let s = &self.stats;
        let by_status = counts(&s.by_status);
        let by_code = counts(&s.by_code);
        serde_json::json!({
            "requests": s.requests.load(Ordering::Relaxed),
            "events_ingested": s.events_ingested.load(Ordering::Relaxed),
            "duplicates": s.duplicates.load(Ordering::Relaxed),
            "max_in_flight": s.max_in_flight.load(Ordering::Relaxed),
            "max_per_second": s.max_per_second.load(Ordering::Relaxed),
            "profiles": self.profiles.len(),
            "profiles_forgotten": s.profiles_forgotten.load(Ordering::Relaxed),
            "uuids_remembered": s.uuids.len(),
            "uuids_forgotten": s.uuids.forgotten(),
            "by_status": by_status,
            "by_code": by_code,
        })
    }

    fn reset(&self) {
        self.profiles.clear();
        self.faults.store(None);
        let s = &self.stats;
        s.requests.store(0, Ordering::Relaxed);
        s.events_ingested.store(0, Ordering::Relaxed);
        s.duplicates.store(0, Ordering::Relaxed);
        s.profiles_forgotten.store(0, Ordering::Relaxed);
        s.restart_peaks();
        s.by_status.clear();
        s.by_code.clear();
        s.uuids.clear();
    }

    async fn control(&self, session: &mut ServerSession, path: &str) -> Reply {
        let method = session.req_header().method.clone();
        match (method.as_str(), path) {
            ("GET", "/_emulator/stats") => json_reply(&self.stats_json()),
            ("POST", "/_emulator/reset") => {
                self.reset();
                json_reply(&serde_json::json!({"reset": true}))
            }
            ("DELETE", "/_emulator/faults") => {
                self.faults.store(None);
                json_reply(&serde_json::json!({"faults": null}))
            }
            ("POST", "/_emulator/faults") => {
                let body = match read_body(session).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                let spec: FaultSpec = match serde_json::from_slice(&body) {
                    Ok(s) => s,
                    Err(e) => return Reply::error(400, 400, &format!("bad fault plan: {e}")),
                };
                if let Err(e) = spec.validate() {
                    return Reply::error(400, 400, &e);
                }
                self.faults
                    .store(Some(std::sync::Arc::new(FaultPlan::new(spec))));
                // The peaks are counted again under each plan.
                self.stats.restart_peaks();
                json_reply(&serde_json::json!({"faults": "set"}))
            }
            _ => Reply::error(404, 404, "unknown emulator control route"),
        }
    }

    async fn ingest(&self, session: &mut ServerSession) -> Reply {
        let _answering = self.stats.answering();
        if let Err(reply) = self.admit(session) {
            return reply;
        }
        let (event, visitor) = match self.read_event(session).await {
            Ok(read) => read,
            Err(reply) => return reply,
        };
        if let Some(reply) = self.inject_fault().await {
            return reply;
        }
        self.record(visitor, &event)
    }

    /// The body as a JSON object, and the visitor it names.
    async fn read_event(
        &self,
        session: &mut ServerSession,
    ) -> Result<(Map<String, Value>, String), Reply> {
        let body = read_body(session).await?;
        let event: Map<String, Value> = match serde_json::from_slice(&body) {
            Ok(e) => e,
            Err(_) => return Err(Reply::error(400, 3004, "Invalid event object.")),
        };
        let Some(visitor) = self.visitor(&event) else {
            return Err(Reply::error(400, 3004, "Invalid event object."));
        };
        Ok((event, visitor))
    }

    /// Under an active fault plan: its latency, then its answer if it strikes (or if too many
    /// requests are in flight).
    async fn inject_fault(&self) -> Option<Reply> {
        let plan = self
            .faults
            .load_full()
            .filter(|p| p.active(Instant::now()))?;
        let crowded = plan
            .spec
            .max_in_flight
            .is_some_and(|most| self.stats.in_flight.load(Ordering::Relaxed) > most);
        tokio::time::sleep(plan.latency()).await;
        if crowded {
            return Some(Reply::error(429, 2013, vendor_message(2013)));
        }
        if plan.strikes() {
            let code = plan.spec.code();
            let mut reply = Reply::error(plan.spec.status, code, vendor_message(code));
            reply.retry_after = plan.spec.retry_after.clone();
            return Some(reply);
        }
        None
    }

    /// A new visitor past `max_profiles`: one profile forgotten first (whichever the map gives;
    /// concurrent ingests may pass the limit by one each, no more).
    fn make_room_for(&self, visitor: &str) {
        if self.profiles.len() < self.max_profiles || self.profiles.contains_key(visitor) {
            return;
        }
        // The key cloned and the shard's guard dropped before the removal, which locks it.
        let victim = self.profiles.iter().next().map(|e| e.key().clone());
        if let Some(victim) = victim {
            if self.profiles.remove(&victim).is_some() {
                self.stats
                    .profiles_forgotten
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The event ingested: counted, its visitor's profile updated, the matching offers
    /// answered.
    fn record(&self, visitor: String, event: &Map<String, Value>) -> Reply {
        self.stats.events_ingested.fetch_add(1, Ordering::Relaxed);
        if let Some(Value::String(uuid)) = event.get("uuid") {
            if self.stats.uuids.repeat(uuid) {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.make_room_for(&visitor);
        let offers = {
            let mut profile = self.profiles.entry(visitor).or_default();
            self.rules.update(&mut profile, event);
            self.rules.offers(&profile, event)
        };
        if offers.is_empty() {
            return Reply {
                status: 200,
                code: None,
                body: Vec::new(),
                retry_after: None,
            };
        }
        json_reply(&serde_json::json!({ "offers": offers }))
    }

    /// The profile key: the first configured identifier present, as `field:value`.
    fn visitor(&self, event: &Map<String, Value>) -> Option<String> {
        self.rules
            .identifiers
            .iter()
            .find_map(|field| match event.get(field)? {
                Value::String(s) if !s.is_empty() => Some(format!("{field}:{s}")),
                Value::Number(n) => Some(format!("{field}:{n}")),
                _ => None,
            })
    }

    fn count(&self, reply: &Reply) {
        let s = &self.stats;
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.by_status
            .entry(reply.status)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
        if let Some(code) = reply.code {
            s.by_code
                .entry(code)
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
        crate::metrics::EMULATOR_REQUESTS
            .with_label_values(&[&reply.status.to_string()])
            .inc();
    }
}

#[async_trait]
impl ServeHttp for Emulator {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let reply = if path.starts_with("/_emulator/") {
            self.control(session, &path).await
        } else {
            let reply = self.ingest(session).await;
            self.count(&reply);
            reply
        };
        let mut builder = Response::builder()
            .status(reply.status)
            .header(header::CONTENT_LENGTH, reply.body.len());
        if !reply.body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(retry_after) = reply.retry_after {
            builder = builder.header(header::RETRY_AFTER, retry_after);
        }
        builder
            .body(reply.body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

fn counts<K: ToString + Eq + std::hash::Hash>(m: &DashMap<K, AtomicU64>) -> Map<String, Value> {
    m.iter()
        .map(|e| {
            (
                e.key().to_string(),
                e.value().load(Ordering::Relaxed).into(),
            )
        })
        .collect()
}

fn json_reply(v: &Value) -> Reply {
    Reply {
        status: 200,
        code: None,
        body: v.to_string().into_bytes(),
        retry_after: None,
    }
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Reply> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(Reply::error(413, 413, "Request Entity Too Large"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(Reply::error(400, 3004, "Invalid event object.")),
        }
    }
}

/// The vendor's messages for its codes.
pub fn vendor_message(code: u32) -> &'static str {
    match code {
        2003 => "Kinesis error due to limit being exceeded",
        2013 => "Lambda total concurrent execution exceeds the reserved concurrency",
        3000 => "RT token was not provided (WP13n-Token header).",
        3001 => "RT token is not in configuration.",
        3002 => "RT token account conflicts with Authed user account.",
        3003 => "RT token is in an invalid format.",
        3004 => "Invalid event object.",
        3005 => "Request origin not in IP whitelist.",
        2001 => "Internal component unreachable",
        _ => "Internal server error",
    }
}
