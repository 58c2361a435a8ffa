//! HTTP/1.1 over tokio with the shared sans-IO codec: keep-alive request
//! connections and RecordIO event streams.

use std::time::Duration;

use agora_proto::http::{self as codec, Limits, RecordIoDecoder, ResponseItem, ResponseParser};
use agora_proto::scheduler::{Call, Encoding, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Error;

/// Largest single event accepted from the master.
pub const MAX_EVENT_BYTES: usize = 64 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect(master: &str) -> Result<TcpStream, Error> {
    let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(master))
        .await
        .map_err(|_| Error::Connect(master.into(), std::io::ErrorKind::TimedOut.into()))?
        .map_err(|e| Error::Connect(master.into(), e))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// A kept-alive connection for requests with fixed-length responses.
pub struct Connection {
    host: String,
    stream: TcpStream,
    reusable: bool,
}

impl Connection {
    pub async fn open(master: &str) -> Result<Connection, Error> {
        Ok(Connection { host: master.to_string(), stream: connect(master).await?, reusable: true })
    }

    /// Whether the server will take another request on this connection.
    pub fn reusable(&self) -> bool {
        self.reusable
    }

    async fn request(&mut self, raw: Vec<u8>) -> Result<(u16, Vec<u8>), Error> {
        tokio::time::timeout(CALL_TIMEOUT, async {
            self.stream.write_all(&raw).await?;
            let mut p = ResponseParser::new(answer_limits());
            let (head, body, last) = read_response(&mut self.stream, &mut p, &mut vec![0u8; 64 << 10]).await?;
            if last {
                self.reusable = false;
            }
            Ok((head.status, body))
        })
        .await
        .map_err(|_| Error::Io(std::io::ErrorKind::TimedOut.into()))?
    }

    /// POST with a body of `content_type` (answers are read as plain bytes).
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), Error> {
        let mut h = vec![("Content-Type", content_type), ("Accept", "application/json")];
        h.extend_from_slice(headers);
        self.request(codec::request("POST", &self.host.clone(), path, &h, body)).await
    }

    pub async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), Error> {
        self.request(codec::request("GET", &self.host.clone(), path, &[], &[])).await
    }
}

/// Requests made on a [`Pipeline`] and not yet answered, at most; more
/// wait for room.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Requests a [`Pipeline`]'s writer sends with one write, at most.
const WRITE_BATCH: usize = 64;

type Answer = Result<(u16, Vec<u8>), Error>;
type Waiter = tokio::sync::oneshot::Sender<Answer>;

