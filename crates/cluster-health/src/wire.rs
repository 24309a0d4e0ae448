//! A minimal HTTP/1.1 `GET` client for probing plain `http://` nodes.
//!
//! Why not hyper (through reqwest or directly): a kept-alive hyper
//! connection holds its buffers and a connection task between requests,
//! about 13–19 KiB each, which for 10 000 nodes is most of a 200 MB budget.
//! Here an idle connection is just its socket in a pool; the buffer lives
//! only during a check.
//!
//! Scope, deliberately small: one `GET` with a few headers, a response head
//! of at most 64 KiB, bodies framed by `Content-Length`, by
//! `Transfer-Encoding: chunked`, or by closing the connection (HTTP/1.0,
//! which `mlx_lm.server` speaks); informational 1xx heads are skipped.
//! Connections are reused only after an HTTP/1.1 answer without
//! `Connection: close` whose body was read completely; a reused connection
//! that fails before the first byte of the answer (the server closed it
//! while idle) is retried once on a new one. Everything is bounded by the
//! caller's timeout.

use std::collections::HashMap;
use std::io;

use memchr::memmem;
use parking_lot::Mutex;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted (as hyper's default).
const MAX_HEADERS: usize = 100;
/// First size of the per-check read buffer.
const INITIAL_BUFFER: usize = 1024;

/// A parsed absolute `http://` URL.
#[derive(Debug)]
pub(crate) struct Target {
    /// `host:port` to connect to (IPv6 in brackets); also the pool key.
    address: String,
    /// The `Host` header value.
    host_header: String,
    /// Path and query.
    path: String,
}

impl Target {
    /// `None` unless `url` is a well-formed `http://` URL.
    pub(crate) fn parse(url: &str) -> Option<Self> {
        let url = reqwest::Url::parse(url).ok()?;
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let host_header = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let mut path = url.path().to_owned();
        if let Some(query) = url.query() {
            path.push('?');
            path.push_str(query);
        }
        Some(Self {
            address: format!("{host}:{port}"),
            host_header,
            path,
        })
    }
}

/// A complete answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    /// The body was longer than the limit (and `body` holds only its start).
    pub(crate) truncated: bool,
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum WireError {
    /// Connecting, writing or reading failed.
    Io(io::Error),
    /// The answer is not HTTP/1.x as we know it.
    Protocol(String),
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

struct Pool {
    idle: HashMap<String, Vec<Idle>>,
    /// Expired connections (e.g. of nodes no longer checked) are closed at
    /// most one idle timeout after they expire.
    last_sweep: Instant,
}

/// The client: a pool of idle connections by `host:port`.
pub(crate) struct WireClient {
    pool: Mutex<Pool>,
    idle_timeout: Duration,
    max_idle_per_host: usize,
}

impl std::fmt::Debug for WireClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireClient")
            .field("idle_hosts", &self.pool.lock().idle.len())
            .field("idle_timeout", &self.idle_timeout)
            .field("max_idle_per_host", &self.max_idle_per_host)
            .finish()
    }
}

