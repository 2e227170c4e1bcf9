//! One family of requests: `to(addr)` names a listener, `.get(path)`, `.post(path)` or
//! `.method(m, path)` start a request, `.header`, `.json` and `.body` add to it, and `.send()`
//! (or `.try_send()`, when failing to answer is what is tested) reads the one answer. `.raw`
//! sends bytes exactly as given. Every request is HTTP/1.1 on a connection of its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The route every test config has: `demo_db/pageviews`.
pub const PAGEVIEWS: &str = "/demo_db/pageviews";

/// POST a `/retail` page view of `visitor` to `addr`'s `demo_db/pageviews`.
pub fn post_view(addr: SocketAddr, visitor: &str) -> Response {
    to(addr).event(
        PAGEVIEWS,
        &format!(r#"{{"td_client_id":"{visitor}","td_path":"/retail"}}"#),
    )
}

/// A listener to send requests to.
#[derive(Clone, Copy)]
pub struct Target(pub SocketAddr);

pub fn to(addr: SocketAddr) -> Target {
    Target(addr)
}

impl Target {
    pub fn get(self, path: &str) -> Request {
        self.method("GET", path)
    }

    pub fn post(self, path: &str) -> Request {
        self.method("POST", path)
    }

    pub fn method(self, method: &str, path: &str) -> Request {
        Request {
            addr: self.0,
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// POST `body` as JSON to `path`: the event most tests send.
    pub fn event(self, path: &str, body: &str) -> Response {
        self.post(path).json(body).send()
    }

    /// Send `raw` bytes exactly as given and read one answer.
    pub fn raw(self, raw: &[u8]) -> Response {
        self.try_raw(raw).expect("an answer")
    }

    /// `raw`, or `None` when the connection fails or closes without a whole answer.
    pub fn try_raw(self, raw: &[u8]) -> Option<Response> {
        exchange(self.0, raw, false)
    }

    /// The text of `GET /metrics` on an admin listener.
    pub fn metrics(self) -> String {
        self.get("/metrics").send().text()
    }

    /// An unlabelled counter or gauge from a scrape of this admin listener.
    pub fn counter(self, name: &str) -> u64 {
        let prefix = format!("{name} ");
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} is exported"))
    }
}

/// A request being put together; Host and Content-Length are added when it is sent.
pub struct Request {
    addr: SocketAddr,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn headers(self, headers: &[(&str, &str)]) -> Request {
        headers.iter().fold(self, |r, (k, v)| r.header(k, v))
    }

    /// A JSON body, with its content type.
    pub fn json(self, body: &str) -> Request {
        self.header("Content-Type", "application/json")
            .body(body.as_bytes())
    }

    pub fn body(mut self, body: &[u8]) -> Request {
        self.body = body.to_vec();
        self
    }

    pub fn send(self) -> Response {
        self.try_send().expect("an answer")
    }

    /// `None` when the connection fails or closes without a whole answer.
    pub fn try_send(self) -> Option<Response> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.method,
            self.path,
            self.addr,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(&self.body);
        exchange(self.addr, &raw, self.method == "HEAD")
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// Assert the vendor's error shape with this status and code.
    pub fn assert_error(&self, status: u16, code: u64) {
        assert_eq!(self.status, status, "{}\n{}", self.head, self.text());
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/json")
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
}

fn exchange(addr: SocketAddr, raw: &[u8], head_only: bool) -> Option<Response> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(raw);
    let msg = read_head_and_body(&mut stream, head_only)?;
    let split = msg.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&msg[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Response {
        status,
        head,
        body: msg[split + 4..].to_vec(),
    })
}

/// Read one HTTP/1.1 message delimited by Content-Length (or none).
pub fn read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    read_head_and_body(stream, false)
}

fn read_head_and_body(stream: &mut TcpStream, head_only: bool) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let len = if head_only { 0 } else { len };
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.truncate(end + 4 + len);
            return Some(buf);
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
