//! The upstream step: one client for every call to the personalization API, so that connection
//! reuse, DNS, retries with backoff, the retry budget and the circuit breaker live in one place
//! for live traffic, background delivery and replay alike.

mod backoff;
mod budget;
mod call;
mod circuit;
mod connection;
mod dns;
mod endpoint;
mod h2;
mod pool;
mod quota;
pub mod response;

pub use backoff::{parse_retry_after, Backoff, BackoffError};
pub use budget::{BudgetSettings, RetryBudget};
pub use call::{
    Call, CallLimits, CallPolicy, ClientInfo, Protocol, UpstreamError, UpstreamResponse,
};
pub use circuit::{Circuit, CircuitSettings, CircuitState};
pub use connection::request_bytes;
pub use dns::{DnsCache, DnsError, DnsPolicy, Freshness, Resolve, SystemResolver};
pub use endpoint::{Endpoint, Timeouts, UpstreamTarget};
use pool::Pools;
pub use quota::QuotaWait;
use quota::{quota_answer, Quota};

use crate::error::vendor_code;
use crate::lock;
use crate::metrics;
use dashmap::DashMap;
use http::HeaderValue;
use pingora::connectors::ConnectorOptions;
use pingora::connectors::TransportConnector;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Idle upstream connections kept per upstream peer.
/// The hasher of the per-call maps (keyed by service and upstream, looked up on every call):
/// ahash, a third of SipHash's cost.
type Keyed = ahash::RandomState;

const POOL_SIZE: usize = 512;

/// Connection pool, DNS cache, retry budgets (per service) and circuits (per upstream), shared
/// by every call for the life of the process: they survive config reloads.
pub struct UpstreamClient {
    transport: TransportConnector,
    /// The answers' connections, and replay's apart: a socket is driven by the runtime that
    /// opened it, and replay's runtime yields the CPU to the answers' (`spool.replay_nice`), so
    /// an answer on a connection replay opened would wait on replay's thread.
    answers: Pools,
    replay: Pools,
    protocol: Protocol,
    dns: DnsCache,
    budgets: DashMap<String, Arc<RetryBudget>, Keyed>,
    /// The schedules of the services with a quota.
    quotas: DashMap<String, Arc<Quota>, Keyed>,
    circuits: DashMap<String, Arc<Mutex<Circuit>>, Keyed>,
    /// Routes whose token the upstream refused, until a call on them succeeds.
    rejected: DashMap<String, String, Keyed>,
}

impl UpstreamClient {
    /// `ca_file` replaces the system roots for `https` upstreams; `resolver` looks up upstream
    /// names under the `dns` policy.
    pub fn new(
        dns: DnsPolicy,
        resolver: Arc<dyn Resolve>,
        ca_file: Option<String>,
        protocol: Protocol,
    ) -> Self {
        let mut options = ConnectorOptions::new(POOL_SIZE);
        options.ca_file = ca_file;
        UpstreamClient {
            transport: TransportConnector::new(Some(options)),
            answers: Pools::new(POOL_SIZE),
            replay: Pools::new(POOL_SIZE),
            protocol,
            dns: DnsCache::new(dns, resolver),
            budgets: DashMap::default(),
            quotas: DashMap::default(),
            circuits: DashMap::default(),
            rejected: DashMap::default(),
        }
    }

    /// Send one event: retried on 429 and on connection failures, with jittered backoff, within
    /// the service's deadline, retry budget and circuit.
    pub async fn send(
        &self,
        call: &Call,
        limits: CallLimits,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut paced = Duration::ZERO;
        self.send_paced(call, limits, &mut paced).await
    }

    /// `send`, adding to `paced` the time spent waiting for the service's quota: replay's
    /// window learns from the upstream's latency, not from the wait the quota imposes.
    pub async fn send_paced(
        &self,
        call: &Call,
        limits: CallLimits,
        paced: &mut Duration,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let endpoint = &call.endpoint;
        let policy = &endpoint.policy;
        // One clock reading for the call's start; each retry reads it again.
        let mut now = Instant::now();
        let deadline = now + limits.deadline;
        let budget = self.budget(&endpoint.service);
        budget.deposit(&policy.budget, now);
        let circuit = self.circuit(&endpoint.target.authority);
        let mut retry = 0;
        loop {
            // Every attempt, a retry too, is a call the quota counts.
            if let Some(rate) = policy.quota {
                let taken = self
                    .take_quota(&endpoint.service, rate, deadline, limits)
                    .await;
                let after = Instant::now();
                *paced += after - now;
                now = after;
                if let Err(wait) = taken {
                    return Ok(quota_answer(wait));
                }
            }
            if !lock(&circuit).allow(&policy.circuit, now) {
                metrics::UPSTREAM_ERRORS
                    .with_label_values(&[&endpoint.service, "circuit_open"])
                    .inc();
                return Err(UpstreamError::CircuitOpen);
            }
            let result = self.attempt(call, limits, (now, deadline), &circuit).await;
            let Some(reason) = retry_reason(&result, policy) else {
                return result;
            };
            let delay = retry_delay(&result, policy, retry);
            // Retry-After is honoured, but never past the deadline: then the caller gets the 429.
            if retry >= policy.max_retries || Instant::now() + delay >= deadline {
                return give_up(result, policy);
            }
            if !budget.try_withdraw(&policy.budget, Instant::now()) {
                metrics::RETRY_BUDGET_EXHAUSTED
                    .with_label_values(&[&endpoint.service])
                    .inc();
                return give_up(result, policy);
            }
            metrics::UPSTREAM_RETRIES
                .with_label_values(&[&endpoint.service, reason])
                .inc();
            metrics::UPSTREAM_BACKOFF
                .with_label_values(&[&endpoint.service])
                .observe(delay.as_secs_f64());
            tokio::time::sleep(delay).await;
            now = Instant::now();
            retry += 1;
        }
    }

