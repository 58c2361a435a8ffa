//! The glommio shell: one executor per core ("shard"), each accepting
//! connections on the master's port (`SO_REUSEPORT`), which serves both agents
//! (rkyv frames, told apart by their hello magic) and HTTP.
//!
//! Shard 0 also runs the core: the sans-IO [`Master`](crate::core::Master).
//! A connection lives on the shard that accepted it for its whole life: that
//! shard reads and validates its frames, parses its HTTP and JSON, answers an
//! agent's pings and detects a silent agent, and writes what the core sends
//! it. Shards share no memory; everything between them travels as
//! [`ShardMsg`]s over a mesh of glommio `shared_channel`s, one single-producer
//! single-consumer channel per ordered pair of shards (connections of shard 0
//! use a local channel). Each channel end is created on the main thread and
//! moved to exactly one shard. (glommio's own `MeshBuilder` is not used: it
//! shares an `Rc` between the threads that join it.)
//!
//! Every queue here is bounded. A framework stream or an agent connection
//! whose outgoing queue is full is closed (a slow consumer must not make the
//! master buffer without bound); the core hears about it as a closed
//! connection and applies the usual failover rules. A framework stream is
//! bounded both in events and in bytes: the bytes of an event sent to many
//! streams are shared, but each stream counts them until it has written
//! them.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agora_proto::http::{self, Limits, RequestParser, Response};
use agora_proto::scheduler::{Call, Encoding, Event};
use agora_proto::wire::{
    self, AgentToMaster, ArchivedAgentToMaster, Checked, FrameDecoder, Hello, MasterToAgent, HELLO_LEN,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::channels::shared_channel::{self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::{spawn_local, CpuSet, LocalExecutorPoolBuilder, PoolPlacement};

use crate::api::{self, RenderKind, Route, ShellStats};
use crate::core::{self, ApiError, ConnId, Input, Master, Now, Subscription};
use crate::outq::OutQueue;
use crate::registry::{FileRegistry, Registry};

/// Everything the shell needs to run.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    pub n_shards: usize,
    pub core: core::Config,
    /// `None` keeps the registry in memory only.
    pub registry_path: Option<PathBuf>,
    pub max_frame_bytes: u32,
    pub http_limits: Limits,
    /// Events queued for one framework stream before it is disconnected.
    pub max_stream_queue: usize,
    /// Bytes of events queued for one framework stream before it is
    /// disconnected (an event is counted until it has been written).
    pub max_stream_bytes: usize,
    /// Frames queued for one agent before its connection is closed.
    pub max_agent_queue: usize,
    /// Messages queued toward the core before senders wait.
    pub core_queue: usize,
    /// Capacity of each cross-shard channel.
    pub mesh_queue: usize,
    pub max_connections_per_shard: usize,
    pub tick_ms: u64,
    /// Flags shown in `/master/state`.
    pub flags: BTreeMap<String, String>,
}

/// Counters every shard updates.
#[derive(Debug, Default)]
pub struct ShellCounters {
    pub http_requests: AtomicU64,
    pub agent_frames_invalid: AtomicU64,
    pub streams_dropped_slow: AtomicU64,
    pub agents_dropped_slow: AtomicU64,
    pub connections_refused: AtomicU64,
}

/// A request from a shard to the core.
#[derive(Debug)]
enum ToCore {
    Input(Input),
    Tick,
    Subscribe { call: Box<Call>, stream: ConnId, encoding: Encoding, req: u64 },
    Call { call: Box<Call>, stream_id: Option<String>, req: u64 },
    Render { kind: RenderKind, req: u64 },
    Operator { call: Box<crate::core::OperatorCall>, req: u64 },
}

#[derive(Debug)]
enum Reply {
    Subscription(Subscription),
    Call(Result<u16, ApiError>),
    Body { content_type: &'static str, bytes: Vec<u8> },
}

/// What the core sends to the shard owning a connection.
#[derive(Debug)]
enum FromCore {
    ToAgent {
        conn: ConnId,
        msg: MasterToAgent,
    },
    CloseAgent {
        conn: ConnId,
    },
    /// One encoded event for these streams (all on the receiving shard).
    Event {
        streams: Vec<ConnId>,
        bytes: Arc<Vec<u8>>,
    },
    CloseStream {
        stream: ConnId,
    },
    Reply {
        req: u64,
        reply: Reply,
    },
}

#[derive(Debug)]
enum ShardMsg {
    ToCore(ToCore),
    FromCore(FromCore),
}

enum Outgoing {
    Frame(Vec<u8>),
    /// Close after what is queued before it has been written.
    Close,
}

/// How long a new connection has to send its first complete request (or an
/// agent its hello). Established connections have no idle limit: Mesos
/// clients keep their call connection open between calls.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Submission entries of each of a shard's io_uring rings (glommio's
/// default is 128). The kernel sizes a ring's table of armed polls from its
/// completion queue (twice this): 8 buckets at 128, 256 from 4,096 up. Every
/// idle connection's pending read is an armed poll in that table, and
/// glommio cancels its preemption timers on every turn of its loop; each
/// cancel walks one bucket. With 8 buckets, 19,000 agents cost about 2,400
/// entries a turn, which was most of the master's CPU while it only pinged
/// them (`bench steady`); with 256, about 75. The rings then take about
/// 400 KiB each, three per shard.
const RING_DEPTH: usize = 4096;

/// `fut`'s output, or `None` if `dur` passes first.
async fn within<T>(dur: Duration, fut: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(dur).await;
        None
    })
    .await
}

