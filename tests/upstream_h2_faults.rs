//! An HTTP/2 upstream (`upstream.protocol = "h2"`) that misbehaves: it closes each connection
//! after one answer, its connections go silent, or a graceful GOAWAY accepts only some of the
//! streams in flight. No call fails for it, and none is processed twice.
#![allow(clippy::unwrap_used)] // test and measurement code: a failed unwrap is a failed run

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An HTTP/2 upstream that answers one request per connection and then closes it (GOAWAY),
/// counting the connections it accepted.
fn one_request_per_connection() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    if let Some(Ok((request, mut respond))) = conn.accept().await {
                        drop(request);
                        let answer = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/json")
                            .body(())
                            .unwrap();
                        let mut body = respond.send_response(answer, false).unwrap();
                        body.send_data(bytes::Bytes::from_static(br#"{"offers":{}}"#), true)
                            .unwrap();
                    }
                    conn.graceful_shutdown();
                    while conn.accept().await.is_some() {}
                });
            }
        });
    });
    (addr, accepted)
}

#[test]
fn an_http2_connection_the_upstream_closed_is_replaced_without_a_failed_call() {
    let (upstream, accepted) = one_request_per_connection();
    let proxy = Setup::new("h2_closed")
        .upstream(format!("http://{upstream}"))
        .set("upstream.protocol", "h2")
        .start_proxy();
    let addr = proxy.addr;
    for n in 0..5 {
        let r = to(addr).event(
            PAGEVIEWS,
            &format!(r#"{{"td_client_id":"c{n}","td_path":"/x"}}"#),
        );
        assert_eq!(r.status, 200, "call {n}: {}", r.text());
        assert_eq!(r.text(), r#"{"offers":{}}"#);
        // Sometimes the next call starts before the GOAWAY arrives, sometimes after.
        if n % 2 == 1 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 5);
}

#[test]
fn an_http2_connection_gone_silent_is_not_used_after_a_call_times_out_on_it() {
    let emulator = Emulator::start(&demo_rules());
    let relay = Relay::start(emulator.addr);
    let proxy = Setup::new("h2_silent")
        .upstream(format!("http://{}", relay.addr))
        .set("upstream.protocol", "h2")
        .set("timeouts.upstream_ms", 300)
        .start_proxy();
    let addr = proxy.addr;
    let event = |n: u32| format!(r#"{{"td_client_id":"s{n}","td_path":"/x"}}"#);
    assert_eq!(to(addr).event(PAGEVIEWS, &event(0)).status, 200);
    relay.freeze();
    // The first call after the silence times out on the old connection...
    to(addr).event(PAGEVIEWS, &event(1)).assert_error(504, 504);
    // ...and the next ones go out on a new one.
    for n in 2..5 {
        let r = to(addr).event(PAGEVIEWS, &event(n));
        assert_eq!(r.status, 200, "call {n}: {}", r.text());
    }
    assert_eq!(relay.opened.load(Ordering::SeqCst), 2);
}

/// Each answer's connection (from 0) and stream, in the order sent.
type Answered = Arc<std::sync::Mutex<Vec<(usize, u32)>>>;

/// One HTTP/2 frame: its type, flags, stream and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// `:status: 200` (HPACK static index 8) and `content-type: application/json` (a literal on
/// static name 31), then the body, ending the stream.
fn h2_answer(stream: u32) -> Vec<u8> {
    let mut head = vec![0x88, 0x0f, 0x10, 0x10];
    head.extend_from_slice(b"application/json");
    let mut frames = h2_frame(0x1, 0x4, stream, &head);
    frames.extend(h2_frame(0x0, 0x1, stream, br#"{"offers":{}}"#));
    frames
}

/// An HTTP/2 upstream speaking raw frames. On its first connection it waits for two whole
/// requests, then sends GOAWAY (NO_ERROR) naming only the first as accepted, answers that one
/// and closes: the second was never processed. Later connections answer every request. Returns
/// its address and each answer's connection (from 0) and stream.
fn goaway_after_first_of_two() -> (SocketAddr, Answered) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = answered.clone();
    std::thread::spawn(move || {
        for (n, tcp) in listener.incoming().enumerate() {
            let Ok(mut tcp) = tcp else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut preface = [0u8; 24];
                tcp.read_exact(&mut preface).unwrap();
                tcp.write_all(&h2_frame(0x4, 0, 0, &[])).unwrap();
                let mut whole = Vec::new();
                let answer = |tcp: &mut std::net::TcpStream, stream: u32| {
                    tcp.write_all(&h2_answer(stream)).unwrap();
                    log.lock().unwrap().push((n, stream));
                };
                loop {
                    let mut head = [0u8; 9];
                    if tcp.read_exact(&mut head).is_err() {
                        break;
                    }
                    let len = usize::from(head[0]) << 16
                        | usize::from(head[1]) << 8
                        | usize::from(head[2]);
                    let (kind, flags) = (head[3], head[4]);
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    let mut payload = vec![0u8; len];
                    tcp.read_exact(&mut payload).unwrap();
                    match kind {
                        // SETTINGS, not an ACK: acknowledged.
                        0x4 if flags & 0x1 == 0 => {
                            tcp.write_all(&h2_frame(0x4, 0x1, 0, &[])).unwrap()
                        }
                        // PING: answered.
                        0x6 if flags & 0x1 == 0 => {
                            tcp.write_all(&h2_frame(0x6, 0x1, 0, &payload)).unwrap()
                        }
                        // DATA or HEADERS ending the stream: a whole request.
                        0x0 | 0x1 if flags & 0x1 != 0 => whole.push(stream),
                        _ => {}
                    }
                    if n == 0 && whole.len() == 2 {
                        let mut goaway = whole[0].to_be_bytes().to_vec();
                        goaway.extend_from_slice(&0u32.to_be_bytes());
                        tcp.write_all(&h2_frame(0x7, 0, 0, &goaway)).unwrap();
                        answer(&mut tcp, whole[0]);
                        // Closed once the client has read the answer and the GOAWAY.
                        let _ = tcp.shutdown(std::net::Shutdown::Write);
                        let _ = tcp.read_to_end(&mut Vec::new());
                        break;
                    }
                    if n > 0 {
                        for stream in whole.drain(..) {
                            answer(&mut tcp, stream);
                        }
                    }
                }
            });
        }
    });
    (addr, answered)
}

#[test]
fn a_call_past_the_last_stream_a_goaway_accepted_goes_again_on_a_new_connection() {
    let (upstream, answered) = goaway_after_first_of_two();
    let proxy = Setup::new("h2_goaway")
        .upstream(format!("http://{upstream}"))
        .set("upstream.protocol", "h2")
        .set("service.cache.mode", "off")
        .start_proxy();
    // Two calls at once: two streams on the first connection, of which the upstream takes one.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..2)
            .map(|n| {
                let addr = proxy.addr;
                s.spawn(move || {
                    let body = format!(r#"{{"td_client_id":"g{n}","td_path":"/x"}}"#);
                    to(addr).event(PAGEVIEWS, &body).status
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let answered = answered.lock().unwrap().clone();
    assert_eq!(statuses, [200, 200], "{answered:?}");
    // Each event was processed once: one on the first connection, the other on the next.
    let on: Vec<usize> = answered.iter().map(|a| a.0).collect();
    assert_eq!(on, [0, 1], "{answered:?}");
}
