//! [`TranslatedStream`]: the response body of a translated stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::error::AnthropicError;
use super::events::PING;
use super::response::ReplyMeta;
use super::stream::StreamTranslator;

/// How long a translated stream may stay silent before the gateway sends
/// a `ping` of its own (the node is still processing the prompt, and sends
/// nothing a client would see). 10 s.
pub(super) const PING_INTERVAL: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A response body that translates the node's chat completion stream
    /// `B` (the relayed body) into a Messages stream, frame by frame.
    ///
    /// The node's body is read to its end even after `message_stop`, so
    /// the relay underneath records the outcome and usage. While nothing
    /// has been sent for [`PING_INTERVAL`] and the message is not over, a
    /// `ping` event is (nodes other than mlx_lm.server send nothing while
    /// they process a prompt).
    pub struct TranslatedStream<B> {
        #[pin]
        inner: B,
        #[pin]
        ping: Sleep,
        ping_interval: Duration,
        translator: StreamTranslator,
        started: bool,
        inner_done: bool,
    }
}

impl<B> TranslatedStream<B> {
    /// Translates `inner` for the request described by `meta`. Must be
    /// called inside a Tokio runtime (it owns a timer).
    pub(super) fn new(inner: B, meta: ReplyMeta) -> Self {
        Self::with_ping_interval(inner, meta, PING_INTERVAL)
    }

    /// Like [`Self::new`], with pings after `interval` of silence.
    pub(super) fn with_ping_interval(inner: B, meta: ReplyMeta, interval: Duration) -> Self {
        Self {
            inner,
            ping: tokio::time::sleep(interval),
            ping_interval: interval,
            translator: StreamTranslator::new(meta),
            started: false,
            inner_done: false,
        }
    }
}

impl<B> Body for TranslatedStream<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if !*this.started {
            *this.started = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(this.translator.start())))));
        }
        loop {
            if *this.inner_done {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            let polled = match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if this.translator.is_ended() || this.ping.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.ping
                        .as_mut()
                        .reset(Instant::now() + *this.ping_interval);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(PING)))));
                }
            };
            match polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        this.translator.feed(data, &mut out);
                    }
                }
                Some(Err(e)) => {
                    *this.inner_done = true;
                    let e: BoxError = e.into();
                    this.translator.fail(
                        &AnthropicError::bad_node_answer(format!(
                            "the node failed mid-stream: {e}"
                        )),
                        &mut out,
                    );
                }
                None => {
                    *this.inner_done = true;
                    this.translator.finish(&mut out);
                }
            }
            if !out.is_empty() {
                this.ping
                    .as_mut()
                    .reset(Instant::now() + *this.ping_interval);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.started && self.inner_done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use futures::SinkExt;
    use futures::channel::mpsc;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type Item = Result<Frame<Bytes>, std::io::Error>;

    #[tokio::test(start_paused = true)]
    async fn silent_nodes_get_pings_until_the_answer_ends() {
        let (mut tx, rx) = mpsc::channel::<Item>(4);
        let meta = ReplyMeta {
            id: "msg_1".into(),
            model: "m".into(),
            stop_sequences: Vec::new(),
        };
        let mut body = Box::pin(TranslatedStream::new(StreamBody::new(rx), meta));
        let start = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(start.starts_with(b"event: message_start"));
        let t0 = Instant::now();
        // Paused time: the runtime jumps to each timer.
        for k in 1..=2u32 {
            let ping = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(&ping[..], PING);
            assert_eq!(Instant::now() - t0, PING_INTERVAL * k);
        }
        let data = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n";
        tx.send(Ok(Frame::data(Bytes::from_static(data.as_bytes()))))
            .await
            .unwrap();
        let rest = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(String::from_utf8_lossy(&rest).ends_with("message_stop\"}\n\n"));
        // Over: no more pings while the node's body stays open.
        let after = tokio::time::timeout(PING_INTERVAL * 3, body.frame()).await;
        assert!(after.is_err(), "{after:?}");
        drop(tx);
        assert!(body.frame().await.is_none());
    }
}