enum StreamItem {
    Bytes(Arc<Vec<u8>>),
    Close,
}

impl AsRef<[u8]> for Outgoing {
    fn as_ref(&self) -> &[u8] {
        match self {
            Outgoing::Frame(f) => f,
            Outgoing::Close => &[],
        }
    }
}

impl AsRef<[u8]> for StreamItem {
    fn as_ref(&self) -> &[u8] {
        match self {
            StreamItem::Bytes(b) => b,
            StreamItem::Close => &[],
        }
    }
}

/// A live connection: its outgoing queue and its socket, which can be shut
/// down to wake its reader when it must close.
struct Handle<T> {
    tx: Rc<OutQueue<T>>,
    fd: RawFd,
    open: Rc<Cell<bool>>,
    /// Bytes queued and not yet written (framework streams only).
    queued_bytes: Rc<Cell<usize>>,
}

impl<T> Handle<T> {
    fn shutdown(&self) {
        // The connection's task clears `open` before dropping the socket, and
        // everything here runs on one thread, so the fd is still ours.
        if self.open.get() {
            // SAFETY: shutdown(2) on an fd we own; it does not close it.
            unsafe {
                libc::shutdown(self.fd, libc::SHUT_RDWR);
            }
        }
    }
}

/// Items a connection's writer takes from its queue for one write (each
/// one an iovec of one `sendmsg`).
const WRITE_BATCH: usize = 256;

/// Writes every buffer of `bufs`, in order, with as few system calls as the
/// socket allows: one `sendmsg` of all of them (the bytes are not copied
/// together first), and when the socket is full, glommio's write of the
/// rest of the buffer it stopped in, which waits for room.
async fn write_vectored<B: AsRef<[u8]>>(wr: &mut Wr, fd: RawFd, bufs: &[B]) -> std::io::Result<()> {
    let (mut i, mut off) = (0, 0);
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len().min(WRITE_BATCH));
    while i < bufs.len() {
        if bufs[i].as_ref().len() == off {
            (i, off) = (i + 1, 0);
            continue;
        }
        iov.clear();
        for (k, b) in bufs[i..].iter().take(WRITE_BATCH).enumerate() {
            let rest = &b.as_ref()[if k == 0 { off } else { 0 }..];
            iov.push(libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() });
        }
        // SAFETY: a zeroed msghdr is valid; it points at `iov`, whose
        // entries point into `bufs`, all alive and unchanged until sendmsg
        // returns; the fd is the connection's, owned by its task.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len() as _;
            libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    wr.write_all(&bufs[i].as_ref()[off..]).await?;
                    (i, off) = (i + 1, 0);
                    continue;
                }
                _ => return Err(e),
            }
        }
        let mut n = n as usize;
        while n > 0 {
            let left = bufs[i].as_ref().len() - off;
            if n >= left {
                n -= left;
                (i, off) = (i + 1, 0);
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// A connection's writer: everything queued goes out at once (up to
/// [`WRITE_BATCH`] items a write), until an item `is_close` or a write
/// fails; `written` hears how many bytes each write took.
async fn write_queue<T: AsRef<[u8]>>(
    q: &OutQueue<T>,
    wr: &mut Wr,
    fd: RawFd,
    is_close: impl Fn(&T) -> bool,
    mut written: impl FnMut(usize),
) {
    let mut batch = Vec::new();
    while q.recv_many(&mut batch, WRITE_BATCH).await {
        let close = batch.iter().position(&is_close);
        let items = &batch[..close.unwrap_or(batch.len())];
        if write_vectored(wr, fd, items).await.is_err() {
            return;
        }
        written(items.iter().map(|i| i.as_ref().len()).sum());
        if close.is_some() {
            return;
        }
        batch.clear();
    }
}

/// The shard's own state.
struct Shard {
    idx: usize,
    cfg: Arc<ShellConfig>,
    counters: Arc<ShellCounters>,
    /// Senders to every other shard (`None` at this shard's own index).
    mesh: Vec<Option<ConnectedSender<ShardMsg>>>,
    /// On shard 0: the core's input queue.
    core_tx: Option<Rc<LocalSender<ToCore>>>,
    next_id: Cell<u64>,
    connections: Cell<usize>,
    agents: RefCell<HashMap<ConnId, Handle<Outgoing>>>,
    streams: RefCell<HashMap<ConnId, Handle<StreamItem>>>,
    pending: RefCell<HashMap<u64, LocalSender<Reply>>>,
    /// On shard 0: the streams whose events are FlatBuffers (the others are
    /// JSON), from their subscription until they close.
    flatbuffers_streams: RefCell<std::collections::HashSet<ConnId>>,
    advertised: String,
}

/// Connection ids carry their shard in the top 16 bits.
fn shard_of(id: u64) -> usize {
    (id >> 48) as usize
}

impl Shard {
    fn new_id(&self) -> u64 {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        ((self.idx as u64) << 48) | n
    }

    async fn to_core(&self, msg: ToCore) {
        if let Some(tx) = &self.core_tx {
            let _ = tx.send(msg).await;
        } else if let Some(Some(to_core)) = self.mesh.first() {
            if to_core.send(ShardMsg::ToCore(msg)).await.is_err() {
                tracing::error!("the core's shard is gone");
            }
        }
    }

    /// Sends a request to the core and waits for its answer.
    async fn request(&self, make: impl FnOnce(u64) -> ToCore) -> Option<Reply> {
        self.submit(make).await.recv().await
    }

    /// Sends a request to the core; its answer will come on the receiver.
    async fn submit(&self, make: impl FnOnce(u64) -> ToCore) -> LocalReceiver<Reply> {
        let id = self.new_id();
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(id, tx);
        self.to_core(make(id)).await;
        rx
    }

    /// Applies a message from the core to this shard's connections. Never
    /// waits: a full queue closes its connection.
    fn deliver(&self, msg: FromCore) {
        match msg {
            FromCore::ToAgent { conn, msg } => {
                let agents = self.agents.borrow();
                let Some(h) = agents.get(&conn) else { return };
                if h.tx.try_send(Outgoing::Frame(wire::encode(&msg))).is_err() {
                    self.counters.agents_dropped_slow.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(conn, "agent connection's queue is full; closing it");
                    h.shutdown();
                }
            }
            FromCore::CloseAgent { conn } => {
                // Through the queue, so that a `Refused` sent just before is
                // written first.
                if let Some(h) = self.agents.borrow().get(&conn) {
                    if h.tx.try_send(Outgoing::Close).is_err() {
                        h.shutdown();
                    }
                }
            }
            FromCore::Event { streams, bytes } => {
                let map = self.streams.borrow();
                for s in streams {
                    let Some(h) = map.get(&s) else { continue };
                    if !h.open.get() {
                        continue;
                    }
                    let queued = h.queued_bytes.get();
                    let over_bytes = queued > 0 && queued + bytes.len() > self.cfg.max_stream_bytes;
                    if over_bytes || h.tx.try_send(StreamItem::Bytes(bytes.clone())).is_err() {
                        self.counters.streams_dropped_slow.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            stream = s,
                            queued_events = h.tx.len(),
                            queued_bytes = queued,
                            max_events = self.cfg.max_stream_queue,
                            max_bytes = self.cfg.max_stream_bytes,
                            "framework is not reading its event stream: disconnecting it (slow consumer)"
                        );
                        h.open.set(false);
                        // SAFETY: as in Handle::shutdown; the connection's
                        // task still owns the fd, `open` was true.
                        unsafe {
                            libc::shutdown(h.fd, libc::SHUT_RDWR);
                        }
                        continue;
                    }
                    h.queued_bytes.set(queued + bytes.len());
                }
            }
            FromCore::CloseStream { stream } => {
                if let Some(h) = self.streams.borrow().get(&stream) {
                    if h.tx.try_send(StreamItem::Close).is_err() {
                        h.shutdown();
                    }
                }
            }
            FromCore::Reply { req, reply } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&req) {
                    let _ = tx.try_send(reply);
                }
            }
        }
    }
}

