//! The ceiling of a cache hit for the load benchmark: a bare pingora 0.9 proxy that reads the
//! request body and answers a fixed offers JSON from memory in `request_filter`, with nothing
//! else (no routing, guard, validation, cache or spool). `benches/load.sh` runs it beside
//! p13n-edge. Usage: `ceiling 127.0.0.1:PORT`.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

/// The daemon's allocator (mimalloc), so that the ceiling is its floor: glibc's `malloc` and `free`
/// cost about 7k instructions a request here, a quarter of the serve-ceiling's count.
#[path = "../src/alloc.rs"]
mod alloc;
#[global_allocator]
static ALLOCATOR: alloc::MiMalloc = alloc::MiMalloc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

const OFFERS: &[u8] = br#"{"offers":{"offer_for_high_loyalty":{"attributes":{"status":"high"},"batch_segments":[{"id":"1588214"}]}}}"#;

struct Ceiling;

#[async_trait]
impl ProxyHttp for Ceiling {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> Result<bool> {
        while session.read_request_body().await?.is_some() {}
        let mut resp = ResponseHeader::build(200, Some(2))?;
        resp.insert_header("Content-Type", "application/json")?;
        resp.insert_header("Content-Length", OFFERS.len())?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from_static(OFFERS)), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(InternalError, "the ceiling never forwards")
    }
}

fn main() {
    let listen = std::env::args().nth(1).unwrap_or("127.0.0.1:8090".into());
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, Ceiling);
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