    /// One attempt, started now (`started`, the caller's clock reading), on the host's
    /// addresses in turn, bounded by the deadline; recorded in the circuit and the metrics.
    async fn attempt(
        &self,
        call: &Call,
        limits: CallLimits,
        (started, deadline): (Instant, Instant),
        circuit: &Mutex<Circuit>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let endpoint = &call.endpoint;
        let mut limits = limits;
        limits.timeouts.upstream = limits
            .timeouts
            .upstream
            .min(deadline.saturating_duration_since(started));
        let result =
            match tokio::time::timeout(limits.timeouts.upstream, self.attempt_any(call, limits))
                .await
            {
                Ok(result) => result.map(|r| without_credentials(r, endpoint)),
                Err(_) => Err(UpstreamError::Timeout),
            };
        let ended = Instant::now();
        endpoint
            .series
            .upstream_duration
            .observe((ended - started).as_secs_f64());
        let healthy = match &result {
            Ok(r) => {
                self.observe_answer(endpoint, r);
                r.status < 500
            }
            Err(e) => {
                metrics::UPSTREAM_ERRORS
                    .with_label_values(&[&endpoint.service, e.kind()])
                    .inc();
                tracing::warn!(service = %endpoint.service, route = %endpoint.label, error = %e, "upstream attempt failed");
                false
            }
        };
        let changed = lock(circuit).record(&endpoint.policy.circuit, healthy, ended);
        if let Some(state) = changed {
            let upstream = &endpoint.target.authority;
            metrics::CIRCUIT_STATE
                .with_label_values(&[upstream])
                .set(state.as_gauge());
            tracing::warn!(%upstream, ?state, "circuit changed state");
        }
        result
    }

    async fn attempt_any(
        &self,
        call: &Call,
        limits: CallLimits,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let target = &call.endpoint.target;
        let mut last = None;
        for addr in self.dns.resolve(&target.host, target.port).await? {
            match self.attempt_on(addr, call, limits).await {
                // Nothing was sent: the next address of the host may answer.
                Err(e @ UpstreamError::Connect(_)) => last = Some(e),
                other => return other,
            }
        }
        Err(last.expect("resolve returns at least one address"))
    }

    /// One attempt at one address, in the configured protocol.
    async fn attempt_on(
        &self,
        addr: std::net::SocketAddr,
        call: &Call,
        limits: CallLimits,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let (pools, other) = if call.replay {
            (&self.replay, &self.answers)
        } else {
            (&self.answers, &self.replay)
        };
        other.h1.sweep_if_due(limits.timeouts.upstream_idle);
        match self.protocol {
            Protocol::Http1 => {
                connection::attempt(&self.transport, &pools.h1, addr, call, limits).await
            }
            Protocol::Http2 => {
                let target = &call.endpoint.target;
                let connect = || {
                    let alpn = pingora::protocols::ALPN::H2;
                    connection::connect(&self.transport, addr, target, &limits.timeouts, alpn)
                };
                let key = connection::pool_key(addr, target);
                pools.h2.attempt(key, connect, call, limits).await
            }
        }
    }

