//! The response body the client receives: the node's body, frame by frame.
//!
//! [`RelayBody`] wraps the node's body and forwards each frame the moment it
//! arrives (nothing is buffered). While doing so it
//!
//! - reports the first byte of content to the request's [`OutcomeSink`]
//!   (for event streams: the first `data:` line, so mlx_lm.server's
//!   `: keepalive` comments during prefill do not count as a first token);
//! - sniffs the token usage (see [`crate::sniff`]);
//! - enforces the idle timeout between frames;
//! - turns a failure after the stream began into a final SSE error event
//!   `data: {"error": {...}}` followed by a proper end of the body, so the
//!   client never hangs. A stream that simply stops without its end marker
//!   (`data: [DONE]`, `event: message_stop`) counts as such a failure: an
//!   HTTP/1.0 node that dies just closes its connection;
//! - finishes the sink exactly once: success with the usage at the end of
//!   the body, failure on an error, and [`RelayOutcome::Cancelled`] when the
//!   client goes away first (dropping the relay drops the node's body, which
//!   closes the upstream connection and so cancels the request on the node).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::{ApiError, codes};
use crate::sniff::{JsonSniffer, JsonVerdict, SseSniffer, Usage, UsageChunkFilter};

/// How a relayed answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayOutcome {
    /// The body arrived complete; with the usage the node reported.
    Success(Usage),
    /// The body broke off.
    Failed(RelayFailure),
    /// The client went away before the end.
    Cancelled,
}

/// Why a relayed body broke off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayFailure {
    /// The node's connection failed mid-body.
    Reset,
    /// No frame for longer than the idle timeout.
    IdleTimeout,
    /// The body ended early: an event stream without its end marker, or a
    /// JSON answer that does not parse.
    Truncated,
    /// The whole request took longer than `gateway.request_timeout`.
    Deadline,
}

/// Where a relay reports timing and outcome: the facade's request guard in
/// the gateway, a recorder in tests.
pub(crate) trait OutcomeSink: Send + 'static {
    /// The first byte of content arrived (called at most once).
    fn first_byte(&mut self);
    /// The request ended (called exactly once, possibly from `Drop`).
    fn finish(self, outcome: RelayOutcome);
}

/// A sink that records nothing (for answers whose outcome was already
/// reported, e.g. a passed-through 503 after the last retry).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NoSink;

impl OutcomeSink for NoSink {
    fn first_byte(&mut self) {}
    fn finish(self, _outcome: RelayOutcome) {}
}

/// How to read the node's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayMode {
    /// `text/event-stream`: sniff lines, end with an error event on failure.
    Sse,
    /// A JSON answer: sniff usage at the end, check it is complete.
    Json,
    /// Anything else (including error answers): pass through, report only
    /// success or failure.
    Opaque,
}

impl RelayMode {
    /// Picks the mode from the node's status and `content-type`.
    #[must_use]
    pub(crate) fn for_response(status: StatusCode, content_type: Option<&[u8]>) -> Self {
        let ct = content_type.unwrap_or_default();
        if ct.starts_with(b"text/event-stream") {
            Self::Sse
        } else if status.is_success() && ct.starts_with(b"application/json") {
            Self::Json
        } else {
            Self::Opaque
        }
    }
}

/// Error of a relayed non-stream body that broke off. The client sees the
/// connection end early (its framing tells it the body is incomplete).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    /// The node's body failed.
    #[error("node {node} failed mid-body: {source}")]
    Upstream {
        /// The node's id.
        node: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request's overall deadline passed.
    #[error("request to node {node} exceeded its overall timeout of {timeout:?}")]
    Deadline {
        /// The node's id.
        node: String,
        /// `gateway.request_timeout`.
        timeout: Duration,
    },
    /// No frame within the idle timeout.
    #[error("node {node} sent nothing for {timeout:?}")]
    Idle {
        /// The node's id.
        node: String,
        /// The configured idle timeout.
        timeout: Duration,
    },
}

enum Sniffer {
    Sse(SseSniffer),
    Json(JsonSniffer),
    Opaque,
}

/// Holds the sink; finishing it as cancelled if dropped unfinished.
struct SinkSlot<S: OutcomeSink>(Option<S>);

impl<S: OutcomeSink> SinkSlot<S> {
    fn finish(&mut self, outcome: RelayOutcome) {
        if let Some(sink) = self.0.take() {
            sink.finish(outcome);
        }
    }
}

