//! The upstream step's vocabulary: a call and what bounds it (limits, the service's policy),
//! the protocol it travels in, the answer and the errors it can end in.

use super::{Backoff, BudgetSettings, CircuitSettings, DnsError, Endpoint, QuotaWait, Timeouts};
use bytes::Bytes;
use http::HeaderValue;
use std::sync::Arc;
use std::time::Duration;

/// How calls travel to the upstream (`upstream.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    /// A pool of HTTP/1.1 connections, one call on each at a time.
    #[default]
    Http1,
    /// A few shared HTTP/2 connections per upstream address, every call a stream on one.
    Http2,
}

/// What an upstream call can fail with, before an answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// The request was not (fully) sent: safe to try again.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The request may have reached the upstream: it may have ingested the event.
    #[error("failed after sending: {0}")]
    Io(String),
    #[error("upstream call passed its deadline")]
    Timeout,
    #[error("upstream response exceeds {0} bytes")]
    TooLarge(usize),
    #[error("circuit open: the upstream is failing, calls are refused for now")]
    CircuitOpen,
}

impl UpstreamError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Dns(_) => "dns",
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Io(_) => "io",
            UpstreamError::Timeout => "timeout",
            UpstreamError::TooLarge(_) => "too_large",
            UpstreamError::CircuitOpen => "circuit_open",
        }
    }
}

/// The upstream's answer, body untouched.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: u16,
    pub content_type: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
}

/// One event to send: the endpoint supplies the path, credentials and policy; the body goes as
/// is.
pub struct Call {
    pub endpoint: Arc<Endpoint>,
    pub body: Bytes,
    pub client: ClientInfo,
    /// Sent by replay: on replay's own connections (`UpstreamClient`'s pools).
    pub replay: bool,
}

/// What the upstream may learn of the browser. Replayed events carry none of it: the spool
/// keeps only the event.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub user_agent: Option<HeaderValue>,
    /// Sent as `X-Forwarded-For` when `clients.forward_address` is on.
    pub address: Option<std::net::IpAddr>,
}

/// Limits of one call, taken from the config in force when the request started.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub timeouts: Timeouts,
    pub max_body: usize,
    /// Bounds the whole call, retries and backoff included.
    pub deadline: Duration,
    /// Whether a call that finds the service's quota spent waits for its slot, and behind whom.
    pub quota_wait: QuotaWait,
}

impl CallLimits {
    /// The limits for a call on `endpoint`, bounded by its service's deadline.
    pub fn new(timeouts: Timeouts, max_body: usize, endpoint: &Endpoint) -> Self {
        CallLimits {
            timeouts,
            max_body,
            deadline: endpoint.policy.deadline,
            quota_wait: QuotaWait::UntilDeadline,
        }
    }
}

/// How a service's calls are retried and bounded.
#[derive(Debug, Clone, Copy)]
pub struct CallPolicy {
    /// Bounds the whole call, retries and backoff included.
    pub deadline: Duration,
    pub max_retries: u32,
    pub backoff: Backoff,
    pub budget: BudgetSettings,
    /// Retry timeouts and I/O errors after the request was sent (the upstream may have ingested).
    pub retry_after_send: bool,
    pub circuit: CircuitSettings,
    /// Calls a second to the upstream, live and replayed together; `None`: no limit.
    pub quota: Option<f64>,
}
