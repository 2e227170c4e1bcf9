//! Upstreams over TLS: SNI and certificate verification, against a local TLS emulator.

mod common;

use common::*;
use p13n_edge::emulator::Emulator;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// A CA, and a leaf for `localhost` signed by it; written as PEM files into `dir`.
fn certificates(dir: &std::path::Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("leaf.pem"), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join("leaf.key"), leaf_key.serialize_pem()).unwrap();
}

#[test]
fn https_upstreams_are_verified_against_the_configured_roots() {
    let dir = scratch("tls");
    certificates(&dir);
    let emu = free_port();
    let mut server = Server::new_with_opt_and_conf(
        None,
        ServerConf {
            threads: 1,
            ..ServerConf::default()
        },
    );
    server.bootstrap();
    let mut tls = Service::new(
        "tls emulator".into(),
        Emulator::new(toml::from_str(&demo_rules()).unwrap()),
    );
    let (cert, key) = (dir.join("leaf.pem"), dir.join("leaf.key"));
    tls.add_tls(
        &format!("127.0.0.1:{emu}"),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    )
    .unwrap();
    server.add_service(tls);
    let _emulator = Running::start(server, &[format!("127.0.0.1:{emu}").parse().unwrap()]);

    // Trusting the test CA, by host name: SNI and verification succeed.
    let upstream = format!("https://localhost:{emu}");
    let trusted = config_toml(
        free_port(),
        free_port(),
        &upstream,
        "[upstream]\nca_file = \"ca.pem\"",
    );
    std::fs::copy(dir.join("ca.pem"), scratch("tls_trusted").join("ca.pem")).unwrap();
    let (_proxy, addr) = start_proxy(load_config("tls_trusted", &trusted));
    let event = r#"{"td_client_id":"v","td_path":"/retail"}"#;
    let r = post_json(addr, event);
    assert_eq!(r.status, 200, "{}", r.text());

    // The same upstream with the system roots: the unknown CA is refused, nothing is sent.
    let untrusted = config_toml(free_port(), free_port(), &upstream, "");
    let (_proxy, addr) = start_proxy(load_config("tls_untrusted", &untrusted));
    post_json(addr, event).assert_error(502, 502);

    // Trusted CA, but the certificate does not name the host asked for (127.0.0.1).
    let wrong_name = format!("https://127.0.0.1:{emu}");
    let mismatched = config_toml(
        free_port(),
        free_port(),
        &wrong_name,
        "[upstream]\nca_file = \"ca.pem\"",
    );
    std::fs::copy(dir.join("ca.pem"), scratch("tls_mismatch").join("ca.pem")).unwrap();
    let (_proxy, addr) = start_proxy(load_config("tls_mismatch", &mismatched));
    post_json(addr, event).assert_error(502, 502);
}