/// Binds `n` listening sockets to one address with `SO_REUSEPORT`, so the
/// kernel spreads connections across shards. With port 0 the first socket
/// picks the port and the others follow it.
///
/// A fixed port is probed first with a plain bind, which fails while anyone
/// listens there. Joining a live `SO_REUSEPORT` group would silently share
/// connections with its owner: another master by mistake, or the listening
/// socket of a master that just died, which io_uring keeps alive for a moment
/// after the process exits; connections queued on it are then reset. So the
/// master waits (up to `port_wait`) for the port to be free.
pub fn bind_listeners(addr: SocketAddr, n: usize, port_wait: Duration) -> std::io::Result<(Vec<RawFd>, SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() != 0 {
        let deadline = Instant::now() + port_wait;
        let mut said = false;
        loop {
            let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            probe.set_reuse_address(true)?;
            match probe.bind(&addr.into()) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    if !said {
                        tracing::warn!(%addr, "the port is in use; waiting for it to be released");
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut fds = Vec::with_capacity(n);
    let mut actual = addr;
    for i in 0..n {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&actual.into())?;
        s.listen(4096)?;
        if i == 0 {
            actual = s.local_addr()?.as_socket().ok_or_else(|| std::io::Error::other("not an IP socket"))?;
        }
        fds.push(s.into_raw_fd());
    }
    Ok((fds, actual))
}

/// Runs the master until its executors stop. `fds` come from
/// [`bind_listeners`], one per shard.
pub fn run(cfg: ShellConfig, fds: Vec<RawFd>) -> anyhow::Result<()> {
    let n = cfg.n_shards;
    anyhow::ensure!(fds.len() == n, "one listening socket per shard");
    let registry: Option<FileRegistry> = cfg.registry_path.clone().map(FileRegistry::new);
    let recovered = match &registry {
        Some(r) => r.load()?,
        None => Default::default(),
    };
    let cfg = Arc::new(cfg);
    let counters = Arc::new(ShellCounters::default());
    let ends = Arc::new(std::sync::Mutex::new(build_mesh(n, cfg.mesh_queue)));
    let next_idx = Arc::new(AtomicU64::new(0));
    let fds = Arc::new(fds);
    let placement = match CpuSet::online() {
        Ok(set) if set.len() >= n => PoolPlacement::MaxSpread(n, Some(set)),
        _ => PoolPlacement::Unbound(n),
    };
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("agora-shard")
        .ring_depth(RING_DEPTH)
        .on_all_shards(move || {
            let (cfg, counters, ends, next_idx, fds, registry, recovered) = (
                cfg.clone(),
                counters.clone(),
                ends.clone(),
                next_idx.clone(),
                fds.clone(),
                registry.clone(),
                recovered.clone(),
            );
            async move {
                // Shards number themselves as they start; shard 0 runs the core.
                let idx = next_idx.fetch_add(1, Ordering::SeqCst) as usize;
                let mine = ends.lock().unwrap_or_else(|p| p.into_inner())[idx].take().expect("each shard's ends, once");
                drop(ends);
                let (senders, receivers) = connect_mesh(mine).await;
                let (core_tx, core_rx) = if idx == 0 {
                    let (tx, rx) = local_channel::new_bounded(cfg.core_queue);
                    (Some(Rc::new(tx)), Some(rx))
                } else {
                    (None, None)
                };
                let advertised = format!("{}:{}", cfg.core.ip_text, cfg.core.port);
                let shard = Rc::new(Shard {
                    idx,
                    cfg: cfg.clone(),
                    counters: counters.clone(),
                    mesh: senders,
                    core_tx,
                    next_id: Cell::new(0),
                    connections: Cell::new(0),
                    agents: RefCell::new(HashMap::new()),
                    streams: RefCell::new(HashMap::new()),
                    pending: RefCell::new(HashMap::new()),
                    flatbuffers_streams: RefCell::default(),
                    advertised,
                });
                for rx in receivers.into_iter().flatten() {
                    let shard = shard.clone();
                    spawn_local(async move {
                        while let Some(msg) = rx.recv().await {
                            match msg {
                                ShardMsg::ToCore(m) => shard.to_core(m).await,
                                ShardMsg::FromCore(m) => shard.deliver(m),
                            }
                        }
                    })
                    .detach();
                }
                if let Some(rx) = core_rx {
                    let s = shard.clone();
                    spawn_local(run_core(s, rx, registry, recovered)).detach();
                    let s = shard.clone();
                    spawn_local(async move {
                        loop {
                            glommio::timer::sleep(Duration::from_millis(s.cfg.tick_ms)).await;
                            s.to_core(ToCore::Tick).await;
                        }
                    })
                    .detach();
                }
                // SAFETY: the fd is a bound, listening socket from
                // bind_listeners, handed to exactly this shard.
                let listener = unsafe { TcpListener::from_raw_fd(fds[idx]) };
                accept_loop(shard, listener).await;
            }
        })
        .map_err(|e| anyhow::anyhow!("cannot start the shards' executors: {e}"))?;
    for r in handles.join_all() {
        r.map_err(|e| anyhow::anyhow!("shard failed: {e:?}"))?;
    }
    Ok(())
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shard.connections.get() >= shard.cfg.max_connections_per_shard {
            shard.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        shard.connections.set(shard.connections.get() + 1);
        let s = shard.clone();
        spawn_local(async move {
            serve(s.clone(), stream).await;
            s.connections.set(s.connections.get() - 1);
        })
        .detach();
    }
}

/// Tells agents and HTTP apart by the first bytes.
async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let mut prefix = vec![0u8; 4];
    let mut got = 0;
    while got < 4 {
        match within(FIRST_REQUEST_TIMEOUT, stream.read(&mut prefix[got..])).await {
            Some(Ok(0)) => return,
            Some(Err(e)) => {
                tracing::debug!("connection failed before its first bytes: {e}");
                return;
            }
            None => {
                tracing::debug!("connection sent nothing for {FIRST_REQUEST_TIMEOUT:?}; closing");
                return;
            }
            Some(Ok(n)) => got += n,
        }
    }
    let conn = shard.new_id();
    if wire::is_agent_hello(&prefix) {
        serve_agent(shard, stream, prefix, conn).await;
    } else {
        serve_http(shard, stream, prefix, conn).await;
    }
}

async fn serve_agent(shard: Rc<Shard>, stream: TcpStream, mut prefix: Vec<u8>, conn: ConnId) {
    let fd = stream.as_raw_fd();
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let mut buf = vec![0u8; 512];
    while prefix.len() < HELLO_LEN {
        match within(FIRST_REQUEST_TIMEOUT, rd.read(&mut buf)).await {
            Some(Ok(0)) | Some(Err(_)) | None => return,
            Some(Ok(n)) => prefix.extend_from_slice(&buf[..n]),
        }
    }
    drop(buf);
    let hello_bytes: [u8; HELLO_LEN] = prefix[..HELLO_LEN].try_into().expect("length checked");
    let hello = match Hello::decode(&hello_bytes) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(conn, "bad agent hello: {e}");
            return;
        }
    };
    if hello.version != wire::PROTOCOL_VERSION {
        tracing::warn!(conn, theirs = hello.version, "agent speaks another protocol version; refusing");
        let mut refuse = Hello::new(shard.cfg.max_frame_bytes);
        refuse.status = Hello::REFUSED_VERSION;
        let _ = wr.write_all(&refuse.encode()).await;
        return;
    }
    if wr.write_all(&Hello::new(shard.cfg.max_frame_bytes).encode()).await.is_err() {
        return;
    }
    let tx = Rc::new(OutQueue::new(shard.cfg.max_agent_queue));
    let open = Rc::new(Cell::new(true));
    shard
        .agents
        .borrow_mut()
        .insert(conn, Handle { tx: tx.clone(), fd, open: open.clone(), queued_bytes: Rc::default() });

    // Writer: frames from the queue to the socket, everything queued at
    // once, until a Close.
    let writer = {
        let (open, q) = (open.clone(), tx.clone());
        spawn_local(async move {
            write_queue(&q, &mut wr, fd, |o| matches!(o, Outgoing::Close), |_| {}).await;
            q.close();
            let _ = wr.close().await;
            if open.get() {
                // SAFETY: as in Handle::shutdown; wakes the reader.
                unsafe {
                    libc::shutdown(fd, libc::SHUT_RDWR);
                }
            }
        })
    };

    // Pinger: the agent must answer (or say anything) within the ping timeout.
    let last_seen = Rc::new(Cell::new(Instant::now()));
    let unresponsive = Rc::new(Cell::new(false));
    let pinger = {
        let (shard, tx, open, last_seen, unresponsive) =
            (shard.clone(), tx.clone(), open.clone(), last_seen.clone(), unresponsive.clone());
        spawn_local(async move {
            let period = Duration::from_millis(shard.cfg.core.agent_ping_timeout_ms.max(1));
            let mut missed = 0u32;
            let mut seq = 0u64;
            loop {
                seq += 1;
                let sent = Instant::now();
                let _ = tx.try_send(Outgoing::Frame(wire::encode(&MasterToAgent::Ping { seq })));
                glommio::timer::sleep(period).await;
                if !open.get() {
                    return;
                }
                if last_seen.get() >= sent {
                    missed = 0;
                } else {
                    missed += 1;
                    if missed >= shard.cfg.core.max_agent_ping_timeouts {
                        tracing::warn!(conn, missed, "agent stopped answering pings");
                        unresponsive.set(true);
                        // SAFETY: see Handle::shutdown; `open` is still true.
                        unsafe {
                            libc::shutdown(fd, libc::SHUT_RDWR);
                        }
                        return;
                    }
                }
            }
        })
    };

    let mut decoder = FrameDecoder::new(shard.cfg.max_frame_bytes);
    decoder.push(&prefix[HELLO_LEN..]);
    'read: loop {
        loop {
            match decoder.next_frame() {
                // Validated here, once; the core reads the message in place.
                Ok(Some(frame)) => match Checked::<AgentToMaster>::new(frame) {
                    Ok(msg) => {
                        last_seen.set(Instant::now());
                        if !matches!(msg.get(), ArchivedAgentToMaster::Pong { .. }) {
                            shard.to_core(ToCore::Input(Input::Agent { conn, msg })).await;
                        }
                    }
                    Err(e) => {
                        shard.counters.agent_frames_invalid.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(conn, "closing agent connection: {e}");
                        break 'read;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    shard.counters.agent_frames_invalid.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(conn, "closing agent connection: {e}");
                    break 'read;
                }
            }
        }
        // Straight into the decoder: an agent's connection keeps no read
        // buffer of its own, since most of its life it waits for a pong.
        match rd.read(decoder.read_buf(2 << 10)).await {
            Ok(0) | Err(_) => {
                decoder.commit(0);
                if let Err(e) = decoder.finish() {
                    tracing::info!(conn, "agent connection ended: {e}");
                }
                break;
            }
            Ok(n) => decoder.commit(n),
        }
    }
    open.set(false);
    shard.agents.borrow_mut().remove(&conn);
    drop(tx);
    let _ = pinger.cancel().await;
    let _ = writer.cancel().await;
    drop(rd);
    let input = if unresponsive.get() { Input::AgentUnresponsive { conn } } else { Input::AgentClosed { conn } };
    shard.to_core(ToCore::Input(input)).await;
}

