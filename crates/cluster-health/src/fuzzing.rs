//! Entry points for the fuzz targets of `fuzz/` (not part of the API):
//! the probe's HTTP/1.x response reader and what the checker does with an
//! answer, fed arbitrary bytes as a node's reply.

use std::time::{Duration, SystemTime};

use cluster_types::NodeId;
use tokio::io::AsyncWriteExt;

use crate::http::{is_loading_body, parse_model_list, parse_retry_after};
use crate::wire::exchange;

thread_local! {
    static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok();
}

/// Feeds `reply` to the probe client as a node's whole answer to a `GET`
/// (the node then closes), bodies limited to 64 KiB; then classifies the
/// answer as the checker does (model list, loading body, `Retry-After`).
/// Returns the status when a complete answer was read.
///
/// Must not panic or hang on any input.
#[must_use]
pub fn probe_response(reply: &[u8]) -> Option<u16> {
    RUNTIME.with(|runtime| {
        let runtime = runtime.as_ref()?;
        runtime.block_on(async {
            let (mut node, client) = tokio::io::duplex(reply.len() + 4096);
            node.write_all(reply).await.ok()?;
            node.shutdown().await.ok()?;
            let request = b"GET /v1/models HTTP/1.1\r\nHost: fuzz\r\n\r\n";
            let exchanged =
                tokio::time::timeout(Duration::from_secs(1), exchange(client, request, 64 * 1024))
                    .await
                    .ok()?;
            drop(node);
            let (answer, _) = exchanged.ok()?;
            let node_id = NodeId::from("fuzz");
            let _ = parse_model_list(&node_id, &answer.body);
            let _ = is_loading_body(&answer.body);
            let _ = parse_retry_after(&answer.headers, SystemTime::UNIX_EPOCH);
            let _ = parse_retry_after(&answer.headers, SystemTime::now());
            Some(answer.status.as_u16())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_chunked_answer_and_survives_garbage() {
        let ok = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nretry-after: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n5\r\n{\"dat\r\n9\r\na\": []}\r\n\r\n0\r\n\r\n";
        assert_eq!(probe_response(ok), Some(200));
        assert_eq!(probe_response(b"\xff\xfe garbage"), None);
        assert_eq!(
            probe_response(b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\nx"),
            Some(200)
        );
    }
}
