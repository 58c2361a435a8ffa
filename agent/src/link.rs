//! The agent's connection to the master: connect, exchange hellos, carry
//! frames both ways, answer pings, notice a silent master, and reconnect with
//! capped exponential backoff. The agent's main loop sees it as a stream of
//! [`LinkEvent`]s and a sender of frames for the current connection.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use agora_proto::wire::{
    self, AgentToMaster, ArchivedMasterToAgent, Checked, FrameDecoder, Hello, MasterToAgent, HELLO_LEN,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio_uring::net::TcpStream;

/// Frames queued for the master before the connection is dropped as stuck.
const SEND_QUEUE: usize = 16_384;

/// What the agent hands the link for the master.
#[derive(Debug)]
pub enum LinkOut {
    Frame(Vec<u8>),
    /// Answered once everything queued before it has been written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

#[derive(Debug)]
pub enum LinkEvent {
    /// A new connection; frames for the master go into this sender.
    Connected(mpsc::Sender<LinkOut>),
    /// Validated once, here; read in place by the agent.
    Message(Checked<MasterToAgent>),
    Disconnected(String),
}

#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub master: String,
    pub max_frame_bytes: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long to wait for anything from the master before it registers us
    /// (after that the master's ping interval decides).
    pub initial_timeout: Duration,
}

fn resolve(master: &str) -> Result<SocketAddr, String> {
    master
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve master {master:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("master {master:?} resolves to no address"))
}

