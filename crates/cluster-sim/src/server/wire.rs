//! Connections answered by a [`WireFault`] instead of the API: the request
//! head is read (at most 64 KiB, 10 s), then the node misbehaves below HTTP.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::faults::WireFault;

const EVENT_STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n";

/// Reads until the end of a request head (or 64 KiB, or 10 s).
async fn read_head(stream: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 64 * 1024 && !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
}

/// Reads and discards until the peer closes.
async fn hold(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Serves one connection with `fault`.
pub(super) async fn serve(mut stream: TcpStream, fault: WireFault, junk_bytes: usize) {
    read_head(&mut stream).await;
    match fault {
        WireFault::Silent => hold(&mut stream).await,
        WireFault::Junk => {
            // xorshift bytes; the first is never 'H', so it is not HTTP.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut chunk = vec![0u8; 64 * 1024];
            let mut left = junk_bytes;
            let mut first = true;
            while left > 0 {
                for b in &mut chunk {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x.to_le_bytes()[0];
                }
                if first {
                    chunk[0] = b'\x00';
                    first = false;
                }
                let n = left.min(chunk.len());
                if stream.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n;
            }
            let _ = stream.shutdown().await;
        }
        WireFault::GarbageChunked => {
            let mut answer = EVENT_STREAM_HEAD.to_vec();
            answer.extend_from_slice(b"zz-not-hex\r\ndata: {\"choices\":[]}\r\n\r\n");
            let _ = stream.write_all(&answer).await;
            let _ = stream.shutdown().await;
            hold(&mut stream).await;
        }
        WireFault::HangAfterHeaders => {
            if stream.write_all(EVENT_STREAM_HEAD).await.is_ok() {
                hold(&mut stream).await;
            }
        }
        WireFault::EndlessStream => {
            if stream.write_all(EVENT_STREAM_HEAD).await.is_err() {
                return;
            }
            let event =
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"again \"}}]}\n\n";
            let mut chunk = format!("{:x}\r\n", event.len()).into_bytes();
            chunk.extend_from_slice(event);
            chunk.extend_from_slice(b"\r\n");
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
    }
}