    /// Metrics for an answer, and the token rejections that retries cannot fix.
    fn observe_answer(&self, route: &Endpoint, r: &UpstreamResponse) {
        let service = &route.service;
        let code = if r.status >= 300 {
            vendor_code(&r.body)
        } else {
            None
        };
        if (200..300).contains(&r.status) {
            route.series.upstream_2xx.inc();
        } else {
            metrics::UPSTREAM_REQUESTS
                .with_label_values(&[
                    service,
                    metrics::status_class(r.status),
                    &metrics::code_label(code),
                ])
                .inc();
        }
        if let Some(code @ (3000..=3003 | 3006)) = code {
            metrics::TOKEN_REJECTIONS
                .with_label_values(&[service, &route.label, &route.token_name, &code.to_string()])
                .inc();
            tracing::error!(
                service = %service, route = %route.label, token = %route.token_name, code,
                "the upstream refused this route's token: check the token and the service's config"
            );
            self.rejected.insert(
                route.label.clone(),
                format!("token {} refused ({code})", route.token_name),
            );
        } else if r.status < 300 && !self.rejected.is_empty() {
            self.rejected.remove(&route.label);
        }
    }

    fn budget(&self, service: &str) -> Arc<RetryBudget> {
        shared(&self.budgets, service, || RetryBudget::new(Instant::now()))
    }

    fn circuit(&self, upstream: &str) -> Arc<Mutex<Circuit>> {
        shared(&self.circuits, upstream, || {
            metrics::CIRCUIT_STATE.with_label_values(&[upstream]).set(0);
            Mutex::new(Circuit::new(Instant::now()))
        })
    }

    /// Each upstream called so far, with its circuit state as the next call would find it.
    pub fn circuits(&self) -> Vec<(String, CircuitState)> {
        let now = Instant::now();
        self.circuits
            .iter()
            .map(|e| (e.key().clone(), lock(e.value()).state_at(now)))
            .collect()
    }

    /// Routes whose token the upstream refused, with why.
    pub fn rejected_routes(&self) -> Vec<(String, String)> {
        self.rejected
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }
}

/// The state kept under `key`, made on first use. The read path takes no write lock and
/// allocates no key.
fn shared<T>(map: &DashMap<String, Arc<T>, Keyed>, key: &str, make: impl FnOnce() -> T) -> Arc<T> {
    if let Some(found) = map.get(key) {
        return found.clone();
    }
    map.entry(key.to_string())
        .or_insert_with(|| Arc::new(make()))
        .clone()
}

/// The answer with the service's key and tokens replaced by `***`, before anything (the cache,
/// the browser, a log) sees it: an upstream, or a `base_url` that is not one, may echo what it
/// was sent. Error bodies lose every key- or token-shaped run; 2xx bodies (offers, promised to
/// pass through as they are) only this service's own credentials, so they change only when
/// they quote one. A header carrying one is dropped.
fn without_credentials(mut r: UpstreamResponse, service: &Endpoint) -> UpstreamResponse {
    let error = r.status >= 300;
    let mut scrubbed = false;
    if let Some(body) = service.scrub(&r.body, error) {
        r.body = body;
        scrubbed = true;
    }
    for header in [&mut r.content_type, &mut r.retry_after] {
        let carries = header
            .as_ref()
            .is_some_and(|v| v.len() >= 32 && service.scrub(v.as_bytes(), error).is_some());
        if carries {
            *header = None;
            scrubbed = true;
        }
    }
    if scrubbed {
        tracing::warn!(service = %service.service, status = r.status, "the upstream's answer quoted a credential: replaced by ***");
    }
    r
}

/// Why an attempt's outcome is worth another attempt (the metric's label); `None`: it is the
/// answer.
fn retry_reason(
    result: &Result<UpstreamResponse, UpstreamError>,
    policy: &CallPolicy,
) -> Option<&'static str> {
    match result {
        Ok(r) if r.status == 429 => Some("429"),
        Err(UpstreamError::Connect(_) | UpstreamError::Dns(_)) => Some("connect"),
        Err(UpstreamError::Io(_) | UpstreamError::Timeout) if policy.retry_after_send => {
            Some("after_send")
        }
        _ => None,
    }
}

/// The wait before retry number `retry`: the upstream's `Retry-After`, else the backoff's.
fn retry_delay(
    result: &Result<UpstreamResponse, UpstreamError>,
    policy: &CallPolicy,
    retry: u32,
) -> Duration {
    let retry_after = match result {
        Ok(r) => r
            .retry_after
            .as_ref()
            .and_then(|v| parse_retry_after(v.as_bytes(), SystemTime::now())),
        Err(_) => None,
    };
    retry_after.unwrap_or_else(|| policy.backoff.delay(retry, fastrand::f64()))
}

/// The last answer once retrying stops. A 429 always carries a `Retry-After`, ours if the
/// upstream sent none.
fn give_up(
    result: Result<UpstreamResponse, UpstreamError>,
    policy: &CallPolicy,
) -> Result<UpstreamResponse, UpstreamError> {
    result.map(|mut r| {
        if r.status == 429 && r.retry_after.is_none() {
            let seconds = policy.backoff.cap().as_secs_f64().ceil().max(1.0) as u64;
            r.retry_after = Some(HeaderValue::from(seconds));
        }
        r
    })
}
