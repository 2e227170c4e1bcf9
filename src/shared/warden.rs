//! The shared tier's background service: it makes the connections once a runtime runs,
//! connects each at start, and pings every second, so that `/readyz` follows the tier even
//! without traffic and a tier that is down is probed (within the breaker's backoff) until it is
//! back.

use super::{SharedTier, TierState, FAILURES_TO_SKIP};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

const PING_EVERY: Duration = Duration::from_secs(1);

pub struct Warden {
    pub tier: Arc<SharedTier>,
}

#[async_trait]
impl BackgroundService for Warden {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let tier = &self.tier;
        if let Err(e) = tier.connect() {
            tracing::error!(
                kind = super::connect::error_kind(&e),
                "shared tier: its connections cannot be made; serving without it"
            );
            return;
        }
        let n = tier.settings.connections;
        // Each connection once, and on until the breaker has seen enough to decide.
        let mut up = 0;
        for i in 0..n.max(FAILURES_TO_SKIP as usize) {
            if tier.ping(i).await {
                up += 1;
            }
            if tier.state() == TierState::Down || (i + 1 >= n && up > 0) {
                break;
            }
        }
        let url = &tier.settings.url;
        if up > 0 {
            tracing::info!(url = %url, "shared tier connected");
        } else {
            tracing::warn!(url = %url, "shared tier unreachable: serving from the local cache and limits, retrying");
        }
        let mut i = 0;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(PING_EVERY) => {}
            }
            tier.ping(i).await;
            i = i.wrapping_add(1);
        }
    }
}