impl WireClient {
    pub(crate) fn new(idle_timeout: Duration, max_idle_per_host: usize) -> Self {
        Self {
            pool: Mutex::new(Pool {
                idle: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            idle_timeout,
            max_idle_per_host,
        }
    }

    /// `GET target` with `extra` headers (name, value) — the value of a
    /// header is never logged — reading at most `body_limit` body bytes.
    pub(crate) async fn get(
        &self,
        target: &Target,
        extra: &[(&str, &str)],
        body_limit: usize,
    ) -> Result<Answer, WireError> {
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: mlx-cluster-health\r\n",
            target.path, target.host_header
        );
        for (name, value) in extra {
            request.push_str(name);
            request.push_str(": ");
            request.push_str(value);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");

        if let Some(stream) = self.take_idle(&target.address) {
            match exchange(stream, request.as_bytes(), body_limit).await {
                Ok((answer, reusable)) => {
                    self.put_back(&target.address, reusable);
                    return Ok(answer);
                }
                // Closed while idle: try once more on a new connection.
                Err(Failure::BeforeAnswer(_)) => {}
                Err(Failure::Other(e)) => return Err(e),
            }
        }
        let stream = TcpStream::connect(&target.address).await?;
        stream.set_nodelay(true)?;
        match exchange(stream, request.as_bytes(), body_limit).await {
            Ok((answer, reusable)) => {
                self.put_back(&target.address, reusable);
                Ok(answer)
            }
            Err(Failure::BeforeAnswer(e) | Failure::Other(e)) => Err(e),
        }
    }

    fn take_idle(&self, address: &str) -> Option<TcpStream> {
        let mut pool = self.pool.lock();
        let list = pool.idle.get_mut(address)?;
        while let Some(conn) = list.pop() {
            if conn.since.elapsed() < self.idle_timeout {
                return Some(conn.stream);
            }
        }
        pool.idle.remove(address);
        None
    }

    fn put_back(&self, address: &str, stream: Option<TcpStream>) {
        let Some(stream) = stream else { return };
        if self.max_idle_per_host == 0 {
            return;
        }
        let now = Instant::now();
        let mut pool = self.pool.lock();
        if now.duration_since(pool.last_sweep) >= self.idle_timeout {
            let timeout = self.idle_timeout;
            pool.idle.retain(|_, list| {
                list.retain(|c| now.duration_since(c.since) < timeout);
                !list.is_empty()
            });
            pool.last_sweep = now;
        }
        let list = pool.idle.entry(address.to_owned()).or_default();
        if list.len() < self.max_idle_per_host {
            list.push(Idle { stream, since: now });
        }
    }
}

pub(crate) enum Failure {
    /// Nothing of an answer arrived (safe to retry a `GET`).
    BeforeAnswer(WireError),
    Other(WireError),
}

/// Sends `request` and reads one answer; returns it and the stream if it
/// can be reused.
pub(crate) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    request: &[u8],
    body_limit: usize,
) -> Result<(Answer, Option<S>), Failure> {
    let mut conn = Conn {
        stream,
        buf: Vec::with_capacity(INITIAL_BUFFER),
        start: 0,
    };
    conn.stream
        .write_all(request)
        .await
        .map_err(|e| Failure::BeforeAnswer(e.into()))?;
    // The head, skipping 1xx answers.
    let (status, version_11, headers) = loop {
        let head = match conn.read_head().await {
            Ok(head) => head,
            Err(e) if conn.buf.is_empty() => return Err(Failure::BeforeAnswer(e)),
            Err(e) => return Err(Failure::Other(e)),
        };
        if !head.0.is_informational() {
            break head;
        }
    };
    let close = header_has_token(&headers, "connection", "close");
    let no_body = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let (body, truncated, complete) = if no_body {
        (Vec::new(), false, true)
    } else if header_has_token(&headers, "transfer-encoding", "chunked") {
        conn.read_chunked(body_limit)
            .await
            .map_err(Failure::Other)?
    } else if let Some(length) = content_length(&headers).map_err(Failure::Other)? {
        conn.read_length(length, body_limit)
            .await
            .map_err(Failure::Other)?
    } else {
        let (body, truncated) = conn
            .read_to_close(body_limit)
            .await
            .map_err(Failure::Other)?;
        (body, truncated, false)
    };
    let reusable = version_11 && !close && complete && !truncated && conn.start == conn.buf.len();
    Ok((
        Answer {
            status,
            headers,
            body,
            truncated,
        },
        reusable.then_some(conn.stream),
    ))
}

/// A stream with the bytes read but not yet consumed (`buf[start..]`).
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    start: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Reads more bytes; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        let len = self.buf.len();
        let spare = (self.buf.capacity() - len).max(INITIAL_BUFFER);
        self.buf.resize(len + spare, 0);
        let n = self.stream.read(&mut self.buf[len..]).await;
        self.buf.truncate(len + *n.as_ref().unwrap_or(&0));
        n
    }

    /// Reads and parses one response head (`httparse`), consuming it.
    async fn read_head(&mut self) -> Result<Head, WireError> {
        loop {
            if let Some((head, len)) = parse_head(self.pending())? {
                self.start += len;
                return Ok(head);
            }
            if self.pending().len() > MAX_HEAD {
                return Err(WireError::Protocol(format!(
                    "response head larger than {MAX_HEAD} bytes"
                )));
            }
            if self.fill().await? == 0 {
                return Err(WireError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a complete response head",
                )));
            }
        }
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, WireError> {
        loop {
            if let Some(end) = memmem::find(self.pending(), b"\r\n") {
                let line = self.pending()[..end].to_vec();
                self.start += end + 2;
                return Ok(line);
            }
            if self.pending().len() > MAX_HEAD {
                return Err(WireError::Protocol("chunk line too long".to_owned()));
            }
            if self.fill().await? == 0 {
                return Err(eof("in a chunked body"));
            }
        }
    }

    /// Moves up to `n` pending-or-read bytes into `out` (beyond `limit`,
    /// they are discarded); returns whether all `n` arrived.
    async fn take(
        &mut self,
        mut n: usize,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), WireError> {
        while n > 0 {
            if self.pending().is_empty() && self.fill().await? == 0 {
                return Err(eof("in the body"));
            }
            let k = n.min(self.pending().len());
            let room = limit.saturating_sub(out.len()).min(k);
            out.extend_from_slice(&self.pending()[..room]);
            self.start += k;
            n -= k;
        }
        Ok(())
    }

    async fn read_length(
        &mut self,
        length: u64,
        limit: usize,
    ) -> Result<(Vec<u8>, bool, bool), WireError> {
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length > limit {
            // Do not read a huge body just to throw it away.
            let mut body = Vec::new();
            let pending = self.pending().len().min(limit);
            body.extend_from_slice(&self.pending()[..pending]);
            return Ok((body, true, false));
        }
        let mut body = Vec::with_capacity(length);
        self.take(length, &mut body, limit).await?;
        Ok((body, false, true))
    }

    async fn read_chunked(&mut self, limit: usize) -> Result<(Vec<u8>, bool, bool), WireError> {
        let mut body = Vec::new();
        let mut total: usize = 0;
        loop {
            let line = self.read_line().await?;
            let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
            let size_text = std::str::from_utf8(size_text)
                .map_err(|_| WireError::Protocol("malformed chunk size".to_owned()))?;
            let size = usize::from_str_radix(size_text.trim(), 16)
                .map_err(|_| WireError::Protocol("malformed chunk size".to_owned()))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok((body, false, true));
            }
            total = total.saturating_add(size);
            if total > limit {
                return Ok((body, true, false));
            }
            self.take(size, &mut body, limit).await?;
            if !self.read_line().await?.is_empty() {
                return Err(WireError::Protocol("chunk not followed by CRLF".to_owned()));
            }
        }
    }

    async fn read_to_close(&mut self, limit: usize) -> Result<(Vec<u8>, bool), WireError> {
        let mut body = Vec::new();
        loop {
            let pending = self.pending();
            if body.len() + pending.len() > limit {
                let room = limit - body.len();
                body.extend_from_slice(&pending[..room]);
                return Ok((body, true));
            }
            body.extend_from_slice(pending);
            self.start = self.buf.len();
            if self.fill().await? == 0 {
                return Ok((body, false));
            }
        }
    }
}