/// Requests of one connection handed to the core before their answers are
/// awaited, at most.
const MAX_PIPELINED: usize = 256;

/// A request's answer: ready, or to come from the core.
enum Answer {
    Ready(Response),
    Core(LocalReceiver<Reply>),
}

/// The HTTP response for the core's reply to a request.
fn response_of(reply: Option<Reply>) -> Response {
    match reply {
        Some(Reply::Body { content_type, bytes }) => {
            Response::new(200).header("Content-Type", content_type).body(bytes)
        }
        Some(Reply::Call(Ok(status))) => Response::new(status),
        Some(Reply::Call(Err(e))) => api::error(e.status, e.message),
        _ => api::error(503, "the master's core is unavailable"),
    }
}

/// An HTTP connection. Pipelined requests are taken together: every
/// complete request already read is handed to the core at once (which then
/// applies them in one batch, in order), their answers are awaited in
/// order, and written with one system call.
async fn serve_http(shard: Rc<Shard>, stream: TcpStream, prefix: Vec<u8>, conn: ConnId) {
    let fd = stream.as_raw_fd();
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let mut parser = RequestParser::new(shard.cfg.http_limits);
    parser.push(&prefix);
    let mut buf = vec![0u8; 16 << 10];
    let started = Instant::now();
    let mut served = 0u64;
    let mut answers: Vec<(Answer, bool)> = Vec::new();
    let mut out: Vec<Vec<u8>> = Vec::new();
    loop {
        // Every complete request read so far, up to the bound.
        let (mut need_bytes, mut close, mut subscribe, mut bad) = (false, false, None, None);
        while answers.len() < MAX_PIPELINED {
            let req = match parser.next_request() {
                Ok(Some(r)) => r,
                Ok(None) => {
                    need_bytes = true;
                    break;
                }
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            };
            shard.counters.http_requests.fetch_add(1, Ordering::Relaxed);
            served += 1;
            let answer = match api::route(&req, &shard.advertised) {
                Route::Local(r) => Answer::Ready(r),
                Route::Render(kind) => Answer::Core(shard.submit(|req| ToCore::Render { kind, req }).await),
                Route::Operator(call) => {
                    Answer::Core(shard.submit(|req| ToCore::Operator { call: Box::new(call), req }).await)
                }
                Route::Call(call, stream_id) => {
                    Answer::Core(shard.submit(|req| ToCore::Call { call: Box::new(call), stream_id, req }).await)
                }
                Route::Subscribe(call, encoding) => {
                    subscribe = Some((call, encoding));
                    break;
                }
            };
            answers.push((answer, req.keep_alive));
            if !req.keep_alive {
                close = true;
                break;
            }
        }
        for (answer, keep_alive) in answers.drain(..) {
            let resp = match answer {
                Answer::Ready(r) => r,
                Answer::Core(rx) => response_of(rx.recv().await),
            };
            out.push(resp.encode(keep_alive));
        }
        if let Some(e) = bad {
            out.push(api::error(e.status(), e.to_string()).encode(false));
            close = true;
        }
        if close || subscribe.is_some() || need_bytes || out.len() >= WRITE_BATCH {
            if let Err(e) = write_vectored(&mut wr, fd, &out).await {
                tracing::debug!("HTTP responses not written: {e}");
                return;
            }
            out.clear();
        }
        if let Some((call, encoding)) = subscribe {
            serve_stream(shard, conn, call, encoding, rd, wr, fd).await;
            return;
        }
        if close {
            let _ = wr.close().await;
            return;
        }
        if !need_bytes {
            continue;
        }
        let read = if served == 0 {
            // A new connection must finish its first request in time.
            let left = FIRST_REQUEST_TIMEOUT.saturating_sub(started.elapsed());
            match within(left, rd.read(&mut buf)).await {
                Some(r) => r,
                None => {
                    let _ = wr.write_all(&api::error(408, "request timeout").encode(false)).await;
                    let _ = wr.close().await;
                    return;
                }
            }
        } else {
            rd.read(&mut buf).await
        };
        match read {
            Ok(0) => return,
            Err(e) => {
                tracing::debug!("HTTP connection failed: {e}");
                return;
            }
            Ok(n) => parser.push(&buf[..n]),
        }
    }
}

