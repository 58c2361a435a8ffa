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
            let mut p = ResponseParser::new(Limits { max_body_bytes: 256 << 20, ..Default::default() });
            let mut body = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                while let Some(item) = p.next_item()? {
                    match item {
                        ResponseItem::Head => {}
                        ResponseItem::Body(b) => body.extend_from_slice(&b),
                        ResponseItem::End => {}
                    }
                }
                if p.is_done() {
                    break;
                }
                let n = self.stream.read(&mut buf).await?;
                if n == 0 {
                    if let Some(ResponseItem::Body(b)) = p.eof()? {
                        body.extend_from_slice(&b);
                    }
                    self.reusable = false;
                    break;
                }
                p.push(&buf[..n]);
            }
            let head = p.head().cloned().ok_or(Error::Closed)?;
            if head.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
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
