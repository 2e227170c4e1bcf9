//! Micro-benchmarks of the per-request work the proxy does before and around the upstream call.
//! Run: `cargo bench --bench request_path`.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use p13n_edge::config::Config;
use p13n_edge::event::{content_type_ok, identify};
use p13n_edge::upstream::{request_bytes, Call};

const EVENT: &[u8] = br#"{"td_client_id":"42a508e2-d9b1-4baa-9eb2-6c3fb8bd5e16","td_url":"https://example.com/retail","td_path":"/retail"}"#;

fn config() -> Config {
    let dir = std::env::temp_dir().join(format!("p13n-edge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("key"),
        "1/0123456789abcdef0123456789abcdef01234567",
    )
    .unwrap();
    let toml = r#"
[[service]]
name = "shop"
base_url = "http://127.0.0.1:8081"
account_id = "1"
instance_id = "1"
api_key_file = "key"
[service.tokens]
web = "1/1/00000000000000000000000000000001"
[[service.route]]
database = "demo_db"
table = "pageviews"
token = "web"
"#;
    Config::from_toml(toml, &dir).unwrap()
}

fn benches(c: &mut Criterion) {
    let ids = vec!["td_client_id".to_string(), "email".to_string()];
    c.bench_function("identify a 110-byte event", |b| {
        b.iter(|| identify(black_box(EVENT), &ids).unwrap())
    });
    c.bench_function("content type check", |b| {
        b.iter(|| content_type_ok(black_box(Some(b"application/json; charset=utf-8"))))
    });
    let config = config();
    let route = config.route("/demo_db/pageviews").unwrap().clone();
    c.bench_function("route lookup", |b| {
        b.iter(|| config.route(black_box("/demo_db/pageviews")).is_some())
    });
    let body = bytes::Bytes::from_static(EVENT);
    c.bench_function("build the upstream request", |b| {
        b.iter(|| {
            let call = Call {
                endpoint: route.endpoint.clone(),
                body: body.clone(),
                client: Default::default(),
                replay: false,
            };
            request_bytes(&call)
        })
    });
}

criterion_group!(request_path, benches);
criterion_main!(request_path);
