//! A small sans-IO HTTP/1.1 codec shared by the master (glommio), the agent
//! (tokio-uring) and the SDK/CLI (tokio): request parsing with bounded headers
//! and bodies, response writing (fixed length or chunked streams), a response
//! parser for clients, and RecordIO framing of event streams.
//!
//! It speaks just enough HTTP for the Mesos v1 APIs: keep-alive, `Content-Length`
//! and chunked bodies, no pipelining beyond what callers drive themselves.

use std::fmt::Write as _;

/// Limits applied to what a peer sends.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_header_bytes: 16 << 10, max_headers: 64, max_body_bytes: 8 << 20 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    #[error("request headers exceed {0} bytes")]
    HeadersTooLarge(usize),
    #[error("body exceeds {0} bytes")]
    BodyTooLarge(usize),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl HttpError {
    /// The status a server answers this error with before closing.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadersTooLarge(_) => 431,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::Unsupported(_) => 501,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
}

impl Request {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The value of query parameter `key`, if present.
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Incremental request parser for one connection. Bodies are decoded as
/// bytes arrive (chunked ones too), and what it buffers is bounded by the
/// header and body limits.
#[derive(Debug)]
pub struct RequestParser {
    buf: Inbox,
    limits: Limits,
    /// A request whose head is parsed and whose body is still arriving.
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    req: Request,
    body: BodyProgress,
}

#[derive(Debug)]
enum BodyProgress {
    Length(usize),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// In a chunk with this many bytes left, then its CRLF.
    Chunk(usize),
    /// After the last chunk: trailer lines until an empty one; counts them.
    Trailers(usize),
}

/// Bytes received and not yet consumed by a parser. Consuming from the front
/// moves an offset instead of the bytes after it (a read of many small
/// messages would otherwise move the rest of the buffer once per message);
/// the consumed front is dropped when new bytes arrive and it is at least
/// as long as what remains, so each byte moves at most once more.
#[derive(Debug, Default)]
struct Inbox {
    buf: Vec<u8>,
    start: usize,
}

impl Inbox {
    fn push(&mut self, bytes: &[u8]) {
        crate::compact_front(&mut self.buf, &mut self.start);
        self.buf.extend_from_slice(bytes);
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.buf.len());
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// The first `n` bytes, consumed.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let v = self[..n].to_vec();
        self.consume(n);
        v
    }

    fn take_all(&mut self) -> Vec<u8> {
        self.take(self.len())
    }
}