fn eof(where_: &str) -> WireError {
    WireError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {where_}"),
    ))
}

/// A response head: status, whether HTTP/1.1, headers.
type Head = (StatusCode, bool, HeaderMap);

/// Parses a response head at the start of `buf` with `httparse`: `None`
/// while incomplete, else the head and its length (through the empty
/// line). Header lines whose value `http` rejects are skipped.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, WireError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WireError::Protocol(format!(
                "more than {MAX_HEADERS} response headers"
            )));
        }
        Err(e) => {
            return Err(WireError::Protocol(format!(
                "not an HTTP/1.x response ({e})"
            )));
        }
    };
    let version_11 = response.version == Some(1);
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| WireError::Protocol("malformed status code".to_owned()))?;
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value.trim_ascii()),
        ) {
            headers.append(name, value);
        }
    }
    Ok(Some(((status, version_11, headers), len)))
}

fn header_has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, WireError> {
    let mut values = headers.get_all("content-length").iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let parse = |v: &HeaderValue| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
    let length =
        parse(first).ok_or_else(|| WireError::Protocol("malformed Content-Length".to_owned()))?;
    if values.any(|v| parse(v) != Some(length)) {
        return Err(WireError::Protocol("conflicting Content-Length".to_owned()));
    }
    Ok(Some(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8080/prefix/v1/models?x=1").unwrap();
        assert_eq!(t.address, "127.0.0.1:8080");
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(t.path, "/prefix/v1/models?x=1");
        let t = Target::parse("http://mac-studio.local/v1/models").unwrap();
        assert_eq!(t.address, "mac-studio.local:80");
        assert_eq!(t.host_header, "mac-studio.local");
        let t = Target::parse("http://[::1]:9000/v1/models").unwrap();
        assert_eq!(t.address, "[::1]:9000");
        assert!(Target::parse("https://a/v1/models").is_none());
        assert!(Target::parse("http://user:pw@a/v1/models").is_none());
        assert!(Target::parse("not a url").is_none());
    }

    #[test]
    fn heads() {
        let full = |head: &[u8]| {
            let mut buf = head.to_vec();
            buf.extend_from_slice(b"\r\n\r\nbody");
            let ((status, v11, headers), len) = parse_head(&buf).unwrap().unwrap();
            assert_eq!(&buf[len..], b"body");
            (status, v11, headers)
        };
        let (status, v11, headers) = full(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nConnection: keep-alive, Close",
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(v11);
        assert_eq!(headers.get("retry-after").unwrap(), "7");
        assert!(header_has_token(&headers, "connection", "close"));
        let (status, v11, _) = full(b"HTTP/1.0 200");
        assert_eq!(status, StatusCode::OK);
        assert!(!v11);
        // Incomplete: more bytes needed.
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
                .unwrap()
                .is_none()
        );
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert!(matches!(parse_head(bad), Err(WireError::Protocol(_))));
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X-A: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            parse_head(many.as_bytes()),
            Err(WireError::Protocol(_))
        ));
        let (_, _, headers) = full(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6");
        assert!(content_length(&headers).is_err());
    }
}
