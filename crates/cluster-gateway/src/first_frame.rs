//! Holding a node's answer back until its first body frame, so a node that
//! sends its headers and then nothing, or garbage, is retried elsewhere
//! before the client has seen a byte.
//!
//! [`first_frame`] polls the node's body for its first frame, for at most a
//! given time (the gateway uses `gateway.idle_timeout`, bounded by the
//! request's overall deadline). The answer is then relayed as a
//! [`Peeked`] body: that frame first, the rest of the node's body after.
//! Headers and first frame usually arrive together, so this costs the
//! client nothing; mlx_lm.server sends its first `: keepalive` comment at
//! once while it prefills.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// A node's body with its first frame already read.
#[derive(Debug)]
pub(crate) struct Peeked {
    first: Option<Frame<Bytes>>,
    rest: Incoming,
}

impl Peeked {
    /// `rest` with nothing read yet.
    #[must_use]
    pub(crate) fn unread(rest: Incoming) -> Self {
        Self { first: None, rest }
    }
}

impl Body for Peeked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(frame) = self.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let n = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.remaining() as u64);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + n);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + n);
        }
        hint
    }
}

/// How waiting for the first frame ended.
#[derive(Debug)]
pub(crate) enum FirstFrame {
    /// A frame arrived (or the body is empty): relay this.
    Ready(Peeked),
    /// The node's body failed before its first frame (reset, invalid
    /// chunked encoding, ...).
    Failed(hyper::Error),
    /// No frame within the time allowed.
    TimedOut,
}

/// Waits at most `within` for the first frame of `body`.
pub(crate) async fn first_frame(mut body: Incoming, within: Duration) -> FirstFrame {
    if body.is_end_stream() {
        return FirstFrame::Ready(Peeked::unread(body));
    }
    match tokio::time::timeout(within, body.frame()).await {
        Ok(Some(Ok(frame))) => FirstFrame::Ready(Peeked {
            first: Some(frame),
            rest: body,
        }),
        Ok(None) => FirstFrame::Ready(Peeked::unread(body)),
        Ok(Some(Err(error))) => FirstFrame::Failed(error),
        Err(_) => FirstFrame::TimedOut,
    }
}