impl std::ops::Deref for Inbox {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Longest chunk-size or trailer line accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// Most trailer lines accepted.
const MAX_TRAILERS: usize = 64;

impl RequestParser {
    pub fn new(limits: Limits) -> RequestParser {
        RequestParser { buf: Inbox::default(), limits, partial: None }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.push(bytes);
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete request, `None` if more bytes are needed, or an error
    /// after which the connection must answer [`HttpError::status`] and close.
    pub fn next_request(&mut self) -> Result<Option<Request>, HttpError> {
        if self.partial.is_none() && !self.parse_head()? {
            return Ok(None);
        }
        if self.parse_body()? {
            Ok(self.partial.take().map(|p| p.req))
        } else {
            Ok(None)
        }
    }

    /// Parses a request head off the buffer; false if it is not complete yet.
    fn parse_head(&mut self) -> Result<bool, HttpError> {
        let mut headers = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > self.limits.max_header_bytes {
                    return Err(HttpError::HeadersTooLarge(self.limits.max_header_bytes));
                }
                return Ok(false);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::Malformed(format!("more than {} headers", self.limits.max_headers)))
            }
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        };
        if head_len > self.limits.max_header_bytes {
            return Err(HttpError::HeadersTooLarge(self.limits.max_header_bytes));
        }
        let method = req.method.unwrap_or("").to_string();
        let target = req.path.unwrap_or("/");
        let version = req.version.unwrap_or(1);
        let headers: Vec<(String, String)> =
            req.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.to_string(), String::new()),
        };
        let connection = find_header(&headers, "connection").map(|v| v.to_ascii_lowercase());
        let keep_alive = match connection.as_deref() {
            Some(v) if v.contains("close") => false,
            Some(v) if v.contains("keep-alive") => true,
            _ => version == 1,
        };
        let te = find_header(&headers, "transfer-encoding").map(|v| v.to_ascii_lowercase());
        let body = match (te, find_header(&headers, "content-length")) {
            (Some(te), _) if te.trim() == "chunked" => BodyProgress::ChunkSize,
            (Some(te), _) => return Err(HttpError::Unsupported(format!("transfer-encoding {te}"))),
            (None, Some(cl)) => {
                let n: usize =
                    cl.trim().parse().map_err(|_| HttpError::Malformed(format!("bad content-length {cl:?}")))?;
                if n > self.limits.max_body_bytes {
                    return Err(HttpError::BodyTooLarge(self.limits.max_body_bytes));
                }
                BodyProgress::Length(n)
            }
            (None, None) => BodyProgress::Length(0),
        };
        self.buf.consume(head_len);
        self.partial =
            Some(Partial { req: Request { method, path, query, headers, body: Vec::new(), keep_alive }, body });
        Ok(true)
    }

    /// Moves body bytes from the buffer into the partial request; true when
    /// the body is complete. The buffer never holds more than one chunk line
    /// or what one read returned beyond the body.
    fn parse_body(&mut self) -> Result<bool, HttpError> {
        let max = self.limits.max_body_bytes;
        let p = self.partial.as_mut().expect("head parsed");
        loop {
            match p.body {
                BodyProgress::Length(n) => {
                    if self.buf.len() < n {
                        return Ok(false);
                    }
                    p.req.body = self.buf.take(n);
                    return Ok(true);
                }
                BodyProgress::ChunkSize => {
                    let Some(end) = find_crlf(&self.buf) else {
                        if self.buf.len() > MAX_CHUNK_LINE {
                            return Err(HttpError::Malformed("chunk size line too long".into()));
                        }
                        return Ok(false);
                    };
                    let line =
                        std::str::from_utf8(&self.buf[..end]).map_err(|_| HttpError::Malformed("chunk size".into()))?;
                    let size_str = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size_str, 16)
                        .map_err(|_| HttpError::Malformed(format!("chunk size {size_str:?}")))?;
                    if size > max.saturating_sub(p.req.body.len()) {
                        return Err(HttpError::BodyTooLarge(max));
                    }
                    self.buf.consume(end + 2);
                    p.body = if size == 0 { BodyProgress::Trailers(0) } else { BodyProgress::Chunk(size) };
                }
                BodyProgress::Chunk(0) => {
                    if self.buf.len() < 2 {
                        return Ok(false);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(HttpError::Malformed("chunk not terminated by CRLF".into()));
                    }
                    self.buf.consume(2);
                    p.body = BodyProgress::ChunkSize;
                }
                BodyProgress::Chunk(left) => {
                    if self.buf.is_empty() {
                        return Ok(false);
                    }
                    let n = left.min(self.buf.len());
                    p.req.body.extend_from_slice(&self.buf[..n]);
                    self.buf.consume(n);
                    p.body = BodyProgress::Chunk(left - n);
                }
                BodyProgress::Trailers(seen) => {
                    let Some(end) = find_crlf(&self.buf) else {
                        if self.buf.len() > MAX_CHUNK_LINE {
                            return Err(HttpError::Malformed("trailer line too long".into()));
                        }
                        return Ok(false);
                    };
                    self.buf.consume(end + 2);
                    if end == 0 {
                        return Ok(true);
                    }
                    if seen >= MAX_TRAILERS {
                        return Err(HttpError::Malformed(format!("more than {MAX_TRAILERS} trailers")));
                    }
                    p.body = BodyProgress::Trailers(seen + 1);
                }
            }
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A complete response with a fixed-length body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status).header("Content-Type", "text/plain; charset=utf-8").body(body.into().into_bytes())
    }

    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response::new(status).header("Content-Type", "application/json").body(body)
    }

    pub fn header(mut self, k: &str, v: impl Into<String>) -> Response {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    pub fn body(mut self, b: Vec<u8>) -> Response {
        self.body = b;
        self
    }

    /// Serializes with `Content-Length` (always present, so clients never read
    /// to end of stream), and `Connection: close` when the connection will close.
    pub fn encode(&self, keep_alive: bool) -> Vec<u8> {
        let mut head = String::with_capacity(128);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason_phrase(self.status));
        for (k, v) in &self.headers {
            let _ = write!(head, "{k}: {v}\r\n");
        }
        let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// The head of a chunked streaming response (no `Content-Length`).
pub fn stream_head(status: u16, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut head = String::with_capacity(128);
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    head.into_bytes()
}

/// One chunk of a chunked body.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A RecordIO record (`<length>\n<bytes>`) wrapped in one HTTP chunk, ready to
/// write to a subscription stream. Encoded once per event and shared by every
/// recipient.
pub fn recordio_chunk(record: &[u8]) -> Vec<u8> {
    let prefix = format!("{}\n", record.len());
    let n = prefix.len() + record.len();
    let mut out = Vec::with_capacity(n + 12);
    out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(record);
    out.extend_from_slice(b"\r\n");
    out
}

/// Splits a RecordIO byte stream into records, bounded by `max_record_bytes`.
#[derive(Debug)]
pub struct RecordIoDecoder {
    buf: Inbox,
    max_record_bytes: usize,
}

impl RecordIoDecoder {
    pub fn new(max_record_bytes: usize) -> RecordIoDecoder {
        RecordIoDecoder { buf: Inbox::default(), max_record_bytes }
    }

    pub fn push(&mut self, b: &[u8]) {
        self.buf.push(b);
    }

    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > 20 {
                return Err(HttpError::Malformed("RecordIO length line too long".into()));
            }
            return Ok(None);
        };
        let len: usize = std::str::from_utf8(&self.buf[..nl])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| HttpError::Malformed("RecordIO length is not a number".into()))?;
        if len > self.max_record_bytes {
            return Err(HttpError::BodyTooLarge(self.max_record_bytes));
        }
        if self.buf.len() < nl + 1 + len {
            return Ok(None);
        }
        let rec = self.buf[nl + 1..nl + 1 + len].to_vec();
        self.buf.consume(nl + 1 + len);
        Ok(Some(rec))
    }
}

