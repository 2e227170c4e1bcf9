//! The accept step, before a request exists: how long a connection may stay silent. Pingora's
//! HTTP/1 server gives every connection 60 s per read, with no setting to change it; this app
//! wraps the proxy and applies `timeouts.client_header_ms` to a new connection's first request
//! and `timeouts.client_idle_ms` between (and inside) the requests that follow. HTTP/1
//! connections are also wrapped in `slow`'s whole-header deadline, since per-read timeouts do
//! not stop a client that trickles. HTTP/2 connections (negotiated by ALPN on the TLS
//! listener) go to pingora wrapped in `slow`'s first-request deadline: pingora's h2 handshake
//! has no timeout, so `client_header_ms` bounds the preface and first request header, and
//! after that the idle timeout (as pingora's `h2_idle_timeout`) closes a connection left
//! without streams.

mod slow;

use crate::config::Config;
use crate::proxy::{Edge, Waiting};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;

pub struct PublicApp {
    pub edge: Arc<Edge>,
    pub config: Arc<ArcSwap<Config>>,
}

/// Pingora counts keepalive in whole seconds, and 0 would mean forever.
fn whole_seconds(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

#[async_trait]
impl ServerApp for PublicApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let timeouts = self.config.load().timeouts;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let stream = slow::http2(stream, timeouts.client_header);
            return self.edge.process_new(stream, shutdown).await;
        }
        let stream = slow::http1(stream, timeouts.client_header);
        let mut session = ServerSession::new_http1(stream);
        // The first request gets the header timeout; those after it the idle one.
        let mut silence = timeouts.client_header;
        let mut waiting = Waiting::New;
        loop {
            // A server shutting down lets no connection be reused.
            session.set_keepalive((!*shutdown.borrow()).then(|| whole_seconds(silence)));
            let reused = self.edge.serve_http(session, shutdown, waiting).await?;
            waiting = Waiting::Reused;
            let (stream, settings) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            silence = self.config.load().timeouts.client_idle;
        }
    }

    async fn cleanup(&self) {
        self.edge.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_seconds_round_up_and_never_mean_forever() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(10)), 10);
    }
}