impl<S: OutcomeSink> Drop for SinkSlot<S> {
    fn drop(&mut self) {
        self.finish(RelayOutcome::Cancelled);
    }
}

pin_project! {
    /// The body relayed to the client (see the module docs).
    pub(crate) struct RelayBody<B, S: OutcomeSink> {
        #[pin]
        inner: B,
        #[pin]
        idle: Sleep,
        idle_timeout: Duration,
        // When the last frame arrived; the timer is only (re)armed when the
        // node's body is pending, never per frame.
        last_frame: Instant,
        // The request's overall deadline and the timeout it came from.
        deadline: Option<(Instant, Duration)>,
        sniffer: Sniffer,
        // Removes the usage chunk the gateway asked for on the client's
        // behalf (see `crate::request::with_include_usage`).
        usage_filter: Option<UsageChunkFilter>,
        sink: SinkSlot<S>,
        first_byte_seen: bool,
        node: String,
        state: State,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// The node's body is complete (its last frame is out) but the stream
    /// lacked its end marker: the next poll sends the error event.
    TruncatedPending,
    /// Nothing more to send.
    Ended,
}

impl<B, S: OutcomeSink> RelayBody<B, S> {
    /// Relays `inner` from `node` (its id, for error messages) in `mode`,
    /// failing if no frame arrives within `idle_timeout`; reports to `sink`.
    ///
    /// Must be created inside a Tokio runtime (it arms a timer).
    pub(crate) fn new(
        inner: B,
        mode: RelayMode,
        idle_timeout: Duration,
        node: String,
        sink: S,
    ) -> Self {
        let sniffer = match mode {
            RelayMode::Sse => Sniffer::Sse(SseSniffer::new()),
            RelayMode::Json => Sniffer::Json(JsonSniffer::default()),
            RelayMode::Opaque => Sniffer::Opaque,
        };
        Self {
            inner,
            idle: tokio::time::sleep(idle_timeout),
            idle_timeout,
            last_frame: Instant::now(),
            deadline: None,
            sniffer,
            usage_filter: None,
            sink: SinkSlot(Some(sink)),
            first_byte_seen: false,
            node,
            state: State::Streaming,
        }
    }
}

impl<B, S: OutcomeSink> RelayBody<B, S> {
    /// Also ends the body at `deadline` (from `gateway.request_timeout`,
    /// `timeout`), however busy the node is. Default: no deadline.
    #[must_use]
    pub(crate) fn with_deadline(mut self, deadline: Option<(Instant, Duration)>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Removes the usage-only chunk from a stream (when `strip` and the
    /// answer is a stream) — its counts still reach the sink. Default: off.
    #[must_use]
    pub(crate) fn strip_usage_chunk(mut self, strip: bool) -> Self {
        self.usage_filter =
            (strip && matches!(self.sniffer, Sniffer::Sse(_))).then(UsageChunkFilter::default);
        self
    }
}

fn failure_error(failure: RelayFailure, node: &str, timeout: Duration, detail: &str) -> ApiError {
    match failure {
        RelayFailure::Deadline => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            codes::UPSTREAM_TIMEOUT,
            format!(
                "the request to node {node} exceeded gateway.request_timeout ({timeout:?}); the stream was ended"
            ),
        ),
        RelayFailure::IdleTimeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            codes::UPSTREAM_IDLE_TIMEOUT,
            format!("node {node} sent nothing for {timeout:?}; the stream was ended"),
        ),
        RelayFailure::Reset => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            codes::UPSTREAM_ERROR,
            format!("node {node} failed mid-stream: {detail}"),
        ),
        RelayFailure::Truncated => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            codes::UPSTREAM_ERROR,
            format!("node {node} closed the stream before its end"),
        ),
    }
}

/// Reports the end of the node's body to the sink. `true` when the body was
/// a stream cut short (an error event must follow).
fn body_complete<S: OutcomeSink>(sniffer: &mut Sniffer, sink: &mut SinkSlot<S>) -> bool {
    let outcome = match std::mem::replace(sniffer, Sniffer::Opaque) {
        Sniffer::Sse(s) if !s.saw_end() => {
            *sniffer = Sniffer::Sse(s);
            return true;
        }
        Sniffer::Sse(s) => RelayOutcome::Success(s.usage()),
        Sniffer::Json(j) => match j.finish() {
            JsonVerdict::Valid(usage) => RelayOutcome::Success(usage.unwrap_or_default()),
            JsonVerdict::Unchecked => RelayOutcome::Success(Usage::default()),
            JsonVerdict::Invalid => RelayOutcome::Failed(RelayFailure::Truncated),
        },
        Sniffer::Opaque => RelayOutcome::Success(Usage::default()),
    };
    sink.finish(outcome);
    false
}