/// The head of a response, as seen by a client.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Client-side incremental response parser: the head, then body bytes as they
/// arrive (de-chunked), so that streams can be consumed record by record.
#[derive(Debug)]
pub struct ResponseParser {
    buf: Inbox,
    head: Option<ResponseHead>,
    body: BodyState,
    limits: Limits,
}

#[derive(Debug)]
enum BodyState {
    Unknown,
    Length(usize),
    /// In a chunk with this many bytes left (then CRLF).
    Chunk(usize),
    /// Between chunks: expecting a size line.
    ChunkSize,
    UntilClose,
    Done,
}

/// What the parser produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseItem {
    Head,
    Body(Vec<u8>),
    End,
}

impl ResponseParser {
    pub fn new(limits: Limits) -> ResponseParser {
        ResponseParser { buf: Inbox::default(), head: None, body: BodyState::Unknown, limits }
    }

    pub fn push(&mut self, b: &[u8]) {
        self.buf.push(b);
    }

    pub fn head(&self) -> Option<&ResponseHead> {
        self.head.as_ref()
    }

    pub fn is_done(&self) -> bool {
        matches!(self.body, BodyState::Done)
    }

    /// Starts on the next response of a pipelined connection, once this one
    /// is done. Bytes already pushed past its end belong to the next one and
    /// are kept.
    pub fn next_response(&mut self) {
        debug_assert!(self.is_done(), "the current response is not done");
        self.head = None;
        self.body = BodyState::Unknown;
    }

    /// Call when the peer closed the connection.
    pub fn eof(&mut self) -> Result<Option<ResponseItem>, HttpError> {
        match self.body {
            BodyState::UntilClose => {
                self.body = BodyState::Done;
                let rest = self.buf.take_all();
                Ok(Some(if rest.is_empty() { ResponseItem::End } else { ResponseItem::Body(rest) }))
            }
            BodyState::Done => Ok(None),
            _ => Err(HttpError::Malformed("connection closed before the response ended".into())),
        }
    }

