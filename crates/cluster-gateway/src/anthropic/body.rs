//! [`TranslatedStream`]: the response body of a translated stream.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::error::AnthropicError;
use super::response::ReplyMeta;
use super::stream::StreamTranslator;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A response body that translates the node's chat completion stream
    /// `B` (the relayed body) into a Messages stream, frame by frame.
    ///
    /// The node's body is read to its end even after `message_stop`, so
    /// the relay underneath records the outcome and usage.
    pub struct TranslatedStream<B> {
        #[pin]
        inner: B,
        translator: StreamTranslator,
        started: bool,
        inner_done: bool,
    }
}

impl<B> TranslatedStream<B> {
    /// Translates `inner` for the request described by `meta`.
    pub fn new(inner: B, meta: ReplyMeta) -> Self {
        Self {
            inner,
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
            match ready!(this.inner.as_mut().poll_frame(cx)) {
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