impl<B, S> Body for RelayBody<B, S>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S: OutcomeSink,
{
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let mut this = self.project();
        let (failure, detail) = match *this.state {
            State::Ended => return Poll::Ready(None),
            State::TruncatedPending => (RelayFailure::Truncated, String::new()),
            State::Streaming => match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    *this.last_frame = Instant::now();
                    if let Some(data) = frame.data_ref() {
                        let first = match this.sniffer {
                            Sniffer::Sse(s) => s.feed(data).first_data,
                            Sniffer::Json(j) => {
                                j.feed(data);
                                !data.is_empty()
                            }
                            Sniffer::Opaque => !data.is_empty(),
                        };
                        if first
                            && !*this.first_byte_seen
                            && let Some(sink) = this.sink.0.as_mut()
                        {
                            *this.first_byte_seen = true;
                            sink.first_byte();
                        }
                    }
                    // A body with a known length is complete with its last
                    // frame; the server may never poll again after it.
                    let end = this.inner.is_end_stream();
                    if end {
                        *this.state = if body_complete(this.sniffer, this.sink) {
                            State::TruncatedPending
                        } else {
                            State::Ended
                        };
                    }
                    let frame = match this.usage_filter.as_mut() {
                        Some(filter) => match frame.into_data() {
                            Ok(data) => {
                                let mut out = filter.filter(&data);
                                if end {
                                    let rest = filter.take_rest();
                                    if !rest.is_empty() {
                                        out = [out, rest].concat().into();
                                    }
                                }
                                if out.is_empty() {
                                    // Nothing to send from this frame: poll
                                    // again rather than send an empty one.
                                    cx.waker().wake_by_ref();
                                    return Poll::Pending;
                                }
                                Frame::data(out)
                            }
                            Err(other) => other,
                        },
                        None => frame,
                    };
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(None) => {
                    if let Some(rest) = this.usage_filter.as_mut().map(UsageChunkFilter::take_rest)
                        && !rest.is_empty()
                    {
                        // A last line without its newline: forward it, end next.
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    if !body_complete(this.sniffer, this.sink) {
                        *this.state = State::Ended;
                        return Poll::Ready(None);
                    }
                    (RelayFailure::Truncated, String::new())
                }
                Poll::Ready(Some(Err(e))) => {
                    let source: Box<dyn std::error::Error + Send + Sync> = e.into();
                    if !matches!(this.sniffer, Sniffer::Sse(_)) {
                        this.sink.finish(RelayOutcome::Failed(RelayFailure::Reset));
                        *this.state = State::Ended;
                        return Poll::Ready(Some(Err(RelayError::Upstream {
                            node: this.node.clone(),
                            source,
                        })));
                    }
                    (RelayFailure::Reset, source.to_string())
                }
                Poll::Pending => {
                    let idle_at = *this.last_frame + *this.idle_timeout;
                    let (at, failure, timeout) = match *this.deadline {
                        Some((d, t)) if d <= idle_at => (d, RelayFailure::Deadline, t),
                        _ => (idle_at, RelayFailure::IdleTimeout, *this.idle_timeout),
                    };
                    if this.idle.deadline() != at {
                        this.idle.as_mut().reset(at);
                    }
                    ready!(this.idle.as_mut().poll(cx));
                    if !matches!(this.sniffer, Sniffer::Sse(_)) {
                        this.sink.finish(RelayOutcome::Failed(failure));
                        *this.state = State::Ended;
                        let node = this.node.clone();
                        return Poll::Ready(Some(Err(if failure == RelayFailure::Deadline {
                            RelayError::Deadline { node, timeout }
                        } else {
                            RelayError::Idle { node, timeout }
                        })));
                    }
                    (failure, String::new())
                }
            },
        };
        // An event stream that failed: finish it with an error event.
        let terminator = match this.sniffer {
            Sniffer::Sse(s) => s.terminator(),
            _ => b"",
        };
        this.sink.finish(RelayOutcome::Failed(failure));
        *this.state = State::Ended;
        let timeout = match (failure, *this.deadline) {
            (RelayFailure::Deadline, Some((_, t))) => t,
            _ => *this.idle_timeout,
        };
        let event = failure_error(failure, this.node, timeout, &detail).to_sse_event();
        let data = if terminator.is_empty() {
            event
        } else {
            let mut joined = Vec::with_capacity(terminator.len() + event.len());
            joined.extend_from_slice(terminator);
            joined.extend_from_slice(&event);
            Bytes::from(joined)
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.sniffer {
            // An error event may be appended to a stream.
            Sniffer::Sse(_) => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::SinkExt;
    use futures::channel::mpsc;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    #[derive(Debug, Default, Clone)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl OutcomeSink for Recorder {
        fn first_byte(&mut self) {
            self.0.lock().unwrap().push("first".into());
        }
        fn finish(self, outcome: RelayOutcome) {
            self.0.lock().unwrap().push(format!("{outcome:?}"));
        }
    }

    type Item = Result<Frame<Bytes>, std::io::Error>;

    fn channel_body() -> (mpsc::Sender<Item>, StreamBody<mpsc::Receiver<Item>>) {
        let (tx, rx) = mpsc::channel(8);
        (tx, StreamBody::new(rx))
    }

    fn frame(s: &'static str) -> Item {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    #[tokio::test]
    async fn sse_passes_frames_through_and_reports_usage() {
        let (mut tx, body) = channel_body();
        let rec = Recorder::default();
        let mut relay = Box::pin(RelayBody::new(
            body,
            RelayMode::Sse,
            Duration::from_secs(5),
            "n1".into(),
            rec.clone(),
        ));
        tx.send(frame(": keepalive\n\n")).await.unwrap();
        let f = relay.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), ": keepalive\n\n");
        assert!(
            rec.0.lock().unwrap().is_empty(),
            "keepalive is not a first byte"
        );
        tx.send(frame("data: {\"choices\":[]}\n\n")).await.unwrap();
        relay.frame().await.unwrap().unwrap();
        assert_eq!(rec.0.lock().unwrap().as_slice(), ["first"]);
        tx.send(frame(
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\ndata: [DONE]\n\n",
        ))
        .await
        .unwrap();
        drop(tx);
        relay.frame().await.unwrap().unwrap();
        assert!(relay.frame().await.is_none());
        let log = rec.0.lock().unwrap().clone();
        assert_eq!(log.len(), 2);
        assert!(log[1].contains("cached_tokens: Some(8)"), "{log:?}");
        drop(relay);
        assert_eq!(rec.0.lock().unwrap().len(), 2, "finished once");
    }