    pub fn next_item(&mut self) -> Result<Option<ResponseItem>, HttpError> {
        if self.head.is_none() {
            let mut headers = vec![httparse::EMPTY_HEADER; self.limits.max_headers];
            let mut resp = httparse::Response::new(&mut headers);
            let n = match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > self.limits.max_header_bytes {
                        return Err(HttpError::HeadersTooLarge(self.limits.max_header_bytes));
                    }
                    return Ok(None);
                }
                Err(e) => return Err(HttpError::Malformed(e.to_string())),
            };
            let head = ResponseHead {
                status: resp.code.unwrap_or(0),
                headers: resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect(),
            };
            let chunked = head.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            self.body = if chunked {
                BodyState::ChunkSize
            } else if let Some(cl) = head.header("content-length") {
                let n: usize = cl.trim().parse().map_err(|_| HttpError::Malformed("bad content-length".into()))?;
                if n > self.limits.max_body_bytes {
                    return Err(HttpError::BodyTooLarge(self.limits.max_body_bytes));
                }
                if n == 0 {
                    BodyState::Done
                } else {
                    BodyState::Length(n)
                }
            } else if head.status == 204 || head.status == 304 {
                BodyState::Done
            } else {
                BodyState::UntilClose
            };
            self.head = Some(head);
            self.buf.consume(n);
            return Ok(Some(ResponseItem::Head));
        }
        loop {
            match self.body {
                BodyState::Unknown => unreachable!("head parsed above"),
                BodyState::Done => return Ok(None),
                BodyState::UntilClose => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(ResponseItem::Body(self.buf.take_all())));
                }
                BodyState::Length(left) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(self.buf.len());
                    let part: Vec<u8> = self.buf.take(n);
                    self.body = if left == n { BodyState::Done } else { BodyState::Length(left - n) };
                    return Ok(Some(ResponseItem::Body(part)));
                }
                BodyState::ChunkSize => {
                    let Some(end) = find_crlf(&self.buf) else {
                        if self.buf.len() > 64 {
                            return Err(HttpError::Malformed("chunk size line too long".into()));
                        }
                        return Ok(None);
                    };
                    let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    let size_str = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size_str, 16)
                        .map_err(|_| HttpError::Malformed(format!("chunk size {size_str:?}")))?;
                    if size > self.limits.max_body_bytes {
                        return Err(HttpError::BodyTooLarge(self.limits.max_body_bytes));
                    }
                    if size == 0 {
                        // Skip trailers up to the empty line.
                        let mut pos = end + 2;
                        loop {
                            let Some(e) = find_crlf(&self.buf[pos..]) else {
                                return Ok(None);
                            };
                            pos += e + 2;
                            if e == 0 {
                                break;
                            }
                        }
                        self.buf.consume(pos);
                        self.body = BodyState::Done;
                        return Ok(Some(ResponseItem::End));
                    }
                    self.buf.consume(end + 2);
                    self.body = BodyState::Chunk(size);
                }
                BodyState::Chunk(left) => {
                    if left == 0 {
                        if self.buf.len() < 2 {
                            return Ok(None);
                        }
                        if &self.buf[..2] != b"\r\n" {
                            return Err(HttpError::Malformed("chunk not terminated by CRLF".into()));
                        }
                        self.buf.consume(2);
                        self.body = BodyState::ChunkSize;
                        continue;
                    }
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(self.buf.len());
                    let part: Vec<u8> = self.buf.take(n);
                    self.body = BodyState::Chunk(left - n);
                    return Ok(Some(ResponseItem::Body(part)));
                }
            }
        }
    }
}