type Rd = futures_lite::io::ReadHalf<TcpStream>;
type Wr = futures_lite::io::WriteHalf<TcpStream>;

/// A SUBSCRIBE: the connection carries the framework's events until either
/// side ends it.
async fn serve_stream(
    shard: Rc<Shard>,
    conn: ConnId,
    call: Call,
    encoding: Encoding,
    mut rd: Rd,
    mut wr: Wr,
    fd: RawFd,
) {
    let tx = Rc::new(OutQueue::new(shard.cfg.max_stream_queue));
    let open = Rc::new(Cell::new(true));
    let queued_bytes: Rc<Cell<usize>> = Rc::default();
    shard
        .streams
        .borrow_mut()
        .insert(conn, Handle { tx: tx.clone(), fd, open: open.clone(), queued_bytes: queued_bytes.clone() });
    let reply = shard.request(|req| ToCore::Subscribe { call: Box::new(call), stream: conn, encoding, req }).await;
    let stream_id = match reply {
        Some(Reply::Subscription(Subscription::Accepted { stream_id, .. })) => stream_id,
        Some(Reply::Subscription(Subscription::Refused { message })) => {
            // As Mesos: 200, one ERROR event, end of stream.
            let mut out = http::stream_head(200, &[("Content-Type", encoding.media_type())]);
            out.extend(api::encode_event(&Event::error(message), encoding));
            out.extend_from_slice(http::LAST_CHUNK);
            let _ = wr.write_all(&out).await;
            open.set(false);
            shard.streams.borrow_mut().remove(&conn);
            return;
        }
        _ => {
            let _ = wr.write_all(&api::error(503, "the master's core is unavailable").encode(false)).await;
            open.set(false);
            shard.streams.borrow_mut().remove(&conn);
            return;
        }
    };
    let head = http::stream_head(200, &[("Content-Type", encoding.media_type()), ("Mesos-Stream-Id", &stream_id)]);
    // The client sends nothing more on this connection; a read returning
    // means it went away.
    let watcher = {
        let tx = tx.clone();
        spawn_local(async move {
            let mut b = [0u8; 512];
            loop {
                match rd.read(&mut b).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = tx.try_send(StreamItem::Close);
        })
    };
    if wr.write_all(&head).await.is_ok() {
        // Each event's shared bytes referenced by an iovec.
        let close = |i: &StreamItem| matches!(i, StreamItem::Close);
        write_queue(&tx, &mut wr, fd, close, |n| queued_bytes.set(queued_bytes.get().saturating_sub(n))).await;
        let _ = wr.write_all(http::LAST_CHUNK).await;
    }
    let _ = wr.close().await;
    open.set(false);
    shard.streams.borrow_mut().remove(&conn);
    let _ = watcher.cancel().await;
    shard.to_core(ToCore::Input(Input::StreamClosed { stream: conn })).await;
}

fn now(start: Instant) -> Now {
    Now {
        mono_ms: start.elapsed().as_millis() as u64,
        wall_secs: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
    }
}

/// The core: applies inputs to the [`Master`] in batches and performs the
/// actions it returns.
async fn run_core(
    shard: Rc<Shard>,
    rx: LocalReceiver<ToCore>,
    registry: Option<FileRegistry>,
    recovered: crate::registry::RegistryState,
) {
    let start = Instant::now();
    let mut master = Master::new(shard.cfg.core.clone(), now(start));
    master.recover(&recovered, now(start));
    let registry_writer = RegistryWriter::new(registry);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(msg) = next.take() {
            handle(&shard, &mut master, msg, start, &registry_writer).await;
            handled += 1;
            if handled >= 1024 {
                break;
            }
            next = futures_lite::future::poll_once(rx.recv()).await.flatten();
        }
        let actions = master.take_actions(now(start));
        perform(&shard, actions, &registry_writer).await;
    }
}

