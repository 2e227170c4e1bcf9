//! What the shared tier stores, and under which key. Keys hold the whole cache key, each part
//! but the last length-prefixed, so that no two (service, route, visitor) share one: never a
//! hash, which could show one visitor another's offers. Values are a version byte, the status,
//! the fetch time (wall clock, unix milliseconds: instances share no monotonic clock), the
//! content type and the body as the upstream sent it.

use crate::cache::{CacheKey, Offers};
use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const VERSION: u8 = 1;
/// Version, status, fetch time, content type length.
pub const HEADER: usize = 1 + 2 + 8 + 2;
/// The content type length that says there is none.
const NO_CONTENT_TYPE: u16 = u16::MAX;

/// `{prefix}o:{len}:{namespace}:{len}:{service}:{len}:{route}:{visitor}`. The namespace is the
/// route's `Endpoint::fingerprint`: after its token or key changes, what was fetched under the
/// old ones is not found.
pub fn offers_key(prefix: &str, namespace: &str, key: &CacheKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        prefix.len()
            + 24
            + namespace.len()
            + key.service.len()
            + key.route.len()
            + key.visitor.len(),
    );
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b"o:");
    push_part(&mut out, namespace);
    push_part(&mut out, &key.service);
    push_part(&mut out, &key.route);
    out.extend_from_slice(key.visitor.as_bytes());
    out
}

/// `{prefix}r:{len}:{service}:{visitor}`: a visitor's rate-limit state.
pub fn limit_key(prefix: &str, service: &str, visitor: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 8 + service.len() + visitor.len());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b"r:");
    push_part(&mut out, service);
    out.extend_from_slice(visitor.as_bytes());
    out
}

fn push_part(out: &mut Vec<u8>, part: &str) {
    out.extend_from_slice(itoa::Buffer::new().format(part.len()).as_bytes());
    out.push(b':');
    out.extend_from_slice(part.as_bytes());
    out.push(b':');
}

