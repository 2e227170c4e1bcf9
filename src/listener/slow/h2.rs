//! How far a new HTTP/2 connection has got towards its first request, seen one read at a time:
//! the client preface (24 bytes), then whole frames (9-byte head, then the payload its length
//! gives), up to the end of the first frame that completes a header block (HEADERS or
//! CONTINUATION with END_HEADERS). Only lengths, types and flags are read; the frames
//! themselves are pingora's (the h2 crate's) to check and refuse.

const PREFACE_LEN: usize = 24;
const FRAME_HEAD_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstRequest {
    /// `left` bytes of the client preface still to come.
    Preface { left: usize },
    /// `have` bytes of a frame head so far.
    Head {
        have: usize,
        head: [u8; FRAME_HEAD_LEN],
    },
    /// `left` payload bytes of the current frame; `last` if it ends the first header block.
    Payload { left: usize, last: bool },
}

impl Default for FirstRequest {
    fn default() -> Self {
        FirstRequest::Preface { left: PREFACE_LEN }
    }
}

impl FirstRequest {
    /// Feed `bytes`; `Err(n)` when the first request's header block is complete after `n` of
    /// them, else the state to go on from.
    pub(super) fn scan(mut self, bytes: &[u8]) -> Result<FirstRequest, usize> {
        let mut at = 0;
        loop {
            // A frame with no payload ends as soon as its head does.
            if let FirstRequest::Payload { left: 0, last } = self {
                if last {
                    return Err(at);
                }
                self = FirstRequest::Head {
                    have: 0,
                    head: [0; FRAME_HEAD_LEN],
                };
            }
            let rest = &bytes[at..];
            if rest.is_empty() {
                return Ok(self);
            }
            self = match self {
                FirstRequest::Preface { left } => {
                    let take = left.min(rest.len());
                    at += take;
                    match left - take {
                        0 => FirstRequest::Head {
                            have: 0,
                            head: [0; FRAME_HEAD_LEN],
                        },
                        left => FirstRequest::Preface { left },
                    }
                }
                FirstRequest::Head { have, mut head } => {
                    let take = (FRAME_HEAD_LEN - have).min(rest.len());
                    head[have..have + take].copy_from_slice(&rest[..take]);
                    at += take;
                    if have + take < FRAME_HEAD_LEN {
                        FirstRequest::Head {
                            have: have + take,
                            head,
                        }
                    } else {
                        let left = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                        let ends_block =
                            matches!(head[3], HEADERS | CONTINUATION) && head[4] & END_HEADERS != 0;
                        FirstRequest::Payload {
                            left,
                            last: ends_block,
                        }
                    }
                }
                FirstRequest::Payload { left, last } => {
                    let take = left.min(rest.len());
                    at += take;
                    FirstRequest::Payload {
                        left: left - take,
                        last,
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FirstRequest;
    use proptest::prelude::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    fn end(chunks: &[&[u8]]) -> Option<usize> {
        super::super::end_of::<FirstRequest>(chunks)
    }

    /// Preface, SETTINGS, a WINDOW_UPDATE, HEADERS without END_HEADERS, CONTINUATION with it.
    fn opening() -> (Vec<u8>, usize) {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[0, 3, 0, 0, 0, 100]));
        bytes.extend(frame(0x8, 0, &[0, 0, 1, 0]));
        bytes.extend(frame(0x1, 0x1, b"abc"));
        bytes.extend(frame(0x9, 0x4, b"de"));
        let end = bytes.len();
        bytes.extend(frame(0x0, 0x1, b"{}"));
        (bytes, end)
    }

    #[test]
    fn only_a_complete_header_block_ends_the_watch() {
        assert_eq!(end(&[PREFACE]), None);
        assert_eq!(end(&[&PREFACE[..10]]), None);
        let (bytes, at) = opening();
        assert_eq!(end(&[&bytes]), Some(at));
        assert_eq!(end(&[&bytes[..at - 1]]), None);
        // SETTINGS and PING with END_HEADERS' bit set are not header blocks.
        let mut settings = PREFACE.to_vec();
        settings.extend(frame(0x4, 0x4, b""));
        settings.extend(frame(0x6, 0x4, &[0; 8]));
        assert_eq!(end(&[&settings]), None);
        // An empty HEADERS frame with END_HEADERS ends at its head.
        let mut empty = PREFACE.to_vec();
        empty.extend(frame(0x1, 0x4, b""));
        assert_eq!(end(&[&empty, b"more"]), Some(PREFACE.len() + 9));
    }

    proptest! {
        #[test]
        fn reads_split_anywhere_end_at_the_same_byte(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let (bytes, at) = opening();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for to in points.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[from..to]);
                from = to;
            }
            prop_assert_eq!(end(&chunks), Some(at));
        }
    }
}