async fn read_exact(stream: &TcpStream, n: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let buf = Vec::with_capacity(n - out.len());
        let (res, buf) = stream.read(buf).await;
        match res {
            Ok(0) => return Err("the master closed the connection".into()),
            Ok(_) => out.extend_from_slice(&buf),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

async fn connect(cfg: &LinkConfig) -> Result<TcpStream, String> {
    let addr = resolve(&cfg.master)?;
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (res, _) = stream.write_all(Hello::new(cfg.max_frame_bytes).encode().to_vec()).await;
    res.map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(cfg.initial_timeout, read_exact(&stream, HELLO_LEN))
        .await
        .map_err(|_| "the master did not answer the hello".to_string())??;
    let hello = Hello::decode(reply[..].try_into().expect("16 bytes")).map_err(|e| e.to_string())?;
    if hello.status == Hello::REFUSED_VERSION || hello.version != wire::PROTOCOL_VERSION {
        return Err(wire::FrameError::Version { theirs: hello.version, ours: wire::PROTOCOL_VERSION }.to_string());
    }
    Ok(stream)
}

/// Runs forever: one connection at a time, events into `events`.
pub async fn run(cfg: LinkConfig, events: mpsc::Sender<LinkEvent>) {
    let mut backoff = cfg.backoff_min;
    let mut last_error = String::new();
    loop {
        match connect(&cfg).await {
            Ok(stream) => {
                backoff = cfg.backoff_min;
                last_error.clear();
                tracing::info!(master = %cfg.master, "connected to the master");
                let why = serve(&cfg, stream, &events).await;
                tracing::warn!(master = %cfg.master, "lost the master: {why}");
                if events.send(LinkEvent::Disconnected(why)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                if e != last_error {
                    tracing::warn!(master = %cfg.master, "{e}; retrying");
                    last_error = e;
                }
            }
        }
        // Jitter so that a restarted master is not hit by every agent at once.
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// Bytes the link's writer gathers for one write, at most (past it, the
/// rest waits for the next write).
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// Sends as much of `buf` as the socket takes without waiting; how much.
fn send_now(fd: std::os::fd::RawFd, buf: &[u8]) -> std::io::Result<usize> {
    let mut sent = 0;
    while sent < buf.len() {
        let rest = &buf[sent..];
        // SAFETY: send(2) reads `rest`, which is valid for its length; the
        // fd is the link's socket, alive while `stream` is.
        let n = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => break,
                _ => return Err(e),
            }
        }
        sent += n as usize;
    }
    Ok(sent)
}

async fn serve(cfg: &LinkConfig, stream: TcpStream, events: &mpsc::Sender<LinkEvent>) -> String {
    let stream = Rc::new(stream);
    let (tx, mut rx) = mpsc::channel::<LinkOut>(SEND_QUEUE);
    let writer = {
        let stream = stream.clone();
        tokio_uring::spawn(async move {
            // Everything queued goes out in one write (a batch of launches
            // makes a burst of updates); a flush is answered once what was
            // queued before it has been written.
            let mut batch = Vec::new();
            let mut flushed = Vec::new();
            while let Some(out) = rx.recv().await {
                let mut next = Some(out);
                while let Some(out) = next.take() {
                    match out {
                        LinkOut::Frame(frame) => batch.extend_from_slice(&frame),
                        LinkOut::Flush(done) => flushed.push(done),
                    }
                    if batch.len() < WRITE_BATCH_BYTES {
                        next = rx.try_recv().ok();
                    }
                }
                if !batch.is_empty() {
                    // Sent at once when the socket has room. An io_uring
                    // write is only submitted when the runtime next goes
                    // idle, which a busy event loop (a batch of launches)
                    // puts off; only what does not fit waits for it.
                    let sent = match send_now(stream.as_raw_fd(), &batch) {
                        Ok(n) => n,
                        Err(_) => break,
                    };
                    if sent < batch.len() {
                        let (res, _) = stream.write_all(batch[sent..].to_vec()).await;
                        if res.is_err() {
                            break;
                        }
                    }
                    batch.clear();
                    if batch.capacity() > WRITE_BATCH_BYTES * 2 {
                        batch = Vec::new();
                    }
                }
                for done in flushed.drain(..) {
                    let _ = done.send(());
                }
            }
        })
    };
    if events.send(LinkEvent::Connected(tx.clone())).await.is_err() {
        writer.abort();
        return "agent stopping".into();
    }
    // Reads wait on the socket's readiness (epoll), not on an io_uring
    // read: the runtime submits io_uring operations only when it goes idle,
    // and a busy event loop (a batch of launches) would hold back the
    // acknowledgements that let each task's next update go out.
    // SAFETY: `stream` owns the fd and outlives `readable`, which is
    // dropped before the stream is shut down and closed.
    let readable = match unsafe { AsyncFd::register_with_interest(Fd(stream.as_raw_fd()), Interest::READABLE) } {
        Ok(r) => r,
        Err(e) => {
            writer.abort();
            return format!("cannot watch the connection: {e}");
        }
    };
    let mut decoder = FrameDecoder::new(cfg.max_frame_bytes);
    let mut timeout = cfg.initial_timeout;
    let why = 'conn: loop {
        match tokio::time::timeout(timeout, recv_ready(&readable, &mut decoder)).await {
            Err(_) => break format!("no word from the master for {timeout:?}"),
            Ok(Ok(0)) => break "the master closed the connection".to_string(),
            Ok(Err(e)) => break e.to_string(),
            Ok(Ok(_)) => {}
        }
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn format!("bad frame from the master: {e}"),
            };
            let msg = match Checked::<MasterToAgent>::new(frame) {
                Ok(m) => m,
                Err(e) => break 'conn format!("bad frame from the master: {e}"),
            };
            match msg.get() {
                // Pings are answered here, whatever the main loop is doing.
                ArchivedMasterToAgent::Ping { seq } => {
                    let pong = AgentToMaster::Pong { seq: seq.to_native() };
                    if tx.try_send(LinkOut::Frame(wire::encode(&pong))).is_err() {
                        break 'conn "the send queue to the master is full".to_string();
                    }
                }
                m => {
                    if let ArchivedMasterToAgent::Registered { ping_interval_ms, max_missed_pings, .. } = m {
                        let ms = ping_interval_ms.to_native().saturating_mul(max_missed_pings.to_native() as u64 + 1);
                        timeout = Duration::from_millis(ms.max(100));
                    }
                    if events.send(LinkEvent::Message(msg)).await.is_err() {
                        break 'conn "agent stopping".to_string();
                    }
                }
            }
        }
    };
    writer.abort();
    drop(readable);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    why
}

/// A socket's fd, watched by [`AsyncFd`] (which does not own it).
struct Fd(std::os::fd::RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Waits until the socket is readable, then reads what it has into the
/// decoder; how many bytes (0 at the end of the stream).
async fn recv_ready(fd: &AsyncFd<Fd>, decoder: &mut FrameDecoder) -> std::io::Result<usize> {
    loop {
        let mut ready = fd.readable().await?;
        let room = decoder.read_buf(64 << 10);
        let got = ready.try_io(|f| {
            // SAFETY: recv(2) writes at most `room.len()` bytes into `room`;
            // the fd is the link's socket, alive while the link serves it.
            let n = unsafe { libc::recv(f.get_ref().0, room.as_mut_ptr().cast(), room.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match got {
            Ok(Ok(n)) => {
                decoder.commit(n);
                return Ok(n);
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => decoder.commit(0),
            Ok(Err(e)) => {
                decoder.commit(0);
                return Err(e);
            }
            // Not readable after all: wait again.
            Err(_) => decoder.commit(0),
        }
    }
}
