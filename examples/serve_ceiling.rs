//! The ceiling of a cache hit without pingora-proxy: the same job as `ceiling.rs` (read the
//! request body, answer a fixed offers JSON from memory) on pingora-core's `HttpServerApp`, that
//! is pingora's own HTTP/1 and HTTP/2 sessions, listener and lifecycle with none of
//! pingora-proxy's phases. `benches/load.sh` runs it beside `ceiling`, to tell what the
//! `ProxyHttp` phases cost a request. Usage: `serve_ceiling 127.0.0.1:PORT`.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

/// The daemon's allocator (mimalloc), so that the ceiling is its floor: glibc's `malloc` and `free`
/// cost about 7k instructions a request here, a quarter of the serve-ceiling's count.
#[path = "../src/alloc.rs"]
mod alloc;
#[global_allocator]
static ALLOCATOR: alloc::MiMalloc = alloc::MiMalloc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;
use std::sync::Arc;

const OFFERS: &[u8] = br#"{"offers":{"offer_for_high_loyalty":{"attributes":{"status":"high"},"batch_segments":[{"id":"1588214"}]}}}"#;

struct Ceiling;

#[async_trait]
impl HttpServerApp for Ceiling {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        while session.read_request_body().await.ok()?.is_some() {}
        session.set_keepalive((!*shutdown.borrow()).then_some(60));
        let mut resp = ResponseHeader::build(200, Some(2)).ok()?;
        resp.insert_header("Content-Type", "application/json")
            .ok()?;
        resp.insert_header("Content-Length", OFFERS.len()).ok()?;
        session.write_response_header(Box::new(resp)).await.ok()?;
        session
            .write_response_body(Bytes::from_static(OFFERS), true)
            .await
            .ok()?;
        let settings = HttpPersistentSettings::for_session(&session);
        let stream = session.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

fn main() {
    let listen = std::env::args().nth(1).unwrap_or("127.0.0.1:8091".into());
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = Service::new("serve ceiling".into(), Ceiling);
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
