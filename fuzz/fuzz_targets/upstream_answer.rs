//! The upstream answer reader: whatever bytes an upstream sends, in whatever pieces, the read
//! ends in an answer or an error, never a panic, and a body is never larger than allowed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p13n_edge::upstream::response::read;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out the input `step` bytes at a time; never pending.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&step, data)) = input.split_first() else {
        return;
    };
    let max_body = 1024;
    let mut stream = Pieces {
        data,
        step: usize::from(step % 64) + 1,
    };
    let mut answer = std::pin::pin!(read(&mut stream, max_body));
    let mut cx = Context::from_waker(Waker::noop());
    // The stream is never pending, so neither is the read for long.
    let result = loop {
        if let Poll::Ready(r) = answer.as_mut().poll(&mut cx) {
            break r;
        }
    };
    if let Ok((a, _)) = result {
        assert!(a.body.len() <= max_body, "a body of {} bytes", a.body.len());
    }
});