/// The wall-clock time of `fetched`, in unix milliseconds.
fn wall_ms(fetched: Instant, now: Instant, wall: SystemTime) -> u64 {
    let at = wall
        .checked_sub(now.saturating_duration_since(fetched))
        .unwrap_or(UNIX_EPOCH);
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The stored form of `offers`; `None` if its content type is too long to store.
pub fn encode(offers: &Offers, now: Instant, wall: SystemTime) -> Option<Bytes> {
    let content_type = offers.content_type.as_ref().map(HeaderValue::as_bytes);
    let ct_len = match content_type {
        Some(ct) if ct.len() > MAX_CONTENT_TYPE || !json_type(ct) => return None,
        Some(ct) => ct.len() as u16,
        None => NO_CONTENT_TYPE,
    };
    let mut out =
        BytesMut::with_capacity(HEADER + content_type.map_or(0, <[u8]>::len) + offers.body.len());
    out.put_u8(VERSION);
    out.put_u16(offers.status);
    out.put_u64(wall_ms(offers.fetched, now, wall));
    out.put_u16(ct_len);
    out.put_slice(content_type.unwrap_or_default());
    out.put_slice(&offers.body);
    Some(out.freeze())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown version {0}")]
    Version(u8),
    #[error("too short")]
    Short,
    #[error("status {0} out of range")]
    Status(u16),
    #[error("content type not JSON")]
    ContentType,
    #[error("body over the limit or where its status allows none")]
    Body,
}

/// Longest content type stored: an upstream's is a few dozen bytes.
pub const MAX_CONTENT_TYPE: usize = 256;

/// Whether a stored content type is one an answer of offers has: JSON, with parameters.
fn json_type(ct: &[u8]) -> bool {
    let essence = ct
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || essence.eq_ignore_ascii_case(crate::vendor::VENDOR_CONTENT_TYPE.as_bytes())
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// Offers as stored, their fetch time mapped back onto this process's clock. A fetch time in
/// the future (another instance's clock ahead of ours) counts as now. Only what `encode`
/// writes is taken: a 2xx (a 204 or 205 without a body), a JSON content type or none, a body
/// of at most `max_body` bytes. Anything else (a poisoned value) is refused: it would be sent
/// to a browser as the upstream's answer.
pub fn decode(
    value: &[u8],
    max_body: usize,
    now: Instant,
    wall: SystemTime,
) -> Result<Offers, DecodeError> {
    let version = *value.first().ok_or(DecodeError::Short)?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    if value.len() < HEADER {
        return Err(DecodeError::Short);
    }
    let status = u16::from_be_bytes([value[1], value[2]]);
    if !(200..=299).contains(&status) {
        return Err(DecodeError::Status(status));
    }
    let fetched_ms = u64::from_be_bytes(value[3..11].try_into().expect("8 bytes"));
    let ct_len = u16::from_be_bytes([value[11], value[12]]);
    let (content_type, body) = if ct_len == NO_CONTENT_TYPE {
        (None, &value[HEADER..])
    } else {
        let end = HEADER + ct_len as usize;
        let ct = value.get(HEADER..end).ok_or(DecodeError::Short)?;
        if ct.len() > MAX_CONTENT_TYPE || !json_type(ct) {
            return Err(DecodeError::ContentType);
        }
        let ct = HeaderValue::from_bytes(ct).map_err(|_| DecodeError::ContentType)?;
        (Some(ct), &value[end..])
    };
    if body.len() > max_body || (matches!(status, 204 | 205) && !body.is_empty()) {
        return Err(DecodeError::Body);
    }
    let now_ms = wall
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let age = Duration::from_millis(now_ms.saturating_sub(fetched_ms));
    Ok(Offers {
        status,
        content_type,
        body: Bytes::copy_from_slice(body),
        fetched: now.checked_sub(age).unwrap_or(now),
        shared_at: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(service: &str, route: &str, visitor: &str) -> CacheKey {
        CacheKey::new(&Arc::from(service), &Arc::from(route), visitor)
    }

    /// The parts back out of a key: it is one-to-one if this always finds them.
    fn parts(prefix: &str, stored: &[u8]) -> Option<(String, String, String)> {
        let mut rest = std::str::from_utf8(stored.strip_prefix(prefix.as_bytes())?).ok()?;
        rest = rest
            .strip_prefix("o:2:ns:")
            .or_else(|| rest.strip_prefix("o:16:0123456789abcdef:"))?;
        let take = |rest: &mut &str| -> Option<String> {
            let (len, tail) = rest.split_once(':')?;
            let len: usize = len.parse().ok()?;
            let part = tail.get(..len)?.to_string();
            *rest = tail.get(len..)?.strip_prefix(':')?;
            Some(part)
        };
        let service = take(&mut rest)?;
        let route = take(&mut rest)?;
        Some((service, route, rest.to_string()))
    }

    #[test]
    fn keys_that_naive_concatenation_would_confuse_stay_apart() {
        let a = offers_key("p:", "ns", &key("shop", "1/db/t/web", "a:b"));
        let b = offers_key("p:", "ns", &key("shop", "1/db/t/web:a", "b"));
        let c = offers_key("p:", "ns", &key("shop:1/db/t/web", "", "a:b"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, b"p:o:2:ns:4:shop:10:1/db/t/web:a:b");
        assert_ne!(limit_key("p:", "ab", "c"), limit_key("p:", "a", "bc"));
        assert_eq!(limit_key("p:", "shop", "v1"), b"p:r:4:shop:v1");
    }

    proptest::proptest! {
        #[test]
        fn a_key_gives_back_exactly_its_parts(
            service in ".{0,12}", route in "[:0-9a-z/]{0,12}", visitor in "[:0-9a-z]{0,12}",
        ) {
            let stored = offers_key("p13n-edge:", "0123456789abcdef", &key(&service, &route, &visitor));
            proptest::prop_assert_eq!(parts("p13n-edge:", &stored), Some((service, route, visitor)));
        }
    }

    #[test]
    fn values_round_trip_with_their_age() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let offers = Offers {
            status: 200,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: Bytes::from_static(br#"{"offers":{}}"#),
            fetched: now.checked_sub(Duration::from_secs(7)).unwrap(),
            shared_at: 0,
        };
        let stored = encode(&offers, now, wall).unwrap();
        // Read a second later by another process.
        let later = now + Duration::from_secs(1);
        let back = decode(&stored, 1 << 20, later, wall + Duration::from_secs(1)).unwrap();
        assert_eq!((back.status, &back.body), (200, &offers.body));
        assert_eq!(back.content_type, offers.content_type);
        let age = later.duration_since(back.fetched);
        assert!(
            (Duration::from_millis(7_990)..=Duration::from_millis(8_010)).contains(&age),
            "{age:?}"
        );

        let bare = Offers {
            content_type: None,
            ..offers
        };
        let back = decode(&encode(&bare, now, wall).unwrap(), 1 << 20, now, wall).unwrap();
        assert!(back.content_type.is_none());
        // Written by a clock ahead of ours: fetched now, not in the future.
        let ahead = encode(&bare, now, wall + Duration::from_secs(60)).unwrap();
        assert_eq!(decode(&ahead, 1 << 20, now, wall).unwrap().fetched, now);
    }

    #[test]
    fn a_poisoned_value_is_refused() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let stored = |status: u16, ct: &[u8], body: &[u8]| {
            let mut v = vec![1];
            v.extend_from_slice(&status.to_be_bytes());
            v.extend_from_slice(&[0; 8]);
            v.extend_from_slice(&(ct.len() as u16).to_be_bytes());
            v.extend_from_slice(ct);
            v.extend_from_slice(body);
            v
        };
        let json = b"application/json; charset=utf-8";
        assert!(decode(&stored(200, json, b"{}"), 8, now, wall).is_ok());
        // A status nobody stored (a 1xx would desync the client's parser, a 5xx is no offer).
        for status in [101, 199, 302, 500] {
            let v = stored(status, json, b"{}");
            assert_eq!(
                decode(&v, 8, now, wall).unwrap_err(),
                DecodeError::Status(status)
            );
        }
        assert_eq!(
            decode(&stored(204, json, b"x"), 8, now, wall).unwrap_err(),
            DecodeError::Body
        );
        assert_eq!(
            decode(&stored(200, json, b"123456789"), 8, now, wall).unwrap_err(),
            DecodeError::Body
        );
        assert_eq!(
            decode(&stored(200, b"text/html", b"<script>"), 8, now, wall).unwrap_err(),
            DecodeError::ContentType
        );
        assert!(decode(
            &stored(200, b"application/problem+json", b"{}"),
            8,
            now,
            wall
        )
        .is_ok());
    }

    #[test]
    fn what_does_not_decode_is_an_error_not_a_panic() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        assert_eq!(
            decode(b"", 1 << 20, now, wall).unwrap_err(),
            DecodeError::Short
        );
        assert_eq!(
            decode(b"\x02rest", 1 << 20, now, wall).unwrap_err(),
            DecodeError::Version(2)
        );
        assert_eq!(
            decode(b"\x01\x00", 1 << 20, now, wall).unwrap_err(),
            DecodeError::Short
        );
        let mut v = vec![1, 0x03, 0xe8];
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(
            decode(&v, 1 << 20, now, wall).unwrap_err(),
            DecodeError::Status(1000)
        );
        let mut v = vec![1, 0, 200];
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&[0, 9, b'x']);
        assert_eq!(
            decode(&v, 1 << 20, now, wall).unwrap_err(),
            DecodeError::Short
        );
        let mut v = vec![1, 0, 200];
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&[0, 1, b'\n']);
        assert_eq!(
            decode(&v, 1 << 20, now, wall).unwrap_err(),
            DecodeError::ContentType
        );
    }
}