async fn handle(shard: &Rc<Shard>, master: &mut Master, msg: ToCore, start: Instant, registry: &RegistryWriter) {
    let t = now(start);
    match msg {
        ToCore::Input(i) => {
            if let Input::StreamClosed { stream } = &i {
                shard.flatbuffers_streams.borrow_mut().remove(stream);
            }
            master.step(t, i)
        }
        ToCore::Tick => master.tick(t),
        ToCore::Subscribe { call, stream, encoding, req } => {
            let s = master.subscribe(t, *call, stream);
            if encoding == Encoding::FlatBuffers && matches!(s, Subscription::Accepted { .. }) {
                shard.flatbuffers_streams.borrow_mut().insert(stream);
            }
            send_to_shard(shard, shard_of(req), FromCore::Reply { req, reply: Reply::Subscription(s) }).await;
        }
        ToCore::Call { call, stream_id, req } => {
            let r = master.call(t, *call, stream_id.as_deref());
            send_to_shard(shard, shard_of(req), FromCore::Reply { req, reply: Reply::Call(r) }).await;
        }
        ToCore::Operator { call, req } => {
            let done = call.done_status();
            let reply = match master.operator(t, *call) {
                Ok(Some(answer)) => {
                    Reply::Body { content_type: "application/json", bytes: api::render_operator(&answer) }
                }
                Ok(None) => {
                    // A change is acknowledged once it is on disk. The core
                    // goes on meanwhile; a task of its own waits and replies.
                    let actions = master.take_actions(t);
                    perform(shard, actions, registry).await;
                    let wait = registry.durable(Duration::from_secs(10));
                    let shard = shard.clone();
                    glommio::spawn_local(async move {
                        let reply = if wait.await {
                            Reply::Call(Ok(done))
                        } else {
                            Reply::Call(Err(crate::core::ApiError {
                                status: 503,
                                message: "the change applies, but the registry could not be written: it may not \
                                          survive a restart"
                                    .into(),
                            }))
                        };
                        send_to_shard(&shard, shard_of(req), FromCore::Reply { req, reply }).await;
                    })
                    .detach();
                    return;
                }
                Err(e) => Reply::Call(Err(e)),
            };
            send_to_shard(shard, shard_of(req), FromCore::Reply { req, reply }).await;
        }
        ToCore::Render { kind, req } => {
            let stats = ShellStats {
                uptime_secs: start.elapsed().as_secs_f64(),
                event_queue_messages: shard.core_tx.as_ref().map(|t| t.len() as u64).unwrap_or(0),
                http_requests: shard.counters.http_requests.load(Ordering::Relaxed),
                agent_frames_invalid: shard.counters.agent_frames_invalid.load(Ordering::Relaxed),
                streams_dropped_slow: shard.counters.streams_dropped_slow.load(Ordering::Relaxed),
                n_shards: shard.cfg.n_shards,
            };
            let (content_type, bytes) = match kind {
                RenderKind::State => ("application/json", api::render_state(master, &shard.cfg.flags)),
                RenderKind::MetricsJson => ("application/json", api::render_metrics_json(master, &stats)),
                RenderKind::MetricsPrometheus => {
                    ("text/plain; version=0.0.4", api::render_metrics_prometheus(master, &stats))
                }
            };
            send_to_shard(shard, shard_of(req), FromCore::Reply { req, reply: Reply::Body { content_type, bytes } })
                .await;
        }
    }
}

