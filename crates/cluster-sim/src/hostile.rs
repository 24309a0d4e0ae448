//! Hostile clients, for chaos tests of a gateway: slow-loris heads and
//! bodies, idle connection floods, raw malformed requests, clients that
//! vanish mid-stream — and a [`WellBehavedClient`] that runs alongside and
//! measures what the others cost it.
//!
//! Everything speaks raw HTTP/1.1 over TCP (no client library would send
//! these requests), to loopback addresses the caller gives. Each attack is
//! bounded in connections and time and returns what it saw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// A raw request's answer: the status (0 when none arrived) and the bytes
/// read (head and body, at most 64 KiB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAnswer {
    /// HTTP status, or 0 when the connection closed or timed out first.
    pub status: u16,
    /// What was read.
    pub bytes: Vec<u8>,
}

impl RawAnswer {
    /// The bytes after the head, as text (lossy).
    #[must_use]
    pub fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }
}

fn parse_status(bytes: &[u8]) -> u16 {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads until the peer closes, `limit` bytes arrived, or `timeout`.
async fn read_some(stream: &mut TcpStream, limit: usize, timeout: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < limit {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if complete_response(&out) {
            break;
        }
    }
    out
}

/// Whether `bytes` hold a whole response framed by `Content-Length`.
fn complete_response(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| bytes.len() >= end + 4 + len)
}

/// Sends `head` then `body` (written in 64 KiB pieces; writing stops early
/// without error if the server answers and closes) and reads the answer
/// for at most `timeout`.
///
/// # Errors
/// When the connection cannot be made.
pub async fn raw_request(
    addr: SocketAddr,
    head: &[u8],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<RawAnswer> {
    let mut stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    if stream.write_all(head).await.is_ok() {
        for piece in body.chunks(64 * 1024) {
            if stream.write_all(piece).await.is_err() {
                break;
            }
        }
    }
    let bytes = read_some(&mut stream, 64 * 1024, timeout).await;
    Ok(RawAnswer {
        status: parse_status(&bytes),
        bytes,
    })
}

/// A `POST` head for `path` with `content-length` and JSON content type.
#[must_use]
pub fn post_head(path: &str, content_length: usize, extra_headers: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n{extra_headers}\r\n"
    )
    .into_bytes()
}

/// What a slow-loris attack saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlowLorisReport {
    /// Connections opened.
    pub connections: usize,
    /// Connections the server closed before `give_up`.
    pub closed_by_server: usize,
    /// Statuses answered before closing (0 = closed without an answer).
    pub statuses: Vec<u16>,
    /// Longest time from connecting to the server's close.
    pub slowest_close: Duration,
}

/// `n` connections that each send `prefix`, then one byte of `drip` every
/// `interval` (cycling), never finishing; each gives up after `give_up`.
/// The server should close them (its header- or body-read timeout).
pub async fn slow_loris(
    addr: SocketAddr,
    n: usize,
    prefix: Vec<u8>,
    drip: &'static [u8],
    interval: Duration,
    give_up: Duration,
) -> SlowLorisReport {
    let prefix = Arc::new(prefix);
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let prefix = Arc::clone(&prefix);
        tasks.spawn(async move {
            let started = Instant::now();
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return None;
            };
            if stream.write_all(&prefix).await.is_err() {
                return Some((true, 0, started.elapsed()));
            }
            let mut next = 0usize;
            let mut buf = [0u8; 4096];
            let mut answer = Vec::new();
            while started.elapsed() < give_up {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return Some((true, parse_status(&answer), started.elapsed())),
                        Ok(k) => answer.extend_from_slice(&buf[..k]),
                    },
                    () = tokio::time::sleep(interval) => {
                        let byte = [drip[next % drip.len()]];
                        next += 1;
                        // A failed write means the server is gone; the read
                        // above sees the close.
                        let _ = stream.write_all(&byte).await;
                    }
                }
            }
            Some((false, parse_status(&answer), started.elapsed()))
        });
    }
    let mut report = SlowLorisReport::default();
    while let Some(done) = tasks.join_next().await {
        let Ok(Some((closed, status, after))) = done else {
            continue;
        };
        report.connections += 1;
        if closed {
            report.closed_by_server += 1;
            report.statuses.push(status);
            report.slowest_close = report.slowest_close.max(after);
        }
    }
    report
}

/// What [`idle_connections`] saw.
#[derive(Debug, Default)]
pub struct IdleFlood {
    /// Connections still open (held until dropped).
    pub open: Vec<TcpStream>,
    /// Connections answered at once (a refusal, read with its status).
    pub refused: Vec<RawAnswer>,
    /// Connections the server closed without a word (e.g. its header-read
    /// timeout passed while the flood was being opened).
    pub closed: usize,
}

