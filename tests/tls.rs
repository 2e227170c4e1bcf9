//! TLS on both sides: upstreams verified (SNI, roots) against a local TLS emulator, and the
//! public TLS listener (HTTP/1.1 and HTTP/2, certificate swapped by reload).
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use pingora::services::listening::Service;
use pingora::tls::{ClientConfig, RootCertStore, ServerName, TlsConnector};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA, and a leaf for `localhost` signed by it; written as PEM files into `dir`.
fn certificates(dir: &std::path::Path) {
    certificates_named(dir, "ca.pem", "leaf.pem", "leaf.key");
}

fn certificates_named(dir: &std::path::Path, ca_file: &str, leaf_file: &str, key_file: &str) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join(ca_file), ca_cert.pem()).unwrap();
    std::fs::write(dir.join(leaf_file), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join(key_file), leaf_key.serialize_pem()).unwrap();
}

#[test]
fn https_upstreams_are_verified_against_the_configured_roots() {
    let dir = scratch("tls");
    certificates(&dir);
    let emulator = tls_emulator(&dir, false);

    // Trusting the test CA, by host name: SNI and verification succeed.
    let upstream = format!("https://localhost:{}", emulator.port);
    let trusted = trusting(&dir, Setup::new("tls_trusted").upstream(&upstream)).start_proxy();
    let event = r#"{"td_client_id":"v","td_path":"/retail"}"#;
    let r = to(trusted.addr).event(PAGEVIEWS, event);
    assert_eq!(r.status, 200, "{}", r.text());

    // The same upstream with the system roots: the unknown CA is refused, nothing is sent.
    let untrusted = Setup::new("tls_untrusted")
        .upstream(&upstream)
        .start_proxy();
    to(untrusted.addr)
        .event(PAGEVIEWS, event)
        .assert_error(502, 502);

    // Trusted CA, but the certificate does not name the host asked for (127.0.0.1).
    let wrong_name = format!("https://127.0.0.1:{}", emulator.port);
    let mismatched = trusting(&dir, Setup::new("tls_mismatch").upstream(wrong_name)).start_proxy();
    to(mismatched.addr)
        .event(PAGEVIEWS, event)
        .assert_error(502, 502);
}

/// `setup` trusting the test CA of `dir` for its upstream (`[upstream] ca_file`, a copy of the
/// CA beside its config).
fn trusting(dir: &std::path::Path, setup: Setup) -> Setup {
    std::fs::copy(dir.join("ca.pem"), setup.dir().join("ca.pem")).unwrap();
    setup.set("upstream.ca_file", "ca.pem")
}

/// An emulator on TLS, on `port` of 127.0.0.1; stopped on drop.
struct TlsEmulator {
    port: u16,
    _running: Running,
}

/// An emulator on TLS (certificate for `localhost` from `dir`), offering HTTP/2 by ALPN or not.
fn tls_emulator(dir: &std::path::Path, h2: bool) -> TlsEmulator {
    let port = free_port();
    let mut server = quick_server();
    let mut service = Service::new(
        "tls emulator".into(),
        p13n_edge::emulator::Emulator::new(toml::from_str(&demo_rules()).unwrap()),
    );
    let (cert, key) = (dir.join("leaf.pem"), dir.join("leaf.key"));
    let mut settings = pingora::listeners::tls::TlsSettings::intermediate(
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    )
    .unwrap();
    if h2 {
        settings.enable_h2();
    }
    service.add_tls_with_settings(&format!("127.0.0.1:{port}"), None, settings);
    server.add_service(service);
    let running = Running::start(server, &[SocketAddr::from(([127, 0, 0, 1], port))]);
    TlsEmulator {
        port,
        _running: running,
    }
}

#[test]
fn an_h2_upstream_over_tls_is_agreed_by_alpn_and_one_without_h2_is_refused() {
    let dir = scratch("tls_h2");
    certificates(&dir);
    let event = r#"{"td_client_id":"v","td_path":"/retail"}"#;
    for (name, offers_h2, status) in [("tls_h2_yes", true, 200), ("tls_h2_no", false, 502)] {
        let emulator = tls_emulator(&dir, offers_h2);
        let upstream = format!("https://localhost:{}", emulator.port);
        let proxy = trusting(&dir, Setup::new(name).upstream(upstream))
            .set("upstream.protocol", "h2")
            .start_proxy();
        let r = to(proxy.addr).event(PAGEVIEWS, event);
        assert_eq!(r.status, status, "{name}: {}", r.text());
        if status == 502 {
            r.assert_error(502, 502);
        }
    }
}

