//! The agent's connection to the master: connect, exchange hellos, carry
//! frames both ways, answer pings, notice a silent master, and reconnect with
//! capped exponential backoff. The agent's main loop sees it as a stream of
//! [`LinkEvent`]s and a sender of frames for the current connection.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use agora_proto::wire::{self, AgentToMaster, FrameDecoder, Hello, MasterToAgent, HELLO_LEN};
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
    Message(MasterToAgent),
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

async fn serve(cfg: &LinkConfig, stream: TcpStream, events: &mpsc::Sender<LinkEvent>) -> String {
    let stream = Rc::new(stream);
    let (tx, mut rx) = mpsc::channel::<LinkOut>(SEND_QUEUE);
    let writer = {
        let stream = stream.clone();
        tokio_uring::spawn(async move {
            while let Some(out) = rx.recv().await {
                match out {
                    LinkOut::Frame(frame) => {
                        let (res, _) = stream.write_all(frame).await;
                        if res.is_err() {
                            break;
                        }
                    }
                    LinkOut::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        })
    };
    if events.send(LinkEvent::Connected(tx.clone())).await.is_err() {
        writer.abort();
        return "agent stopping".into();
    }
    let mut decoder = FrameDecoder::new(cfg.max_frame_bytes);
    let mut timeout = cfg.initial_timeout;
    let why = 'conn: loop {
        let buf = Vec::with_capacity(64 << 10);
        let (res, buf) = match tokio::time::timeout(timeout, stream.read(buf)).await {
            Ok(r) => r,
            Err(_) => break format!("no word from the master for {timeout:?}"),
        };
        match res {
            Ok(0) => break "the master closed the connection".to_string(),
            Err(e) => break e.to_string(),
            Ok(_) => decoder.push(&buf),
        }
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn format!("bad frame from the master: {e}"),
            };
            let msg = match wire::decode::<MasterToAgent>(&frame) {
                Ok(m) => m,
                Err(e) => break 'conn format!("bad frame from the master: {e}"),
            };
            match msg {
                // Pings are answered here, whatever the main loop is doing.
                MasterToAgent::Ping { seq } => {
                    if tx.try_send(LinkOut::Frame(wire::encode(&AgentToMaster::Pong { seq }))).is_err() {
                        break 'conn "the send queue to the master is full".to_string();
                    }
                }
                m => {
                    if let MasterToAgent::Registered { ping_interval_ms, max_missed_pings, .. } = &m {
                        let ms = ping_interval_ms.saturating_mul(*max_missed_pings as u64 + 1).max(100);
                        timeout = Duration::from_millis(ms);
                    }
                    if events.send(LinkEvent::Message(m)).await.is_err() {
                        break 'conn "agent stopping".to_string();
                    }
                }
            }
        }
    };
    writer.abort();
    let _ = stream.shutdown(std::net::Shutdown::Both);
    why
}