async fn send_to_shard(shard: &Rc<Shard>, to: usize, msg: FromCore) {
    if to == shard.idx {
        shard.deliver(msg);
    } else if let Some(Some(tx)) = shard.mesh.get(to) {
        if tx.send(ShardMsg::FromCore(msg)).await.is_err() {
            tracing::error!(to, "shard is gone");
        }
    }
}

/// One shard's ends of the mesh: a sender to and a receiver from every other
/// shard, indexed by shard.
struct MeshEnds {
    senders: Vec<Option<SharedSender<ShardMsg>>>,
    receivers: Vec<Option<SharedReceiver<ShardMsg>>>,
}

/// Creates one bounded channel per ordered pair of shards.
fn build_mesh(n: usize, capacity: usize) -> Vec<Option<MeshEnds>> {
    let mut ends: Vec<MeshEnds> = (0..n)
        .map(|_| MeshEnds { senders: (0..n).map(|_| None).collect(), receivers: (0..n).map(|_| None).collect() })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(capacity);
                ends[from].senders[to] = Some(tx);
                ends[to].receivers[from] = Some(rx);
            }
        }
    }
    ends.into_iter().map(Some).collect()
}

/// Connects a shard's ends; every connection needs its peer to connect too,
/// so all are started before any is awaited.
async fn connect_mesh(
    ends: MeshEnds,
) -> (Vec<Option<ConnectedSender<ShardMsg>>>, Vec<Option<ConnectedReceiver<ShardMsg>>>) {
    let senders: Vec<_> = ends.senders.into_iter().map(|s| s.map(|s| spawn_local(s.connect()).detach())).collect();
    let receivers: Vec<_> = ends.receivers.into_iter().map(|r| r.map(|r| spawn_local(r.connect()).detach())).collect();
    let mut out_s = Vec::with_capacity(senders.len());
    for s in senders {
        out_s.push(match s {
            Some(h) => Some(h.await.expect("connecting a shard channel")),
            None => None,
        });
    }
    let mut out_r = Vec::with_capacity(receivers.len());
    for r in receivers {
        out_r.push(match r {
            Some(h) => Some(h.await.expect("connecting a shard channel")),
            None => None,
        });
    }
    (out_s, out_r)
}