    #[tokio::test]
    async fn sse_upstream_error_becomes_error_event_then_end() {
        let (mut tx, body) = channel_body();
        let rec = Recorder::default();
        let mut relay = Box::pin(RelayBody::new(
            body,
            RelayMode::Sse,
            Duration::from_secs(5),
            "n1".into(),
            rec.clone(),
        ));
        tx.send(frame("data: {\"partial\"")).await.unwrap();
        relay.frame().await.unwrap().unwrap();
        tx.send(Err(std::io::Error::other("reset"))).await.unwrap();
        let last = relay.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(last.starts_with(b"\n\ndata: {\"error\""), "{last:?}");
        assert!(String::from_utf8_lossy(&last).contains("node n1 failed mid-stream"));
        assert!(relay.frame().await.is_none());
        assert!(relay.is_end_stream());
        assert!(rec.0.lock().unwrap().last().unwrap().contains("Reset"));
    }

    #[tokio::test]
    async fn sse_close_without_done_is_truncated() {
        let (mut tx, body) = channel_body();
        let rec = Recorder::default();
        let mut relay = Box::pin(RelayBody::new(
            body,
            RelayMode::Sse,
            Duration::from_secs(5),
            "n1".into(),
            rec.clone(),
        ));
        tx.send(frame("data: {\"choices\":[]}\n\n")).await.unwrap();
        drop(tx);
        relay.frame().await.unwrap().unwrap();
        let last = relay.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(last.starts_with(b"data: {\"error\""), "{last:?}");
        assert!(relay.frame().await.is_none());
        assert!(rec.0.lock().unwrap().last().unwrap().contains("Truncated"));
    }