/// A TLS client for `localhost` trusting only the CA in `ca`, offering `alpn`.
fn connector(ca: &std::path::Path, alpn: &[&[u8]]) -> TlsConnector {
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    pingora::tls::load_ca_file_into_store(ca, &mut roots).unwrap();
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

async fn tls_stream(
    addr: SocketAddr,
    ca: &std::path::Path,
    alpn: &[&[u8]],
) -> std::io::Result<pingora::tls::ClientTlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector(ca, alpn).connect(name, tcp).await
}

/// Matches the demo rules' `offer_for_women` on the first event.
const EVENT: &str = r#"{"td_client_id":"tls-visitor","product_category":"women"}"#;

async fn post_http1(addr: SocketAddr, ca: &std::path::Path) -> std::io::Result<String> {
    let mut tls = tls_stream(addr, ca, &[b"http/1.1"]).await?;
    let raw = format!(
        "POST /public/demo_db/clicks HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{EVENT}",
        EVENT.len()
    );
    tls.write_all(raw.as_bytes()).await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    Ok(answer)
}

/// An h2 client over TLS (offering h2 and http/1.1), and the protocol the server chose.
async fn h2_client(
    addr: SocketAddr,
    ca: &std::path::Path,
) -> (h2::client::SendRequest<bytes::Bytes>, Option<Vec<u8>>) {
    let tls = tls_stream(addr, ca, &[b"h2", b"http/1.1"]).await.unwrap();
    let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    (client, alpn)
}

/// POST the event over `client`: the answer's status and body.
async fn h2_post(client: &mut h2::client::SendRequest<bytes::Bytes>) -> (u16, Vec<u8>) {
    let (head, data) = h2_exchange(client).await;
    (head.status.as_u16(), data)
}

/// POST the event over `client`: the answer's head and body.
async fn h2_exchange(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
) -> (http::response::Parts, Vec<u8>) {
    let request = http::Request::post("https://localhost/public/demo_db/clicks")
        .header("content-type", "application/vnd.treasuredata.v1+json")
        .header("origin", "https://shop.example")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(EVENT.as_bytes()), true)
        .unwrap();
    let (head, mut stream) = response.await.unwrap().into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = stream.data().await {
        let chunk = chunk.unwrap();
        stream.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    (head, data)
}

async fn post_http2(addr: SocketAddr, ca: &std::path::Path) -> (u16, Vec<u8>, Option<Vec<u8>>) {
    let (mut client, alpn) = h2_client(addr, ca).await;
    let (status, data) = h2_post(&mut client).await;
    (status, data, alpn)
}

/// A stack on `setup` whose public TLS listener serves a certificate for `localhost` (`edge.pem`,
/// signed by the CA in `ca.pem`) from the scratch directory.
struct TlsEdge {
    stack: Stack,
    /// The TLS listener.
    tls: SocketAddr,
    /// The scratch directory, where the certificates are.
    dir: PathBuf,
}

impl TlsEdge {
    fn start(setup: Setup) -> TlsEdge {
        let dir = setup.dir();
        certificates_named(&dir, "ca.pem", "edge.pem", "edge.key");
        let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let stack = setup
            .set("server.tls.listen", tls.to_string())
            .set("server.tls.cert_file", "edge.pem")
            .set("server.tls.key_file", "edge.key")
            .start();
        assert!(
            eventually(SECONDS_10, || TcpStream::connect(tls).is_ok()),
            "the TLS listener {tls} never listened"
        );
        TlsEdge { stack, tls, dir }
    }

