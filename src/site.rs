//! The demo site that `p13n-edge demo` serves on http://localhost:3000: a shop page that asks
//! the proxy for offers with `fetch` as the vendor SDK does, and a page that uses td-js-sdk
//! itself against the TLS listener. Not part of the request path; demos and browser tests only.

use async_trait::async_trait;
use http::{header, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct DemoSite {
    index: String,
    sdk_page: String,
    /// td-js-sdk's `dist/td.min.js`, when given.
    sdk_script: Option<Vec<u8>>,
}

impl DemoSite {
    /// `proxy` is the base URL pages call (`http://localhost:8080`); `tls_endpoint` the TLS
    /// listener as the SDK's `endpoint` (`localhost:8443`).
    pub fn new(proxy: &str, tls_endpoint: &str, sdk_script: Option<Vec<u8>>) -> Self {
        let fill = |page: &str| {
            page.replace("__PROXY__", proxy)
                .replace("__TLS_ENDPOINT__", tls_endpoint)
        };
        DemoSite {
            index: fill(include_str!("../site/index.html")),
            sdk_page: fill(include_str!("../site/sdk.html")),
            sdk_script,
        }
    }
}

#[async_trait]
impl ServeHttp for DemoSite {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let html = "text/html; charset=utf-8";
        let (status, content_type, body) = match (req.method.as_str(), req.uri.path()) {
            ("GET", "/" | "/index.html") => (200, html, self.index.as_bytes().to_vec()),
            ("GET", "/sdk.html") => (200, html, self.sdk_page.as_bytes().to_vec()),
            ("GET", "/td-js-sdk.js") => match &self.sdk_script {
                Some(script) => (200, "text/javascript", script.clone()),
                None => (404, "text/plain", b"start the demo with --sdk".to_vec()),
            },
            _ => (404, "text/plain", b"not found".to_vec()),
        };
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::CACHE_CONTROL, "no-store")
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
