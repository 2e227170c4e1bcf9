//! `p13n-edge probe`: one GET of the admin listener's `/healthz` or `/readyz` over plain
//! HTTP/1.1, for container health checks in images without curl. No HTTP client crate: the
//! admin listener is ours, on loopback or a pod's network, and one request with
//! `Connection: close` is all a probe needs.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The most of an answer a probe reads: `/readyz` is a few hundred bytes.
const MAX_ANSWER: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0} ms")]
    TimedOut(u128),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection failed: {0}")]
    Io(std::io::Error),
    #[error("not an HTTP answer")]
    BadAnswer,
    #[error("answered {status}{}", reasons_text(.reasons))]
    Status { status: u16, reasons: Vec<String> },
}

fn reasons_text(reasons: &[String]) -> String {
    if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join("; "))
    }
}

/// Where a probe connects for a listener bound to `listen`: its own address, or loopback when
/// it is bound to every address (`0.0.0.0`, `::`), as in a container.
pub fn target(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

/// GET `path` at `addr`; `Ok` on a 200, within `timeout` from connect to the last byte.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), ProbeError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || ProbeError::TimedOut(timeout.as_millis());
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let io = |e: std::io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => timed_out(),
        _ => ProbeError::Io(e),
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, left().ok_or_else(timed_out)?).map_err(|e| {
            match e.kind() {
                ErrorKind::TimedOut => timed_out(),
                _ => ProbeError::Connect(e),
            }
        })?;
    stream.set_write_timeout(left()).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: p13n-edge-probe\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(done) = parse(&answer)? {
            return done;
        }
        if answer.len() >= MAX_ANSWER {
            return Err(ProbeError::BadAnswer);
        }
        stream
            .set_read_timeout(Some(left().ok_or_else(timed_out)?))
            .map_err(io)?;
        match stream.read(&mut chunk).map_err(io)? {
            0 => return parse_at_end(&answer),
            n => answer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The verdict once the head and `Content-Length` bytes of body are in; `None` to read on.
fn parse(answer: &[u8]) -> Result<Option<Result<(), ProbeError>>, ProbeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ProbeError::BadAnswer),
    };
    let status = response.code.ok_or(ProbeError::BadAnswer)?;
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let body = &answer[head_len..];
    match length {
        Some(length) if body.len() >= length => Ok(Some(verdict(status, &body[..length]))),
        _ => Ok(None),
    }
}

/// The connection closed: whatever came is the whole answer.
fn parse_at_end(answer: &[u8]) -> Result<(), ProbeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(answer) {
        Ok(httparse::Status::Complete(n)) => {
            verdict(response.code.ok_or(ProbeError::BadAnswer)?, &answer[n..])
        }
        _ => Err(ProbeError::BadAnswer),
    }
}

/// 200 is healthy. Otherwise the `reasons` of a `/readyz` answer, if it has them, on one line
/// and with anything shaped like a key or a token blanked (none should be there).
fn verdict(status: u16, body: &[u8]) -> Result<(), ProbeError> {
    if status == 200 {
        return Ok(());
    }
    let reasons = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("reasons")?.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r.as_str())
        .map(|r| {
            let line: String = r
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            crate::config::redact_text(&line, &[])
        })
        .collect();
    Err(ProbeError::Status { status, reasons })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listeners_are_probed_on_loopback() {
        assert_eq!(
            target("0.0.0.0:9090".parse().unwrap()),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(
            target("[::]:9090".parse().unwrap()),
            "[::1]:9090".parse().unwrap()
        );
        assert_eq!(
            target("10.0.0.5:9090".parse().unwrap()),
            "10.0.0.5:9090".parse().unwrap()
        );
    }

    #[test]
    fn answers_are_read_to_their_length_or_their_end() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";
        assert!(matches!(parse(ok), Ok(Some(Ok(())))));
        assert!(matches!(parse(&ok[..30]), Ok(None)));
        let not_ready = b"HTTP/1.1 503 Service Unavailable\r\n\r\n{\"ready\":false,\"reasons\":[\"every upstream circuit is open\",\"x\\ny\"]}";
        let Err(ProbeError::Status { status, reasons }) = parse_at_end(not_ready) else {
            panic!("a 503 is a failure");
        };
        assert_eq!(status, 503);
        assert_eq!(reasons, ["every upstream circuit is open", "x y"]);
        assert!(matches!(
            parse(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(ProbeError::BadAnswer)
        ));
    }

    #[test]
    fn reasons_never_carry_a_token_shaped_text() {
        let body = br#"{"reasons":["token 1/1/0123456789abcdef0123456789abcdef refused"]}"#;
        let message = verdict(503, body).unwrap_err().to_string();
        assert!(
            !message.contains("0123456789abcdef0123456789abcdef"),
            "{message}"
        );
    }
}