    /// The CA that signed the listener's first certificate.
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

#[test]
fn the_public_tls_listener_serves_http1_and_h2_and_reload_swaps_its_certificate() {
    let edge = TlsEdge::start(Setup::new("tls_listener"));
    let (tls_addr, dir) = (edge.tls, &edge.dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = edge.ca();

    let answer = rt.block_on(post_http1(tls_addr, &ca)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("offer_for_women"), "{answer}");

    let (status, body, alpn) = rt.block_on(post_http2(tls_addr, &ca));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let offers: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(offers["offers"]["offer_for_women"].is_object(), "{offers}");

    // A new certificate from another CA, swapped in by reload: new handshakes present it.
    certificates_named(dir, "ca2.pem", "edge.pem", "edge.key");
    edge.stack.reload(|same| same);
    assert!(rt.block_on(post_http1(tls_addr, &ca)).is_err());
    let answer = rt
        .block_on(post_http1(tls_addr, &dir.join("ca2.pem")))
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A key that does not match the certificate is refused, and the running pair stays.
    let other = KeyPair::generate().unwrap();
    std::fs::write(dir.join("edge.key"), other.serialize_pem()).unwrap();
    let stack = &edge.stack;
    let err = p13n_edge::config::reload(
        &stack.config_path,
        &stack.handles.config,
        &stack.handles.cache,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("server.tls"), "{err}");
    let answer = rt
        .block_on(post_http1(tls_addr, &dir.join("ca2.pem")))
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Seconds until the server closes `stream` (end of stream or an error), reading whatever it
/// sends; `None` if it is still open after 5 s.
async fn seconds_until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<f64> {
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let closed = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), closed)
        .await
        .ok()
        .map(|()| start.elapsed().as_secs_f64())
}

fn slow_headers_counted(admin: SocketAddr) -> u64 {
    to(admin).counter("p13n_edge_slow_headers_total")
}

#[test]
fn an_h2_connection_gets_the_header_timeout_until_its_first_request_and_no_more() {
    let edge = TlsEdge::start(
        Setup::new("tls_h2_slow")
            .set("timeouts.client_header_ms", 300)
            .set("timeouts.client_idle_ms", 5000),
    );
    let (tls_addr, admin) = (edge.tls, edge.stack.admin);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = edge.ca();
    let counted = slow_headers_counted(admin);

    // After TLS and ALPN h2: nothing, half the preface, or the preface and SETTINGS only.
    let mut settings = H2_PREFACE.to_vec();
    settings.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    for (what, sent) in [
        ("nothing", &[][..]),
        ("half a preface", &H2_PREFACE[..12]),
        ("no request", &settings[..]),
    ] {
        let waited = rt.block_on(async {
            let mut tls = tls_stream(tls_addr, &ca, &[b"h2"]).await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            tls.write_all(sent).await.unwrap();
            seconds_until_closed(&mut tls).await
        });
        assert!(
            waited.is_some_and(|w| (0.25..2.0).contains(&w)),
            "{what}: closed after {waited:?} s"
        );
    }
    assert!(slow_headers_counted(admin) >= counted + 3, "not counted");

    // A client that asks in time keeps its connection past the header timeout.
    rt.block_on(async {
        let (mut client, alpn) = h2_client(tls_addr, &ca).await;
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        for _ in 0..2 {
            let (status, body) = h2_post(&mut client).await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            // Idle past the 300 ms header timeout between requests: the case tested.
            tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        }
        let (status, _) = h2_post(&mut client).await;
        assert_eq!(status, 200);
    });
}

#[test]
fn a_signed_visitor_cookie_is_secure_on_the_tls_listener_only() {
    let setup = Setup::new("tls_identity");
    std::fs::write(
        setup.dir().join("visitor.secret"),
        "a-secret-of-more-than-32-bytes-for-tls",
    )
    .unwrap();
    let edge = TlsEdge::start(
        setup
            .service("identity.mode", "signed-cookie")
            .service("identity.secret_file", "visitor.secret"),
    );
    let (tls_addr, dir, plain) = (edge.tls, &edge.dir, edge.stack.proxy);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let answer = rt
        .block_on(post_http1(tls_addr, &dir.join("ca.pem")))
        .unwrap();
    let cookie = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(
        cookie.contains("; HttpOnly; Secure; SameSite=Lax"),
        "{cookie}"
    );
    // Over h2 too.
    let cookie = rt.block_on(async {
        let (mut client, _) = h2_client(tls_addr, &dir.join("ca.pem")).await;
        let (head, _) = h2_exchange(&mut client).await;
        head.headers["set-cookie"].to_str().unwrap().to_string()
    });
    assert!(
        cookie.contains("; HttpOnly; Secure; SameSite=Lax"),
        "{cookie}"
    );
    let plain_answer = to(plain)
        .post("/public/demo_db/clicks")
        .headers(&[("Content-Type", "text/plain")])
        .body(EVENT.as_bytes())
        .send();
    let cookie = plain_answer.header("set-cookie").unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
}