    #[tokio::test(start_paused = true)]
    async fn sse_idle_timeout_ends_stream_with_error_event() {
        let (mut tx, body) = channel_body();
        let rec = Recorder::default();
        let mut relay = Box::pin(RelayBody::new(
            body,
            RelayMode::Sse,
            Duration::from_secs(2),
            "n1".into(),
            rec.clone(),
        ));
        tx.send(frame("data: {}\n\n")).await.unwrap();
        relay.frame().await.unwrap().unwrap();
        // Paused time: the runtime jumps to the timer when everything idles.
        let last = relay.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(String::from_utf8_lossy(&last).contains("upstream_idle_timeout"));
        assert!(relay.frame().await.is_none());
        assert!(
            rec.0
                .lock()
                .unwrap()
                .last()
                .unwrap()
                .contains("IdleTimeout")
        );
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn request_deadline_ends_a_busy_stream() {
        let (mut tx, body) = channel_body();
        let rec = Recorder::default();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut relay = Box::pin(
            RelayBody::new(
                body,
                RelayMode::Sse,
                Duration::from_secs(2),
                "n1".into(),
                rec.clone(),
            )
            .with_deadline(Some((deadline, Duration::from_secs(3)))),
        );
        // Frames keep coming every second: never idle, but past the deadline.
        let mut last = Bytes::new();
        for _ in 0..10 {
            tokio::select! {
                f = relay.frame() => {
                    let Some(f) = f else { break };
                    last = f.unwrap().into_data().unwrap();
                    if last.starts_with(b"data: {\"error\"") {
                        break;
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    tx.send(frame("data: {}\n\n")).await.unwrap();
                }
            }
        }
        assert!(
            String::from_utf8_lossy(&last).contains("gateway.request_timeout"),
            "{last:?}"
        );
        assert!(relay.frame().await.is_none());
        assert!(rec.0.lock().unwrap().last().unwrap().contains("Deadline"));
    }

    #[tokio::test(start_paused = true)]
    async fn json_idle_timeout_is_an_error() {
        let (_tx, body) = channel_body();
        let rec = Recorder::default();
        let mut relay = Box::pin(RelayBody::new(
            body,
            RelayMode::Json,
            Duration::from_secs(2),
            "n1".into(),
            rec.clone(),
        ));
        let err = relay.frame().await.unwrap().unwrap_err();
        assert!(matches!(err, RelayError::Idle { .. }));
        assert!(relay.frame().await.is_none());
    }

    #[tokio::test]
    async fn json_usage_and_truncation() {
        let (mut tx, body) = channel_body();
        let rec = Recorder::default();
        let relay = Box::pin(RelayBody::new(
            body,
            RelayMode::Json,
            Duration::from_secs(5),
            "n1".into(),
            rec.clone(),
        ));
        tx.send(frame("{\"usage\":{\"prompt_tokens\":4,"))
            .await
            .unwrap();
        tx.send(frame("\"prompt_tokens_details\":{\"cached_tokens\":2}}}"))
            .await
            .unwrap();
        drop(tx);
        let all = relay.collect().await.unwrap().to_bytes();
        assert!(all.ends_with(b"}}}"));
        let log = rec.0.lock().unwrap().clone();
        assert_eq!(log[0], "first");
        assert!(log[1].contains("cached_tokens: Some(2)"), "{log:?}");

        let (mut tx, body) = channel_body();
        let rec = Recorder::default();
        let relay = Box::pin(RelayBody::new(
            body,
            RelayMode::Json,
            Duration::from_secs(5),
            "n1".into(),
            rec.clone(),
        ));
        tx.send(frame("{\"usage\":")).await.unwrap();
        drop(tx);
        relay.collect().await.unwrap();
        assert!(rec.0.lock().unwrap().last().unwrap().contains("Truncated"));
    }

    #[tokio::test]
    async fn drop_before_end_is_cancelled() {
        let (mut tx, body) = channel_body();
        let rec = Recorder::default();
        let mut relay = Box::pin(RelayBody::new(
            body,
            RelayMode::Sse,
            Duration::from_secs(5),
            "n1".into(),
            rec.clone(),
        ));
        tx.send(frame("data: {}\n\n")).await.unwrap();
        relay.frame().await.unwrap().unwrap();
        drop(relay);
        assert_eq!(rec.0.lock().unwrap().last().unwrap(), "Cancelled");
        // The upstream side sees its receiver gone.
        assert!(tx.send(frame("x")).await.is_err());
    }

    #[test]
    fn mode_from_headers() {
        assert_eq!(
            RelayMode::for_response(StatusCode::OK, Some(b"text/event-stream; charset=utf-8")),
            RelayMode::Sse
        );
        assert_eq!(
            RelayMode::for_response(StatusCode::OK, Some(b"application/json")),
            RelayMode::Json
        );
        assert_eq!(
            RelayMode::for_response(StatusCode::BAD_REQUEST, Some(b"application/json")),
            RelayMode::Opaque
        );
    }
}