/// Builds a client request with a body.
pub fn request(method: &str, host: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = String::with_capacity(128);
    let _ = write!(head, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_in_pieces_and_keep_alive() {
        let raw = b"POST /api/v1/scheduler HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}GET /health?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n";
        let mut p = RequestParser::new(Limits::default());
        let mut reqs = Vec::new();
        for b in raw.chunks(5) {
            p.push(b);
            while let Some(r) = p.next_request().unwrap() {
                reqs.push(r);
            }
        }
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].body, b"{}");
        assert!(reqs[0].keep_alive);
        assert_eq!(reqs[0].header("content-type"), Some("application/json"));
        assert_eq!(reqs[1].path, "/health");
        assert_eq!(reqs[1].query_param("x"), Some("1"));
        assert!(!reqs[1].keep_alive);
    }

    #[test]
    fn hostile_chunk_sizes_are_errors_not_panics() {
        let lim = Limits { max_header_bytes: 1024, max_headers: 8, max_body_bytes: 100 };
        for body in [
            &b"1\r\nA\r\nffffffffffffffff\r\nX"[..],
            &b"fffffffffffffffffffffff\r\n"[..],
            &b"65\r\n"[..],
            &b"zz\r\n"[..],
        ] {
            let mut p = RequestParser::new(lim);
            p.push(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
            p.push(body);
            assert!(p.next_request().is_err(), "{body:?}");
        }
        // A size line that never ends is bounded.
        let mut p = RequestParser::new(lim);
        p.push(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        p.push(&[b'1'; 2000]);
        assert!(p.next_request().is_err());
        // Endless trailers are bounded too.
        let mut p = RequestParser::new(lim);
        p.push(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n");
        for _ in 0..100 {
            p.push(b"x: y\r\n");
        }
        assert!(p.next_request().is_err());
    }

    #[test]
    fn chunked_body_arrives_byte_by_byte() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nT: v\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
        let mut p = RequestParser::new(Limits::default());
        let mut got = Vec::new();
        for b in raw.chunks(1) {
            p.push(b);
            while let Some(r) = p.next_request().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].body, b"abcde");
        assert_eq!(got[1].path, "/x");
    }

    #[test]
    fn chunked_request_body() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut p = RequestParser::new(Limits::default());
        p.push(raw);
        assert_eq!(p.next_request().unwrap().unwrap().body, b"abcde");
    }

    #[test]
    fn limits_and_garbage() {
        let lim = Limits { max_header_bytes: 64, max_headers: 4, max_body_bytes: 10 };
        let mut p = RequestParser::new(lim);
        p.push(b"\x00\x01garbage\r\n\r\n");
        assert_eq!(p.next_request().unwrap_err().status(), 400);
        let mut p = RequestParser::new(lim);
        p.push(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n");
        assert_eq!(p.next_request().unwrap_err().status(), 413);
        let mut p = RequestParser::new(lim);
        p.push(&[b'a'; 100]);
        assert_eq!(p.next_request().unwrap_err().status(), 431);
        let mut p = RequestParser::new(lim);
        p.push(b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n");
        assert_eq!(p.next_request().unwrap_err().status(), 400);
    }

    #[test]
    fn streaming_response_round_trip() {
        let mut wire = stream_head(200, &[("Mesos-Stream-Id", "s1"), ("Content-Type", "application/json")]);
        wire.extend(recordio_chunk(br#"{"type":"SUBSCRIBED"}"#));
        wire.extend(recordio_chunk(br#"{"type":"HEARTBEAT"}"#));
        wire.extend_from_slice(LAST_CHUNK);
        let mut p = ResponseParser::new(Limits::default());
        let mut r = RecordIoDecoder::new(1 << 20);
        let mut records = Vec::new();
        let mut ended = false;
        for b in wire.chunks(7) {
            p.push(b);
            while let Some(item) = p.next_item().unwrap() {
                match item {
                    ResponseItem::Head => {
                        assert_eq!(p.head().unwrap().header("mesos-stream-id"), Some("s1"))
                    }
                    ResponseItem::Body(b) => {
                        r.push(&b);
                        while let Some(rec) = r.next_record().unwrap() {
                            records.push(String::from_utf8(rec).unwrap());
                        }
                    }
                    ResponseItem::End => ended = true,
                }
            }
        }
        assert!(ended);
        assert_eq!(records, vec![r#"{"type":"SUBSCRIBED"}"#, r#"{"type":"HEARTBEAT"}"#]);
    }

    #[test]
    fn fixed_response_always_has_length() {
        let r = Response::new(202).encode(true);
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("HTTP/1.1 202 Accepted\r\n"));
        assert!(s.contains("Content-Length: 0\r\n"));
        let mut p = ResponseParser::new(Limits::default());
        p.push(s.as_bytes());
        assert_eq!(p.next_item().unwrap(), Some(ResponseItem::Head));
        assert!(p.is_done());
    }

    #[test]
    fn pipelined_responses_are_read_one_after_another() {
        let mut wire = Response::new(202).encode(true);
        wire.extend(Response::text(400, "no such offer").encode(true));
        wire.extend(Response::new(200).body(b"{}".to_vec()).encode(true));
        // Fed in pieces that straddle the responses' boundaries.
        let mut p = ResponseParser::new(Limits::default());
        let mut got = Vec::new();
        let mut body = Vec::new();
        for piece in wire.chunks(11) {
            p.push(piece);
            while let Some(item) = p.next_item().unwrap() {
                if let ResponseItem::Body(b) = item {
                    body.extend(b);
                }
                if p.is_done() {
                    got.push((p.head().unwrap().status, String::from_utf8(std::mem::take(&mut body)).unwrap()));
                    p.next_response();
                }
            }
        }
        assert_eq!(got, [(202, String::new()), (400, "no such offer".into()), (200, "{}".into())]);
    }

    #[test]
    fn recordio_rejects_garbage() {
        let mut r = RecordIoDecoder::new(10);
        r.push(b"abc\n");
        assert!(r.next_record().is_err());
        let mut r = RecordIoDecoder::new(10);
        r.push(b"11\n");
        assert!(r.next_record().is_err());
    }
}
