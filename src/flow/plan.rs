//! The cache step's decisions, as pure functions of what is known when each is taken: `plan`
//! before any call (mode, the cached entry's freshness, the visitor's backlog, the lane's lag),
//! `judge` once an upstream answer (or failure) is in while a fallback entry waits. The
//! executor (`Flow`) carries them out; the tables below are their specification.

use crate::answer::Detail;
use crate::cache::Freshness;
use crate::config::CacheMode;
use crate::error::EdgeError;
use crate::upstream::{UpstreamError, UpstreamResponse};

/// What the cache step does before any call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Cache off: straight to the upstream, its answer relayed (`fwd=bypass`).
    Bypass,
    /// The visitor's earlier events are still in the spool: this one queues behind them, so the
    /// upstream sees them in order, answered from the entry (`detail=queued`).
    Queue(Freshness),
    /// Queued events and no entry to answer from: 503 and `Retry-After`, nothing accepted.
    Backlog,
    /// `fast` with a fresh entry: answered from it at once, the event spooled.
    Hit,
    /// To the upstream. With a fallback entry the call races the deadline, and an upstream
    /// failure is answered from the entry (stale-if-error); without one the client waits.
    Forward { fallback: bool },
}

/// The plan for an event. `lagging`: the service's lane lags and it would rather go upstream
/// than answer from an entry replay will not refresh soon (`cache.on_lag = "pass-through"`).
pub fn plan(mode: CacheMode, cached: Option<Freshness>, backlog: bool, lagging: bool) -> Plan {
    match (mode, cached, backlog) {
        (CacheMode::Off, _, _) => Plan::Bypass,
        (_, Some(freshness), true) => Plan::Queue(freshness),
        (_, None, true) => Plan::Backlog,
        (CacheMode::Fast, Some(Freshness::Fresh), false) if !lagging => Plan::Hit,
        (_, cached, false) => Plan::Forward {
            fallback: cached.is_some(),
        },
    }
}

/// What an upstream outcome means when a fallback entry waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// An answer to relay (and cache, if 2xx).
    Relay,
    /// An upstream failure: the entry answers, stale, the event spooled first.
    Stale(Detail),
    /// An answer that cannot be used or relayed.
    Fail(EdgeError),
}

pub fn judge(outcome: &Result<UpstreamResponse, UpstreamError>) -> Judgement {
    match outcome {
        Ok(r) if r.status == 429 => Judgement::Stale(Detail::Upstream429),
        Ok(r) if r.status >= 500 => Judgement::Stale(Detail::Upstream5xx),
        Ok(_) => Judgement::Relay,
        Err(UpstreamError::CircuitOpen) => Judgement::Stale(Detail::CircuitOpen),
        Err(UpstreamError::Timeout) => Judgement::Stale(Detail::Timeout),
        Err(UpstreamError::TooLarge(_)) => Judgement::Fail(EdgeError::BadUpstreamResponse),
        Err(_) => Judgement::Stale(Detail::Unreachable),
    }
}

/// An upstream failure as the client sees it when nothing can answer instead.
pub fn edge_error(e: UpstreamError) -> EdgeError {
    match e {
        UpstreamError::Timeout => EdgeError::UpstreamTimeout,
        UpstreamError::TooLarge(_) => EdgeError::BadUpstreamResponse,
        UpstreamError::CircuitOpen => EdgeError::CircuitOpen,
        _ => EdgeError::UpstreamUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use CacheMode::{Fast, Off, PassThrough};
    use Freshness::{Fresh, Stale};

    #[test]
    fn the_plan_table() {
        let forward = |fallback| Plan::Forward { fallback };
        #[rustfmt::skip]
        let table = [
            // mode,       entry,        backlog, lagging => plan
            (Off,         None,         false,   false,   Plan::Bypass),
            (Off,         Some(Fresh),  true,    true,    Plan::Bypass),
            (PassThrough, None,         false,   false,   forward(false)),
            (PassThrough, Some(Fresh),  false,   false,   forward(true)),
            (PassThrough, Some(Stale),  false,   false,   forward(true)),
            (PassThrough, Some(Fresh),  true,    false,   Plan::Queue(Fresh)),
            (PassThrough, Some(Stale),  true,    false,   Plan::Queue(Stale)),
            (PassThrough, None,         true,    false,   Plan::Backlog),
            (Fast,        None,         false,   false,   forward(false)),
            (Fast,        Some(Fresh),  false,   false,   Plan::Hit),
            (Fast,        Some(Fresh),  false,   true,    forward(true)),
            (Fast,        Some(Stale),  false,   false,   forward(true)),
            (Fast,        Some(Fresh),  true,    false,   Plan::Queue(Fresh)),
            (Fast,        Some(Stale),  true,    true,    Plan::Queue(Stale)),
            (Fast,        None,         true,    false,   Plan::Backlog),
        ];
        for (mode, entry, backlog, lagging, expected) in table {
            assert_eq!(
                plan(mode, entry, backlog, lagging),
                expected,
                "{mode:?} {entry:?} backlog={backlog} lagging={lagging}"
            );
        }
    }

    #[test]
    fn the_judgement_table() {
        let answer = |status| {
            Ok(UpstreamResponse {
                status,
                content_type: None,
                retry_after: None,
                body: Bytes::new(),
            })
        };
        let table: [(Result<UpstreamResponse, UpstreamError>, Judgement); 10] = [
            (answer(200), Judgement::Relay),
            (answer(204), Judgement::Relay),
            (answer(400), Judgement::Relay),
            (answer(401), Judgement::Relay),
            (answer(429), Judgement::Stale(Detail::Upstream429)),
            (answer(503), Judgement::Stale(Detail::Upstream5xx)),
            (
                Err(UpstreamError::CircuitOpen),
                Judgement::Stale(Detail::CircuitOpen),
            ),
            (
                Err(UpstreamError::Timeout),
                Judgement::Stale(Detail::Timeout),
            ),
            (
                Err(UpstreamError::Connect("refused".into())),
                Judgement::Stale(Detail::Unreachable),
            ),
            (
                Err(UpstreamError::TooLarge(1)),
                Judgement::Fail(EdgeError::BadUpstreamResponse),
            ),
        ];
        for (outcome, expected) in table {
            assert_eq!(judge(&outcome), expected, "{outcome:?}");
        }
    }
}