/// Opens `n` connections that send nothing. Each is then looked at once:
/// those the server answered straight away are refusals (read for at most
/// `refusal_wait`), those it closed are counted, the others are returned
/// open.
///
/// # Errors
/// When a connection cannot be made at all (e.g. out of file descriptors).
pub async fn idle_connections(
    addr: SocketAddr,
    n: usize,
    refusal_wait: Duration,
) -> std::io::Result<IdleFlood> {
    let mut all = Vec::with_capacity(n);
    for _ in 0..n {
        all.push(TcpStream::connect(addr).await?);
    }
    let mut flood = IdleFlood::default();
    for mut stream in all {
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(1), stream.peek(&mut probe)).await {
            Ok(Ok(n)) if n > 0 => {
                let bytes = read_some(&mut stream, 64 * 1024, refusal_wait).await;
                flood.refused.push(RawAnswer {
                    status: parse_status(&bytes),
                    bytes,
                });
            }
            Ok(_) => flood.closed += 1,
            Err(_) => flood.open.push(stream),
        }
    }
    Ok(flood)
}

/// `n` clients that send `head` + `body` (a streaming request), read until
/// the first `data:` bytes arrive (at most `wait`), then disconnect.
/// Returns how many saw the stream start.
pub async fn disconnect_mid_stream(
    addr: SocketAddr,
    n: usize,
    head: Vec<u8>,
    body: Vec<u8>,
    wait: Duration,
) -> usize {
    let request = Arc::new([head, body].concat());
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let request = Arc::clone(&request);
        tasks.spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return false;
            };
            if stream.write_all(&request).await.is_err() {
                return false;
            }
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                    Ok(Ok(k)) if k > 0 => {
                        seen.extend_from_slice(&buf[..k]);
                        if seen.windows(5).any(|w| w == b"data:") {
                            // Dropping the stream closes the connection.
                            return true;
                        }
                    }
                    _ => return false,
                }
            }
        });
    }
    let mut started = 0;
    while let Some(done) = tasks.join_next().await {
        started += usize::from(done.unwrap_or(false));
    }
    started
}

/// What the well-behaved client saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyReport {
    /// Requests completed (any outcome).
    pub requests: usize,
    /// Requests that failed: no answer, a non-2xx status, or an incomplete
    /// body.
    pub errors: usize,
    /// The first few error descriptions.
    pub error_samples: Vec<String>,
    /// Median latency of the successful requests.
    pub p50: Duration,
    /// 99th percentile latency of the successful requests.
    pub p99: Duration,
    /// Slowest successful request.
    pub max: Duration,
}

impl LatencyReport {
    fn from_samples(mut samples: Vec<Duration>, errors: Vec<String>) -> Self {
        samples.sort();
        let at = |q: f64| {
            if samples.is_empty() {
                Duration::ZERO
            } else {
                let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
                samples[i.min(samples.len() - 1)]
            }
        };
        Self {
            requests: samples.len() + errors.len(),
            errors: errors.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or_default(),
            error_samples: errors.into_iter().take(5).collect(),
        }
    }
}

/// A client that sends one request after another (`POST url` with `body`,
/// a bearer `key` if given) on a kept-alive connection, pausing `pause`
/// between requests, until stopped; it records every latency and error.
#[derive(Debug)]
pub struct WellBehavedClient {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<LatencyReport>,
}

impl WellBehavedClient {
    /// Starts the client (its connection is opened by the first request).
    #[must_use]
    pub fn start(url: String, body: String, key: Option<String>, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default();
            let mut samples = Vec::new();
            let mut errors = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut request = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(key) = &key {
                    request = request.bearer_auth(key);
                }
                let outcome = match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(()) => samples.push(started.elapsed()),
                    Err(e) => errors.push(e),
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            LatencyReport::from_samples(samples, errors)
        });
        Self { stop, task }
    }

    /// Stops the client after its current request and returns its report.
    pub async fn stop(self) -> LatencyReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_framing() {
        assert_eq!(parse_status(b"HTTP/1.1 413 Payload Too Large\r\n"), 413);
        assert_eq!(parse_status(b""), 0);
        assert!(complete_response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        ));
        assert!(!complete_response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok"
        ));
        let a = RawAnswer {
            status: 200,
            bytes: b"HTTP/1.1 200 OK\r\n\r\n{}".to_vec(),
        };
        assert_eq!(a.body_text(), "{}");
    }

    #[test]
    fn percentiles() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let r = LatencyReport::from_samples(samples, vec!["x".into()]);
        assert_eq!(r.requests, 101);
        assert_eq!(r.errors, 1);
        assert_eq!(r.p99, Duration::from_millis(99));
        assert_eq!(r.max, Duration::from_millis(100));
    }
}
