//! Where an HTTP/1 request header ends, seen one read at a time, by the same rules as the
//! parser pingora uses (httparse, `Request::parse`): empty lines before the request line are
//! skipped, a line ends at LF with or without a CR before it, and the header ends at the first
//! empty line after a line with something on it. A CR not followed by LF is an ordinary byte
//! here (httparse refuses it in a header, and pingora only percent-encodes it inside the
//! request target), so it can neither end a header early nor hide its end.
//!
//! The scanner must never see an end before pingora's parser does: that would switch the
//! deadline off while pingora still waits for header bytes, and a client could then trickle
//! the rest for as long as it liked (blank lines before the request line once did that).

/// How far into a header the bytes read so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Header {
    /// Nothing yet but empty lines (which httparse skips), or nothing at all.
    #[default]
    Leading,
    /// After a CR among the leading empty lines.
    LeadingCr,
    /// Inside a line with content (the request line or a field).
    InLine,
    /// Just after a line with content ended: an empty line now ends the header.
    LineStart,
    /// After a CR at the start of a line.
    LineStartCr,
}

impl Header {
    /// Feed `bytes`; `Err(n)` when the header ends after `n` of them, else the state to go on
    /// from.
    pub(super) fn scan(mut self, bytes: &[u8]) -> Result<Header, usize> {
        let mut i = 0;
        while i < bytes.len() {
            // Inside a line only LF matters: jump to it (most of a header's bytes are here).
            if self == Header::InLine {
                match memchr::memchr(b'\n', &bytes[i..]) {
                    Some(lf) => i += lf,
                    None => return Ok(Header::InLine),
                }
            }
            let b = bytes[i];
            self = match (self, b) {
                (Header::Leading | Header::LeadingCr, b'\n') => Header::Leading,
                (Header::Leading, b'\r') => Header::LeadingCr,
                (Header::LineStart | Header::LineStartCr, b'\n') => return Err(i + 1),
                (Header::LineStart, b'\r') => Header::LineStartCr,
                (_, b'\n') => Header::LineStart,
                _ => Header::InLine,
            };
            i += 1;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::Header;
    use proptest::prelude::*;

    /// Where the header ends, if it does, scanning `chunks` one after another.
    fn end(chunks: &[&[u8]]) -> Option<usize> {
        super::super::end_of::<Header>(chunks)
    }

    #[test]
    fn the_header_ends_at_its_first_empty_line_across_reads() {
        assert_eq!(end(&[b"POST / HTTP/1.1\r\nHost: x\r\n"]), None);
        assert_eq!(end(&[b"POST / HTTP/1.1\r\nHost: x\r\n\r\n{}"]), Some(28));
        assert_eq!(
            end(&[b"POST / HTTP/1.1\r\nA: b\r", b"\n\r", b"\n"]),
            Some(25)
        );
        assert_eq!(end(&[b"GET / HTTP/1.1\r\n\r\r\n"]), None);
        assert_eq!(end(&[b"GET / HTTP/1.1\r\r\n\r\n"]), Some(19));
    }

    #[test]
    fn leading_empty_lines_do_not_end_a_header() {
        assert_eq!(end(&[b"\r\n\r\n"]), None);
        assert_eq!(end(&[b"\n\n\n\n", b"\r\n\n\r\n"]), None);
        assert_eq!(
            end(&[b"\r\n\r\n", b"GET / HTTP/1.1\r\n", b"\r\n"]),
            Some(22)
        );
        assert_eq!(end(&[b"\r", b"\n\r", b"\nGET / HTTP/1.1\n\n"]), Some(20));
    }

    #[test]
    fn bare_lf_line_endings_end_a_header_as_httparse_does() {
        assert_eq!(end(&[b"GET / HTTP/1.1\n\n"]), Some(16));
        assert_eq!(end(&[b"GET / HTTP/1.1\nHost: x\n", b"\r\n"]), Some(25));
        assert_eq!(end(&[b"GET / HTTP/1.1\r\nHost: x\n\n"]), Some(25));
        // A target pingora percent-encodes before parsing again: the lines stay where they are.
        assert_eq!(end(&[b"GET /a b HTTP/1.1\n\n"]), Some(19));
    }

    /// What httparse (pingora's parser) says of `buf`: `Some(Ok(n))` complete at `n`,
    /// `Some(Err(()))` refused, `None` partial.
    fn httparse(buf: &[u8]) -> Option<Result<usize, ()>> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        match httparse::Request::new(&mut headers).parse(buf) {
            Ok(httparse::Status::Complete(n)) => Some(Ok(n)),
            Ok(httparse::Status::Partial) => None,
            Err(_) => Some(Err(())),
        }
    }

    /// Request-shaped bytes: lines of tokens from a small alphabet, with every line ending
    /// and stray CRs, and sometimes empty lines in front.
    fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(&b"\r\n"[..]),
            Just(&b"\n"[..]),
            Just(&b"\r"[..]),
            Just(&b"GET / HTTP/1.1"[..]),
            Just(&b"POST /a HTTP/1.0"[..]),
            Just(&b"Host: x"[..]),
            Just(&b"A:b"[..]),
            Just(&b" "[..]),
            Just(&b"x"[..]),
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        /// The deadline is never switched off while httparse still waits for header bytes,
        /// and a header httparse completes ends at the same byte here, however it is split.
        #[test]
        fn the_scanner_agrees_with_httparse(buf in request_bytes(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(buf.len() + 1)).collect();
            at.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for to in at.into_iter().chain([buf.len()]) {
                chunks.push(&buf[from..to]);
                from = to;
            }
            let seen = end(&chunks);
            if let Some(n) = seen {
                prop_assert!(httparse(&buf[..n]).is_some(), "ended at {n} but httparse waits: {:?}", buf.escape_ascii().to_string());
            }
            if let Some(Ok(n)) = httparse(&buf) {
                prop_assert_eq!(seen, Some(n), "{:?}", buf.escape_ascii().to_string());
            }
        }
    }
}