async fn perform(shard: &Rc<Shard>, actions: Vec<core::Action>, registry: &RegistryWriter) {
    for a in actions {
        match a {
            core::Action::ToAgent { conn, msg } => {
                send_to_shard(shard, shard_of(conn), FromCore::ToAgent { conn, msg }).await
            }
            core::Action::CloseAgent { conn } => {
                send_to_shard(shard, shard_of(conn), FromCore::CloseAgent { conn }).await
            }
            core::Action::CloseStream { stream } => {
                send_to_shard(shard, shard_of(stream), FromCore::CloseStream { stream }).await
            }
            core::Action::Event { streams, event } => {
                // Encoded once per encoding its recipients use; every
                // recipient of an encoding shares the same bytes.
                let mut by_shard: BTreeMap<(Encoding, usize), Vec<ConnId>> = BTreeMap::new();
                {
                    let fbs = shard.flatbuffers_streams.borrow();
                    for s in streams {
                        let e = if fbs.contains(&s) { Encoding::FlatBuffers } else { Encoding::Json };
                        by_shard.entry((e, shard_of(s))).or_default().push(s);
                    }
                }
                let mut encoded: [Option<Arc<Vec<u8>>>; 2] = [None, None];
                for ((e, to), streams) in by_shard {
                    let bytes =
                        encoded[e as usize].get_or_insert_with(|| Arc::new(api::encode_event(&event, e))).clone();
                    send_to_shard(shard, to, FromCore::Event { streams, bytes }).await;
                }
            }
            core::Action::Persist(state) => registry.store(state),
        }
    }
}

/// Writes registry snapshots on a thread of its own (file writes and fsync
/// block), one at a time, always the newest: a snapshot that arrives while a
/// write is running replaces any still waiting. The hand-off is one slot under
/// a mutex, so it is bounded by construction.
/// The latest registry snapshot not yet written, with its generation.
type Pending = Arc<(std::sync::Mutex<Option<(u64, crate::registry::RegistryState)>>, std::sync::Condvar)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriterState {
    /// No registry file: nothing to wait for.
    InMemory,
    Running,
    /// A registry file, but the writer thread could not start.
    Broken,
}

struct RegistryWriter {
    slot: Option<Pending>,
    state: WriterState,
    /// Generation of the last snapshot handed over.
    stored: Cell<u64>,
    /// Generation of the last snapshot written (snapshots are whole, so a
    /// later one written covers the earlier ones it replaced).
    written: Arc<AtomicU64>,
}

impl RegistryWriter {
    fn new(registry: Option<FileRegistry>) -> RegistryWriter {
        let written = Arc::new(AtomicU64::new(0));
        let Some(reg) = registry else {
            return RegistryWriter { slot: None, state: WriterState::InMemory, stored: Cell::new(0), written };
        };
        let slot: Pending = Arc::new((std::sync::Mutex::new(None), std::sync::Condvar::new()));
        let (s, w) = (slot.clone(), written.clone());
        let spawned = std::thread::Builder::new().name("agora-registry".into()).spawn(move || loop {
            let (gen, state) = {
                let (lock, cv) = &*s;
                let mut pending = lock.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if let Some(next) = pending.take() {
                        break next;
                    }
                    pending = cv.wait(pending).unwrap_or_else(|p| p.into_inner());
                }
            };
            match reg.store(&state) {
                Ok(()) => w.store(gen, Ordering::Release),
                Err(e) => tracing::error!("cannot write the registry: {e:#}"),
            }
        });
        match spawned {
            Ok(_) => RegistryWriter { slot: Some(slot), state: WriterState::Running, stored: Cell::new(0), written },
            Err(e) => {
                tracing::error!("cannot start the registry writer: {e}; the registry will not be updated");
                RegistryWriter { slot: None, state: WriterState::Broken, stored: Cell::new(0), written }
            }
        }
    }

    fn store(&self, state: crate::registry::RegistryState) {
        let Some(slot) = &self.slot else { return };
        let gen = self.stored.get() + 1;
        self.stored.set(gen);
        let (lock, cv) = &**slot;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = Some((gen, state));
        cv.notify_one();
    }

    /// A future that resolves once everything handed over so far is on
    /// disk: true then (and at once when the master keeps its registry in
    /// memory), false if that did not happen in `timeout` or the writer
    /// never started.
    fn durable(&self, timeout: Duration) -> impl std::future::Future<Output = bool> + 'static {
        let (gen, written, state) = (self.stored.get(), self.written.clone(), self.state);
        async move {
            match state {
                WriterState::InMemory => return true,
                WriterState::Broken => return false,
                WriterState::Running => {}
            }
            let deadline = Instant::now() + timeout;
            while written.load(Ordering::Acquire) < gen {
                if Instant::now() >= deadline {
                    return false;
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            true
        }
    }
}
