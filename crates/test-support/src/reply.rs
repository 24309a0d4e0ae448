//! Answers a fake node gives: OpenAI chat completions, error statuses,
//! server-sent event streams.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use tokio::sync::mpsc;

/// A JSON response with `status` and `body`.
#[must_use]
pub fn json(status: u16, body: &serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// A non-streamed chat completion saying `text`, with usage `prompt`
/// tokens of which none cached, and `completion` tokens.
#[must_use]
pub fn completion(text: &str, prompt: u32, completion: u32) -> Response {
    json(
        200,
        &serde_json::json!({
            "id": "c1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
        }),
    )
}

/// An error status with an OpenAI error body (`node says CODE`) and an
/// optional `Retry-After`.
#[must_use]
pub fn status(code: u16, retry_after: Option<&str>) -> Response {
    let mut b = Response::builder()
        .status(code)
        .header("content-type", "application/json");
    if let Some(r) = retry_after {
        b = b.header("retry-after", r);
    }
    b.body(Body::from(format!(
        r#"{{"error":{{"message":"node says {code}"}}}}"#
    )))
    .unwrap()
}

/// A `text/event-stream` answer whose chunks the test sends through `rx`
/// (an `Err` breaks the stream mid-way; dropping the sender ends it).
#[must_use]
pub fn sse(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap()
}

/// A stream that sends `chunk` every `every`, forever; `on_drop` runs when
/// the client goes away (the body is dropped).
#[must_use]
pub fn endless(
    chunk: &'static [u8],
    every: Duration,
    on_drop: impl FnOnce() + Send + 'static,
) -> Response {
    struct OnDrop<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for OnDrop<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    let guard = OnDrop(Some(on_drop));
    let stream = futures::stream::unfold(guard, move |guard| async move {
        tokio::time::sleep(every).await;
        Some((Ok::<_, std::io::Error>(Bytes::from_static(chunk)), guard))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}
