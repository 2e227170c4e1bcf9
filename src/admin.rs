//! The admin listener, apart from the public one: `/metrics` (Prometheus text), `/healthz`
//! (the process is alive) and `/readyz` (the daemon can serve).

use crate::config::Config;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{header, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct Admin {
    pub config: Arc<ArcSwap<Config>>,
}

impl Admin {
    /// Reasons the daemon cannot serve; empty when ready.
    fn not_ready(&self) -> Vec<String> {
        let config = self.config.load();
        let mut reasons = Vec::new();
        if config.routes.is_empty() {
            reasons.push("no route is configured".to_string());
        }
        reasons
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
                let reasons = self.not_ready();
                let status = if reasons.is_empty() { 200 } else { 503 };
                let body = serde_json::json!({ "ready": reasons.is_empty(), "reasons": reasons });
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