/// A kept-alive connection on which requests are pipelined: a request is
/// sent without waiting for the answers to those before it, and a reader
/// task hands each answer (they come back in order) to its caller. A
/// writer task sends every request made meanwhile with one write. Many
/// calls in flight then cost the master one read and one write per batch
/// rather than a round trip each.
///
/// Once any request fails (or the master says `Connection: close`) the
/// pipeline is broken: every request in flight fails with it, and
/// [`Pipeline::is_broken`] says to open another.
pub struct Pipeline {
    host: String,
    requests: tokio::sync::mpsc::Sender<(Vec<u8>, Waiter)>,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Pipeline {
    pub async fn open(master: &str) -> Result<Pipeline, Error> {
        use std::sync::atomic::AtomicBool;
        let (rd, wr) = connect(master).await?.into_split();
        let (requests, to_write) = tokio::sync::mpsc::channel(MAX_IN_FLIGHT);
        let (written, to_answer) = tokio::sync::mpsc::channel(MAX_IN_FLIGHT);
        let broken = std::sync::Arc::new(AtomicBool::new(false));
        let tasks = [
            tokio::spawn(write_requests(wr, to_write, written, broken.clone())),
            tokio::spawn(read_answers(rd, to_answer, broken.clone())),
        ];
        Ok(Pipeline { host: master.to_string(), requests, broken, tasks })
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// POST with a body of `content_type`; the answer's status and body.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), Error> {
        if self.is_broken() {
            return Err(Error::Closed);
        }
        let mut h = vec![("Content-Type", content_type), ("Accept", "application/json")];
        h.extend_from_slice(headers);
        let raw = codec::request("POST", &self.host, path, &h, body);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests.send((raw, tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The writer of a [`Pipeline`]: everything requested meanwhile (up to
/// [`WRITE_BATCH`]) in one write, then its callers queued for the reader,
/// in the same order. A failed write breaks the pipeline; its callers get
/// [`Error::Closed`].
async fn write_requests(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut to_write: tokio::sync::mpsc::Receiver<(Vec<u8>, Waiter)>,
    written: tokio::sync::mpsc::Sender<Waiter>,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut bytes = Vec::new();
    while to_write.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        bytes.clear();
        for (raw, _) in &batch {
            bytes.extend_from_slice(raw);
        }
        if !matches!(tokio::time::timeout(CALL_TIMEOUT, wr.write_all(&bytes)).await, Ok(Ok(()))) {
            break;
        }
        for (_, caller) in batch.drain(..) {
            if written.send(caller).await.is_err() {
                // The reader stopped: the pipeline is broken.
                return;
            }
        }
        if broken.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
    }
    broken.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The reader of a [`Pipeline`]: one answer per waiting caller, in order,
/// each within [`CALL_TIMEOUT`]. The first failure breaks the pipeline; the
/// callers still waiting then get [`Error::Closed`].
async fn read_answers(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut waiting: tokio::sync::mpsc::Receiver<Waiter>,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut p = ResponseParser::new(answer_limits());
    let mut buf = vec![0u8; 64 << 10];
    while let Some(caller) = waiting.recv().await {
        let answer = tokio::time::timeout(CALL_TIMEOUT, read_response(&mut rd, &mut p, &mut buf))
            .await
            .unwrap_or_else(|_| Err(Error::Io(std::io::ErrorKind::TimedOut.into())));
        let last = answer.as_ref().map_or(true, |(_, _, close)| *close);
        if last {
            broken.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = caller.send(answer.map(|(head, body, _)| (head.status, body)));
        if last {
            return;
        }
        p.next_response();
    }
}

/// What an answer to a request may hold.
fn answer_limits() -> Limits {
    Limits { max_body_bytes: 256 << 20, ..Default::default() }
}

/// Reads one response through `p` (bytes past its end stay in `p`, for the
/// next one): its head, its body, and whether the connection ends with it
/// (the peer closed it, which only a response without a length may end
/// with, or said `Connection: close`).
async fn read_response<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    p: &mut ResponseParser,
    buf: &mut [u8],
) -> Result<(codec::ResponseHead, Vec<u8>, bool), Error> {
    let mut body = Vec::new();
    let mut ended = false;
    loop {
        while let Some(item) = p.next_item()? {
            if let ResponseItem::Body(b) = item {
                body.extend_from_slice(&b);
            }
        }
        if p.is_done() {
            break;
        }
        let n = rd.read(buf).await?;
        if n == 0 {
            if let Some(ResponseItem::Body(b)) = p.eof()? {
                body.extend_from_slice(&b);
            }
            ended = true;
            break;
        }
        p.push(&buf[..n]);
    }
    let head = p.head().cloned().ok_or(Error::Closed)?;
    let last = ended || head.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok((head, body, last))
}

/// GET on a fresh connection; the body if the status is 200.
pub async fn get(master: &str, path: &str) -> Result<Vec<u8>, Error> {
    let (status, body) = Connection::open(master).await?.get(path).await?;
    if status != 200 {
        return Err(Error::Status { status, message: String::from_utf8_lossy(&body).into_owned() });
    }
    Ok(body)
}

/// A subscription's event stream.
pub struct EventStream {
    stream: TcpStream,
    parser: ResponseParser,
    records: RecordIoDecoder,
    pub stream_id: String,
    /// An event read ahead (the SUBSCRIBED one), returned first.
    pub(crate) pending: Option<Event>,
    buf: Vec<u8>,
    encoding: Encoding,
}

/// Sends SUBSCRIBE (in `encoding`, asking for events in it) and reads the
/// response head.
pub async fn subscribe(master: &str, call: &Call, encoding: Encoding) -> Result<EventStream, Error> {
    let mut stream = connect(master).await?;
    let raw = codec::request(
        "POST",
        master,
        "/api/v1/scheduler",
        &[("Content-Type", encoding.media_type()), ("Accept", encoding.media_type()), ("Connection", "close")],
        &encoding.encode_call(call),
    );
    stream.write_all(&raw).await?;
    let mut parser = ResponseParser::new(Limits { max_body_bytes: MAX_EVENT_BYTES, ..Default::default() });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if let Some(item) = parser.next_item()? {
            debug_assert_eq!(item, ResponseItem::Head);
            break;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(Error::Closed);
        }
        parser.push(&buf[..n]);
    }
    let head = parser.head().cloned().ok_or(Error::Closed)?;
    if head.status != 200 {
        let mut body = Vec::new();
        while let Ok(Some(ResponseItem::Body(b))) = parser.next_item() {
            body.extend_from_slice(&b);
        }
        return Err(Error::Status { status: head.status, message: String::from_utf8_lossy(&body).into_owned() });
    }
    let stream_id = head.header("mesos-stream-id").unwrap_or("").to_string();
    let sent = head.header("content-type");
    if sent.and_then(Encoding::from_media_type) != Some(encoding) {
        return Err(Error::Decode(format!("asked for {} events, the master sent {sent:?}", encoding.media_type())));
    }
    Ok(EventStream {
        stream,
        parser,
        records: RecordIoDecoder::new(MAX_EVENT_BYTES),
        stream_id,
        pending: None,
        buf,
        encoding,
    })
}

impl EventStream {
    /// The next event, or `None` at the end of the stream.
    pub async fn next_event(&mut self) -> Result<Option<Event>, Error> {
        if let Some(e) = self.pending.take() {
            return Ok(Some(e));
        }
        loop {
            if let Some(rec) = self.records.next_record()? {
                return Ok(Some(self.encoding.decode_event(&rec).map_err(Error::Decode)?));
            }
            match self.parser.next_item()? {
                Some(ResponseItem::Body(b)) => {
                    self.records.push(&b);
                    continue;
                }
                Some(ResponseItem::End) => return Ok(None),
                Some(ResponseItem::Head) => continue,
                None => {}
            }
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                return match self.parser.eof() {
                    Ok(_) => Ok(None),
                    Err(_) => Err(Error::Closed),
                };
            }
            self.parser.push(&self.buf[..n]);
        }
    }
}
