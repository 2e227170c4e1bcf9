//! The admin listener, apart from the public one: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/readyz` (the daemon can serve).

use crate::config::Config;
use crate::spool::Spool;
use crate::upstream::{CircuitState, UpstreamClient};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{header, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct Admin {
    pub config: Arc<ArcSwap<Config>>,
    pub client: Arc<UpstreamClient>,
    pub spool: Arc<Spool>,
    /// The shared tier, if configured: its failures are warnings, never reasons.
    pub shared: Option<Arc<crate::shared::SharedTier>>,
}

impl Admin {
    /// Reasons the daemon cannot serve (empty when ready), and warnings that do not stop it.
    fn readiness(&self) -> (Vec<String>, Vec<String>) {
        let config = self.config.load();
        let mut reasons = Vec::new();
        let mut warnings = Vec::new();
        if config.routes.is_empty() {
            reasons.push("no route is configured".to_string());
        }
        if !self.spool.writable() {
            reasons.push("the spool directory is not writable".to_string());
        }
        let circuits = self.client.circuits();
        let open: Vec<&String> = circuits
            .iter()
            .filter(|(_, state)| *state == CircuitState::Open)
            .map(|(upstream, _)| upstream)
            .collect();
        for upstream in &open {
            warnings.push(format!("circuit open for upstream {upstream}"));
        }
        for (upstream, _) in circuits
            .iter()
            .filter(|(_, s)| *s == CircuitState::HalfOpen)
        {
            warnings.push(format!(
                "circuit half-open for upstream {upstream}: the next call decides"
            ));
        }
        if !circuits.is_empty() && open.len() == circuits.len() {
            reasons.push("every upstream circuit is open".to_string());
        }
        for (route, why) in self.client.rejected_routes() {
            warnings.push(format!("route {route}: {why}"));
        }
        warnings.extend(self.spool.warnings());
        if let Some(tier) = &self.shared {
            warnings.extend(tier.warnings());
        }
        for service in &config.services {
            let lag = self.spool.lag(&service.name);
            if lag > service.cache.max_lag {
                warnings.push(format!(
                    "spool lane {}: lags, the event replay is on waited {:.1} s (cache.max_lag_ms {})",
                    service.name,
                    lag.as_secs_f64(),
                    service.cache.max_lag.as_millis()
                ));
            }
        }
        (reasons, warnings)
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, content_type, body) = match (req.method.as_str(), req.uri.path()) {
            ("GET", "/metrics") => (200, "text/plain; version=0.0.4", crate::metrics::render()),
            ("GET", "/healthz") => (200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            ("GET", "/readyz") => {
                let (reasons, warnings) = self.readiness();
                let status = if reasons.is_empty() { 200 } else { 503 };
                let body = serde_json::json!({
                    "ready": reasons.is_empty(),
                    "reasons": reasons,
                    "warnings": warnings,
                });
                (status, "application/json", body.to_string().into_bytes())
            }
            _ => (
                404,
                "application/json",
                crate::error::error_body(404, "no such admin route").to_vec(),
            ),
        };
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
